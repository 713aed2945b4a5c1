// pp-sim: a city of kiosks and NGO vans, placed from the London food
// premises (tests/data), playing the 10 PM rush against a running hub.
// Every device is a real agent — the same Agent, AgentStore (SQLite) and
// signed MQTT ops as pp-agent, in one process — through mosquitto.
//
//   pp-sim --hub http://127.0.0.1:8080 --token ADMIN_JWT --broker-dir var/broker
//          [--kiosks 50] [--posts-per-kiosk 1] [--vehicles 10] [--window 10s]
//          [--accept 0.8] [--race 0.2] [--delay 200ms] [--speed-kmh 25] [--speed-up 60]
//          [--baseline 2000] [--data tests/data/london_food_premises.csv] [--out DIR] [--seed N]
//          [--device-dir DIR]
//
// The play:
//  * before the rush, the broker alone moves --baseline messages of a post's
//    size (one QoS 1 publisher, one subscriber): the comparison, same run;
//  * each kiosk posts --posts-per-kiosk times at random moments of --window;
//  * a van offered a post accepts with probability --accept after --delay
//    (the driver reading it), else declines and the hub offers the next;
//  * each second a van claims, with probability --race, a post from its
//    nearby list: vans race, one wins, the others hear "conflict";
//  * vans drive (VanRoute): to each kitchen whose post they won, where they
//    pick up with the code the kiosk shows, then home to deliver; they
//    report their position and free capacity every second. Simulated time
//    runs --speed-up times faster than the wall clock while they drive.
// Measured: post -> first offer, claim round trip (the driver's tap to the
// outcome on the tablet) and its parts (the tablet's queue, broker and hub,
// the tablet applying the answer), posts/s, conflicts, rematches, DLQ,
// errors, p50, p95, p99; the MQTT messages the devices sent and received per post (with
// the broker-only rate, the most posts/s the broker could carry); the CPU
// the simulator, the hub and the broker each used per post; a progress
// line each second; DIR/results.json and DIR/timeline.svg. At the end the
// hub's store is checked: every post a kiosk was told was accepted is there
// exactly once. SIGINT/SIGTERM end the
// rush early; the results so far are still written.
#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <mutex>
#include <queue>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "common/cli.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/premises.h"
#include "common/process_cpu.h"
#include "common/time_format.h"
#include "edge-agent/agent.h"
#include "edge-agent/mqtt_uplink.h"
#include "edge-agent/sim/van_route.h"
#include "sync/broker_admin.h"
#include "sync/mqtt_client.h"

namespace {

using namespace pp;
using nlohmann::json;
using Steady = std::chrono::steady_clock;

constexpr const char* kUsage =
    "pp-sim --hub URL --token JWT --broker-dir DIR [--kiosks N] [--posts-per-kiosk N] [--vehicles N]\n"
    "              [--window 10s] [--accept P] [--race P] [--delay 200ms] [--speed-kmh 25] [--speed-up 60]\n"
    "              [--baseline N] [--data CSV] [--out DIR] [--seed N] [--device-dir DIR]";
[[noreturn]] void Die(const std::string& m, int code = 2) { DieWithUsage("pp-sim", kUsage, m, code); }

// The seed's SLA for a claim (p95, p99), to compare with.
constexpr double kSlaClaimP95Ms = 800, kSlaClaimP99Ms = 1500;
// How often vans move and how often they report where they are.
constexpr auto kMoveTick = std::chrono::milliseconds(250);
constexpr int kTicksPerReport = 4;
constexpr double kVanCapacityKg = 300;

struct Options {
  std::string hub, token, broker_dir, data = "tests/data/london_food_premises.csv", out_dir = "var/sim";
  // Where each device's SQLite store lives (default OUT/devices). Real
  // kiosks and tablets each sync to their own flash; a thousand of them
  // simulated here share one disk, whose fsyncs then cost the machine the
  // hub runs on. A RAM disk (/dev/shm/...) models "each device its own
  // storage"; the stores still commit with synchronous=FULL.
  std::string device_dir;
  int kiosks = 50, posts_per_kiosk = 1, vehicles = 10, baseline = 2000;
  double accept_p = 0.8, race_p = 0.2, speed_kmh = 25, speed_up = 60;
  Duration window = std::chrono::seconds(10), delay = Duration(200);
  uint64_t seed = 7;
};

Options ParseOptions(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv, 1);
  if (!flags.ok()) Die(flags.error().message);
  std::map<std::string, std::string> opt = std::move(*flags);
  const std::set<std::string> known{"hub", "token", "broker-dir", "kiosks", "posts-per-kiosk", "vehicles",
                                    "window", "accept", "race", "delay", "speed-kmh", "speed-up",
                                    "baseline", "data", "out", "seed", "device-dir"};
  for (const auto& [k, v] : opt)
    if (!known.count(k)) Die("unknown option --" + k);
  for (const char* need : {"hub", "token", "broker-dir"})
    if (!opt.count(need)) Die(std::string("--") + need + " is required");
  auto number = [&](const char* k, double def, double lo, double hi) {
    if (!opt.count(k)) return def;
    char* end = nullptr;
    double v = std::strtod(opt[k].c_str(), &end);
    if (opt[k].empty() || *end || !(v >= lo && v <= hi))
      Die(std::string("--") + k + " must be a number in " + std::to_string(lo) + ".." + std::to_string(hi));
    return v;
  };
  auto duration = [&](const char* k, Duration def) {
    if (!opt.count(k)) return def;
    auto d = ParseDuration(opt[k]);
    if (!d) Die(std::string("--") + k + " must be a duration like 10s or 200ms");
    return *d;
  };
  Options o;
  o.hub = opt["hub"];
  o.token = opt["token"];
  o.broker_dir = opt["broker-dir"];
  if (opt.count("data")) o.data = opt["data"];
  if (opt.count("out")) o.out_dir = opt["out"];
  o.device_dir = opt.count("device-dir") ? opt["device-dir"] : o.out_dir + "/devices";
  o.kiosks = int(number("kiosks", o.kiosks, 1, 5000));
  o.posts_per_kiosk = int(number("posts-per-kiosk", o.posts_per_kiosk, 1, 1000));
  o.vehicles = int(number("vehicles", o.vehicles, 0, 1000));  // 0: posts alone, every one dead-lettered
  o.baseline = int(number("baseline", o.baseline, 0, 1e6));
  o.accept_p = number("accept", o.accept_p, 0, 1);
  o.race_p = number("race", o.race_p, 0, 1);  // per van and second: claim from its nearby list
  o.speed_kmh = number("speed-kmh", o.speed_kmh, 1, 200);
  o.speed_up = number("speed-up", o.speed_up, 1, 3600);
  o.window = duration("window", o.window);
  o.delay = duration("delay", o.delay);
  o.seed = uint64_t(number("seed", double(o.seed), 0, 1e12));
  return o;
}

