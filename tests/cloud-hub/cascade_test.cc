// The offer cascade end to end in one process: a real SQLite store, the
// sharded matcher, the simulated clock (no sleeps), and a loopback webhook
// receiving the operator alert.
#include "cloud-hub/matching/cascade.h"
#include "cloud-hub/matching/webhook_alerts.h"

#include <gtest/gtest.h>

#include <future>

#include <nlohmann/json.hpp>

#include "common/time_format.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;
using std::chrono::minutes;
using std::chrono::seconds;

const Timestamp kT0 = *ParseRfc3339("2026-11-24T21:00:00Z");

class CascadeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = std::move(*OpenStore("sqlite:" + dir_.file("hub.db")));
    committer_ = std::move(*GroupCommitter::Start(*store_, {}));
    hub_ = std::make_unique<HubService>(*store_, *committer_, clock_);
    StartMatching();
    provider_ = Org(OrgKind::kProvider, {51.5000, -0.1000});
  }
  void TearDown() override { StopMatching(); }

  void StartMatching() {
    travel_ = std::make_unique<TravelTimes>(clock_, TravelModel{}, nullptr, CircuitBreaker::Options{});
    matcher_ = std::make_unique<Matcher>(clock_, MatchOptions{}, *travel_);
    sink_ = std::make_unique<WebhookAlertSink>(webhook_.url() + "/v2/enqueue", "test-key");
    cascade_ = std::make_unique<Cascade>(*hub_, *matcher_, clock_, CascadePolicy{}, sink_.get());
    hub_->SetListener(cascade_.get());
    ASSERT_TRUE(cascade_->Start().ok());
  }
  void StopMatching() {
    if (!cascade_) return;
    cascade_->WaitIdle();
    hub_->SetListener(nullptr);
    cascade_.reset();
    matcher_.reset();
  }

  int64_t Org(OrgKind kind, GeoPoint at) {
    auto r = hub_->CreateOrganization({kind, "org", at}, "");
    EXPECT_TRUE(r.ok());
    return json::parse(r->json)["id"].get<int64_t>();
  }
  // NGOs at increasing distance from the provider.
  int64_t Ngo(double dlat) { return Org(OrgKind::kNgo, {51.5000 + dlat, -0.1000}); }

  // `pickup_for`: a pickup window from now for that long; none if zero.
  int64_t Post(Duration best_before = std::chrono::hours(3), std::string category = "bakery",
               Duration pickup_for = Duration::zero()) {
    SurplusDraft d;
    d.provider_id = provider_;
    d.category = std::move(category);
    d.description = "roti";
    d.quantity_kg = 4;
    d.best_before = clock_.Now() + best_before;
    if (pickup_for > Duration::zero()) {
      d.pickup_start = clock_.Now();
      d.pickup_end = clock_.Now() + pickup_for;
    }
    auto r = hub_->PostSurplus(d, "p" + std::to_string(next_key_++));
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    if (cascade_) cascade_->WaitIdle();
    return json::parse(r->json)["id"].get<int64_t>();
  }

  json Get(int64_t id) { return json::parse(hub_->GetSurplus(id)->json); }
  void Tick() { ASSERT_TRUE(cascade_->Tick().ok()); }
  std::string Key() { return "k" + std::to_string(next_key_++); }

  test::TempDir dir_;
  SimulatedClock clock_{kT0};
  test::FakeHttpServer webhook_{[](const std::string&, const std::string&) {
    return std::string("{\"status\":\"success\"}");
  }};
  std::unique_ptr<Store> store_;
  std::unique_ptr<GroupCommitter> committer_;
  std::unique_ptr<HubService> hub_;
  std::unique_ptr<TravelTimes> travel_;
  std::unique_ptr<Matcher> matcher_;
  std::unique_ptr<WebhookAlertSink> sink_;
  std::unique_ptr<Cascade> cascade_;
  int64_t provider_ = 0;
  int next_key_ = 0;
};

