// The hub core on both backends: claims raced by many threads, idempotent
// replays, and group commit isolating a failing operation.
#include "cloud-hub/core/hub_service.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <latch>
#include <mutex>
#include <numeric>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "common/time_format.h"
#include "sync/protocol.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

const Timestamp kT0 = *ParseRfc3339("2026-11-24T20:00:00Z");

class HubServiceTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    url_ = test::StoreUrl(GetParam(), dir_, "service");
    ASSERT_FALSE(url_.empty());
    auto store = OpenStore(url_);
    ASSERT_TRUE(store.ok()) << store.error().ToString();
    store_ = std::move(*store);
    auto gc = GroupCommitter::Start(*store_, {});
    ASSERT_TRUE(gc.ok());
    committer_ = std::move(*gc);
    hub_ = std::make_unique<HubService>(*store_, *committer_, clock_);
  }

  int64_t NewOrg(OrgKind kind) {
    auto r = hub_->CreateOrganization({kind, "org", {51.5, -0.1}}, "");
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    return json::parse(r->json)["id"].get<int64_t>();
  }

  SurplusDraft Draft(int64_t provider, std::string description = "sayur lodeh") {
    SurplusDraft d;
    d.provider_id = provider;
    d.category = "prepared_meals";
    d.description = std::move(description);
    d.quantity_kg = 2.5;
    d.best_before = kT0 + std::chrono::hours(4);
    return d;
  }

  int64_t NewPost(int64_t provider, const std::string& key) {
    auto r = hub_->PostSurplus(Draft(provider), key);
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    return json::parse(r->json)["id"].get<int64_t>();
  }

  json Get(int64_t id) { return json::parse(hub_->GetSurplus(id)->json); }

  // Two hub replicas on the fixture's database, one store writer each: `a`
  // on the fixture's store (hub_ is dropped), `b` on a store of its own.
  struct Replica {
    std::unique_ptr<Store> own_store;
    std::unique_ptr<HubService> hub;
    std::unique_ptr<GroupCommitter> committer;  // destroyed first: its callbacks use the hub
  };
  std::pair<Replica, Replica> TwoReplicas() {
    hub_.reset();
    std::pair<Replica, Replica> r;
    auto other = OpenStore(url_);
    EXPECT_TRUE(other.ok());
    if (!other.ok()) return r;
    r.second.own_store = std::move(*other);
    for (auto [replica, store] : {std::pair{&r.first, store_.get()}, std::pair{&r.second, r.second.own_store.get()}}) {
      replica->committer = std::move(*GroupCommitter::Start(*store, {.writers = 1}));
      replica->hub = std::make_unique<HubService>(*store, *replica->committer, clock_);
    }
    return r;
  }

  // Submits an op of `lanes` that keeps its writer, inside its batch, until
  // `release` counts down; returns once the writer is in it.
  void HoldAWriter(GroupCommitter::Lanes lanes, std::latch& release) {
    HoldAWriter(*committer_, std::move(lanes), release);
  }
  static void HoldAWriter(GroupCommitter& committer, GroupCommitter::Lanes lanes, std::latch& release) {
    auto inside = std::make_shared<std::latch>(1);  // outlives this call if need be
    committer.Submit(
        [inside, &release](StoreSession&) {
          inside->count_down();
          release.wait();
          return OkStatus();
        },
        [](Status) {}, std::move(lanes));
    inside->wait();
  }

  // Two batches' first ops meet: each Arrive() returns once both have come,
  // or once the other batch is seen waiting for a row lock (held back by
  // this batch's lane locks, it cannot come), so that each batch holds a
  // row before either goes on.
  class Rendezvous {
   public:
    explicit Rendezvous(std::string url) : url_(std::move(url)) {}
    void Arrive() {
      {
        std::lock_guard lock(mu_);
        ++arrived_;
      }
      EXPECT_TRUE(test::Eventually(
          [&] {
            {
              std::lock_guard lock(mu_);
              if (arrived_ >= 2) return true;
            }
            return test::PostgresSessionsWaitingOnALock(url_) > 0;
          },
          std::chrono::seconds(30)))
          << "the other batch neither came nor waited for a lock";
    }

   private:
    const std::string url_;
    std::mutex mu_;
    int arrived_ = 0;  // guarded by mu_
  };

  test::TempDir dir_;
  SimulatedClock clock_{kT0};
  std::string url_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<GroupCommitter> committer_;
  std::unique_ptr<HubService> hub_;
};

