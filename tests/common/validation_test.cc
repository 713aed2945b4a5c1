#include "common/validation.h"

#include <gtest/gtest.h>

#include <functional>

#include <nlohmann/json.hpp>

#include "common/time_format.h"

namespace pp {
namespace {

const Timestamp kNow = *ParseRfc3339("2026-11-24T20:00:00Z");

std::vector<std::string> BadFields(const Error& e) {
  std::vector<std::string> out;
  for (const auto& f : e.fields) out.push_back(f.field);
  return out;
}

TEST(Validation, MinimalSurplusPost) {
  auto d = ParseSurplusDraft(
      R"({"provider_id":7,"category":"bakery","description":"12 loaves","best_before":"2026-11-24T23:00:00Z"})",
      kNow);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_EQ(d->provider_id, 7);
  EXPECT_FALSE(d->quantity_kg);  // unknown, not 0
  EXPECT_EQ(d->storage, Storage::kAmbient);
  EXPECT_FALSE(d->position);
}

TEST(Validation, FullSurplusPost) {
  auto d = ParseSurplusDraft(R"({
    "provider_id":7, "category":"prepared_meals", "description":"nasi goreng",
    "quantity_kg":4.5, "portions":12, "allergens":["eggs","soya","eggs"], "storage":"hot",
    "prepared_at":"2026-11-24T19:30:00Z", "best_before":"2026-11-24T23:00:00Z",
    "pickup_start":"2026-11-24T20:30:00Z", "pickup_end":"2026-11-24T21:30:00Z",
    "instructions":"back door, ring twice", "lat":51.5, "lon":-0.12})",
                             kNow);
  ASSERT_TRUE(d.ok()) << d.error().ToString();
  EXPECT_EQ(d->quantity_kg, 4.5);
  EXPECT_EQ(d->portions, 12);
  EXPECT_EQ(d->allergens, (std::vector<std::string>{"eggs", "soya"}));
  EXPECT_EQ(d->storage, Storage::kHot);
  ASSERT_TRUE(d->position);
  EXPECT_EQ(d->position->lon, -0.12);
}

TEST(Validation, NamesEveryBadFieldAtOnce) {
  auto d = ParseSurplusDraft(R"({
    "provider_id":"7", "category":"caviar", "quantity_kg":0, "portions":1.5,
    "allergens":["gluten"], "storage":"warm", "best_before":"2026-11-24T19:00:00Z",
    "lat":95, "lon":0, "colour":"red"})",
                             kNow);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.error().code, Code::kInvalidArgument);
  auto fields = BadFields(d.error());
  for (const char* f : {"colour", "provider_id", "category", "description", "quantity_kg",
                        "portions", "allergens/0", "storage", "best_before", "lat"})
    EXPECT_NE(std::find(fields.begin(), fields.end(), f), fields.end()) << f;
}

TEST(Validation, DatesMustMakeSense) {
  auto bad = [](const std::string& extra) {
    auto d = ParseSurplusDraft(
        R"({"provider_id":1,"category":"bakery","description":"x","best_before":"2026-11-24T23:00:00Z")" +
            extra + "}",
        kNow);
    return d.ok() ? std::vector<std::string>{} : BadFields(d.error());
  };
  EXPECT_EQ(bad(R"(,"prepared_at":"2026-11-25T00:00:00Z")"),
            (std::vector<std::string>{"prepared_at", "prepared_at"}));
  EXPECT_EQ(bad(R"(,"pickup_start":"2026-11-24T21:00:00Z")"),
            std::vector<std::string>{"pickup_end"});
  EXPECT_EQ(bad(R"(,"pickup_start":"2026-11-24T21:00:00Z","pickup_end":"2026-11-24T20:30:00Z")"),
            std::vector<std::string>{"pickup_end"});
  EXPECT_EQ(bad(R"(,"lat":51.5)"), std::vector<std::string>{"lon"});
  auto far = ParseSurplusDraft(
      R"({"provider_id":1,"category":"bakery","description":"x","best_before":"2027-01-30T00:00:00Z"})",
      kNow);
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(BadFields(far.error()), std::vector<std::string>{"best_before"});
}

TEST(Validation, MalformedBodies) {
  for (const char* body : {"", "{", "[]", "null", "\"x\"", "{\"a\":1,}", "{'a':1}"}) {
    auto d = ParseSurplusDraft(body, kNow);
    ASSERT_FALSE(d.ok()) << body;
    EXPECT_EQ(d.error().code, Code::kInvalidArgument);
    EXPECT_TRUE(d.error().fields.empty()) << body;  // a syntax error, not a field error
  }
}

