#include "firmware-cfg/device_config.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/domain_json.h"
#include "common/validation.h"
#include "sync/protocol.h"

namespace pp {
namespace {

using nlohmann::json;

// Collects every problem rather than stopping at the first.
class Checker {
 public:
  explicit Checker(std::string base_dir) : base_(std::move(base_dir)) {}

  void Fail(std::string field, std::string reason) {
    bad_.push_back({std::move(field), std::move(reason)});
  }
  bool ok() const { return bad_.empty(); }
  std::vector<FieldError> Take() { return std::move(bad_); }

  const json* Get(const json& obj, const std::string& path, const char* key, bool required) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      if (required) Fail(path + key, "is required");
      return nullptr;
    }
    return &*it;
  }
  std::optional<std::string> String(const json& obj, const std::string& path, const char* key,
                                    bool required) {
    const json* v = Get(obj, path, key, required);
    if (!v) return std::nullopt;
    if (!v->is_string() || v->get_ref<const std::string&>().empty())
      return Fail(path + key, "must be a non-empty string"), std::nullopt;
    return v->get<std::string>();
  }
  std::optional<double> Number(const json& obj, const std::string& path, const char* key,
                               double lo, double hi) {
    const json* v = Get(obj, path, key, false);
    if (!v) return std::nullopt;
    if (!v->is_number() || v->get<double>() < lo || v->get<double>() > hi) {
      std::ostringstream msg;
      msg << "must be a number from " << lo << " to " << hi;
      return Fail(path + key, msg.str()), std::nullopt;
    }
    return v->get<double>();
  }
  // A file the agent reads: resolved against the config's directory.
  std::string File(const std::string& field, const std::string& value, bool must_exist) {
    std::filesystem::path p(value);
    if (p.is_relative()) p = std::filesystem::path(base_) / p;
    if (must_exist && access(p.c_str(), R_OK) != 0)
      Fail(field, "cannot read " + p.string());
    if (!must_exist && !std::filesystem::is_directory(p.parent_path()))
      Fail(field, "directory " + p.parent_path().string() + " does not exist");
    return p.string();
  }
  void OnlyKeys(const json& obj, const std::string& path, std::set<std::string> allowed) {
    for (const auto& [k, v] : obj.items())
      if (!allowed.count(k)) Fail(path + k, "unknown key");
  }

 private:
  std::string base_;
  std::vector<FieldError> bad_;
};

bool ValidHhMm(const std::string& s) {
  return s.size() == 5 && s[2] == ':' && isdigit(s[0]) && isdigit(s[1]) && isdigit(s[3]) &&
         isdigit(s[4]) && (s[0] - '0') * 10 + (s[1] - '0') < 24 && (s[3] - '0') * 10 + (s[4] - '0') < 60;
}

}  // namespace

std::string DeviceConfig::http_host() const { return http_listen.substr(0, http_listen.rfind(':')); }
int DeviceConfig::http_port() const { return std::stoi(http_listen.substr(http_listen.rfind(':') + 1)); }