TEST_P(HubServiceTest, EightThreadsRacingFiveHundredPostsGiveExactlyOneWinnerEach) {
  constexpr int kPosts = 500, kThreads = 8;
  int64_t provider = NewOrg(OrgKind::kProvider);
  std::vector<int64_t> ngos, posts;
  for (int i = 0; i < kThreads; ++i) ngos.push_back(NewOrg(OrgKind::kNgo));
  for (int i = 0; i < kPosts; ++i) posts.push_back(NewPost(provider, "post-" + std::to_string(i)));

  // wins[t][p]: thread t's claim on post p succeeded; seen_winner: what a
  // loser was told about the winner.
  std::vector<std::vector<char>> wins(kThreads, std::vector<char>(kPosts, 0));
  std::vector<std::vector<int64_t>> told(kThreads, std::vector<int64_t>(kPosts, 0));
  std::atomic<int> other_errors{0};
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<int> order(kPosts);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), std::mt19937(t));
      start.arrive_and_wait();
      for (int p : order) {
        auto r = hub_->Claim(posts[p], {ngos[t], 1}, "claim-" + std::to_string(p));
        if (r.ok()) {
          wins[t][p] = 1;
        } else if (r.error().code == Code::kAborted) {
          told[t][p] = json::parse(r.error().context_json)["claimed_by"].get<int64_t>();
        } else {
          other_errors++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(other_errors.load(), 0);

  for (int p = 0; p < kPosts; ++p) {
    int winners = 0;
    int64_t winner = 0;
    for (int t = 0; t < kThreads; ++t)
      if (wins[t][p]) winners++, winner = ngos[t];
    ASSERT_EQ(winners, 1) << "post " << posts[p];
    for (int t = 0; t < kThreads; ++t)
      if (!wins[t][p]) {
        EXPECT_EQ(told[t][p], winner) << "loser must learn the winner";
      }
    json x = Get(posts[p]);
    EXPECT_EQ(x["status"], "claimed");
    EXPECT_EQ(x["version"], 2);
    EXPECT_EQ(x["claimed_by"], winner);
    ASSERT_EQ(x["history"].size(), 2u);
    EXPECT_EQ(x["history"][1]["actor"], winner);
  }
  // One outbox event per post and per claim: nothing more, nothing less.
  auto s = *store_->OpenSession();
  ASSERT_TRUE(s->Begin(TxnMode::kRead).ok());
  auto events = *s->ListOutbox(0, 10 * kPosts);
  int posted = 0, claimed = 0;
  for (const auto& e : events) (e.type == "surplus.posted" ? posted : claimed)++;
  EXPECT_EQ(posted, kPosts);
  EXPECT_EQ(claimed, kPosts);
  s->Rollback();
}

TEST_P(HubServiceTest, ReplayReturnsTheFirstResultAndHasNoSecondEffect) {
  int64_t provider = NewOrg(OrgKind::kProvider), ngo = NewOrg(OrgKind::kNgo);
  auto first = hub_->PostSurplus(Draft(provider), "k-1");
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->replayed);
  clock_.Advance(std::chrono::minutes(3));
  auto again = hub_->PostSurplus(Draft(provider), "k-1");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->replayed);
  EXPECT_EQ(again->json, first->json);

  int64_t id = json::parse(first->json)["id"].get<int64_t>();
  auto claim = hub_->Claim(id, {ngo, 1}, "c-1");
  ASSERT_TRUE(claim.ok());
  // The state has moved on (version 2), yet the retry gets its first answer.
  auto claim_again = hub_->Claim(id, {ngo, 1}, "c-1");
  ASSERT_TRUE(claim_again.ok()) << claim_again.error().ToString();
  EXPECT_TRUE(claim_again->replayed);
  EXPECT_EQ(claim_again->json, claim->json);

  auto s = *store_->OpenSession();
  ASSERT_TRUE(s->Begin(TxnMode::kRead).ok());
  EXPECT_EQ(*s->CountSurplus(), 1);
  EXPECT_EQ(s->GetHistory(id)->size(), 2u);
  EXPECT_EQ(s->ListOutbox(0, 100)->size(), 2u);
  s->Rollback();
}

TEST_P(HubServiceTest, AKeyReusedForAnotherRequestIsRefused) {
  int64_t provider = NewOrg(OrgKind::kProvider);
  ASSERT_TRUE(hub_->PostSurplus(Draft(provider, "bread"), "k").ok());
  auto other = hub_->PostSurplus(Draft(provider, "cake"), "k");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().code, Code::kFailedPrecondition);
  // Keys are scoped by provider: another provider may use the same string.
  int64_t provider2 = NewOrg(OrgKind::kProvider);
  EXPECT_TRUE(hub_->PostSurplus(Draft(provider2, "cake"), "k").ok());
}

