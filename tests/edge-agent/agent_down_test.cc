// The agent's down path in process: what the hub sends, applied to the
// agent's store, without a broker (an Uplink that is never connected, so
// nothing leaves). The end-to-end tests in agent_test.cc cover the same path
// through mosquitto; this one pins down batches exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "common/process_cpu.h"
#include "common/time_format.h"
#include "common/vehicle.h"
#include "edge-agent/agent.h"
#include "tests/support/test_support.h"

namespace pp::agent {
namespace {

using nlohmann::json;

// A device's own store (in a temporary folder) and its config.
class DeviceTest : public ::testing::Test {
 protected:
  void OpenDevice(const std::string& id, const std::string& role, int64_t org, GeoPoint at) {
    auto store = AgentStore::Open(dir_.file(id + ".db"));
    ASSERT_TRUE(store.ok()) << store.error().ToString();
    store_ = std::move(*store);
    cfg_.device_id = id;
    cfg_.role = role;
    cfg_.org_id = org;
    cfg_.position = at;
  }

  // The hub's surplus.posted for `post`, outbox id `id`, at ts_ms.
  static json Posted(int64_t id, int64_t post, int64_t ts_ms) {
    return {{"v", 1}, {"kind", "event"}, {"id", id}, {"ts", ts_ms}, {"type", "surplus.posted"},
            {"data", {{"id", post}, {"status", "available"}, {"version", 1}, {"provider_id", 7}}}};
  }
  // Whether the agent's mirror of posts holds `post`.
  static bool HasPost(Agent& agent, int64_t post) {
    json st = *agent.State();
    for (const auto& p : st["posts"]) if (p["id"] == post) return true;
    return false;
  }

  test::TempDir dir_;
  std::unique_ptr<AgentStore> store_;
  DeviceConfig cfg_;
};

class AgentDownTest : public DeviceTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(OpenDevice("kiosk-1", "kiosk", 7, GeoPoint{51.5, -0.1}));
    agent_ = std::make_unique<Agent>(cfg_, sync::GenerateKeyPair().secret_key, *store_,
                                     SystemClock::Instance(), uplink_);
    agent_->SetObserver([this](const std::string& kind, const std::string& type, const json&) {
      std::lock_guard lock(mu_);
      told_.push_back(kind + ":" + type);
    });
    agent_->Start();
  }
  void TearDown() override { agent_->Stop(); }

  std::vector<std::string> Told() {
    std::lock_guard lock(mu_);
    return told_;
  }
  static json Event(int64_t id, int64_t post, const std::string& status) {
    return {{"v", 1}, {"kind", "event"}, {"id", id}, {"ts", 1}, {"type", "surplus." + status},
            {"data", {{"id", post}, {"status", status}, {"version", 1}, {"provider_id", 7}}}};
  }

  OfflineUplink uplink_;
  std::unique_ptr<Agent> agent_;
  std::mutex mu_;
  std::vector<std::string> told_;
};

TEST_F(AgentDownTest, ABatchIsAppliedInOrderAndAMalformedOneIsDroppedByName) {
  auto queued = agent_->Submit(sync::kOpPostSurplus,
                               {{"category", "bakery"}, {"description", "roti"}, {"best_before_in_min", 60}});
  ASSERT_TRUE(queued.ok()) << queued.error().ToString();
  ASSERT_EQ((*agent_->State())["queued"], 1);

  // Not a batch the agent can read: named in the log, nothing applied, and
  // the agent goes on (the good batch below is applied).
  agent_->OnDown(R"({"v":1,"kind":"batch","messages":7})");
  agent_->OnDown(R"({"v":1,"kind":"batch","messages":[{"v":1,"kind":"event","id":1},"x"]})");

  json outcome{{"v", 1}, {"kind", "outcome"}, {"id", 2}, {"ts", 1}, {"op", queued->op}, {"seq", queued->seq},
               {"status", "accepted"}, {"code", "ok"}, {"message", ""},
               {"data", {{"id", 41}, {"status", "available"}, {"version", 1}, {"provider_id", 7}}}};
  agent_->OnDown(sync::EncodeDownBatch({outcome.dump(), Event(3, 41, "posted").dump(), Event(4, 42, "posted").dump()}));
  // The same ids again, one at a time: repeats, dropped.
  agent_->OnDown(Event(3, 41, "posted").dump());
  agent_->OnDown(Event(5, 43, "posted").dump());  // the last: once it is told, so is all before it

  ASSERT_TRUE(test::Eventually([&] { return Told().size() >= 4; }, std::chrono::seconds(10)));
  EXPECT_EQ(Told(), (std::vector<std::string>{"outcome:post_surplus", "event:surplus.posted",
                                              "event:surplus.posted", "event:surplus.posted"}));
  json st = *agent_->State();
  EXPECT_EQ(st["queued"], 0) << "the outcome in the batch did not answer the op";
  std::set<int64_t> posts;
  for (const auto& p : st["posts"]) posts.insert(p["id"].get<int64_t>());
  EXPECT_EQ(posts, (std::set<int64_t>{41, 42, 43}));
}

// A released claim voids its handover code: the kiosk's copy of the post
// forgets it, though the event that reopens the post does not name it.
TEST_F(AgentDownTest, AReleasedPostForgetsItsHandoverCode) {
  json claimed = Event(1, 41, "claimed");
  claimed["data"]["handover_code"] = "042917";
  claimed["data"]["claimed_by"] = 3;
  agent_->OnDown(claimed.dump());
  auto code_of = [&]() -> json {
    const json st = *agent_->State();
    for (const auto& p : st["posts"])
      if (p["id"] == 41) return p.value("handover_code", json());
    return json("(no post)");
  };
  ASSERT_TRUE(test::Eventually([&] { return code_of() == "042917"; }, std::chrono::seconds(10)));
  json released = Event(2, 41, "released");
  released["data"]["status"] = "available";
  released["data"]["version"] = 3;
  released["data"]["claimed_by"] = nullptr;
  agent_->OnDown(released.dump());
  ASSERT_TRUE(test::Eventually([&] { return code_of().is_null(); }, std::chrono::seconds(10)))
      << code_of().dump();
}

// Down messages come only from the hub (the broker's ACL), but a bad one
// must not stop the device: every field of an outcome and of an event
// swapped for values of other JSON types, alone and in batches, then a
// good message, which is applied.
TEST_F(AgentDownTest, DownMessagesWithFieldsOfAnyTypeAreDroppedAndTheAgentGoesOn) {
  auto queued = agent_->Submit(sync::kOpPostSurplus,
                               {{"category", "bakery"}, {"description", "roti"}, {"best_before_in_min", 60}});
  ASSERT_TRUE(queued.ok()) << queued.error().ToString();
  const std::vector<json> odd{nullptr, true, -1, 0, 1e308, 18446744073709551615ULL, -9223372036854775807LL - 1,
                              "", "x", json::array(), json::array({1, "a"}), json::object(), json{{"id", "7"}}};
  const json outcome{{"v", 1}, {"kind", "outcome"}, {"id", 2}, {"ts", 1}, {"op", queued->op}, {"seq", queued->seq},
                     {"status", "accepted"}, {"code", "ok"}, {"message", ""},
                     {"data", {{"id", 41}, {"status", "available"}, {"version", 1}, {"provider_id", 7}}}};
  int64_t id = 1000;
  for (const json& good : {outcome, Event(0, 41, "posted")}) {
    for (const auto& [field, ignored] : good.items()) {
      std::vector<std::string> batch;
      for (const json& v : odd) {
        json bad = good;
        bad[field] = v;
        if (field != "id") bad["id"] = ++id;  // else a repeat, dropped before its fields are read
        if (field == "data") bad["data"] = v;
        agent_->OnDown(bad.dump());
        batch.push_back(bad.dump());
      }
      agent_->OnDown(sync::EncodeDownBatch(std::vector<std::string_view>(batch.begin(), batch.end())));
    }
  }
  agent_->OnDown(Event(++id, 99, "posted").dump());  // the last: once it is applied, all before it were handled
  ASSERT_TRUE(test::Eventually([&] {
    json st = *agent_->State();
    for (const auto& p : st["posts"]) if (p["id"] == 99) return true;
    return false;
  }, std::chrono::seconds(20))) << "the agent stopped applying down messages";
}

