// The device config format: the documented examples are valid, and every
// kind of mistake is named with its field, all at once.
#include "firmware-cfg/device_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/validation.h"
#include "tests/support/mangle.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class DeviceConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* f : {"k.key", "k.password"}) std::ofstream(dir_.file(f)) << "x\n";
  }
  json Minimal() {
    return {{"device_id", "kiosk-1"}, {"role", "kiosk"}, {"org_id", 1}, {"key_file", "k.key"},
            {"broker_url", "tcp://127.0.0.1:1883"}, {"broker_password_file", "k.password"}};
  }
  std::set<std::string> BadFields(const json& j) {
    auto r = ParseDeviceConfig(j.dump(), dir_.path().string());
    EXPECT_FALSE(r.ok());
    std::set<std::string> out;
    if (!r.ok())
      for (const auto& f : r.error().fields) out.insert(f.field);
    return out;
  }
  test::TempDir dir_;
};

TEST_F(DeviceConfigTest, TheDocumentedExamplesAreValid) {
  for (const char* name : {"kiosk.json", "tablet.json"}) {
    auto src = std::filesystem::path(test::SourceDir()) / "firmware-cfg/examples" / name;
    std::ifstream in(src);
    json j = json::parse(in);
    // Their key and password files, next to the config as pp-device writes them.
    std::ofstream(dir_.file(j["key_file"].get<std::string>())) << "x\n";
    std::ofstream(dir_.file(j["broker_password_file"].get<std::string>())) << "x\n";
    auto cfg = ParseDeviceConfig(j.dump(), dir_.path().string());
    ASSERT_TRUE(cfg.ok()) << name << ": " << cfg.error().ToString();
    EXPECT_EQ(cfg->role, j["role"]);
  }
}

TEST_F(DeviceConfigTest, DefaultsAndRelativePaths) {
  auto cfg = ParseDeviceConfig(Minimal().dump(), dir_.path().string());
  ASSERT_TRUE(cfg.ok()) << cfg.error().ToString();
  EXPECT_EQ(cfg->key_file, dir_.file("k.key"));
  EXPECT_EQ(cfg->database, dir_.file("kiosk-1.db"));
  EXPECT_EQ(cfg->broker_user, "kiosk-1");
  EXPECT_EQ(cfg->http_listen, "127.0.0.1:8181");
  EXPECT_EQ(cfg->http_port(), 8181);
  EXPECT_EQ(cfg->queue_limit, 20000u);
  EXPECT_EQ(cfg->language, "en");
}

// A tablet that says nothing of its hours is open at every minute of the
// day: the defaults once read 00:00-23:59, which closed every vehicle from
// 23:59 to midnight, and posts in that minute got no offer.
TEST_F(DeviceConfigTest, ATabletWithoutHoursIsOpenAllDay) {
  json j = Minimal();
  j["role"] = "tablet";
  auto cfg = ParseDeviceConfig(j.dump(), dir_.path().string());
  ASSERT_TRUE(cfg.ok()) << cfg.error().ToString();
  json hours{{"open_from", cfg->vehicle.open_from}, {"open_to", cfg->vehicle.open_to}};
  auto v = ParseVehicleUpdate(hours.dump(), Vehicle{}, Timestamp{});
  ASSERT_TRUE(v.ok()) << v.error().ToString();
  const Timestamp day = std::chrono::floor<std::chrono::days>(SystemClock::Instance().Now());
  for (auto at : {std::chrono::minutes(0), std::chrono::minutes(12 * 60), std::chrono::minutes(23 * 60 + 59)})
    EXPECT_TRUE(v->OpenAt(day + at + std::chrono::seconds(30))) << "closed at minute " << at.count();
}

TEST_F(DeviceConfigTest, EveryMistakeIsNamedAtOnce) {
  json j = Minimal();
  j["device_id"] = "kiosk/1";
  j["role"] = "fridge";
  j["org_id"] = -3;
  j["key_file"] = "missing.key";
  j["broker_url"] = "mqtt://somewhere";
  j["http_listen"] = "0.0.0.0:80";
  j["queue_limit"] = 5;
  j["language"] = "fr";
  j["colour"] = "blue";
  j["position"] = {{"lat", 95}};
  // "database" too: its default name comes from the bad device_id.
  EXPECT_EQ(BadFields(j), (std::set<std::string>{"device_id", "database", "role", "org_id", "key_file",
                                                 "broker_url", "http_listen", "queue_limit",
                                                 "language", "colour", "position.lat", "position"}));
}

TEST_F(DeviceConfigTest, MissingRequiredFieldsAndNonsense) {
  EXPECT_EQ(BadFields(json::object()),
            (std::set<std::string>{"device_id", "role", "org_id", "key_file", "broker_url",
                                   "broker_password_file"}));
  EXPECT_FALSE(ParseDeviceConfig("{not json", ".").ok());
  EXPECT_FALSE(ParseDeviceConfig("[1,2]", ".").ok());
  json kiosk_with_vehicle = Minimal();
  kiosk_with_vehicle["vehicle"] = {{"capacity_kg", 100}};
  EXPECT_EQ(BadFields(kiosk_with_vehicle), std::set<std::string>{"vehicle"});
  json tablet = Minimal();
  tablet["role"] = "tablet";
  tablet["vehicle"] = {{"capacity_kg", 0}, {"categories", {"gold"}}, {"open_from", "25:00"}};
  EXPECT_EQ(BadFields(tablet), (std::set<std::string>{"vehicle.capacity_kg", "vehicle.categories",
                                                      "vehicle.open_from"}));
}

TEST_F(DeviceConfigTest, LoadNamesTheFile) {
  auto r = LoadDeviceConfig(dir_.file("nope.json"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("nope.json"), std::string::npos);
}

// The documented examples, mangled at random (tests/support/mangle.h): each
// parses, or is refused with a message and, where a field is to blame, its
// name; nothing throws. The seed is printed on failure.
TEST_F(DeviceConfigTest, MangledConfigsAreRefusedWithAReasonNeverAFault) {
  std::vector<std::string> examples;
  for (const char* name : {"kiosk.json", "tablet.json"}) {
    std::ifstream in(std::filesystem::path(test::SourceDir()) / "firmware-cfg/examples" / name);
    json j = json::parse(in);
    std::ofstream(dir_.file(j["key_file"].get<std::string>())) << "x\n";
    std::ofstream(dir_.file(j["broker_password_file"].get<std::string>())) << "x\n";
    examples.push_back(j.dump());
  }
  const uint32_t seed = 20261208;
  SCOPED_TRACE("mutation seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::string text = test::Mangle(examples[size_t(i) % examples.size()], rng);
    Result<DeviceConfig> r = Error::Internal("not parsed");
    EXPECT_NO_THROW(r = ParseDeviceConfig(text, dir_.path().string())) << text;
    if (r.ok()) continue;
    ++refused;
    EXPECT_FALSE(r.error().message.empty()) << text;
    for (const auto& f : r.error().fields) EXPECT_FALSE(f.field.empty() || f.reason.empty()) << text;
  }
  EXPECT_GT(refused, 1000);
}

}  // namespace
}  // namespace pp
