#include "cloud-hub/matching/cascade.h"

#include <nlohmann/json.hpp>

#include "common/domain_json.h"
#include "common/log.h"
#include "common/time_format.h"

namespace pp {

Cascade::Cascade(HubService& hub, Matcher& matcher, const Clock& clock, CascadePolicy policy,
                 AlertSink* alerts)
    : hub_(hub), matcher_(matcher), clock_(clock), policy_(policy), alerts_(alerts) {}

void Cascade::Begin(int64_t id) {
  std::lock_guard lock(mu_);
  in_flight_.insert(id);
}

void Cascade::End(int64_t id) {
  std::lock_guard lock(mu_);
  in_flight_.erase(in_flight_.find(id));
  if (in_flight_.empty()) idle_.notify_all();
}

void Cascade::WaitIdle() {
  std::unique_lock lock(mu_);
  idle_.wait(lock, [&] { return in_flight_.empty(); });
}

Status Cascade::Start() {
  PP_ASSIGN_OR_RETURN(auto vehicles, hub_.ListVehicles());
  for (const auto& v : vehicles) matcher_.UpsertVehicle(v);
  int64_t after = 0;
  while (true) {
    PP_ASSIGN_OR_RETURN(auto open, hub_.ListSurplus({SurplusStatus::kAvailable, SurplusStatus::kOffered,
                                                     SurplusStatus::kDeadLettered},
                                                    after, 500));
    for (const auto& post : open) {
      open_.Update(post);
      if (post.status == SurplusStatus::kAvailable) Rematch(post);
    }
    if (open.size() < 500) break;
    after = open.back().id;
  }
  Log(LogLevel::kInfo, "cascade_started", {{"vehicles", std::to_string(vehicles.size())}});
  return OkStatus();
}

void Cascade::OnVehicleChanged(const Vehicle& v) { matcher_.UpsertVehicle(v); }

void Cascade::OnSurplusChanged(const Surplus& after, OperatorAlert alert) {
  open_.Update(after);
  if (alert == OperatorAlert::kResolve) {
    Log(LogLevel::kInfo, "dlq_alert_resolved",
        {{"surplus_id", std::to_string(after.id)}, {"status", std::string(ToString(after.status))}});
    if (alerts_) alerts_->Resolve(after);
  }
  if (alert == OperatorAlert::kRaise) {
    alerts_sent_++;
    Log(LogLevel::kWarn, "dlq_exhausted", {{"surplus_id", std::to_string(after.id)}});
    if (alerts_)
      alerts_->Trigger(after, "Surplus " + std::to_string(after.id) + " (" +
                                  after.draft.description.substr(0, 80) +
                                  ") found no NGO after every retry; assign it by hand");
  }
  // Posted, or open again after a decline or a timeout: find the next NGO.
  if (after.status == SurplusStatus::kAvailable) Rematch(after);
}

void Cascade::Rematch(const Surplus& post) {
  Begin(post.id);
  MatchRequest req{post.id, post.position,
                   Need{CategoryBit(post.draft.category), post.draft.quantity_kg,
                        post.draft.ArriveBy()},
                   post.match.excluded};
  int64_t id = post.id;
  matcher_.Match(std::move(req), [this, id](std::vector<RankedCandidate> ranked) {
    HubService::Decide decide;
    if (ranked.empty()) {
      decide = [this](const Surplus& cur, Timestamp now) {
        return DecideDeadLetter(cur, now, policy_);
      };
    } else {
      int64_t best = ranked.front().ngo_id;
      decide = [this, best](const Surplus& cur, Timestamp now) {
        return DecideOffer(cur, best, now, policy_);
      };
    }
    hub_.ApplyInternal(id, decide, [this, id](Result<Reply> r) {
      // A refusal means the post moved on (claimed directly, expired): the
      // cascade step is simply no longer needed.
      if (!r.ok() && r.error().code != Code::kAborted && r.error().code != Code::kFailedPrecondition)
        Log(LogLevel::kError, "cascade_step_failed",
            {{"surplus_id", std::to_string(id)}, {"error", r.error().ToString()}});
      End(id);
    });
  });
}

Status Cascade::Tick() {
  Timestamp now = clock_.Now();
  PP_ASSIGN_OR_RETURN(auto due, hub_.ListDue(now, 500));
  {
    std::lock_guard lock(mu_);
    std::erase_if(due, [&](int64_t id) { return in_flight_.count(id) > 0; });  // a step for it is already running
  }
  PP_ASSIGN_OR_RETURN(auto posts, hub_.GetSurplusMany(due));
  for (const Surplus& cur : posts) {
    const int64_t id = cur.id;
    HubService::Decide decide;
    if (now >= cur.draft.best_before && NextStatus(cur.status, SurplusEvent::kExpire)) {
      decide = [](const Surplus& c, Timestamp t) { return DecideExpire(c, t); };
    } else if (cur.status == SurplusStatus::kOffered && cur.match.offer_expires_at &&
               now >= *cur.match.offer_expires_at) {
      decide = [](const Surplus& c, Timestamp t) { return DecideOfferTimeout(c, t); };
    } else if (cur.status == SurplusStatus::kDeadLettered && cur.match.next_retry_at &&
               now >= *cur.match.next_retry_at) {
      Rematch(cur);  // a DLQ retry: match again, offer or dead-letter once more
      continue;
    } else {
      continue;
    }
    Begin(id);
    hub_.ApplyInternal(id, decide, [this, id](Result<Reply>) { End(id); });
  }
  WaitIdle();
  return OkStatus();
}

nlohmann::json Cascade::NearbyPosts(const GeoPoint& at, double km, size_t limit) const {
  nlohmann::json items = nlohmann::json::array();
  const auto near = open_.Near(at, km, limit);
  std::vector<int64_t> ids;
  for (const auto& n : near) ids.push_back(n.surplus_id);
  auto posts = hub_.GetSurplusMany(ids);
  if (!posts.ok()) return items;  // the store is failing: an empty list, and the next ask may do better
  // Both in the index's order; a post gone from the store meanwhile is skipped.
  size_t i = 0;
  for (const auto& n : near) {
    if (i == posts->size() || (*posts)[i].id != n.surplus_id) continue;
    auto j = ToJson((*posts)[i++]);
    j["distance_km"] = n.distance_km;
    items.push_back(std::move(j));
  }
  return items;
}

}  // namespace pp