// An uplink that is always connected and records what is published; every
// publish is acknowledged at once.
class Recording final : public Uplink {
 public:
  bool Connected() const override { return true; }
  bool SessionKept() const override { return session_kept; }
  std::atomic<bool> session_kept{false};  // what the broker said at the latest connect
  std::atomic<bool> late_acks{false};     // PUBACKs do not come in time (a busy broker)
  Result<AckWait> Publish(const std::string& topic, const std::string& payload, const std::string&) override {
    std::lock_guard lock(mu_);
    publishes_.emplace_back(topic, payload);
    if (Of(topic, sync::kUpBatch)) {  // recorded op by op, as the hub takes it
      auto items = sync::DecodeUpBatch(payload);
      EXPECT_TRUE(items.ok()) << payload;
      if (items.ok())
        for (auto& item : *items) {
          EXPECT_TRUE(item.env.ok()) << payload;
          if (item.env.ok()) sent_.emplace_back(sync::UpTopic(item.env->device, item.env->type), sync::Encode(*item.env));
        }
    } else {
      sent_.emplace_back(topic, payload);
    }
    if (late_acks) return AckWait([](std::chrono::milliseconds) { return Status(Error::Unavailable("no PUBACK within the timeout")); });
    return AckWait([](std::chrono::milliseconds) { return OkStatus(); });
  }
  // The op id of the last publish whose topic ends with `/type`, if any yet.
  std::optional<std::string> OpOf(const std::string& type) {
    std::lock_guard lock(mu_);
    for (auto it = sent_.rbegin(); it != sent_.rend(); ++it)
      if (Of(it->first, type)) return json::parse(it->second)["op"].get<std::string>();
    return std::nullopt;
  }
  // The body of the last publish whose topic ends with `/type` (null if none).
  json BodyOf(const std::string& type) {
    std::lock_guard lock(mu_);
    for (auto it = sent_.rbegin(); it != sent_.rend(); ++it)
      if (Of(it->first, type)) return json::parse(it->second)["body"];
    return json();
  }
  // The types published, in order.
  std::vector<std::string> Types() {
    std::lock_guard lock(mu_);
    std::vector<std::string> types;
    for (const auto& [topic, payload] : sent_) types.push_back(topic.substr(topic.rfind('/') + 1));
    return types;
  }
  size_t Count(const std::string& type) {
    std::lock_guard lock(mu_);
    return size_t(std::count_if(sent_.begin(), sent_.end(), [&](const auto& s) { return Of(s.first, type); }));
  }
  // The MQTT publishes as made: (topic, payload), a batch as one.
  std::vector<std::pair<std::string, std::string>> Publishes() {
    std::lock_guard lock(mu_);
    return publishes_;
  }

 private:
  static bool Of(const std::string& topic, const std::string& type) { return topic.ends_with("/" + type); }
  std::mutex mu_;
  std::vector<std::pair<std::string, std::string>> sent_;       // op by op
  std::vector<std::pair<std::string, std::string>> publishes_;  // as published
};

// A tablet's store and config, and an uplink that records what it sends.
class AgentQueryTest : public DeviceTest {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(OpenDevice("tablet-1", "tablet", 9, GeoPoint{51.52, -0.10})); }

  // The hub's answer to a query: `status` "accepted" comes straight (no
  // outbox id), anything else through the outbox with `id`.
  static json Answer(const std::string& op, const std::string& status, json data, int64_t ts_ms,
                     std::optional<int64_t> id = std::nullopt) {
    json a{{"v", 1}, {"kind", "outcome"}, {"op", op}, {"seq", 1}, {"status", status},
           {"code", status == "accepted" ? "ok" : "unavailable"}, {"message", ""},
           {"ts", ts_ms}, {"data", std::move(data)}};
    if (id) a["id"] = *id;
    return a;
  }
  // Waits for the agent's latest ping and answers it, as the hub would:
  // taking batches up of `batch_ops` ops (0: a hub from before batches,
  // whose answer does not name them).
  void AnswerPing(Agent& agent, const Clock& clock, int batch_ops = int(sync::kMaxUpBatchOps)) {
    std::optional<std::string> ping;
    ASSERT_TRUE(test::Eventually([&] { return (ping = uplink_.OpOf("ping")).has_value(); }))
        << "the agent did not ping on connecting";
    json data = json::object();
    if (batch_ops > 0) data["batch_ops"] = batch_ops;
    agent.OnDown(Answer(*ping, "accepted", data, ToUnixMillis(clock.Now())).dump());
  }

  Recording uplink_;
};