TEST_F(CascadeTest, TheNearestEligibleNgoGetsTheOfferAndDeclineMovesOn) {
  int64_t a = Ngo(0.001), b = Ngo(0.002);
  Ngo(0.003);  // a third, further away: never offered while b is nearer
  int64_t id = Post();
  json x = Get(id);
  EXPECT_EQ(x["status"], "offered");
  EXPECT_EQ(x["offer"]["ngo_id"], a);
  EXPECT_EQ(x["offer"]["expires_at"], FormatRfc3339(kT0 + minutes(5)));

  ASSERT_TRUE(hub_->Decline(id, a, Key()).ok());
  cascade_->WaitIdle();
  x = Get(id);
  EXPECT_EQ(x["offer"]["ngo_id"], b);
  EXPECT_EQ(x["excluded"], json::array({a}));

  auto ok = hub_->Accept(id, b, Key());
  ASSERT_TRUE(ok.ok()) << ok.error().ToString();
  x = Get(id);
  EXPECT_EQ(x["status"], "claimed");
  EXPECT_EQ(x["claimed_by"], b);
}

TEST_F(CascadeTest, TimeoutMovesOnAndALateAcceptIsRejected) {
  int64_t a = Ngo(0.001), b = Ngo(0.002);
  int64_t id = Post();
  clock_.Advance(minutes(5) - seconds(1));
  Tick();
  EXPECT_EQ(Get(id)["offer"]["ngo_id"], a);  // not yet
  clock_.Advance(seconds(1));
  Tick();
  json x = Get(id);
  EXPECT_EQ(x["offer"]["ngo_id"], b);
  EXPECT_EQ(x["excluded"], json::array({a}));
  auto late = hub_->Accept(id, a, Key());
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().code, Code::kAborted);
  EXPECT_EQ(json::parse(late.error().context_json)["offer"]["ngo_id"], b);
}

TEST_F(CascadeTest, ADirectClaimRacingAnOpenOfferWins) {
  int64_t a = Ngo(0.001), c = Ngo(0.003);
  int64_t id = Post();
  int64_t version = Get(id)["version"].get<int64_t>();
  auto claim = hub_->Claim(id, {c, version}, Key());
  ASSERT_TRUE(claim.ok()) << claim.error().ToString();
  auto accept = hub_->Accept(id, a, Key());
  ASSERT_FALSE(accept.ok());
  EXPECT_EQ(accept.error().code, Code::kAborted);
  EXPECT_EQ(json::parse(accept.error().context_json)["claimed_by"], c);
  // The offer's timer is gone with it.
  clock_.Advance(minutes(6));
  Tick();
  EXPECT_EQ(Get(id)["status"], "claimed");
  EXPECT_EQ(Get(id)["version"], version + 1);
}

