#include "common/cascade.h"

#include <algorithm>
#include <cstdio>

#include "common/domain_json.h"
#include "common/time_format.h"

namespace pp {
namespace {

Error Stale(const Surplus& cur, const std::string& why) {
  return Error::Conflict(why + " (surplus " + std::to_string(cur.id) + " is " +
                             std::string(ToString(cur.status)) + " at version " +
                             std::to_string(cur.version) + ")",
                         StateJson(cur).dump());
}

bool Allowed(const Surplus& cur, SurplusEvent e) { return NextStatus(cur.status, e).has_value(); }

// Back to open after an offer lapsed or a claim was released (`event`),
// with `ngo` excluded.
Decision Reopen(const Surplus& cur, int64_t ngo, SurplusEvent event, const char* outbox_type) {
  Decision d;
  d.event = event;
  d.match = cur.match;
  d.match.offered_to.reset();
  d.match.offer_expires_at.reset();
  // Last, even if excluded before: the relay tells the NGO at the end of the
  // list that its offer or claim is over (cloud-hub/mqtt/outbox_relay.cc).
  std::erase(d.match.excluded, ngo);
  d.match.excluded.push_back(ngo);
  d.outbox_type = outbox_type;
  d.actor = ngo;
  return d;
}

Decision Claimed(const Surplus& cur, int64_t ngo, const char* outbox_type) {
  Decision d;
  d.event = SurplusEvent::kClaim;
  d.claimed_by = ngo;
  d.match.excluded = cur.match.excluded;  // kept for the audit; offer and timers end
  d.outbox_type = outbox_type;
  d.actor = ngo;
  return d;
}

// A step the claiming NGO takes (pickup, delivery): it stays the claimer.
Decision ByClaimer(const Surplus& cur, int64_t ngo, SurplusEvent event, const char* outbox_type) {
  Decision d;
  d.event = event;
  d.claimed_by = ngo;
  d.match.excluded = cur.match.excluded;
  d.outbox_type = outbox_type;
  d.actor = ngo;
  return d;
}

std::string FormatKg(double kg) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", kg);
  return buf;
}

}  // namespace

Result<Decision> DecideClaim(const Surplus& cur, int64_t ngo, int64_t seen_version) {
  if (!Allowed(cur, SurplusEvent::kClaim) || cur.version != seen_version)
    return Stale(cur, "cannot claim");
  return Claimed(cur, ngo, "surplus.claimed");
}

Result<Decision> DecideAccept(const Surplus& cur, int64_t ngo, Timestamp now) {
  if (cur.status != SurplusStatus::kOffered || cur.match.offered_to != ngo)
    return Stale(cur, "no open offer for NGO " + std::to_string(ngo));
  if (cur.match.offer_expires_at && now >= *cur.match.offer_expires_at)
    return Stale(cur, "the offer expired at " + FormatRfc3339(*cur.match.offer_expires_at));
  return Claimed(cur, ngo, "surplus.claimed");
}

Result<Decision> DecideDecline(const Surplus& cur, int64_t ngo) {
  if (cur.status != SurplusStatus::kOffered || cur.match.offered_to != ngo)
    return Stale(cur, "no open offer for NGO " + std::to_string(ngo));
  return Reopen(cur, ngo, SurplusEvent::kOfferLapsed, "surplus.offer_declined");
}

Result<Decision> DecideOfferTimeout(const Surplus& cur, Timestamp now) {
  if (cur.status != SurplusStatus::kOffered || !cur.match.offered_to ||
      !cur.match.offer_expires_at || now < *cur.match.offer_expires_at)
    return Stale(cur, "no offer has timed out");
  return Reopen(cur, *cur.match.offered_to, SurplusEvent::kOfferLapsed, "surplus.offer_timed_out");
}

Result<Decision> DecideRelease(const Surplus& cur, int64_t ngo) {
  if (cur.status != SurplusStatus::kClaimed || cur.claimed_by != ngo)
    return Stale(cur, "not claimed by NGO " + std::to_string(ngo));
  Decision d = Reopen(cur, ngo, SurplusEvent::kRelease, "surplus.released");
  d.handover_code = "";  // the old code must not hand the food to anyone now
  return d;
}

Result<Decision> DecideOffer(const Surplus& cur, int64_t ngo, Timestamp now,
                             const CascadePolicy& policy) {
  if (!Allowed(cur, SurplusEvent::kOffer)) return Stale(cur, "cannot offer");
  if (std::find(cur.match.excluded.begin(), cur.match.excluded.end(), ngo) != cur.match.excluded.end())
    return Error::Precondition("NGO " + std::to_string(ngo) + " is excluded from this post");
  Decision d;
  d.event = SurplusEvent::kOffer;
  d.match = cur.match;
  d.match.offered_to = ngo;
  // Never past the moment a van could still be useful: an answer after the
  // pickup window closes (or the food goes off) helps nobody.
  d.match.offer_expires_at = std::min(now + policy.offer_ack_timeout, cur.draft.ArriveBy());
  d.match.next_retry_at.reset();
  d.outbox_type = "surplus.offered";
  return d;
}