// The agent's two threads carry names (top -H, perf, /proc), so that a
// profile of a thousand simulated agents tells them from Paho's; gone
// once it stops.
TEST_F(AgentQueryTest, ItsThreadsAreNamedAndGoWhenItStops) {
  SimulatedClock clock(SystemClock::Instance().Now());
  auto agent = std::make_unique<Agent>(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent->Start();
  EXPECT_TRUE(test::Eventually([] {  // each names itself as it starts
    auto threads = SelfCpuSecondsByThreadName();
    return threads.count("agent-send") == 1 && threads.count("agent-apply") == 1;
  })) << "the agent's threads carry no names";
  agent.reset();
  auto threads = SelfCpuSecondsByThreadName();
  EXPECT_EQ(threads.count("agent-send"), 0u);
  EXPECT_EQ(threads.count("agent-apply"), 0u);
}

// Under load a device's ops go together (agent.h, "Batches"): while two
// publishes await their outcomes the next ops wait, and the first outcome
// sends them all in one publish, in order, each as it was signed. An idle
// device's op goes at once, alone.
TEST_F(AgentQueryTest, OpsQueuedWhileTwoPublishesAwaitTheirOutcomesGoTogetherInOrder) {
  ASSERT_NO_FATAL_FAILURE(OpenDevice("kiosk-1", "kiosk", 7, GeoPoint{51.5, -0.1}));
  sync::KeyPair keys = sync::GenerateKeyPair();
  Agent agent(cfg_, keys.secret_key, *store_, SystemClock::Instance(), uplink_);
  agent.Start();
  AnswerPing(agent, SystemClock::Instance());
  auto post = [&](int i) {
    auto q = agent.Submit(sync::kOpPostSurplus, {{"category", "bakery"},
                                                 {"description", "roti " + std::to_string(i)},
                                                 {"best_before_in_min", 60}});
    EXPECT_TRUE(q.ok()) << q.error().ToString();
    return q.ok() ? *q : QueuedOp{};
  };
  auto published = [&] { return uplink_.Publishes().size(); };
  const size_t pings = published();
  QueuedOp a = post(1);
  ASSERT_TRUE(test::Eventually([&] { return published() == pings + 1; })) << "an idle device's op did not go";
  QueuedOp b = post(2);
  ASSERT_TRUE(test::Eventually([&] { return published() == pings + 2; }));
  std::vector<QueuedOp> held{post(3), post(4), post(5)};
  auto all = uplink_.Publishes();
  EXPECT_TRUE(all[pings].first.ends_with("/post_surplus")) << all[pings].first;
  EXPECT_EQ(all[pings].second, a.envelope) << "a lone op is not its signed envelope as queued";

  // A's outcome: one publish of A and B is answered; C, D and E go now, together.
  const int64_t now_ms = ToUnixMillis(SystemClock::Instance().Now());
  agent.OnDown(Answer(a.op, "accepted", {{"id", 41}, {"version", 1}, {"provider_id", 7}}, now_ms, 1).dump());
  ASSERT_TRUE(test::Eventually([&] { return published() == pings + 3; })) << "the held ops did not go";
  all = uplink_.Publishes();
  ASSERT_EQ(all.size(), pings + 3) << "the held ops went in more than one publish";
  EXPECT_EQ(all.back().first, sync::UpTopic("kiosk-1", sync::kUpBatch));
  auto items = sync::DecodeUpBatch(all.back().second);
  ASSERT_TRUE(items.ok()) << items.error().ToString();
  ASSERT_EQ(items->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE((*items)[i].env.ok());
    EXPECT_EQ((*items)[i].env->op, held[i].op) << "out of order at " << i;
    EXPECT_EQ(sync::Encode(*(*items)[i].env), held[i].envelope);
    EXPECT_TRUE(sync::Verify(*(*items)[i].env, keys.public_key));
    EXPECT_EQ((*items)[i].traceparent, held[i].traceparent);
  }
  // Every outcome in: the queue is empty, and a new op goes at once, alone.
  int64_t id = 2;
  for (const auto& op : {b, held[0], held[1], held[2]})
    agent.OnDown(Answer(op.op, "accepted", {{"id", 40 + id}, {"version", 1}, {"provider_id", 7}}, now_ms, id).dump()),
        ++id;
  ASSERT_TRUE(test::Eventually([&] { return (*agent.State())["queued"] == 0; }));
  QueuedOp f = post(6);
  ASSERT_TRUE(test::Eventually([&] { return published() == pings + 4; }));
  EXPECT_EQ(uplink_.Publishes().back().second, f.envelope);
  agent.Stop();
}

// A claim races other NGOs for the same food: while two publishes await
// their outcomes a claim at the head of the queue goes at once, alone,
// where any other op waits to go in a batch; one queued behind a held op
// keeps its place and goes with it.
TEST_F(AgentQueryTest, AClaimAtTheHeadOfTheQueueIsNotHeldForABatch) {
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, SystemClock::Instance(), uplink_);
  agent.Start();  // queues the tablet's vehicle first
  ASSERT_NO_FATAL_FAILURE(AnswerPing(agent, SystemClock::Instance()));
  auto published = [&] {  // the queue's publishes, without queries (ping, nearby)
    auto all = uplink_.Publishes();
    return size_t(std::count_if(all.begin(), all.end(), [](const auto& p) {
      return !p.first.ends_with("/ping") && !p.first.ends_with("/nearby");
    }));
  };
  auto vehicle = [&](double lat) {
    auto q = agent.Submit(sync::kOpVehicle, {{"lat", lat}, {"lon", -0.10}, {"free_kg", 100}});
    EXPECT_TRUE(q.ok()) << q.error().ToString();
    return q.ok() ? *q : QueuedOp{};
  };
  auto claim = [&](int64_t id) {
    auto q = agent.Submit(sync::kOpClaim, {{"surplus_id", id}, {"version", 1}});
    EXPECT_TRUE(q.ok()) << q.error().ToString();
    return q.ok() ? *q : QueuedOp{};
  };
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 1; }));
  const std::string v1 = *uplink_.OpOf("vehicle");
  QueuedOp v2 = vehicle(51.53);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 2; }));
  // Two publishes await their outcomes: a claim goes all the same, alone.
  const size_t before = published();
  QueuedOp c1 = claim(41);
  ASSERT_TRUE(test::Eventually([&] { return published() == before + 1; })) << "the claim was held for a batch";
  EXPECT_EQ(uplink_.Publishes().back().first, sync::UpTopic("tablet-1", sync::kOpClaim));
  EXPECT_EQ(uplink_.Publishes().back().second, c1.envelope);
  // A vehicle report is held; a claim behind it waits with it.
  QueuedOp v3 = vehicle(51.54);
  QueuedOp c2 = claim(42);
  const int64_t now_ms = ToUnixMillis(SystemClock::Instance().Now());
  agent.OnDown(Answer(v1, "accepted", {{"lat", 51.52}, {"lon", -0.10}}, now_ms, 1).dump());
  agent.OnDown(Answer(v2.op, "accepted", {{"lat", 51.53}, {"lon", -0.10}}, now_ms, 2).dump());
  ASSERT_TRUE(test::Eventually([&] { return published() == before + 2; })) << "the held ops did not go";
  // One publish of both: had the vehicle report gone alone, the claim
  // behind it would have gone alone too, and this would be the claim.
  const auto last = uplink_.Publishes().back();
  ASSERT_EQ(last.first, sync::UpTopic("tablet-1", sync::kUpBatch));
  auto items = sync::DecodeUpBatch(last.second);
  ASSERT_TRUE(items.ok()) << items.error().ToString();
  ASSERT_EQ(items->size(), 2u);
  ASSERT_TRUE((*items)[0].env.ok() && (*items)[1].env.ok());
  EXPECT_EQ((*items)[0].env->op, v3.op);
  EXPECT_EQ((*items)[1].env->op, c2.op);
  agent.Stop();
}

// A hub from before batches refuses one as a malformed op, and the ops in
// it would wait unanswered forever: the agent batches only for a hub whose
// answer to its ping names batch_ops, and only up to that many ops. To one
// that names none, every op goes alone on its own type's topic, as before
// batches, without waiting for outcomes; to one that takes 2, by twos.
TEST_F(AgentQueryTest, OpsGoAloneToAHubThatTakesNoBatchesAndByItsCountToOneThatDoes) {
  ASSERT_NO_FATAL_FAILURE(OpenDevice("kiosk-1", "kiosk", 7, GeoPoint{51.5, -0.1}));
  sync::KeyPair keys = sync::GenerateKeyPair();
  Agent agent(cfg_, keys.secret_key, *store_, SystemClock::Instance(), uplink_);
  std::vector<QueuedOp> queued;
  for (int i = 0; i < 6; ++i) {  // queued before the hub listens: a backlog
    auto q = agent.Submit(sync::kOpPostSurplus, {{"category", "bakery"},
                                                 {"description", "roti " + std::to_string(i)},
                                                 {"best_before_in_min", 60}});
    ASSERT_TRUE(q.ok()) << q.error().ToString();
    queued.push_back(*q);
  }
  agent.Start();
  ASSERT_NO_FATAL_FAILURE(AnswerPing(agent, SystemClock::Instance(), /*batch_ops=*/0));
  // No outcome comes, yet all six go: nothing holds them for a batch.
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count(sync::kOpPostSurplus) == 6; }))
      << uplink_.Count(sync::kOpPostSurplus);
  auto all = uplink_.Publishes();
  std::vector<std::string> sent;
  for (const auto& [topic, payload] : all) {
    EXPECT_FALSE(topic.ends_with("/" + std::string(sync::kUpBatch))) << "a batch to a hub that takes none";
    if (topic.ends_with("/post_surplus")) sent.push_back(payload);
  }
  ASSERT_EQ(sent.size(), 6u);
  for (size_t i = 0; i < 6; ++i) EXPECT_EQ(sent[i], queued[i].envelope) << "out of order at " << i;
  agent.Stop();

  // The same backlog (unanswered: still queued) to a hub that takes 2 in a
  // publish: three publishes of two, in order.
  Recording second;
  Agent again(cfg_, keys.secret_key, *store_, SystemClock::Instance(), second);
  again.Start();
  std::optional<std::string> ping;
  ASSERT_TRUE(test::Eventually([&] { return (ping = second.OpOf("ping")).has_value(); }));
  again.OnDown(Answer(*ping, "accepted", {{"batch_ops", 2}}, ToUnixMillis(SystemClock::Instance().Now())).dump());
  ASSERT_TRUE(test::Eventually([&] { return second.Count(sync::kOpPostSurplus) >= 4; }));
  // Two publishes await their outcomes: the last two wait for one.
  const int64_t now_ms = ToUnixMillis(SystemClock::Instance().Now());
  again.OnDown(Answer(queued[0].op, "accepted", {{"id", 41}, {"version", 1}, {"provider_id", 7}}, now_ms, 1).dump());
  again.OnDown(Answer(queued[1].op, "accepted", {{"id", 42}, {"version", 1}, {"provider_id", 7}}, now_ms, 2).dump());
  ASSERT_TRUE(test::Eventually([&] { return second.Count(sync::kOpPostSurplus) == 6; }));
  size_t batches = 0, k = 0;
  for (const auto& [topic, payload] : second.Publishes()) {
    if (!topic.ends_with("/" + std::string(sync::kUpBatch))) continue;
    auto items = sync::DecodeUpBatch(payload);
    ASSERT_TRUE(items.ok());
    ASSERT_EQ(items->size(), 2u) << "more ops in a publish than the hub takes";
    for (const auto& item : *items) {
      ASSERT_TRUE(item.env.ok());
      EXPECT_EQ(item.env->op, queued[k++].op);
    }
    ++batches;
  }
  EXPECT_EQ(batches, 3u);
  again.Stop();
}

