// The device protocol end to end: a real mosquitto (production config:
// passwords, per-device ACL), pp-hub as a process, devices as Paho clients
// that sign their ops.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <tuple>
#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class SyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(broker_.port(), 0);
    ASSERT_NO_FATAL_FAILURE(StartHub());
    provider_ = Org("provider", 51.500, -0.100);
    ngo_ = Org("ngo", 51.501, -0.101);
    kiosk_ = Device("kiosk-1", "kiosk", provider_);
    tablet_ = Device("tablet-1", "tablet", ngo_);
  }

  void StartHub() {
    hub_ = std::make_unique<test::Hub>(
        db_, std::vector<std::string>{"--mqtt", broker_.uri(), "--mqtt-password-file",
                                      broker_.hub_password_file()});
    ASSERT_GT(hub_->port(), 0);
    http_ = std::make_unique<httplib::Client>("127.0.0.1", hub_->port());
    http_->set_read_timeout(10, 0);
  }

  int64_t Org(const std::string& kind, double lat, double lon) {
    auto r = http_->Post("/api/v1/organizations",
                         json{{"kind", kind}, {"name", kind}, {"lat", lat}, {"lon", lon}}.dump(),
                         "application/json");
    EXPECT_TRUE(r && r->status == 201);
    return json::parse(r->body)["id"].get<int64_t>();
  }

  std::unique_ptr<test::TestDevice> Device(const std::string& id, const std::string& role, int64_t org) {
    auto d = std::make_unique<test::TestDevice>(broker_, id);
    auto r = http_->Post("/api/v1/devices",
                         json{{"id", id}, {"role", role}, {"org_id", org}, {"public_key", d->public_key()}}.dump(),
                         "application/json");
    EXPECT_TRUE(r && r->status == 201) << (r ? r->body : "no answer");
    broker_.AddUser(id, d->password());
    auto st = d->Connect();
    EXPECT_TRUE(st.ok()) << st.error().ToString();
    return d;
  }

  json Post(int i) {
    return {{"category", "prepared_meals"}, {"description", "nasi " + std::to_string(i)},
            {"quantity_kg", 2}, {"best_before", best_before_}};
  }

  // An envelope from `device` (the envelope's claim), signed with `key` —
  // which a test may choose to be the wrong one.
  static sync::Envelope Envelope(const std::string& device, uint64_t seq, const std::string& op,
                                 json body, const sync::SecretKey& key,
                                 const std::string& type = "post_surplus") {
    return sync::Sealed(device, seq, op, type, std::move(body), 0, key);
  }

  json Get(int64_t id) {
    auto r = http_->Get(("/api/v1/surplus/" + std::to_string(id)).c_str());
    return r && r->status == 200 ? json::parse(r->body) : json();
  }

  test::TempDir dir_;
  test::Broker broker_;
  std::string db_ = "sqlite:" + dir_.file("hub.db");
  std::unique_ptr<test::Hub> hub_;
  std::unique_ptr<httplib::Client> http_;
  int64_t provider_ = 0, ngo_ = 0;
  std::unique_ptr<test::TestDevice> kiosk_, tablet_;
  const std::string best_before_ = test::HoursFromNow(3);
};

TEST_F(SyncTest, PostOfferClaimOutcomeEndToEnd) {
  auto op = kiosk_->Send("post_surplus", Post(1));
  json outcome = kiosk_->WaitOutcome(op.op);
  ASSERT_FALSE(outcome.is_null()) << "no outcome for the post";
  EXPECT_EQ(outcome["status"], "accepted");
  int64_t id = outcome["data"]["id"].get<int64_t>();
  EXPECT_EQ(outcome["data"]["provider_id"], provider_);  // the device's org, not the body's

  json offer = tablet_->WaitEvent("surplus.offered", [&](const json& e) { return e["data"]["id"] == id; });
  ASSERT_FALSE(offer.is_null()) << "the tablet got no offer";
  EXPECT_EQ(offer["data"]["offer"]["ngo_id"], ngo_);

  auto claim = tablet_->Send("claim", {{"surplus_id", id}, {"version", offer["data"]["version"]}});
  json claimed = tablet_->WaitOutcome(claim.op);
  ASSERT_FALSE(claimed.is_null());
  EXPECT_EQ(claimed["status"], "accepted");
  EXPECT_EQ(claimed["data"]["claimed_by"], ngo_);
  json seen = kiosk_->WaitEvent("surplus.claimed", [&](const json& e) { return e["data"]["id"] == id; });
  ASSERT_FALSE(seen.is_null()) << "the kiosk did not learn of the claim";

  // A second claim loses and learns the truth, machine-readably.
  auto again = tablet_->Send("claim", {{"surplus_id", id}, {"version", offer["data"]["version"]}});
  json lost = tablet_->WaitOutcome(again.op);
  EXPECT_EQ(lost["status"], "conflict");
  EXPECT_EQ(lost["code"], "conflict");
  EXPECT_EQ(lost["data"]["claimed_by"], ngo_);
}

