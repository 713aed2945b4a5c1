#include "common/validation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "common/time_format.h"

namespace pp {

using nlohmann::json;

int JsonDepth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

Result<json> ParseJsonObject(std::string_view text, std::string_view what) {
  // Before parsing: the parsed value is what would be copied and dumped.
  if (JsonDepth(text) > kMaxJsonDepth)
    return Error::Invalid(std::string(what) + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    return Error::Invalid(std::string(what) + " is not valid JSON: error at byte " + std::to_string(e.byte));
  } catch (const json::out_of_range&) {  // 1e999: the parser throws this, not a parse_error
    return Error::Invalid(std::string(what) + " is not valid JSON: a number is out of range");
  }
  if (!j.is_object()) return Error::Invalid(std::string(what) + " must be a JSON object");
  return j;
}

namespace {

// Reads typed fields from one JSON object and collects every problem found.
class FieldReader {
 public:
  FieldReader(const json& obj, std::set<std::string_view> allowed) : obj_(obj) {
    for (const auto& [k, v] : obj.items())
      if (!allowed.count(k)) Fail(k, "unknown field");
  }

  bool Present(const char* name) const {
    auto it = obj_.find(name);
    return it != obj_.end() && !it->is_null();
  }

  std::optional<std::string> String(const char* name, bool required, size_t max_len,
                                    bool allow_empty = false) {
    auto v = Get(name, required);
    if (!v) return std::nullopt;
    if (!v->is_string()) return Fail(name, "must be a string"), std::nullopt;
    const auto& s = v->get_ref<const std::string&>();
    if (!allow_empty && s.empty()) return Fail(name, "must not be empty"), std::nullopt;
    if (s.size() > max_len)
      return Fail(name, "must be at most " + std::to_string(max_len) + " bytes"), std::nullopt;
    return s;
  }

  std::optional<double> Number(const char* name, bool required, double lo, double hi,
                               bool lo_exclusive = false) {
    auto v = Get(name, required);
    if (!v) return std::nullopt;
    if (!v->is_number()) return Fail(name, "must be a number"), std::nullopt;
    double d = v->get<double>();
    if (!std::isfinite(d) || d > hi || d < lo || (lo_exclusive && d == lo)) {
      char buf[120];
      std::snprintf(buf, sizeof buf, "must be %s %g and <= %g", lo_exclusive ? ">" : ">=", lo, hi);
      return Fail(name, buf), std::nullopt;
    }
    return d;
  }

  std::optional<int64_t> Integer(const char* name, bool required, int64_t lo, int64_t hi) {
    auto v = Get(name, required);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) return Fail(name, "must be an integer"), std::nullopt;
    // Unsigned values above int64 max arrive as number_unsigned.
    if (v->is_number_unsigned() && v->get<uint64_t>() > uint64_t(INT64_MAX))
      return Fail(name, "is out of range"), std::nullopt;
    int64_t i = v->get<int64_t>();
    if (i < lo || i > hi)
      return Fail(name, "must be between " + std::to_string(lo) + " and " + std::to_string(hi)),
             std::nullopt;
    return i;
  }

  std::optional<Timestamp> Time(const char* name, bool required) {
    auto s = String(name, required, 64);
    if (!s) return std::nullopt;
    auto t = ParseRfc3339(*s);
    if (!t) Fail(name, "must be an RFC 3339 timestamp with a zone, e.g. 2026-11-24T21:30:00Z");
    return t;
  }

  template <typename T, typename ParseFn>
  std::optional<T> Enum(const char* name, bool required, ParseFn parse, std::string_view choices) {
    auto s = String(name, required, 64);
    if (!s) return std::nullopt;
    auto e = parse(*s);
    if (!e) Fail(name, "must be one of " + std::string(choices));
    return e;
  }

  std::optional<std::vector<std::string>> StringSet(const char* name,
                                                    const std::vector<std::string_view>& vocab) {
    auto v = Get(name, false);
    if (!v) return std::vector<std::string>{};
    if (!v->is_array()) return Fail(name, "must be an array of strings"), std::nullopt;
    std::vector<std::string> out;
    for (size_t i = 0; i < v->size(); ++i) {
      const auto& e = (*v)[i];
      std::string path = std::string(name) + "/" + std::to_string(i);
      if (!e.is_string()) {
        Fail(path, "must be a string");
        continue;
      }
      const auto& s = e.get_ref<const std::string&>();
      if (std::find(vocab.begin(), vocab.end(), s) == vocab.end()) {
        Fail(path, "unknown value \"" + s.substr(0, 40) + "\"; allowed: " + Join(vocab));
        continue;
      }
      if (std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
    }
    std::sort(out.begin(), out.end());
    return out;
  }

  void Fail(std::string field, std::string reason) {
    errors_.push_back({std::move(field), std::move(reason)});
  }

  std::vector<FieldError> TakeErrors() { return std::move(errors_); }
  bool ok() const { return errors_.empty(); }

  static std::string Join(const std::vector<std::string_view>& v) {
    std::string out;
    for (auto s : v) (out += out.empty() ? "" : ", ") += s;
    return out;
  }

 private:
  const json* Get(const char* name, bool required) {
    auto it = obj_.find(name);
    if (it == obj_.end() || it->is_null()) {
      if (required) Fail(name, "is required");
      return nullptr;
    }
    return &*it;
  }

  const json& obj_;
  std::vector<FieldError> errors_;
};

Error FieldErrors(std::vector<FieldError> fields) {
  return Error::Invalid("request has invalid fields", std::move(fields));
}

}  // namespace

Result<NewOrganization> ParseNewOrganization(std::string_view body) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  FieldReader r(j, {"kind", "name", "lat", "lon"});
  NewOrganization o;
  auto kind = r.Enum<OrgKind>("kind", true, ParseOrgKind, "provider, ngo");
  auto name = r.String("name", true, Limits::kNameMax);
  auto lat = r.Number("lat", true, -90, 90);
  auto lon = r.Number("lon", true, -180, 180);
  if (!r.ok()) return FieldErrors(r.TakeErrors());
  o.kind = *kind;
  o.name = *name;
  o.position = {*lat, *lon};
  return o;
}

