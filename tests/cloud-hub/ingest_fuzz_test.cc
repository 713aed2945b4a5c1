// The MQTT door against mangled input: valid signed messages of every kind,
// mutated at random (bytes flipped, cut, repeated; JSON values swapped for
// values of other types; envelopes nested thousands deep), handed to the
// hub's ingest in-process (the broker adds nothing to what the ingest sees,
// and in-process the sanitizer build watches every byte of it).
//
// What must hold, whatever arrives:
//   - the ingest keeps running and counts every op it was handed as
//     accepted, refused or dropped;
//   - nothing but the valid messages' own ops is ever applied, none twice:
//     a mutation either breaks the signature or leaves the op as it was
//     signed (JSON spacing, say), and then its op id makes it a repeat;
//   - every refusal the device is told of names a machine-readable code;
//   - a valid op sent afterwards is accepted.
// The mutations come from a fixed seed, printed on failure: a failing case
// is replayed exactly.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

#include "cloud-hub/core/group_committer.h"
#include "cloud-hub/core/hub_service.h"
#include "cloud-hub/mqtt/device_ingest.h"
#include "cloud-hub/store/store.h"
#include "common/clock.h"
#include "common/time_format.h"
#include "sync/protocol.h"
#include "tests/support/mangle.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class IngestFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = OpenStore("sqlite:" + dir_.file("hub.db"));
    ASSERT_TRUE(store.ok()) << store.error().ToString();
    store_ = std::move(*store);
    auto committer = GroupCommitter::Start(*store_, {});
    ASSERT_TRUE(committer.ok()) << committer.error().ToString();
    committer_ = std::move(*committer);
    hub_ = std::make_unique<HubService>(*store_, *committer_, SystemClock::Instance());
    provider_ = Org(OrgKind::kProvider, "kitchen");
    ngo_ = Org(OrgKind::kNgo, "ngo");
    Register("kiosk-1", "kiosk", provider_, kiosk_key_);
    Register("tablet-1", "tablet", ngo_, tablet_key_);
    ingest_ = std::make_unique<DeviceIngest>(*hub_);
  }

  int64_t Org(OrgKind kind, const std::string& name) {
    auto r = hub_->CreateOrganization({kind, name, {51.5, -0.1}}, "");
    EXPECT_TRUE(r.ok()) << r.error().ToString();
    return r.ok() ? json::parse(r->json)["id"].get<int64_t>() : 0;
  }

  void Register(const std::string& id, const std::string& role, int64_t org, const sync::KeyPair& keys) {
    auto r = hub_->RegisterDevice({id, role, org, sync::ToBase64(keys.public_key), false, 0, {}});
    ASSERT_TRUE(r.ok()) << r.error().ToString();
  }

  std::string Signed(const std::string& device, const sync::SecretKey& key, const std::string& type,
                     json body) {
    const uint64_t seq = ++seq_[device];
    return sync::Encode(sync::Sealed(device, seq, device + "-op-" + std::to_string(seq), type, std::move(body),
                                     ToUnixMillis(SystemClock::Instance().Now()), key));
  }

  json Post(const std::string& what) {
    return {{"category", "prepared_meals"}, {"description", what}, {"quantity_kg", 2.5},
            {"best_before", FormatRfc3339(SystemClock::Instance().Now() + std::chrono::hours(3))}};
  }

  // Hands every message to the ingest, then waits until each has been
  // counted and everything it wrote has committed.
  void Feed(const std::vector<std::pair<std::string, std::string>>& messages) {
    for (const auto& [topic, payload] : messages) ingest_->OnMessage(topic, payload, "");
    // The ingest submits each op's effect or refusal before OnMessage
    // returns; one op more through the same committer commits after them.
    // An op the hub turned down (a conflict, say) is answered from its
    // callback, by one more write: a second op commits after those.
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(committer_->Run([](StoreSession&) { return OkStatus(); }).ok());
  }

  // Every device.outcome in the outbox, in order.
  std::vector<json> Outcomes() {
    std::vector<json> out;
    for (int64_t after = 0;;) {
      auto page = hub_->ListOutbox(after, 1000);
      EXPECT_TRUE(page.ok());
      if (!page.ok() || page->empty()) return out;
      for (const auto& e : *page) {
        if (e.type == "device.outcome") out.push_back(json::parse(e.payload_json));
        after = e.id;
      }
    }
  }

  std::vector<std::string> PostDescriptions() {
    auto posts = hub_->ListSurplus({}, 0, 1000);
    EXPECT_TRUE(posts.ok());
    std::vector<std::string> out;
    if (posts.ok())
      for (const auto& p : *posts) out.push_back(p.draft.description);
    return out;
  }

  test::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<GroupCommitter> committer_;
  std::unique_ptr<HubService> hub_;
  std::unique_ptr<DeviceIngest> ingest_;
  int64_t provider_ = 0, ngo_ = 0;
  sync::KeyPair kiosk_key_ = sync::GenerateKeyPair(), tablet_key_ = sync::GenerateKeyPair();
  std::map<std::string, uint64_t> seq_;
};