// A kiosk learns its own post from the outcome; the surplus.posted event
// goes to its organisation's other devices only (protocol.md, section 5),
// by the relay and by catch-up alike. The hub writes each post's outcome
// after its event, and relays a device's messages in outbox order: once
// the outcome is in, an event meant for the device would have come first.
TEST_F(SyncTest, APostsEventGoesToTheKitchensOtherDevicesNotToTheOneThatPosted) {
  auto other = Device("kiosk-2", "kiosk", provider_);
  auto posted_ids = [](const std::vector<json>& messages) {
    std::set<int64_t> ids;
    for (const auto& m : messages)
      if (m.value("type", "") == "surplus.posted") ids.insert(m["data"]["id"].get<int64_t>());
    return ids;
  };
  json mine = kiosk_->WaitOutcome(kiosk_->Send("post_surplus", Post(1)).op);
  ASSERT_EQ(mine["status"], "accepted") << mine;
  const int64_t a = mine["data"]["id"].get<int64_t>();
  EXPECT_EQ(mine["data"]["description"], "nasi 1") << "the outcome does not carry the post";
  EXPECT_FALSE(mine["data"].contains("source_device"));
  json seen = other->WaitEvent("surplus.posted", [&](const json& e) { return e["data"]["id"] == a; });
  ASSERT_FALSE(seen.is_null()) << "the kitchen's other kiosk did not hear of the post";
  EXPECT_FALSE(seen["data"].contains("source_device")) << "the hub's note leaked to a device";
  json theirs = other->WaitOutcome(other->Send("post_surplus", Post(2)).op);
  ASSERT_EQ(theirs["status"], "accepted");
  const int64_t b = theirs["data"]["id"].get<int64_t>();
  ASSERT_FALSE(kiosk_->WaitEvent("surplus.posted", [&](const json& e) { return e["data"]["id"] == b; }).is_null());
  EXPECT_EQ(posted_ids(kiosk_->messages()), std::set<int64_t>{b}) << "the kiosk that posted got its own post's event";
  EXPECT_EQ(posted_ids(other->messages()), std::set<int64_t>{a});
  // Catch-up gives each device the same share as the relay did.
  json page = kiosk_->WaitOutcome(kiosk_->Send("catchup", {{"after", 0}}).op);
  ASSERT_EQ(page["status"], "accepted") << page;
  EXPECT_EQ(posted_ids(page["data"]["messages"].get<std::vector<json>>()), std::set<int64_t>{b});
}

// Queries change nothing: the hub answers them at once, straight to the
// device (QoS 0), not through the outbox — so the answer has no outbox id
// and nothing about it is stored. A bad query is still refused by name.
TEST_F(SyncTest, QueriesAreAnsweredAtOnceOutsideTheOutbox) {
  auto posted = kiosk_->WaitOutcome(kiosk_->Send("post_surplus", Post(1)).op);
  ASSERT_FALSE(posted.is_null());
  int64_t id = posted["data"]["id"].get<int64_t>();
  json near;
  ASSERT_TRUE(test::Eventually([&] {  // the matcher indexes the post just after its commit
    near = tablet_->WaitOutcome(tablet_->Send("nearby", {{"lat", 51.5}, {"lon", -0.1}, {"km", 5}}).op);
    return near.is_object() && near["data"].is_array() && !near["data"].empty();
  }, std::chrono::seconds(10))) << near.dump();
  EXPECT_EQ(near["status"], "accepted");
  EXPECT_EQ(near["data"][0]["id"], id);
  EXPECT_FALSE(near.contains("id")) << "the answer went through the outbox";
  EXPECT_TRUE(near["ts"].is_number_integer()) << "no hub clock on the answer";

  json pong = kiosk_->WaitOutcome(kiosk_->Send("ping", json::object()).op);
  ASSERT_FALSE(pong.is_null());
  EXPECT_TRUE(pong["data"]["now"].is_string());
  // The hub takes batches up, of this many ops (docs/protocol.md, "Batch up").
  EXPECT_EQ(pong["data"]["batch_ops"], sync::kMaxUpBatchOps) << pong.dump();
  EXPECT_FALSE(pong.contains("id"));
  // "last": the id of the last message the relay sent this device (its
  // post's outcome at least), which the device receives; none for a device
  // the relay has sent nothing (docs/protocol.md, section 6, "Gaps").
  ASSERT_TRUE(pong["data"].contains("last") && pong["data"]["last"].is_number_integer()) << pong.dump();
  const int64_t last = pong["data"]["last"].get<int64_t>();
  EXPECT_TRUE(test::Eventually([&] {
    for (const json& m : kiosk_->messages())
      if (m.contains("id") && m["id"] == last) return true;
    return false;
  })) << "the ping named " << last << ", a message the device never received";
  auto quiet = Device("kiosk-q", "kiosk", Org("provider", 51.6, -0.2));
  json quiet_pong = quiet->WaitOutcome(quiet->Send("ping", json::object()).op);
  ASSERT_FALSE(quiet_pong.is_null());
  EXPECT_FALSE(quiet_pong["data"].contains("last")) << quiet_pong.dump();

  json bad = tablet_->WaitOutcome(tablet_->Send("nearby", {{"lat", 91}, {"lon", -0.1}}).op);
  ASSERT_FALSE(bad.is_null());
  EXPECT_EQ(bad["status"], "rejected");
  EXPECT_EQ(bad["data"][0]["field"], "lat");
}

