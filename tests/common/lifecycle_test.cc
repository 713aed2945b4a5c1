#include "common/lifecycle.h"

#include <gtest/gtest.h>

#include <set>

namespace pp {
namespace {

constexpr SurplusEvent kAllEvents[] = {
    SurplusEvent::kOffer,   SurplusEvent::kOfferLapsed, SurplusEvent::kClaim,
    SurplusEvent::kRelease, SurplusEvent::kPickUp,      SurplusEvent::kDeliver,
    SurplusEvent::kDeadLetter, SurplusEvent::kRequeue,  SurplusEvent::kExpire,
    SurplusEvent::kCancel};

TEST(Lifecycle, EveryEventHasOneTargetWhateverItsSource) {
  // The stores rely on this to apply an event with one conditional UPDATE.
  for (auto e : kAllEvents) {
    std::set<SurplusStatus> targets;
    for (const auto& t : SurplusTransitions())
      if (t.event == e) targets.insert(t.to);
    EXPECT_EQ(targets.size(), 1u) << ToString(e);
    EXPECT_EQ(*targets.begin(), TargetOf(e)) << ToString(e);
  }
}

TEST(Lifecycle, NoDuplicateLines) {
  std::set<std::pair<SurplusStatus, SurplusEvent>> seen;
  for (const auto& t : SurplusTransitions())
    EXPECT_TRUE(seen.insert({t.from, t.event}).second)
        << ToString(t.from) << " " << ToString(t.event);
}

TEST(Lifecycle, HappyPath) {
  auto s = SurplusStatus::kAvailable;
  for (auto e : {SurplusEvent::kOffer, SurplusEvent::kClaim, SurplusEvent::kPickUp,
                 SurplusEvent::kDeliver}) {
    auto next = NextStatus(s, e);
    ASSERT_TRUE(next) << ToString(s) << " " << ToString(e);
    s = *next;
  }
  EXPECT_EQ(s, SurplusStatus::kDelivered);
}

TEST(Lifecycle, ClaimOnlyFromOpenStates) {
  auto sources = SourcesOf(SurplusEvent::kClaim);
  std::set<SurplusStatus> got(sources.begin(), sources.end());
  EXPECT_EQ(got, (std::set<SurplusStatus>{SurplusStatus::kAvailable, SurplusStatus::kOffered,
                                          SurplusStatus::kDeadLettered}));
  EXPECT_FALSE(NextStatus(SurplusStatus::kClaimed, SurplusEvent::kClaim));
  EXPECT_FALSE(NextStatus(SurplusStatus::kExpired, SurplusEvent::kClaim));
}

TEST(Lifecycle, TerminalStatesHaveNoWayOut) {
  EXPECT_TRUE(IsTerminal(SurplusStatus::kDelivered));
  EXPECT_TRUE(IsTerminal(SurplusStatus::kExpired));
  EXPECT_TRUE(IsTerminal(SurplusStatus::kCancelled));
  EXPECT_FALSE(IsTerminal(SurplusStatus::kAvailable));
  EXPECT_FALSE(IsTerminal(SurplusStatus::kDeadLettered));
  for (auto e : kAllEvents) EXPECT_FALSE(NextStatus(SurplusStatus::kDelivered, e));
}

TEST(Lifecycle, EveryNonTerminalStatusCanExpire) {
  for (auto s : {SurplusStatus::kAvailable, SurplusStatus::kOffered, SurplusStatus::kClaimed,
                 SurplusStatus::kDeadLettered})
    EXPECT_EQ(NextStatus(s, SurplusEvent::kExpire), SurplusStatus::kExpired) << ToString(s);
}

TEST(Lifecycle, NamesRoundTrip) {
  for (auto s : {SurplusStatus::kAvailable, SurplusStatus::kOffered, SurplusStatus::kClaimed,
                 SurplusStatus::kPickedUp, SurplusStatus::kDelivered, SurplusStatus::kExpired,
                 SurplusStatus::kCancelled, SurplusStatus::kDeadLettered})
    EXPECT_EQ(ParseSurplusStatus(ToString(s)), s);
  EXPECT_FALSE(ParseSurplusStatus("bogus"));
}

}  // namespace
}  // namespace pp