Result<DeviceConfig> ParseDeviceConfig(std::string_view text, const std::string& base_dir) {
  PP_ASSIGN_OR_RETURN(json j, ParseJsonObject(text, "the device config"));
  Checker c(base_dir);
  c.OnlyKeys(j, "", {"device_id", "role", "org_id", "key_file", "broker_url", "broker_user",
                     "broker_password_file", "database", "http_listen", "queue_limit",
                     "language", "position", "vehicle"});
  DeviceConfig cfg;
  if (auto id = c.String(j, "", "device_id", true)) {
    cfg.device_id = *id;
    if (!sync::ValidDeviceId(*id)) c.Fail("device_id", "must be 1-64 of A-Z a-z 0-9 _ . -");
  }
  if (auto role = c.String(j, "", "role", true)) {
    cfg.role = *role;
    if (*role != "kiosk" && *role != "tablet") c.Fail("role", "must be \"kiosk\" or \"tablet\"");
  }
  if (const json* org = c.Get(j, "", "org_id", true)) {
    if (!org->is_number_unsigned() || org->get<uint64_t>() == 0 ||
        org->get<uint64_t>() > uint64_t(INT64_MAX))
      c.Fail("org_id", "must be a positive integer");
    else
      cfg.org_id = org->get<int64_t>();
  }
  if (auto f = c.String(j, "", "key_file", true)) cfg.key_file = c.File("key_file", *f, true);
  if (auto f = c.String(j, "", "broker_password_file", true))
    cfg.broker_password_file = c.File("broker_password_file", *f, true);
  if (auto url = c.String(j, "", "broker_url", true)) {
    cfg.broker_url = *url;
    auto colon = url->rfind(':');
    bool ok = url->rfind("tcp://", 0) == 0 && colon != std::string::npos && colon > 6;
    int port = ok ? std::atoi(url->c_str() + colon + 1) : 0;
    if (!ok || port < 1 || port > 65535)
      c.Fail("broker_url", "must look like tcp://HOST:PORT");
  }
  cfg.broker_user = c.String(j, "", "broker_user", false).value_or(cfg.device_id);
  cfg.database = c.File("database",
                        c.String(j, "", "database", false).value_or(cfg.device_id + ".db"), false);
  if (auto listen = c.String(j, "", "http_listen", false)) {
    cfg.http_listen = *listen;
    auto colon = listen->rfind(':');
    std::string host = colon == std::string::npos ? "" : listen->substr(0, colon);
    int port = colon == std::string::npos ? 0 : std::atoi(listen->c_str() + colon + 1);
    // The UI has no login: it must be reachable from this device only.
    if (host != "127.0.0.1" && host != "localhost")
      c.Fail("http_listen", "must be on 127.0.0.1 or localhost (the UI has no login)");
    if (port < 1 || port > 65535) c.Fail("http_listen", "needs a port from 1 to 65535");
  }
  if (auto limit = c.Number(j, "", "queue_limit", 10, 1000000)) cfg.queue_limit = size_t(*limit);
  if (auto lang = c.String(j, "", "language", false)) {
    cfg.language = *lang;
    if (*lang != "en" && *lang != "id") c.Fail("language", "must be \"en\" or \"id\"");
  }
  if (const json* pos = c.Get(j, "", "position", false)) {
    if (!pos->is_object()) {
      c.Fail("position", "must be an object {\"lat\", \"lon\"}");
    } else {
      c.OnlyKeys(*pos, "position.", {"lat", "lon"});
      auto lat = c.Number(*pos, "position.", "lat", -90, 90);
      auto lon = c.Number(*pos, "position.", "lon", -180, 180);
      if (!lat || !lon) c.Fail("position", "needs both lat and lon");
      else cfg.position = GeoPoint{*lat, *lon};
    }
  }
  if (const json* v = c.Get(j, "", "vehicle", false)) {
    if (cfg.role == "kiosk") c.Fail("vehicle", "is for tablets only");
    if (!v->is_object()) {
      c.Fail("vehicle", "must be an object");
    } else {
      c.OnlyKeys(*v, "vehicle.", {"capacity_kg", "categories", "open_from", "open_to"});
      if (auto cap = c.Number(*v, "vehicle.", "capacity_kg", 1, 50000)) cfg.vehicle.capacity_kg = *cap;
      if (const json* cats = c.Get(*v, "vehicle.", "categories", false)) {
        const auto& known = FoodCategories();
        if (!cats->is_array()) c.Fail("vehicle.categories", "must be a list");
        else
          for (const auto& cat : *cats) {
            if (!cat.is_string() ||
                std::find(known.begin(), known.end(), cat.get<std::string>()) == known.end())
              c.Fail("vehicle.categories", "unknown category " + cat.dump());
            else
              cfg.vehicle.categories.push_back(cat.get<std::string>());
          }
      }
      for (auto [key, out] : {std::pair{"open_from", &cfg.vehicle.open_from},
                              std::pair{"open_to", &cfg.vehicle.open_to}}) {
        if (auto t = c.String(*v, "vehicle.", key, false)) {
          if (!ValidHhMm(*t)) c.Fail(std::string("vehicle.") + key, "must be HH:MM");
          else *out = *t;
        }
      }
    }
  }
  if (!c.ok()) return Error::Invalid("the device config has invalid fields", c.Take());
  return cfg;
}

Result<DeviceConfig> LoadDeviceConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Error::Invalid("cannot read the device config " + path);
  std::stringstream text;
  text << in.rdbuf();
  auto dir = std::filesystem::absolute(path).parent_path().string();
  auto cfg = ParseDeviceConfig(text.str(), dir);
  if (!cfg.ok()) {
    Error e = cfg.take_error();
    e.message = path + ": " + e.message;
    return e;
  }
  return cfg;
}

}  // namespace pp