struct Place {
  std::string name;
  GeoPoint at;
};

// Restaurants post, food banks collect: the premises file's two kinds.
void LoadPlaces(const Options& o, std::mt19937_64& rng, std::vector<Place>& providers,
                std::vector<Place>& receivers) {
  std::ifstream in(o.data);
  if (!in) Die("cannot read " + o.data + " (give --data)", 1);
  auto premises = ParsePremisesCsv(in);
  if (!premises.ok()) Die(o.data + ": " + premises.error().message, 1);
  for (const auto& p : *premises) (p.role == "receiver" ? receivers : providers).push_back({p.name, p.at});
  std::shuffle(providers.begin(), providers.end(), rng);
  std::shuffle(receivers.begin(), receivers.end(), rng);
  if (int(providers.size()) < o.kiosks || int(receivers.size()) < o.vehicles)
    Die("not enough places in " + o.data + " for " + std::to_string(o.kiosks) + " kiosks and " +
        std::to_string(o.vehicles) + " vans", 1);
}

// One thread runs actions when they fall due: the drivers' reaction times.
// (A thread per offer would mean thousands of threads in a big rush.)
class Later {
 public:
  Later() : thread_([this] { Run(); }) {}
  ~Later() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  void At(Steady::time_point when, std::function<void()> action) {
    {
      std::lock_guard lock(mu_);
      queue_.push({when, seq_++, std::move(action)});
    }
    cv_.notify_one();
  }
  size_t pending() {
    std::lock_guard lock(mu_);
    return queue_.size() + running_;
  }

