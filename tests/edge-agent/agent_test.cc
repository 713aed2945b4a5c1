// pp-agent end to end: real mosquitto, pp-hub and pp-agent processes, driven
// through the agent's local API as the UI drives it. What a person typed
// must survive a dead network, kill -9 and a wrong clock, and reach the hub
// exactly once.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/sqlite_db.h"
#include "common/time_format.h"
#include "firmware-cfg/device_config.h"
#include "sync/mqtt_client.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;
using std::chrono::seconds;

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(broker_.port(), 0);
    hub_ = test::HubWithBroker(dir_.file("hub.db"), broker_, HubLog());
    ASSERT_GT(hub_->port(), 0);
    provider_ = Org("provider", "Warung Bu Sri", 51.5138, -0.0984);
  }

  int64_t Org(const std::string& kind, const std::string& name, double lat, double lon) {
    auto r = test::HttpCall(hub_->port(), "POST", "/api/v1/organizations",
                            {{"kind", kind}, {"name", name}, {"lat", lat}, {"lon", lon}});
    EXPECT_EQ(r.status, 201);
    return r.body["id"].get<int64_t>();
  }

  // Where the hub's logs go: the test output unless a test reads them.
  virtual std::string HubLog() { return ""; }

  std::unique_ptr<test::AgentProcess> Agent(const std::string& id, const std::string& role,
                                            int64_t org, json extra = json::object(),
                                            std::vector<std::string> args = {},
                                            std::string log = "") {
    return std::make_unique<test::AgentProcess>(hub_->url(), broker_, dir_.path().string(), id,
                                                role, org, std::move(extra), std::move(args),
                                                std::move(log));
  }

  static json Post(const std::string& description, int minutes = 240) {
    return {{"category", "prepared_meals"}, {"description", description}, {"quantity_kg", 6},
            {"storage", "hot"}, {"best_before_in_min", minutes}};
  }

  // The hub's posts, by id (HTTP until the first missing id).
  std::map<int64_t, json> HubPosts() {
    std::map<int64_t, json> out;
    for (int64_t id = 1;; ++id) {
      auto r = test::HttpCall(hub_->port(), "GET", "/api/v1/surplus/" + std::to_string(id));
      if (r.status != 200) break;
      out[id] = r.body;
    }
    return out;
  }

  static json Outcome(const json& state, const std::string& op) {
    for (const auto& o : state["outcomes"])
      if (o["op"] == op) return o;
    return nullptr;
  }
  static json PostIn(const json& state, int64_t id) {
    for (const auto& p : state["posts"])
      if (p["id"] == id) return p;
    return nullptr;
  }
  // Waits for the outcome of `op` on `agent`.
  json WaitOutcome(test::AgentProcess& agent, const std::string& op) {
    json found;
    test::Eventually([&] { return !(found = Outcome(agent.State(), op)).is_null(); }, seconds(20));
    return found;
  }

  // Waits until the hub has published every outbox event and the broker
  // has acknowledged it (the hub marks it sent): from then on nothing more
  // is on its way to any device but what the broker holds.
  bool AllOutboxSent() {
    auto db = SqliteDb::Open(dir_.file("hub.db"));
    if (!db.ok()) return false;
    return test::Eventually([&] {
      auto& q = (*db)->Prepare("SELECT count(*) FROM outbox WHERE sent_at IS NULL");
      q.Reset();
      auto row = q.Step("unsent");
      return row.ok() && *row && q.Int(0) == 0;
    }, seconds(20));
  }
  // MQTT options to connect as `agent` (its client id and broker
  // credentials, from its config): to do to its broker session what a
  // broker or a network might.
  sync::MqttClient::Options ConnectAs(test::AgentProcess& agent) {
    sync::MqttClient::Options o;
    auto cfg = LoadDeviceConfig(agent.config_path());
    EXPECT_TRUE(cfg.ok()) << cfg.error().ToString();
    if (!cfg.ok()) return o;
    std::ifstream pw_in(cfg->broker_password_file);
    o.uri = broker_.uri();
    o.client_id = cfg->device_id;
    o.username = cfg->broker_user;
    pw_in >> o.password;
    return o;
  }

  test::TempDir dir_;
  test::Broker broker_;
  std::unique_ptr<test::Hub> hub_;
  int64_t provider_ = 0;
};

