// The offer cascade's decisions, as pure functions of a post's current state
// and the time: no I/O, no clock of their own. The hub applies a Decision with
// the optimistic lock (store: ApplyChange) and writes its history line and
// outbox event in the same transaction.
//
// Every function answers kAborted with the current state when the post is not
// in a state that allows the request (the caller shows the truth), and
// kFailedPrecondition when the request is wrong for this post (e.g. an NGO
// answering an offer that is not theirs).
#pragma once

#include <optional>
#include <string>

#include "common/clock.h"
#include "common/domain.h"
#include "common/error.h"
#include "common/lifecycle.h"

namespace pp {

struct CascadePolicy {
  Duration offer_ack_timeout{std::chrono::minutes(5)};
  Duration dlq_retry_base{std::chrono::minutes(1)};  // retries after 1, 2, 4 x base
  int dlq_max_retries = 3;
};

// What to do to a post: an event, and the post's fields after it.
struct Decision {
  SurplusEvent event = SurplusEvent::kClaim;
  std::optional<int64_t> claimed_by;
  MatchState match;
  std::string outbox_type;           // "surplus.offered", ...
  std::optional<int64_t> actor;      // who caused it (history)
  bool dlq_exhausted = false;        // an operator must act: raise the alert
  // Set by the caller when the post becomes claimed (a random code is not a
  // pure function); kept as it is otherwise.
  std::optional<std::string> handover_code;
  std::optional<double> picked_up_kg;
};

// What a change means for the operator alert a post gets when its DLQ
// retries run out (docs/operations.md, "The offer cascade").
enum class OperatorAlert {
  kNone,
  kRaise,    // `d` is the dead-letter after the last retry: an operator must act
  kResolve,  // `d` takes a post whose retries had run out (its alert raised) out
             // of the DLQ: assigned, claimed, cancelled or expired; nobody need act
};
OperatorAlert AlertOf(const Surplus& before, const Decision& d);

// An NGO claims directly (or accepts by claiming) at the version it saw.
Result<Decision> DecideClaim(const Surplus& cur, int64_t ngo, int64_t seen_version);
// The offered NGO accepts before its deadline.
Result<Decision> DecideAccept(const Surplus& cur, int64_t ngo, Timestamp now);
// The offered NGO declines: excluded from now on; the post is open again.
Result<Decision> DecideDecline(const Surplus& cur, int64_t ngo);
// The offer's deadline passed: as a decline by the silent NGO.
Result<Decision> DecideOfferTimeout(const Surplus& cur, Timestamp now);
// The claiming NGO cannot come after all (a van broke down, a driver is
// ill) and says so before pickup: the post is open again with that NGO
// excluded, its handover code void, and the cascade offers it to the next
// best — the brief's "covering dropped-out drivers".
Result<Decision> DecideRelease(const Surplus& cur, int64_t ngo);
// Matching chose `ngo`: a targeted offer with an answer deadline.
Result<Decision> DecideOffer(const Surplus& cur, int64_t ngo, Timestamp now,
                             const CascadePolicy& policy);
// Matching found no one: into the dead-letter queue, or one retry further
// along it; after the last retry the post waits for an operator.
Result<Decision> DecideDeadLetter(const Surplus& cur, Timestamp now, const CascadePolicy& policy);
// An operator assigns the post to an NGO (from the DLQ or any open state).
Result<Decision> DecideAssign(const Surplus& cur, int64_t ngo, int64_t operator_actor = 0);
// The claiming NGO's driver collects: the handover code must match, and
// `kg` (what was actually taken) must be positive and at most the posted
// quantity when that is known. Less than posted is a partial pickup.
Result<Decision> DecidePickUp(const Surplus& cur, int64_t ngo, const std::string& code, double kg);
// The driver delivered what was picked up.
Result<Decision> DecideDeliver(const Surplus& cur, int64_t ngo);
// An operator withdraws the post (from any open state, or claimed): offers
// and timers end; the NGO holding it, if any, is told by the event.
Result<Decision> DecideCancel(const Surplus& cur, int64_t operator_actor = 0);
// best_before has passed: everything ends, offers and timers included.
Result<Decision> DecideExpire(const Surplus& cur, Timestamp now);

// The post after `d` is applied (status, version, fields).
Surplus Apply(const Surplus& cur, const Decision& d, Timestamp now);

}  // namespace pp