 private:
  struct Item {
    Steady::time_point when;
    uint64_t seq;
    std::function<void()> action;
    bool operator>(const Item& o) const { return when != o.when ? when > o.when : seq > o.seq; }
  };
  void Run() {
    std::unique_lock lock(mu_);
    while (!stop_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      if (cv_.wait_until(lock, queue_.top().when) == std::cv_status::no_timeout && Steady::now() < queue_.top().when)
        continue;  // woken early: something sooner may have arrived
      auto action = queue_.top().action;
      queue_.pop();
      running_++;
      lock.unlock();
      action();
      lock.lock();
      running_--;
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Item, std::vector<Item>, std::greater<>> queue_;
  uint64_t seq_ = 0;
  size_t running_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// Where a claim's round trip goes: when its op was first handed to the
// broker and when its outcome came off the wire, by op id. With the press
// and the applied outcome (Tally) that splits the trip into the device's
// queue, the wire and the hub, and the device applying the answer.
struct ClaimWire {
  std::mutex mu;
  std::map<std::string, Steady::time_point> published, received;

  static bool IsClaim(const std::string& topic) {
    return topic.ends_with(std::string("/") + sync::kOpClaim) || topic.ends_with(std::string("/") + sync::kOpAccept);
  }
  void Published(const std::string& envelope) {
    auto j = json::parse(envelope, nullptr, false);
    if (!j.is_object() || !j["op"].is_string()) return;
    std::lock_guard lock(mu);
    published.emplace(j["op"].get<std::string>(), Steady::now());  // a resend keeps the first
  }
  void Received(const std::string& down) {
    if (down.find("\"kind\":\"outcome\"") == std::string::npos) return;
    auto at = Steady::now();
    auto j = json::parse(down, nullptr, false);
    if (!j.is_object() || !j["op"].is_string()) return;
    std::string op = j["op"].get<std::string>();
    std::lock_guard lock(mu);
    if (published.count(op)) received.emplace(std::move(op), at);
  }
};

// Counts what a device publishes (every MQTT message through the broker
// has a device at one end: its publishes up, its deliveries down), and
// notes when claims leave (ClaimWire).
class CountingUplink final : public agent::Uplink {
 public:
  CountingUplink(sync::MqttClient& client, std::atomic<uint64_t>& count, ClaimWire& claims)
      : inner_(client), count_(count), claims_(claims) {}
  bool Connected() const override { return inner_.Connected(); }
  Result<AckWait> Publish(const std::string& topic, const std::string& payload,
                          const std::string& traceparent) override {
    count_++;
    if (ClaimWire::IsClaim(topic)) claims_.Published(payload);
    return inner_.Publish(topic, payload, traceparent);
  }

 private:
  agent::MqttUplink inner_;
  std::atomic<uint64_t>& count_;
  ClaimWire& claims_;
};

struct SimDevice {
  std::string id;
  int64_t org = 0;
  bool kiosk = true;
  GeoPoint home;
  std::unique_ptr<agent::AgentStore> store;
  std::unique_ptr<sync::MqttClient> mqtt;
  std::unique_ptr<CountingUplink> uplink;
  std::unique_ptr<agent::Agent> agent;
  std::unique_ptr<sim::VanRoute> route;  // vans: guarded by City::route_mu
  // Its connect handled (subscribed, queue drain started): the broker is
  // connected a little earlier than that, and the rush waits for this.
  std::atomic<bool> online{false};
};

using metrics::Percentile;

json Percentiles(const std::vector<double>& v) {
  return {{"p50", Percentile(v, .5)}, {"p95", Percentile(v, .95)}, {"p99", Percentile(v, .99)}, {"n", v.size()}};
}

// Everything measured, guarded by one mutex (the agents' applier threads report).
struct Tally {
  std::mutex mu;
  std::map<std::string, Steady::time_point> sent;      // op -> when the person pressed
  std::map<int64_t, Steady::time_point> posted_at;     // surplus id -> its post op's press
  std::map<int64_t, Steady::time_point> first_offer;   // surplus id -> first offer seen
  std::vector<double> claim_ms;
  std::vector<double> claim_queue_ms, claim_wire_ms, claim_apply_ms;  // its parts (ClaimWire)
  std::map<std::string, int> counts;                   // posts_accepted, conflicts, ...
  std::set<std::string> accepted_posts;                // descriptions the kiosks were told were accepted
  std::set<int64_t> settled;                           // posts claimed or dead-lettered
  std::map<int64_t, int> posts_per_second, claims_per_second;
  std::map<int64_t, std::vector<double>> claim_ms_per_second;
  Steady::time_point first_post_sent{}, last_post_accepted{};
};

// CPU seconds used so far by the three processes of a rush on this machine:
// this simulator, the hub (its process_cpu_seconds_total on /metrics) and
// the broker (/proc, by mosquitto.pid). Unknown ones stay empty.
struct CpuMark {
  double sim = 0;
  std::optional<double> hub, broker;
};
CpuMark MarkCpu(httplib::Client& hub, const std::string& broker_dir) {
  CpuMark m{SelfCpuSeconds(), std::nullopt, ProcessCpuSecondsFromPidFile(broker_dir + "/mosquitto.pid")};
  if (auto r = hub.Get("/metrics"); r && r->status == 200) m.hub = CpuSecondsFromMetrics(r->body);
  return m;
}

// The broker alone moving `n` messages of `bytes`' size from one QoS 1
// publisher (the hub's user, on a down topic) to one subscriber (a device),
// with the same window of 100 unacknowledged publishes as an agent. msg/s.
double BrokerOnlyRate(const std::string& uri, const std::string& broker_dir, const std::string& device,
                      const std::string& password, const std::string& bytes, int n) {
  std::atomic<int> got{0};
  sync::MqttClient sub(sync::MqttClient::CleanSession(uri, device, device, password, {sync::DownTopic(device)}, 1000),
                       [&](auto&, auto&, auto&) { got++; });
  // mosquitto reloads its password file after SIGHUP in its own time: the
  // first attempts of a new user may be refused.
  auto until = Steady::now() + std::chrono::seconds(15);
  while (!sub.Connect(std::chrono::seconds(2)).ok())
    if (Steady::now() > until) Die("the broker does not accept the simulator's users (" + uri + ")", 1);
  const std::string hub_pw = FirstLineOrDie("pp-sim", kUsage, broker_dir + "/hub.password");
  sync::MqttClient pub(sync::MqttClient::CleanSession(uri, device + "-pub", "pp-hub", hub_pw, {}, 1000),
                       [](auto&, auto&, auto&) {});
  if (auto st = pub.Connect(std::chrono::seconds(10)); !st.ok()) Die("baseline publisher: " + st.error().ToString(), 1);
  std::vector<std::string> messages(size_t(n), bytes);
  auto t0 = Steady::now();
  if (auto st = sync::PublishWindowed(pub, sync::DownTopic(device), messages, 100); !st.ok())
    Die("baseline: " + st.error().ToString(), 1);
  while (got < n && Steady::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // polling the subscriber's count
  double rate = got / std::chrono::duration<double>(Steady::now() - t0).count();
  pub.Disconnect();
  sub.Disconnect();
  return rate;
}

// SIGINT/SIGTERM: end the rush early but still count and write the results.
std::atomic<bool> g_stop{false};
std::mutex g_stop_mu;
std::condition_variable g_stop_cv;

// Waits until `when` or a stop signal; false if stopped.
bool WaitUntil(Steady::time_point when) {
  std::unique_lock lock(g_stop_mu);
  return !g_stop_cv.wait_until(lock, when, [] { return g_stop.load(); });
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  // Signals go to one thread that only raises the flag; every other thread
  // (Paho's included, started below) inherits the blocked mask.
  const sigset_t sigs = BlockStopSignals();
  std::thread([sigs] {
    int sig = 0;
    sigwait(&sigs, &sig);
    std::lock_guard lock(g_stop_mu);
    g_stop = true;
    g_stop_cv.notify_all();
  }).detach();

  std::mt19937_64 rng(o.seed);
  SetMinLogLevel(LogLevel::kWarn);  // hundreds of agents: their info lines would drown the progress line
  const std::string broker = "tcp://127.0.0.1:" + FirstLineOrDie("pp-sim", kUsage, o.broker_dir + "/port");
  std::vector<Place> providers, receivers;
  LoadPlaces(o, rng, providers, receivers);

  // The hub: organisations and devices, with the operator's token.
  httplib::Client hub(o.hub.substr(0, o.hub.find('/', 8)));
  hub.set_bearer_token_auth(o.token.c_str());
  hub.set_read_timeout(30, 0);
  // Unique per run and process: several simulators may share one hub and broker.
  const std::string run = std::to_string(std::time(nullptr) % 1000000) + "-" + std::to_string(getpid());
  std::filesystem::create_directories(o.out_dir);
  std::error_code dir_error;
  std::filesystem::create_directories(o.device_dir, dir_error);
  if (dir_error) Die("cannot create --device-dir " + o.device_dir + ": " + dir_error.message(), 1);
  std::vector<std::unique_ptr<SimDevice>> devices;
  std::vector<std::pair<std::string, std::string>> broker_users;
  std::vector<sync::SecretKey> secrets;
  auto make = [&](bool kiosk, int i, const Place& place) {
    auto d = std::make_unique<SimDevice>();
    d->kiosk = kiosk;
    d->home = place.at;
    auto r = hub.Post("/api/v1/organizations",
                      json{{"kind", kiosk ? "provider" : "ngo"}, {"name", place.name},
                           {"lat", place.at.lat}, {"lon", place.at.lon}}.dump(), "application/json");
    if (!r || r->status != 201) Die("hub refused an organisation: " + (r ? r->body : httplib::to_string(r.error())), 1);
    d->org = json::parse(r->body)["id"].get<int64_t>();
    d->id = std::string(kiosk ? "sim-kiosk-" : "sim-van-") + run + "-" + std::to_string(i);
    auto keys = sync::GenerateKeyPair();
    r = hub.Post("/api/v1/devices", json{{"id", d->id}, {"role", kiosk ? "kiosk" : "tablet"}, {"org_id", d->org},
                                         {"public_key", sync::ToBase64(keys.public_key)}}.dump(), "application/json");
    if (!r || r->status != 201) Die("hub refused a device: " + (r ? r->body : httplib::to_string(r.error())), 1);
    broker_users.push_back({d->id, d->id + "-pw"});
    secrets.push_back(keys.secret_key);
    if (!kiosk) d->route = std::make_unique<sim::VanRoute>(place.at, o.speed_kmh, kVanCapacityKg);
    devices.push_back(std::move(d));
  };
  for (int i = 0; i < o.kiosks; ++i) make(true, i, providers[size_t(i)]);
  for (int i = 0; i < o.vehicles; ++i) make(false, i, receivers[size_t(i)]);
  const std::string baseline_user = "sim-baseline-" + run;
  broker_users.push_back({baseline_user, baseline_user + "-pw"});
  if (auto st = sync::AddNewBrokerUsers(o.broker_dir, broker_users); !st.ok()) Die(st.error().ToString(), 1);

  // 1. The broker alone, the same size of message, before anything else runs.
  double broker_only = 0;
  {
    sync::Envelope sample;
    sample.device = devices[0]->id;
    sample.seq = 1;
    sample.op = "00000000-0000-4000-8000-000000000000";
    sample.type = sync::kOpPostSurplus;
    sample.ts_ms = ToUnixMillis(SystemClock::Instance().Now());
    sample.body = {{"category", "prepared_meals"}, {"description", devices[0]->id + " surplus 0"},
                   {"quantity_kg", 12}, {"storage", "hot"}, {"best_before_in_min", 180}};
    sync::Sign(sample, secrets[0]);
    if (o.baseline > 0)
      broker_only = BrokerOnlyRate(broker, o.broker_dir, baseline_user, baseline_user + "-pw", sync::Encode(sample),
                                   o.baseline);
  }

  // 2. The city comes online: each device a real agent with its own store.
  std::atomic<uint64_t> up_msgs{0}, down_msgs{0};  // MQTT messages, all devices
  ClaimWire claim_wire;
  for (size_t i = 0; i < devices.size(); ++i) {
    SimDevice* d = devices[i].get();
    DeviceConfig cfg;
    cfg.device_id = d->id;
    cfg.role = d->kiosk ? "kiosk" : "tablet";
    cfg.org_id = d->org;
    cfg.position = d->home;
    auto store = agent::AgentStore::Open(o.device_dir + "/" + d->id + ".db");
    if (!store.ok()) Die(store.error().ToString(), 1);
    d->store = std::move(*store);
    sync::MqttClient::Options mo;
    mo.uri = broker;
    mo.client_id = d->id;
    mo.username = d->id;
    mo.password = d->id + "-pw";
    mo.subscriptions = {sync::DownTopic(d->id)};
    mo.max_buffered = 1000;
    mo.on_connected = [d] {
      if (d->agent) d->agent->OnConnected();
      d->online = true;
    };
    d->mqtt = std::make_unique<sync::MqttClient>(mo, [d, &down_msgs, &claim_wire](const std::string&, const std::string& p,
                                                                                  const std::string&) {
      down_msgs++;
      if (!d->kiosk) claim_wire.Received(p);
      if (d->agent) d->agent->OnDown(p);
    });
    d->uplink = std::make_unique<CountingUplink>(*d->mqtt, up_msgs, claim_wire);
    d->agent = std::make_unique<agent::Agent>(cfg, secrets[i], *d->store, SystemClock::Instance(), *d->uplink);
  }

  std::map<int64_t, SimDevice*> van_of_org;
  std::map<int64_t, GeoPoint> kitchen_of_org;
  for (auto& d : devices) (d->kiosk ? void(kitchen_of_org[d->org] = d->home) : void(van_of_org[d->org] = d.get()));
  Tally tally;
  Later later;
  std::mutex route_mu;  // every van's route
  const auto t0 = Steady::now();
  auto second = [&] { return int64_t(std::chrono::duration<double>(Steady::now() - t0).count()); };
  // Submits an op for a person who pressed now; its outcome is timed from here.
  auto press = [&](SimDevice* d, const char* type, json body) {
    auto pressed = Steady::now();
    auto q = d->agent->Submit(type, std::move(body));
    std::lock_guard lock(tally.mu);
    if (!q.ok()) return void(tally.counts["errors"]++);
    tally.sent[q->op] = pressed;
    if (type == std::string(sync::kOpClaim)) tally.counts["race_claims"]++;
  };
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
          tally.last_post_accepted = Steady::now();
          tally.accepted_posts.insert(data.value("description", ""));
          if (tally.sent.count(op)) tally.posted_at[data["id"].get<int64_t>()] = tally.sent[op];
        }
        if ((type == sync::kOpAccept || type == sync::kOpClaim) && tally.sent.count(op)) {
          const auto applied = Steady::now();
          auto ms_between = [](Steady::time_point a, Steady::time_point b) {
            return std::chrono::duration<double, std::milli>(b - a).count();
          };
          double ms = ms_between(tally.sent[op], applied);
          tally.claim_ms.push_back(ms);
          {
            std::lock_guard wire_lock(claim_wire.mu);
            auto pub = claim_wire.published.find(op);
            auto got = claim_wire.received.find(op);
            if (pub != claim_wire.published.end() && got != claim_wire.received.end()) {
              tally.claim_queue_ms.push_back(ms_between(tally.sent[op], pub->second));
              tally.claim_wire_ms.push_back(ms_between(pub->second, got->second));
              tally.claim_apply_ms.push_back(ms_between(got->second, applied));
            }
          }
          tally.claim_ms_per_second[second()].push_back(ms);
          if (status == "accepted") tally.counts["claims"]++, tally.claims_per_second[second()]++;
        }
        if (type == sync::kOpVehicle && status == "accepted") tally.counts["vehicle_updates"]++;
        return;
      }
      if (!data.is_object() || !data.contains("id")) return;
      int64_t id = data["id"].get<int64_t>();
      if (d->kiosk) {
        if (type == "surplus.offer_declined" || type == "surplus.offer_timed_out") tally.counts["rematches"]++;
        if (type == "surplus.dead_lettered") tally.counts["dead_lettered"]++, tally.settled.insert(id);
        if (type == "surplus.claimed") tally.settled.insert(id);
        if (type == "surplus.delivered") tally.counts["delivered"]++;
        if (type == "surplus.picked_up") tally.counts["picked_up"]++;
        // Claimed: the winning van puts this kitchen on its route; the
        // kitchen will read out the code when it arrives.
        if (type == "surplus.claimed" && data.contains("handover_code") && data["claimed_by"].is_number_integer() &&
            van_of_org.count(data["claimed_by"].get<int64_t>())) {
          SimDevice* van = van_of_org[data["claimed_by"].get<int64_t>()];
          std::lock_guard rlock(route_mu);
          van->route->Add({id, d->home, data["handover_code"].get<std::string>(), data.value("quantity_kg", 1.0)});
        }
        return;
      }
      // A tablet: its own offer, to answer after the driver has read it.
      bool mine = type == "surplus.offered" && data["offer"].is_object() && data["offer"]["ngo_id"] == d->org;
      if (!mine) return;
      tally.first_offer.emplace(id, Steady::now());
      bool take = std::uniform_real_distribution<double>(0, 1)(rng) < o.accept_p;
      later.At(Steady::now() + o.delay,
               [&, d, id, take] { press(d, take ? sync::kOpAccept : sync::kOpDecline, {{"surplus_id", id}}); });
    });
    d->agent->Start();
    d->mqtt->Start();
  }
  // Everyone online before the rush: connected, and each connect handled
  // (Paho reports "connected" before its connect handler has run; with a
  // thousand devices the handlers were still queued seconds into the rush).
  const auto online_from = Steady::now();
  for (auto& d : devices)
    while (!d->online && !g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::fprintf(stderr, "%zu devices online in %.1f s\n", devices.size(),
               std::chrono::duration<double>(Steady::now() - online_from).count());

  // 3. The rush: each kiosk posts --posts-per-kiosk times within the window.
  std::vector<std::pair<Duration, SimDevice*>> schedule;
  std::vector<int> kg;
  {
    std::lock_guard lock(tally.mu);  // rng belongs to the observers from here on
    std::uniform_int_distribution<int64_t> when(0, o.window.count());
    for (int k = 0; k < o.posts_per_kiosk; ++k)
      for (auto& d : devices)
        if (d->kiosk) schedule.push_back({Duration(when(rng)), d.get()});
    std::sort(schedule.begin(), schedule.end(), [](auto& a, auto& b) { return a.first < b.first; });
    for (size_t i = 0; i < schedule.size(); ++i) kg.push_back(2 + int(rng() % 20));
  }
  const int total_posts = int(schedule.size());
  const CpuMark cpu_before = MarkCpu(hub, o.broker_dir);
  const auto start = Steady::now();
  const uint64_t up_before = up_msgs, down_before = down_msgs;
  auto routes_idle = [&] {
    std::lock_guard lock(route_mu);
    for (auto& d : devices)
      if (!d->kiosk && !d->route->idle()) return false;
    return true;
  };
  std::atomic<bool> rush_over{false};
  std::thread progress([&] {
    const auto give_up = start + o.window + std::chrono::seconds(180);
    while (!g_stop && Steady::now() < give_up) {
      if (!WaitUntil(Steady::now() + std::chrono::seconds(1))) break;  // the progress line's period
      bool done = false;
      {
        std::lock_guard lock(tally.mu);
        std::fprintf(stderr,
                     "\r[%3llds] posts %d/%d  offers %zu  claims %d  picked up %d  delivered %d  conflicts %d  "
                     "rematches %d  dlq %d  claim p95 %.0f ms   ",
                     (long long)std::chrono::duration_cast<std::chrono::seconds>(Steady::now() - start).count(),
                     tally.counts["posts_accepted"], total_posts, tally.first_offer.size(), tally.counts["claims"],
                     tally.counts["picked_up"], tally.counts["delivered"], tally.counts["conflicts"],
                     tally.counts["rematches"], tally.counts["dead_lettered"], Percentile(tally.claim_ms, 0.95));
        // Done when every post is in and claimed or dead-lettered (posts
        // waiting in the DLQ stay there), and nothing is still being
        // answered or driven.
        done = tally.counts["posts_accepted"] == total_posts && int(tally.settled.size()) == total_posts &&
               Steady::now() - start > o.window + 2 * o.delay;
      }
      if (done && later.pending() == 0 && routes_idle()) break;
    }
    rush_over = true;
    std::fprintf(stderr, "\n");
  });
  // Vans drive: simulated time runs --speed-up times the wall clock.
  std::thread driver([&] {
    auto last = Steady::now();
    std::map<SimDevice*, GeoPoint> reported;
    for (int tick = 1; !rush_over; ++tick) {
      std::this_thread::sleep_for(kMoveTick);  // the simulation's clock tick (wall time drives it)
      auto now = Steady::now();
      auto simulated = std::chrono::duration_cast<Duration>((now - last) * o.speed_up);
      last = now;
      for (auto& dp : devices) {
        if (dp->kiosk) continue;
        std::vector<sim::Arrival> reached;
        GeoPoint at;
        double free_kg;
        {
          std::lock_guard lock(route_mu);
          reached = dp->route->Advance(simulated);
          at = dp->route->position();
          free_kg = dp->route->free_kg();
        }
        for (const auto& a : reached) {
          if (a.kind == sim::Arrival::Kind::kPickUp)
            press(dp.get(), sync::kOpPickUp, {{"surplus_id", a.stop.surplus_id}, {"handover_code", a.stop.handover_code},
                                             {"actual_kg", a.stop.kg}});
          else
            press(dp.get(), sync::kOpDeliver, {{"surplus_id", a.stop.surplus_id}});
        }
        auto& was = reported.try_emplace(dp.get(), dp->home).first->second;
        if (tick % kTicksPerReport == 0 && (was.lat != at.lat || was.lon != at.lon)) {
          press(dp.get(), sync::kOpVehicle, {{"lat", at.lat}, {"lon", at.lon}, {"free_kg", free_kg}});
          was = at;
        }
      }
    }
  });
  // Racing: now and then a van claims something from its nearby list at the
  // version it saw, as a driver tapping "claim" would; two vans may pick the
  // same post, and one of them hears "already claimed".
  std::mt19937_64 race_rng(rng());  // its own: rng belongs to the observers (under tally.mu)
  std::thread racer([&] {
    std::uniform_real_distribution<double> coin(0, 1);
    std::map<int64_t, int> tried;
    while (!rush_over) {
      std::this_thread::sleep_for(std::chrono::seconds(1));  // the drivers' pace (simulated)
      for (auto& d : devices) {
        if (d->kiosk || coin(race_rng) >= o.race_p) continue;
        auto st = d->agent->State();
        if (!st.ok() || !(*st)["nearby"].is_array() || (*st)["nearby"].empty()) continue;
        const json& pick = (*st)["nearby"][size_t(race_rng() % (*st)["nearby"].size())];
        int64_t id = pick.value("id", int64_t{0});
        if (!id || tried[id]++ > 1) continue;  // at most two vans race for one post
        press(d.get(), sync::kOpClaim, {{"surplus_id", id}, {"version", pick.value("version", int64_t{1})}});
      }
    }
  });
  {
    std::lock_guard lock(tally.mu);
    tally.first_post_sent = Steady::now();
  }
  int posts_sent = 0;  // fewer than scheduled if a signal ends the rush early
  for (size_t n = 0; n < schedule.size() && !g_stop; ++n, ++posts_sent) {
    auto [at, d] = schedule[n];
    if (!WaitUntil(start + at)) break;  // the schedule of the rush, in real time
    press(d, sync::kOpPostSurplus,
          {{"category", "prepared_meals"}, {"description", d->id + " surplus " + std::to_string(n)},
           {"quantity_kg", kg[n]}, {"storage", "hot"}, {"best_before_in_min", 180}});
  }
  progress.join();
  driver.join();
  racer.join();
  const CpuMark cpu_after = MarkCpu(hub, o.broker_dir);

  // 4. Lost or doubled? The hub's store against what the kiosks were told.
  std::map<std::string, int> in_store;
  for (auto& d : devices) {
    if (!d->kiosk) continue;
    std::string after;
    do {
      auto r = hub.Get(("/api/v1/surplus?limit=1000&provider_id=" + std::to_string(d->org) + after).c_str());
      if (!r || r->status != 200) Die("cannot read the hub's posts", 1);
      json page = json::parse(r->body);
      for (const auto& p : page["items"]) in_store[p["description"].get<std::string>()]++;
      after = page.contains("next_after") && page["next_after"].is_number_integer()
                  ? "&after=" + std::to_string(page["next_after"].get<int64_t>())
                  : "";
    } while (!after.empty());
  }
  std::unique_lock lock(tally.mu);
  int lost = 0, doubled = 0;
  for (const auto& desc : tally.accepted_posts) lost += in_store[desc] == 0;
  for (const auto& [desc, c] : in_store) doubled += c > 1;

  std::vector<double> offer_ms;
  for (const auto& [id, at] : tally.first_offer)
    if (tally.posted_at.count(id))
      offer_ms.push_back(std::chrono::duration<double, std::milli>(at - tally.posted_at[id]).count());
  const double seconds = std::chrono::duration<double>(Steady::now() - start).count();
  const double post_span = std::chrono::duration<double>(tally.last_post_accepted - tally.first_post_sent).count();
  const double claim_p95 = Percentile(tally.claim_ms, .95), claim_p99 = Percentile(tally.claim_ms, .99);
  // Every message of the rush crosses the broker once: what a post costs
  // the broker, and so the most posts/s it could carry at the rate it
  // moved messages alone (measured above, same run).
  const uint64_t up = up_msgs - up_before, down = down_msgs - down_before;
  const double per_post = tally.counts["posts_accepted"] > 0 ? double(up + down) / tally.counts["posts_accepted"] : 0;
  auto cpu_us_per_post = [&](std::optional<double> before, std::optional<double> after) -> json {
    if (!before || !after || tally.counts["posts_accepted"] == 0) return nullptr;
    return (*after - *before) * 1e6 / tally.counts["posts_accepted"];
  };
  json results{
      {"kiosks", o.kiosks}, {"posts_per_kiosk", o.posts_per_kiosk}, {"vehicles", o.vehicles},
      {"window_s", o.window.count() / 1000.0}, {"accept_probability", o.accept_p}, {"interrupted", g_stop.load()},
      {"posts_scheduled", total_posts}, {"posts_sent", posts_sent}, {"posts_accepted", tally.counts["posts_accepted"]}, {"claims", tally.counts["claims"]},
      {"picked_up", tally.counts["picked_up"]}, {"delivered", tally.counts["delivered"]},
      {"race_claims", tally.counts["race_claims"]}, {"conflicts", tally.counts["conflicts"]},
      {"rematches", tally.counts["rematches"]}, {"dead_lettered", tally.counts["dead_lettered"]},
      {"errors", tally.counts["errors"]}, {"vehicle_updates", tally.counts["vehicle_updates"]},
      // Durable posts per second end to end: first post pressed to the last
      // post's outcome back on its kiosk.
      {"posts_per_second", post_span > 0 ? tally.counts["posts_accepted"] / post_span : 0.0},
      {"broker_only_msgs_per_second", broker_only},
      {"mqtt_messages", {{"up", up}, {"down", down}, {"per_post", per_post},
                         {"broker_bound_posts_per_second", per_post > 0 ? broker_only / per_post : 0.0}}},
      {"seconds", seconds},
      {"post_to_first_offer_ms", Percentiles(offer_ms)},
      {"claim_round_trip_ms", Percentiles(tally.claim_ms)},
      // The same trips in three parts: pressed to first handed to the broker
      // (the device's queue and sender), to the outcome off the wire (broker,
      // hub ingest and commit, outbox relay, broker), to applied on the device.
      // CPU each process used over the rush (first post to every post settled
      // and every van home), per post accepted: where two cores' time went.
      {"cpu_us_per_post", {{"simulator", cpu_us_per_post(cpu_before.sim, cpu_after.sim)},
                           {"hub", cpu_us_per_post(cpu_before.hub, cpu_after.hub)},
                           {"broker", cpu_us_per_post(cpu_before.broker, cpu_after.broker)}}},
      {"claim_round_trip_parts_ms", {{"device_queue", Percentiles(tally.claim_queue_ms)},
                                     {"broker_and_hub", Percentiles(tally.claim_wire_ms)},
                                     {"device_apply", Percentiles(tally.claim_apply_ms)}}},
      {"seed_sla", {{"claim_p95_ms", kSlaClaimP95Ms}, {"claim_p99_ms", kSlaClaimP99Ms},
                    {"met", !tally.claim_ms.empty() && claim_p95 < kSlaClaimP95Ms && claim_p99 < kSlaClaimP99Ms}}},
      {"lost", lost}, {"duplicated", doubled}};
  std::ofstream(o.out_dir + "/results.json") << results.dump(2) << "\n";

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
      << "<text x='20' y='16'>posts/s (green, peak " << peak << "), claims/s (orange), claim p95 ms (line, max "
      << int(worst) << "); " << last << " s</text>";
  for (auto& [s, c] : tally.posts_per_second)
    svg << "<rect x='" << 20 + s * w << "' y='" << 280 - 240.0 * c / peak << "' width='" << w / 2 << "' height='"
        << 240.0 * c / peak << "' fill='#2f6b3a'/>";
  for (auto& [s, c] : tally.claims_per_second)
    svg << "<rect x='" << 20 + s * w + w / 2 << "' y='" << 280 - 240.0 * c / peak << "' width='" << w / 2
        << "' height='" << 240.0 * c / peak << "' fill='#c77c0e'/>";
  svg << "<polyline fill='none' stroke='#2a62b8' stroke-width='2' points='";
  for (auto& [s, v] : tally.claim_ms_per_second) svg << 20 + s * w + w / 2 << "," << 280 - 240.0 * Percentile(v, .95) / worst << " ";
  svg << "'/></svg>\n";
  std::ofstream(o.out_dir + "/timeline.svg") << svg.str();
  lock.unlock();  // the agents' observers take it while their queues drain

  std::printf("%s\n", results.dump().c_str());
  std::fflush(stdout);
  // Off shift: the vans tell the hub they are offline, so that a later run
  // against the same hub does not offer posts to tablets nobody holds.
  for (auto& d : devices)
    if (!d->kiosk) (void)d->agent->Submit(sync::kOpVehicle, {{"online", false}});
  const auto drained_by = Steady::now() + std::chrono::seconds(10);
  for (auto& d : devices) {
    while (Steady::now() < drained_by) {
      auto st = d->agent->State();
      if (!st.ok() || (*st)["queued"] == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the agent's queue
    }
  }
  for (auto& d : devices) {
    d->mqtt->Disconnect();
    d->agent->Stop();
  }
  // The clients go first, here: their handlers use the counters, the tally
  // and the agents, which would otherwise be destroyed before them: a
  // message Paho still delivered after a disconnect that timed out would
  // then touch freed memory.
  for (auto& d : devices) d->mqtt.reset();
  devices.clear();
  return lost == 0 && doubled == 0 ? 0 : 1;
}