TEST_F(AgentTest, KioskPostIsOfferedAcceptedCollectedAndDelivered) {
  int64_t ngo = Org("ngo", "City Harvest", 51.5202, -0.1043);
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto tablet = Agent("tablet-1", "tablet", ngo,
                      {{"position", {{"lat", 51.52}, {"lon", -0.10}}},
                       {"vehicle", {{"capacity_kg", 350}, {"categories", {"prepared_meals", "bakery"}}}}});
  // Events reach a device through its broker session, which exists from
  // its first connection on.
  for (auto* a : {kiosk.get(), tablet.get()})
    ASSERT_TRUE(test::Eventually([&] { return !a->State()["last_sync"].is_null(); }, seconds(20)));

  // The tablet reported its vehicle from its config: what the hub stored.
  ASSERT_TRUE(test::Eventually([&] { return tablet->State()["vehicle"].is_object(); }, seconds(20)));
  json vehicle = tablet->State()["vehicle"];
  EXPECT_EQ(vehicle["free_kg"], 350.0);
  EXPECT_EQ(vehicle["categories"], json({"prepared_meals", "bakery"}));
  EXPECT_EQ(vehicle["lat"], 51.52);

  auto posted = kiosk->Call("POST", "/api/posts", Post("nasi goreng, 20 boxes"));
  ASSERT_EQ(posted.status, 202) << posted.body.dump();
  EXPECT_EQ(posted.body["status"], "queued");
  json outcome = WaitOutcome(*kiosk, posted.body["op"]);
  ASSERT_EQ(outcome["status"], "accepted") << outcome.dump();
  int64_t id = outcome["data"]["id"].get<int64_t>();

  // The tablet is offered the post and accepts it.
  ASSERT_TRUE(test::Eventually([&] {
    json p = PostIn(tablet->State(), id);
    return !p.is_null() && p["status"] == "offered" && p["offer"]["ngo_id"] == ngo;
  }, seconds(20)));
  auto accepted = tablet->Call("POST", "/api/surplus/" + std::to_string(id) + "/accept", json::object());
  ASSERT_EQ(accepted.status, 202);
  EXPECT_EQ(WaitOutcome(*tablet, accepted.body["op"])["status"], "accepted");

  // The kiosk sees who claimed it, when they come, and the handover code;
  // the tablet never sees the code.
  json mine;
  ASSERT_TRUE(test::Eventually([&] {
    mine = PostIn(kiosk->State(), id);
    return !mine.is_null() && mine["status"] == "claimed";
  }, seconds(20)));
  EXPECT_EQ(mine["claimed_by_name"], "City Harvest");
  EXPECT_TRUE(mine.contains("pickup_eta"));
  std::string code = mine["handover_code"].get<std::string>();
  ASSERT_EQ(code.size(), 6u);
  EXPECT_FALSE(PostIn(tablet->State(), id).contains("handover_code"));

  // A wrong code is refused and named; the right one with less than posted
  // is a partial pickup, and the rest is posted again.
  std::string wrong = code == "000000" ? "111111" : "000000";
  std::string path = "/api/surplus/" + std::to_string(id);
  auto bad = tablet->Call("POST", path + "/pickup", {{"handover_code", wrong}, {"actual_kg", 4}});
  ASSERT_EQ(bad.status, 202);
  json refused = WaitOutcome(*tablet, bad.body["op"]);
  EXPECT_EQ(refused["status"], "rejected");
  EXPECT_EQ(refused["data"][0]["field"], "handover_code");
  auto good = tablet->Call("POST", path + "/pickup", {{"handover_code", code}, {"actual_kg", 4}});
  json picked = WaitOutcome(*tablet, good.body["op"]);
  ASSERT_EQ(picked["status"], "accepted") << picked.dump();
  EXPECT_GT(picked["data"]["remainder_id"].get<int64_t>(), id);
  auto delivered = tablet->Call("POST", path + "/deliver", json::object());
  EXPECT_EQ(WaitOutcome(*tablet, delivered.body["op"])["status"], "accepted");
  ASSERT_TRUE(test::Eventually([&] {
    json p = PostIn(kiosk->State(), id);
    return !p.is_null() && p["status"] == "delivered" && p["picked_up_kg"] == 4.0;
  }, seconds(20)));
  EXPECT_EQ(HubPosts().at(id)["status"], "delivered");
}

