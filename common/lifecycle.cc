#include "common/lifecycle.h"

#include <algorithm>

namespace pp {

using S = SurplusStatus;
using E = SurplusEvent;

const std::vector<Transition>& SurplusTransitions() {
  static const std::vector<Transition> table{
      // from            event              to
      {S::kAvailable,    E::kOffer,         S::kOffered},
      {S::kAvailable,    E::kClaim,         S::kClaimed},
      {S::kAvailable,    E::kDeadLetter,    S::kDeadLettered},
      {S::kAvailable,    E::kExpire,        S::kExpired},
      {S::kAvailable,    E::kCancel,        S::kCancelled},
      {S::kOffered,      E::kClaim,         S::kClaimed},
      {S::kOffered,      E::kOfferLapsed,   S::kAvailable},
      {S::kOffered,      E::kDeadLetter,    S::kDeadLettered},
      {S::kOffered,      E::kExpire,        S::kExpired},
      {S::kOffered,      E::kCancel,        S::kCancelled},
      {S::kDeadLettered, E::kDeadLetter,    S::kDeadLettered},  // a DLQ retry found no one
      {S::kDeadLettered, E::kRequeue,       S::kAvailable},
      {S::kDeadLettered, E::kOffer,         S::kOffered},
      {S::kDeadLettered, E::kClaim,         S::kClaimed},
      {S::kDeadLettered, E::kExpire,        S::kExpired},
      {S::kDeadLettered, E::kCancel,        S::kCancelled},
      {S::kClaimed,      E::kPickUp,        S::kPickedUp},
      {S::kClaimed,      E::kRelease,       S::kAvailable},
      {S::kClaimed,      E::kExpire,        S::kExpired},
      {S::kClaimed,      E::kCancel,        S::kCancelled},
      {S::kPickedUp,     E::kDeliver,       S::kDelivered},
  };
  return table;
}

std::string_view ToString(SurplusEvent e) {
  switch (e) {
    case E::kOffer: return "offer";
    case E::kOfferLapsed: return "offer_lapsed";
    case E::kClaim: return "claim";
    case E::kRelease: return "release";
    case E::kPickUp: return "pick_up";
    case E::kDeliver: return "deliver";
    case E::kDeadLetter: return "dead_letter";
    case E::kRequeue: return "requeue";
    case E::kExpire: return "expire";
    case E::kCancel: return "cancel";
  }
  return "?";
}

std::optional<SurplusStatus> NextStatus(SurplusStatus from, SurplusEvent event) {
  for (const auto& t : SurplusTransitions())
    if (t.from == from && t.event == event) return t.to;
  return std::nullopt;
}

std::vector<SurplusStatus> SourcesOf(SurplusEvent event) {
  std::vector<SurplusStatus> out;
  for (const auto& t : SurplusTransitions())
    if (t.event == event) out.push_back(t.from);
  return out;
}

bool IsTerminal(SurplusStatus s) {
  return std::none_of(SurplusTransitions().begin(), SurplusTransitions().end(),
                      [s](const Transition& t) { return t.from == s; });
}

}  // namespace pp

namespace pp {
SurplusStatus TargetOf(SurplusEvent event) {
  for (const auto& t : SurplusTransitions())
    if (t.event == event) return t.to;
  return SurplusStatus::kAvailable;  // unreachable: every event has a line
}
}  // namespace pp
