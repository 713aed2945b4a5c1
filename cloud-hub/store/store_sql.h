// Pieces of SQL and row encoding that both SQL backends share, so that the
// two dialects differ only where the databases do.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cloud-hub/store/store.h"
#include "common/domain.h"
#include "common/lifecycle.h"

namespace pp::store_sql {

// "'available','offered'" for the statuses `event` may start from.
std::string QuotedSources(SurplusEvent event);

// Allergens are stored as one comma-separated column: they come from a fixed
// vocabulary without commas (common/domain.h) and are never queried singly.
std::string JoinAllergens(const std::vector<std::string>& a);
std::vector<std::string> SplitAllergens(const std::string& s);

// The surplus columns in the order every backend selects and decodes them.
constexpr const char* kSurplusColumns =
    "id, provider_id, category, description, quantity_kg, portions, allergens, storage, "
    "prepared_at, best_before, pickup_start, pickup_end, instructions, lat, lon, status, version, "
    "claimed_by, created_at, updated_at, offered_to, offer_expires_at, excluded, dlq_attempts, "
    "next_retry_at, handover_code, picked_up_kg, traceparent";

// The operator's list (SurplusFilter) as one statement with every filter
// optional (NULL = no filter), so both backends prepare it once. Parameters
// in order: after_id, statuses (comma-joined, '' = all), provider_id,
// ngo_id, from, to, by_updated_at (0/1), min_lat, max_lat, min_lon,
// max_lon, limit. `p` is the placeholder style.
std::string FindSurplusSql(char p);
// The filter's values that are not plain fields, in the statement's terms.
struct FindArgs {
  std::string statuses;  // comma-joined
  std::optional<double> min_lat, max_lat, min_lon, max_lon;
};
FindArgs FindSurplusArgs(const SurplusFilter& f);

// SELECT id of due work (see DueQuery); `p` is the placeholder style:
// "?" for SQLite ("?1" style), "$" for PostgreSQL.
std::string DueSql(char p);

std::string JoinIds(const std::vector<int64_t>& ids);
std::vector<int64_t> SplitIds(const std::string& s);

// One migration: applied once, in order, recorded in schema_migrations.
struct Migration {
  int version;
  const char* description;
  const char* sql;
};

}  // namespace pp::store_sql