TEST_P(HubServiceTest, WrongOrganisationsAndMissingPostsAreNamed) {
  int64_t provider = NewOrg(OrgKind::kProvider), ngo = NewOrg(OrgKind::kNgo);
  auto by_ngo = hub_->PostSurplus(Draft(ngo), "a");
  ASSERT_FALSE(by_ngo.ok());
  EXPECT_EQ(by_ngo.error().fields.at(0).field, "provider_id");
  int64_t id = NewPost(provider, "b");
  auto by_provider = hub_->Claim(id, {provider, 1}, "c");
  ASSERT_FALSE(by_provider.ok());
  EXPECT_EQ(by_provider.error().fields.at(0).field, "ngo_id");
  auto missing = hub_->Claim(id + 100, {ngo, 1}, "d");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, Code::kNotFound);
  auto stale = hub_->Claim(id, {ngo, 7}, "e");
  ASSERT_FALSE(stale.ok());
  EXPECT_EQ(stale.error().code, Code::kAborted);
  EXPECT_EQ(json::parse(stale.error().context_json)["version"], 1);
  EXPECT_EQ(Get(id)["status"], "available");
}

TEST_P(HubServiceTest, PostPositionDefaultsToTheProvider) {
  int64_t provider = NewOrg(OrgKind::kProvider);
  json x = Get(NewPost(provider, "p"));
  EXPECT_EQ(x["lat"], 51.5);
  EXPECT_EQ(x["lon"], -0.1);
  EXPECT_EQ(x["created_at"], "2026-11-24T20:00:00Z");
}

// Claim -> pickup with the provider's code -> deliver. The code is issued at
// claim, kept out of the NGO's answers, and only the right one opens pickup.
TEST_P(HubServiceTest, PickupNeedsTheHandoverCodeAndAPartialPickupRepostsTheRest) {
  int64_t provider = NewOrg(OrgKind::kProvider), ngo = NewOrg(OrgKind::kNgo),
          other = NewOrg(OrgKind::kNgo);
  int64_t id = NewPost(provider, "p1");  // 2.5 kg
  auto claimed = hub_->Claim(id, {ngo, 1}, "c1");
  ASSERT_TRUE(claimed.ok()) << claimed.error().ToString();
  EXPECT_FALSE(json::parse(claimed->json).contains("handover_code"));
  std::string code = claimed->surplus->handover_code;
  ASSERT_EQ(code.size(), 6u);
  EXPECT_TRUE(std::all_of(code.begin(), code.end(), ::isdigit));
  std::string wrong = code == "000000" ? "000001" : "000000";

  auto bad = hub_->PickUp(id, {ngo, wrong, 1.0}, "k1");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, Code::kInvalidArgument);
  EXPECT_EQ(bad.error().fields.at(0).field, "handover_code");
  auto too_much = hub_->PickUp(id, {ngo, code, 3.0}, "k2");
  ASSERT_FALSE(too_much.ok());
  EXPECT_EQ(too_much.error().fields.at(0).field, "actual_kg");
  auto not_theirs = hub_->PickUp(id, {other, code, 1.0}, "k3");
  ASSERT_FALSE(not_theirs.ok());
  EXPECT_EQ(not_theirs.error().code, Code::kAborted);
  EXPECT_EQ(Get(id)["status"], "claimed");  // nothing refused changed anything

  auto picked = hub_->PickUp(id, {ngo, code, 1.0}, "k4");
  ASSERT_TRUE(picked.ok()) << picked.error().ToString();
  auto after = json::parse(picked->json);
  EXPECT_EQ(after["status"], "picked_up");
  int64_t rest = after["remainder_id"].get<int64_t>();
  auto remainder = Get(rest);
  EXPECT_EQ(remainder["status"], "available");
  EXPECT_DOUBLE_EQ(remainder["quantity_kg"].get<double>(), 1.5);
  EXPECT_EQ(remainder["provider_id"], provider);

  EXPECT_EQ(hub_->Deliver(id, other, "d0").error().code, Code::kAborted);
  auto delivered = hub_->Deliver(id, ngo, "d1");
  ASSERT_TRUE(delivered.ok()) << delivered.error().ToString();
  auto final_state = Get(id);
  EXPECT_EQ(final_state["status"], "delivered");
  EXPECT_DOUBLE_EQ(final_state["picked_up_kg"].get<double>(), 1.0);
  EXPECT_EQ(final_state["history"].size(), 4u);  // post, claim, pick_up, deliver
  // A full pickup leaves nothing to repost.
  int64_t id2 = NewPost(provider, "p2");
  auto c2 = hub_->Claim(id2, {ngo, 1}, "c2");
  ASSERT_TRUE(c2.ok());
  auto full = hub_->PickUp(id2, {ngo, c2->surplus->handover_code, 2.5}, "k5");
  ASSERT_TRUE(full.ok());
  EXPECT_FALSE(json::parse(full->json).contains("remainder_id"));
}

