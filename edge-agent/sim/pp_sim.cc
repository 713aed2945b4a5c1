// pp-sim: a city of kiosks and NGO vehicles, placed from the London food
// premises (tests/data), playing the 10 PM rush against a running hub.
// Every device is a real agent — the same Agent, AgentStore (SQLite) and
// signed MQTT ops as pp-agent, in one process — through mosquitto.
//
//   pp-sim --hub http://127.0.0.1:8080 --token ADMIN_JWT --broker-dir var/broker
//          [--kiosks 50] [--vehicles 10] [--window 10s] [--accept 0.8] [--race 0.2] [--delay 200ms]
//          [--data tests/data/london_food_premises.csv] [--out DIR] [--seed N]
//
// Kiosks post once each at a random moment within the window; a tablet
// offered a post accepts it with probability --accept after --delay, else
// declines (and the hub offers it to the next); each second a van claims,
// with probability --race, a post from its nearby list (vans race: one wins,
// the others hear "conflict"); a claimed post is picked up with the code the
// kiosk shows and delivered. Vehicles do not move. Measured: post -> first offer, claim round trip (accept or claim
// op to its outcome), posts/s, conflicts, rematches, DLQ, errors, with
// p50/p95/p99; a progress line each second; DIR/results.json and
// DIR/timeline.svg. At the end the hub's store is checked: every post the
// kiosks were told was accepted is there exactly once.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/cli.h"
#include "common/log.h"
#include "common/time_format.h"
#include "edge-agent/agent.h"
#include "edge-agent/mqtt_uplink.h"
#include "sync/broker_admin.h"
#include "sync/mqtt_client.h"

namespace {

using namespace pp;
using nlohmann::json;
using Steady = std::chrono::steady_clock;

constexpr const char* kUsage =
    "pp-sim --hub URL --token JWT --broker-dir DIR [--kiosks N] [--vehicles N] [--window 10s]\n"
    "              [--accept P] [--race P] [--delay 200ms] [--data CSV] [--out DIR] [--seed N]";
[[noreturn]] void Die(const std::string& m, int code = 2) { DieWithUsage("pp-sim", kUsage, m, code); }

struct SimDevice {
  std::string id;
  int64_t org = 0;
  bool kiosk = true;
  std::unique_ptr<agent::AgentStore> store;
  std::unique_ptr<sync::MqttClient> mqtt;
  std::unique_ptr<agent::MqttUplink> uplink;
  std::unique_ptr<agent::Agent> agent;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(std::ceil(p * v.size())) - (p > 0 ? 1 : 0))];
}

