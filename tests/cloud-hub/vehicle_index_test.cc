// The hot index and ranking, checked against brute force: on random data and
// on the real London premises (tests/data, FSA open data).
#include "cloud-hub/matching/vehicle_index.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "cloud-hub/matching/matcher.h"
#include "common/geo.h"
#include "common/premises.h"
#include "common/time_format.h"

namespace pp {
namespace {

const Timestamp kNow = *ParseRfc3339("2026-11-24T21:00:00Z");

struct World {
  std::vector<Vehicle> vehicles;
  std::vector<GeoPoint> posts;
};

Vehicle RandomVehicle(int64_t id, GeoPoint at, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  Vehicle v;
  v.ngo_id = id;
  v.position = at;
  v.free_kg = u(rng) < 0.1 ? 0 : 5 + u(rng) * 200;
  v.accepts = u(rng) < 0.5 ? kAllCategories : CategoryMask(1 + rng() % 0xff);
  v.online = u(rng) < 0.9;
  if (u(rng) < 0.2) {  // some keep hours; 21:00 UTC is inside or outside at random
    v.open_from_min = int(rng() % 1440);
    v.open_to_min = int(rng() % 1440);
  }
  return v;
}

// The answer by definition: every vehicle, the same eligibility, nearest first.
std::vector<RankedCandidate> BruteForce(const std::vector<Vehicle>& all, const MatchRequest& req,
                                        const MatchOptions& o, const TravelModel& model) {
  double left = std::chrono::duration<double>(req.need.arrive_by - kNow).count();
  double max_km = std::min(o.max_radius_km, model.KmWithin(left));
  std::vector<RankedCandidate> out;
  for (const auto& v : all) {
    if (std::find(req.excluded.begin(), req.excluded.end(), v.ngo_id) != req.excluded.end()) continue;
    double km = HaversineKm(req.at, v.position);
    if (km > max_km || !IsEligible(v, req.need, kNow, model.SecondsFor(km))) continue;
    out.push_back({v.ngo_id, km, model.SecondsFor(km)});
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.eta_seconds < b.eta_seconds; });
  if (out.size() > o.candidates) out.resize(o.candidates);
  return out;
}

void CheckAgainstBruteForce(const World& w, uint32_t seed) {
  std::mt19937 rng(seed);
  VehicleIndex index;
  for (const auto& v : w.vehicles) index.Upsert(v);
  SimulatedClock clock(kNow);
  TravelTimes travel(clock, TravelModel{}, nullptr, {});
  MatchOptions options;
  int offers = 0;
  for (size_t i = 0; i < w.posts.size(); ++i) {
    MatchRequest req;
    req.surplus_id = int64_t(i);
    req.at = w.posts[i];
    req.need.category = CategoryMask(1u << (rng() % 8));
    if (rng() % 3) req.need.kg = double(rng() % 60);
    req.need.arrive_by = kNow + std::chrono::minutes(5 + rng() % 240);
    for (int e = 0; e < 3; ++e)
      if (rng() % 2) req.excluded.push_back(w.vehicles[rng() % w.vehicles.size()].ngo_id);
    auto got = Rank(index, req, kNow, options, travel);
    auto want = BruteForce(w.vehicles, req, options, travel.model());
    ASSERT_EQ(got.size(), want.size()) << "post " << i;
    for (size_t k = 0; k < got.size(); ++k) {
      // Same distances in the same order (ids may differ only on exact ties).
      EXPECT_NEAR(got[k].distance_km, want[k].distance_km, 1e-6) << "post " << i << " rank " << k;
    }
    if (!got.empty()) {
      ++offers;
      EXPECT_EQ(got[0].ngo_id, want[0].ngo_id) << "post " << i;
    }
  }
  EXPECT_GT(offers, int(w.posts.size()) / 4) << "the data should produce offers";
}

TEST(VehicleIndex, RandomWorldMatchesBruteForce) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> lat(51.28, 51.70), lon(-0.51, 0.33);
  World w;
  for (int i = 1; i <= 3000; ++i) w.vehicles.push_back(RandomVehicle(i, {lat(rng), lon(rng)}, rng));
  for (int i = 0; i < 400; ++i) w.posts.push_back({lat(rng), lon(rng)});
  CheckAgainstBruteForce(w, 11);
}

