// Pieces of SQL and row encoding that both SQL backends share, so that the
// two dialects differ only where the databases do.
#pragma once

#include <string>
#include <vector>

#include "common/domain.h"
#include "common/lifecycle.h"

namespace pp::store_sql {

// "'available','offered'" for the statuses `event` may start from.
std::string QuotedSources(SurplusEvent event);

// Allergens are stored as one comma-separated column: they come from a fixed
// vocabulary without commas (common/domain.h) and are never queried singly.
std::string JoinAllergens(const std::vector<std::string>& a);
std::vector<std::string> SplitAllergens(const std::string& s);

// One migration: applied once, in order, recorded in schema_migrations.
struct Migration {
  int version;
  const char* description;
  const char* sql;
};

}  // namespace pp::store_sql
