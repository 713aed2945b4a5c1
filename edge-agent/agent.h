// pp-agent's core: what a kiosk or tablet does with the ops a person types
// and the messages the hub sends down. No sockets here: the broker is behind
// Uplink, the disk behind AgentStore, time behind Clock.
//
// Sending. Submit() signs the op and commits it to the queue before it
// answers (so a power cut after "queued" on screen loses nothing). A sender
// thread publishes queued ops in sequence order, with at most kWindow
// publishes awaiting PUBACK and kMaxUnanswered ops awaiting their outcome.
// An op leaves the queue only when the hub's outcome arrives. After every
// (re)connect the sender first pings, and sends nothing else until the hub
// answers: a restarted broker forgets the hub's shared subscription
// (mosquitto 2.0.11 restores only plain ones), and what a device publishes
// before the hub subscribes again is acknowledged by the broker and
// dropped; sent then, ops would reach the hub out of order (the lost ones
// only after kResendAfter). After every reconnect, and when the oldest op
// has waited kResendAfter for its outcome and looks lost,
// sending starts again from the oldest queued op (same bytes: the hub
// applies an op id once and answers a repeat with its first result).
// "Looks lost": an op sent after it was answered (the hub answers a
// device's ops in order, so this one went missing), or no outcome at all
// came for that long (the hub or the way to it is down). An oldest op that
// merely waits while outcomes keep coming is queued at a busy hub: sent
// again, it would only add to the hub's queue, and a thousand devices doing
// that at once turned a slow rush into a collapse (docs/benchmarks.md,
// "Session 17"). Each resend that brings no outcome doubles the wait before
// the next, up to kResendMax; any outcome resets it.
// One order the hub cannot restore is kept here: an op on a post (claim,
// accept, decline, pickup, deliver) is not sent while this device's earlier
// op on the same post awaits its outcome, and nothing after it is sent
// either (ops go out in sequence order). The hub judges each op against the
// current state, and two hub replicas — or an op lost while the hub was out
// of the shared subscription and sent again later — could otherwise let a
// pickup reach it before its claim and come back a conflict.
//
// Batches. Ops that are waiting together go in one publish (a batch,
// docs/protocol.md "Batch up"): each MQTT message costs this device, the
// broker and the hub far more than its bytes. And the sender lets at most
// kPublishesAwaiting publishes await their outcomes: while the hub is slow
// to answer, the ops a person queues meanwhile wait here and then go
// together, so the busier the hub, the fewer messages carry its work
// (like a group commit). An idle device's op goes at once, alone; so does
// a claim or an accept at the head of the queue, held or not: it races
// other NGOs for the same food (the first commit wins), and one held for
// a batch could lose. Only a
// hub whose answer to the connection's ping names `batch_ops` gets
// batches (up to that many ops); to one from before batches every op goes
// alone, as it did then, without the two-publish hold.
//
// Receiving. Down messages are applied by one thread in batches, each batch
// one transaction: outcomes remove ops and are kept for the person to see;
// events and results update the mirror of posts; ids already applied are
// dropped (QoS 1 and the hub's relay may repeat).
//
// Catching up. Paho acknowledges a down message to the broker as it
// arrives, before it is applied; one in memory when the process dies is
// gone from the broker. And a broker may drop a device's queue (session
// expired, a clean session after mqtt_session_reset, a queue over its
// limit). So on the first connect of the process, and on any connect where
// the broker no longer had our session, once the hub answers the ping, the
// agent asks the hub (`catchup`) for what it sent this device after the
// highest id applied here, page by page, and applies it like any down
// message (repeats are dropped by id). A connect that found the session
// kept missed nothing (unless a catch-up was still under way: it goes on)
// — but a broker that kept the session may still have dropped messages
// beyond its queue limit. Each publish from the hub names the last message
// of the one before it (`prev`); if that was never applied here, the agent
// owes itself a catch-up from the last id applied before it (meta
// catchup_owed, written with the publish, so it survives a crash); and
// the answer to a ping (sent on connecting and every kCheckEvery) names the
// last message the hub sent, checked the same way, so that a loss shows
// even when nothing more comes.
// A device that has applied nothing yet does not ask: there is nothing it
// can have missed.
//
// Presence. A tablet reports its vehicle (an empty `vehicle` op if nothing
// changed) whenever kTabletReportEvery has passed since its last report and
// the hub listens: the hub offers nothing to a tablet silent for longer than
// kTabletSilentAfter (common/vehicle.h). After an outage longer than
// kTabletReportEvery, and on starting, the report goes as soon as the hub
// answers the connection's ping.
//
// Time. The device clock may be wrong by hours. Nothing the hub decides
// depends on it; times a person picks ("good for 4 hours") are converted
// with the hub's clock, learnt from the "ts" of every down message.
//
// Thread safety: all public methods may be called from any thread.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/error.h"
#include "edge-agent/agent_store.h"
#include "firmware-cfg/device_config.h"
#include "sync/protocol.h"