Result<Decision> DecideDeadLetter(const Surplus& cur, Timestamp now, const CascadePolicy& policy) {
  if (!Allowed(cur, SurplusEvent::kDeadLetter)) return Stale(cur, "cannot dead-letter");
  Decision d;
  d.event = SurplusEvent::kDeadLetter;
  d.match = cur.match;
  d.match.offered_to.reset();
  d.match.offer_expires_at.reset();
  // First entry: attempt 0, retry after 1 x base. Each failed retry doubles
  // the wait; after the last one, no timer: an operator must act.
  d.match.dlq_attempts =
      cur.status == SurplusStatus::kDeadLettered ? cur.match.dlq_attempts + 1 : 0;
  if (d.match.dlq_attempts < policy.dlq_max_retries) {
    d.match.next_retry_at = now + policy.dlq_retry_base * (1 << d.match.dlq_attempts);
    d.outbox_type = "surplus.dead_lettered";
  } else {
    d.match.next_retry_at.reset();
    d.outbox_type = "surplus.dlq_exhausted";
    d.dlq_exhausted = true;
  }
  return d;
}

OperatorAlert AlertOf(const Surplus& before, const Decision& d) {
  if (d.dlq_exhausted) return OperatorAlert::kRaise;
  // Retries left keep a retry time; the last dead-letter clears it.
  const bool exhausted = before.status == SurplusStatus::kDeadLettered && !before.match.next_retry_at;
  return exhausted && TargetOf(d.event) != SurplusStatus::kDeadLettered ? OperatorAlert::kResolve
                                                                         : OperatorAlert::kNone;
}

Result<Decision> DecideAssign(const Surplus& cur, int64_t ngo, int64_t operator_actor) {
  if (!Allowed(cur, SurplusEvent::kClaim)) return Stale(cur, "cannot assign");
  Decision d = Claimed(cur, ngo, "surplus.assigned");
  if (operator_actor) d.actor = operator_actor;
  return d;
}

Result<Decision> DecideExpire(const Surplus& cur, Timestamp now) {
  if (!Allowed(cur, SurplusEvent::kExpire) || now < cur.draft.best_before)
    return Stale(cur, "not expired");
  Decision d;
  d.event = SurplusEvent::kExpire;
  d.claimed_by = cur.claimed_by;
  d.match.excluded = cur.match.excluded;
  d.match.dlq_attempts = cur.match.dlq_attempts;
  d.outbox_type = "surplus.expired";
  return d;
}

Result<Decision> DecidePickUp(const Surplus& cur, int64_t ngo, const std::string& code, double kg) {
  if (cur.status != SurplusStatus::kClaimed || cur.claimed_by != ngo)
    return Stale(cur, "not claimed by NGO " + std::to_string(ngo));
  std::vector<FieldError> bad;
  if (code != cur.handover_code)
    bad.push_back({"handover_code", "does not match the code the provider holds"});
  if (!(kg > 0))
    bad.push_back({"actual_kg", "must be more than 0"});
  else if (cur.draft.quantity_kg && kg > *cur.draft.quantity_kg + 1e-9)
    bad.push_back({"actual_kg", "is more than the " + FormatKg(*cur.draft.quantity_kg) + " kg posted"});
  if (!bad.empty()) return Error::Invalid("pickup refused", std::move(bad));
  Decision d = ByClaimer(cur, ngo, SurplusEvent::kPickUp, "surplus.picked_up");
  d.picked_up_kg = kg;
  return d;
}

Result<Decision> DecideDeliver(const Surplus& cur, int64_t ngo) {
  if (cur.status != SurplusStatus::kPickedUp || cur.claimed_by != ngo)
    return Stale(cur, "not picked up by NGO " + std::to_string(ngo));
  return ByClaimer(cur, ngo, SurplusEvent::kDeliver, "surplus.delivered");
}

Result<Decision> DecideCancel(const Surplus& cur, int64_t operator_actor) {
  if (!Allowed(cur, SurplusEvent::kCancel)) return Stale(cur, "cannot cancel");
  Decision d;
  d.event = SurplusEvent::kCancel;
  d.claimed_by = cur.claimed_by;  // kept: the NGO that held it hears of the cancellation
  d.match.excluded = cur.match.excluded;
  d.outbox_type = "surplus.cancelled";
  if (operator_actor) d.actor = operator_actor;
  return d;
}

Surplus Apply(const Surplus& cur, const Decision& d, Timestamp now) {
  Surplus after = cur;
  if (d.handover_code) after.handover_code = *d.handover_code;
  if (d.picked_up_kg) after.picked_up_kg = *d.picked_up_kg;
  after.status = TargetOf(d.event);
  after.version = cur.version + 1;
  after.claimed_by = d.claimed_by;
  after.match = d.match;
  after.updated_at = now;
  return after;
}

}  // namespace pp
