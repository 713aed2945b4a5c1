#include "common/vehicle.h"

#include <algorithm>

namespace pp {

CategoryMask CategoryBit(std::string_view category) {
  const auto& all = FoodCategories();
  auto it = std::find(all.begin(), all.end(), category);
  return it == all.end() ? 0 : CategoryMask(1u << (it - all.begin()));
}

CategoryMask CategoryMaskOf(const std::vector<std::string>& categories) {
  if (categories.empty()) return kAllCategories;
  CategoryMask m = 0;
  for (const auto& c : categories) m |= CategoryBit(c);
  return m;
}

std::vector<std::string> CategoriesOf(CategoryMask mask) {
  std::vector<std::string> out;
  const auto& all = FoodCategories();
  for (size_t i = 0; i < all.size(); ++i)
    if (mask & (1u << i)) out.emplace_back(all[i]);
  return out;
}

bool Vehicle::OpenAt(Timestamp t) const {
  if (open_from_min == open_to_min) return true;
  auto day = std::chrono::floor<std::chrono::days>(t);
  int m = int(std::chrono::duration_cast<std::chrono::minutes>(t - day).count());
  if (open_from_min < open_to_min) return m >= open_from_min && m < open_to_min;
  return m >= open_from_min || m < open_to_min;  // wraps past midnight
}

bool Vehicle::Silent(Timestamp now) const {
  return !report_device.empty() && now - updated_at > kTabletSilentAfter;
}

}  // namespace pp