namespace pp::agent {

// The broker, as the agent needs it.
class Uplink {
 public:
  virtual ~Uplink() = default;
  virtual bool Connected() const = 0;
  // Whether the broker kept this device's session (and so its queue of down
  // messages) at the latest connect. False when unknown.
  virtual bool SessionKept() const { return false; }
  // Returns a wait for the broker's PUBACK.
  using AckWait = std::function<Status(std::chrono::milliseconds)>;
  virtual Result<AckWait> Publish(const std::string& topic, const std::string& payload,
                                  const std::string& traceparent) = 0;
};

// Never connected: nothing leaves. For an agent that only applies what it
// is handed (tests, pp-agent-bench's apply figure).
class OfflineUplink final : public Uplink {
 public:
  bool Connected() const override { return false; }
  Result<AckWait> Publish(const std::string&, const std::string&, const std::string&) override {
    return Error::Unavailable("offline");
  }
};

// The ops sent on this connection that await their outcome, and the posts
// they act on. Not thread-safe: the Agent holds its mutex.
class InFlight {
 public:
  // Sent (again) at `at` in the publish numbered `publish`; `surplus_id` 0
  // for an op on no post. A repeat keeps the first time and publish.
  void Sent(uint64_t seq, Timestamp at, int64_t surplus_id, uint64_t publish);
  void Answered(uint64_t seq);  // no-op if not in flight
  void Clear();
  // Whether an op sent after one still in flight has been answered since
  // the last Clear(): the hub answers a device's ops in order, so the
  // earlier one was most likely lost on the way.
  bool Overtaken() const { return overtaken_; }
  size_t size() const { return ops_.size(); }
  // Publishes with an op still awaiting its outcome.
  size_t Publishes() const { return publishes_.size(); }
  // Whether an op on this post awaits its outcome.
  bool OnPost(int64_t surplus_id) const { return posts_.count(surplus_id) > 0; }
  // The op that has waited longest: its seq and when it was sent.
  std::optional<std::pair<uint64_t, Timestamp>> Oldest() const;

 private:
  struct Op {
    Timestamp at;
    int64_t surplus_id;
    uint64_t publish;
  };
  std::map<uint64_t, Op> ops_;         // by seq
  std::map<int64_t, int> posts_;       // surplus id -> ops on it in ops_
  std::map<uint64_t, int> publishes_;  // publish number -> its ops in ops_
  bool overtaken_ = false;
};

class Agent {
 public:
  static constexpr size_t kWindow = 64;             // publishes awaiting PUBACK
  static constexpr size_t kMaxUnanswered = 2000;    // ops sent, awaiting their outcome
  static constexpr size_t kMaxBatchOps = sync::kMaxUpBatchOps;  // ops in one publish
  // Publishes awaiting their outcomes before the next ops wait (see
  // "Batches" above). Two, so that one can travel while the hub answers
  // the other.
  static constexpr size_t kPublishesAwaiting = 2;
  static constexpr Duration kResendAfter{std::chrono::seconds(20)};
  static constexpr Duration kResendMax{std::chrono::minutes(5)};  // the wait doubled, at most
  // A tablet asks for the posts near it every kNearbyEvery, and sooner
  // after it moved, but not more often than kNearbyAfterMove: a driving van
  // reports its position every second, and an answer of up to 50 posts each
  // second cost the hub a fifth of its CPU in a 1,000-post/s rush.
  static constexpr Duration kNearbyEvery{std::chrono::seconds(15)};
  static constexpr Duration kNearbyAfterMove{std::chrono::seconds(5)};
  static constexpr std::chrono::milliseconds kAckTimeout{5000};  // for a window of PUBACKs
  // Until the hub answers a ping on this connection, ping again after
  // kPingRetry, doubling up to kPingRetryMax: while the hub is down a
  // city's devices would otherwise ping the broker every 2 s each.
  static constexpr Duration kPingRetry{std::chrono::seconds(2)};
  static constexpr Duration kPingRetryMax{std::chrono::seconds(30)};
  // While connected the agent pings again this often: the answer names the
  // last message the hub sent it ("last"), which shows a loss even to a
  // device that gets nothing more (docs/protocol.md, section 6, "Gaps").
  static constexpr Duration kCheckEvery{std::chrono::minutes(5)};
  static constexpr Duration NextPingGap(Duration gap) { return std::min(gap * 2, kPingRetryMax); }
  // An answer to any of this connection's last few pings means the hub
  // listens: one that comes after the next ping went is not thrown away
  // (under load it was, and the device waited for yet another ping).
  static constexpr size_t kEarlierPingsKept = 8;

  Agent(DeviceConfig config, sync::SecretKey key, AgentStore& store, const Clock& clock,
        Uplink& uplink);
  ~Agent();

  void Start();
  void Stop();

  // From the MQTT adapter (Paho's thread: they only hand over).
  void OnDown(std::string payload);
  void OnConnected();

  // A person's op: checked, signed and committed to the queue. `body` is
  // what the local API received; for a post, "best_before_in_min" may stand
  // for best_before. Refused ops change nothing: kPermissionDenied (wrong
  // role), kInvalidArgument (fields), kResourceExhausted (queue full).
  Result<QueuedOp> Submit(const std::string& type, nlohmann::json body);

