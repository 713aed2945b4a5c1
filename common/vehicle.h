// An NGO's vehicle as matching sees it, and the eligibility rule. Pure.
//
// One vehicle per NGO (its tablet): the vehicle's id is the NGO's id. Until
// the tablet reports, the vehicle stands at the NGO's depot.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/domain.h"

namespace pp {

// Bit i set: accepts FoodCategories()[i]. 0 is never stored: "accepts
// everything" is all bits.
using CategoryMask = uint16_t;
constexpr CategoryMask kAllCategories = 0xffff;
// The bit of a category name, 0 if unknown.
CategoryMask CategoryBit(std::string_view category);
CategoryMask CategoryMaskOf(const std::vector<std::string>& categories);
std::vector<std::string> CategoriesOf(CategoryMask mask);

struct Vehicle {
  int64_t ngo_id = 0;
  GeoPoint position;
  double free_kg = 500;  // free capacity now
  CategoryMask accepts = kAllCategories;
  // Operating hours as UTC minutes of the day, [open_from, open_to); equal
  // means always open. A window may wrap past midnight (22:00-06:00).
  int open_from_min = 0;
  int open_to_min = 0;
  bool online = true;
  bool reported = false;  // false: still placed at the depot
  Timestamp updated_at{};
  // Which tablet's report this is, and that report's sequence number (empty
  // and 0 when set over HTTP). Hub replicas may apply one tablet's reports
  // out of order (the broker deals its messages to either); an older report
  // of the same tablet then finds a newer one standing and leaves it.
  std::string report_device;
  uint64_t report_seq = 0;

  bool OpenAt(Timestamp t) const;
  // Whether its tablet has gone silent: reported before, and not heard
  // from for longer than kTabletSilentAfter. A vehicle kept over HTTP
  // (no report_device) has no tablet to fall silent.
  bool Silent(Timestamp now) const;
};

// A tablet that drove into a dead zone, or whose battery died, cannot see
// an offer: offered a post, it would only wait out the offer's timeout
// (5 minutes) while the food cools, and so again for the next post near
// it. pp-agent reports its vehicle at least every kTabletReportEvery while
// the hub listens, so silence longer than kTabletSilentAfter is three
// reports missed. Its next report makes it eligible again.
constexpr Duration kTabletReportEvery{std::chrono::minutes(5)};
constexpr Duration kTabletSilentAfter{std::chrono::minutes(15)};

// What a post needs from a vehicle.
struct Need {
  CategoryMask category = 0;
  std::optional<double> kg;  // unknown weight: any free capacity will do
  // When the van must be there by: best_before, or the end of the post's
  // pickup window if that comes first — later, the kitchen has closed or
  // the food has gone (SurplusDraft::ArriveBy).
  Timestamp arrive_by{};
};

// Eligible = online and not silent, accepts the category, has the capacity,
// is open now, and arrives (now + eta) before arrive_by. Exclusion is
// checked by the caller.
inline bool IsEligible(const Vehicle& v, const Need& need, Timestamp now, double eta_seconds) {
  return v.online && !v.Silent(now) && (v.accepts & need.category) && v.free_kg > 0 &&
         (!need.kg || v.free_kg >= *need.kg) && v.OpenAt(now) &&
         now + std::chrono::milliseconds(int64_t(eta_seconds * 1000)) < need.arrive_by;
}

}  // namespace pp