TEST_F(AgentTest, TwoTabletsClaimingOnePostOneWinsAndTheOtherHearsItAtOnce) {
  // In Brighton, beyond the match radius from London: neither NGO is
  // offered the post, which waits in the DLQ; both claim it at the version
  // they saw.
  int64_t a = Org("ngo", "A", 50.8225, -0.1372), b = Org("ngo", "B", 50.8226, -0.1371);
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto ta = Agent("tablet-a", "tablet", a), tb = Agent("tablet-b", "tablet", b);
  auto posted = kiosk->Call("POST", "/api/posts", Post("roti, 30 buns"));
  json outcome = WaitOutcome(*kiosk, posted.body["op"]);
  int64_t id = outcome["data"]["id"].get<int64_t>();
  json current;
  ASSERT_TRUE(test::Eventually([&] {
    current = HubPosts().at(id);
    return current["status"] == "dead_lettered";
  }, seconds(20)));
  json claim{{"version", current["version"]}};
  auto ca = ta->Call("POST", "/api/surplus/" + std::to_string(id) + "/claim", claim);
  auto cb = tb->Call("POST", "/api/surplus/" + std::to_string(id) + "/claim", claim);
  ASSERT_EQ(ca.status, 202);
  ASSERT_EQ(cb.status, 202);
  json oa = WaitOutcome(*ta, ca.body["op"]), ob = WaitOutcome(*tb, cb.body["op"]);
  std::multiset<std::string> statuses{oa["status"].get<std::string>(), ob["status"].get<std::string>()};
  EXPECT_EQ(statuses, (std::multiset<std::string>{"accepted", "conflict"})) << oa.dump() << ob.dump();
  const json& loser = oa["status"] == "conflict" ? oa : ob;
  EXPECT_EQ(loser["data"]["status"], "claimed");  // the truth, to show the driver
  EXPECT_EQ(loser["type"], "claim");
}

TEST_F(AgentTest, BrokerDownWhileAThousandOpsQueueThenEachIsAppliedOnceInOrder) {
  constexpr int kOps = 1000;
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  ASSERT_TRUE(test::Eventually([&] { return kiosk->State()["online"] == true; }, seconds(20)));
  broker_.Stop();
  ASSERT_TRUE(test::Eventually([&] { return kiosk->State()["online"] == false; }, seconds(20)));
  for (int i = 0; i < kOps; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "queued-%04d", i);
    ASSERT_EQ(kiosk->Call("POST", "/api/posts", Post(name)).status, 202) << i;
  }
  json st = kiosk->State();
  EXPECT_EQ(st["queued"], kOps);
  EXPECT_EQ(st["online"], false);

  broker_.Start();
  ASSERT_TRUE(test::Eventually([&] { return kiosk->State()["queued"] == 0; }, seconds(120)))
      << kiosk->State()["queued"];
  auto posts = HubPosts();
  std::vector<std::string> order;
  for (const auto& [id, p] : posts) order.push_back(p["description"].get<std::string>());
  ASSERT_EQ(order.size(), size_t(kOps));  // none lost, none twice
  for (int i = 0; i < kOps; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "queued-%04d", i);
    ASSERT_EQ(order[i], name) << "applied out of order at " << i;  // ids follow the queue
  }
}

TEST_F(AgentTest, KillNineDuringABurstLosesNothingTheUiWasToldIsQueued) {
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  std::vector<std::string> acknowledged, unanswered;
  std::atomic<bool> stop{false};
  std::thread burst([&] {
    for (int i = 0; !stop; ++i) {
      std::string name = "burst-" + std::to_string(i);
      auto r = kiosk->Call("POST", "/api/posts", Post(name));
      (r.status == 202 ? acknowledged : unanswered).push_back(name);
      if (r.status == 0) break;  // the agent is gone
    }
  });
  ASSERT_TRUE(test::Eventually([&] { return acknowledged.size() >= 300; }, seconds(60)));
  kiosk->Kill(SIGKILL);
  stop = true;
  burst.join();
  kiosk->Start();
  ASSERT_TRUE(test::Eventually([&] { return kiosk->State()["queued"] == 0; }, seconds(60)));

  std::map<std::string, int> seen;
  for (const auto& [id, p] : HubPosts()) seen[p["description"].get<std::string>()]++;
  for (const auto& name : acknowledged) EXPECT_EQ(seen[name], 1) << name;
  // The request cut by the kill may or may not have been committed; it is
  // never applied twice either way.
  for (const auto& name : unanswered) EXPECT_LE(seen[name], 1) << name;
  EXPECT_GE(seen.size(), acknowledged.size());
}