// A device learns of a loss from before a hub restart too: the restarted
// hub's ping answer names the last message the hub sent it before
// (recorded with the relay's marks), not nothing (docs/protocol.md,
// section 6, "Gaps").
TEST_F(SyncTest, ARestartedHubsPingAnswerNamesTheLastMessageSentBeforeTheRestart) {
  auto posted = kiosk_->WaitOutcome(kiosk_->Send("post_surplus", Post(1)).op);
  ASSERT_FALSE(posted.is_null());
  // The relay notes a message sent once its PUBACK is in, which may be
  // just after the device has it.
  json pong;
  ASSERT_TRUE(test::Eventually([&] {
    pong = kiosk_->WaitOutcome(kiosk_->Send("ping", json::object()).op);
    return pong.is_object() && pong["data"].contains("last");
  })) << pong.dump();
  const json last = pong["data"]["last"];
  // Stopped as an operator stops it: the relay's marks still waiting are
  // committed on the way out. (A crash leaves them uncommitted, and the
  // restarted relay sends those events again, naming the last one marked.)
  hub_->process().Kill(SIGTERM);
  ASSERT_EQ(hub_->process().Wait(), 0);
  ASSERT_NO_FATAL_FAILURE(StartHub());
  json again;
  ASSERT_TRUE(test::Eventually([&] {  // the hub's MQTT door opens just after its HTTP one
    again = kiosk_->WaitOutcome(kiosk_->Send("ping", json::object()).op, std::chrono::milliseconds(500));
    return !again.is_null();
  }, std::chrono::seconds(10)));
  // The same message, or one sent after it (the post's later events).
  ASSERT_TRUE(again["data"].contains("last") && again["data"]["last"].is_number_integer()) << again.dump();
  const int64_t named = again["data"]["last"].get<int64_t>();
  EXPECT_GE(named, last.get<int64_t>());
  bool received = false;
  for (const json& m : kiosk_->messages()) received |= m.contains("id") && m["id"] == named;
  EXPECT_TRUE(received) << "the restarted hub named " << named << ", a message the device never received";
}

