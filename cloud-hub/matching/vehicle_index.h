// The hot index of NGO vehicles, bucketed by S2 level-13 cell (~1 km²).
//
// FindNearest walks rings of cells outwards from the post's cell and stops
// as soon as the k-th best eligible vehicle is nearer than anything the next
// ring could hold (ring r is at least (r-1) cell widths away), or the ring
// lies beyond max_km. Distances are compared as chord lengths on the unit
// sphere (a dot product, no trigonometry) and reported as great-circle km.
//
// Thread safety: none. Each matching shard owns its own replica and is its
// only writer and reader (cloud-hub/matching/matcher.h), so the hot path
// takes no lock.
#pragma once

#include <s2/s2cell_id.h>
#include <s2/s2point.h>

#include <functional>
#include <unordered_map>
#include <vector>

#include "common/vehicle.h"

namespace pp {

struct Candidate {
  int64_t ngo_id = 0;
  double distance_km = 0;
};

class VehicleIndex {
 public:
  void Upsert(const Vehicle& v);
  void Remove(int64_t ngo_id);
  const Vehicle* Find(int64_t ngo_id) const;
  size_t size() const { return where_.size(); }

  // Up to k eligible vehicles nearest to `at` within max_km, nearest first.
  // `eligible` sees each vehicle in range once.
  std::vector<Candidate> FindNearest(const GeoPoint& at, size_t k, double max_km,
                                     const std::function<bool(const Vehicle&, double km)>& eligible) const;

  // The S2 level-13 cell of a point (the shard key).
  static S2CellId CellOf(const GeoPoint& p);

 private:
  struct Entry {
    S2Point point;
    Vehicle vehicle;
  };
  using Bucket = std::vector<Entry>;

  std::unordered_map<uint64_t, Bucket> buckets_;  // by level-13 cell id
  // ngo_id -> (cell, index in bucket)
  std::unordered_map<int64_t, std::pair<uint64_t, size_t>> where_;
};

}  // namespace pp
