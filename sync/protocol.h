// The edge<->hub protocol both sides link: topics, the signed envelope of a
// device operation, and the messages the hub sends down. Specified for
// third parties in docs/protocol.md.
//
// An operation travels up as an Envelope signed with the device's Ed25519
// key over CanonicalBytes(): the signature covers every field, so neither a
// broker nor another device can alter or re-attribute it. The hub answers
// every operation with an Outcome on the device's down topic, and pushes
// Events (offers, claims, ...) there too; both carry an id the device uses to
// drop duplicates (QoS 1 may deliver twice).
//
// Thread safety: plain functions and values.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace pp::sync {

constexpr int kProtocolVersion = 1;
constexpr size_t kMaxMessageBytes = 64 * 1024;  // also the broker's max_packet_size

// Topics.
std::string UpTopic(std::string_view device, std::string_view type);  // pp/v1/up/{device}/{type}
std::string DownTopic(std::string_view device);                       // pp/v1/down/{device}
constexpr const char* kHubSubscription = "$share/hub/pp/v1/up/#";
// "pp/v1/up/kiosk-7/post_surplus" -> {"kiosk-7", "post_surplus"}
std::optional<std::pair<std::string, std::string>> ParseUpTopic(std::string_view topic);

// Device ids double as broker user names and topic levels: 1-64 of
// [A-Za-z0-9_.-] (no MQTT wildcards or separators).
bool ValidDeviceId(std::string_view id);

// Operation types a device may send.
constexpr const char* kOpPostSurplus = "post_surplus";  // body: a surplus draft (provider = the device's org)
constexpr const char* kOpClaim = "claim";               // body: {"surplus_id","version"}
constexpr const char* kOpAccept = "accept";             // body: {"surplus_id"}
constexpr const char* kOpDecline = "decline";           // body: {"surplus_id"}
constexpr const char* kOpRelease = "release";           // body: {"surplus_id"}: the claimer drops out
constexpr const char* kOpVehicle = "vehicle";           // body: a vehicle report
constexpr const char* kOpPickUp = "pickup";             // body: {"surplus_id","handover_code","actual_kg"}
constexpr const char* kOpDeliver = "deliver";           // body: {"surplus_id"}
// Queries, not changes, answered in the outcome: the hub's time (a device
// sends it on connecting, to learn the hub clock from the answer's "ts"),
// and open posts near a point.
constexpr const char* kOpPing = "ping";                 // body: {}
constexpr const char* kOpNearby = "nearby";             // body: {"lat","lon","km"}
// What the hub sent this device after outbox id "after", in pages: for a
// device that may have missed down messages (see docs/protocol.md, "Catch-up").
constexpr const char* kOpCatchUp = "catchup";           // body: {"after"}
bool KnownOpType(std::string_view type);

using PublicKey = std::array<unsigned char, 32>;
using SecretKey = std::array<unsigned char, 64>;
struct KeyPair {
  PublicKey public_key;
  SecretKey secret_key;
};
KeyPair GenerateKeyPair();
std::string ToBase64(const unsigned char* data, size_t n);
template <size_t N>
std::string ToBase64(const std::array<unsigned char, N>& a) {
  return ToBase64(a.data(), N);
}
Result<PublicKey> PublicKeyFromBase64(std::string_view b64);
// A key a device may be registered with: the canonical encoding of a point
// of Ed25519's prime-order subgroup, as every real key pair's is. 32 bytes
// that are not (a small-order point, one off the curve) could never verify a
// signature, so registration refuses them rather than leave a device whose
// every op is "bad signature". Too slow (a scalar multiplication) to run per
// message: registration checks it once.
bool IsDevicePublicKey(const PublicKey& key);
Result<SecretKey> SecretKeyFromBase64(std::string_view b64);

struct Envelope {
  int v = kProtocolVersion;
  std::string device;
  uint64_t seq = 0;           // per device, increasing; bounds how old a replay may be
  std::string op;             // op id (UUID-like): the idempotency key
  std::string type;           // one of the kOp* types
  int64_t ts_ms = 0;          // device clock, informational only (never trusted)
  nlohmann::json body = nlohmann::json::object();
  std::string sig;            // base64 Ed25519 signature of CanonicalBytes()
};

// "pp1\n{device}\n{seq}\n{op}\n{type}\n{ts}\n{body as compact JSON, keys sorted}"
std::string CanonicalBytes(const Envelope& e);
void Sign(Envelope& e, const SecretKey& key);
// An op's envelope, signed: what a device sends. `ts_ms` is the device's
// clock (informational; the hub never trusts it).
Envelope Sealed(std::string device, uint64_t seq, std::string op, std::string type, nlohmann::json body,
                int64_t ts_ms, const SecretKey& key);
bool Verify(const Envelope& e, const PublicKey& key);
// The same, with the body's compact JSON (`e.body.dump()`) already made by
// the caller: the hub needs it again for the op's fingerprint, and a dump
// of the body is a few µs of every op's ingest.
bool Verify(const Envelope& e, std::string_view body_json, const PublicKey& key);