// `catchup` answers with what the relay sent (or will send) this device
// after an outbox id, as it sent it: the device's own outcomes and its
// organisation's events, the handover code only to the provider's devices;
// nothing of another device or organisation. Pages follow "next"/"more".
TEST_F(SyncTest, CatchUpAnswersWithWhatTheHubSentThisDeviceAndNothingElse) {
  const int64_t other = Org("provider", 51.502, -0.102);
  auto other_kiosk = Device("kiosk-2", "kiosk", other);
  json posted = kiosk_->WaitOutcome(kiosk_->Send("post_surplus", Post(1)).op);
  ASSERT_FALSE(posted.is_null());
  const int64_t id = posted["data"]["id"].get<int64_t>();
  json other_posted = other_kiosk->WaitOutcome(other_kiosk->Send("post_surplus", Post(2)).op);
  ASSERT_FALSE(other_posted.is_null());
  const int64_t other_id = other_posted["data"]["id"].get<int64_t>();
  // Both posts offered, the first claimed, and every device told: only then
  // is the story still (offers last minutes), so that what a catch-up reads
  // can be compared with what the relay sent. (Without waiting for the
  // second offer, it was once committed between two catch-ups.)
  for (auto* d : {tablet_.get(), other_kiosk.get()})
    ASSERT_FALSE(d->WaitEvent("surplus.offered", [&](const json& e) { return e["data"]["id"] == other_id; }).is_null())
        << d->id();
  json offer = tablet_->WaitEvent("surplus.offered", [&](const json& e) { return e["data"]["id"] == id; });
  ASSERT_FALSE(offer.is_null());
  json claimed = tablet_->WaitOutcome(
      tablet_->Send("claim", {{"surplus_id", id}, {"version", offer["data"]["version"]}}).op);
  ASSERT_EQ(claimed["status"], "accepted");
  ASSERT_FALSE(kiosk_->WaitEvent("surplus.claimed", [&](const json& e) { return e["data"]["id"] == id; }).is_null());
  ASSERT_FALSE(tablet_->WaitEvent("surplus.claimed", [&](const json& e) { return e["data"]["id"] == id; }).is_null());

  // The messages with an outbox id each device received from the relay.
  auto relayed = [](test::TestDevice& d) {
    std::map<int64_t, json> out;
    for (const json& m : d.messages())
      if (m.contains("id")) out[m["id"].get<int64_t>()] = m;
    return out;
  };
  auto catch_up = [&](test::TestDevice& d, int64_t after) {
    json a = d.WaitOutcome(d.Send("catchup", {{"after", after}}).op);
    EXPECT_EQ(a["status"], "accepted") << a.dump();
    EXPECT_FALSE(a.contains("id")) << "a query's answer went through the outbox";
    return a["data"];
  };
  for (auto* d : {kiosk_.get(), tablet_.get(), other_kiosk.get()}) {
    json page = catch_up(*d, 0);
    EXPECT_EQ(page["more"], false);
    const int64_t scanned = page["next"].get<int64_t>();
    std::map<int64_t, json> got;
    for (const json& m : page["messages"]) got[m["id"].get<int64_t>()] = m;
    ASSERT_FALSE(got.empty()) << d->id();
    // The relay sends on its own time: wait until it has sent this device
    // what the answer holds, then compare everything up to where the
    // answer's scan ended. Same messages, the same bytes but for the hub's
    // clock ("ts"), which is that of the answer.
    std::map<int64_t, json> sent;
    ASSERT_TRUE(test::Eventually([&] {
      sent = relayed(*d);
      for (auto& [mid, m] : got)
        if (!sent.count(mid)) return false;
      return true;
    }, std::chrono::seconds(10))) << d->id() << " was not sent all of " << page.dump();
    std::erase_if(sent, [&](const auto& kv) { return kv.first > scanned; });
    EXPECT_EQ(got.size(), sent.size()) << d->id() << ": " << page.dump();
    for (auto& [mid, m] : sent) {
      ASSERT_TRUE(got.count(mid)) << d->id() << " was sent " << m.dump();
      json a = got[mid], b = m;
      a.erase("ts");
      b.erase("ts");
      EXPECT_EQ(a, b) << d->id();
    }
    // After the scan's end there is nothing more of this story.
    json rest = catch_up(*d, scanned);
    EXPECT_TRUE(rest["messages"].empty()) << rest.dump();
    EXPECT_EQ(rest["more"], false);
  }
  // The code that proves a handover is the provider's, never the NGO's.
  auto has_code = [](const json& page) {
    for (const json& m : page["messages"])
      if (m.value("type", "") == "surplus.claimed") return m["data"].contains("handover_code");
    ADD_FAILURE() << "no surplus.claimed in " << page.dump();
    return false;
  };
  EXPECT_TRUE(has_code(catch_up(*kiosk_, 0)));
  EXPECT_FALSE(has_code(catch_up(*tablet_, 0)));

  // Bad bodies are refused by name.
  for (const json& body : {json{{"after", -1}}, json{{"after", "1"}}, json::object(),
                           json{{"after", 0}, {"since", 3}}}) {
    json bad = kiosk_->WaitOutcome(kiosk_->Send("catchup", body).op);
    ASSERT_FALSE(bad.is_null()) << body.dump();
    EXPECT_EQ(bad["status"], "rejected") << body.dump();
    EXPECT_EQ(bad["data"][0]["field"], body.contains("since") ? "since" : "after") << bad.dump();
  }
}