// A batch is cut to fit the broker's packet size: 64 posts of 1,000-character
// descriptions (~1.5 KB each) queued while the hub was not yet listening
// leave in two publishes, each within sync::kMaxBatchBytes, every op once,
// in sequence order.
TEST_F(AgentQueryTest, ABacklogOfLargeOpsIsCutIntoBatchesThatFitAPacket) {
  ASSERT_NO_FATAL_FAILURE(OpenDevice("kiosk-1", "kiosk", 7, GeoPoint{51.5, -0.1}));
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, SystemClock::Instance(), uplink_);
  agent.Start();
  std::vector<std::string> queued;
  for (int i = 0; i < int(sync::kMaxUpBatchOps); ++i) {
    auto q = agent.Submit(sync::kOpPostSurplus, {{"category", "bakery"},
                                                 {"description", std::string(1000, 'a' + char(i % 26))},
                                                 {"best_before_in_min", 60}});
    ASSERT_TRUE(q.ok()) << q.error().ToString();
    queued.push_back(q->op);
  }
  AnswerPing(agent, SystemClock::Instance());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("post_surplus") == queued.size(); }))
      << "the backlog did not go";
  std::vector<std::string> sent;
  size_t batches = 0;
  for (const auto& [topic, payload] : uplink_.Publishes()) {
    if (!topic.ends_with("/batch")) continue;
    ++batches;
    EXPECT_LE(payload.size(), sync::kMaxBatchBytes);
    auto items = sync::DecodeUpBatch(payload);
    ASSERT_TRUE(items.ok()) << items.error().ToString();
    for (auto& item : *items) sent.push_back(item.env->op);
  }
  EXPECT_EQ(batches, 2u);
  EXPECT_EQ(sent, queued) << "an op went twice, not at all, or out of order";
  agent.Stop();
}

// A restarted broker forgets the hub's shared subscription until the hub
// subscribes again, and drops what devices publish meanwhile: after every
// connect the agent pings until the hub answers, and only then sends its
// queue (in order) and its queries.
TEST_F(AgentQueryTest, AfterConnectingNothingButPingsGoOutUntilTheHubAnswers) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();  // a tablet: queues its vehicle at once
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 1; }));
  clock.Advance(Agent::kPingRetry);  // unanswered: pings again
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 2; }));
  // The sender pings before it sends anything else, so by now the vehicle
  // op would have gone out with the first ping.
  EXPECT_EQ(uplink_.Count("vehicle"), 0u) << "sent an op before the hub was known to listen";
  EXPECT_EQ(uplink_.Count("nearby"), 0u);
  clock.Advance(Agent::NextPingGap(Agent::kPingRetry));  // the next gap, longer
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 3; }));

  AnswerPing(agent, clock);
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 1 && uplink_.Count("nearby") == 1; }));

  // Reconnected: the same again, and the unanswered vehicle op goes again
  // only after the hub answered the new connection's ping.
  agent.OnConnected();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 4; }));
  clock.Advance(Agent::kPingRetry);  // a new connection starts from the shortest gap
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 5; }));
  EXPECT_EQ(uplink_.Count("vehicle"), 1u) << "re-sent an op before the hub was known to listen";
  AnswerPing(agent, clock);
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 2; }));
  agent.Stop();
}

// Under load (a busy broker, a slow link) the answer to a ping can come
// after the next ping went: it still means the hub listens on this
// connection. An answer to a ping of an earlier connection does not.
TEST_F(AgentQueryTest, ALateAnswerToAnEarlierPingOfThisConnectionStillCounts) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();  // a tablet: queues its vehicle at once
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 1; }));
  const std::string first = *uplink_.OpOf("ping");
  clock.Advance(Agent::kPingRetry);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 2; }));
  const std::string second = *uplink_.OpOf("ping");
  EXPECT_EQ(uplink_.Count("vehicle"), 0u);
  agent.OnDown(Answer(first, "accepted", json::object(), ToUnixMillis(clock.Now())).dump());
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 1; }))
      << "the answer to the first ping was not taken for the hub listening";

  // Reconnected: the old connection's second ping answered now, with the
  // hub's clock an hour ahead so that its arrival shows in the state.
  agent.OnConnected();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 3; }));
  const Timestamp hub_now = clock.Now() + std::chrono::hours(1);
  agent.OnDown(Answer(second, "accepted", json::object(), ToUnixMillis(hub_now)).dump());
  ASSERT_TRUE(test::Eventually([&] { return (*agent.State())["hub_now"] == FormatRfc3339(hub_now); }));
  clock.Advance(Agent::kPingRetry);  // still not heard on this connection: pings again
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 4; }));
  EXPECT_EQ(uplink_.Count("vehicle"), 1u) << "re-sent an op on an old connection's answer";
  AnswerPing(agent, clock);
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 2; }));
  agent.Stop();
}

// An op on a post is not sent while the device's earlier op on that post
// awaits its outcome, nor is anything after it: with two hub replicas, or a
// claim lost while the hub was out of the shared subscription and sent again
// 20 s later, the pickup could otherwise reach the hub first and come back
// a conflict.
TEST_F(AgentQueryTest, AnOpOnAPostWaitsForTheOutcomeOfTheDevicesEarlierOpOnIt) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();  // queues the tablet's vehicle first
  auto claim = agent.Submit(sync::kOpClaim, {{"surplus_id", 41}, {"version", 1}});
  ASSERT_TRUE(claim.ok()) << claim.error().ToString();
  ASSERT_TRUE(agent.Submit(sync::kOpPickUp, {{"surplus_id", 41}, {"handover_code", "042917"}, {"actual_kg", 4}}).ok());
  ASSERT_TRUE(agent.Submit(sync::kOpClaim, {{"surplus_id", 42}, {"version", 1}}).ok());
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") >= 1; }));

  // The claim is never answered (lost): after kResendAfter everything
  // unanswered goes again, from the vehicle op. The pass that sent the
  // claim ended before this one began, so had it sent the pickup, it would
  // show by now.
  clock.Advance(Agent::kResendAfter + std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 2; }, std::chrono::seconds(10)));
  EXPECT_EQ(uplink_.Count("pickup"), 0u) << "the pickup went out before its claim was answered";
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 2; }));

  // The claim's outcome lets the rest go, in order.
  agent.OnDown(Answer(claim->op, "accepted", {{"id", 41}, {"status", "claimed"}, {"version", 2}},
                      ToUnixMillis(clock.Now()), /*id=*/1)
                   .dump());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 3; }, std::chrono::seconds(10)));
  std::vector<std::string> ops = uplink_.Types();  // without the queries
  std::erase_if(ops, [](const std::string& t) { return t == "ping" || t == "nearby"; });
  EXPECT_EQ(ops, (std::vector<std::string>{"vehicle", "claim", "vehicle", "claim", "pickup", "claim"}));
  agent.Stop();
}

