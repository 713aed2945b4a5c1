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

nlohmann::json ToJson(const SurplusDraft& d) {
  nlohmann::json j{{"provider_id", d.provider_id},
                   {"category", d.category},
                   {"description", d.description},
                   {"quantity_kg", OrNull(d.quantity_kg, Same)},
                   {"portions", OrNull(d.portions, Same)},
                   {"allergens", d.allergens},
                   {"storage", ToString(d.storage)},
                   {"prepared_at", OrNull(d.prepared_at, Rfc)},
                   {"best_before", FormatRfc3339(d.best_before)},
                   {"pickup_start", OrNull(d.pickup_start, Rfc)},
                   {"pickup_end", OrNull(d.pickup_end, Rfc)},
                   {"instructions", d.instructions}};
  if (d.position) {
    j["lat"] = d.position->lat;
    j["lon"] = d.position->lon;
  }
  return j;
}

nlohmann::json StateJson(const Surplus& s) {
  nlohmann::json offer = nullptr, dlq = nullptr;
  if (s.match.offered_to)
    offer = {{"ngo_id", *s.match.offered_to},
             {"expires_at", OrNull(s.match.offer_expires_at, Rfc)}};
  if (s.status == SurplusStatus::kDeadLettered)
    dlq = {{"attempts", s.match.dlq_attempts},
           {"next_retry_at", OrNull(s.match.next_retry_at, Rfc)}};
  return {{"id", s.id},
          {"provider_id", s.draft.provider_id},
          {"status", ToString(s.status)},
          {"version", s.version},
          {"claimed_by", OrNull(s.claimed_by, Same)},
          {"offer", offer},
          {"excluded", s.match.excluded},
          {"dlq", dlq},
          {"picked_up_kg", OrNull(s.picked_up_kg, Same)},
          {"updated_at", FormatRfc3339(s.updated_at)}};
}

nlohmann::json ToJson(const Surplus& s) {
  nlohmann::json j = ToJson(s.draft);
  j.update(StateJson(s));
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