TEST_P(HubServiceTest, AStoreFailureInABatchFailsOnlyItsOwnOperation) {
  int64_t provider = NewOrg(OrgKind::kProvider);
  // One writer, so that the three operations queued behind the held one
  // are certain to share a batch (PostgreSQL runs four by default).
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.max_batch = 512, .writers = 1}));
  hub_ = std::make_unique<HubService>(*store_, *committer_, clock_);
  // Hold the writer so that the next three operations queue into one batch.
  std::latch hold(1), holding(1);
  committer_->Submit(
      [&](StoreSession&) {
        holding.count_down();
        hold.wait();
        return OkStatus();
      },
      [](Status) {});
  holding.wait();
  std::vector<std::future<Result<Reply>>> results;
  auto post = [&](std::string key) {
    auto p = std::make_shared<std::promise<Result<Reply>>>();
    results.push_back(p->get_future());
    hub_->PostSurplus(Draft(provider), key, [p](Result<Reply> r) { p->set_value(std::move(r)); });
  };
  post("good-1");
  std::promise<Status> bad_done;
  committer_->Submit([](StoreSession&) -> Status { return Error::Internal("disk on fire"); },
                     [&](Status s) { bad_done.set_value(std::move(s)); });
  post("good-2");
  auto before = committer_->stats();
  hold.count_down();
  for (auto& f : results) {
    auto r = f.get();
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    EXPECT_FALSE(r->replayed);
  }
  auto bad = bad_done.get_future().get();
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message, "disk on fire");
  EXPECT_EQ(committer_->stats().batch_failures, before.batch_failures + 1);
  auto s = *store_->OpenSession();
  ASSERT_TRUE(s->Begin(TxnMode::kRead).ok());
  EXPECT_EQ(*s->CountSurplus(), 2);  // each good post exactly once
  s->Rollback();
}

TEST_P(HubServiceTest, EachBatchRecordsItsTransactionTimeAndSize) {
  metrics::Registry registry;
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.writers = 1, .metrics = &registry}));
  hub_ = std::make_unique<HubService>(*store_, *committer_, clock_);
  int64_t provider = NewOrg(OrgKind::kProvider);
  // A batch that takes 50 ms inside its transaction, holding three posts
  // queued behind it: the histogram must see at least that long a batch.
  std::latch holding(1), queued(1);
  committer_->Submit(
      [&](StoreSession&) {
        holding.count_down();
        queued.wait();
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        return OkStatus();
      },
      [](Status) {});
  holding.wait();
  std::vector<std::future<Result<Reply>>> results;
  for (int i = 0; i < 3; ++i) {
    auto p = std::make_shared<std::promise<Result<Reply>>>();
    results.push_back(p->get_future());
    hub_->PostSurplus(Draft(provider), "b" + std::to_string(i), [p](Result<Reply> r) { p->set_value(std::move(r)); });
  }
  queued.count_down();
  for (auto& f : results) ASSERT_TRUE(f.get().ok());
  const auto text = registry.Render();
  auto seconds = registry.GetHistogram("store_batch_seconds", "", {}).Read();
  auto ops = registry.GetHistogram("store_batch_ops", "", {}).Read();
  EXPECT_EQ(seconds.count, committer_->stats().batches) << text;
  EXPECT_EQ(ops.count, committer_->stats().batches);
  EXPECT_DOUBLE_EQ(ops.sum, double(committer_->stats().ops));
  EXPECT_GE(seconds.sum, 0.050);
  // The three posts shared one batch: some batch held 3 ops (bucket <= 5, not <= 2).
  EXPECT_GT(ops.cumulative[2], ops.cumulative[1]) << text;
}