// A broker may drop a device's queue while it is away (its session expired,
// a clean session after mqtt_session_reset, a queue over
// max_queued_messages), and Paho acknowledges a message before the agent has
// applied it (kill -9 in between loses it). On connecting the agent asks the
// hub for what it sent after the last id applied here (`catchup`).
TEST_F(AgentTest, AKioskWhoseBrokerQueueWasLostLearnsOnReturnWhatHappenedWhileAway) {
  // In Brighton, beyond the match radius: the post waits in the DLQ and the
  // NGO claims it from there.
  int64_t ngo = Org("ngo", "A", 50.8225, -0.1372);
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto tablet = Agent("tablet-a", "tablet", ngo);
  auto posted = kiosk->Call("POST", "/api/posts", Post("roti, 30 buns"));
  ASSERT_EQ(posted.status, 202);
  json outcome = WaitOutcome(*kiosk, posted.body["op"]);
  ASSERT_EQ(outcome["status"], "accepted");
  const int64_t id = outcome["data"]["id"].get<int64_t>();
  json current;
  ASSERT_TRUE(test::Eventually([&] {
    current = HubPosts().at(id);
    return current["status"] == "dead_lettered";
  }, seconds(20)));
  ASSERT_TRUE(test::Eventually([&] { return PostIn(kiosk->State(), id)["status"] == "dead_lettered"; }, seconds(20)));

  kiosk->Kill(SIGKILL);
  auto claim = tablet->Call("POST", "/api/surplus/" + std::to_string(id) + "/claim", {{"version", current["version"]}});
  ASSERT_EQ(claim.status, 202);
  ASSERT_EQ(WaitOutcome(*tablet, claim.body["op"])["status"], "accepted");
  // Once the hub has marked every event sent, the broker has acknowledged
  // surplus.claimed into the kiosk's queue. Drop that queue as an expired
  // session would: connect as the kiosk with a clean start.
  ASSERT_TRUE(AllOutboxSent());
  {
    auto as_kiosk = ConnectAs(*kiosk);
    sync::MqttClient drop(sync::MqttClient::CleanSession(as_kiosk.uri, as_kiosk.client_id, as_kiosk.username,
                                                         as_kiosk.password, {}, 100),
                          [](auto&, auto&, auto&) {});
    Status st = drop.Connect(seconds(10));
    ASSERT_TRUE(st.ok()) << st.error().ToString();
    drop.Disconnect();
  }

  kiosk->Start();
  json seen;
  EXPECT_TRUE(test::Eventually([&] {
    seen = PostIn(kiosk->State(), id);
    return seen["status"] == "claimed";
  }, seconds(20))) << "the kiosk never learnt of the claim: " << seen.dump();
  EXPECT_EQ(seen["claimed_by"], ngo);
  EXPECT_TRUE(seen.contains("handover_code")) << "the provider's code did not come with it";
}

