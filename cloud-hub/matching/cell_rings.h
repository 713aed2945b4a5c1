// The spatial walk both hot indexes share: S2 level-13 cells visited in
// square rings around a point, nearest ring first. Every point of a ring-r
// cell is at least (r-1) minimum cell widths from the centre cell, which
// lets a search stop as soon as nothing further out can beat what it holds.
#pragma once

#include <s2/s2cell_id.h>
#include <s2/s2point.h>

#include <functional>

#include "common/domain.h"

namespace pp::cells {

constexpr int kLevel = 13;

S2Point ToPoint(const GeoPoint& p);
S2CellId CellOf(const S2Point& p);
// Squared chord length on the unit sphere <-> great-circle km.
double ChordToKm(double chord2);
double KmToChord2(double km);

// Calls visit(cell) for each distinct level-13 cell in rings 0, 1, 2, ...
// around `at`, up to the ring that lies beyond max_km. Before each ring r > 0
// it asks finished(min_km) with the least distance any point of ring r can
// have; true ends the walk.
void WalkRings(const S2Point& at, double max_km, const std::function<void(S2CellId)>& visit,
               const std::function<bool(double min_km)>& finished);

}  // namespace pp::cells