std::string Encode(const Envelope& e);
// Strict: size, JSON shape, field types, version, id syntax. Names what is wrong.
Result<Envelope> Decode(std::string_view bytes);
// The same checks on an envelope already parsed (an element of a batch).
Result<Envelope> DecodeJson(nlohmann::json j);  // by value: the body is moved out, not copied

// Several queued ops of one device in one MQTT publish, on the topic
// pp/v1/up/{device}/batch: {"v":1,"kind":"batch","ops":[{"env":E,"tp":T},...]}
// with each E exactly the signed envelope a lone publish would carry (so
// each op keeps its own signature, sequence number and op id) and T its
// traceparent (omitted when none), in sequence order. A device whose queue
// holds several ops sends them together: under load each MQTT message
// costs the device, the broker and the hub far more than its bytes
// (docs/benchmarks.md, "Session 21").
constexpr const char* kUpBatch = "batch";          // the topic's type level for a batch
constexpr size_t kMaxUpBatchOps = 64;
// `envelopes` are Encode()d JSON texts, spliced in; `traceparents` has one
// entry per envelope ("" for none).
std::string EncodeUpBatch(const std::vector<std::string_view>& envelopes,
                          const std::vector<std::string_view>& traceparents);
// The bytes EncodeUpBatch adds to its envelopes and traceparents.
constexpr size_t UpBatchOverhead(size_t n) { return 48 + n * 24; }
// One element of a batch: its envelope, or what is wrong with it.
struct UpBatchItem {
  Result<Envelope> env;
  std::string traceparent;
};
// Fails as a whole (naming what is wrong) when the payload is too large, not
// a JSON object of that shape, empty, or holds more than kMaxUpBatchOps;
// otherwise an element that is malformed fails alone.
Result<std::vector<UpBatchItem>> DecodeUpBatch(std::string_view payload);

// The hub's answer to one operation.
enum class OutcomeStatus { kAccepted, kConflict, kRejected };
std::string_view ToString(OutcomeStatus s);

struct Outcome {
  std::string op;
  uint64_t seq = 0;
  OutcomeStatus status = OutcomeStatus::kAccepted;
  std::string code;     // machine-readable; "ok" when accepted (see docs/protocol.md)
  std::string message;  // for a person
  nlohmann::json data;  // accepted: the result; conflict: the current state; rejected: field errors
};

// Down messages: {"v":1,"kind":"outcome"|"event","id":N,...}. `id` is the
// hub's outbox event id, unique and increasing: receivers drop repeats.
nlohmann::json OutcomeJson(const Outcome& o);
// Maps an Error to the outcome a device sees.
Outcome OutcomeFor(const Envelope& e, const Error& error);

// Several down messages for one device in one MQTT publish:
// {"v":1,"kind":"batch","messages":[m1,m2,...]}, each mi exactly as it would
// be published alone, in outbox order. The relay sends one when a page holds
// more than one message for a device (an op's outcome and the event it
// caused, say): each MQTT message costs the broker, the hub and the device
// far more than its bytes. `messages` are JSON texts; the result is at most
// kMaxBatchBytes when their sizes plus BatchOverhead(n) are.
//
// `prev` (when > 0) is the id of the last message of the hub's previous
// publish to the same device: a device that has not applied it lost
// messages between the two (a broker queue over max_queued_messages, say)
// and catches up (docs/protocol.md, section 6, "Gaps"). A lone message
// carries it as a field of its own (WithPrev), a batch on the batch.
std::string EncodeDownBatch(const std::vector<std::string_view>& messages, int64_t prev = 0);
std::string WithPrev(std::string_view message, int64_t prev);
constexpr size_t BatchOverhead(size_t n) { return 64 + n; }  // with a 19-digit prev
// The broker's max_packet_size counts the whole MQTT packet: leave room for
// the topic, the traceparent property and the headers (a batch of exactly
// kMaxMessageBytes made mosquitto drop the hub's connection, page after page).
constexpr size_t kMaxBatchBytes = kMaxMessageBytes - 4096;
// Cuts one device's messages, given their sizes in order, into publishes
// of at most `limit` bytes once batched: [first, last) index ranges, in
// order, covering all of them. A message too large to share goes alone.
std::vector<std::pair<size_t, size_t>> CutIntoBatches(const std::vector<size_t>& sizes,
                                                      size_t limit = kMaxBatchBytes);
// What one down publish carries: itself or a batch's elements, and the
// `prev` it names (0: none). Fails, naming what is wrong, if the payload is
// not a JSON object, a batch's `messages` is not an array of objects, or
// `prev` is not a positive integer.
struct DownPublish {
  std::vector<nlohmann::json> messages;
  int64_t prev = 0;
};
Result<DownPublish> DecodeDown(std::string_view payload);

}  // namespace pp::sync