// A broker that kept a device's session still drops, without a word, what
// comes for it beyond max_queued_messages while it is away (100,000 in
// packaging/; 1 here). The hub's answer to the ping the kiosk sends on
// reconnecting names the last message the hub sent it (`last`): the kiosk
// sees that it never got that one, and catches up, though nothing more
// comes. (Each publish also names the last message of the one before it,
// `prev`: AgentQueryTest checks that path.)
TEST_F(AgentTest, AKioskWhoseBrokerDroppedMessagesBeyondItsQueueLimitCatchesUpWhenItIsBack) {
  broker_.Stop();
  broker_.Start(/*max_queued=*/1);
  // In Brighton, beyond the match radius: the posts wait in the DLQ and the
  // NGO claims them from there.
  int64_t ngo = Org("ngo", "A", 50.8225, -0.1372);
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto tablet = Agent("tablet-a", "tablet", ngo);
  std::vector<int64_t> ids;
  std::map<int64_t, json> versions;
  for (const char* what : {"roti", "kue", "nasi"}) {
    auto posted = kiosk->Call("POST", "/api/posts", Post(what));
    ASSERT_EQ(posted.status, 202);
    json outcome = WaitOutcome(*kiosk, posted.body["op"]);
    ASSERT_EQ(outcome["status"], "accepted");
    ids.push_back(outcome["data"]["id"].get<int64_t>());
  }
  for (int64_t id : ids) {
    ASSERT_TRUE(test::Eventually([&] { return HubPosts().at(id)["status"] == "dead_lettered"; }, seconds(20)));
    ASSERT_TRUE(test::Eventually([&] { return PostIn(kiosk->State(), id)["status"] == "dead_lettered"; }, seconds(20)));
    versions[id] = HubPosts().at(id)["version"];
  }
  ASSERT_TRUE(AllOutboxSent());

  // Away with its session kept and the process alive: stopped, and its
  // connection taken over by a client that leaves at once (the broker
  // closes the stopped kiosk's connection and keeps the session).
  kiosk->Signal(SIGSTOP);
  struct Resume {
    test::AgentProcess& p;
    ~Resume() { p.Signal(SIGCONT); }
  } resume{*kiosk};
  {
    sync::MqttClient takeover(ConnectAs(*kiosk), [](auto&, auto&, auto&) {});  // keeps the session
    Status st = takeover.Connect(seconds(10));
    ASSERT_TRUE(st.ok()) << st.error().ToString();
    ASSERT_TRUE(takeover.session_kept());
    takeover.Disconnect();
  }
  // Two claims while it is away, one publish each: the broker keeps the
  // first for the kiosk and drops the second.
  auto claim = [&](int64_t id) {
    auto r = tablet->Call("POST", "/api/surplus/" + std::to_string(id) + "/claim", {{"version", versions[id]}});
    ASSERT_EQ(r.status, 202);
    ASSERT_EQ(WaitOutcome(*tablet, r.body["op"])["status"], "accepted");
    ASSERT_TRUE(AllOutboxSent());
  };
  ASSERT_NO_FATAL_FAILURE(claim(ids[0]));
  ASSERT_NO_FATAL_FAILURE(claim(ids[1]));
  kiosk->Signal(SIGCONT);
  ASSERT_TRUE(test::Eventually([&] { return PostIn(kiosk->State(), ids[0])["status"] == "claimed"; }, seconds(30)))
      << "the message the broker kept never came";
  // Nothing more is sent to it: the ping's answer names the dropped one.
  json seen;
  EXPECT_TRUE(test::Eventually([&] {
    seen = PostIn(kiosk->State(), ids[1]);
    return seen["status"] == "claimed";
  }, seconds(20))) << "the kiosk never learnt of the claim the broker dropped: " << seen.dump()
                   << "\nmosquitto's log:\n" << broker_.Log();
  EXPECT_TRUE(seen.contains("handover_code")) << "the provider's code did not come with it";
  // And it goes on as before.
  ASSERT_NO_FATAL_FAILURE(claim(ids[2]));
  EXPECT_TRUE(test::Eventually([&] { return PostIn(kiosk->State(), ids[2])["status"] == "claimed"; }, seconds(20)));
}

TEST_F(AgentTest, ADeviceClockHoursOffChangesNoOutcome) {
  int64_t ngo = Org("ngo", "City Harvest", 51.5202, -0.1043);
  // The kiosk's clock is five hours slow: a best_before from its own clock
  // would be in the past. The tablet's is seven hours fast.
  auto kiosk = Agent("kiosk-1", "kiosk", provider_, json::object(), {"--clock-skew", "-5h"});
  auto tablet = Agent("tablet-1", "tablet", ngo, json::object(), {"--clock-skew", "7h"});
  for (auto* a : {kiosk.get(), tablet.get()})
    ASSERT_TRUE(test::Eventually([&] { return !a->State()["last_sync"].is_null(); }, seconds(20)));

  auto posted = kiosk->Call("POST", "/api/posts", Post("soto ayam", 120));
  ASSERT_EQ(posted.status, 202) << posted.body.dump();
  json outcome = WaitOutcome(*kiosk, posted.body["op"]);
  ASSERT_EQ(outcome["status"], "accepted") << outcome.dump();
  auto best_before = *ParseRfc3339(outcome["data"]["best_before"].get<std::string>());
  auto expected = SystemClock::Instance().Now() + std::chrono::minutes(120);
  EXPECT_LT(std::chrono::abs(best_before - expected), std::chrono::minutes(2))
      << "best_before " << FormatRfc3339(best_before) << " expected about " << FormatRfc3339(expected);

  int64_t id = outcome["data"]["id"].get<int64_t>();
  ASSERT_TRUE(test::Eventually([&] {
    json p = PostIn(tablet->State(), id);
    return !p.is_null() && p["status"] == "offered";
  }, seconds(20)));
  auto accepted = tablet->Call("POST", "/api/surplus/" + std::to_string(id) + "/accept", json::object());
  EXPECT_EQ(WaitOutcome(*tablet, accepted.body["op"])["status"], "accepted");
}

