// The offer cascade, driving the matching engine and the hub's commands:
//
//   posted, or open again after a decline/timeout -> Match -> Offer(best)
//                                                    \-> nobody: DeadLetter
//   Tick(): offers past their deadline -> OfferTimeout -> (rematch, above)
//           DLQ retries due (1, 2, 4 x base)  -> Match -> Offer or DeadLetter
//           after the last retry -> operator alert; the post waits for Assign
//           posts past best_before -> Expire (offers and timers end with it)
//
// Deadlines and retry times live in the store, so Tick() on any replica
// finds what is due. Every step is a command applied with the optimistic
// lock: if a direct claim wins meanwhile, the cascade's step is refused and
// dropped.
//
// Thread safety: all public methods may be called from any thread.
#pragma once

#include <condition_variable>
#include <mutex>
#include <set>
#include <string>

#include "cloud-hub/core/hub_service.h"
#include "cloud-hub/matching/matcher.h"
#include "cloud-hub/matching/surplus_index.h"
#include "common/cascade.h"

namespace pp {

// Where operator alerts go. Trigger() runs in a commit's callback, on a
// store writer's thread: it must return at once (WebhookAlertSink queues).
class AlertSink {
 public:
  virtual ~AlertSink() = default;
  virtual void Trigger(const Surplus& post, const std::string& summary) = 0;
  // The post left the DLQ after its alert: the incident can close.
  virtual void Resolve(const Surplus& post) = 0;
};

class Cascade final : public ChangeListener {
 public:
  Cascade(HubService& hub, Matcher& matcher, const Clock& clock, CascadePolicy policy,
          AlertSink* alerts);

  // Loads every vehicle into the matcher and re-matches open posts that hold
  // no offer (a hub that stopped mid-cascade picks up where it was).
  Status Start();
  // Handles everything due now. Returns when the work it started is done.
  Status Tick();
  // Blocks until no cascade step is in flight.
  void WaitIdle();

  void OnSurplusChanged(const Surplus& after, OperatorAlert alert) override;
  void OnVehicleChanged(const Vehicle& v) override;

  uint64_t alerts_sent() const { return alerts_sent_; }
  // Open posts by cell ("available nearby"), kept from committed changes.
  const SurplusIndex& open_posts() const { return open_; }
  // Open posts within `km` of `at`, nearest first, as the API shows them
  // (each with "distance_km"): for GET /surplus/nearby and tablets' queries.
  nlohmann::json NearbyPosts(const GeoPoint& at, double km, size_t limit) const;

 private:
  void Rematch(const Surplus& post);
  void Begin(int64_t id);  // a step for `id` is in flight
  void End(int64_t id);

  HubService& hub_;
  Matcher& matcher_;
  const Clock& clock_;
  const CascadePolicy policy_;
  AlertSink* alerts_;
  std::atomic<uint64_t> alerts_sent_{0};
  SurplusIndex open_;

  std::mutex mu_;
  std::condition_variable idle_;
  std::multiset<int64_t> in_flight_;  // guarded by mu_
};

}  // namespace pp
