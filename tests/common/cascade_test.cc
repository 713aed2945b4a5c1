#include "common/cascade.h"

#include <gtest/gtest.h>

#include "common/time_format.h"

namespace pp {
namespace {

using std::chrono::minutes;
const Timestamp kT0 = *ParseRfc3339("2026-11-24T21:00:00Z");

Surplus Post(SurplusStatus status = SurplusStatus::kAvailable) {
  Surplus s;
  s.id = 9;
  s.status = status;
  s.version = 3;
  s.draft.best_before = kT0 + std::chrono::hours(2);
  return s;
}

Surplus Offered(int64_t ngo, Timestamp expires) {
  Surplus s = Post(SurplusStatus::kOffered);
  s.match.offered_to = ngo;
  s.match.offer_expires_at = expires;
  return s;
}

TEST(Cascade, OfferSetsADeadlineNeverPastBestBeforeNorThePickupWindow) {
  CascadePolicy p;
  auto d = DecideOffer(Post(), 4, kT0, p);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->match.offered_to, 4);
  EXPECT_EQ(d->match.offer_expires_at, kT0 + minutes(5));
  Surplus soon = Post();
  soon.draft.best_before = kT0 + minutes(2);
  EXPECT_EQ(DecideOffer(soon, 4, kT0, p)->match.offer_expires_at, kT0 + minutes(2));
  Surplus closing = Post();  // good for 2 h, but the kitchen hands over only for 3 more minutes
  closing.draft.pickup_start = kT0 - minutes(30);
  closing.draft.pickup_end = kT0 + minutes(3);
  EXPECT_EQ(DecideOffer(closing, 4, kT0, p)->match.offer_expires_at, kT0 + minutes(3));
}

TEST(Cascade, ExcludedNgosGetNoOffer) {
  Surplus s = Post();
  s.match.excluded = {4};
  auto d = DecideOffer(s, 4, kT0, {});
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, Code::kFailedPrecondition);
}

TEST(Cascade, AcceptOnlyByTheOfferedNgoBeforeTheDeadline) {
  Surplus s = Offered(4, kT0 + minutes(5));
  auto ok = DecideAccept(s, 4, kT0 + minutes(4));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->event, SurplusEvent::kClaim);
  EXPECT_EQ(ok->claimed_by, 4);
  EXPECT_FALSE(ok->match.offered_to);
  auto late = DecideAccept(s, 4, kT0 + minutes(5));
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, Code::kAborted);
  EXPECT_NE(late.error().message.find("expired"), std::string::npos);
  EXPECT_FALSE(DecideAccept(s, 5, kT0).ok());  // not theirs
}

TEST(Cascade, DeclineAndTimeoutExcludeAndReopen) {
  Surplus s = Offered(4, kT0 + minutes(5));
  s.match.excluded = {2};
  auto d = DecideDecline(s, 4);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(TargetOf(d->event), SurplusStatus::kAvailable);
  EXPECT_EQ(d->match.excluded, (std::vector<int64_t>{2, 4}));
  EXPECT_FALSE(d->match.offered_to);
  EXPECT_FALSE(DecideOfferTimeout(s, kT0 + minutes(4)).ok());  // not yet
  auto t = DecideOfferTimeout(s, kT0 + minutes(5));
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->match.excluded, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(t->outbox_type, "surplus.offer_timed_out");
}

// A driver who cannot come says so: the post is open again for the next
// NGO, the one that dropped out excluded, and its handover code void.
TEST(Cascade, TheClaimerReleasesItsClaimAndIsExcluded) {
  Surplus s = Post(SurplusStatus::kClaimed);
  s.claimed_by = 4;
  s.handover_code = "123456";
  s.match.excluded = {2};
  EXPECT_EQ(DecideRelease(s, 5).error().code, Code::kAborted) << "only the claimer releases";
  EXPECT_EQ(DecideRelease(Post(), 4).error().code, Code::kAborted) << "nothing to release";
  Surplus picked = s;
  picked.status = SurplusStatus::kPickedUp;
  EXPECT_EQ(DecideRelease(picked, 4).error().code, Code::kAborted) << "too late once picked up";
  auto d = DecideRelease(s, 4);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->outbox_type, "surplus.released");
  EXPECT_EQ(d->actor, 4);
  Surplus after = Apply(s, *d, kT0);
  EXPECT_EQ(after.status, SurplusStatus::kAvailable);
  EXPECT_FALSE(after.claimed_by);
  EXPECT_EQ(after.handover_code, "");
  EXPECT_EQ(after.match.excluded, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(after.version, s.version + 1);
  // An NGO that declined this post once, then claimed it directly: it ends
  // the list, so that the relay tells it (OrgsOf takes the last).
  s.match.excluded = {4, 2};
  EXPECT_EQ(DecideRelease(s, 4)->match.excluded, (std::vector<int64_t>{2, 4}));
}

