#include "common/impact.h"

#include <map>

#include "common/time_format.h"

namespace pp {

double DeliveredKg(const Surplus& s) {
  return s.picked_up_kg.value_or(s.draft.quantity_kg.value_or(0));
}

std::vector<ImpactRow> Impact(const std::vector<Surplus>& delivered, ImpactBy by,
                              const ImpactOptions& options) {
  std::map<std::string, ImpactRow> rows;
  for (const auto& s : delivered) {
    std::string key;
    switch (by) {
      case ImpactBy::kDay: key = FormatRfc3339(s.updated_at).substr(0, 10); break;
      case ImpactBy::kMonth: key = FormatRfc3339(s.updated_at).substr(0, 7); break;
      case ImpactBy::kProvider: key = std::to_string(s.draft.provider_id); break;
      case ImpactBy::kNgo: key = s.claimed_by ? std::to_string(*s.claimed_by) : "none"; break;
    }
    auto& row = rows[key];
    row.key = key;
    row.posts++;
    row.kg += DeliveredKg(s);
  }
  std::vector<ImpactRow> out;
  for (auto& [key, row] : rows) {
    row.meals = row.kg * 1000.0 / options.grams_per_meal;
    row.co2e_kg = row.kg * options.co2e_kg_per_kg;
    out.push_back(row);
  }
  return out;
}

}  // namespace pp