TEST_F(SyncTest, DuplicatedAndReorderedDeliveriesApplyOnce) {
  auto first = Envelope(kiosk_->id(), 5, "op-five", Post(5), kiosk_->keys().secret_key);
  auto second = Envelope(kiosk_->id(), 4, "op-four", Post(4), kiosk_->keys().secret_key);
  std::string topic = sync::UpTopic(kiosk_->id(), "post_surplus");
  kiosk_->SendRaw(topic, sync::Encode(first));
  kiosk_->SendRaw(topic, sync::Encode(first));   // duplicated
  kiosk_->SendRaw(topic, sync::Encode(second));  // older sequence, after
  json a = kiosk_->WaitOutcome("op-five"), b = kiosk_->WaitOutcome("op-four");
  ASSERT_FALSE(a.is_null());
  ASSERT_FALSE(b.is_null());
  EXPECT_EQ(a["status"], "accepted");
  EXPECT_EQ(b["status"], "accepted");
  // The duplicate got its own outcome, "duplicate", with the same result.
  json dup = kiosk_->WaitEvent("", [&](const json& j) {
    return j.value("op", "") == "op-five" && j.value("code", "") == "duplicate";
  });
  ASSERT_FALSE(dup.is_null());
  EXPECT_EQ(dup["data"]["id"], a["data"]["id"]);
  int64_t last = std::max(a["data"]["id"].get<int64_t>(), b["data"]["id"].get<int64_t>());
  EXPECT_TRUE(Get(last + 1).is_null()) << "something was applied twice";
}

// With several hub replicas a tablet's reports may be applied out of order
// (the broker deals its messages to either). Here the tablet's later report
// simply arrives first: the earlier one is answered "stale", with the
// position that stands, and moves nothing.
TEST_F(SyncTest, AnOlderVehicleReportIsAnsweredStaleAndMovesNothing) {
  auto report = [&](uint64_t seq, const std::string& op, double lat) {
    tablet_->SendRaw(sync::UpTopic(tablet_->id(), "vehicle"),
                     sync::Encode(Envelope(tablet_->id(), seq, op, {{"lat", lat}, {"lon", -0.1}},
                                           tablet_->keys().secret_key, "vehicle")));
  };
  report(101, "v-later", 51.51);
  json later = tablet_->WaitOutcome("v-later");
  ASSERT_FALSE(later.is_null());
  EXPECT_EQ(later["code"], "ok");
  report(100, "v-earlier", 51.40);
  json earlier = tablet_->WaitOutcome("v-earlier");
  ASSERT_FALSE(earlier.is_null());
  EXPECT_EQ(earlier["status"], "accepted");
  EXPECT_EQ(earlier["code"], "stale");
  EXPECT_DOUBLE_EQ(earlier["data"]["lat"].get<double>(), 51.51);
  report(102, "v-next", 51.52);  // the next one moves it again
  json next = tablet_->WaitOutcome("v-next");
  ASSERT_FALSE(next.is_null());
  EXPECT_EQ(next["code"], "ok");
  EXPECT_DOUBLE_EQ(next["data"]["lat"].get<double>(), 51.52);
}

TEST_F(SyncTest, ForgeriesForeignDevicesAndReplaysAreRefusedAndChangeNothing) {
  // Forged: signed with another key.
  auto forged = Envelope(kiosk_->id(), 1, "forged", Post(1), sync::GenerateKeyPair().secret_key);
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"), sync::Encode(forged));
  json f = kiosk_->WaitOutcome("forged");
  ASSERT_FALSE(f.is_null());
  EXPECT_EQ(f["status"], "rejected");
  EXPECT_EQ(f["code"], "unauthenticated");

  // Tampered after signing.
  auto good = kiosk_->Send("post_surplus", Post(2));
  ASSERT_EQ(kiosk_->WaitOutcome(good.op)["status"], "accepted");
  sync::Envelope tampered = good;
  tampered.op = "tampered";
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"), sync::Encode(tampered));
  EXPECT_EQ(kiosk_->WaitOutcome("tampered")["code"], "unauthenticated");

  // Speaking for another device on its own topic: refused by the hub.
  auto other = Envelope(tablet_->id(), 1, "as-other", Post(3), kiosk_->keys().secret_key);
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"), sync::Encode(other));
  EXPECT_EQ(kiosk_->WaitOutcome("as-other")["code"], "forbidden");
  // ... and on the other device's topic: the broker's ACL drops it; the
  // hub never sees it, the other device gets nothing.
  kiosk_->SendRaw(sync::UpTopic(tablet_->id(), "post_surplus"), sync::Encode(other));

  // A kiosk may not claim.
  auto claim = kiosk_->Send("claim", {{"surplus_id", 1}, {"version", 1}});
  EXPECT_EQ(kiosk_->WaitOutcome(claim.op)["code"], "forbidden");

  // Replay: far older than the highest sequence accepted.
  kiosk_->next_seq = 50000;
  auto high = kiosk_->Send("post_surplus", Post(4));
  ASSERT_EQ(kiosk_->WaitOutcome(high.op)["status"], "accepted");
  kiosk_->next_seq = 3;  // a fresh op id, an old sequence number
  auto old = kiosk_->Send("post_surplus", Post(5));
  json replay = kiosk_->WaitOutcome(old.op);
  EXPECT_EQ(replay["status"], "rejected");
  EXPECT_EQ(replay["code"], "precondition_failed");

  // Garbage is answered and ingest goes on.
  kiosk_->next_seq = 50001;
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"), "{not json");
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"),  // 30,000 deep, within the size limit
                  "{\"body\":" + std::string(30000, '[') + std::string(30000, ']') + "}");
  auto after = kiosk_->Send("post_surplus", Post(6));
  EXPECT_EQ(kiosk_->WaitOutcome(after.op)["status"], "accepted");

  // Exactly the two good posts and the high one exist: ids 1..3.
  EXPECT_FALSE(Get(3).is_null());
  EXPECT_TRUE(Get(4).is_null());
  EXPECT_TRUE(tablet_->WaitOutcome("as-other", std::chrono::milliseconds(300)).is_null());
}