TEST_F(AgentTest, AFullQueueIsRefusedOutLoudAndNothingAcceptedIsLost) {
  auto kiosk = Agent("kiosk-1", "kiosk", provider_, {{"queue_limit", 10}});
  broker_.Stop();
  ASSERT_TRUE(test::Eventually([&] { return kiosk->State()["online"] == false; }, seconds(20)));
  for (int i = 0; i < 10; ++i)
    ASSERT_EQ(kiosk->Call("POST", "/api/posts", Post("full-" + std::to_string(i))).status, 202);
  auto refused = kiosk->Call("POST", "/api/posts", Post("one too many"));
  EXPECT_EQ(refused.status, 503);
  EXPECT_NE(refused.body["detail"].get<std::string>().find("queue is full"), std::string::npos);
  EXPECT_EQ(kiosk->State()["queue_full"], true);
  broker_.Start();
  ASSERT_TRUE(test::Eventually([&] { return kiosk->State()["queued"] == 0; }, seconds(60)))
      << "mosquitto's log:\n" << broker_.Log();
  EXPECT_EQ(HubPosts().size(), 10u);
}

// A kiosk offers a pickup window in minutes from now and "cooked N min
// ago", as it offers "good for": the agent turns them into the hub's time,
// and names what is wrong before anything is queued.
TEST_F(AgentTest, AKioskPostsAPickupWindowInMinutesFromTheHubsNow) {
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto with_window = [](json start, json end) {
    json p = Post("window");
    if (!start.is_null()) p["pickup_start_in_min"] = start;
    if (!end.is_null()) p["pickup_end_in_min"] = end;
    return p;
  };
  auto field_of = [](const test::HttpAnswer& r) {
    return r.body.contains("errors") && !r.body["errors"].empty() ? r.body["errors"][0]["field"].get<std::string>()
                                                                  : std::string("(none) ") + r.body.dump();
  };
  auto only_start = kiosk->Call("POST", "/api/posts", with_window(30, nullptr));
  EXPECT_EQ(only_start.status, 422);
  EXPECT_EQ(field_of(only_start), "pickup_end_in_min");
  auto backwards = kiosk->Call("POST", "/api/posts", with_window(90, 60));
  EXPECT_EQ(backwards.status, 422);
  EXPECT_EQ(field_of(backwards), "pickup_end_in_min");
  auto negative = kiosk->Call("POST", "/api/posts", with_window(-5, 60));
  EXPECT_EQ(negative.status, 422);
  EXPECT_EQ(field_of(negative), "pickup_start_in_min");
  auto words = kiosk->Call("POST", "/api/posts", with_window("soon", 60));
  EXPECT_EQ(words.status, 422);
  EXPECT_EQ(field_of(words), "pickup_start_in_min");
  // The hub's own rule, heard at the kiosk: the window opens before the food goes off (240 min).
  auto cooked_later = kiosk->Call("POST", "/api/posts", [&] {
    json p = with_window(30, 150);
    p["prepared_min_ago"] = -10;
    return p;
  }());
  EXPECT_EQ(cooked_later.status, 422);
  EXPECT_EQ(field_of(cooked_later), "prepared_min_ago");
  auto too_late = kiosk->Call("POST", "/api/posts", with_window(300, 360));
  EXPECT_EQ(too_late.status, 422);
  EXPECT_EQ(field_of(too_late), "pickup_start");
  EXPECT_EQ(kiosk->State()["queued_ops"].size(), 0u) << "nothing refused is queued";

  const auto before = pp::SystemClock::Instance().Now();
  json good = with_window(30, 150);
  good["prepared_min_ago"] = 60;
  auto ok = kiosk->Call("POST", "/api/posts", good);
  ASSERT_EQ(ok.status, 202) << ok.body.dump();
  const auto after = pp::SystemClock::Instance().Now();
  std::map<int64_t, json> posts;
  ASSERT_TRUE(test::Eventually([&] { return (posts = HubPosts()).size() == 1; }, seconds(30)));
  const json& post = posts.begin()->second;
  auto start = pp::ParseRfc3339(post["pickup_start"].get<std::string>());
  auto end = pp::ParseRfc3339(post["pickup_end"].get<std::string>());
  ASSERT_TRUE(start && end) << post.dump();
  // The hub and the agent share this machine's clock; RFC 3339 keeps seconds.
  EXPECT_GE(*start, before + std::chrono::minutes(30) - seconds(1));
  EXPECT_LE(*start, after + std::chrono::minutes(30) + seconds(1));
  EXPECT_EQ(*end - *start, std::chrono::minutes(120));
  auto cooked = pp::ParseRfc3339(post["prepared_at"].get<std::string>());
  ASSERT_TRUE(cooked) << post.dump();
  EXPECT_EQ(*start - *cooked, std::chrono::minutes(90)) << "both from the same now";
}

