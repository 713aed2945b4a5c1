// What the food rescued amounts to: kilograms delivered, the meals they
// make and the emissions avoided, grouped by day, month or partner. Pure
// functions over delivered posts; the hub feeds them from the store.
#pragma once

#include <string>
#include <vector>

#include "common/domain.h"

namespace pp {

struct ImpactOptions {
  // WRAP's conversion for redistributed surplus food: one meal = 420 g.
  double grams_per_meal = 420;
  // kg CO2e avoided per kg of food not wasted. The default, 2.5, is an
  // order-of-magnitude figure for UK food waste; set your methodology's
  // (docs/operations.md, "Impact").
  double co2e_kg_per_kg = 2.5;
};

enum class ImpactBy { kDay, kMonth, kProvider, kNgo };

struct ImpactRow {
  std::string key;  // "2026-11-24", "2026-11", or the organisation id
  int64_t posts = 0;
  double kg = 0;
  double meals = 0;
  double co2e_kg = 0;
};

// The weight a delivered post counts for: what was picked up, else what
// was posted, else 0 (unknown is never guessed).
double DeliveredKg(const Surplus& s);

// One row per key, in key order; the day/month of a post is when it was
// delivered (updated_at, UTC).
std::vector<ImpactRow> Impact(const std::vector<Surplus>& delivered, ImpactBy by,
                              const ImpactOptions& options);

}  // namespace pp