TEST_F(CascadeTest, DeadLetterRetriesWithBackoffThenAlertsAndWaitsForAssignment) {
  int64_t a = Ngo(0.001);
  int64_t id = Post();
  ASSERT_TRUE(hub_->Decline(id, a, Key()).ok());
  cascade_->WaitIdle();
  json x = Get(id);
  ASSERT_EQ(x["status"], "dead_lettered");
  EXPECT_EQ(x["dlq"]["next_retry_at"], FormatRfc3339(clock_.Now() + minutes(1)));

  for (int wait : {1, 2, 4}) {
    clock_.Advance(minutes(wait) - seconds(1));
    Tick();
    EXPECT_EQ(Get(id)["version"], x["version"]) << "retried early";
    clock_.Advance(seconds(1));
    Tick();
    x = Get(id);
    EXPECT_EQ(x["status"], "dead_lettered");
  }
  EXPECT_EQ(x["dlq"]["attempts"], 3);
  EXPECT_TRUE(x["dlq"]["next_retry_at"].is_null());
  EXPECT_EQ(cascade_->alerts_sent(), 1u);
  // POSTed by the sink's own thread, after the commit.
  ASSERT_TRUE(test::Eventually([&] { return sink_->stats().sent == 1; }));
  ASSERT_EQ(webhook_.bodies().size(), 1u);
  json alert = json::parse(webhook_.bodies()[0]);
  EXPECT_EQ(alert["event_action"], "trigger");
  EXPECT_EQ(alert["routing_key"], "test-key");
  EXPECT_EQ(alert["dedup_key"], "pp-surplus-" + std::to_string(id));
  EXPECT_EQ(alert["payload"]["severity"], "warning");
  EXPECT_EQ(alert["payload"]["custom_details"]["id"], id);

  clock_.Advance(minutes(30));
  Tick();
  EXPECT_EQ(Get(id)["version"], x["version"]) << "no more retries";
  ASSERT_TRUE(hub_->Assign(id, a, Key()).ok());
  EXPECT_EQ(Get(id)["status"], "claimed");
  // The operator acted: the incident is resolved under the same key.
  ASSERT_TRUE(test::Eventually([&] { return sink_->stats().sent == 2; }));
  json resolve = json::parse(webhook_.bodies().back());
  EXPECT_EQ(resolve["event_action"], "resolve");
  EXPECT_EQ(resolve["dedup_key"], "pp-surplus-" + std::to_string(id));
  EXPECT_EQ(resolve["routing_key"], "test-key");
}

TEST_F(CascadeTest, ADlqRetryFindsAVehicleThatCameNear) {
  int64_t far = Org(OrgKind::kNgo, {51.9, -0.1});  // ~45 km: beyond reach
  int64_t id = Post(std::chrono::hours(1));
  ASSERT_EQ(Get(id)["status"], "dead_lettered");
  ASSERT_TRUE(hub_->UpdateVehicle(far, R"({"lat":51.501,"lon":-0.1})").ok());
  clock_.Advance(minutes(1));
  Tick();
  json x = Get(id);
  EXPECT_EQ(x["status"], "offered");
  EXPECT_EQ(x["offer"]["ngo_id"], far);
}

TEST_F(CascadeTest, ExpiryEndsTheOfferAndEveryTimer) {
  int64_t a = Ngo(0.001);
  int64_t id = Post(minutes(3));
  json x = Get(id);
  EXPECT_EQ(x["offer"]["ngo_id"], a);
  EXPECT_EQ(x["offer"]["expires_at"], FormatRfc3339(kT0 + minutes(3)));  // capped at best_before
  clock_.Advance(minutes(3));
  Tick();
  x = Get(id);
  EXPECT_EQ(x["status"], "expired");
  EXPECT_TRUE(x["offer"].is_null());
  EXPECT_TRUE(hub_->ListDue(clock_.Now() + std::chrono::hours(24), 10)->empty());
  EXPECT_FALSE(hub_->Accept(id, a, Key()).ok());
}

TEST_F(CascadeTest, IneligibleVehiclesAreSkipped) {
  int64_t offline = Ngo(0.001), small = Ngo(0.002), dairy_only = Ngo(0.003), ok = Ngo(0.004);
  ASSERT_TRUE(hub_->UpdateVehicle(offline, R"({"online":false})").ok());
  ASSERT_TRUE(hub_->UpdateVehicle(small, R"({"free_kg":1})").ok());
  ASSERT_TRUE(hub_->UpdateVehicle(dairy_only, R"({"categories":["dairy"]})").ok());
  int64_t id = Post();
  EXPECT_EQ(Get(id)["offer"]["ngo_id"], ok);
}

