// pp-match-bench: k = 5 nearest eligible vehicles per post, ranked by travel
// time, with the matcher's own code (Rank over a shard's VehicleIndex), on
// `threads` shard threads each holding its replica, as the hub runs them.
// Brute force (haversine over every vehicle, same filters) is measured in
// the same run for comparison.
//
//   pp-match-bench [--vehicles N] [--queries Q] [--threads T] [--csv london.csv]
//
// Vehicles are spread over Greater London's bounding box; posts are placed
// at the real London restaurants of the CSV when given, else at random.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cloud-hub/matching/matcher.h"
#include "common/geo.h"
#include "common/premises.h"

namespace {

using namespace pp;
using Steady = std::chrono::steady_clock;
const Timestamp kNow = FromUnixMillis(1795554000000);  // 2026-11-24T21:00Z

[[noreturn]] void Usage(const std::string& msg) {
  std::fprintf(stderr,
               "pp-match-bench: %s\nusage: pp-match-bench [--vehicles N] [--queries Q] "
               "[--threads T] [--csv FILE]\n",
               msg.c_str());
  std::exit(2);
}

std::vector<GeoPoint> LoadProviders(const std::string& path) {
  std::ifstream in(path);
  if (!in) Usage("cannot read " + path);
  auto premises = pp::ParsePremisesCsv(in);
  if (!premises.ok()) Usage(path + ": " + premises.error().message);
  std::vector<GeoPoint> out;
  for (const auto& p : *premises)
    if (p.role == "provider") out.push_back(p.at);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int vehicles = 100000, queries = 400000, threads = 2;
  std::string csv;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (i + 1 >= argc) Usage("missing value for " + f);
    std::string v = argv[++i];
    try {
      if (f == "--vehicles") vehicles = std::stoi(v);
      else if (f == "--queries") queries = std::stoi(v);
      else if (f == "--threads") threads = std::stoi(v);
      else if (f == "--csv") csv = v;
      else Usage("unknown option " + f);
    } catch (const std::exception&) {
      Usage(f + " wants a number");
    }
  }
  if (vehicles < 1 || queries < 1 || threads < 1) Usage("counts must be positive");

  std::mt19937 rng(42);
  std::uniform_real_distribution<double> lat(51.28, 51.70), lon(-0.51, 0.33), u(0, 1);
  std::vector<Vehicle> fleet;
  for (int i = 1; i <= vehicles; ++i) {
    Vehicle v;
    v.ngo_id = i;
    v.position = {lat(rng), lon(rng)};
    v.free_kg = u(rng) < 0.1 ? 0 : 10 + u(rng) * 300;  // 10% full
    v.accepts = u(rng) < 0.7 ? kAllCategories : CategoryMask(rng() & 0xff);
    v.online = u(rng) < 0.9;
    fleet.push_back(v);
  }
  std::vector<GeoPoint> spots = csv.empty() ? std::vector<GeoPoint>{} : LoadProviders(csv);
  if (spots.empty())
    for (int i = 0; i < 20000; ++i) spots.push_back({lat(rng), lon(rng)});
  std::vector<MatchRequest> reqs;
  for (int i = 0; i < 20000; ++i) {
    MatchRequest r;
    r.surplus_id = i;
    r.at = spots[rng() % spots.size()];
    r.need = {CategoryMask(1u << (rng() % 8)), 2.0 + double(rng() % 40),
              kNow + std::chrono::minutes(30 + rng() % 180)};
    if (rng() % 4 == 0) r.excluded = {int64_t(1 + rng() % vehicles)};
    reqs.push_back(r);
  }

  SimulatedClock clock(kNow);
  TravelTimes travel(clock, TravelModel{}, nullptr, {});
  MatchOptions options;  // k = 5, 25 km
  // One replica per shard thread, as in the hub.
  std::vector<VehicleIndex> replicas(threads);
  auto t_build = Steady::now();
  for (auto& idx : replicas)
    for (const auto& v : fleet) idx.Upsert(v);
  double build_s = std::chrono::duration<double>(Steady::now() - t_build).count() / threads;

  std::atomic<long> found{0};
  auto t0 = Steady::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      long hits = 0;
      for (int q = t; q < queries; q += threads)
        hits += !Rank(replicas[t], reqs[q % reqs.size()], kNow, options, travel).empty();
      found += hits;
    });
  }
  for (auto& th : pool) th.join();
  double secs = std::chrono::duration<double>(Steady::now() - t0).count();

  // The same queries through the Matcher: shard queues, callbacks, its own replicas.
  double queued_rate = 0;
  {
    Matcher matcher(clock, MatchOptions{threads, 5, 25}, travel);
    for (const auto& v : fleet) matcher.UpsertVehicle(v);
    matcher.WaitIdle();
    std::atomic<long> done{0};
    auto m0 = Steady::now();
    for (int q = 0; q < queries; ++q) {
      matcher.Match(reqs[q % reqs.size()], [&](std::vector<RankedCandidate>) { done++; });
      // Keep the queues bounded, as the hub's request threads would.
      while (q - done.load() > 20000) std::this_thread::yield();
    }
    matcher.WaitIdle();
    queued_rate = queries / std::chrono::duration<double>(Steady::now() - m0).count();
  }

  // Brute force, same filters, one thread, fewer queries.
  int brute_q = std::max(50, std::min(queries / 100, int(20'000'000 / vehicles)));
  auto b0 = Steady::now();
  long brute_found = 0;
  for (int q = 0; q < brute_q; ++q) {
    const auto& r = reqs[q % reqs.size()];
    double left = std::chrono::duration<double>(r.need.arrive_by - kNow).count();
    double max_km = std::min(options.max_radius_km, travel.model().KmWithin(left));
    std::vector<std::pair<double, int64_t>> c;
    for (const auto& v : fleet) {
      if (std::find(r.excluded.begin(), r.excluded.end(), v.ngo_id) != r.excluded.end()) continue;
      double km = HaversineKm(r.at, v.position);
      if (km <= max_km && IsEligible(v, r.need, kNow, travel.model().SecondsFor(km)))
        c.push_back({km, v.ngo_id});
    }
    std::partial_sort(c.begin(), c.begin() + std::min<size_t>(5, c.size()), c.end());
    brute_found += !c.empty();
  }
  double brute_s = std::chrono::duration<double>(Steady::now() - b0).count();

  std::printf(
      "vehicles=%d threads=%d queries=%d matched=%.1f%% index_build=%.2fs "
      "rate=%.0f matches/s (%.0f per thread) via_matcher_queues=%.0f matches/s "
      "brute_force=%.0f matches/s (1 thread)\n",
      vehicles, threads, queries, 100.0 * double(found) / queries, build_s, queries / secs,
      queries / secs / threads, queued_rate, brute_q / brute_s);
  return found > 0 && brute_found > 0 ? 0 : 1;
}
