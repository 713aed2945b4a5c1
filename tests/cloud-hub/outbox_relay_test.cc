// The relay through a real broker: events reach the devices concerned, and a
// failure between publish and mark (a crash, as far as the relay can tell)
// republishes — the device drops the repeat by its id. Marks are
// asynchronous: while one is pending the relay goes on without publishing
// the same events again.
#include "cloud-hub/mqtt/outbox_relay.h"

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class OutboxRelayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(broker_.port(), 0);
    auto org = hub_.CreateOrganization({OrgKind::kProvider, "warung", {51.5, -0.1}}, "");
    provider_ = json::parse(org->json)["id"].get<int64_t>();
    ASSERT_TRUE(hub_.RegisterDevice({kiosk_.id(), "kiosk", provider_, kiosk_.public_key(), false, 0, {}}).ok());
    broker_.AddUser(kiosk_.id(), kiosk_.password());
    ASSERT_TRUE(kiosk_.Connect().ok());
    std::ifstream pw_in(broker_.hub_password_file());
    std::string hub_pw;
    pw_in >> hub_pw;
    mqtt_ = std::make_unique<sync::MqttClient>(
        sync::MqttClient::CleanSession(broker_.uri(), "pp-hub-relay-test", "pp-hub", hub_pw, {}, 10000),
        [](auto&, auto&, auto&) {});
    ASSERT_TRUE(mqtt_->Connect(std::chrono::seconds(10)).ok());
  }

  // Posts a surplus; its surplus.posted event is what the relay carries.
  int64_t Post(const std::string& what) {
    SurplusDraft d;
    d.provider_id = provider_;
    d.category = "bakery";
    d.description = what;
    d.best_before = SystemClock::Instance().Now() + std::chrono::hours(2);
    auto posted = hub_.PostSurplus(d, what);
    EXPECT_TRUE(posted.ok());
    return posted.ok() ? json::parse(posted->json)["id"].get<int64_t>() : 0;
  }
  bool KioskHeardOf(int64_t id) {
    return !kiosk_.WaitEvent("surplus.posted", [&](const json& e) { return e["data"]["id"] == id; }).is_null();
  }
  bool AllMarked() {
    return test::Eventually([&] { return hub_.ListUnsentOutbox(10)->empty(); }, std::chrono::seconds(10));
  }

  test::TempDir dir_;
  test::Broker broker_;
  std::unique_ptr<Store> store_ = std::move(*OpenStore("sqlite:" + dir_.file("hub.db")));
  std::unique_ptr<GroupCommitter> committer_ = std::move(*GroupCommitter::Start(*store_, {}));
  HubService hub_{*store_, *committer_, SystemClock::Instance()};
  int64_t provider_ = 0;
  test::TestDevice kiosk_{broker_, "kiosk-r"};
  std::unique_ptr<sync::MqttClient> mqtt_;
};

TEST_F(OutboxRelayTest, RepublishesWhatWasNotMarkedAndDevicesDropRepeats) {
  std::atomic<int> marks{0};
  OutboxRelay relay(hub_, *mqtt_, [&](std::vector<int64_t> ids, std::function<void(Status)> done) {
    if (marks++ == 0) return done(Error::Unavailable("crash between publish and mark"));
    hub_.MarkOutboxSent(std::move(ids), std::move(done));
  });
  int64_t id = Post("roti");
  metrics::Registry registry;
  relay.SetMetrics(&registry);
  relay.Start();

  ASSERT_TRUE(KioskHeardOf(id)) << "the kiosk got no event";
  EXPECT_TRUE(test::Eventually([&] { return kiosk_.duplicates_dropped() >= 1; }, std::chrono::seconds(10)))
      << "the unmarked page was not published again";
  EXPECT_TRUE(AllMarked()) << "the second attempt did not mark the page sent";
  relay.Stop();
  EXPECT_GE(marks.load(), 2);
  // Every publish acknowledged counts in the relay's delay, the failed page's too.
  auto delay = registry.GetHistogram("outbox_relay_delay_seconds", "", metrics::LatencyBuckets()).Read();
  EXPECT_GE(delay.count, 2u);
  EXPECT_GT(delay.sum, 0.0);
}

TEST_F(OutboxRelayTest, APendingMarkHoldsNothingUpAndRepublishesNothing) {
  // Marks are held back until the test lets them go; from then on they pass.
  std::mutex mu;
  bool released = false;
  std::vector<std::pair<std::vector<int64_t>, std::function<void(Status)>>> held;
  OutboxRelay relay(hub_, *mqtt_, [&](std::vector<int64_t> ids, std::function<void(Status)> done) {
    std::lock_guard lock(mu);
    if (released) return hub_.MarkOutboxSent(std::move(ids), std::move(done));
    held.emplace_back(std::move(ids), std::move(done));
  });
  auto held_marks = [&] {
    std::lock_guard lock(mu);
    return held.size();
  };
  auto release = [&] {
    std::lock_guard lock(mu);
    released = true;
    for (auto& [ids, done] : held) hub_.MarkOutboxSent(std::move(ids), std::move(done));
    held.clear();
  };
  // Whatever happens below, the marks are let go before Stop() waits for them.
  struct Cleanup {
    std::function<void()> run;
    ~Cleanup() { run(); }
  } cleanup{[&] {
    release();
    relay.Stop();
    hub_.SetCommitHook(nullptr);
  }};
  hub_.SetCommitHook([&] { relay.Notify(); });
  relay.Start();

  int64_t first = Post("nasi");
  ASSERT_TRUE(KioskHeardOf(first));
  // The first page's mark is still pending: the next event goes out at once,
  // and the first is not published again (the kiosk would drop the repeat,
  // counting it, before the second arrives in order behind it).
  int64_t second = Post("kue");
  ASSERT_TRUE(KioskHeardOf(second));
  EXPECT_EQ(kiosk_.duplicates_dropped(), 0);
  EXPECT_FALSE(hub_.ListUnsentOutbox(10)->empty()) << "nothing may be marked before its mark commits";

  // The relay asks for a page's mark once all its PUBACKs are in, which may
  // be just after the kiosk has the message: one mark a page, a page an event.
  EXPECT_TRUE(test::Eventually([&] { return held_marks() == 2; }, std::chrono::seconds(10))) << held_marks();
  // Let the marks commit; Stop() returns only once they have.
  release();
  relay.Stop();
  EXPECT_TRUE(hub_.ListUnsentOutbox(10)->empty());
}

}  // namespace
}  // namespace pp
