// The hub's MQTT door: turns a device's signed operation into the same
// HubService command the HTTP door runs, and answers it with an outcome.
//
// For every message on pp/v1/up/{device}/{type} (and every op of a batch on
// pp/v1/up/{device}/batch, in order, as if each had come alone):
//   decode strictly -> the topic's device must be the envelope's device ->
//   the device must be registered and not revoked -> the Ed25519 signature
//   must verify -> the sequence number must be within the replay window ->
//   the role must allow the type -> run the command with the device's
//   organisation as the actor, idempotent on the op id.
// Accepted (or replayed) ops get their outcome written to the outbox in the
// same transaction as the effect; refused ops get a rejected/conflict
// outcome in a transaction of its own. Nothing malformed stops ingest.
//
// Thread safety: OnMessage may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "cloud-hub/core/hub_service.h"
#include "common/metrics.h"
#include "sync/protocol.h"

namespace pp {

class DeviceIngest {
 public:
  // How far behind the device's highest accepted sequence number an
  // operation may be and still be considered (older ones are replays).
  static constexpr uint64_t kReplayWindow = 10000;
  // A `catchup` answer reads at most kCatchUpScan outbox events and carries
  // at most kCatchUpBytes of messages (the broker takes 64 KiB a message).
  static constexpr int kCatchUpScan = 1000;
  static constexpr size_t kCatchUpBytes = 48 * 1024;

  explicit DeviceIngest(HubService& hub) : hub_(hub) {}

  // Answers `nearby` queries: open posts within `km` of a point, as a JSON
  // array of posts (each with "distance_km"), nearest first. Set once,
  // before traffic; without it the query is answered `unavailable`.
  using NearbyQuery = std::function<nlohmann::json(const GeoPoint& at, double km)>;
  void SetNearbyQuery(NearbyQuery q) { nearby_ = std::move(q); }
  // Where the answers to queries (nearby, ping) go: straight to the device
  // (pp-hub publishes them at once with QoS 0), not through the outbox. A
  // query changes nothing, so there is nothing to make durable, and a lost
  // answer is asked for again; through the outbox each answer (up to 50
  // posts) was written, fsynced, read back, parsed and re-serialised. Set
  // once, before traffic; without it answers go through the outbox.
  // `message` is the outcome as the device reads it (no outbox "id").
  using QueryReply = std::function<void(const std::string& device, const std::string& message,
                                        const std::string& traceparent)>;
  void SetQueryReply(QueryReply r) { query_reply_ = std::move(r); }
  // The id of the last message the relay sent a device (OutboxRelay::
  // LastSentTo), named in the answer to its ping as "last": a device that
  // never applied it lost it, and catches up (docs/protocol.md, section 6,
  // "Gaps"). Set once, before traffic; without it pings name none.
  using LastSent = std::function<std::optional<int64_t>(const std::string& device)>;
  void SetLastSent(LastSent f) { last_sent_ = std::move(f); }
  // Claims and acceptances feed surplus_claim_latency_seconds{door="mqtt"}
  // (receipt to commit); the ingest counters are read from stats().
  void SetMetrics(metrics::Registry* registry);

  // `received_at`: when the broker's message reached the hub (IngestPool
  // passes the time it was queued, so the claim latency includes the wait).
  void OnMessage(const std::string& topic, const std::string& payload, const std::string& traceparent,
                 std::chrono::steady_clock::time_point received_at = std::chrono::steady_clock::now());

  struct Stats {
    uint64_t received = 0, accepted = 0, refused = 0, dropped = 0;
    uint64_t queries = 0;  // of the accepted: queries answered (ping, nearby, catchup), not ops applied
  };
  // Counted per op: a batch of n ops is n received.
  Stats stats() const { return {received_, accepted_, refused_, dropped_, queries_}; }

 private:
  // One op, from a lone publish (`topic_type` its topic's type level) or
  // from a batch (`topic_type` empty: any known type).
  void OnEnvelope(const std::string& topic_device, const std::string& topic_type, sync::Envelope env,
                  const std::string& traceparent, std::chrono::steady_clock::time_point received_at);
  // Writes the outcome for `device` (its own transaction).
  void Answer(const std::string& device, const sync::Outcome& outcome,
              const std::string& traceparent);
  void Refuse(const std::string& device, const sync::Envelope& env, Error error,
              const std::string& traceparent);

  // A query: nothing to apply; answered through query_reply_ if set.
  void AnswerNearby(const Device& device, const sync::Envelope& env, const std::string& traceparent);
  void AnswerQuery(const std::string& device, const sync::Outcome& outcome, const std::string& traceparent);
  // An accepted query's answer whose `data` is JSON text already.
  void AnswerQueryData(const std::string& device, const sync::Envelope& env, const std::string& data_json,
                       const std::string& traceparent);
  // `catchup`: the outbox after an id, this device's share of it.
  void AnswerCatchUp(const Device& device, const sync::Envelope& env, const std::string& traceparent);

  HubService& hub_;
  NearbyQuery nearby_;
  QueryReply query_reply_;
  LastSent last_sent_;
  metrics::Histogram* claim_latency_ = nullptr;
  std::atomic<uint64_t> received_{0}, accepted_{0}, refused_{0}, dropped_{0}, queries_{0};
};

// The outbox event that carries an accepted outcome, with the command's result
// JSON as its data; `code` "ok", "duplicate" or "stale" (docs/protocol.md §5).
OutboxEvent AcceptedOutcomeEvent(const std::string& device, const std::string& op, uint64_t seq,
                                 const char* code, const std::string& result_json,
                                 const std::string& traceparent, Timestamp now);
// The outbox event that carries an outcome to a device.
OutboxEvent OutcomeEvent(const std::string& device, const sync::Outcome& outcome,
                         const std::string& traceparent, Timestamp now);

}  // namespace pp