// A tablet not heard from for longer than kTabletSilentAfter is passed
// over: its driver could not see the offer, and the post would wait out
// the offer's timeout. Its next report, even one that changes nothing,
// brings it back.
TEST_F(CascadeTest, ASilentTabletIsPassedOverUntilItReportsAgain) {
  int64_t a = Ngo(0.001), b = Ngo(0.002);
  auto report = [&](uint64_t seq, const std::string& body) {
    std::promise<Result<Reply>> done;
    hub_->Submit("", "", "", hub_->VehicleEffect(a, body, "tab-a", seq), nullptr,
                 [&done](Result<Reply> r) { done.set_value(std::move(r)); });
    auto r = done.get_future().get();
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    cascade_->WaitIdle();
  };
  ASSERT_NO_FATAL_FAILURE(report(1, R"({"lat":51.5005,"lon":-0.1})"));
  clock_.Advance(kTabletSilentAfter);
  EXPECT_EQ(Get(Post())["offer"]["ngo_id"], a) << "passed over before kTabletSilentAfter";
  clock_.Advance(seconds(1));
  EXPECT_EQ(Get(Post())["offer"]["ngo_id"], b) << "a silent tablet was offered a post";
  ASSERT_NO_FATAL_FAILURE(report(2, "{}"));  // a presence report
  EXPECT_EQ(Get(Post())["offer"]["ngo_id"], a);
}

// A van must get there before the pickup window closes, not only before
// best-before: later, the kitchen has closed.
TEST_F(CascadeTest, AVanThatCannotArriveWithinThePickupWindowIsPassedOver) {
  int64_t far = Ngo(0.1);  // ~11 km: ~37 min at the travel model's 25 km/h x 1.4
  EXPECT_EQ(Get(Post(std::chrono::hours(3), "bakery", std::chrono::minutes(60)))["offer"]["ngo_id"], far);
  auto closes_soon = Get(Post(std::chrono::hours(3), "bakery", std::chrono::minutes(20)));
  EXPECT_EQ(closes_soon["status"], "dead_lettered") << closes_soon.dump();
  int64_t near = Ngo(0.01);  // ~1 km
  EXPECT_EQ(Get(Post(std::chrono::hours(3), "bakery", std::chrono::minutes(20)))["offer"]["ngo_id"], near);
}

// Covering a dropped-out driver: the claimer releases, and the next NGO
// gets the offer at once; the one that dropped out is not asked again.
TEST_F(CascadeTest, AReleasedClaimIsOfferedToTheNextNgo) {
  int64_t a = Ngo(0.001), b = Ngo(0.002);
  int64_t id = Post();
  ASSERT_EQ(Get(id)["offer"]["ngo_id"], a);
  ASSERT_TRUE(hub_->Accept(id, a, Key()).ok());
  EXPECT_EQ(hub_->Release(id, b, Key()).error().code, Code::kAborted) << "b holds no claim";
  auto released = hub_->Release(id, a, Key());
  ASSERT_TRUE(released.ok()) << released.error().ToString();
  cascade_->WaitIdle();
  auto x = Get(id);
  EXPECT_EQ(x["offer"]["ngo_id"], b) << x.dump();
  EXPECT_EQ(x["status"], "offered");
  EXPECT_TRUE(x["claimed_by"].is_null());
  EXPECT_EQ(x["history"].back()["event"], "offer") << x.dump();
}

TEST_F(CascadeTest, ARestartedHubRebuildsItsIndexAndResumes) {
  int64_t a = Ngo(0.001);
  StopMatching();  // the hub "restarts": a fresh matcher knows nothing
  int64_t id = Post();
  EXPECT_EQ(Get(id)["status"], "available");  // nobody was listening
  StartMatching();  // Start(): vehicles from the store; open posts re-matched
  cascade_->WaitIdle();
  EXPECT_EQ(Get(id)["offer"]["ngo_id"], a);
}

TEST_F(CascadeTest, NearbyListsOpenPostsOnly) {
  int64_t a = Ngo(0.001);
  int64_t open = Post(), taken = Post();
  auto v = Get(taken)["version"].get<int64_t>();
  ASSERT_TRUE(hub_->Claim(taken, {a, v}, Key()).ok());
  auto near = cascade_->open_posts().Near({51.5, -0.1}, 1, 10);
  ASSERT_EQ(near.size(), 1u);
  EXPECT_EQ(near[0].surplus_id, open);
}