// An op's outcome is late because the hub is busy, not because the op was
// lost: the hub answers a device's ops in order and keeps answering. Sent
// again, every unanswered op would only lengthen the hub's queue (a
// thousand devices doing so turned a slow rush into a collapse). Only an op
// that a later one overtook is sent again after kResendAfter.
TEST_F(AgentQueryTest, OpsWaitingAtABusyHubAreNotSentAgainButOneALaterOpOvertookIs) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();  // queues the tablet's vehicle first
  auto claim = [&](int64_t post) {
    auto q = agent.Submit(sync::kOpClaim, {{"surplus_id", post}, {"version", 1}});
    EXPECT_TRUE(q.ok());
    return q.ok() ? q->op : std::string();
  };
  // An outcome, applied (the agent applies down messages on its own thread).
  auto answer = [&](const std::string& op, int64_t id) {
    const int queued = (*agent.State())["queued"].get<int>();
    agent.OnDown(Answer(op, "accepted", {{"id", 1}}, ToUnixMillis(clock.Now()), id).dump());
    ASSERT_TRUE(test::Eventually([&] { return (*agent.State())["queued"] == queued - 1; }));
  };
  const std::string c41 = claim(41), c42 = claim(42), c43 = claim(43);
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 3; }));
  answer(*uplink_.OpOf("vehicle"), 1);
  clock.Advance(std::chrono::seconds(15));
  answer(c41, 2);
  clock.Advance(std::chrono::seconds(15));  // 42 and 43 have waited 30 s; the last outcome came 15 s ago
  const std::string c44 = claim(44);        // wakes the sender: it looks at what waits, then sends 44
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 4; }));
  clock.Advance(std::chrono::seconds(2));
  answer(c42, 3);
  // Another pass over the waiting ops; a decline of 45 itself waits, as two
  // publishes (43's and 44's) await their outcomes (agent.h, "Batches"; a
  // claim would not: it races).
  auto d45 = agent.Submit(sync::kOpDecline, {{"surplus_id", 45}});
  ASSERT_TRUE(d45.ok()) << d45.error().ToString();
  EXPECT_EQ(uplink_.Count("vehicle"), 1u);

  // 44 is answered while 43, sent before it, is not: 43 was lost on the
  // way, and goes again with 45's decline, from the oldest, in order, in
  // one publish.
  answer(c44, 4);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 5 && uplink_.Count("decline") == 1; },
                               std::chrono::seconds(10)))
      << "the overtaken op was not sent again";
  std::vector<std::string> ops = uplink_.Types();
  std::erase_if(ops, [](const std::string& t) { return t == "ping" || t == "nearby"; });
  EXPECT_EQ(ops, (std::vector<std::string>{"vehicle", "claim", "claim", "claim", "claim", "claim", "decline"}));
  EXPECT_EQ(uplink_.OpOf("claim"), c43) << "sent again from the oldest unanswered op, in order";
  auto last = sync::DecodeUpBatch(uplink_.Publishes().back().second);
  ASSERT_TRUE(last.ok()) << "43 and 45 did not go together";
  ASSERT_EQ(last->size(), 2u);
  EXPECT_EQ((*last)[0].env->op, c43);
  EXPECT_EQ((*last)[1].env->op, d45->op);
  agent.Stop();
}

// A hub that answers nothing is asked again after kResendAfter, then after
// twice as long, and so on up to kResendMax; an outcome brings the wait
// back to kResendAfter.
TEST_F(AgentQueryTest, AHubThatAnswersNothingIsSentEverythingAgainLessAndLessOften) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();
  auto c41 = agent.Submit(sync::kOpClaim, {{"surplus_id", 41}, {"version", 1}});
  ASSERT_TRUE(c41.ok());
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 1; }));
  clock.Advance(Agent::kResendAfter + std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 2; }, std::chrono::seconds(10)));
  ASSERT_EQ(uplink_.Count("vehicle"), 2u);
  // 21 s later: the wait is 40 s now. A new op makes the sender look.
  clock.Advance(Agent::kResendAfter + std::chrono::seconds(1));
  ASSERT_TRUE(agent.Submit(sync::kOpClaim, {{"surplus_id", 42}, {"version", 1}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 3; }));
  EXPECT_EQ(uplink_.Count("vehicle"), 2u) << "sent everything again before twice the wait";
  clock.Advance(Agent::kResendAfter);  // 41 s since the resend
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 3; }, std::chrono::seconds(10)));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 5; }));
  // An outcome: the hub works again, and the wait is back to kResendAfter.
  agent.OnDown(Answer(c41->op, "accepted", {{"id", 1}}, ToUnixMillis(clock.Now()), 1).dump());
  ASSERT_TRUE(test::Eventually([&] { return (*agent.State())["queued"] == 2; }));
  clock.Advance(Agent::kResendAfter + std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 4; }, std::chrono::seconds(10)));
  EXPECT_EQ(uplink_.Count("claim"), 6u);
  agent.Stop();
}

// A PUBACK that does not come in time on a connection still up (a busy
// broker) is no reason to send everything again at once: sending goes on,
// and an op that really went missing is sent again by the rule above.
TEST_F(AgentQueryTest, ALatePubackOnAConnectionStillUpDoesNotSendEverythingAgain) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();
  uplink_.late_acks = true;
  ASSERT_TRUE(agent.Submit(sync::kOpClaim, {{"surplus_id", 41}, {"version", 1}}).ok());
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("claim") == 1; }));
  uplink_.late_acks = false;
  auto c42 = agent.Submit(sync::kOpClaim, {{"surplus_id", 42}, {"version", 1}});
  ASSERT_TRUE(c42.ok());
  // Starting over would have sent the vehicle and 41 again before 42.
  ASSERT_TRUE(test::Eventually([&] { return uplink_.OpOf("claim") == c42->op; }));
  EXPECT_EQ(uplink_.Count("claim"), 2u) << "sent again after a late PUBACK";
  EXPECT_EQ(uplink_.Count("vehicle"), 1u);
  agent.Stop();
}

// On its first connect, and whenever the broker did not keep its session,
// once the hub listens, the agent asks for what the hub sent it after the
// highest id it applied (Paho acknowledges a message before the agent has
// applied it, and a broker may drop a device's queue), page by page while
// the answer says "more", again if an answer never comes; a device that has
// applied nothing does not ask, nor does one whose session the broker kept.
TEST_F(AgentQueryTest, OnStartAndWhenTheBrokerLostItsSessionItAsksForWhatItMayHaveMissed) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();
  AnswerPing(agent, clock);
  // The catch-up is decided before the nearby query, in the same pass.
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("nearby") == 1; }));
  EXPECT_EQ(uplink_.Count("catchup"), 0u) << "asked with nothing applied";

  const int64_t now_ms = ToUnixMillis(clock.Now());
  auto event = [&](int64_t id, int64_t post) { return Posted(id, post, now_ms); };
  auto has_post = [&](int64_t post) { return HasPost(agent, post); };
  agent.OnDown(event(5, 41).dump());
  ASSERT_TRUE(test::Eventually([&] { return has_post(41); }));

  auto reconnect = [&] {
    const size_t pings = uplink_.Count("ping");
    agent.OnConnected();
    ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == pings + 1; }));
    AnswerPing(agent, clock);
  };
  reconnect();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 1; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 5}}));
  // A page: a message missed, a repeat (dropped by its id), and "more".
  agent.OnDown(Answer(*uplink_.OpOf("catchup"), "accepted",
                      {{"messages", {event(6, 42), event(5, 41)}}, {"next", 900}, {"more", true}}, now_ms)
                   .dump());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 2; }));
  EXPECT_TRUE(has_post(42)) << "the missed message was not applied";
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 900}})) << "the next page starts where the scan ended";
  // Its answer is lost (answers are QoS 0): asked again after kResendAfter.
  clock.Advance(Agent::kResendAfter + std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 3; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 900}}));
  agent.OnDown(Answer(*uplink_.OpOf("catchup"), "accepted",
                      {{"messages", json::array()}, {"next", 1500}, {"more", false}}, now_ms)
                   .dump());
  // Caught up: the next connect asks from where the last scan ended.
  agent.OnDown(event(7, 43).dump());
  ASSERT_TRUE(test::Eventually([&] { return has_post(43); }));
  EXPECT_EQ(uplink_.Count("catchup"), 3u) << "asked again after an answer without more";
  reconnect();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 4; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 1500}}));
  // An answer whose fields have odd types: what can be read is applied (the
  // next scan starts at 1600, "more" is not true), the rest dropped by name.
  agent.OnDown(Answer(*uplink_.OpOf("catchup"), "accepted",
                      {{"messages", {1, "x", {{"kind", 5}}}}, {"next", 1600}, {"more", "yes"}}, now_ms)
                   .dump());
  agent.OnDown(Answer(*uplink_.OpOf("catchup"), "accepted",
                      {{"messages", {event(8, 44)}}, {"next", 2000}, {"more", 1}}, now_ms)
                   .dump());
  agent.OnDown(event(9, 45).dump());
  ASSERT_TRUE(test::Eventually([&] { return has_post(45); }));
  EXPECT_FALSE(has_post(44)) << "a second answer to one query was applied";

  // The broker kept the session: its queue holds whatever came meanwhile.
  // The sender decides before it publishes the ops it woke for.
  uplink_.session_kept = true;
  reconnect();
  ASSERT_TRUE(agent.Submit(sync::kOpDecline, {{"surplus_id", 45}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("decline") == 1; }));
  EXPECT_EQ(uplink_.Count("catchup"), 4u) << "asked though the broker kept the session";
  // Lost this time: asks from the end of the last scan.
  uplink_.session_kept = false;
  reconnect();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 5; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 1600}}));
  agent.Stop();
}