TEST_F(AgentTest, BadInputIsNamedAndTheAgentKeepsServing) {
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto wrong_role = kiosk->Call("POST", "/api/surplus/1/claim", {{"version", 1}});
  EXPECT_EQ(wrong_role.status, 403);
  auto missing = kiosk->Call("POST", "/api/posts", {{"category", "prepared_meals"}, {"best_before_in_min", 60}});
  EXPECT_EQ(missing.status, 422);
  std::set<std::string> fields;
  for (const auto& e : missing.body["errors"]) fields.insert(e["field"].get<std::string>());
  EXPECT_TRUE(fields.count("description")) << missing.body.dump();
  auto past = kiosk->Call("POST", "/api/posts", Post("x", 0));
  EXPECT_EQ(past.status, 422);
  EXPECT_EQ(past.body["errors"][0]["field"], "best_before_in_min");
  auto unknown = kiosk->Call("POST", "/api/posts", [] { json p = Post("x"); p["price"] = 3; return p; }());
  EXPECT_EQ(unknown.status, 422);

  auto raw = [&](const std::string& request) {
    return test::RawStatus(test::RawHttp(kiosk->port(), request));
  };
  EXPECT_EQ(raw("POST /api/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 5\r\nConnection: close\r\n\r\n{oops"), 400);
  EXPECT_EQ(raw("POST /api/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                "Content-Length: 2\r\nConnection: close\r\n\r\n{}"), 415);
  EXPECT_EQ(raw("GET /api/state HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n"), 403);
  EXPECT_EQ(raw("POST /api/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\nConnection: close\r\n\r\n" + std::string(100000, ' ')), 413);
  const std::string deep = "{\"description\":" + std::string(5000, '[') + std::string(5000, ']') + "}";
  EXPECT_EQ(raw("POST /api/posts HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: " + std::to_string(deep.size()) + "\r\nConnection: close\r\n\r\n" + deep),
            400);
  // The CLI names the same fault in what it was given, and sends nothing.
  const std::string cli_err = dir_.file("cli.err");
  test::Process cli({test::BinPath("pp-agent"), "post", "--config", kiosk->config_path(), "--json", deep}, cli_err);
  int exit_status = cli.Wait();
  EXPECT_TRUE(WIFEXITED(exit_status) && WEXITSTATUS(exit_status) != 0) << exit_status;
  std::ifstream err_file(cli_err);
  std::string err((std::istreambuf_iterator<char>(err_file)), std::istreambuf_iterator<char>());
  EXPECT_NE(err.find("--json nests deeper than 32 levels"), std::string::npos) << err;
  json st = kiosk->State();
  EXPECT_EQ(st["queued"], 0);
  EXPECT_EQ(st["device"], "kiosk-1");
}

// The pages themselves, in Debian's chromium driven by playwright-core
// (installed by packaging/test.sh: npm ci in tests/browser).
TEST_F(AgentTest, KioskAndTabletPagesInHeadlessChromium) {
  int64_t ngo = Org("ngo", "City Harvest", 51.5202, -0.1043);
  auto kiosk = Agent("kiosk-1", "kiosk", provider_);
  auto tablet = Agent("tablet-1", "tablet", ngo, {{"position", {{"lat", 51.52}, {"lon", -0.10}}}});
  for (auto* a : {kiosk.get(), tablet.get()})
    ASSERT_TRUE(test::Eventually([&] { return !a->State()["last_sync"].is_null(); }, seconds(20)));
  std::string script = test::SourceDir() + "/tests/browser/agent_ui.mjs";
  ASSERT_TRUE(std::filesystem::exists(test::SourceDir() + "/tests/browser/node_modules/playwright-core"))
      << "run: npm ci --prefix tests/browser (packaging/test.sh does)";
  test::Process node({"/usr/bin/env", "node", script, kiosk->url() + "/", tablet->url() + "/",
                      dir_.path().string()});
  std::string line = node.WaitForLine("", seconds(120));
  int status = node.Wait();
  EXPECT_EQ(status, 0) << line;
  EXPECT_EQ(line.rfind("ok:", 0), 0u) << line;
}

// One post, one trace: the kiosk starts it, the hub keeps it with the post,
// the tablet's answer continues it; one grep of the trace id finds every
// step in the kiosk's, the hub's and the tablet's logs.
class AgentTraceTest : public AgentTest {
 protected:
  std::string HubLog() override { return dir_.file("hub.log"); }
};

std::vector<json> LogLines(const std::string& path, const std::string& needle) {
  std::ifstream in(path);
  std::vector<json> out;
  std::string line;
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos) {
      json j = json::parse(line, nullptr, false);
      if (j.is_object()) out.push_back(std::move(j));
    }
  return out;
}

TEST_F(AgentTraceTest, OnePostIsFollowedFromKioskToTabletWithOneGrep) {
  int64_t ngo = Org("ngo", "City Harvest", 51.5202, -0.1043);
  auto kiosk = Agent("kiosk-1", "kiosk", provider_, json::object(), {}, dir_.file("kiosk.log"));
  auto tablet = Agent("tablet-1", "tablet", ngo, json::object(), {}, dir_.file("tablet.log"));
  for (auto* a : {kiosk.get(), tablet.get()})
    ASSERT_TRUE(test::Eventually([&] { return !a->State()["last_sync"].is_null(); }, seconds(20)));
  auto posted = kiosk->Call("POST", "/api/posts", Post("gado-gado"));
  int64_t id = WaitOutcome(*kiosk, posted.body["op"])["data"]["id"].get<int64_t>();
  ASSERT_TRUE(test::Eventually([&] {
    json p = PostIn(tablet->State(), id);
    return !p.is_null() && p["status"] == "offered";
  }, seconds(20)));
  auto accepted = tablet->Call("POST", "/api/surplus/" + std::to_string(id) + "/accept", json::object());
  ASSERT_EQ(WaitOutcome(*tablet, accepted.body["op"])["status"], "accepted");
  ASSERT_TRUE(test::Eventually([&] {
    json p = PostIn(kiosk->State(), id);
    return !p.is_null() && p["status"] == "claimed";
  }, seconds(20)));

  auto queued = LogLines(dir_.file("kiosk.log"), posted.body["op"].get<std::string>());
  ASSERT_FALSE(queued.empty());
  std::string trace = queued.front()["trace"];
  ASSERT_EQ(trace.size(), 32u);
  std::multiset<std::string> kiosk_steps, hub_steps, tablet_steps;
  for (const auto& j : LogLines(dir_.file("kiosk.log"), trace)) kiosk_steps.insert(j["event"].get<std::string>() + ":" + j.value("type", ""));
  for (const auto& j : LogLines(dir_.file("hub.log"), trace)) hub_steps.insert(j["event"].get<std::string>() + ":" + j.value("type", ""));
  for (const auto& j : LogLines(dir_.file("tablet.log"), trace)) tablet_steps.insert(j["event"].get<std::string>() + ":" + j.value("type", ""));
  EXPECT_TRUE(kiosk_steps.count("op_queued:post_surplus")) << testing::PrintToString(kiosk_steps);
  EXPECT_TRUE(kiosk_steps.count("outcome_received:post_surplus"));
  EXPECT_TRUE(kiosk_steps.count("event_received:surplus.claimed"));
  EXPECT_TRUE(hub_steps.count("op_applied:post_surplus")) << testing::PrintToString(hub_steps);
  EXPECT_TRUE(hub_steps.count("op_applied:accept"));
  EXPECT_TRUE(tablet_steps.count("event_received:surplus.offered")) << testing::PrintToString(tablet_steps);
  EXPECT_TRUE(tablet_steps.count("op_queued:accept"));
  EXPECT_TRUE(tablet_steps.count("outcome_received:accept"));
}

}  // namespace
}  // namespace pp