TEST(VehicleIndex, LondonPremisesMatchBruteForce) {
  std::ifstream in(std::string(std::getenv("PP_SOURCE_DIR")) + "/tests/data/london_food_premises.csv");
  ASSERT_TRUE(in) << "tests/data/london_food_premises.csv missing";
  auto premises = ParsePremisesCsv(in);
  ASSERT_TRUE(premises.ok()) << premises.error().ToString();
  World w;
  std::mt19937 rng(3);
  std::vector<GeoPoint> providers;
  int64_t id = 1;
  for (const auto& p : *premises) {
    if (p.role == "receiver")
      w.vehicles.push_back(RandomVehicle(id++, p.at, rng));
    else
      providers.push_back(p.at);
  }
  EXPECT_EQ(w.vehicles.size(), 127u);
  EXPECT_EQ(providers.size(), 27764u);
  std::shuffle(providers.begin(), providers.end(), rng);
  w.posts.assign(providers.begin(), providers.begin() + 3000);
  CheckAgainstBruteForce(w, 5);
}

TEST(VehicleIndex, AMovedVehicleIsFoundWhereItIsNow) {
  VehicleIndex index;
  Vehicle v;
  v.ngo_id = 1;
  v.position = {51.50, -0.10};
  index.Upsert(v);
  Vehicle w = v;
  w.ngo_id = 2;
  w.position = {51.60, -0.30};
  index.Upsert(w);
  auto any = [](const Vehicle&, double) { return true; };
  EXPECT_EQ(index.FindNearest({51.50, -0.10}, 1, 50, any)[0].ngo_id, 1);
  v.position = {51.70, -0.40};  // drives away
  index.Upsert(v);
  EXPECT_EQ(index.size(), 2u);
  EXPECT_EQ(index.FindNearest({51.50, -0.10}, 1, 50, any)[0].ngo_id, 2);
  EXPECT_EQ(index.FindNearest({51.70, -0.40}, 1, 50, any)[0].ngo_id, 1);
  EXPECT_TRUE(index.FindNearest({51.50, -0.10}, 5, 1, any).empty());  // radius
  index.Remove(1);
  index.Remove(2);
  EXPECT_TRUE(index.FindNearest({51.50, -0.10}, 5, 50, any).empty());
}

TEST(VehicleIndex, EligibilityFilters) {
  SimulatedClock clock(kNow);
  TravelTimes travel(clock, TravelModel{}, nullptr, {});
  VehicleIndex index;
  auto add = [&](int64_t id, double dlat, auto tweak) {
    Vehicle v;
    v.ngo_id = id;
    v.position = {51.5 + dlat, -0.1};
    tweak(v);
    index.Upsert(v);
  };
  add(1, 0.001, [](Vehicle& v) { v.online = false; });
  add(2, 0.002, [](Vehicle& v) { v.accepts = CategoryBit("dairy"); });
  add(3, 0.003, [](Vehicle& v) { v.free_kg = 2; });
  add(4, 0.004, [](Vehicle& v) { v.open_from_min = 8 * 60, v.open_to_min = 18 * 60; });
  add(5, 0.005, [](Vehicle&) {});
  add(6, 0.5, [](Vehicle&) {});  // ~55 km: cannot arrive before best_before
  MatchRequest req{1, {51.5, -0.1}, {CategoryBit("bakery"), 5.0, kNow + std::chrono::minutes(30)}, {}};
  auto got = Rank(index, req, kNow, MatchOptions{}, travel);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].ngo_id, 5);
  req.excluded = {5};
  EXPECT_TRUE(Rank(index, req, kNow, MatchOptions{}, travel).empty());
}

