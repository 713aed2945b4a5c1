#include "cloud-hub/matching/cell_rings.h"

#include <s2/s2coords.h>
#include <s2/s2latlng.h>
#include <s2/s2metrics.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/geo.h"

namespace pp::cells {
namespace {

// The level-13 cell whose (i, j) origin is given, also beyond the face's
// edge (then it is the cell on the neighbouring face at that position).
S2CellId CellAtIJ(int face, int i, int j, int size) {
  if (i >= 0 && j >= 0 && i < S2CellId::kMaxSize && j < S2CellId::kMaxSize)
    return S2CellId::FromFaceIJ(face, i, j).parent(kLevel);
  double s = (double(i) + size / 2.0) / S2CellId::kMaxSize;
  double t = (double(j) + size / 2.0) / S2CellId::kMaxSize;
  S2Point p = S2::FaceUVtoXYZ(face, S2::STtoUV(s), S2::STtoUV(t)).Normalize();
  return S2CellId(p).parent(kLevel);
}

}  // namespace

S2Point ToPoint(const GeoPoint& p) { return S2LatLng::FromDegrees(p.lat, p.lon).ToPoint(); }
S2CellId CellOf(const S2Point& p) { return S2CellId(p).parent(kLevel); }

double ChordToKm(double chord2) {
  return 2 * std::asin(std::min(1.0, std::sqrt(chord2) / 2)) * kEarthRadiusKm;
}

double KmToChord2(double km) {
  double c = 2 * std::sin(std::min(M_PI, km / kEarthRadiusKm) / 2);
  return c * c;
}

void WalkRings(const S2Point& at, double max_km, const std::function<void(S2CellId)>& visit,
               const std::function<bool(double min_km)>& finished) {
  const S2CellId home = CellOf(at);
  int i0, j0;
  home.ToFaceIJOrientation(&i0, &j0, nullptr);
  const int face = home.face();
  const int size = S2CellId::GetSizeIJ(kLevel);
  i0 -= i0 % size;
  j0 -= j0 % size;
  const double width_km = S2::kMinWidth.GetValue(kLevel) * kEarthRadiusKm;
  const int max_ring = int(max_km / width_km) + 2;
  std::vector<uint64_t> seen;  // rings can meet themselves across a face edge
  auto once = [&](S2CellId c) {
    if (std::find(seen.begin(), seen.end(), c.id()) != seen.end()) return;
    seen.push_back(c.id());
    visit(c);
  };
  once(home);
  for (int r = 1; r <= max_ring; ++r) {
    double ring_min_km = (r - 1) * width_km;
    if (ring_min_km > max_km || finished(ring_min_km)) return;
    for (int d = -r; d <= r; ++d) {
      once(CellAtIJ(face, i0 + d * size, j0 - r * size, size));
      once(CellAtIJ(face, i0 + d * size, j0 + r * size, size));
      if (d != -r && d != r) {
        once(CellAtIJ(face, i0 - r * size, j0 + d * size, size));
        once(CellAtIJ(face, i0 + r * size, j0 + d * size, size));
      }
    }
  }
}

}  // namespace pp::cells
