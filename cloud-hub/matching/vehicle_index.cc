#include "cloud-hub/matching/vehicle_index.h"

#include <algorithm>

#include "cloud-hub/matching/cell_rings.h"

namespace pp {

using cells::ChordToKm;
using cells::KmToChord2;
using cells::ToPoint;

S2CellId VehicleIndex::CellOf(const GeoPoint& p) { return cells::CellOf(ToPoint(p)); }

void VehicleIndex::Upsert(const Vehicle& v) {
  Remove(v.ngo_id);
  S2Point point = ToPoint(v.position);
  uint64_t cell = cells::CellOf(point).id();
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
  auto scan = [&](S2CellId cell) {
    auto it = buckets_.find(cell.id());
    if (it == buckets_.end()) return;
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
  cells::WalkRings(target, max_km, scan, [&](double ring_min_km) {
    return best.size() == k && best.front().distance_km <= ring_min_km;
  });
  std::sort_heap(best.begin(), best.end(), farther);
  return best;
}

}  // namespace pp