// The relay's marks are lazy: they ride in the next batch of other ops, and
// commit alone only once they have waited the committer's lazy_wait.
TEST_P(HubServiceTest, ALazyOpRidesInTheNextBatchOrCommitsAloneAfterItsWait) {
  hub_.reset();
  // A wait no test run reaches: the lazy op can only go with the next post.
  committer_ = std::move(*GroupCommitter::Start(*store_, {.writers = 1, .lazy_wait = std::chrono::hours(1)}));
  hub_ = std::make_unique<HubService>(*store_, *committer_, clock_);
  int64_t provider = NewOrg(OrgKind::kProvider);
  std::promise<Status> lazy_done;
  auto lazy = lazy_done.get_future();
  const auto before = committer_->stats();
  committer_->SubmitLazy([](StoreSession&) { return OkStatus(); },
                         [&](Status st) { lazy_done.set_value(std::move(st)); });
  NewPost(provider, "company");  // acknowledged after its commit
  ASSERT_EQ(lazy.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(lazy.get().ok());
  EXPECT_EQ(committer_->stats().batches, before.batches + 1) << "one transaction for both";
  EXPECT_EQ(committer_->stats().ops, before.ops + 2);

  // Alone, it waits its lazy_wait, then commits.
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.writers = 1, .lazy_wait = std::chrono::milliseconds(200)}));
  hub_ = std::make_unique<HubService>(*store_, *committer_, clock_);
  const int64_t id = NewPost(provider, "alone");
  auto page = hub_->ListUnsentOutbox(100);
  ASSERT_TRUE(page.ok());
  std::vector<int64_t> ids;
  for (const auto& e : *page) ids.push_back(e.id);
  ASSERT_FALSE(ids.empty());
  std::promise<Status> marked;
  auto marked_f = marked.get_future();
  const auto asked = std::chrono::steady_clock::now();
  hub_->MarkOutboxSent(ids, {}, [&](Status st) { marked.set_value(std::move(st)); });
  ASSERT_EQ(marked_f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_GE(std::chrono::steady_clock::now() - asked, std::chrono::milliseconds(200));
  EXPECT_TRUE(marked_f.get().ok());
  EXPECT_TRUE(hub_->ListUnsentOutbox(100)->empty()) << "post " << id << "'s events are marked";

  // One left waiting when the committer stops is committed before it ends.
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.writers = 1, .lazy_wait = std::chrono::hours(1)}));
  bool ran = false, done = false;
  committer_->SubmitLazy([&](StoreSession&) { ran = true; return OkStatus(); }, [&](Status st) { done = st.ok(); });
  committer_.reset();
  EXPECT_TRUE(ran);
  EXPECT_TRUE(done);
}

// Ops of one lane (a device) never run in two writers' batches at once and
// commit in the order submitted: on PostgreSQL two batches updating the same
// devices' rows in opposite orders deadlocked. The other lane goes past.
TEST_P(HubServiceTest, AnOpWaitsWhileAnotherWritersBatchHoldsItsLaneAndOtherLanesGoPast) {
  if (store_->MaxConcurrentWriters() < 2) GTEST_SKIP() << "one writer: batches never run concurrently";
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.writers = 2}));
  std::latch hold(1);
  std::atomic<bool> released{false}, second_ran_early{false};
  HoldAWriter({"device:a"}, hold);
  std::promise<Status> second, other;
  committer_->Submit(
      [&](StoreSession&) {
        if (!released) second_ran_early = true;
        return OkStatus();
      },
      [&](Status st) { second.set_value(std::move(st)); }, {"device:a"});
  committer_->Submit([](StoreSession&) { return OkStatus(); },
                     [&](Status st) { other.set_value(std::move(st)); }, {"device:b"});
  auto other_f = other.get_future();
  ASSERT_EQ(other_f.wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the free writer takes device:b past the op left waiting";
  EXPECT_TRUE(other_f.get().ok());
  EXPECT_FALSE(second_ran_early) << "device:a's second op ran beside its first";
  released = true;
  hold.count_down();
  auto second_f = second.get_future();
  ASSERT_EQ(second_f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(second_f.get().ok());
  EXPECT_FALSE(second_ran_early) << "device:a's second op ran before its first was done";
  committer_.reset();  // stops with nothing left
}

// An op of several lanes (a device's op on a post: the device's row and the
// post's) waits while another writer's batch holds any of them, and the
// later ops of each of its lanes wait behind it; other lanes go past.
TEST_P(HubServiceTest, AnOpOfTwoLanesWaitsForEitherAndKeepsEachInOrder) {
  if (store_->MaxConcurrentWriters() < 2) GTEST_SKIP() << "one writer: batches never run concurrently";
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.writers = 2}));
  std::latch hold(1);
  std::mutex mu;
  std::vector<std::string> ran;  // guarded by mu
  auto record = [&](std::string name) {
    return [&, name](StoreSession&) {
      std::lock_guard lock(mu);
      ran.push_back(name);
      return OkStatus();
    };
  };
  HoldAWriter({"surplus:7"}, hold);
  std::promise<void> both, past;
  std::atomic<int> left{2};
  auto one_done = [&](Status) {
    if (--left == 0) both.set_value();
  };
  committer_->Submit(record("claim"), one_done, {"device:b", "surplus:7"});
  committer_->Submit(record("after"), one_done, {"device:b"});  // the same device, no post
  committer_->Submit(record("other"), [&](Status) { past.set_value(); }, {"device:c"});
  ASSERT_EQ(past.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready)
      << "the free writer takes device:c past the ops left waiting";
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(ran, std::vector<std::string>{"other"})
        << "an op ran while another batch held surplus:7, or ran before device:b's earlier op";
  }
  hold.count_down();
  ASSERT_EQ(both.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  std::lock_guard lock(mu);
  EXPECT_EQ(ran, (std::vector<std::string>{"other", "claim", "after"}));
}