Result<OrganizationChange> ParseOrganizationChange(std::string_view body) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  FieldReader r(j, {"kind", "name", "lat", "lon"});  // kind: known, and refused below
  if (j.contains("kind")) r.Fail("kind", "cannot be changed: register a new organisation");
  OrganizationChange c;
  c.name = r.String("name", false, Limits::kNameMax);
  auto lat = r.Number("lat", false, -90, 90);
  auto lon = r.Number("lon", false, -180, 180);
  if (r.Present("lat") != r.Present("lon"))
    r.Fail(r.Present("lat") ? "lon" : "lat", "lat and lon must be given together");
  if (r.ok() && !c.name && !lat) r.Fail("body", "nothing to change: give name, or lat and lon");
  if (!r.ok()) return FieldErrors(r.TakeErrors());
  if (lat) c.position = GeoPoint{*lat, *lon};
  return c;
}

Result<SurplusDraft> ParseSurplusDraft(std::string_view body, Timestamp now) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  return ParseSurplusDraftJson(j, now);
}

Result<SurplusDraft> ParseSurplusDraftJson(const nlohmann::json& j, Timestamp now) {
  if (!j.is_object()) return Error::Invalid("body must be a JSON object");
  FieldReader r(j, {"provider_id", "category", "description", "quantity_kg", "portions",
                    "allergens", "storage", "prepared_at", "best_before", "pickup_start",
                    "pickup_end", "instructions", "lat", "lon"});
  SurplusDraft d;
  auto provider = r.Integer("provider_id", true, 1, INT64_MAX);
  auto category = r.Enum<std::string>(
      "category", true,
      [](std::string_view s) -> std::optional<std::string> {
        const auto& c = FoodCategories();
        if (std::find(c.begin(), c.end(), s) == c.end()) return std::nullopt;
        return std::string(s);
      },
      FieldReader::Join(FoodCategories()));
  auto description = r.String("description", true, Limits::kDescriptionMax);
  // Absent or null means unknown; 0 is refused so that it is never mistaken for unknown.
  d.quantity_kg = r.Number("quantity_kg", false, 0, Limits::kQuantityKgMax, /*lo_exclusive=*/true);
  d.portions = r.Integer("portions", false, 1, Limits::kPortionsMax);
  auto allergens = r.StringSet("allergens", Allergens());
  auto storage = r.Enum<Storage>("storage", false, ParseStorage, "hot, chilled, frozen, ambient");
  d.prepared_at = r.Time("prepared_at", false);
  auto best_before = r.Time("best_before", true);
  d.pickup_start = r.Time("pickup_start", false);
  d.pickup_end = r.Time("pickup_end", false);
  auto instructions = r.String("instructions", false, Limits::kInstructionsMax, true);
  bool has_lat = r.Present("lat"), has_lon = r.Present("lon");
  auto lat = r.Number("lat", false, -90, 90);
  auto lon = r.Number("lon", false, -180, 180);
  if (has_lat != has_lon) r.Fail(has_lat ? "lon" : "lat", "lat and lon must be given together");

  using std::chrono::days;
  using std::chrono::minutes;
  if (best_before) {
    if (*best_before <= now) r.Fail("best_before", "must be in the future");
    if (*best_before > now + days(Limits::kBestBeforeMaxDays))
      r.Fail("best_before", "must be within " + std::to_string(Limits::kBestBeforeMaxDays) +
                                " days");
  }
  if (d.prepared_at) {
    if (*d.prepared_at > now + minutes(Limits::kClockSkewMinutes))
      r.Fail("prepared_at", "must not be in the future");
    if (best_before && *d.prepared_at >= *best_before)
      r.Fail("prepared_at", "must be before best_before");
  }
  if (d.pickup_start.has_value() != d.pickup_end.has_value())
    r.Fail(d.pickup_start ? "pickup_end" : "pickup_start",
           "pickup_start and pickup_end must be given together");
  if (d.pickup_start && d.pickup_end) {
    if (*d.pickup_end <= *d.pickup_start) r.Fail("pickup_end", "must be after pickup_start");
    if (best_before && *d.pickup_start >= *best_before)
      r.Fail("pickup_start", "must be before best_before");
  }
  if (!r.ok()) return FieldErrors(r.TakeErrors());

  d.provider_id = *provider;
  d.category = *category;
  d.description = *description;
  d.allergens = std::move(*allergens);
  d.storage = storage.value_or(Storage::kAmbient);
  d.best_before = *best_before;
  d.instructions = instructions.value_or("");
  if (lat && lon) d.position = GeoPoint{*lat, *lon};
  return d;
}

