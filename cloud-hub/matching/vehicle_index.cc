#include "cloud-hub/matching/vehicle_index.h"

#include <s2/s2coords.h>
#include <s2/s2latlng.h>
#include <s2/s2metrics.h>

#include <algorithm>
#include <cmath>

#include "common/geo.h"

namespace pp {
namespace {

S2Point ToPoint(const GeoPoint& p) { return S2LatLng::FromDegrees(p.lat, p.lon).ToPoint(); }

// Chord length² on the unit sphere <-> great-circle km.
double ChordToKm(double chord2) {
  return 2 * std::asin(std::min(1.0, std::sqrt(chord2) / 2)) * kEarthRadiusKm;
}
double KmToChord2(double km) {
  double c = 2 * std::sin(std::min(M_PI, km / kEarthRadiusKm) / 2);
  return c * c;
}

// The level-13 cell whose (i, j) origin is given, also beyond the face's
// edge (then it is the cell on the neighbouring face at that position).
S2CellId CellAtIJ(int face, int i, int j, int size) {
  if (i >= 0 && j >= 0 && i < S2CellId::kMaxSize && j < S2CellId::kMaxSize)
    return S2CellId::FromFaceIJ(face, i, j).parent(VehicleIndex::kLevel);
  double s = (double(i) + size / 2.0) / S2CellId::kMaxSize;
  double t = (double(j) + size / 2.0) / S2CellId::kMaxSize;
  S2Point p = S2::FaceUVtoXYZ(face, S2::STtoUV(s), S2::STtoUV(t)).Normalize();
  return S2CellId(p).parent(VehicleIndex::kLevel);
}

}  // namespace

S2CellId VehicleIndex::CellOf(const GeoPoint& p) { return S2CellId(ToPoint(p)).parent(kLevel); }

void VehicleIndex::Upsert(const Vehicle& v) {
  Remove(v.ngo_id);
  S2Point point = ToPoint(v.position);
  uint64_t cell = S2CellId(point).parent(kLevel).id();
  auto& bucket = buckets_[cell];
  bucket.push_back({point, v});
  where_[v.ngo_id] = {cell, bucket.size() - 1};
}

void VehicleIndex::Remove(int64_t ngo_id) {
  auto it = where_.find(ngo_id);
  if (it == where_.end()) return;
  auto [cell, idx] = it->second;
  auto& bucket = buckets_[cell];
  if (idx != bucket.size() - 1) {  // swap-remove, fixing the moved entry's slot
    bucket[idx] = std::move(bucket.back());
    where_[bucket[idx].vehicle.ngo_id].second = idx;
  }
  bucket.pop_back();
  if (bucket.empty()) buckets_.erase(cell);
  where_.erase(it);
}

const Vehicle* VehicleIndex::Find(int64_t ngo_id) const {
  auto it = where_.find(ngo_id);
  if (it == where_.end()) return nullptr;
  return &buckets_.at(it->second.first)[it->second.second].vehicle;
}

std::vector<Candidate> VehicleIndex::FindNearest(
    const GeoPoint& at, size_t k, double max_km,
    const std::function<bool(const Vehicle&, double km)>& eligible) const {
  std::vector<Candidate> best;  // max-heap on distance, at most k
  if (k == 0 || buckets_.empty()) return best;
  auto farther = [](const Candidate& a, const Candidate& b) { return a.distance_km < b.distance_km; };
  const S2Point target = ToPoint(at);
  const double max_chord2 = KmToChord2(max_km);
  const S2CellId home = S2CellId(target).parent(kLevel);
  int face, i0, j0;
  home.ToFaceIJOrientation(&i0, &j0, nullptr);
  face = home.face();
  const int size = S2CellId::GetSizeIJ(kLevel);
  i0 -= i0 % size;
  j0 -= j0 % size;
  // Every point of a ring-r cell is at least (r-1) minimum cell widths away.
  const double width_km = S2::kMinWidth.GetValue(kLevel) * kEarthRadiusKm;
  const int max_ring = int(max_km / width_km) + 2;

  std::vector<uint64_t> seen;  // cells already scanned (rings can meet across faces)
  auto scan = [&](S2CellId cell) {
    auto it = buckets_.find(cell.id());
    if (it == buckets_.end()) return;
    if (std::find(seen.begin(), seen.end(), cell.id()) != seen.end()) return;
    seen.push_back(cell.id());
    double worst2 = best.size() == k ? KmToChord2(best.front().distance_km) : max_chord2;
    for (const Entry& e : it->second) {
      double d2 = (e.point - target).Norm2();
      if (d2 > max_chord2 || (best.size() == k && d2 >= worst2)) continue;
      double km = ChordToKm(d2);
      if (!eligible(e.vehicle, km)) continue;
      best.push_back({e.vehicle.ngo_id, km});
      std::push_heap(best.begin(), best.end(), farther);
      if (best.size() > k) {
        std::pop_heap(best.begin(), best.end(), farther);
        best.pop_back();
      }
      if (best.size() == k) worst2 = KmToChord2(best.front().distance_km);
    }
  };

  for (int r = 0; r <= max_ring; ++r) {
    double ring_min_km = std::max(0, r - 1) * width_km;
    if (ring_min_km > max_km) break;
    if (best.size() == k && best.front().distance_km <= ring_min_km) break;
    if (r == 0) {
      scan(home);
      continue;
    }
    for (int d = -r; d <= r; ++d) {
      scan(CellAtIJ(face, i0 + d * size, j0 - r * size, size));
      scan(CellAtIJ(face, i0 + d * size, j0 + r * size, size));
      if (d != -r && d != r) {
        scan(CellAtIJ(face, i0 - r * size, j0 + d * size, size));
        scan(CellAtIJ(face, i0 + r * size, j0 + d * size, size));
      }
    }
  }
  std::sort_heap(best.begin(), best.end(), farther);
  return best;
}

}  // namespace pp