// Two NGOs' vans race for the same posts through two hub replicas on one
// PostgreSQL: each replica's batch claims the same twenty posts, one in the
// order p0..p19, the other p19..p0, both begun at once. Without the posts'
// rows locked in the batch's prologue each held a post the other wanted:
// deadlocked (PostgreSQL ended one after deadlock_timeout, 1 s, and its
// batch was run again op by op). With them the second batch waits for the
// first and finds every post claimed.
// Each replica caches organisations and devices. An edit or a revocation
// made through one is seen by the other once its entry is older than the
// cache's time to live, on the hub's clock (here simulated, not slept).
TEST_P(HubServiceTest, AnotherReplicaSeesAnEditAndARevocationOnceItsCacheExpires) {
  if (store_->MaxConcurrentWriters() < 2) GTEST_SKIP() << "a SQLite file has one hub: there is no other replica";
  const int64_t provider = NewOrg(OrgKind::kProvider);
  auto keys = sync::GenerateKeyPair();
  ASSERT_TRUE(hub_->RegisterDevice({"kiosk-r", "kiosk", provider, sync::ToBase64(keys.public_key), false, 0, {}}).ok());
  auto [a, b] = TwoReplicas();
  ASSERT_TRUE(b.hub);
  auto post_lat = [&](HubService& hub, const std::string& key) {
    auto r = hub.PostSurplus(Draft(provider), key);
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    return r.ok() ? json::parse(r->json)["lat"].get<double>() : 0.0;
  };
  auto revoked_for = [&](HubService& hub) {
    auto d = hub.FindDevice("kiosk-r");
    EXPECT_TRUE(d.ok() && *d);
    return d.ok() && *d && (**d).revoked;
  };
  EXPECT_EQ(post_lat(*b.hub, "b1"), 51.5);  // b caches the organisation and the device
  EXPECT_FALSE(revoked_for(*b.hub));

  OrganizationChange moved;
  moved.position = GeoPoint{51.6, -0.2};
  ASSERT_TRUE(a.hub->UpdateOrganization(provider, moved).ok());
  ASSERT_TRUE(a.hub->RevokeDevice("kiosk-r").ok());
  EXPECT_EQ(post_lat(*a.hub, "a1"), 51.6);  // the replica that made the edit: at once
  EXPECT_TRUE(revoked_for(*a.hub));

  clock_.Advance(HubService::kOrgCacheTtl - std::chrono::seconds(1));
  EXPECT_EQ(post_lat(*b.hub, "b2"), 51.5);  // within the time to live: b's copy
  EXPECT_FALSE(revoked_for(*b.hub));

  clock_.Advance(std::chrono::seconds(2));
  EXPECT_EQ(post_lat(*b.hub, "b3"), 51.6);
  EXPECT_TRUE(revoked_for(*b.hub));
}

TEST_P(HubServiceTest, TwoReplicasClaimingTheSamePostsInOppositeOrdersDoNotDeadlock) {
  if (store_->MaxConcurrentWriters() < 2) GTEST_SKIP() << "one writer: batches never run concurrently";
  constexpr int kPosts = 20;
  const int64_t provider = NewOrg(OrgKind::kProvider);
  const int64_t ngo_a = NewOrg(OrgKind::kNgo), ngo_b = NewOrg(OrgKind::kNgo);
  std::vector<int64_t> posts;
  for (int i = 0; i < kPosts; ++i) posts.push_back(NewPost(provider, "race-post-" + std::to_string(i)));
  auto [a, b] = TwoReplicas();
  ASSERT_TRUE(b.hub);

  // Each writer is held in a first batch while the claims queue behind it,
  // so that they make one batch; both are let go together. Each batch's
  // first claim, once it has updated its post, waits for the other's (or
  // for the other batch to wait on a lock): without the locks both then
  // hold a post the other will want.
  std::latch go(1);
  Rendezvous first_claims(url_);
  std::atomic<int> won{0}, lost{0}, failed{0};
  auto count = [&](const Status& st) {
    if (st.ok()) won++;
    else if (st.error().code == Code::kAborted) lost++;  // the other van's claim came first
    else failed++;
  };
  auto race = [&](Replica& r, int64_t ngo, bool reverse) {
    HoldAWriter(*r.committer, {}, go);
    for (int i = 0; i < kPosts; ++i) {
      const int64_t id = posts[size_t(reverse ? kPosts - 1 - i : i)];
      if (i > 0) {  // as the HTTP and MQTT doors claim
        r.hub->Claim(id, {ngo, 1}, "race-" + std::to_string(ngo) + "-" + std::to_string(id),
                     [&](Result<Reply> reply) { count(reply.status()); });
        continue;
      }
      r.committer->Submit(
          [&, &hub = *r.hub, id, ngo](StoreSession& s) -> Status {
            auto claimed = hub.DecisionEffect(id, ngo, [ngo](const Surplus& cur, Timestamp) {
              return DecideClaim(cur, ngo, 1);
            })(s);
            first_claims.Arrive();
            return claimed.status();
          },
          count, {HubService::SurplusLane(id)});
    }
  };
  race(a, ngo_a, false);
  race(b, ngo_b, true);
  go.count_down();
  ASSERT_TRUE(test::Eventually([&] { return won + lost + failed == 2 * kPosts; }, std::chrono::seconds(30)));
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(won, kPosts);
  EXPECT_EQ(lost, kPosts);
  EXPECT_EQ(a.committer->stats().batch_failures + b.committer->stats().batch_failures, 0u)
      << "a batch was rolled back (deadlock) and run again op by op";
  for (int64_t id : posts) {
    auto x = json::parse(a.hub->GetSurplus(id)->json);
    EXPECT_EQ(x["status"], "claimed") << "post " << id;
    EXPECT_EQ(x["version"], 2) << "post " << id << " claimed once";
  }
}