  // What the UI shows (see docs/protocol.md, "The agent's local API").
  Result<nlohmann::json> State();

  // Told, after each batch from the hub is committed, about every message
  // applied from it: kind "outcome" (type: the op's type; data: the outcome
  // message) or "event" (type: the event type; data: the post). For
  // simulators and tests; set before Start(); runs on the applier thread.
  using Observer = std::function<void(const std::string& kind, const std::string& type,
                                      const nlohmann::json& message)>;
  void SetObserver(Observer o) { observer_ = std::move(o); }

  // The hub's clock as best known here.
  Timestamp HubNow() const;
  const DeviceConfig& config() const { return config_; }

 private:
  void SendLoop();
  // Waits for PUBACKs until at most `keep` are outstanding; false (window
  // dropped) if one failed or kAckTimeout passed.
  bool AwaitAcks(std::deque<Uplink::AckWait>& window, size_t keep);
  // The first `n` of `ops` in one publish (sync::EncodeUpBatch).
  Result<Uplink::AckWait> PublishBatch(const std::vector<QueuedOp>& ops, size_t n);
  void ApplyLoop();
  Status ApplyBatch(std::vector<std::string>& batch);
  Status MergePost(AgentTxn& tx, const nlohmann::json& post);
  void MaybeAskNearby();
  void MaybeReportPresence();  // see "Presence" above
  // After a (re)connect, and after an answer that said "more": asks the hub
  // for what it sent this device that this device has not applied.
  void MaybeCatchUp();
  // A query (not queued): published now if connected, its answer handled
  // by op id. Its op id is also written to *op_to, under mu_, before it is
  // published (the answer may come before Publish returns).
  void SendQuery(const char* type, const nlohmann::json& body, std::string* op_to = nullptr);
  // After a (re)connect: pings until the hub answers; true once it has.
  bool HubListening();
  // A ping unanswered past its gap, about to be followed by another: its
  // answer still counts if it comes (a slow link, a busy broker); mu_ held.
  void SupersedePing();
  void ForgetPings();  // a new connection: no earlier ping's answer counts; mu_ held
  Result<nlohmann::json> CheckBody(const std::string& type, nlohmann::json body);
  sync::Envelope Seal(uint64_t seq, const std::string& type, const nlohmann::json& body);

  Observer observer_;
  const DeviceConfig config_;
  const sync::SecretKey key_;
  AgentStore& store_;
  const Clock& clock_;
  Uplink& uplink_;

  std::mutex mu_;
  std::condition_variable send_cv_, apply_cv_;
  bool stop_ = false;
  bool send_work_ = true;
  uint64_t epoch_ = 0;                       // bumped on every (re)connect
  InFlight unanswered_;                      // sent on this connection, awaiting the outcome
  Timestamp last_outcome_at_{};              // of any op, or the connect before it
  Duration resend_after_ = kResendAfter;     // doubled by each resend no outcome followed
  bool held_ = false;  // the sender stopped at an op whose post awaits an earlier op's outcome
  bool awaiting_outcomes_ = false;  // the sender waits for a publish's outcomes (kPublishesAwaiting)
  bool race_queued_ = false;        // a claim or accept was queued since the sender last looked
  uint64_t publishes_made_ = 0;     // publishes made, numbering them for InFlight
  std::deque<std::string> inbox_;
  std::set<std::string> queries_;            // op ids of queries in flight
  std::string ping_op_;                      // this connection's ping awaiting its answer
  std::deque<std::string> earlier_pings_;    // its unanswered pings before ping_op_, newest last
  Timestamp pinged_at_{};
  Duration ping_gap_ = kPingRetry;           // before the next ping, if unanswered
  bool hub_listening_ = false;               // the hub answered a ping on this connection
  size_t hub_batch_ops_ = 1;                 // ops the hub takes in one publish (its ping answer's batch_ops)
  bool catchup_due_ = true;                  // decide once the hub listens
  bool connected_before_ = false;            // a catch-up was decided in this process
  bool catching_up_ = false;                 // asked, and no answer said "no more" yet
  int64_t catchup_from_ = -1;                // the next page's "after"; -1: from what is applied
  int64_t catchup_asked_after_ = -1;         // the "after" of catchup_op_
  bool gap_owed_ = false;                    // a gap was seen: catch up even if the session was kept
  std::string catchup_op_;                   // the catchup query awaiting its answer
  Timestamp catchup_at_{};
  std::atomic<int64_t> hub_offset_ms_{0};
  std::atomic<uint64_t> last_seq_{0};
  Timestamp last_nearby_{};
  bool moved_ = false;  // a vehicle update was queued since the last nearby query
  // When a vehicle report was last queued (its presence). None yet in this
  // process: one is due once the hub listens, unless Start() queued the
  // profile; a tablet restarted after a long night is offered posts again
  // at once.
  Timestamp reported_at_{};
  std::thread sender_, applier_;
};

}  // namespace pp::agent
