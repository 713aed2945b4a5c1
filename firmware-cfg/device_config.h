// The configuration of one device running pp-agent (a restaurant's kiosk or
// an NGO vehicle's tablet): a JSON file, documented in firmware-cfg/README.md
// and described by firmware-cfg/schema.json. pp-device register writes the
// required part; the rest has defaults.
//
// Validation is strict: unknown keys, wrong types, out-of-range values and
// missing files are all reported at once, each naming its field, so a person
// setting up a kiosk sees everything that is wrong in one go.
//
// Thread safety: plain functions and values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/domain.h"
#include "common/error.h"

namespace pp {

struct VehicleConfig {
  double capacity_kg = 200;               // free capacity when empty
  std::vector<std::string> categories;    // empty: accepts every category
  // Operating hours, HH:MM in UTC, [open_from, open_to); equal (the
  // default) means always open, and 22:00-06:00 wraps past midnight.
  // ("00:00"-"23:59" would close the vehicle for the day's last minute.)
  std::string open_from = "00:00";
  std::string open_to = "00:00";
};

struct DeviceConfig {
  std::string device_id;
  std::string role;  // "kiosk" or "tablet"
  int64_t org_id = 0;
  std::string key_file;              // base64 Ed25519 secret key
  std::string broker_url;            // tcp://host:port
  std::string broker_user;           // defaults to device_id
  std::string broker_password_file;
  std::string database;              // the agent's SQLite file
  std::string http_listen = "127.0.0.1:8181";  // the local UI; loopback only
  size_t queue_limit = 20000;        // ops waiting for the hub before new ones are refused
  std::string language = "en";       // "en" or "id" (Bahasa Indonesia): the UI's default
  std::optional<GeoPoint> position;  // kiosk: where food is collected; tablet: start position
  VehicleConfig vehicle;             // tablet only

  // http_listen split up.
  std::string http_host() const;
  int http_port() const;
};

// Parses and validates. Relative file paths are resolved against `base_dir`
// (the config file's directory); files must exist and be readable, except
// the database, whose directory must exist.
Result<DeviceConfig> ParseDeviceConfig(std::string_view json_text, const std::string& base_dir);
Result<DeviceConfig> LoadDeviceConfig(const std::string& path);

}  // namespace pp