TEST(Cascade, DeadLetterRetriesAfterOneTwoFourBasesThenAlerts) {
  CascadePolicy p;
  Surplus s = Post();
  Timestamp now = kT0;
  std::vector<Duration> waits;
  for (int i = 0; i < 4; ++i) {
    auto d = DecideDeadLetter(s, now, p);
    ASSERT_TRUE(d.ok()) << i;
    s = Apply(s, *d, now);
    EXPECT_EQ(s.status, SurplusStatus::kDeadLettered);
    if (i < 3) {
      ASSERT_TRUE(s.match.next_retry_at);
      waits.push_back(*s.match.next_retry_at - now);
      EXPECT_FALSE(d->dlq_exhausted);
      // Retries left: no alert, and none to resolve if an NGO claims it now.
      EXPECT_EQ(AlertOf(s, *DecideClaim(s, 6, s.version)), OperatorAlert::kNone);
      now = *s.match.next_retry_at;
    } else {
      EXPECT_FALSE(s.match.next_retry_at);  // waits for an operator
      EXPECT_TRUE(d->dlq_exhausted);
    }
  }
  EXPECT_EQ(waits, (std::vector<Duration>{minutes(1), minutes(2), minutes(4)}));
  auto assigned = DecideAssign(s, 7);
  ASSERT_TRUE(assigned.ok());
  EXPECT_EQ(Apply(s, *assigned, now).status, SurplusStatus::kClaimed);
}

// The alert raised when the retries run out is resolved by whatever takes
// the post out of the DLQ afterwards, and by nothing else.
TEST(Cascade, TheOperatorAlertIsRaisedOnceAndResolvedWhenThePostLeavesTheDlq) {
  CascadePolicy p;
  p.dlq_max_retries = 1;
  Surplus s = Post();
  auto first = DecideDeadLetter(s, kT0, p);
  EXPECT_EQ(AlertOf(s, *first), OperatorAlert::kNone);
  s = Apply(s, *first, kT0);
  auto last = DecideDeadLetter(s, kT0, p);
  EXPECT_EQ(AlertOf(s, *last), OperatorAlert::kRaise);
  s = Apply(s, *last, kT0);
  ASSERT_FALSE(s.match.next_retry_at);
  EXPECT_EQ(AlertOf(s, *DecideAssign(s, 7)), OperatorAlert::kResolve);
  EXPECT_EQ(AlertOf(s, *DecideClaim(s, 6, s.version)), OperatorAlert::kResolve);
  EXPECT_EQ(AlertOf(s, *DecideCancel(s, 1)), OperatorAlert::kResolve);
  EXPECT_EQ(AlertOf(s, *DecideExpire(s, s.draft.best_before)), OperatorAlert::kResolve);
  // Once out of the DLQ, later steps have nothing to resolve.
  Surplus claimed = Apply(s, *DecideAssign(s, 7), kT0);
  claimed.handover_code = "123456";
  EXPECT_EQ(AlertOf(claimed, *DecidePickUp(claimed, 7, "123456", 1)), OperatorAlert::kNone);
}

TEST(Cascade, ExpiryEndsOffersAndTimers) {
  Surplus s = Offered(4, kT0 + minutes(5));
  EXPECT_FALSE(DecideExpire(s, kT0).ok());
  auto d = DecideExpire(s, s.draft.best_before);
  ASSERT_TRUE(d.ok());
  Surplus after = Apply(s, *d, s.draft.best_before);
  EXPECT_EQ(after.status, SurplusStatus::kExpired);
  EXPECT_FALSE(after.match.offered_to);
  EXPECT_FALSE(after.match.offer_expires_at);
  EXPECT_FALSE(after.match.next_retry_at);
  EXPECT_FALSE(DecideOffer(after, 5, kT0, {}).ok());
  EXPECT_FALSE(DecideClaim(after, 5, after.version).ok());
}

TEST(Cascade, DirectClaimWinsOverAnOpenOfferAtTheRightVersion) {
  Surplus s = Offered(4, kT0 + minutes(5));
  auto d = DecideClaim(s, 6, s.version);
  ASSERT_TRUE(d.ok());
  Surplus after = Apply(s, *d, kT0);
  EXPECT_EQ(after.claimed_by, 6);
  EXPECT_FALSE(after.match.offered_to);
  // The offered NGO's accept now finds no offer: it learns the truth.
  auto late = DecideAccept(after, 4, kT0);
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, Code::kAborted);
  EXPECT_NE(late.error().context_json.find("\"claimed_by\":6"), std::string::npos);
}

}  // namespace
}  // namespace pp
