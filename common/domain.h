// The domain vocabulary: organisations, surplus posts and their history.
// Plain values, no I/O. Storage and the wire formats are elsewhere
// (cloud-hub/store, common/domain_json).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"

namespace pp {

struct GeoPoint {
  double lat = 0;
  double lon = 0;
  bool operator==(const GeoPoint&) const = default;
};

enum class OrgKind { kProvider, kNgo };

struct Organization {
  int64_t id = 0;
  OrgKind kind = OrgKind::kProvider;
  std::string name;
  GeoPoint position;  // kiosk for a provider, depot for an NGO
  Timestamp created_at{};
};

enum class Storage { kHot, kChilled, kFrozen, kAmbient };

// The surplus lifecycle; transitions are the table in common/lifecycle.h.
enum class SurplusStatus {
  kAvailable,
  kOffered,
  kClaimed,
  kPickedUp,
  kDelivered,
  kExpired,
  kCancelled,
  kDeadLettered,
};

// What a provider posts. Quantities are optional on purpose: a kiosk may not
// know the weight, and "unknown" must never be read as 0 kg.
struct SurplusDraft {
  int64_t provider_id = 0;
  std::string category;
  std::string description;
  std::optional<double> quantity_kg;
  std::optional<int64_t> portions;
  std::vector<std::string> allergens;
  Storage storage = Storage::kAmbient;
  std::optional<Timestamp> prepared_at;
  Timestamp best_before{};
  std::optional<Timestamp> pickup_start;
  std::optional<Timestamp> pickup_end;
  std::string instructions;  // on-arrival instructions for the driver
  std::optional<GeoPoint> position;  // defaults to the provider's

  // When a driver must be there by: best_before, or the end of the pickup
  // window if that comes first (the kitchen closes, or the food goes).
  Timestamp ArriveBy() const { return pickup_end ? std::min(best_before, *pickup_end) : best_before; }
};

// Where a post stands in the offer cascade (issue 3). Kept in the store with
// the post, so that any hub replica can pick up what is due.
struct MatchState {
  std::optional<int64_t> offered_to;          // the NGO holding the current offer
  std::optional<Timestamp> offer_expires_at;  // its answer deadline
  std::vector<int64_t> excluded;              // NGOs that declined or timed out
  int dlq_attempts = 0;                       // re-matches tried from the DLQ
  std::optional<Timestamp> next_retry_at;     // next DLQ re-match; none: waits for an operator
  bool operator==(const MatchState&) const = default;
};

struct Surplus {
  int64_t id = 0;
  SurplusDraft draft;
  GeoPoint position;  // resolved: the draft's or the provider's
  SurplusStatus status = SurplusStatus::kAvailable;
  int64_t version = 1;  // the optimistic lock; +1 on every change
  std::optional<int64_t> claimed_by;
  MatchState match;
  // Set when the post is claimed: the provider tells it to the driver on
  // arrival, and the driver's pickup must carry it (proof of presence).
  // Never shown to the NGO by the hub.
  std::string handover_code;
  std::optional<double> picked_up_kg;  // what the driver actually took
  // The W3C trace the post was created in (common/trace.h): its events carry
  // it, so one grep follows the food from kiosk to tablet. May be empty.
  std::string traceparent;
  Timestamp created_at{};
  Timestamp updated_at{};
};

// One line of a post's audit trail: the change that produced `version`.
struct HistoryEntry {
  int64_t surplus_id = 0;
  int64_t version = 0;
  Timestamp at{};
  std::optional<SurplusStatus> from;  // nullopt for creation
  SurplusStatus to = SurplusStatus::kAvailable;
  std::string event;                  // lifecycle event name, e.g. "claim"
  std::optional<int64_t> actor_org;
};

// An event written in the same transaction as the change it announces, and
// relayed later (transactional outbox).
struct OutboxEvent {
  int64_t id = 0;  // assigned by the store; ordering key
  std::string type;  // "surplus.posted", "surplus.claimed", ...
  int64_t aggregate_id = 0;
  std::string payload_json;
  Timestamp created_at{};
  std::optional<Timestamp> sent_at;
};

// The first result of an operation, kept so that a retry with the same key
// gets the same answer and has no second effect.
struct IdempotencyRecord {
  std::string scope;  // who and what: "surplus.post/provider:12"
  std::string key;    // client-chosen
  std::string fingerprint;  // of the request; a different request may not reuse the key
  std::string result_json;
  Timestamp created_at{};
};

// A registered kiosk or tablet. Its Ed25519 public key verifies every
// operation it sends; its organisation is who it acts for (never taken from
// the message itself).
struct Device {
  std::string id;
  std::string role;  // "kiosk" (a provider's) or "tablet" (an NGO's)
  int64_t org_id = 0;
  std::string public_key;  // base64, 32 bytes
  bool revoked = false;
  uint64_t max_seq = 0;  // highest sequence number accepted
  Timestamp created_at{};
};

// Enum <-> wire name. Parse functions return nullopt for unknown names.
std::string_view ToString(OrgKind k);
std::string_view ToString(Storage s);
std::string_view ToString(SurplusStatus s);
std::optional<OrgKind> ParseOrgKind(std::string_view s);
std::optional<Storage> ParseStorage(std::string_view s);
std::optional<SurplusStatus> ParseSurplusStatus(std::string_view s);

// Fixed vocabularies, so matching can rely on them.
const std::vector<std::string_view>& FoodCategories();
// The 14 allergens UK law requires to be declared (FSA).
const std::vector<std::string_view>& Allergens();

}  // namespace pp