// A device's queued ops in one publish (docs/protocol.md, "Batch up"):
// each is judged as if it had come alone, in order, and a bad one fails
// alone; a batch that is not one fails whole, and ingest goes on.
TEST_F(SyncTest, ABatchOfOpsIsAnsweredOpByOpAndABadOpInItFailsAlone) {
  const auto& key = kiosk_->keys().secret_key;
  auto first = Envelope(kiosk_->id(), 1, "b-first", Post(1), key);
  auto forged = Envelope(kiosk_->id(), 2, "b-forged", Post(2), sync::GenerateKeyPair().secret_key);
  auto foreign = Envelope(tablet_->id(), 3, "b-foreign", Post(3), key);
  auto last = Envelope(kiosk_->id(), 4, "b-last", Post(4), key);
  sync::Envelope claim;  // a kiosk may not claim, in a batch or not
  claim.device = kiosk_->id();
  claim.seq = 5;
  claim.op = "b-claim";
  claim.type = "claim";
  claim.body = {{"surplus_id", 1}, {"version", 1}};
  sync::Sign(claim, key);
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  std::vector<std::string> envs{sync::Encode(first), sync::Encode(forged), sync::Encode(foreign),
                                sync::Encode(last), sync::Encode(claim)};
  std::string batch = sync::EncodeUpBatch({envs[0], envs[1], envs[2], envs[3], envs[4]}, {"", "", "", tp, ""});
  // One element that is no envelope: refused alone (an outcome naming no op).
  batch.insert(batch.size() - 2, R"(,{"env":5})");
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), sync::kUpBatch), batch);
  json a = kiosk_->WaitOutcome("b-first"), z = kiosk_->WaitOutcome("b-last");
  ASSERT_EQ(a["status"], "accepted") << a;
  ASSERT_EQ(z["status"], "accepted") << z;
  EXPECT_LT(a["data"]["id"].get<int64_t>(), z["data"]["id"].get<int64_t>()) << "applied out of order";
  EXPECT_EQ(z["data"]["traceparent"].get<std::string>().substr(3, 32), tp.substr(3, 32))
      << "the op's own traceparent was not carried";
  EXPECT_EQ(kiosk_->WaitOutcome("b-forged")["code"], "unauthenticated");
  EXPECT_EQ(kiosk_->WaitOutcome("b-foreign")["code"], "forbidden");
  EXPECT_EQ(kiosk_->WaitOutcome("b-claim")["code"], "forbidden");
  json element = kiosk_->WaitEvent("", [&](const json& j) {
    return j.value("kind", "") == "outcome" && j.value("op", "x").empty() &&
           j.value("message", "") == "malformed envelope: not a JSON object";
  });
  EXPECT_FALSE(element.is_null()) << "the malformed element was not answered";

  // Not a batch at all: refused whole, naming what is wrong; none of its ops is applied.
  std::vector<std::string> many;
  for (int i = 0; i < int(sync::kMaxUpBatchOps) + 1; ++i)
    many.push_back(sync::Encode(Envelope(kiosk_->id(), 10 + i, "b-many-" + std::to_string(i), Post(10 + i), key)));
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), sync::kUpBatch),
                  sync::EncodeUpBatch(std::vector<std::string_view>(many.begin(), many.end()), {}));
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), sync::kUpBatch), R"({"v":1,"kind":"batch","ops":[]})");
  kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), sync::kUpBatch), "{not json");
  int whole = 0;
  json refusal = kiosk_->WaitEvent("", [&](const json& j) {
    if (j.value("kind", "") != "outcome" || j.value("code", "") != "invalid" || j.value("op", "x") != "") return false;
    whole += j.value("message", "") == "malformed batch";
    return whole == 2;  // the 65 ops and the empty one; "{not json" is named as not JSON
  });
  EXPECT_FALSE(refusal.is_null()) << "a malformed batch was not answered";
  auto after = kiosk_->Send("post_surplus", Post(99));
  json o = kiosk_->WaitOutcome(after.op);
  ASSERT_EQ(o["status"], "accepted") << "ingest stopped after a bad batch";
  EXPECT_EQ(o["data"]["id"].get<int64_t>(), z["data"]["id"].get<int64_t>() + 1)
      << "an op of a refused batch was applied";
}

