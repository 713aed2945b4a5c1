// The agent's down path in process: what the hub sends, applied to the
// agent's store, without a broker (an Uplink that is never connected, so
// nothing leaves). The end-to-end tests in agent_test.cc cover the same path
// through mosquitto; this one pins down batches exactly.
#include <gtest/gtest.h>

#include <mutex>
#include <set>

#include <nlohmann/json.hpp>

#include "common/time_format.h"
#include "edge-agent/agent.h"
#include "tests/support/test_support.h"

namespace pp::agent {
namespace {

using nlohmann::json;

class Offline final : public Uplink {
 public:
  bool Connected() const override { return false; }
  Result<AckWait> Publish(const std::string&, const std::string&, const std::string&) override {
    return Error::Unavailable("offline");
  }
};

class AgentDownTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = AgentStore::Open(dir_.file("kiosk.db"));
    ASSERT_TRUE(store.ok()) << store.error().ToString();
    store_ = std::move(*store);
    DeviceConfig cfg;
    cfg.device_id = "kiosk-1";
    cfg.role = "kiosk";
    cfg.org_id = 7;
    cfg.position = GeoPoint{51.5, -0.1};
    agent_ = std::make_unique<Agent>(cfg, sync::GenerateKeyPair().secret_key, *store_,
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

  test::TempDir dir_;
  Offline uplink_;
  std::unique_ptr<AgentStore> store_;
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

}  // namespace
}  // namespace pp::agent
