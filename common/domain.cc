#include "common/domain.h"

#include <algorithm>
#include <array>
#include <utility>

namespace pp {
namespace {

template <typename E, size_t N>
using NameTable = std::array<std::pair<E, std::string_view>, N>;

constexpr NameTable<OrgKind, 2> kOrgKinds{{{OrgKind::kProvider, "provider"}, {OrgKind::kNgo, "ngo"}}};

constexpr NameTable<Storage, 4> kStorages{{{Storage::kHot, "hot"},
                                           {Storage::kChilled, "chilled"},
                                           {Storage::kFrozen, "frozen"},
                                           {Storage::kAmbient, "ambient"}}};

constexpr NameTable<SurplusStatus, 8> kStatuses{{{SurplusStatus::kAvailable, "available"},
                                                 {SurplusStatus::kOffered, "offered"},
                                                 {SurplusStatus::kClaimed, "claimed"},
                                                 {SurplusStatus::kPickedUp, "picked_up"},
                                                 {SurplusStatus::kDelivered, "delivered"},
                                                 {SurplusStatus::kExpired, "expired"},
                                                 {SurplusStatus::kCancelled, "cancelled"},
                                                 {SurplusStatus::kDeadLettered, "dead_lettered"}}};

template <typename E, size_t N>
std::string_view NameOf(const NameTable<E, N>& t, E e) {
  for (const auto& [v, n] : t)
    if (v == e) return n;
  return "?";
}

template <typename E, size_t N>
std::optional<E> ValueOf(const NameTable<E, N>& t, std::string_view s) {
  for (const auto& [v, n] : t)
    if (n == s) return v;
  return std::nullopt;
}

}  // namespace

std::string_view ToString(OrgKind k) { return NameOf(kOrgKinds, k); }
std::string_view ToString(Storage s) { return NameOf(kStorages, s); }
std::string_view ToString(SurplusStatus s) { return NameOf(kStatuses, s); }
std::optional<OrgKind> ParseOrgKind(std::string_view s) { return ValueOf(kOrgKinds, s); }
std::optional<Storage> ParseStorage(std::string_view s) { return ValueOf(kStorages, s); }
std::optional<SurplusStatus> ParseSurplusStatus(std::string_view s) {
  return ValueOf(kStatuses, s);
}

const std::vector<std::string_view>& FoodCategories() {
  static const std::vector<std::string_view> v{"prepared_meals", "bakery",    "produce",
                                               "dairy",          "meat_fish", "dry_goods",
                                               "beverages",      "other"};
  return v;
}

const std::vector<std::string_view>& Allergens() {
  static const std::vector<std::string_view> v{
      "celery",  "cereals_gluten", "crustaceans", "eggs",    "fish",   "lupin",  "milk",
      "molluscs", "mustard",       "nuts",        "peanuts", "sesame", "soya",   "sulphites"};
  return v;
}

}  // namespace pp