// A tablet not heard from for longer than kTabletSilentAfter is offered
// nothing until it reports again; a vehicle kept over HTTP has no tablet
// and never falls silent.
TEST(VehicleIndex, ASilentTabletIsOfferedNothingUntilItReportsAgain) {
  SimulatedClock clock(kNow);
  TravelTimes travel(clock, TravelModel{}, nullptr, {});
  VehicleIndex index;
  auto add = [&](int64_t id, double dlat, const char* device, Duration ago) {
    Vehicle v;
    v.ngo_id = id;
    v.position = {51.5 + dlat, -0.1};
    v.reported = true;
    v.report_device = device;
    v.report_seq = 3;
    v.updated_at = kNow - ago;
    index.Upsert(v);
    return v;
  };
  using std::chrono::minutes;
  Vehicle gone = add(1, 0.001, "tablet-1", kTabletSilentAfter + minutes(1));
  add(2, 0.002, "tablet-2", kTabletSilentAfter);  // exactly the limit: not yet silent
  add(3, 0.003, "", std::chrono::hours(48));      // kept over HTTP
  MatchRequest req{1, {51.5, -0.1}, {CategoryBit("bakery"), 5.0, kNow + minutes(30)}, {}};
  auto ids = [&] {
    std::vector<int64_t> out;
    for (const auto& c : Rank(index, req, kNow, MatchOptions{}, travel)) out.push_back(c.ngo_id);
    return out;
  };
  EXPECT_EQ(ids(), (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(gone.Silent(kNow));
  gone.updated_at = kNow;  // its next report
  index.Upsert(gone);
  EXPECT_EQ(ids(), (std::vector<int64_t>{1, 2, 3}));
}

}  // namespace
}  // namespace pp

#include "cloud-hub/matching/surplus_index.h"

namespace pp {
namespace {

TEST(SurplusIndex, NearMatchesBruteForceAndForgetsClosedPosts) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<double> lat(51.28, 51.70), lon(-0.51, 0.33);
  SurplusIndex index;
  std::vector<Surplus> posts;
  for (int i = 1; i <= 2000; ++i) {
    Surplus s;
    s.id = i;
    s.position = {lat(rng), lon(rng)};
    s.status = i % 5 == 0 ? SurplusStatus::kClaimed : SurplusStatus::kAvailable;
    index.Update(s);
    posts.push_back(s);
  }
  EXPECT_EQ(index.size(), 1600u);
  for (int q = 0; q < 50; ++q) {
    GeoPoint at{lat(rng), lon(rng)};
    auto got = index.Near(at, 3.0, 1000);
    std::vector<int64_t> want;
    for (const auto& s : posts)
      if (s.status == SurplusStatus::kAvailable && HaversineKm(at, s.position) <= 3.0)
        want.push_back(s.id);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 1; i < got.size(); ++i) EXPECT_LE(got[i - 1].distance_km, got[i].distance_km);
  }
  posts[0].status = SurplusStatus::kExpired;
  index.Update(posts[0]);
  EXPECT_EQ(index.size(), 1599u);
  auto near0 = index.Near(posts[0].position, 0.001, 10);
  EXPECT_TRUE(near0.empty() || near0[0].surplus_id != 1);
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {

TEST(Matcher, SaturationRatioReflectsBusyShards) {
  SimulatedClock clock(kNow);
  TravelTimes travel(clock, TravelModel{}, nullptr, {});
  Matcher matcher(clock, MatchOptions{}, travel);
  std::mt19937 rng(1);
  std::uniform_real_distribution<double> lat(51.28, 51.70), lon(-0.51, 0.33);
  for (int i = 1; i <= 5000; ++i) matcher.UpsertVehicle(RandomVehicle(i, {lat(rng), lon(rng)}, rng));
  matcher.WaitIdle();
  matcher.SaturationRatio();  // start a fresh window
  std::atomic<int> done{0};
  for (int i = 0; i < 20000; ++i)
    matcher.Match({i, {lat(rng), lon(rng)}, {kAllCategories, std::nullopt, kNow + std::chrono::hours(2)}, {}},
                  [&](std::vector<RankedCandidate>) { done++; });
  matcher.WaitIdle();
  EXPECT_EQ(done.load(), 20000);
  double busy = matcher.SaturationRatio();
  EXPECT_GT(busy, 0.0);
  EXPECT_LE(busy, 1.0);
  EXPECT_EQ(matcher.QueueDepth(), 0u);
}

}  // namespace
}  // namespace pp