// nlohmann-json copies and serialises recursively: a body that nests
// thousands deep is refused before it is parsed.
TEST(Validation, DeepNestingIsRefusedBeforeParsing) {
  EXPECT_EQ(JsonDepth(R"({"a":[1,{"b":[]}],"c":"[[[{{{\"]]"})"), 4) << "brackets in strings count";
  EXPECT_EQ(JsonDepth("not json ]]]"), 0);
  auto nest = [](int n) { return "{\"a\":" + std::string(n - 1, '[') + std::string(n - 1, ']') + "}"; };
  EXPECT_TRUE(ParseJsonObject(nest(kMaxJsonDepth), "body").ok());
  for (int n : {kMaxJsonDepth + 1, 30000}) {
    auto deep = ParseJsonObject(nest(n), "body");
    ASSERT_FALSE(deep.ok()) << n;
    EXPECT_EQ(deep.error().code, Code::kInvalidArgument);
    EXPECT_EQ(deep.error().message, "body nests deeper than 32 levels");
  }
  auto draft = ParseSurplusDraft(nest(30000), kNow);
  ASSERT_FALSE(draft.ok());
  EXPECT_NE(draft.error().message.find("nests deeper"), std::string::npos) << draft.error().message;
  EXPECT_EQ(ParseJsonObject("[1]", "the config").error().message, "the config must be a JSON object");
}

// Every field of every request swapped for a value of each other JSON type
// (and a few awkward ones): each parser answers ok or a named error, and
// never throws (a throw would be a 500 on the HTTP door).
TEST(Validation, EveryFieldWithEveryTypeIsAnsweredNeverThrown) {
  using nlohmann::json;
  const std::vector<json> odd{nullptr, true, -1, 0, 1e308, -1e308, 18446744073709551615ULL, -9223372036854775807LL - 1,
                              0.5, "", "x", "2026-13-45T25:61:61Z", json::array(), json::array({1, "a", nullptr}),
                              json::object(), json{{"a", 1}}};
  const json post = json::parse(R"({"provider_id":7,"category":"prepared_meals","description":"nasi goreng",
    "quantity_kg":4.5,"portions":12,"allergens":["eggs"],"storage":"hot","prepared_at":"2026-11-24T19:30:00Z",
    "best_before":"2026-11-24T23:00:00Z","pickup_start":"2026-11-24T20:30:00Z","pickup_end":"2026-11-24T21:30:00Z",
    "instructions":"back door","lat":51.5,"lon":-0.12})");
  const json vehicle = json::parse(R"({"lat":51.5,"lon":-0.1,"free_kg":40,"categories":["bakery"],
    "open_from":"18:00","open_to":"23:30","online":true})");
  const std::vector<std::pair<json, std::function<Status(const std::string&)>>> parsers{
      {post, [](const std::string& b) { return ParseSurplusDraft(b, kNow).status(); }},
      {json{{"kind", "ngo"}, {"name", "City Harvest"}, {"lat", 51.5}, {"lon", -0.1}},
       [](const std::string& b) { return ParseNewOrganization(b).status(); }},
      {json{{"ngo_id", 3}, {"version", 2}}, [](const std::string& b) { return ParseClaimRequest(b).status(); }},
      {json{{"ngo_id", 3}, {"handover_code", "042917"}, {"actual_kg", 4}},
       [](const std::string& b) { return ParsePickUpRequest(b).status(); }},
      {json{{"ngo_id", 3}}, [](const std::string& b) { return ParseNgoRequest(b).status(); }},
      {vehicle, [](const std::string& b) { return ParseVehicleUpdate(b, Vehicle{}, kNow).status(); }},
  };
  int answered = 0;
  for (const auto& [good, parse] : parsers) {
    ASSERT_TRUE(parse(good.dump()).ok()) << good.dump() << ": " << parse(good.dump()).error().ToString();
    for (const auto& [field, value] : good.items()) {
      for (const json& v : odd) {
        json bad = good;
        bad[field] = v;
        Status st = OkStatus();
        EXPECT_NO_THROW(st = parse(bad.dump())) << bad.dump();
        if (!st.ok()) {
          EXPECT_FALSE(st.error().message.empty()) << bad.dump();
        }
        ++answered;
      }
    }
  }
  EXPECT_GT(answered, 300);
}

TEST(Validation, Organization) {
  auto o = ParseNewOrganization(R"({"kind":"ngo","name":"City Harvest","lat":51.5,"lon":-0.1})");
  ASSERT_TRUE(o.ok());
  EXPECT_EQ(o->kind, OrgKind::kNgo);
  auto bad = ParseNewOrganization(R"({"kind":"shop","name":"","lat":-91,"lon":181})");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(BadFields(bad.error()), (std::vector<std::string>{"kind", "name", "lat", "lon"}));
}

TEST(Validation, Claim) {
  auto c = ParseClaimRequest(R"({"ngo_id":3,"version":2})");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->version, 2);
  auto bad = ParseClaimRequest(R"({"ngo_id":18446744073709551615,"version":0})");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(BadFields(bad.error()), (std::vector<std::string>{"ngo_id", "version"}));
}

TEST(Validation, FingerprintIsStable) {
  EXPECT_EQ(Fingerprint("abc"), "e71fa2190541574b");
  EXPECT_NE(Fingerprint("abc"), Fingerprint("abd"));
}

}  // namespace
}  // namespace pp