TEST_F(IngestFuzz, MangledMessagesApplyNothingButTheOpsAsSignedAndEachIsAnswered) {
  // The valid messages: every kind of op from both devices, lone and batched.
  std::vector<std::pair<std::string, std::string>> valid;
  std::set<std::string> descriptions;
  auto kiosk = [&](const std::string& type, json body) {
    valid.emplace_back(sync::UpTopic("kiosk-1", type), Signed("kiosk-1", kiosk_key_.secret_key, type, body));
  };
  auto tablet = [&](const std::string& type, json body) {
    valid.emplace_back(sync::UpTopic("tablet-1", type), Signed("tablet-1", tablet_key_.secret_key, type, body));
  };
  for (int i = 0; i < 8; ++i) {
    const std::string what = "soup " + std::to_string(i);
    descriptions.insert(what);
    kiosk(sync::kOpPostSurplus, Post(what));
  }
  tablet(sync::kOpClaim, {{"surplus_id", 1}, {"version", 1}});
  tablet(sync::kOpAccept, {{"surplus_id", 2}});
  tablet(sync::kOpDecline, {{"surplus_id", 3}});
  tablet(sync::kOpPickUp, {{"surplus_id", 1}, {"handover_code", "123456"}, {"actual_kg", 2}});
  tablet(sync::kOpDeliver, {{"surplus_id", 1}});
  tablet(sync::kOpVehicle, {{"lat", 51.5}, {"lon", -0.1}, {"free_kg", 40}, {"online", true}});
  tablet(sync::kOpNearby, {{"lat", 51.5}, {"lon", -0.1}, {"km", 5}});
  tablet(sync::kOpPing, json::object());
  tablet(sync::kOpCatchUp, {{"after", 0}});
  {
    std::vector<std::string> envelopes;
    for (int i = 0; i < 3; ++i) {
      const std::string what = "batched rice " + std::to_string(i);
      descriptions.insert(what);
      envelopes.push_back(Signed("kiosk-1", kiosk_key_.secret_key, sync::kOpPostSurplus, Post(what)));
    }
    valid.emplace_back(sync::UpTopic("kiosk-1", sync::kUpBatch),
                       sync::EncodeUpBatch({envelopes[0], envelopes[1], envelopes[2]}, {}));
  }

  // Their mangled copies, none of the originals themselves.
  const uint32_t seed = 20261208;
  SCOPED_TRACE("mutation seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::vector<std::pair<std::string, std::string>> mangled;
  for (int i = 0; i < 3000; ++i) {
    auto [topic, payload] = valid[std::uniform_int_distribution<size_t>(0, valid.size() - 1)(rng)];
    payload = test::Mangle(payload, rng);
    switch (std::uniform_int_distribution<int>(0, 9)(rng)) {  // now and then, on another topic
      case 0: topic = sync::UpTopic("kiosk-1", sync::kUpBatch); break;
      case 1: topic = sync::UpTopic("tablet-1", sync::kOpPostSurplus); break;
      case 2: topic = test::MutateBytes(topic, rng); break;
      default: break;
    }
    mangled.emplace_back(topic, payload);
  }
  // Nested as deep as a message of the broker's largest size allows, in the
  // envelope, in its body and in a batch.
  const size_t depth = sync::kMaxMessageBytes / 2 - 64;
  mangled.emplace_back(sync::UpTopic("kiosk-1", sync::kOpPostSurplus), std::string(depth, '[') + std::string(depth, ']'));
  {
    std::string body = std::string(depth - 200, '[') + std::string(depth - 200, ']');
    std::string envelope = valid[0].second;
    const auto at = envelope.find("\"body\":") + 7;
    const auto end = envelope.find(",\"device\"");  // Encode writes keys sorted: body before device
    ASSERT_NE(end, std::string::npos);
    mangled.emplace_back(valid[0].first, envelope.substr(0, at) + body + envelope.substr(end));
    mangled.emplace_back(sync::UpTopic("kiosk-1", sync::kUpBatch),
                         "{\"v\":1,\"kind\":\"batch\",\"ops\":[{\"env\":" + std::string(depth - 200, '[') +
                             std::string(depth - 200, ']') + "}]}");
  }
  ASSERT_NO_FATAL_FAILURE(Feed(mangled));

  auto stats = ingest_->stats();
  EXPECT_EQ(stats.received, stats.accepted + stats.refused + stats.dropped);
  EXPECT_GT(stats.refused, stats.received / 2) << "most mangled messages must be refused";
  // Applied: only ops as their devices signed them, each once.
  std::multiset<std::string> applied;
  for (const auto& d : PostDescriptions()) applied.insert(d);
  for (const auto& d : std::set<std::string>(applied.begin(), applied.end())) {
    EXPECT_TRUE(descriptions.count(d)) << "a post nobody signed was applied: " << d;
    EXPECT_EQ(applied.count(d), 1u) << "applied twice: " << d;
  }
  // Every refusal tells the device why, in a code a program can act on.
  int refusals = 0, nested = 0;
  for (const auto& o : Outcomes()) {
    const json& m = o["message"];
    if (m.value("status", "") == "accepted") continue;
    ++refusals;
    nested += m.value("message", "").find("nests deeper than") != std::string::npos;
    EXPECT_FALSE(m.value("code", "").empty()) << o.dump();
    EXPECT_FALSE(m.value("message", "").empty()) << o.dump();
  }
  EXPECT_GT(refusals, 0);
  EXPECT_EQ(nested, 3) << "each message nested too deep is refused, saying so";

  // The valid messages themselves still go through afterwards (those of
  // their ops that a mangled copy did not already apply), and a new op does.
  const auto before = ingest_->stats();
  ASSERT_NO_FATAL_FAILURE(Feed(valid));
  EXPECT_GT(ingest_->stats().accepted, before.accepted);
  ASSERT_NO_FATAL_FAILURE(Feed({{sync::UpTopic("kiosk-1", sync::kOpPostSurplus),
                                 Signed("kiosk-1", kiosk_key_.secret_key, sync::kOpPostSurplus, Post("after"))}}));
  descriptions.insert("after");
  std::multiset<std::string> now;
  for (const auto& d : PostDescriptions()) now.insert(d);
  EXPECT_EQ(now, std::multiset<std::string>(descriptions.begin(), descriptions.end()))
      << "each valid post applied exactly once";
}

}  // namespace
}  // namespace pp
