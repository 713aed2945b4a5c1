// The matching engine: a fixed set of shard threads (the seed's "actor per
// cell"). A post's S2 level-13 cell picks its shard, so every match for one
// post runs in order on one thread. Each shard owns a full replica of the
// vehicle index and is its only writer and reader: vehicle updates are
// broadcast to every shard's queue, and the hot path (candidate search)
// takes no lock.
//
// Rank() is the whole decision for one post and is a pure function of the
// index, the request and the time, so tests and the benchmark call it directly.
//
// Thread safety: all public methods may be called from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cloud-hub/matching/routing.h"
#include "cloud-hub/matching/vehicle_index.h"
#include "common/clock.h"
#include "common/vehicle.h"

namespace pp {

struct MatchOptions {
  int shards = 2;
  size_t candidates = 5;       // how many nearest eligible vehicles to rank by travel time
  double max_radius_km = 25;   // never look further
};

struct MatchRequest {
  int64_t surplus_id = 0;
  GeoPoint at;
  Need need;
  std::vector<int64_t> excluded;
};

struct RankedCandidate {
  int64_t ngo_id = 0;
  double distance_km = 0;
  double eta_seconds = 0;
};

// Eligible, non-excluded vehicles nearest to the post, ranked by travel time.
std::vector<RankedCandidate> Rank(const VehicleIndex& index, const MatchRequest& req,
                                  Timestamp now, const MatchOptions& options,
                                  TravelTimes& travel);

class Matcher {
 public:
  using Done = std::function<void(std::vector<RankedCandidate>)>;

  Matcher(const Clock& clock, MatchOptions options, TravelTimes& travel);
  ~Matcher();  // finishes queued work

  void UpsertVehicle(const Vehicle& v);
  void Match(MatchRequest req, Done done);
  // Blocks until every shard's queue is empty and idle.
  void WaitIdle();

  // Busy time over wall time across shards since the last call, in [0, 1];
  // a full queue counts as saturated. Feeds the autoscaler (HPA at 0.7).
  double SaturationRatio();
  size_t QueueDepth() const;
  const MatchOptions& options() const { return options_; }

 private:
  struct Shard {
    std::thread thread;
    VehicleIndex index;  // touched only by `thread`
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::function<void(VehicleIndex&)>> queue;  // guarded by mu
    bool busy = false;                                     // guarded by mu
    std::atomic<int64_t> busy_ns{0};
  };
  void Run(Shard& s);
  void Enqueue(Shard& s, std::function<void(VehicleIndex&)> task);
  Shard& ShardFor(const GeoPoint& p);

  const Clock& clock_;
  const MatchOptions options_;
  TravelTimes& travel_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::atomic<bool> stopping_{false};
  std::mutex sat_mu_;
  std::chrono::steady_clock::time_point sat_last_ = std::chrono::steady_clock::now();
  int64_t sat_busy_last_ = 0;
};

}  // namespace pp