Result<ClaimRequest> ParseClaimRequest(std::string_view body) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  FieldReader r(j, {"ngo_id", "version"});
  auto ngo = r.Integer("ngo_id", true, 1, INT64_MAX);
  auto version = r.Integer("version", true, 1, INT64_MAX);
  if (!r.ok()) return FieldErrors(r.TakeErrors());
  return ClaimRequest{*ngo, *version};
}

Result<PickUpRequest> ParsePickUpRequestJson(const json& body, int64_t ngo) {
  if (!body.is_object()) return Error::Invalid("body must be a JSON object");
  std::set<std::string_view> allowed{"handover_code", "actual_kg"};
  if (ngo == 0) allowed.insert("ngo_id");
  FieldReader r(body, allowed);
  auto ngo_id = ngo == 0 ? r.Integer("ngo_id", true, 1, INT64_MAX) : std::optional<int64_t>(ngo);
  auto code = r.String("handover_code", true, 16);
  auto kg = r.Number("actual_kg", true, 0, Limits::kQuantityKgMax, true);
  if (!r.ok()) return FieldErrors(r.TakeErrors());
  return PickUpRequest{*ngo_id, *code, *kg};
}

Result<PickUpRequest> ParsePickUpRequest(std::string_view body) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  return ParsePickUpRequestJson(j);
}

Result<int64_t> ParseNgoRequest(std::string_view body) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  FieldReader r(j, {"ngo_id"});
  auto ngo = r.Integer("ngo_id", true, 1, INT64_MAX);
  if (!r.ok()) return FieldErrors(r.TakeErrors());
  return *ngo;
}

namespace {
// "HH:MM" -> minutes of the day.
std::optional<int> ParseHhMm(const std::string& s) {
  if (s.size() != 5 || s[2] != ':') return std::nullopt;
  auto digit = [&](int i) { return s[i] >= '0' && s[i] <= '9' ? s[i] - '0' : -100; };
  int h = digit(0) * 10 + digit(1), m = digit(3) * 10 + digit(4);
  if (h < 0 || h > 23 || m < 0 || m > 59) return std::nullopt;
  return h * 60 + m;
}
}  // namespace

Result<Vehicle> ParseVehicleUpdate(std::string_view body, Vehicle v, Timestamp now) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(body, "body"));
  FieldReader r(j, {"lat", "lon", "free_kg", "categories", "open_from", "open_to", "online"});
  bool has_lat = r.Present("lat"), has_lon = r.Present("lon");
  auto lat = r.Number("lat", false, -90, 90);
  auto lon = r.Number("lon", false, -180, 180);
  if (has_lat != has_lon) r.Fail(has_lat ? "lon" : "lat", "lat and lon must be given together");
  auto free_kg = r.Number("free_kg", false, 0, Limits::kQuantityKgMax);
  std::optional<std::vector<std::string>> categories;
  if (r.Present("categories")) categories = r.StringSet("categories", FoodCategories());
  std::optional<int> from, to;
  for (auto [name, out] : {std::pair{"open_from", &from}, std::pair{"open_to", &to}}) {
    auto s = r.String(name, false, 5);
    if (!s) continue;
    *out = ParseHhMm(*s);
    if (!*out) r.Fail(name, "must be a UTC time of day HH:MM");
  }
  if (from.has_value() != to.has_value())
    r.Fail(from ? "open_to" : "open_from", "open_from and open_to must be given together");
  std::optional<bool> online;
  if (r.Present("online")) {
    if (!j["online"].is_boolean()) r.Fail("online", "must be true or false");
    else online = j["online"].get<bool>();
  }
  if (!r.ok()) return FieldErrors(r.TakeErrors());
  if (lat && lon) {
    v.position = {*lat, *lon};
    v.reported = true;  // no longer at the depot
  }
  if (free_kg) v.free_kg = *free_kg;
  if (categories) v.accepts = CategoryMaskOf(*categories);
  if (from && to) v.open_from_min = *from, v.open_to_min = *to;
  if (online) v.online = *online;
  v.updated_at = now;
  return v;
}

std::string Fingerprint(std::string_view canonical) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64 offset basis
  for (unsigned char c : canonical) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace pp