// Signed ops whose body fields hold values of every other JSON type: the
// hub answers every one (an exception on an ingest worker would end the
// process) and goes on.
TEST_F(SyncTest, OpsWithFieldsOfAnyTypeAreEachAnswered) {
  const std::vector<json> odd{nullptr, true, -1, 0, 1e308, 18446744073709551615ULL, -9223372036854775807LL - 1,
                              "", "x", json::array(), json::array({1, "a"}), json::object(), json{{"a", 1}}};
  json post = Post(1);
  post["storage"] = "hot";
  post["allergens"] = json::array({"eggs"});
  post["lat"] = 51.5;
  post["lon"] = -0.1;
  const std::vector<std::tuple<test::TestDevice*, std::string, json>> ops{
      {kiosk_.get(), "post_surplus", post},
      {tablet_.get(), "claim", {{"surplus_id", 1}, {"version", 1}}},
      {tablet_.get(), "accept", {{"surplus_id", 1}}},
      {tablet_.get(), "pickup", {{"surplus_id", 1}, {"handover_code", "042917"}, {"actual_kg", 1}}},
      {tablet_.get(), "vehicle", {{"lat", 51.5}, {"lon", -0.1}, {"free_kg", 40}, {"online", true}}},
      {tablet_.get(), "nearby", {{"lat", 51.5}, {"lon", -0.1}, {"km", 5}}},
  };
  std::vector<std::pair<test::TestDevice*, std::string>> sent;
  for (const auto& [device, type, good] : ops)
    for (const auto& [field, ignored] : good.items())
      for (const json& v : odd) {
        json body = good;
        body[field] = v;
        sent.emplace_back(device, device->Send(type, body).op);
      }
  int answered = 0;
  for (const auto& [device, op] : sent) answered += device->WaitOutcome(op).is_object();
  EXPECT_EQ(answered, int(sent.size()));
  auto after = kiosk_->Send("post_surplus", Post(2));
  EXPECT_EQ(kiosk_->WaitOutcome(after.op)["status"], "accepted");
}

TEST_F(SyncTest, RevokedDevicesAreRefused) {
  auto r = http_->Post("/api/v1/devices/kiosk-1/revoke", "", "application/json");
  ASSERT_TRUE(r && r->status == 200) << (r ? r->body : "");
  auto op = kiosk_->Send("post_surplus", Post(1));
  json o = kiosk_->WaitOutcome(op.op);
  EXPECT_EQ(o["status"], "rejected");
  EXPECT_EQ(o["code"], "unauthenticated");
}

TEST_F(SyncTest, AHubKilledMidStreamLosesNothingAndAppliesNothingTwice) {
  constexpr int kOps = 200;
  std::vector<sync::Envelope> sent;
  for (int i = 0; i < kOps; ++i) {
    sent.push_back(kiosk_->Send("post_surplus", Post(i)));
    if (i == kOps / 2) {
      hub_->process().Kill(SIGKILL);
      hub_->process().Wait();
    }
  }
  ASSERT_NO_FATAL_FAILURE(StartHub());
  // The device's queue is the truth: whatever has no outcome yet is sent
  // again (same op id, same signature), as pp-agent does after a reconnect.
  std::set<int64_t> ids;
  for (const auto& e : sent) {
    json o = kiosk_->WaitOutcome(e.op, std::chrono::milliseconds(200));
    if (o.is_null()) {
      kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"), sync::Encode(e));
      o = kiosk_->WaitOutcome(e.op);
    }
    ASSERT_FALSE(o.is_null()) << "op " << e.op << " never answered";
    ASSERT_EQ(o["status"], "accepted") << o.dump();
    ids.insert(o["data"]["id"].get<int64_t>());
  }
  EXPECT_EQ(ids.size(), size_t(kOps));
  EXPECT_EQ(*ids.rbegin(), kOps) << "ids 1..N: nothing applied twice";
  EXPECT_TRUE(Get(kOps + 1).is_null());
}

