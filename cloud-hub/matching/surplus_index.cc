#include "cloud-hub/matching/surplus_index.h"

#include <algorithm>

#include "cloud-hub/matching/cell_rings.h"
#include "common/lifecycle.h"

namespace pp {

void SurplusIndex::Update(const Surplus& post) {
  bool open = post.status == SurplusStatus::kAvailable || post.status == SurplusStatus::kOffered ||
              post.status == SurplusStatus::kDeadLettered;
  std::lock_guard lock(mu_);
  if (auto it = cell_of_.find(post.id); it != cell_of_.end()) {
    auto& bucket = buckets_[it->second];
    std::erase_if(bucket, [&](const Entry& e) { return e.id == post.id; });
    if (bucket.empty()) buckets_.erase(it->second);
    cell_of_.erase(it);
  }
  if (!open) return;
  S2Point p = cells::ToPoint(post.position);
  uint64_t cell = cells::CellOf(p).id();
  buckets_[cell].push_back({post.id, p.x(), p.y(), p.z()});
  cell_of_[post.id] = cell;
}

std::vector<NearbyPost> SurplusIndex::Near(const GeoPoint& at, double max_km, size_t limit) const {
  std::vector<NearbyPost> out;
  S2Point target = cells::ToPoint(at);
  double max2 = cells::KmToChord2(max_km);
  std::lock_guard lock(mu_);
  cells::WalkRings(
      target, max_km,
      [&](S2CellId cell) {
        auto it = buckets_.find(cell.id());
        if (it == buckets_.end()) return;
        for (const auto& e : it->second) {
          double d2 = (S2Point(e.x, e.y, e.z) - target).Norm2();
          if (d2 <= max2) out.push_back({e.id, cells::ChordToKm(d2)});
        }
      },
      [](double) { return false; });  // everything within max_km
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.distance_km < b.distance_km || (a.distance_km == b.distance_km && a.surplus_id < b.surplus_id);
  });
  if (out.size() > limit) out.resize(limit);
  return out;
}

size_t SurplusIndex::size() const {
  std::lock_guard lock(mu_);
  return cell_of_.size();
}

}  // namespace pp