// Everything measured, guarded by one mutex (the agents' applier threads report).
struct Tally {
  std::mutex mu;
  std::map<std::string, Steady::time_point> sent;      // op -> when the person pressed
  std::map<int64_t, Steady::time_point> posted_at;     // surplus id -> its post op's send time
  std::map<int64_t, Steady::time_point> first_offer;   // surplus id -> first offer seen
  std::vector<double> claim_ms;
  std::map<std::string, int> counts;                   // posts_accepted, conflicts, ...
  std::set<std::string> accepted_posts;                // descriptions the kiosks were told were accepted
  std::map<int64_t, int> posts_per_second, claims_per_second;
  std::map<int64_t, std::vector<double>> claim_ms_per_second;
};

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, std::string> opt;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (f.rfind("--", 0) != 0 || i + 1 >= argc) Die("expected --flag VALUE, got " + f);
    opt[f.substr(2)] = argv[++i];
  }
  for (const char* need : {"hub", "token", "broker-dir"})
    if (!opt.count(need)) Die(std::string("--") + need + " is required");
  auto number = [&](const char* k, double def, double lo, double hi) {
    if (!opt.count(k)) return def;
    char* end = nullptr;
    double v = std::strtod(opt[k].c_str(), &end);
    if (*end || !(v >= lo && v <= hi)) Die(std::string("--") + k + " must be a number in " + std::to_string(lo) + ".." + std::to_string(hi));
    return v;
  };
  auto duration = [&](const char* k, Duration def) {
    if (!opt.count(k)) return def;
    auto d = ParseDuration(opt[k]);
    if (!d) Die(std::string("--") + k + " must be a duration like 10s or 200ms");
    return *d;
  };
  const int kiosks = int(number("kiosks", 50, 1, 5000)), vehicles = int(number("vehicles", 10, 1, 1000));
  const double accept_p = number("accept", 0.8, 0, 1);
  const double race_p = number("race", 0.2, 0, 1);  // per van and second: claim from its nearby list
  const Duration window = duration("window", std::chrono::seconds(10)), delay = duration("delay", Duration(200));
  const std::string data = opt.count("data") ? opt["data"] : "tests/data/london_food_premises.csv";
  const std::string out_dir = opt.count("out") ? opt["out"] : "var/sim";
  std::mt19937_64 rng(uint64_t(number("seed", 7, 0, 1e12)));
  const std::string broker_dir = opt["broker-dir"];
  SetMinLogLevel(LogLevel::kWarn);  // hundreds of agents: their info lines would drown the progress line
  const std::string broker = "tcp://127.0.0.1:" + FirstLineOrDie("pp-sim", kUsage, broker_dir + "/port");

  // Places from the premises file: restaurants post, food banks collect.
  std::vector<std::pair<std::string, GeoPoint>> providers, receivers;
  {
    std::ifstream in(data);
    if (!in) Die("cannot read " + data + " (give --data)", 1);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::vector<std::string> f;
      std::stringstream ss(line);
      std::string cell;
      while (std::getline(ss, cell, ',')) f.push_back(cell);
      if (f.size() < 8) continue;
      auto& to = f[1] == "receiver" ? receivers : providers;
      to.push_back({f[2], {std::atof(f[6].c_str()), std::atof(f[7].c_str())}});
    }
    std::shuffle(providers.begin(), providers.end(), rng);
    std::shuffle(receivers.begin(), receivers.end(), rng);
    if (int(providers.size()) < kiosks || int(receivers.size()) < vehicles) Die("not enough places in " + data, 1);
  }

  // The hub: organisations and devices, with the operator's token.
  auto url = opt["hub"];
  httplib::Client hub(url.substr(0, url.find('/', 8)));
  hub.set_bearer_token_auth(opt["token"].c_str());
  hub.set_read_timeout(30, 0);
  const std::string run = std::to_string(std::time(nullptr) % 1000000);
  std::filesystem::create_directories(out_dir + "/devices");
  std::vector<std::unique_ptr<SimDevice>> devices;
  auto make = [&](bool kiosk, int i, const std::pair<std::string, GeoPoint>& place) {
    auto d = std::make_unique<SimDevice>();
    d->kiosk = kiosk;
    auto r = hub.Post("/api/v1/organizations",
                      json{{"kind", kiosk ? "provider" : "ngo"}, {"name", place.first},
                           {"lat", place.second.lat}, {"lon", place.second.lon}}.dump(), "application/json");
    if (!r || r->status != 201) Die("hub refused an organisation: " + (r ? r->body : httplib::to_string(r.error())), 1);
    d->org = json::parse(r->body)["id"].get<int64_t>();
    d->id = std::string(kiosk ? "sim-kiosk-" : "sim-van-") + run + "-" + std::to_string(i);
    auto keys = sync::GenerateKeyPair();
    r = hub.Post("/api/v1/devices", json{{"id", d->id}, {"role", kiosk ? "kiosk" : "tablet"}, {"org_id", d->org},
                                         {"public_key", sync::ToBase64(keys.public_key)}}.dump(), "application/json");
    if (!r || r->status != 201) Die("hub refused a device: " + (r ? r->body : httplib::to_string(r.error())), 1);
    if (auto st = sync::AddBrokerUser(broker_dir, d->id, d->id + "-pw"); !st.ok()) Die(st.error().message, 1);
    DeviceConfig cfg;
    cfg.device_id = d->id;
    cfg.role = kiosk ? "kiosk" : "tablet";
    cfg.org_id = d->org;
    cfg.position = place.second;
    auto store = agent::AgentStore::Open(out_dir + "/devices/" + d->id + ".db");
    if (!store.ok()) Die(store.error().ToString(), 1);
    d->store = std::move(*store);
    sync::MqttClient::Options mo;
    mo.uri = broker;
    mo.client_id = d->id;
    mo.username = d->id;
    mo.password = d->id + "-pw";
    mo.subscriptions = {sync::DownTopic(d->id)};
    mo.max_buffered = 1000;
    SimDevice* raw = d.get();
    mo.on_connected = [raw] { if (raw->agent) raw->agent->OnConnected(); };
    d->mqtt = std::make_unique<sync::MqttClient>(mo, [raw](const std::string&, const std::string& p, const std::string&) {
      if (raw->agent) raw->agent->OnDown(p);
    });
    d->uplink = std::make_unique<agent::MqttUplink>(*d->mqtt);
    d->agent = std::make_unique<agent::Agent>(cfg, keys.secret_key, *d->store, SystemClock::Instance(), *d->uplink);
    devices.push_back(std::move(d));
  };
  for (int i = 0; i < kiosks; ++i) make(true, i, providers[i]);
  for (int i = 0; i < vehicles; ++i) make(false, i, receivers[i]);

  std::map<int64_t, SimDevice*> van_of_org;
  for (auto& d : devices)
    if (!d->kiosk) van_of_org[d->org] = d.get();
  Tally tally;
  const auto t0 = Steady::now();
  auto second = [&] { return int64_t(std::chrono::duration<double>(Steady::now() - t0).count()); };
  std::atomic<int> pending_answers{0};
  std::vector<std::thread> answerers;
  std::mutex answer_mu;
  for (auto& dp : devices) {
    SimDevice* d = dp.get();
    d->agent->SetObserver([&, d](const std::string& kind, const std::string& type, const json& m) {
      std::lock_guard lock(tally.mu);
      const json& data = m.contains("data") ? m["data"] : json();
      if (kind == "outcome") {
        std::string status = m.value("status", ""), op = m.value("op", "");
        if (status == "conflict") tally.counts["conflicts"]++;
        if (status == "rejected") tally.counts["errors"]++;
        if (type == sync::kOpPostSurplus && status == "accepted") {
          tally.counts["posts_accepted"]++;
          tally.posts_per_second[second()]++;
          tally.accepted_posts.insert(data.value("description", ""));
          if (tally.sent.count(op)) tally.posted_at[data["id"].get<int64_t>()] = tally.sent[op];
        }
        if ((type == sync::kOpAccept || type == sync::kOpClaim) && tally.sent.count(op)) {
          double ms = std::chrono::duration<double, std::milli>(Steady::now() - tally.sent[op]).count();
          tally.claim_ms.push_back(ms);
          tally.claim_ms_per_second[second()].push_back(ms);
          if (status == "accepted") tally.counts["claims"]++, tally.claims_per_second[second()]++;
        }
        return;
      }
      if (!data.is_object() || !data.contains("id")) return;
      int64_t id = data["id"].get<int64_t>();
      if (d->kiosk) {
        if (type == "surplus.offer_declined" || type == "surplus.offer_timed_out") tally.counts["rematches"]++;
        if (type == "surplus.dead_lettered") tally.counts["dead_lettered"]++;
        if (type == "surplus.delivered") tally.counts["delivered"]++;
        // Claimed: the van drives over, the kitchen reads out the code, the
        // driver takes it all, and delivers it.
        if (type == "surplus.claimed" && data.contains("handover_code") && data["claimed_by"].is_number_integer() &&
            van_of_org.count(data["claimed_by"].get<int64_t>())) {
          SimDevice* van = van_of_org[data["claimed_by"].get<int64_t>()];
          std::string code = data["handover_code"];
          double kg = data.value("quantity_kg", 1.0);
          pending_answers++;
          std::lock_guard alock(answer_mu);
          answerers.emplace_back([&, van, id, code, kg] {
            std::this_thread::sleep_for(delay);  // the drive, compressed (simulated)
            (void)van->agent->Submit(sync::kOpPickUp, {{"surplus_id", id}, {"handover_code", code}, {"actual_kg", kg}});
            std::this_thread::sleep_for(delay);
            (void)van->agent->Submit(sync::kOpDeliver, {{"surplus_id", id}});
            pending_answers--;
          });
        }
        return;
      }
      // A tablet: its own offer, to answer; someone else's, to race for.
      bool mine = type == "surplus.offered" && data["offer"].is_object() && data["offer"]["ngo_id"] == d->org;
      if (!mine) return;
      tally.first_offer.emplace(id, Steady::now());
      std::uniform_real_distribution<double> coin(0, 1);
      bool take = coin(rng) < accept_p;
      pending_answers++;
      std::lock_guard alock(answer_mu);
      answerers.emplace_back([&, d, id, take] {
        std::this_thread::sleep_for(delay);  // the driver reading the offer (simulated reaction time)
        auto q = d->agent->Submit(take ? sync::kOpAccept : sync::kOpDecline, {{"surplus_id", id}});
        if (q.ok()) {
          std::lock_guard lock(tally.mu);
          tally.sent[q->op] = Steady::now();
        }
        pending_answers--;
      });
    });
    d->agent->Start();
    d->mqtt->Start();
  }
  // Everyone online (their broker sessions exist) before the rush.
  for (auto& d : devices)
    while (!d->mqtt->connected()) std::this_thread::sleep_for(std::chrono::milliseconds(20));

  // The rush: each kiosk posts once at a random moment of the window.
  std::vector<std::pair<Duration, SimDevice*>> schedule;
  std::vector<int> kg;  // drawn now: rng is the observers' from here on
  {
    std::lock_guard lock(tally.mu);
    std::uniform_int_distribution<int64_t> when(0, window.count());
    for (auto& d : devices)
      if (d->kiosk) schedule.push_back({Duration(when(rng)), d.get()}), kg.push_back(2 + int(rng() % 20));
  }
  std::sort(schedule.begin(), schedule.end(), [](auto& a, auto& b) { return a.first < b.first; });
  const auto start = Steady::now();
  std::thread progress([&] {
    while (Steady::now() - start < window + std::chrono::seconds(30)) {
      std::this_thread::sleep_for(std::chrono::seconds(1));  // the progress line's period
      std::lock_guard lock(tally.mu);
      std::fprintf(stderr, "\r[%3llds] posts %d/%d  offers %zu  claims %d  delivered %d  conflicts %d  rematches %d  dlq %d  claim p95 %.0f ms   ",
                   (long long)std::chrono::duration_cast<std::chrono::seconds>(Steady::now() - start).count(),
                   tally.counts["posts_accepted"], kiosks, tally.first_offer.size(), tally.counts["claims"],
                   tally.counts["delivered"], tally.counts["conflicts"], tally.counts["rematches"], tally.counts["dead_lettered"],
                   Percentile(tally.claim_ms, 0.95));
      // Done when every post is in and nothing is still being answered or
      // collected (posts waiting in the DLQ stay there).
      if (tally.counts["posts_accepted"] == kiosks && pending_answers == 0 &&
          Steady::now() - start > window + 2 * delay + std::chrono::seconds(2))
        break;
    }
    std::fprintf(stderr, "\n");
  });
  // Racing: now and then a van claims something from its nearby list at the
  // version it saw, as a driver tapping "claim" would; two vans may pick the
  // same post, and one of them hears "already claimed".
  std::atomic<bool> racing{true};
  std::mt19937_64 race_rng(rng());  // its own: rng belongs to the observers (under tally.mu)
  std::thread racer([&] {
    std::uniform_real_distribution<double> coin(0, 1);
    std::set<int64_t> tried;
    while (racing) {
      std::this_thread::sleep_for(std::chrono::seconds(1));  // the drivers' pace (simulated)
      for (auto& d : devices) {
        if (d->kiosk || coin(race_rng) >= race_p) continue;
        auto st = d->agent->State();
        if (!st.ok() || !(*st)["nearby"].is_array() || (*st)["nearby"].empty()) continue;
        const json& pick = (*st)["nearby"][size_t(race_rng() % (*st)["nearby"].size())];
        int64_t id = pick.value("id", int64_t{0});
        if (!id || tried.count(id) > 1) continue;
        tried.insert(id);
        auto q = d->agent->Submit(sync::kOpClaim, {{"surplus_id", id}, {"version", pick.value("version", int64_t{1})}});
        std::lock_guard lock(tally.mu);
        if (q.ok()) tally.sent[q->op] = Steady::now(), tally.counts["race_claims"]++;
      }
    }
  });
  int n = 0;
  for (auto& [at, d] : schedule) {
    std::this_thread::sleep_until(start + at);  // the schedule of the rush, in real time
    json post{{"category", "prepared_meals"}, {"description", d->id + " surplus " + std::to_string(n++)},
              {"quantity_kg", kg[size_t(n - 1)]}, {"storage", "hot"}, {"best_before_in_min", 180}};
    auto q = d->agent->Submit(sync::kOpPostSurplus, post);
    std::lock_guard lock(tally.mu);
    if (q.ok()) tally.sent[q->op] = Steady::now();
    else tally.counts["errors"]++;
  }
  progress.join();
  racing = false;
  racer.join();
  {
    std::lock_guard alock(answer_mu);
    for (auto& t : answerers) t.join();
  }

  // Lost or doubled? The hub's store against what the kiosks were told.
  std::map<std::string, int> in_store;
  for (auto& d : devices) {
    if (!d->kiosk) continue;
    auto r = hub.Get(("/api/v1/surplus?limit=1000&provider_id=" + std::to_string(d->org)).c_str());
    if (!r || r->status != 200) Die("cannot read the hub's posts", 1);
    json page = json::parse(r->body);
    for (const auto& p : page["items"]) in_store[p["description"].get<std::string>()]++;
  }
  int lost = 0, doubled = 0;
  for (const auto& desc : tally.accepted_posts) lost += in_store[desc] == 0;
  for (const auto& [desc, c] : in_store) doubled += c > 1;

  std::vector<double> offer_ms;
  for (const auto& [id, at] : tally.first_offer)
    if (tally.posted_at.count(id))
      offer_ms.push_back(std::chrono::duration<double, std::milli>(at - tally.posted_at[id]).count());
  double seconds = std::chrono::duration<double>(Steady::now() - start).count();
  json results{
      {"kiosks", kiosks}, {"vehicles", vehicles}, {"window_s", window.count() / 1000.0}, {"accept_probability", accept_p},
      {"posts_accepted", tally.counts["posts_accepted"]}, {"claims", tally.counts["claims"]},
      {"delivered", tally.counts["delivered"]}, {"race_claims", tally.counts["race_claims"]},
      {"conflicts", tally.counts["conflicts"]}, {"rematches", tally.counts["rematches"]},
      {"dead_lettered", tally.counts["dead_lettered"]}, {"errors", tally.counts["errors"]},
      {"posts_per_second_over_window", tally.counts["posts_accepted"] / (window.count() / 1000.0)},
      {"seconds", seconds},
      {"post_to_first_offer_ms", {{"p50", Percentile(offer_ms, .5)}, {"p95", Percentile(offer_ms, .95)}, {"p99", Percentile(offer_ms, .99)}, {"n", offer_ms.size()}}},
      {"claim_round_trip_ms", {{"p50", Percentile(tally.claim_ms, .5)}, {"p95", Percentile(tally.claim_ms, .95)}, {"p99", Percentile(tally.claim_ms, .99)}, {"n", tally.claim_ms.size()}}},
      {"lost", lost}, {"duplicated", doubled}};
  std::ofstream(out_dir + "/results.json") << results.dump(2) << "\n";

  // The timeline: posts and claims per second (bars), claim p95 (line).
  std::ostringstream svg;
  int64_t last = 1;
  for (auto& [s, c] : tally.posts_per_second) last = std::max(last, s + 1);
  for (auto& [s, c] : tally.claims_per_second) last = std::max(last, s + 1);
  int peak = 1;
  for (auto& [s, c] : tally.posts_per_second) peak = std::max(peak, c);
  for (auto& [s, c] : tally.claims_per_second) peak = std::max(peak, c);
  double w = 760.0 / double(last), worst = 1;
  for (auto& [s, v] : tally.claim_ms_per_second) worst = std::max(worst, Percentile(v, .95));
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='800' height='300' font-family='sans-serif' font-size='11'>"
      << "<text x='20' y='16'>posts/s (green), claims/s (orange), claim p95 ms (line, max " << int(worst) << ")</text>";
  for (auto& [s, c] : tally.posts_per_second)
    svg << "<rect x='" << 20 + s * w << "' y='" << 280 - 240.0 * c / peak << "' width='" << w / 2 << "' height='"
        << 240.0 * c / peak << "' fill='#2f6b3a'/>";
  for (auto& [s, c] : tally.claims_per_second)
    svg << "<rect x='" << 20 + s * w + w / 2 << "' y='" << 280 - 240.0 * c / peak << "' width='" << w / 2
        << "' height='" << 240.0 * c / peak << "' fill='#c77c0e'/>";
  svg << "<polyline fill='none' stroke='#2a62b8' stroke-width='2' points='";
  for (auto& [s, v] : tally.claim_ms_per_second) svg << 20 + s * w + w / 2 << "," << 280 - 240.0 * Percentile(v, .95) / worst << " ";
  svg << "'/></svg>\n";
  std::ofstream(out_dir + "/timeline.svg") << svg.str();

  std::printf("%s\n", results.dump().c_str());
  for (auto& d : devices) {
    d->mqtt->Disconnect();
    d->agent->Stop();
  }
  return lost == 0 && doubled == 0 ? 0 : 1;
}