// A hub that stops reading for a while (a stalled disk, a starved or
// stopped process) has the devices' ops queued for it at the broker. The
// broker's queue limit is one for every client: at 10,000 it dropped the
// rest, and their devices heard nothing until they sent them again 20 s
// later (docs/benchmarks.md, "Session 18"). packaging/'s limit holds them.
TEST_F(SyncTest, OpsSentWhileTheHubIsPausedAllReachItWhenItGoesOn) {
  constexpr int kOps = 12500;  // more than the old limit, beyond the 200 in flight
  auto accepted = [&] {
    return int(test::MetricValue(hub_->port(), "mqtt_ingest_messages_total{result=\"accepted\"}"));
  };
  ASSERT_EQ(accepted(), 0);
  hub_->process().Kill(SIGSTOP);
  for (int i = 0; i < kOps; ++i) kiosk_->Send("post_surplus", Post(i));  // each acknowledged by the broker
  hub_->process().Kill(SIGCONT);
  int last = 0;
  EXPECT_TRUE(test::Eventually([&] { return (last = accepted()) == kOps; }, std::chrono::seconds(90)))
      << last << " of " << kOps << " ops reached the hub";
  EXPECT_TRUE(kiosk_->WaitOutcome(kiosk_->id() + "-op-" + std::to_string(kOps), std::chrono::seconds(30))
                  .is_object());
}

TEST_F(SyncTest, BothSidesResumeAfterABrokerRestart) {
  auto before = kiosk_->Send("post_surplus", Post(1));
  ASSERT_EQ(kiosk_->WaitOutcome(before.op)["status"], "accepted");
  broker_.Stop();
  broker_.Start();
  // Automatic reconnect on both sides; the op is sent (again) until answered.
  json o;
  auto op = kiosk_->Send("post_surplus", Post(2));
  for (int attempt = 0; attempt < 40 && o.is_null(); ++attempt) {
    o = kiosk_->WaitOutcome(op.op, std::chrono::milliseconds(500));
    if (o.is_null()) kiosk_->SendRaw(sync::UpTopic(kiosk_->id(), "post_surplus"), sync::Encode(op));
  }
  ASSERT_FALSE(o.is_null()) << "no outcome after the broker restart";
  EXPECT_EQ(o["status"], "accepted");
}

TEST_F(SyncTest, TheDeviceCliRegistersWritesKeysAndRevokes) {
  test::TempDir out;
  test::Process reg({test::BinPath("pp-device"), "register", "--hub", hub_->url(), "--id", "kiosk-cli",
                     "--role", "kiosk", "--org", std::to_string(provider_), "--out",
                     out.path().string(), "--broker", broker_.uri()});
  ASSERT_EQ(reg.Wait(), 0);
  for (const char* ext : {".key", ".password", ".json"}) {
    auto p = out.path() / (std::string("kiosk-cli") + ext);
    ASSERT_TRUE(std::filesystem::exists(p)) << p;
    EXPECT_EQ(std::filesystem::status(p).permissions() & std::filesystem::perms::group_read,
              std::filesystem::perms::none) << p << " must be private";
  }
  std::ifstream key_in(out.file("kiosk-cli.key"));
  std::string key_b64;
  key_in >> key_b64;
  auto sk = sync::SecretKeyFromBase64(key_b64);
  ASSERT_TRUE(sk.ok());
  auto device = json::parse(http_->Get("/api/v1/devices/kiosk-cli")->body);
  // An Ed25519 secret key ends with its public key.
  EXPECT_EQ(device["public_key"], sync::ToBase64(sk->data() + 32, 32));
  EXPECT_EQ(json::parse(std::ifstream(out.file("kiosk-cli.json")))["broker_url"], broker_.uri());

  test::Process bad({test::BinPath("pp-device"), "register", "--hub", hub_->url(), "--id", "a/b",
                     "--role", "kiosk", "--org", "1", "--out", out.path().string()});
  EXPECT_NE(bad.Wait(), 0);
  test::Process rev({test::BinPath("pp-device"), "revoke", "--hub", hub_->url(), "--id", "kiosk-cli"});
  ASSERT_EQ(rev.Wait(), 0);
  EXPECT_EQ(json::parse(http_->Get("/api/v1/devices/kiosk-cli")->body)["revoked"], true);
}

}  // namespace
}  // namespace pp