// What a van's "nearby" answer carries: open posts, nearest first, each
// with its distance and no history; read in one go (GetSurplusMany).
TEST_F(CascadeTest, NearbyPostsAreNearestFirstWithTheirDistances) {
  int64_t close = Post();
  provider_ = Org(OrgKind::kProvider, {51.5100, -0.1000});  // ~1.1 km north
  int64_t farther = Post();
  provider_ = Org(OrgKind::kProvider, {51.8000, -0.1000});  // ~33 km: out of range
  Post();
  json list = cascade_->NearbyPosts({51.5, -0.1}, 5, 50);
  ASSERT_EQ(list.size(), 2u) << list.dump();
  EXPECT_EQ(list[0]["id"], close);
  EXPECT_EQ(list[1]["id"], farther);
  EXPECT_LT(list[0]["distance_km"].get<double>(), 0.01);
  EXPECT_NEAR(list[1]["distance_km"].get<double>(), 1.11, 0.02);
  EXPECT_EQ(list[1]["description"], "roti");
  EXPECT_FALSE(list[0].contains("history"));
  EXPECT_EQ(cascade_->NearbyPosts({51.5, -0.1}, 5, 1).size(), 1u);  // the limit

  auto many = hub_->GetSurplusMany({farther, 424242, close});  // order kept, unknown ids skipped
  ASSERT_TRUE(many.ok());
  ASSERT_EQ(many->size(), 2u);
  EXPECT_EQ((*many)[0].id, farther);
  EXPECT_EQ((*many)[1].id, close);
}

