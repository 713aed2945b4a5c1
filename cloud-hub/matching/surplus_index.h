// Open surplus posts (available, offered, dead-lettered) by S2 level-13 cell:
// what an NGO driver sees as "available nearby". Kept by the Cascade from the
// committed changes and rebuilt from the store at start.
//
// Thread safety: safe for concurrent use (one mutex; this is not the
// matching hot path).
#pragma once

#include <mutex>
#include <unordered_map>
#include <vector>

#include "common/domain.h"

namespace pp {

struct NearbyPost {
  int64_t surplus_id = 0;
  double distance_km = 0;
};

class SurplusIndex {
 public:
  // Indexes the post if it is open, forgets it otherwise.
  void Update(const Surplus& post);
  // Open posts within max_km of `at`, nearest first, at most `limit`.
  std::vector<NearbyPost> Near(const GeoPoint& at, double max_km, size_t limit) const;
  size_t size() const;

 private:
  struct Entry {
    int64_t id;
    double x, y, z;  // unit-sphere point
  };
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, std::vector<Entry>> buckets_;  // guarded by mu_
  std::unordered_map<int64_t, uint64_t> cell_of_;             // guarded by mu_
};

}  // namespace pp