// A broker that kept the session may still have dropped messages (those
// beyond its max_queued_messages while the device was away): each publish
// names the last message of the hub's previous one to the device (`prev`).
// A prev never applied here owes a catch-up from the last id applied before
// it, kept in the store until paid (a restart asks for it too); a prev
// applied, one with nothing applied before it (a new device), or one older
// than the ids the store still keeps owes nothing.
TEST_F(AgentQueryTest, APublishNamingAMessageNeverAppliedStartsACatchUpFromBeforeIt) {
  SimulatedClock clock(SystemClock::Instance().Now());
  const auto key = sync::GenerateKeyPair().secret_key;
  auto agent = std::make_unique<Agent>(cfg_, key, *store_, clock, uplink_);
  uplink_.session_kept = true;
  agent->Start();
  AnswerPing(*agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("nearby") == 1; }));
  const int64_t now_ms = ToUnixMillis(clock.Now());
  auto event = [&](int64_t id, int64_t post) { return Posted(id, post, now_ms).dump(); };
  auto has_post = [&](Agent& a, int64_t post) { return HasPost(a, post); };
  // The hub's answer to the catch-up just asked: `messages` (JSON texts) up
  // to `next`, and whether there is more.
  auto answer_catchup = [&](std::vector<std::string> messages, int64_t next, bool more) {
    json list = json::array();
    for (const auto& m : messages) list.push_back(json::parse(m));
    agent->OnDown(Answer(*uplink_.OpOf("catchup"), "accepted",
                         {{"messages", list}, {"next", next}, {"more", more}}, now_ms).dump());
  };
  auto restart = [&] {  // the process again, on the same store
    agent->Stop();
    const size_t pings = uplink_.Count("ping");
    agent = std::make_unique<Agent>(cfg_, key, *store_, clock, uplink_);
    agent->Start();
    ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == pings + 1; }));
    AnswerPing(*agent, clock);
  };

  agent->OnDown(sync::WithPrev(event(5, 41), 3));  // nothing applied before 3: a new device, nothing owed
  agent->OnDown(sync::WithPrev(event(6, 42), 5));
  agent->OnDown(sync::EncodeDownBatch({event(7, 43), event(8, 44)}, 6));
  ASSERT_TRUE(test::Eventually([&] { return has_post(*agent, 44); }));
  // The last of them, then a gap: the broker dropped 9 to 11.
  agent->OnDown(sync::WithPrev(event(12, 45), 11));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 1; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 8}}));

  // Restarted before the answer came: the debt was committed with the
  // publish that showed it, so the new process asks for it again (not from
  // the highest id applied, 12).
  ASSERT_NO_FATAL_FAILURE(restart());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 2; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 8}}));
  answer_catchup({event(9, 46), event(10, 47)}, 10, true);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 3; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 10}}));
  answer_catchup({event(11, 48), event(12, 45)}, 30, false);
  ASSERT_TRUE(test::Eventually([&] { return has_post(*agent, 48); })) << "the lost messages were not applied";
  EXPECT_TRUE(has_post(*agent, 46));
  EXPECT_TRUE(has_post(*agent, 47));

  // Paid: a reconnect that found the session kept asks nothing, and the
  // next process asks from where the last scan ended, not from 8.
  agent->OnDown(sync::WithPrev(event(31, 49), 12));
  ASSERT_TRUE(test::Eventually([&] { return has_post(*agent, 49); }));
  const size_t pings = uplink_.Count("ping");
  agent->OnConnected();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == pings + 1; }));
  AnswerPing(*agent, clock);
  ASSERT_TRUE(agent->Submit(sync::kOpDecline, {{"surplus_id", 49}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("decline") == 1; }));
  EXPECT_EQ(uplink_.Count("catchup"), 3u) << "asked again after the debt was paid";
  ASSERT_NO_FATAL_FAILURE(restart());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 4; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 31}}));
  answer_catchup({}, 31, false);

  // The store keeps the last 100,000 ids' worth of applied ids: a prev
  // older than that tells nothing; one within it, never applied, owes from
  // the oldest id kept.
  agent->OnDown(event(101000, 50));  // trims the ids below 1,000
  agent->OnDown(sync::WithPrev(event(101001, 51), 500));
  ASSERT_TRUE(test::Eventually([&] { return has_post(*agent, 51); }));
  EXPECT_EQ(uplink_.Count("catchup"), 4u) << "a prev below what the store keeps made it ask";
  agent->OnDown(sync::WithPrev(event(101002, 52), 1500));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 5; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 999}}));
  answer_catchup({}, 101002, false);

  // A gap seen while a catch-up runs starts it again, from the earlier of
  // the two points: the restart's catch-up asks after 101002; a gap after
  // 101003 shows up before its answer; the next ask is after 101002, not
  // after 101003 (which would skip what the first had still to read).
  ASSERT_NO_FATAL_FAILURE(restart());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 6; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 101002}}));
  agent->OnDown(sync::WithPrev(event(101003, 53), 101002));
  agent->OnDown(sync::WithPrev(event(101006, 54), 101005));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 7; }));
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 101002}}));
  agent->Stop();
}

// A loss with nothing after it: no later publish names it as `prev`. The
// answer to a ping names the last message the hub sent the device ("last");
// the agent pings on connecting and again every kCheckEvery, and a `last`
// never applied owes a catch-up, as a `prev` does.
TEST_F(AgentQueryTest, EveryFewMinutesAPingAsksWhatTheHubSentLastAndALossStartsACatchUp) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  uplink_.session_kept = true;
  agent.Start();
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("nearby") == 1; }));
  const int64_t now_ms = ToUnixMillis(clock.Now());
  auto event = [&](int64_t id, int64_t post) { return Posted(id, post, now_ms); };
  auto has_post = [&](int64_t post) { return HasPost(agent, post); };
  auto answer_ping = [&](int64_t last) {
    agent.OnDown(Answer(*uplink_.OpOf("ping"), "accepted", {{"now", "x"}, {"last", last}}, now_ms).dump());
  };
  agent.OnDown(event(5, 41).dump());
  ASSERT_TRUE(test::Eventually([&] { return has_post(41); }));

  // Not yet: an op wakes the sender, which sends it and no ping.
  clock.Advance(Agent::kCheckEvery - std::chrono::seconds(1));
  ASSERT_TRUE(agent.Submit(sync::kOpDecline, {{"surplus_id", 41}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("decline") == 1; }));
  EXPECT_EQ(uplink_.Count("ping"), 1u) << "pinged again before kCheckEvery";
  clock.Advance(std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 2; })) << "no ping after kCheckEvery";

  // The last message sent was applied here: nothing owed. (Applying the
  // event after the answer shows the answer was handled; the op after it
  // shows the sender has passed since.)
  answer_ping(5);
  agent.OnDown(event(6, 42).dump());
  ASSERT_TRUE(test::Eventually([&] { return has_post(42); }));
  ASSERT_TRUE(agent.Submit(sync::kOpDecline, {{"surplus_id", 42}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("decline") == 2; }));
  EXPECT_EQ(uplink_.Count("catchup"), 0u) << "caught up though the last message sent was applied";

  // Five minutes on, the hub names 9, never applied: 7 to 9 were lost (the
  // broker dropped them and nothing came after). Asks from 6.
  clock.Advance(Agent::kCheckEvery);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == 3; }));
  answer_ping(9);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("catchup") == 1; })) << "the loss went unseen";
  EXPECT_EQ(uplink_.BodyOf("catchup"), (json{{"after", 6}}));
  agent.OnDown(Answer(*uplink_.OpOf("catchup"), "accepted",
                      {{"messages", {event(7, 43), event(9, 45)}}, {"next", 9}, {"more", false}}, now_ms)
                   .dump());
  ASSERT_TRUE(test::Eventually([&] { return has_post(45); })) << "the lost messages were not applied";
  EXPECT_TRUE(has_post(43));
  agent.Stop();
}

