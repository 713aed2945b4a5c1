// The surplus lifecycle as one transition table (common/lifecycle.cc), one
// line a transition. Everything that changes a post's status asks this table;
// the stores derive their optimistic-lock WHERE clauses from it too, so the
// SQL and the domain cannot disagree.
//
// Thread safety: immutable after static initialisation.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "common/domain.h"

namespace pp {

enum class SurplusEvent {
  kOffer,        // matching sends a targeted offer to one NGO
  kOfferLapsed,  // the offered NGO declined or did not answer in time
  kClaim,        // an NGO takes it (accepting an offer, claiming directly, manual assignment)
  kRelease,      // the claiming NGO drops out before pickup
  kPickUp,
  kDeliver,
  kDeadLetter,   // no NGO could be found
  kRequeue,      // out of the dead-letter queue for another round of matching
  kExpire,       // best_before passed
  kCancel,       // the provider or an operator withdrew it
};

std::string_view ToString(SurplusEvent e);

struct Transition {
  SurplusStatus from;
  SurplusEvent event;
  SurplusStatus to;
};

// The whole table.
const std::vector<Transition>& SurplusTransitions();

// The status `event` leads to from `from`, or nullopt if the table has no
// such line.
std::optional<SurplusStatus> NextStatus(SurplusStatus from, SurplusEvent event);

// Every status from which `event` is allowed (for WHERE status IN (...)).
std::vector<SurplusStatus> SourcesOf(SurplusEvent event);

bool IsTerminal(SurplusStatus s);

}  // namespace pp

namespace pp {
// Every event leads to exactly one status whatever it starts from (a test
// holds the table to this), which lets a store apply an event with a single
// conditional UPDATE ... SET status = TargetOf(event) WHERE status IN SourcesOf(event).
SurplusStatus TargetOf(SurplusEvent event);
}  // namespace pp