// Under load, with every writer busy: each lane's ops run in the order they
// were submitted, and every op is acknowledged once.
TEST_P(HubServiceTest, EachLanesOpsRunInTheOrderSubmittedWhileFourWritersShareTheQueue) {
  if (store_->MaxConcurrentWriters() < 2) GTEST_SKIP() << "one writer: batches never run concurrently";
  hub_.reset();
  committer_ = std::move(*GroupCommitter::Start(*store_, {.max_batch = 64, .writers = 4}));
  constexpr int kLanes = 40, kOpsPerLane = 250;
  std::mutex mu;
  std::vector<std::vector<int>> ran(kLanes);  // per lane: op numbers in the order they ran
  std::atomic<int> acknowledged{0}, failed{0};
  for (int i = 0; i < kOpsPerLane; ++i) {
    for (int lane = 0; lane < kLanes; ++lane) {
      committer_->Submit(
          [&, lane, i](StoreSession&) {
            std::lock_guard lock(mu);
            ran[lane].push_back(i);
            return OkStatus();
          },
          [&](Status st) { (st.ok() ? acknowledged : failed)++; }, {"device:" + std::to_string(lane)});
    }
  }
  committer_.reset();  // finishes everything submitted
  EXPECT_EQ(acknowledged, kLanes * kOpsPerLane);
  EXPECT_EQ(failed, 0);
  std::vector<int> expected(kOpsPerLane);
  std::iota(expected.begin(), expected.end(), 0);
  for (int lane = 0; lane < kLanes; ++lane) {
    if (ran[lane] == expected) continue;
    auto at = std::is_sorted_until(ran[lane].begin(), ran[lane].end());
    ADD_FAILURE() << "lane " << lane << ": " << ran[lane].size() << " ops ran; out of order at position "
                  << (at - ran[lane].begin());
  }
}