TEST(AgentInFlight, CountsTheOpsOnEachPostUntilAnswered) {
  InFlight f;
  const Timestamp t0 = SystemClock::Instance().Now();
  f.Sent(1, t0, 0, 1);
  f.Sent(2, t0 + std::chrono::seconds(1), 41, 2);  // ops 2 and 3 in one publish
  f.Sent(3, t0 + std::chrono::seconds(2), 41, 2);
  f.Sent(2, t0 + std::chrono::seconds(9), 41, 3);  // sent again: keeps its first time and publish, counted once
  EXPECT_TRUE(f.OnPost(41));
  EXPECT_FALSE(f.OnPost(0)) << "ops on no post are not a post";
  EXPECT_EQ(f.Publishes(), 2u);
  f.Answered(2);
  EXPECT_TRUE(f.OnPost(41));
  EXPECT_EQ(f.Publishes(), 2u) << "publish 2 still awaits op 3's outcome";
  f.Answered(3);
  EXPECT_FALSE(f.OnPost(41));
  EXPECT_EQ(f.Publishes(), 1u);
  f.Answered(3);  // a repeat changes nothing
  EXPECT_EQ(f.Publishes(), 1u);
  ASSERT_TRUE(f.Oldest().has_value());
  EXPECT_EQ(f.Oldest()->first, 1u);
  f.Clear();
  EXPECT_EQ(f.size(), 0u);
  EXPECT_EQ(f.Publishes(), 0u);
  EXPECT_FALSE(f.Oldest().has_value());
}

// While no hub answers (a hub outage), each device pings less and less
// often: 2, 4, 8, 16, then every 30 s.
TEST(AgentPing, UnansweredPingsBackOffTo30Seconds) {
  std::vector<int64_t> gaps;
  for (Duration gap = Agent::kPingRetry; gaps.size() < 6; gap = Agent::NextPingGap(gap))
    gaps.push_back(std::chrono::duration_cast<std::chrono::seconds>(gap).count());
  EXPECT_EQ(gaps, (std::vector<int64_t>{2, 4, 8, 16, 30, 30}));
}

// The hub answers queries (nearby, ping) straight, without an outbox id
// (docs/protocol.md, "Answers to queries"), or refuses them through the
// outbox: the agent takes an answer for a query it asked, and only once.
TEST_F(AgentQueryTest, AnswersWithoutAnOutboxIdAreTakenForTheQueriesAsked) {
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, SystemClock::Instance(), uplink_);
  agent.Start();
  const int64_t hour_ahead = ToUnixMillis(SystemClock::Instance().Now()) + 3600 * 1000;
  // A refused query is answered through the outbox, with an id: twice
  // delivered (QoS 1), applied once. Refused or not, the answer to its
  // ping shows the agent that the hub is listening.
  std::optional<std::string> ping, nearby;
  ASSERT_TRUE(test::Eventually([&] { return (ping = uplink_.OpOf("ping")).has_value(); }));
  json refused = Answer(*ping, "rejected", json::array(), hour_ahead, 5);
  agent.OnDown(refused.dump());
  agent.OnDown(refused.dump());
  ASSERT_TRUE(test::Eventually([&] { return (nearby = uplink_.OpOf("nearby")).has_value(); }))
      << "the tablet did not ask for nearby posts once the hub answered";
  json answer = Answer(*nearby, "accepted", json::array({{{"id", 77}, {"status", "offered"}, {"distance_km", 0.4}}}),
                       hour_ahead);
  agent.OnDown(answer.dump());
  auto nearby_ids = [&] {
    std::set<int64_t> ids;
    json st = *agent.State();
    for (const auto& p : st["nearby"]) ids.insert(p["id"].get<int64_t>());
    return ids;
  };
  ASSERT_TRUE(test::Eventually([&] { return nearby_ids() == std::set<int64_t>{77}; }, std::chrono::seconds(10)))
      << agent.State()->dump();
  // The hub's clock came with the answers: an hour ahead of ours.
  auto hub_now = ParseRfc3339((*agent.State())["hub_now"].get<std::string>());
  ASSERT_TRUE(hub_now.has_value());
  EXPECT_GT(*hub_now - SystemClock::Instance().Now(), std::chrono::minutes(50));

  // The same answer again is not a query in flight any more, and without an
  // id it is nothing the agent can apply: dropped, the list unchanged.
  answer["data"] = json::array({{{"id", 78}}});
  agent.OnDown(answer.dump());
  json last{{"v", 1}, {"kind", "event"}, {"id", 1}, {"ts", hour_ahead}, {"type", "surplus.posted"},
            {"data", {{"id", 79}, {"status", "available"}, {"version", 1}}}};
  agent.OnDown(last.dump());  // applied after the repeat: once it is, the repeat was handled
  ASSERT_TRUE(test::Eventually([&] {
    json st = *agent.State();
    for (const auto& p : st["posts"]) if (p["id"] == 79) return true;
    return false;
  }, std::chrono::seconds(10)));
  EXPECT_EQ(nearby_ids(), std::set<int64_t>{77});
  EXPECT_TRUE((*agent.State())["outcomes"].empty()) << "an answer to a query was taken for an op's outcome";
  agent.Stop();
}

// A driving van queues its position every second; it asks for the posts
// near it again after moving, but not more often than kNearbyAfterMove, and
// every kNearbyEvery regardless. The sender decides on a nearby query before
// it publishes the ops it woke for, so once a vehicle op is out, the
// decision for it has been taken.
TEST_F(AgentQueryTest, AMovingVanAsksForNearbyPostsAtMostEveryFewSeconds) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("nearby") == 1 && uplink_.Count("vehicle") == 1; }))
      << "the tablet did not ask on connecting, or did not send its vehicle";
  // The hub answers each op, so none waits behind unanswered publishes.
  int64_t outbox_id = 0;
  auto answer_last = [&](const std::string& type) {
    const int queued = (*agent.State())["queued"].get<int>();
    agent.OnDown(Answer(*uplink_.OpOf(type), "accepted", {{"id", 1}}, ToUnixMillis(clock.Now()), ++outbox_id).dump());
    ASSERT_TRUE(test::Eventually([&] { return (*agent.State())["queued"] == queued - 1; }));
  };
  answer_last("vehicle");
  auto move_to = [&](double lat, size_t vehicles_sent) {
    ASSERT_TRUE(agent.Submit(sync::kOpVehicle, {{"lat", lat}, {"lon", -0.10}, {"free_kg", 100}}).ok());
    ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == vehicles_sent; }));
    answer_last("vehicle");
  };
  move_to(51.53, 2);
  EXPECT_EQ(uplink_.Count("nearby"), 1u) << "asked again at once after moving";
  clock.Advance(Agent::kNearbyAfterMove - std::chrono::seconds(1));
  move_to(51.54, 3);
  EXPECT_EQ(uplink_.Count("nearby"), 1u) << "asked again before kNearbyAfterMove";
  clock.Advance(std::chrono::seconds(1));  // moved, and the gap has passed: asks (on the sender's own timer)
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("nearby") == 2; }));
  // Standing still, kNearbyAfterMove later: an op that is not a move goes
  // out, and no nearby query with it.
  clock.Advance(Agent::kNearbyAfterMove);
  ASSERT_TRUE(agent.Submit(sync::kOpDecline, {{"surplus_id", 1}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("decline") == 1; }));
  EXPECT_EQ(uplink_.Count("nearby"), 2u) << "asked again without having moved";
  clock.Advance(Agent::kNearbyEvery - Agent::kNearbyAfterMove);  // standing still: every kNearbyEvery
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("nearby") == 3; }));
  agent.Stop();
}

