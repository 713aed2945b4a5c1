#include "edge-agent/sim/city_shard.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <set>
#include <string_view>
#include <thread>

#include "common/clock.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/process_cpu.h"
#include "edge-agent/agent.h"
#include "edge-agent/mqtt_uplink.h"
#include "edge-agent/sim/shard_link.h"
#include "edge-agent/sim/tally.h"
#include "edge-agent/sim/van_route.h"
#include "sync/mqtt_client.h"

namespace pp::sim {

using nlohmann::json;

json ShardPlan::ToJson() const {
  json devs = json::array(), ps = json::array(), vans = json::array();
  for (const auto& d : devices)
    devs.push_back({{"id", d.id}, {"org", d.org}, {"kiosk", d.kiosk}, {"lat", d.home.lat}, {"lon", d.home.lon},
                    {"secret", sync::ToBase64(d.secret)}});
  for (const auto& p : posts) ps.push_back({p.at_ms, p.device, p.number, p.kg});
  for (const auto& [org, s] : van_shard) vans.push_back({org, s});
  return {{"t", "plan"}, {"shard", shard}, {"shards", shards}, {"broker", broker_uri}, {"device_dir", device_dir},
          {"accept", accept_p}, {"race", race_p}, {"speed_kmh", speed_kmh}, {"speed_up", speed_up},
          {"delay_ms", delay_ms}, {"window_ms", window_ms}, {"seed", seed}, {"devices", devs}, {"posts", ps},
          {"van_shard", vans}, {"kitchens", kitchens}};
}

Result<ShardPlan> ShardPlan::FromJson(const json& j) {
  try {
    ShardPlan p;
    p.shard = j.at("shard").get<int>();
    p.shards = j.at("shards").get<int>();
    p.broker_uri = j.at("broker").get<std::string>();
    p.device_dir = j.at("device_dir").get<std::string>();
    p.accept_p = j.at("accept").get<double>();
    p.race_p = j.at("race").get<double>();
    p.speed_kmh = j.at("speed_kmh").get<double>();
    p.speed_up = j.at("speed_up").get<double>();
    p.delay_ms = j.at("delay_ms").get<int64_t>();
    p.window_ms = j.at("window_ms").get<int64_t>();
    p.seed = j.at("seed").get<uint64_t>();
    for (const auto& d : j.at("devices")) {
      Device dev{d.at("id").get<std::string>(), d.at("org").get<int64_t>(), d.at("kiosk").get<bool>(),
                 {d.at("lat").get<double>(), d.at("lon").get<double>()}, {}};
      auto key = sync::SecretKeyFromBase64(d.at("secret").get<std::string>());
      if (!key.ok()) return Error::Invalid("plan: device " + dev.id + ": " + key.error().message);
      dev.secret = *key;
      p.devices.push_back(std::move(dev));
    }
    for (const auto& q : j.at("posts")) {
      Post post{q.at(0).get<int64_t>(), q.at(1).get<size_t>(), q.at(2).get<int>(), q.at(3).get<int>()};
      if (post.device >= p.devices.size() || !p.devices[post.device].kiosk)
        return Error::Invalid("plan: post " + std::to_string(post.number) + " is not a kiosk's");
      p.posts.push_back(post);
    }
    for (const auto& v : j.at("van_shard")) p.van_shard.push_back({v.at(0).get<int64_t>(), v.at(1).get<int>()});
    p.kitchens = j.at("kitchens").get<std::vector<int64_t>>();
    if (p.shards < 1 || p.shards > kMaxShards || p.shard < 0 || p.shard >= p.shards)
      return Error::Invalid("plan: shard " + std::to_string(p.shard) + " of " + std::to_string(p.shards));
    return p;
  } catch (const json::exception& e) {
    return Error::Invalid(std::string("plan: ") + e.what());
  }
}

namespace {

// How often vans move and how often they report where they are.
constexpr auto kMoveTick = std::chrono::milliseconds(250);
constexpr int kTicksPerReport = 4;
constexpr double kVanCapacityKg = 300;

int shard_no = 0;  // for messages: which process said it
[[noreturn]] void Fail(const std::string& m) {
  std::fprintf(stderr, "pp-sim (process %d): %s\n", shard_no, m.c_str());
  std::exit(1);
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
// and the applied outcome that splits the trip into the device's queue,
// the wire and the hub, and the device applying the answer.
struct ClaimWire {
  std::mutex mu;
  std::map<std::string, Steady::time_point> published, received;

  static bool IsClaim(std::string_view type) { return type == sync::kOpClaim || type == sync::kOpAccept; }
  // A publish of a device: a claim alone, or a batch that may hold claims.
  void Published(const std::string& topic, const std::string& payload) {
    const auto where = sync::ParseUpTopic(topic);
    if (!where) return;
    const auto at = Steady::now();
    std::vector<std::string> ops;
    if (where->second == sync::kUpBatch) {
      auto items = sync::DecodeUpBatch(payload);
      if (!items.ok()) return;
      for (const auto& item : *items)
        if (item.env.ok() && IsClaim(item.env->type)) ops.push_back(item.env->op);
    } else if (IsClaim(where->second)) {
      auto j = json::parse(payload, nullptr, false);
      if (j.is_object() && j["op"].is_string()) ops.push_back(j["op"].get<std::string>());
    }
    std::lock_guard lock(mu);
    for (auto& op : ops) published.emplace(std::move(op), at);  // a resend keeps the first
  }
  void Received(const std::string& down) {
    if (down.find("\"kind\":\"outcome\"") == std::string::npos) return;
    auto at = Steady::now();
    auto messages = sync::DecodeDown(down);
    if (!messages.ok()) return;
    std::lock_guard lock(mu);
    for (auto& j : messages->messages) {
      if (!j.contains("op") || !j["op"].is_string()) continue;
      std::string op = j["op"].get<std::string>();
      if (published.count(op)) received.emplace(std::move(op), at);
    }
  }
};

// Counts what a device publishes (every MQTT message through the broker
// has a device at one end: its publishes up, its deliveries down), and
// notes when a van's claims leave (ClaimWire; null for a kiosk, which
// does not claim: its publishes are not parsed).
class CountingUplink final : public agent::Uplink {
 public:
  CountingUplink(sync::MqttClient& client, std::atomic<uint64_t>& count, ClaimWire* claims)
      : inner_(client), count_(count), claims_(claims) {}
  bool Connected() const override { return inner_.Connected(); }
  Result<AckWait> Publish(const std::string& topic, const std::string& payload,
                          const std::string& traceparent) override {
    count_++;
    if (claims_) claims_->Published(topic, payload);
    return inner_.Publish(topic, payload, traceparent);
  }

 private:
  agent::MqttUplink inner_;
  std::atomic<uint64_t>& count_;
  ClaimWire* claims_;
};

struct SimDevice {
  ShardPlan::Device plan;
  std::unique_ptr<agent::AgentStore> store;
  std::unique_ptr<sync::MqttClient> mqtt;
  std::unique_ptr<CountingUplink> uplink;
  std::unique_ptr<agent::Agent> agent;
  std::unique_ptr<VanRoute> route;  // vans: guarded by Shard::route_mu
  // Its connect handled (subscribed, queue drain started): the broker is
  // connected a little earlier than that, and the rush waits for this.
  std::atomic<bool> online{false};
  bool kiosk() const { return plan.kiosk; }
};

double MsBetween(Steady::time_point a, Steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

class Shard {
 public:
  Shard(ShardPlan plan, LineReader inbox)
      : plan_(std::move(plan)),
        kitchens_(plan_.kitchens.begin(), plan_.kitchens.end()),
        inbox_(std::move(inbox)),
        rng_(plan_.seed) {
    for (const auto& [org, s] : plan_.van_shard) van_shard_[org] = s;
  }

  int Run() {
    inbox_thread_ = std::thread([this] { ReadInbox(); });
    BringOnline();
    if (!WaitForStart()) return Finish();
    Rush();
    return Finish();
  }

 private:
  // 1. Each device a real agent with its own store, connected.
  void BringOnline() {
    for (const auto& p : plan_.devices) {
      auto d = std::make_unique<SimDevice>();
      d->plan = p;
      if (!p.kiosk) {
        d->route = std::make_unique<VanRoute>(p.home, plan_.speed_kmh, kVanCapacityKg);
        van_of_org_[p.org] = d.get();
      }
      devices_.push_back(std::move(d));
    }
    for (auto& dp : devices_) {
      SimDevice* d = dp.get();
      DeviceConfig cfg;
      cfg.device_id = d->plan.id;
      cfg.role = d->kiosk() ? "kiosk" : "tablet";
      cfg.org_id = d->plan.org;
      cfg.position = d->plan.home;
      auto store = agent::AgentStore::Open(plan_.device_dir + "/" + d->plan.id + ".db");
      if (!store.ok()) Fail(store.error().ToString());
      d->store = std::move(*store);
      sync::MqttClient::Options mo;
      mo.uri = plan_.broker_uri;
      mo.client_id = mo.username = d->plan.id;
      mo.password = d->plan.id + "-pw";
      mo.subscriptions = {sync::DownTopic(d->plan.id)};
      mo.max_buffered = 1000;
      mo.on_connected = [d] {
        if (d->agent) d->agent->OnConnected();
        d->online = true;
      };
      d->mqtt = std::make_unique<sync::MqttClient>(mo, [this, d](const std::string&, const std::string& p,
                                                               const std::string&) {
        down_msgs_++;
        if (!d->kiosk()) claim_wire_.Received(p);
        if (d->agent) d->agent->OnDown(p);
      });
      d->uplink = std::make_unique<CountingUplink>(*d->mqtt, up_msgs_, d->kiosk() ? nullptr : &claim_wire_);
      d->agent = std::make_unique<agent::Agent>(cfg, d->plan.secret, *d->store, SystemClock::Instance(), *d->uplink);
      d->agent->SetObserver([this, d](const std::string& kind, const std::string& type, const json& m) {
        Observe(d, kind, type, m);
      });
    }
    for (auto& d : devices_) {
      d->agent->Start();
      d->mqtt->Start();
    }
    // Everyone online before the rush: connected, and each connect handled
    // (Paho reports "connected" before its connect handler has run).
    const auto from = Steady::now();
    for (auto& d : devices_)
      while (!d->online && !StopSignal::raised()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    Report({{"t", "online"}, {"s", std::chrono::duration<double>(Steady::now() - from).count()}});
  }

  // The director's inbox: the start, other kitchens' routes for our vans, the end.
  void ReadInbox() {
    while (auto line = inbox_.Next()) {
      try {
        if (!Dispatch(*line)) return;
      } catch (const json::exception& e) {  // a field of the wrong type: say so, read on
        std::fprintf(stderr, "pp-sim (process %d): a message it cannot read (%s): %.200s\n", plan_.shard, e.what(),
                     line->c_str());
      }
    }
  }

  // One inbox message; false once it says "end".
  bool Dispatch(const std::string& line) {
    const json m = json::parse(line, nullptr, false);
    const std::string t = m.is_object() ? m.value("t", "") : "";
    if (t == "start") {
      std::lock_guard lock(mu_);
      start_ns_ = m.at("at_ns").get<int64_t>();
      cv_.notify_all();
    } else if (t == "route") {
      auto van = van_of_org_.find(m.at("van_org").get<int64_t>());
      if (van == van_of_org_.end()) {
        std::fprintf(stderr, "pp-sim (process %d): a route for a van not driven here: %.200s\n", plan_.shard,
                     line.c_str());
        return true;
      }
      std::lock_guard rlock(route_mu_);
      van->second->route->Add({m.at("id").get<int64_t>(), {m.at("lat").get<double>(), m.at("lon").get<double>()},
                               m.at("code").get<std::string>(), m.at("kg").get<double>()});
      stops_received_++;
    } else if (t == "interrupt") {
      StopSignal::Raise();
    } else if (t == "end") {
      std::lock_guard lock(mu_);
      ended_ = true;
      cv_.notify_all();
      return false;
    } else {
      std::fprintf(stderr, "pp-sim (process %d): ignoring a message it does not know: %.200s\n", plan_.shard,
                   line.c_str());
    }
    return true;
  }

  bool WaitForStart() {
    std::unique_lock lock(mu_);
    // The stop flag has its own wake-up; look at it a few times a second.
    while (!start_ns_ && !ended_ && !StopSignal::raised()) cv_.wait_for(lock, std::chrono::milliseconds(100));
    return start_ns_ && !StopSignal::raised();
  }

  Steady::time_point Start() const { return Steady::time_point(std::chrono::nanoseconds(start_ns_.load())); }

  // Seconds since the rush's start (the same start in every process) at `t`.
  int SecondOf(Steady::time_point t) const {
    const int64_t start = start_ns_;
    if (!start) return 0;
    const int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    return int((ns - start) / 1'000'000'000);
  }

  // Submits an op for a person who pressed now; its outcome is timed from here.
  void Press(SimDevice* d, const char* type, json body) {
    auto pressed = Steady::now();
    auto q = d->agent->Submit(type, std::move(body));
    std::lock_guard lock(tally_mu_);
    if (!q.ok()) return void(tally_.counts["errors"]++);
    sent_[q->op] = pressed;
    awaiting_[q->op] = type == std::string_view(sync::kOpPostSurplus);
    if (type == std::string(sync::kOpClaim)) tally_.counts["race_claims"]++;
    // Its outcome may have come back before we got here (Submit hands the
    // op to the sender at once): count it now.
    if (auto early = early_.find(q->op); early != early_.end()) {
      auto [op_type, m, applied] = std::move(early->second);
      early_.erase(early);
      CountOutcome(op_type, m, applied);
    }
  }

  // Runs on each agent's applier thread: what its device was told.
  void Observe(SimDevice* d, const std::string& kind, const std::string& type, const json& m) {
    std::lock_guard lock(tally_mu_);
    const json& data = m.contains("data") ? m["data"] : json();
    if (kind == "outcome") {
      if (type == sync::kOpNearby || type == sync::kOpPing) return;  // queries, not pressed
      const std::string op = m.value("op", "");
      if (!sent_.count(op)) early_[op] = {type, m, Steady::now()};  // Press has yet to note it
      else CountOutcome(type, m, Steady::now());
      return;
    }
    if (!data.is_object() || !data.contains("id")) return;
    int64_t id = data["id"].get<int64_t>();
    if (d->kiosk()) {
      if (type == "surplus.offer_declined" || type == "surplus.offer_timed_out") tally_.counts["rematches"]++;
      if (type == "surplus.dead_lettered") tally_.counts["dead_lettered"]++, settled_.insert(id);
      if (type == "surplus.claimed") tally_.counts["kitchens_told_claimed"]++, settled_.insert(id);
      if (type == "surplus.delivered") tally_.counts["delivered"]++;
      if (type == "surplus.picked_up") tally_.counts["picked_up"]++;
      // Claimed: the winning van (in whichever process drives it) puts this
      // kitchen on its route; the kitchen will read out the code when it arrives.
      if (type == "surplus.claimed" && data.contains("handover_code") && data["claimed_by"].is_number_integer()) {
        auto van = van_shard_.find(data["claimed_by"].get<int64_t>());
        if (van != van_shard_.end()) {
          json route{{"t", "route"}, {"van_org", van->first}, {"id", id}, {"lat", d->plan.home.lat},
                     {"lon", d->plan.home.lon}, {"code", data["handover_code"].get<std::string>()},
                     {"kg", data.value("quantity_kg", 1.0)}};
          if (auto st = WriteLine(kFirstPeerFd + van->second, route.dump()); !st.ok())
            tally_.counts["errors"]++;
        }
      }
      return;
    }
    // A tablet: its own offer, to answer after the driver has read it.
    bool mine = type == "surplus.offered" && data["offer"].is_object() && data["offer"]["ngo_id"] == d->plan.org;
    if (!mine) return;
    if (!kitchens_.count(data.value("provider_id", int64_t{0}))) {
      // A post of no kitchen in this run (left in a hub kept from an earlier
      // one): nobody here could hand it over. Declined, the hub offers it on.
      later_.At(Steady::now() + std::chrono::milliseconds(plan_.delay_ms),
                [this, d, id] { Press(d, sync::kOpDecline, {{"surplus_id", id}}); });
      return;
    }
    tally_.counts["offers"]++;
    tally_.first_offer.emplace(id, Steady::now());
    bool take = std::uniform_real_distribution<double>(0, 1)(rng_) < plan_.accept_p;
    later_.At(Steady::now() + std::chrono::milliseconds(plan_.delay_ms),
              [this, d, id, take] { Press(d, take ? sync::kOpAccept : sync::kOpDecline, {{"surplus_id", id}}); });
  }

  // An outcome of an op pressed at sent_[op], applied on its device at
  // `applied`. Called with tally_mu_ held.
  void CountOutcome(const std::string& type, const json& m, Steady::time_point applied) {
    const json& data = m.contains("data") ? m["data"] : json();
    const std::string status = m.value("status", ""), op = m.value("op", "");
    const Steady::time_point pressed = sent_.at(op);
    awaiting_.erase(op);
    if (status == "conflict") tally_.counts["conflicts"]++;
    if (status == "rejected") tally_.counts["errors"]++;
    if (type == sync::kOpPostSurplus && status == "accepted") {
      tally_.counts["posts_accepted"]++;
      tally_.posts_per_second[SecondOf(applied)]++;
      tally_.last_post_accepted = std::max(tally_.last_post_accepted.value_or(applied), applied);
      tally_.accepted_posts.insert(data.value("description", ""));
      if (data["id"].is_number_integer()) tally_.posted_at[data["id"].get<int64_t>()] = pressed;
    }
    if (type == sync::kOpAccept || type == sync::kOpClaim) {
      double ms = MsBetween(pressed, applied);
      tally_.claim_ms.push_back(ms);
      {
        std::lock_guard wire_lock(claim_wire_.mu);
        auto pub = claim_wire_.published.find(op);
        auto got = claim_wire_.received.find(op);
        if (pub != claim_wire_.published.end() && got != claim_wire_.received.end()) {
          tally_.claim_queue_ms.push_back(MsBetween(pressed, pub->second));
          tally_.claim_wire_ms.push_back(MsBetween(pub->second, got->second));
          tally_.claim_apply_ms.push_back(MsBetween(got->second, applied));
        }
      }
      tally_.claim_ms_per_second[SecondOf(applied)].push_back(ms);
      if (status == "accepted") tally_.counts["claims"]++, tally_.claims_per_second[SecondOf(applied)]++;
    }
    if (type == sync::kOpVehicle && status == "accepted") tally_.counts["vehicle_updates"]++;
    // The kitchen hears of each (perhaps in another process): the director
    // waits until every one has been heard.
    if (type == sync::kOpPickUp && status == "accepted") tally_.counts["pickups_accepted"]++;
    if (type == sync::kOpDeliver && status == "accepted") tally_.counts["deliveries_accepted"]++;
  }

  bool RoutesIdle() {
    std::lock_guard lock(route_mu_);
    for (auto& d : devices_)
      if (!d->kiosk() && !d->route->idle()) return false;
    return true;
  }

  // Once a second: counts so far, the claims timed since the last report,
  // and whether this process has nothing left to do. Only the director
  // knows when the whole city is; it says "end".
  bool ReportProgress(size_t& claims_reported) {
    json m{{"t", "progress"}};
    bool done;
    // No race claim is pressed while we judge, and none after we say done
    // (see racing_).
    std::lock_guard race_lock(race_mu_);
    {
      std::lock_guard lock(tally_mu_);
      m["counts"] = tally_.counts;
      m["claim_ms"] = std::vector<double>(tally_.claim_ms.begin() + long(claims_reported), tally_.claim_ms.end());
      claims_reported = tally_.claim_ms.size();
      // Done when every post of our kitchens is in and claimed or
      // dead-lettered, every claim our vans won has reached their route,
      // every op pressed has its outcome, and nothing is still being
      // answered or driven.
      done = tally_.counts["posts_accepted"] == int(plan_.posts.size()) && settled_.size() == plan_.posts.size() &&
             stops_received_ >= tally_.counts["claims"] && awaiting_.empty() &&
             Steady::now() - Start() > std::chrono::milliseconds(plan_.window_ms + 2 * plan_.delay_ms);
    }
    m["done"] = done && later_.pending() == 0 && RoutesIdle();
    racing_ = !m["done"].get<bool>();
    return Report(m);
  }

  // 2. The rush: our kiosks post on the director's schedule; vans answer
  // offers, race and drive, until the director says "end" or a stop.
  void Rush() {
    cpu_before_ = SelfCpuSeconds();
    up_before_ = up_msgs_;
    down_before_ = down_msgs_;
    std::atomic<bool> rush_over{false};
    std::thread progress([&] {
      size_t claims_reported = 0;
      std::unique_lock lock(mu_);
      while (!ended_ && !StopSignal::raised()) {
        cv_.wait_for(lock, std::chrono::seconds(1));  // the progress report's period, or the end
        if (ended_ || StopSignal::raised()) break;
        lock.unlock();
        if (!ReportProgress(claims_reported)) StopSignal::Raise();  // the director is gone
        lock.lock();
      }
      rush_over = true;
    });
    // Vans drive: simulated time runs --speed-up times the wall clock.
    std::thread driver([&] {
      auto last = Steady::now();
      std::map<SimDevice*, GeoPoint> reported;
      for (int tick = 1; !rush_over; ++tick) {
        std::this_thread::sleep_for(kMoveTick);  // the simulation's clock tick (wall time drives it)
        auto now = Steady::now();
        auto simulated = std::chrono::duration_cast<Duration>((now - last) * plan_.speed_up);
        last = now;
        for (auto& dp : devices_) {
          if (dp->kiosk()) continue;
          std::vector<Arrival> reached;
          GeoPoint at;
          double free_kg;
          {
            std::lock_guard lock(route_mu_);
            reached = dp->route->Advance(simulated);
            at = dp->route->position();
            free_kg = dp->route->free_kg();
          }
          for (const auto& a : reached) {
            if (a.kind == Arrival::Kind::kPickUp)
              Press(dp.get(), sync::kOpPickUp,
                    {{"surplus_id", a.stop.surplus_id}, {"handover_code", a.stop.handover_code}, {"actual_kg", a.stop.kg}});
            else
              Press(dp.get(), sync::kOpDeliver, {{"surplus_id", a.stop.surplus_id}});
          }
          auto& was = reported.try_emplace(dp.get(), dp->plan.home).first->second;
          if (tick % kTicksPerReport == 0 && (was.lat != at.lat || was.lon != at.lon)) {
            Press(dp.get(), sync::kOpVehicle, {{"lat", at.lat}, {"lon", at.lon}, {"free_kg", free_kg}});
            was = at;
          }
        }
      }
    });
    // Racing: now and then a van claims something from its nearby list at
    // the version it saw, as a driver tapping "claim" would; two vans may
    // pick the same post, and one of them hears "already claimed".
    std::mt19937_64 race_rng(plan_.seed * 31 + 1);  // its own: rng_ belongs to the observers
    std::thread racer([&] {
      std::uniform_real_distribution<double> coin(0, 1);
      std::map<int64_t, int> tried;
      while (!rush_over) {
        std::this_thread::sleep_for(std::chrono::seconds(1));  // the drivers' pace (simulated)
        for (auto& d : devices_) {
          if (d->kiosk() || coin(race_rng) >= plan_.race_p) continue;
          auto st = d->agent->State();
          if (!st.ok() || !(*st)["nearby"].is_array()) continue;
          std::vector<const json*> ours;  // this run's posts
          for (const auto& post : (*st)["nearby"])
            if (post.is_object() && kitchens_.count(post.value("provider_id", int64_t{0}))) ours.push_back(&post);
          if (ours.empty()) continue;
          const json& pick = *ours[size_t(race_rng() % ours.size())];
          int64_t id = pick.value("id", int64_t{0});
          if (!id || tried[id]++ > 1) continue;  // at most two of our vans race for one post
          std::lock_guard race_lock(race_mu_);
          if (!racing_) continue;  // this process said it is done: a claim now might go undriven
          Press(d.get(), sync::kOpClaim, {{"surplus_id", id}, {"version", pick.value("version", int64_t{1})}});
        }
      }
    });
    {
      std::lock_guard lock(tally_mu_);
      tally_.first_post_sent = Start();
    }
    for (const auto& post : plan_.posts) {
      if (!StopSignal::WaitUntil(Start() + std::chrono::milliseconds(post.at_ms))) break;  // the rush's schedule
      SimDevice* d = devices_[post.device].get();
      Press(d, sync::kOpPostSurplus, SimPostBody(d->plan.id, post.number, post.kg));
      posts_sent_++;
    }
    progress.join();
    driver.join();
    racer.join();
  }

  // 3. The tally to the director, then off shift.
  int Finish() {
    {
      std::lock_guard lock(tally_mu_);
      if (start_ns_) {
        tally_.cpu_seconds = SelfCpuSeconds() - cpu_before_;
        tally_.mqtt_up = up_msgs_ - up_before_;
        tally_.mqtt_down = down_msgs_ - down_before_;
      }
      tally_.posts_sent = posts_sent_;
      // Ops whose outcome has not reached their device; the posts among
      // them were all pressed within the window, the rest (a van's report
      // or race claim) may have been pressed a moment before the end.
      tally_.counts["ops_unanswered"] = int(awaiting_.size());
      tally_.counts["posts_unanswered"] =
          int(std::count_if(awaiting_.begin(), awaiting_.end(), [](const auto& a) { return a.second; }));
      json m = tally_.ToJson();
      m["t"] = "results";
      Report(m);
    }
    // The vans tell the hub they are offline, so that a later run against
    // the same hub does not offer posts to tablets nobody holds.
    for (auto& d : devices_)
      if (!d->kiosk()) (void)d->agent->Submit(sync::kOpVehicle, {{"online", false}});
    const auto drained_by = Steady::now() + std::chrono::seconds(10);
    for (auto& d : devices_) {
      while (Steady::now() < drained_by) {
        auto st = d->agent->State();
        if (!st.ok() || (*st)["queued"] == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // polling the agent's queue
      }
    }
    for (auto& d : devices_) {
      d->mqtt->Disconnect();
      d->agent->Stop();
    }
    // The clients go first: their handlers use the counters, the tally and
    // the agents, which would otherwise be destroyed before them.
    for (auto& d : devices_) d->mqtt.reset();
    // Our own inbox's reader stops at "end"; if a stop came first, wake it.
    (void)WriteLine(kFirstPeerFd + plan_.shard, R"({"t":"end"})");
    inbox_thread_.join();
    return 0;
  }

  bool Report(const json& m) { return WriteLine(kStatusFd, m.dump()).ok(); }

  const ShardPlan plan_;
  const std::set<int64_t> kitchens_;  // plan_.kitchens: the posts vans act on are theirs
  std::map<int64_t, int> van_shard_;
  std::map<int64_t, SimDevice*> van_of_org_;  // filled before the inbox reads routes
  std::vector<std::unique_ptr<SimDevice>> devices_;
  LineReader inbox_;
  std::thread inbox_thread_;
  std::mutex mu_;  // ended_; with cv_, also signals start_ns_
  std::condition_variable cv_;
  bool ended_ = false;
  std::atomic<int64_t> start_ns_{0};  // the rush's start (steady clock, ns); 0 until "start" arrives
  // A race claim pressed just after this process reported itself done
  // could be won after the director ended the run, its van never driving
  // (seen once: 22 claims, 21 picked up). The racer presses only while
  // racing_, under race_mu_, and each report judges "done" under it too,
  // turning racing_ off for as long as it says done. Taken before tally_mu_.
  std::mutex race_mu_;
  bool racing_ = true;
  std::mutex route_mu_;  // every van's route
  std::atomic<int> stops_received_{0};
  std::mutex tally_mu_;  // tally_, sent_, settled_, rng_
  Tally tally_;
  std::map<std::string, Steady::time_point> sent_;  // op -> when the person pressed
  std::map<std::string, bool> awaiting_;            // ops pressed, outcome not yet applied -> is it a post
  struct EarlyOutcome {
    std::string type;
    json message;
    Steady::time_point applied;
  };
  std::map<std::string, EarlyOutcome> early_;  // outcomes applied before Press noted their op
  std::set<int64_t> settled_;                       // our kitchens' posts claimed or dead-lettered
  std::mt19937_64 rng_;
  std::atomic<uint64_t> up_msgs_{0}, down_msgs_{0};
  uint64_t up_before_ = 0, down_before_ = 0;
  double cpu_before_ = 0;
  int posts_sent_ = 0;
  ClaimWire claim_wire_;
  Later later_;
};

}  // namespace

nlohmann::json SimPostBody(const std::string& kiosk, int number, int kg) {
  return {{"category", "prepared_meals"}, {"description", kiosk + " surplus " + std::to_string(number)},
          {"quantity_kg", kg}, {"storage", "hot"}, {"best_before_in_min", 180},
          {"pickup_start_in_min", 0}, {"pickup_end_in_min", 60 * (1 + number % 3)}};
}

int RunCityShard() {
  StopSignal::Install();
  SetMinLogLevel(LogLevel::kWarn);  // hundreds of agents: their info lines would drown the progress line
  LineReader inbox(kInboxFd);
  auto first = inbox.Next();
  if (!first) Fail("no plan on the inbox (pp-sim --shard is started by pp-sim itself)");
  auto plan = ShardPlan::FromJson(json::parse(*first, nullptr, false));
  if (!plan.ok()) Fail(plan.error().message);
  shard_no = plan->shard;
  return Shard(std::move(*plan), std::move(inbox)).Run();
}

}  // namespace pp::sim
