// The relay through a real broker: events reach the devices concerned, and a
// failure between publish and mark (a crash, as far as the relay can tell)
// republishes — the device drops the repeat by its id. Marks are
// asynchronous: while one is pending the relay goes on without publishing
// the same events again.
#include "cloud-hub/mqtt/outbox_relay.h"

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "common/sqlite_db.h"
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
    mqtt_ = HubConnection("pp-hub-relay-test");
    ASSERT_TRUE(mqtt_->Connect(std::chrono::seconds(10)).ok());
  }
  // A hub replica's publishing connection.
  std::unique_ptr<sync::MqttClient> HubConnection(const std::string& client_id) {
    std::ifstream pw_in(broker_.hub_password_file());
    std::string hub_pw;
    pw_in >> hub_pw;
    return std::make_unique<sync::MqttClient>(
        sync::MqttClient::CleanSession(broker_.uri(), client_id, "pp-hub", hub_pw, {}, 10000),
        [](auto&, auto&, auto&) {});
  }

  // Posts a surplus; its surplus.posted event is what the relay carries.
  int64_t Post(const std::string& what, const std::string& description = "") {
    SurplusDraft d;
    d.provider_id = provider_;
    d.category = "bakery";
    d.description = description.empty() ? what : description;
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

  // A relay that every commit wakes, as in pp-hub, counting its pages
  // (outbox_relay_pages_total); when it goes, the broker is thawed (a
  // test may have frozen it), the relay stopped and unhooked.
  struct HookedRelay {
    explicit HookedRelay(OutboxRelayTest& test) : t(test) {
      relay.SetMetrics(&registry);
      t.hub_.SetCommitHook([this] { relay.Notify(); });
      relay.Start();
    }
    ~HookedRelay() {
      t.broker_.Thaw();
      relay.Stop();
      t.hub_.SetCommitHook(nullptr);
    }
    double Pages(const char* overlapped) {
      return registry.GetCounter("outbox_relay_pages_total", "", {{"overlapped", overlapped}}).Value();
    }
    OutboxRelayTest& t;
    metrics::Registry registry;
    OutboxRelay relay{t.hub_, *t.mqtt_};
  };

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
  OutboxRelay relay(hub_, *mqtt_, [&](std::vector<int64_t> ids, HubService::LastSentByDevice last,
                                       std::function<void(Status)> done) {
    if (marks++ == 0) return done(Error::Unavailable("crash between publish and mark"));
    hub_.MarkOutboxSent(std::move(ids), std::move(last), std::move(done));
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
  struct Held {
    std::vector<int64_t> ids;
    HubService::LastSentByDevice last;
    std::function<void(Status)> done;
  };
  std::vector<Held> held;
  OutboxRelay relay(hub_, *mqtt_, [&](std::vector<int64_t> ids, HubService::LastSentByDevice last,
                                       std::function<void(Status)> done) {
    std::lock_guard lock(mu);
    if (released) return hub_.MarkOutboxSent(std::move(ids), std::move(last), std::move(done));
    held.push_back({std::move(ids), std::move(last), std::move(done)});
  });
  auto held_marks = [&] {
    std::lock_guard lock(mu);
    return held.size();
  };
  auto release = [&] {
    std::lock_guard lock(mu);
    released = true;
    for (auto& h : held) hub_.MarkOutboxSent(std::move(h.ids), std::move(h.last), std::move(h.done));
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

// A pass lists after the last event the relay published (its cursor), but
// an event can become unsent below it: on PostgreSQL one committed late by
// another writer with a lower id. The passes from the start find it.
TEST_F(OutboxRelayTest, AnEventUnsentBelowWhatTheRelayHasPublishedStillGoesOut) {
  OutboxRelay relay(hub_, *mqtt_);
  hub_.SetCommitHook([&] { relay.Notify(); });
  relay.Start();
  int64_t first = Post("lemper");
  ASSERT_TRUE(KioskHeardOf(first));
  ASSERT_TRUE(AllMarked());
  int64_t second = Post("pastel");
  ASSERT_TRUE(KioskHeardOf(second));
  ASSERT_TRUE(AllMarked());
  ASSERT_EQ(kiosk_.duplicates_dropped(), 0);

  // The first post's event unsent again, below the cursor, as a late commit
  // would leave it (a second connection to the hub's file, as another writer).
  auto db = SqliteDb::Open(dir_.file("hub.db"));
  ASSERT_TRUE(db.ok());
  auto& set = (*db)->Prepare("UPDATE outbox SET sent_at=NULL WHERE id=(SELECT MIN(id) FROM outbox)");
  ASSERT_TRUE(set.Reset().Run("unsend").ok());
  ASSERT_EQ((*db)->Changes(), 1);
  relay.Notify();

  EXPECT_TRUE(test::Eventually([&] { return kiosk_.duplicates_dropped() == 1; }, std::chrono::seconds(10)))
      << "the event below the cursor was not published";
  EXPECT_TRUE(AllMarked());
  relay.Stop();
  hub_.SetCommitHook(nullptr);
}

TEST_F(OutboxRelayTest, ADevicesMessagesInAPageComeBatchedInOrderUnderThePacketSize) {
  // Three events waiting before the relay starts: one page, one publish.
  std::vector<int64_t> small{Post("a"), Post("b"), Post("c")};
  OutboxRelay relay(hub_, *mqtt_);
  relay.Start();
  ASSERT_TRUE(KioskHeardOf(small.back()));
  EXPECT_EQ(kiosk_.publishes(), 1) << "three messages for one device in one page: one publish";
  relay.Stop();

  // Forty of 2.6–3.9 KB (~130 KB): more than the broker takes in one packet
  // (64 KB counting topic and headers; more ends the hub's connection), so
  // several publishes, each under the limit, and every message in order.
  // The sizes vary so that some batch ends within a few hundred bytes of the
  // limit.
  std::vector<int64_t> big;
  for (int i = 0; i < 40; ++i)
    big.push_back(Post("big-" + std::to_string(i), std::string(2600 + (i * 337) % 1300, 'x')));
  OutboxRelay again(hub_, *mqtt_);
  again.Start();
  ASSERT_TRUE(KioskHeardOf(big.back())) << "the large page did not arrive";
  EXPECT_TRUE(AllMarked());
  again.Stop();
  EXPECT_GE(kiosk_.publishes(), 1 + 2);
  EXPECT_LE(kiosk_.publishes(), 1 + 40 / 2) << "large messages were not batched at all";
  std::vector<int64_t> heard;
  for (const auto& m : kiosk_.messages()) heard.push_back(m["data"]["id"].get<int64_t>());
  std::vector<int64_t> all = small;
  all.insert(all.end(), big.begin(), big.end());
  EXPECT_EQ(heard, all);
  EXPECT_EQ(kiosk_.duplicates_dropped(), 0);
}

// Each publish names the last message of the relay's previous publish to
// the device (`prev`): that is how a device sees that its broker dropped
// some (docs/protocol.md, section 6, "Gaps"). A restarted relay names the
// last one the marks of the run before recorded, and a ping's answer
// (LastSentTo) names it too, before anything new was sent.
TEST_F(OutboxRelayTest, EveryPublishNamesTheLastMessageOfTheOneBeforeItAcrossARestart) {
  auto relay = std::make_unique<OutboxRelay>(hub_, *mqtt_);
  relay->Start();
  std::vector<int64_t> posts;
  for (const char* what : {"a", "b", "c"}) {  // one page each: three publishes
    posts.push_back(Post(what));
    ASSERT_TRUE(KioskHeardOf(posts.back()));
    ASSERT_TRUE(AllMarked());
  }
  relay->Stop();
  relay = std::make_unique<OutboxRelay>(hub_, *mqtt_);  // a restarted hub
  const auto before_any_publish = relay->LastSentTo(kiosk_.id());
  EXPECT_FALSE(relay->LastSentTo("kiosk-never-sent-to").has_value());
  posts.push_back(Post("d"));
  posts.push_back(Post("e"));
  relay->Start();
  ASSERT_TRUE(KioskHeardOf(posts.back()));
  posts.push_back(Post("f"));
  relay->Notify();
  ASSERT_TRUE(KioskHeardOf(posts.back()));
  relay->Stop();

  auto log = kiosk_.publish_log();
  ASSERT_EQ(log.size(), 5u) << "a, b, c alone; d and e batched; f alone";
  EXPECT_EQ(log[0].prev, 0);
  EXPECT_EQ(log[1].prev, log[0].ids.back());
  EXPECT_EQ(log[2].prev, log[1].ids.back());
  EXPECT_EQ(before_any_publish, std::optional<int64_t>(log[2].ids.back()))
      << "a restarted hub's ping answer names what the last run sent";
  EXPECT_EQ(log[3].prev, log[2].ids.back()) << "a restarted relay names what the last run sent";
  EXPECT_EQ(log[3].ids.size(), 2u);
  EXPECT_EQ(log[4].prev, log[3].ids.back());
  EXPECT_EQ(kiosk_.messages().size(), posts.size());
}

// Two hub replicas on one store, one relay lease: the replica whose relay
// does not run answers a ping with what the publishing replica's marks
// recorded, as they move on; and a relay that runs again after another
// replica's ran names the other's last message as its `prev`, not what it
// had itself sent before.
TEST_F(OutboxRelayTest, AReplicaThatDoesNotPublishNamesWhatTheOtherSentLast) {
  auto other_connection = HubConnection("pp-hub-relay-test-2");
  ASSERT_TRUE(other_connection->Connect(std::chrono::seconds(10)).ok());
  OutboxRelay first(hub_, *mqtt_), second(hub_, *other_connection);
  auto publish_with = [&](OutboxRelay& relay, const char* what) {
    relay.Start();
    const int64_t id = Post(what);
    relay.Notify();
    EXPECT_TRUE(KioskHeardOf(id)) << what;
    EXPECT_TRUE(AllMarked()) << what;
    relay.Stop();
  };
  publish_with(first, "a");
  auto log = kiosk_.publish_log();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(second.LastSentTo(kiosk_.id()), std::optional<int64_t>(log[0].ids.back()));
  publish_with(second, "b");
  log = kiosk_.publish_log();
  ASSERT_EQ(log.size(), 2u);
  EXPECT_EQ(log[1].prev, log[0].ids.back());
  EXPECT_EQ(first.LastSentTo(kiosk_.id()), std::optional<int64_t>(log[1].ids.back()))
      << "the replica that does not publish named an old message";
  publish_with(first, "c");  // the lease back to the first
  log = kiosk_.publish_log();
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[2].prev, log[1].ids.back()) << "named what it had itself sent, not the other replica's last";
  EXPECT_EQ(second.LastSentTo(kiosk_.id()), std::optional<int64_t>(log[2].ids.back()));
}

// While a page's PUBACKs are out, what is committed meanwhile goes out in
// the next page rather than waiting for them (the broker frozen: nothing
// is acknowledged). Every page is marked once its PUBACKs come, the device
// gets each message once, in order, and each publish names the message of
// the one before as its `prev`.
TEST_F(OutboxRelayTest, TheNextPageGoesOutWhileThePageBeforeAwaitsItsPubacks) {
  HookedRelay hooked(*this);
  auto& relay = hooked.relay;
  auto pages = [&](const char* overlapped) { return hooked.Pages(overlapped); };

  broker_.Freeze();
  int64_t first = Post("onde-onde");
  ASSERT_TRUE(test::Eventually([&] { return pages("false") == 1; })) << "the first page was not published";
  int64_t second = Post("klepon");
  EXPECT_TRUE(test::Eventually([&] { return pages("true") == 1; }))
      << "the second page waited for the first page's PUBACKs";
  int64_t third = Post("lapis");
  EXPECT_TRUE(test::Eventually([&] { return pages("true") == 2; }))
      << "the third page waited for the PUBACKs of the two before";
  EXPECT_EQ(hub_.ListUnsentOutbox(10)->size(), 3u) << "marked before its PUBACK";
  broker_.Thaw();

  ASSERT_TRUE(KioskHeardOf(third));
  EXPECT_TRUE(AllMarked());
  auto log = kiosk_.publish_log();
  ASSERT_EQ(log.size(), 3u) << "one page, one publish each";
  for (const auto& publish : log) ASSERT_EQ(publish.ids.size(), 1u);
  EXPECT_LT(log[0].ids[0], log[1].ids[0]);
  EXPECT_LT(log[1].ids[0], log[2].ids[0]);
  EXPECT_EQ(log[1].prev, log[0].ids[0]) << "each publish names the one before, not yet acknowledged when it went";
  EXPECT_EQ(log[2].prev, log[1].ids[0]);
  EXPECT_EQ(kiosk_.duplicates_dropped(), 0);
  EXPECT_EQ(relay.LastSentTo(kiosk_.id()), std::optional<int64_t>(log[2].ids[0]));
  EXPECT_TRUE(KioskHeardOf(first));
  EXPECT_TRUE(KioskHeardOf(second));
}

// The broker dies (kill -9) with pages in flight, unacknowledged: none of
// them is marked, and once it is back every event goes out again and is
// marked; the device has each message, however often it came.
TEST_F(OutboxRelayTest, PagesInFlightWhenTheBrokerDiesAreAllPublishedAgain) {
  HookedRelay hooked(*this);
  auto pages = [&](const char* overlapped) { return hooked.Pages(overlapped); };

  broker_.Freeze();
  std::vector<int64_t> posts{Post("serabi")};
  ASSERT_TRUE(test::Eventually([&] { return pages("false") == 1; }));
  posts.push_back(Post("getuk"));
  ASSERT_TRUE(test::Eventually([&] { return pages("true") == 1; }));
  broker_.Kill();  // what it had not read is gone
  EXPECT_EQ(hub_.ListUnsentOutbox(10)->size(), 2u) << "marked without a PUBACK";
  broker_.Start();

  for (int64_t id : posts) EXPECT_TRUE(KioskHeardOf(id)) << "post " << id << " never reached the kiosk";
  EXPECT_TRUE(test::Eventually([&] { return hub_.ListUnsentOutbox(10)->empty(); }, std::chrono::seconds(30)))
      << "the events were not marked after the broker came back";
}

TEST_F(OutboxRelayTest, ABatchOfTheLargestSizeTheRelaySendsPassesTheBroker) {
  // The broker's max_packet_size (64 KiB) counts topic, properties and
  // headers too: a payload of exactly 64 KiB ends the sender's connection.
  // The relay's cap (kMaxBatchBytes) must pass, with a traceparent, to the
  // longest device id there can be.
  const std::string tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  auto batch_of = [](size_t total) {
    std::string head = R"({"v":1,"kind":"event","id":99,"type":"surplus.posted","data":{"description":")";
    std::string tail = R"("}})";
    std::string pad(total - sync::BatchOverhead(1) - head.size() - tail.size(), 'x');
    std::string b = sync::EncodeDownBatch({head + pad + tail});
    return b + std::string(total - b.size(), ' ');  // exactly `total` bytes (JSON allows trailing space)
  };
  std::string largest = batch_of(sync::kMaxBatchBytes);
  ASSERT_EQ(largest.size(), sync::kMaxBatchBytes);
  test::TestDevice longest{broker_, std::string(64, 'k')};
  broker_.AddUser(longest.id(), longest.password());
  ASSERT_TRUE(longest.Connect().ok());
  auto ack = mqtt_->Publish(sync::DownTopic(longest.id()), largest, tp);
  ASSERT_TRUE(ack.ok());
  EXPECT_TRUE(ack->Wait(std::chrono::seconds(10)).ok());
  EXPECT_FALSE(longest.WaitEvent("surplus.posted").is_null()) << "the largest batch did not arrive";
  EXPECT_TRUE(mqtt_->connected());
}

}  // namespace
}  // namespace pp