// Two hub replicas on one PostgreSQL: their lanes keep each process's
// writers apart, not the two processes'. Each replica's batch updates the
// same ten devices' rows (max_seq), one in the order d0..d9, the other
// d9..d0, both begun at once: without the lane prologue's ordered locks they
// deadlocked (PostgreSQL ended one after deadlock_timeout, and its batch
// was run again op by op). With it, the second batch waits for the first.
TEST_P(HubServiceTest, TwoReplicasBatchesOnTheSameDevicesInOppositeOrdersDoNotDeadlock) {
  if (store_->MaxConcurrentWriters() < 2) GTEST_SKIP() << "one writer: batches never run concurrently";
  constexpr int kDevices = 10;
  const int64_t provider = NewOrg(OrgKind::kProvider);
  auto keys = sync::GenerateKeyPair();
  for (int d = 0; d < kDevices; ++d)
    ASSERT_TRUE(hub_->RegisterDevice({"d" + std::to_string(d), "kiosk", provider, sync::ToBase64(keys.public_key),
                                      false, 0, {}})
                    .ok());
  auto [a, b] = TwoReplicas();
  ASSERT_TRUE(b.hub);

  // Each writer is held in a first batch while the ten ops queue behind it,
  // so that they make one batch; both are let go together. The first op of
  // each batch, once it has updated its device, waits for the other's (or
  // for the other batch to wait on a lock): without the locks each then
  // holds a device the other will want.
  std::latch go(1);
  Rendezvous first_ops(url_);
  std::atomic<int> done{0}, failed{0};
  auto queue = [&](GroupCommitter& c, std::vector<int> order, uint64_t seq) {
    c.Submit([&go](StoreSession&) { go.wait(); return OkStatus(); }, [](Status) {});
    bool first = true;
    for (int d : order) {
      const std::string id = "d" + std::to_string(d);
      c.Submit(
          [&, id, seq, first](StoreSession& s) -> Status {
            Status st = s.AdvanceDeviceSeq(id, seq);
            if (first) first_ops.Arrive();
            return st;
          },
          [&](Status st) { (st.ok() ? done : failed)++; }, {HubService::DeviceLane(id)});
      first = false;
    }
  };
  std::vector<int> up(kDevices), down(kDevices);
  std::iota(up.begin(), up.end(), 0);
  std::reverse_copy(up.begin(), up.end(), down.begin());
  queue(*a.committer, up, 5);
  queue(*b.committer, down, 7);
  go.count_down();
  ASSERT_TRUE(test::Eventually([&] { return done + failed == 2 * kDevices; }, std::chrono::seconds(30)));
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(a.committer->stats().batch_failures + b.committer->stats().batch_failures, 0u)
      << "a batch was rolled back (deadlock) and run again op by op";
  for (int d = 0; d < kDevices; ++d) EXPECT_EQ((*a.hub->FindDevice("d" + std::to_string(d)))->max_seq, 7u);
}

// Hub replicas may apply one tablet's reports out of order (the broker
// deals its messages to either). An older report of the tablet whose report
// stands is answered "stale" and changes nothing; another tablet's report
// and an operator's over HTTP are applied whatever their number.
TEST_P(HubServiceTest, AnOlderReportOfTheSameTabletLeavesTheNewerPositionStanding) {
  const int64_t ngo = NewOrg(OrgKind::kNgo);
  Vehicle depot;
  depot.ngo_id = ngo;
  depot.position = {51.50, -0.10};
  ASSERT_TRUE(hub_->UpsertVehicle(depot).ok());
  auto report = [&](const std::string& device, uint64_t seq, double lat) {
    std::promise<Result<Reply>> done;
    hub_->Submit("", "", "", hub_->VehicleEffect(ngo, json{{"lat", lat}, {"lon", -0.1}}.dump(), device, seq),
                 nullptr, [&done](Result<Reply> r) { done.set_value(std::move(r)); });
    return done.get_future().get();
  };
  auto lat_now = [&] {
    auto all = hub_->ListVehicles();
    EXPECT_TRUE(all.ok());
    for (const auto& v : *all)
      if (v.ngo_id == ngo) return v.position.lat;
    return 0.0;
  };

  auto newer = report("tab-1", 6, 51.51);
  ASSERT_TRUE(newer.ok()) << newer.error().ToString();
  EXPECT_FALSE(newer->stale);
  auto older = report("tab-1", 5, 51.40);
  ASSERT_TRUE(older.ok()) << older.error().ToString();
  EXPECT_TRUE(older->stale);
  EXPECT_EQ(older->vehicle, nullptr) << "the matching engine would hear of a change that was not made";
  EXPECT_DOUBLE_EQ(json::parse(older->json)["lat"].get<double>(), 51.51) << "a stale answer shows what stands";
  EXPECT_DOUBLE_EQ(lat_now(), 51.51);

  auto other_tablet = report("tab-2", 1, 51.45);  // its own numbering
  ASSERT_TRUE(other_tablet.ok());
  EXPECT_FALSE(other_tablet->stale);
  EXPECT_DOUBLE_EQ(lat_now(), 51.45);
  auto first_again = report("tab-1", 5, 51.46);  // tab-2's report stands, not tab-1's
  ASSERT_TRUE(first_again.ok());
  EXPECT_FALSE(first_again->stale);
  EXPECT_DOUBLE_EQ(lat_now(), 51.46);

  ASSERT_TRUE(hub_->UpdateVehicle(ngo, R"({"lat":51.47,"lon":-0.1})").ok());  // HTTP: no tablet
  EXPECT_DOUBLE_EQ(lat_now(), 51.47);
  auto after_http = report("tab-1", 2, 51.48);
  ASSERT_TRUE(after_http.ok());
  EXPECT_FALSE(after_http->stale);
  EXPECT_DOUBLE_EQ(lat_now(), 51.48);
}

INSTANTIATE_TEST_SUITE_P(Backends, HubServiceTest, ::testing::Values("sqlite", "postgresql"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace pp