// Presence: a tablet reports its vehicle at least every
// kTabletReportEvery while the hub listens (an empty report when nothing
// changed), so that the hub can tell a silent tablet from a quiet one
// (common/vehicle.h); nothing while the hub does not listen; and after a
// silence, as soon as the hub answers the new connection's ping.
TEST_F(AgentQueryTest, ATabletReportsItsPresenceEveryFewMinutesWhileTheHubListens) {
  SimulatedClock clock(SystemClock::Instance().Now());
  Agent agent(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  agent.Start();
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 1; })) << "the profile was not sent";
  // Every op is answered, so that none waits behind unanswered publishes.
  int64_t outbox_id = 0;
  auto answer_last = [&](const std::string& type) {
    const int queued = (*agent.State())["queued"].get<int>();
    agent.OnDown(Answer(*uplink_.OpOf(type), "accepted", {{"id", 1}}, ToUnixMillis(clock.Now()), ++outbox_id).dump());
    ASSERT_TRUE(test::Eventually([&] { return (*agent.State())["queued"] == queued - 1; }));
  };
  // An op wakes the sender at this moment; it shows whether the sender
  // reported as well.
  auto send_decline = [&](size_t declines) {
    ASSERT_TRUE(agent.Submit(sync::kOpDecline, {{"surplus_id", 1}}).ok());
    ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("decline") == declines; }));
    answer_last("decline");
  };
  answer_last("vehicle");

  clock.Advance(pp::kTabletReportEvery - std::chrono::seconds(1));
  send_decline(1);
  EXPECT_EQ(uplink_.Count("vehicle"), 1u) << "reported again before kTabletReportEvery";
  clock.Advance(std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 2; })) << "no report after kTabletReportEvery";
  EXPECT_EQ(uplink_.BodyOf("vehicle"), json::object()) << "a presence report must change nothing the driver set";
  answer_last("vehicle");

  // A move is a report: the next presence is due kTabletReportEvery after it.
  clock.Advance(std::chrono::minutes(2));
  ASSERT_TRUE(agent.Submit(sync::kOpVehicle, {{"lat", 51.53}, {"lon", -0.10}}).ok());
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 3; }));
  answer_last("vehicle");
  clock.Advance(pp::kTabletReportEvery - std::chrono::seconds(1));
  send_decline(2);
  EXPECT_EQ(uplink_.Count("vehicle"), 3u) << "reported though the move was a report";
  clock.Advance(std::chrono::seconds(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 4; }));
  answer_last("vehicle");

  // Reconnected, and the hub does not answer: nothing is reported, however
  // long the silence (the sender's pings show it has passed since).
  // Counted before: the sender may ping before this thread reads the count.
  const size_t pings = uplink_.Count("ping");
  agent.OnConnected();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == pings + 1; }));
  clock.Advance(pp::kTabletSilentAfter + std::chrono::minutes(1));
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") == pings + 2; }));
  EXPECT_EQ(uplink_.Count("vehicle"), 4u) << "reported while the hub did not listen";
  AnswerPing(agent, clock);
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 5; }))
      << "not reported at once when the hub listened again";
  answer_last("vehicle");
  agent.Stop();

  // Started again on the same store, its profile unchanged (not queued
  // again): it reports as soon as the hub listens, not 5 minutes later.
  Agent again(cfg_, sync::GenerateKeyPair().secret_key, *store_, clock, uplink_);
  const size_t pings_before = uplink_.Count("ping");
  again.Start();
  ASSERT_TRUE(test::Eventually([&] { return uplink_.Count("ping") > pings_before; }));
  AnswerPing(again, clock);
  EXPECT_TRUE(test::Eventually([&] { return uplink_.Count("vehicle") == 6; })) << "no report on starting";
  EXPECT_EQ(uplink_.BodyOf("vehicle"), json::object());
  again.Stop();
}

// A device's store belongs to its agent's process: a second open (another
// pp-agent started on the same file) is refused by name while the first has
// it, the first goes on, and nothing it committed is lost. The WAL index is
// in the agent's memory, not a shared-memory file beside the store.
TEST(AgentStoreFile, IsRefusedToASecondOpenWhileInUseAndKeepsWhatWasCommitted) {
  test::TempDir dir;
  const std::string path = dir.file("kiosk-1.db");
  auto op = [](uint64_t seq) {
    return QueuedOp{seq, "op-" + std::to_string(seq), "post_surplus", "{}", "{}", FromUnixMillis(1000), ""};
  };
  auto count = [](AgentStore& store) {
    size_t n = 0;
    EXPECT_TRUE(store.Read([&](AgentTxn& tx) -> Status {
      PP_ASSIGN_OR_RETURN(n, tx.QueueSize());
      return OkStatus();
    }).ok());
    return n;
  };
  auto first = AgentStore::Open(path);
  ASSERT_TRUE(first.ok()) << first.error().ToString();
  ASSERT_TRUE((*first)->Write([&](AgentTxn& tx) { return tx.InsertOp(op(1)); }).ok());
  EXPECT_FALSE(std::filesystem::exists(path + "-shm"));

  auto second = AgentStore::Open(path);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, Code::kUnavailable);
  EXPECT_NE(second.error().message.find(path + " is in use by another process"), std::string::npos)
      << second.error().message;

  ASSERT_TRUE((*first)->Write([&](AgentTxn& tx) { return tx.InsertOp(op(2)); }).ok());
  EXPECT_EQ(count(**first), 2u);
  first->reset();  // closed: the file is free
  auto again = AgentStore::Open(path);
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  EXPECT_EQ(count(**again), 2u);
}

// A device keeps the newest 500 outcomes for the person to read, and trims
// the older ones once every 64 recorded rather than in every transaction.
TEST(AgentStoreFile, KeepsTheNewestOutcomesAndTrimsTheOlderOnesNowAndThen) {
  test::TempDir dir;
  const std::string path = dir.file("kiosk-1.db");
  {  // a file from before: its outcomes had an index on "at"
    auto old = SqliteDb::Open(path);
    ASSERT_TRUE(old.ok());
    ASSERT_TRUE((*old)->Exec("CREATE TABLE outcomes (op TEXT PRIMARY KEY, seq INTEGER NOT NULL, type TEXT NOT NULL, "
                             "status TEXT NOT NULL, code TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL, "
                             "at INTEGER NOT NULL); CREATE INDEX outcomes_by_time ON outcomes (at);")
                    .ok());
  }
  auto store = AgentStore::Open(path);
  ASSERT_TRUE(store.ok()) << store.error().ToString();
  auto all = [&] {
    std::vector<OutcomeRecord> out;
    EXPECT_TRUE((*store)->Read([&](AgentTxn& tx) -> Status {
      PP_ASSIGN_OR_RETURN(out, tx.RecentOutcomes(100000));
      return OkStatus();
    }).ok());
    return out;
  };
  size_t most = 0;
  for (uint64_t i = 1; i <= 1000; ++i) {
    OutcomeRecord o{"op-" + std::to_string(i), i, "post_surplus", "accepted", "ok", "", {{"id", i}},
                    FromUnixMillis(int64_t(1000 + i))};
    ASSERT_TRUE((*store)->Write([&](AgentTxn& tx) { return tx.PutOutcome(o); }).ok());
    const auto kept = all();
    ASSERT_GE(kept.size(), std::min<size_t>(i, 500)) << "after " << i;
    ASSERT_LE(kept.size(), 563u) << "after " << i;
    ASSERT_EQ(kept.front().op, "op-" + std::to_string(i)) << "newest first";
    most = std::max(most, kept.size());
  }
  EXPECT_EQ(most, 563u);  // trimmed now and then, not each time
  // The newest 500 are all there, newest first.
  const auto kept = all();
  for (size_t k = 0; k < 500; ++k) ASSERT_EQ(kept[k].seq, 1000 - k);
  // An outcome recorded again (a repeat of the hub's answer) is kept as the newest.
  OutcomeRecord again{"op-600", 600, "post_surplus", "accepted", "ok", "", {{"id", 600}}, FromUnixMillis(5000)};
  ASSERT_TRUE((*store)->Write([&](AgentTxn& tx) { return tx.PutOutcome(again); }).ok());
  EXPECT_EQ(all().front().op, "op-600");
  store->reset();
  auto db = SqliteDb::Open(path);
  ASSERT_TRUE(db.ok());
  auto& q = (*db)->Prepare("SELECT count(*) FROM sqlite_master WHERE name='outcomes_by_time'");
  ASSERT_TRUE(q.Reset().Step("index").ok());
  EXPECT_EQ(q.Int(0), 0) << "the old index is dropped";
}

}  // namespace
}  // namespace pp::agent
