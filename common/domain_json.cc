#include "common/domain_json.h"

#include <cstdio>

#include "common/time_format.h"

namespace pp {
namespace {

template <typename T, typename F>
nlohmann::json OrNull(const std::optional<T>& v, F f) {
  return v ? nlohmann::json(f(*v)) : nlohmann::json(nullptr);
}
auto Rfc = [](Timestamp t) { return FormatRfc3339(t); };
auto Same = [](auto v) { return v; };

}  // namespace

nlohmann::json ToJson(const Organization& o) {
  return {{"id", o.id},
          {"kind", ToString(o.kind)},
          {"name", o.name},
          {"lat", o.position.lat},
          {"lon", o.position.lon},
          {"created_at", FormatRfc3339(o.created_at)}};
}

// Fields are set one by one into a single object: a braced list of pairs
// builds each pair as a JSON array first and copies it into the object, and
// merging two objects copies every value again. A post's JSON is made on the
// store writer's thread for every op that touches it: ToJson and dump of
// a post took 7.6 us this way against 4.8 now (a scratch loop, 50,000 each).
namespace {

void AddDraftFields(const SurplusDraft& d, nlohmann::json& j) {
  j["provider_id"] = d.provider_id;
  j["category"] = d.category;
  j["description"] = d.description;
  j["quantity_kg"] = OrNull(d.quantity_kg, Same);
  j["portions"] = OrNull(d.portions, Same);
  j["allergens"] = d.allergens;
  j["storage"] = ToString(d.storage);
  j["prepared_at"] = OrNull(d.prepared_at, Rfc);
  j["best_before"] = FormatRfc3339(d.best_before);
  j["pickup_start"] = OrNull(d.pickup_start, Rfc);
  j["pickup_end"] = OrNull(d.pickup_end, Rfc);
  j["instructions"] = d.instructions;
}

void AddStateFields(const Surplus& s, nlohmann::json& j) {
  j["id"] = s.id;
  j["provider_id"] = s.draft.provider_id;
  j["status"] = ToString(s.status);
  j["version"] = s.version;
  j["claimed_by"] = OrNull(s.claimed_by, Same);
  nlohmann::json& offer = j["offer"];  // null unless offered
  if (s.match.offered_to) {
    offer["ngo_id"] = *s.match.offered_to;
    offer["expires_at"] = OrNull(s.match.offer_expires_at, Rfc);
  }
  j["excluded"] = s.match.excluded;
  nlohmann::json& dlq = j["dlq"];  // null unless dead-lettered
  if (s.status == SurplusStatus::kDeadLettered) {
    dlq["attempts"] = s.match.dlq_attempts;
    dlq["next_retry_at"] = OrNull(s.match.next_retry_at, Rfc);
  }
  j["picked_up_kg"] = OrNull(s.picked_up_kg, Same);
  j["updated_at"] = FormatRfc3339(s.updated_at);
}

}  // namespace

nlohmann::json ToJson(const SurplusDraft& d) {
  nlohmann::json j = nlohmann::json::object();
  AddDraftFields(d, j);
  if (d.position) {
    j["lat"] = d.position->lat;
    j["lon"] = d.position->lon;
  }
  return j;
}

nlohmann::json StateJson(const Surplus& s) {
  nlohmann::json j = nlohmann::json::object();
  AddStateFields(s, j);
  return j;
}

nlohmann::json ToJson(const Surplus& s) {
  nlohmann::json j = nlohmann::json::object();
  AddDraftFields(s.draft, j);
  AddStateFields(s, j);
  j["lat"] = s.position.lat;
  j["lon"] = s.position.lon;
  j["created_at"] = FormatRfc3339(s.created_at);
  if (!s.traceparent.empty()) j["traceparent"] = s.traceparent;
  return j;
}

nlohmann::json ToJson(const Vehicle& v) {
  char from[32], to[32];
  std::snprintf(from, sizeof from, "%02d:%02d", v.open_from_min / 60, v.open_from_min % 60);
  std::snprintf(to, sizeof to, "%02d:%02d", v.open_to_min / 60, v.open_to_min % 60);
  return {{"ngo_id", v.ngo_id},       {"lat", v.position.lat},
          {"lon", v.position.lon},    {"free_kg", v.free_kg},
          {"categories", CategoriesOf(v.accepts)},
          {"open_from", from},        {"open_to", to},
          {"online", v.online},       {"at_depot", !v.reported},
          {"updated_at", FormatRfc3339(v.updated_at)}};
}

nlohmann::json ToJson(const Device& d) {
  return {{"id", d.id},           {"role", d.role},       {"org_id", d.org_id},
          {"public_key", d.public_key}, {"revoked", d.revoked}, {"max_seq", d.max_seq},
          {"created_at", FormatRfc3339(d.created_at)}};
}

nlohmann::json ToJson(const HistoryEntry& h) {
  return {{"version", h.version},
          {"at", FormatRfc3339(h.at)},
          {"from", h.from ? nlohmann::json(ToString(*h.from)) : nlohmann::json(nullptr)},
          {"to", ToString(h.to)},
          {"event", h.event},
          {"actor", OrNull(h.actor_org, Same)}};
}

}  // namespace pp