TEST_F(CascadeTest, BadVehicleReportsAreNamed) {
  int64_t a = Ngo(0.001);
  auto r = hub_->UpdateVehicle(a, R"({"lat":99,"open_from":"25:00","online":"yes"})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::kInvalidArgument);
  EXPECT_GE(r.error().fields.size(), 3u);
  EXPECT_EQ(hub_->UpdateVehicle(999, "{}").error().code, Code::kNotFound);
}

// The alert goes out on the sink's own thread, not in the commit's callback
// that raised it: a webhook that does not answer holds up no commit (it held
// the store writer for its timeouts), and the alert is sent again.
TEST(WebhookAlertSinkTest, AHungWebhookHoldsUpNobodyAndTheAlertIsSentAgain) {
  test::FakeHttpServer webhook{[](const std::string&, const std::string&) { return std::string("{}"); }};
  webhook.set_mode(test::FakeHttpServer::Mode::kHang);
  WebhookAlertSink::Options o;
  o.first_retry = std::chrono::milliseconds(1);
  o.timeout = seconds(60);  // longer than the webhook hangs: only the sink's own thread may wait
  o.queue_limit = 1;
  WebhookAlertSink sink(webhook.url() + "/v2/enqueue", "k", o);
  Surplus a, b, c;
  a.id = 1, b.id = 2, c.id = 3;
  auto triggered = std::async(std::launch::async, [&] { sink.Trigger(a, "a"); });
  ASSERT_EQ(triggered.wait_for(seconds(10)), std::future_status::ready) << "Trigger waited for the webhook";
  ASSERT_TRUE(test::Eventually([&] { return webhook.requests() == 1; }));
  sink.Trigger(b, "b");  // waits in the queue behind a
  sink.Trigger(c, "c");  // the queue (1) is full: dropped, said so
  EXPECT_EQ(sink.stats().dropped, 1u);
  EXPECT_EQ(sink.stats().sent, 0u);

  webhook.set_mode(test::FakeHttpServer::Mode::kOk);
  webhook.Release();  // a's first POST gets a 504: sent again, then b
  ASSERT_TRUE(test::Eventually([&] { return sink.stats().sent == 2; }));
  std::vector<std::string> keys;
  for (const auto& body : webhook.bodies()) keys.push_back(json::parse(body)["dedup_key"]);
  EXPECT_EQ(keys, (std::vector<std::string>{"pp-surplus-1", "pp-surplus-1", "pp-surplus-2"}));
  EXPECT_EQ(sink.stats().retries, 1u);
  EXPECT_EQ(sink.stats().failed, 0u);
}

TEST(WebhookAlertSinkTest, AFailingWebhookIsTriedAsOftenAsAllowedAndARefusalOnce) {
  test::FakeHttpServer webhook{[](const std::string&, const std::string&) { return std::string("{}"); }};
  webhook.set_mode(test::FakeHttpServer::Mode::kFail);  // 500: may pass
  WebhookAlertSink::Options o;
  o.attempts = 3;
  o.first_retry = std::chrono::milliseconds(1);
  WebhookAlertSink sink(webhook.url() + "/v2/enqueue", "k", o);
  Surplus post;
  post.id = 9;
  sink.Trigger(post, "x");
  ASSERT_TRUE(test::Eventually([&] { return sink.stats().failed == 1; }));
  EXPECT_EQ(webhook.requests(), 3);
  EXPECT_EQ(sink.stats().retries, 2u);

  webhook.set_mode(test::FakeHttpServer::Mode::kRefuse);  // 400: the same answer every time
  sink.Trigger(post, "x");
  ASSERT_TRUE(test::Eventually([&] { return sink.stats().failed == 2; }));
  EXPECT_EQ(webhook.requests(), 4);
  EXPECT_EQ(sink.stats().sent, 0u);
}

// An alert is raised once, when the post's last retry fails: one dropped at
// a restart would never be raised again. Stopping the sink sends what is
// queued, and the alert whose retry was waiting, one POST each.
TEST(WebhookAlertSinkTest, AlertsStillWaitingWhenTheHubStopsAreSentBeforeItEnds) {
  test::FakeHttpServer webhook{[](const std::string&, const std::string&) { return std::string("{}"); }};
  webhook.set_mode(test::FakeHttpServer::Mode::kFail);  // 500: a's retry waits
  WebhookAlertSink::Options o;
  o.first_retry = seconds(600);  // longer than the test: only the stop can cut it short
  o.drain = seconds(60);
  auto sink = std::make_unique<WebhookAlertSink>(webhook.url() + "/v2/enqueue", "k", o);
  Surplus a, b;
  a.id = 1, b.id = 2;
  sink->Trigger(a, "a");
  ASSERT_TRUE(test::Eventually([&] { return webhook.requests() == 1; }));
  sink->Trigger(b, "b");  // queued behind a's retry
  webhook.set_mode(test::FakeHttpServer::Mode::kOk);
  const auto t0 = std::chrono::steady_clock::now();
  sink.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, seconds(30)) << "the stop waited for a's retry";
  std::vector<std::string> keys;
  for (const auto& body : webhook.bodies()) keys.push_back(json::parse(body)["dedup_key"]);
  EXPECT_EQ(keys, (std::vector<std::string>{"pp-surplus-1", "pp-surplus-1", "pp-surplus-2"}));
}

// The drain is bounded: with no time for it, nothing more is sent.
TEST(WebhookAlertSinkTest, TheDrainAtStopEndsWhenItsTimeIsUp) {
  test::FakeHttpServer webhook{[](const std::string&, const std::string&) { return std::string("{}"); }};
  webhook.set_mode(test::FakeHttpServer::Mode::kFail);
  WebhookAlertSink::Options o;
  o.first_retry = seconds(600);
  o.drain = std::chrono::milliseconds(0);
  auto sink = std::make_unique<WebhookAlertSink>(webhook.url() + "/v2/enqueue", "k", o);
  Surplus a, b;
  a.id = 1, b.id = 2;
  sink->Trigger(a, "a");
  ASSERT_TRUE(test::Eventually([&] { return webhook.requests() == 1; }));
  sink->Trigger(b, "b");
  webhook.set_mode(test::FakeHttpServer::Mode::kOk);
  sink.reset();
  EXPECT_EQ(webhook.requests(), 1);
}

}  // namespace
}  // namespace pp
