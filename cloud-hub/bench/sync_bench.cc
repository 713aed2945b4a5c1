// pp-sync-bench: hub ingest through mosquitto against mosquitto alone moving
// the same messages, in the same run.
//
//   packaging/broker.sh start /tmp/ppb            # a broker as in production
//   pp-sync-bench --broker-dir /tmp/ppb [--ops N] [--workers N] [--rounds N]
//                 [--traceparent on|off] [--claims-per-second R [--claims N] [--tablets T]]
//
// broker-only: one device publishes N QoS 1 messages (the same bytes as the
//   signed posts below, with the same traceparent user property) to its up
//   topic; a subscriber on the hub's shared subscription receives them.
//   Rate = N / time until the last arrived.
// hub: the same device publishes N signed post_surplus ops; an in-process
//   hub (SQLite, synchronous=FULL, group commit; ingest on `workers` threads
//   as pp-hub runs it) verifies, de-duplicates and commits each with its
//   outcome. Rate = N / time until the last committed.
// The two alternate for --rounds rounds (fresh ops each round), one line
// each, then the median ratio: this host's broker-only rate moves between
// runs by a third, so one pair says little.
// Also printed, per op: CPU of the hub's ingest without the broker, and of
// the Ed25519 signature check alone (the floor under the ingest's cost).
// Then the device catches up from outbox id 0 (docs/protocol.md,
// "Catch-up"): the hub's CPU per answer page and per outbox event read.
// Last, with --claims-per-second R: the claim round trip at a paced R claims
// a second (issue 7's target is p99 <= 25 ms at 1,000/s), with the hub's
// outbox relay publishing the answers as pp-hub does (a connection of its
// own). T tablets, each of its own NGO, claim N posts made beforehand,
// spread evenly; a claim's round trip runs from the moment it was due (not
// when it went: a late sender counts against it) until its outcome reached
// the tablet. The tablets are bare MQTT clients that sign, publish and read
// their down topic, not agents: what is measured is the hub and the broker,
// and pp-sim measures the same round trip with real agents.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>

#include "cloud-hub/bench/bench_hub.h"
#include "cloud-hub/mqtt/device_ingest.h"
#include "cloud-hub/mqtt/ingest_pool.h"
#include "cloud-hub/mqtt/outbox_relay.h"
#include "common/domain_json.h"
#include "common/metrics.h"
#include "common/validation.h"
#include "common/process_cpu.h"
#include "common/time_format.h"
#include "common/trace.h"
#include "sync/broker_admin.h"
#include "common/cli.h"
#include "sync/mqtt_client.h"


namespace {

using namespace pp;
using Steady = std::chrono::steady_clock;

constexpr const char* kUsage =
    "pp-sync-bench --broker-dir DIR [--ops N] [--workers N] [--rounds N] [--traceparent on|off]\n"
    "              [--claims-per-second R [--claims N] [--tablets T]]";
[[noreturn]] void Die(const std::string& m) { DieWithUsage("pp-sync-bench", kUsage, m); }
std::string ReadFile(const std::string& p) { return FirstLineOrDie("pp-sync-bench", kUsage, p); }

template <typename F>
bool WaitFor(F done, std::chrono::seconds limit) {
  auto end = Steady::now() + limit;
  while (!done()) {
    if (Steady::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

// CPU seconds used so far by this process (publisher, subscriber or hub)
// and by the broker: where each phase's CPU goes, per message.
struct CpuMark {
  double self, broker;
};
CpuMark MarkCpu(const std::string& dir) {
  return {SelfCpuSeconds(), ProcessCpuSecondsFromPidFile(dir + "/mosquitto.pid").value_or(0)};
}

// CPU µs per message of each of this process's threads (by name) between
// two readings: which thread of the hub's path costs what.
using ThreadCpu = std::map<std::string, double>;
ThreadCpu PerMessage(const ThreadCpu& before, const ThreadCpu& after, int messages) {
  ThreadCpu d;
  for (const auto& [name, s] : after) {
    auto b = before.find(name);
    const double used = s - (b == before.end() ? 0 : b->second);
    if (used > 0) d[name] = used * 1e6 / messages;
  }
  return d;
}
std::string Format(const ThreadCpu& t) {
  std::string out;
  char buf[96];
  for (const auto& [name, us] : t) {
    std::snprintf(buf, sizeof buf, "%s%s=%.1f", out.empty() ? "" : " ", name.c_str(), us);
    out += buf;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int ops = 20000, workers = 2, rounds = 1;
  int claims_per_second = 0, claims = 0, tablets = 20;
  bool with_traceparent = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    if (f == "--broker-dir") dir = argv[i + 1];
    else if (f == "--ops") ops = std::atoi(argv[i + 1]);
    else if (f == "--workers") workers = std::atoi(argv[i + 1]);
    else if (f == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (f == "--claims-per-second") claims_per_second = std::atoi(argv[i + 1]);
    else if (f == "--claims") claims = std::atoi(argv[i + 1]);
    else if (f == "--tablets") tablets = std::atoi(argv[i + 1]);
    else if (f == "--traceparent") {
      const std::string v = argv[i + 1];
      if (v != "on" && v != "off") Die("--traceparent takes on or off, not " + v);
      with_traceparent = v == "on";
    } else Die("unknown option " + f);
  }
  if (dir.empty() || ops <= 0 || workers <= 0 || rounds <= 0)
    Die("--broker-dir is required; --ops, --workers and --rounds must be positive integers");
  if (claims_per_second < 0 || claims < 0 || tablets <= 0 || tablets > 1000)
    Die("--claims-per-second and --claims take a number from 0, --tablets one from 1 to 1000");
  if (claims == 0) claims = 5 * claims_per_second;  // five seconds of claims
  std::string uri = "tcp://127.0.0.1:" + ReadFile(dir + "/port");
  std::string hub_pw = ReadFile(dir + "/hub.password");
  std::string device = "bench-kiosk", device_pw = "bench-pw";
  if (auto st = sync::AddBrokerUser(dir, device, device_pw); !st.ok()) Die(st.error().message);

  // The hub, in process, on a fresh SQLite file.
  auto keys = sync::GenerateKeyPair();
  auto bench_hub = StartBenchHub(dir + "/bench-hub.db", device, keys.public_key);
  if (!bench_hub.ok()) Die(bench_hub.error().ToString());
  HubService& hub = *bench_hub->hub;
  GroupCommitter& committer = *bench_hub->committer;

  // Each round's ops, fresh (new op ids, higher sequence numbers): not replays.
  std::vector<std::string> messages;
  std::string best_before = FormatRfc3339(SystemClock::Instance().Now() + std::chrono::hours(4));
  auto sign_round = [&](int round) {
    messages.clear();
    for (int i = 0; i < ops; ++i) {
      nlohmann::json body{{"category", "prepared_meals"}, {"description", "bench meal " + std::to_string(i)},
                          {"quantity_kg", 2.5},           {"portions", 6},
                          {"storage", "chilled"},         {"best_before", best_before}};
      sync::Envelope e = sync::Sealed(device, uint64_t(round) * uint64_t(ops) + uint64_t(i + 1),
                                      "bench-" + std::to_string(round) + "-" + std::to_string(i),
                                      sync::kOpPostSurplus, std::move(body),
                                      ToUnixMillis(SystemClock::Instance().Now()), keys.secret_key);
      messages.push_back(sync::Encode(e));
    }
  };
  std::string topic = sync::UpTopic(device, sync::kOpPostSurplus);
  sync::MqttClient::Options dev_opts =
      sync::MqttClient::CleanSession(uri, device, device, device_pw, {}, 200000);
  sync::MqttClient dev(dev_opts, [](auto&, auto&, auto&) {});
  // mosquitto reloads its password file asynchronously after SIGHUP: the
  // device's first attempts may be refused.
  if (!WaitFor([&] { return dev.Connect(std::chrono::seconds(2)).ok(); }, std::chrono::seconds(10)))
    Die("device cannot connect to " + uri);
  // At most 100 publishes awaiting their PUBACK, as a device's queue drains
  // them, each with a traceparent as pp-agent's ops carry (an MQTT v5 user
  // property, which both receivers read out of every message; "--traceparent
  // off" measures bare messages, as this bench did before session 17).
  const std::string traceparent = with_traceparent ? NewTraceparent() : "";
  auto publish_all = [&] {
    if (auto st = sync::PublishWindowed(dev, topic, messages, 100, traceparent); !st.ok())
      Die(st.error().ToString());
  };

  // Through the hub: verify, de-duplicate, commit with the outcome (one
  // ingest for every round, as in pp-hub).
  std::atomic<int64_t> callback_ns{0};
  DeviceIngest ingest(hub);
  IngestPool pool(ingest, workers);
  struct Round {
    double broker_rate, hub_rate;
    CpuMark broker_cpu,
        hub_cpu;  // CPU µs per message: this process (device + subscriber or hub), the broker
    ThreadCpu broker_threads, hub_threads;  // the process's part, by thread
  };
  std::vector<Round> done;
  for (int round = 0; round < rounds; ++round) {
    sign_round(round);
    Round r{};
    {  // 1. The broker alone: same bytes, a plain subscriber on the hub's subscription.
      std::atomic<int> got{0};
      sync::MqttClient sub(sync::MqttClient::CleanSession(uri, "bench-sub", "pp-hub", hub_pw,
                                                          {sync::kHubSubscription}, 1000),
                           [&](auto&, auto&, auto&) { got++; });
      if (!sub.Connect(std::chrono::seconds(10)).ok()) Die("subscriber cannot connect");
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // subscription in place
      auto t0 = Steady::now();
      auto c0 = MarkCpu(dir);
      auto threads0 = SelfCpuSecondsByThreadName();
      publish_all();
      if (!WaitFor([&] { return got >= ops; }, std::chrono::seconds(120)))
        Die("broker-only run stalled");
      r.broker_rate = ops / std::chrono::duration<double>(Steady::now() - t0).count();
      r.broker_threads = PerMessage(threads0, SelfCpuSecondsByThreadName(), ops);
      auto c1 = MarkCpu(dir);
      r.broker_cpu = {(c1.self - c0.self) * 1e6 / ops, (c1.broker - c0.broker) * 1e6 / ops};
      sub.Disconnect();
    }
    {  // 2. Through the hub.
      sync::MqttClient hub_mqtt(
          sync::MqttClient::CleanSession(uri, "pp-hub-bench", "pp-hub", hub_pw,
                                         {sync::kHubSubscription}, 200000),
          [&](const std::string& t, const std::string& p, const std::string& tp) {
            auto c0 = Steady::now();
            pool.Post(t, p, tp);
            callback_ns +=
                std::chrono::duration_cast<std::chrono::nanoseconds>(Steady::now() - c0).count();
          });
      if (!hub_mqtt.Connect(std::chrono::seconds(10)).ok()) Die("hub cannot connect");
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      const uint64_t target = uint64_t(round + 1) * uint64_t(ops);
      auto t0 = Steady::now();
      auto c0 = MarkCpu(dir);
      auto threads0 = SelfCpuSecondsByThreadName();
      publish_all();
      if (!WaitFor([&] { return ingest.stats().accepted + ingest.stats().refused >= target; },
                   std::chrono::seconds(300)))
        Die("hub run stalled");
      r.hub_rate = ops / std::chrono::duration<double>(Steady::now() - t0).count();
      r.hub_threads = PerMessage(threads0, SelfCpuSecondsByThreadName(), ops);
      auto c1 = MarkCpu(dir);
      r.hub_cpu = {(c1.self - c0.self) * 1e6 / ops, (c1.broker - c0.broker) * 1e6 / ops};
      hub_mqtt.Disconnect();
    }
    std::printf(
        "round=%d broker_only=%.0f msg/s hub_ingest=%.0f ops/s ratio=%.0f%% "
        "cpu_us_per_msg: broker_only process=%.1f mosquitto=%.1f | through_hub process=%.1f "
        "mosquitto=%.1f\n",
        round + 1, r.broker_rate, r.hub_rate, 100 * r.hub_rate / r.broker_rate, r.broker_cpu.self,
        r.broker_cpu.broker, r.hub_cpu.self, r.hub_cpu.broker);
    std::fflush(stdout);
    done.push_back(r);
  }
  // 3. The hub's ingest alone, the same ops handed straight to it (no
  // broker): where the time goes when the ratio is low.
  double direct_rate = 0, direct_cpu = 0;
  ThreadCpu direct_threads;
  {
    DeviceIngest direct(hub);
    // Fresh op ids and higher sequence numbers: new ops, not replays.
    std::vector<std::string> fresh;
    for (int i = 0; i < ops; ++i) {
      sync::Envelope e = *sync::Decode(messages[i]);
      e.op = "direct-" + std::to_string(i);
      e.seq += uint64_t(rounds) * uint64_t(ops);
      sync::Sign(e, keys.secret_key);
      fresh.push_back(sync::Encode(e));
    }
    auto t0 = Steady::now();
    auto c0 = MarkCpu(dir);
    auto threads0 = SelfCpuSecondsByThreadName();
    for (const auto& m : fresh) direct.OnMessage(topic, m, "");
    if (!WaitFor([&] { return direct.stats().accepted + direct.stats().refused >= uint64_t(ops); },
                 std::chrono::seconds(300)))
      Die("direct run stalled");
    direct_rate = ops / std::chrono::duration<double>(Steady::now() - t0).count();
    direct_threads = PerMessage(threads0, SelfCpuSecondsByThreadName(), ops);
    direct_cpu = (MarkCpu(dir).self - c0.self) * 1e6 / ops;
  }
  // 4. The signature check alone (decode excluded), as the ingest makes it
  // for every op: the floor the protocol puts under the ingest's CPU.
  double verify_us = 0;
  {
    std::vector<sync::Envelope> decoded;
    for (const auto& m : messages) decoded.push_back(*sync::Decode(m));
    int good = 0;
    const double c0 = SelfCpuSeconds();
    for (const auto& e : decoded) good += sync::Verify(e, keys.public_key) ? 1 : 0;
    verify_us = (SelfCpuSeconds() - c0) * 1e6 / ops;
    if (good != ops) Die("a bench signature did not verify");
  }
  // 5. Catching up from outbox id 0 to the end, page after page, as a
  // device back from a lost broker session asks (docs/protocol.md,
  // "Catch-up"). Two devices: the bench kiosk, to which every event in this
  // store belongs (the most an answer carries), and a tablet of an NGO that
  // none concerns (the most the hub reads for nothing). CPU of the hub's
  // handling only.
  struct CatchUp {
    size_t pages = 0, messages = 0;
    int64_t events = 0;
    double cpu = 0, wall = 0;
  };
  auto catch_up = [&](const std::string& who, const sync::SecretKey& key, uint64_t seq) {
    CatchUp c;
    DeviceIngest door(hub);
    std::string answer;
    door.SetQueryReply([&](const std::string&, const std::string& message, const std::string&) { answer = message; });
    int64_t after = 0;
    for (bool more = true; more; ++c.pages) {
      const std::string bytes =
          sync::Encode(sync::Sealed(who, seq, "catchup-" + who + "-" + std::to_string(c.pages), sync::kOpCatchUp,
                                    {{"after", after}}, ToUnixMillis(SystemClock::Instance().Now()), key));
      answer.clear();
      const double c0 = SelfCpuSeconds();
      auto t0 = Steady::now();
      door.OnMessage(sync::UpTopic(who, sync::kOpCatchUp), bytes, "");
      c.wall += std::chrono::duration<double>(Steady::now() - t0).count();
      c.cpu += SelfCpuSeconds() - c0;
      auto a = nlohmann::json::parse(answer, nullptr, false);
      if (!a.is_object() || a.value("status", "") != "accepted")
        Die("catchup refused (see the log): " + answer.substr(0, 300));
      c.messages += a["data"]["messages"].size();
      after = a["data"]["next"].get<int64_t>();
      more = a["data"]["more"].get<bool>();
    }
    c.events = after;
    std::printf("catchup %s: outbox_events=%lld pages=%zu messages=%zu hub_cpu_ms_per_page=%.2f "
                "hub_cpu_us_per_event_read=%.1f wall_s=%.2f\n",
                who.c_str(), (long long)c.events, c.pages, c.messages,
                c.cpu * 1e3 / double(std::max<size_t>(1, c.pages)),
                c.cpu * 1e6 / double(std::max<int64_t>(1, c.events)), c.wall);
  };
  // The kiosk's last sequence number is phase 3's (queries do not advance it).
  catch_up(device, keys.secret_key, 2 * uint64_t(rounds) * uint64_t(ops));
  {
    auto tablet_keys = sync::GenerateKeyPair();
    auto ngo = hub.CreateOrganization({OrgKind::kNgo, "bench-ngo", {51.6, -0.2}}, "");
    if (!ngo.ok()) Die(ngo.error().ToString());
    const int64_t ngo_id = nlohmann::json::parse(ngo->json)["id"].get<int64_t>();
    if (auto r = hub.RegisterDevice({"bench-tablet", "tablet", ngo_id, sync::ToBase64(tablet_keys.public_key),
                                     false, 0, {}});
        !r.ok())
      Die(r.error().ToString());
    catch_up("bench-tablet", tablet_keys.secret_key, 1);
  }

  // 6. Claims at a paced rate, answered through the outbox relay.
  if (claims_per_second > 0) {
    // The posts to claim, made beforehand through the hub (not timed).
    std::atomic<int> made{0};
    std::mutex ids_mu;
    std::vector<int64_t> post_ids;
    nlohmann::json post_body{{"provider_id", bench_hub->provider}, {"category", "prepared_meals"},
                             {"description", "claimable meal"}, {"quantity_kg", 2.5},
                             {"best_before", best_before}};
    for (int i = 0; i < claims; ++i) {
      auto draft = ParseSurplusDraftJson(post_body, SystemClock::Instance().Now());
      if (!draft.ok()) Die(draft.error().ToString());
      hub.PostSurplus(std::move(*draft), "claimable-" + std::to_string(i), [&](Result<Reply> r) {
        if (!r.ok()) Die("a post to claim failed: " + r.error().ToString());
        std::lock_guard lock(ids_mu);
        post_ids.push_back(nlohmann::json::parse(r->json)["id"].get<int64_t>());
        made++;
      });
    }
    if (!WaitFor([&] { return made >= claims; }, std::chrono::seconds(120))) Die("making the posts stalled");
    // The tablets, each of its own NGO, as pp-sim's vans are.
    struct Tablet {
      std::string id;
      sync::KeyPair keys;
      std::unique_ptr<sync::MqttClient> mqtt;
    };
    std::vector<Tablet> tabs(static_cast<size_t>(tablets));
    const size_t n = static_cast<size_t>(claims);
    std::vector<Steady::time_point> due(n), answered(n);
    std::vector<char> accepted(n, 0);
    std::mutex answers_mu;
    std::atomic<int> answers{0};
    const std::string op_prefix = "claim-";
    // An outcome names its op ("claim-<i>"): claim i's answer.
    auto on_down = [&](const std::string&, const std::string& payload, const std::string&) {
      const auto now = Steady::now();
      auto down = sync::DecodeDown(payload);
      if (!down.ok()) return;
      for (const auto& m : down->messages) {
        if (m.value("kind", "") != "outcome") continue;
        const std::string op = m.value("op", "");
        if (op.rfind(op_prefix, 0) != 0) continue;
        const size_t i = std::stoul(op.substr(op_prefix.size()));
        std::lock_guard lock(answers_mu);
        if (i >= answered.size() || answered[i] != Steady::time_point{}) continue;  // a repeat
        answered[i] = now;
        accepted[i] = m.value("status", "") == "accepted";
        answers++;
      }
    };
    for (int t = 0; t < tablets; ++t) {
      Tablet& tab = tabs[size_t(t)];
      tab.id = "bench-van-" + std::to_string(t);
      tab.keys = sync::GenerateKeyPair();
      auto ngo = hub.CreateOrganization({OrgKind::kNgo, tab.id, {51.5, -0.1}}, "");
      if (!ngo.ok()) Die(ngo.error().ToString());
      const int64_t ngo_id = nlohmann::json::parse(ngo->json)["id"].get<int64_t>();
      if (auto r = hub.RegisterDevice({tab.id, "tablet", ngo_id, sync::ToBase64(tab.keys.public_key), false, 0, {}});
          !r.ok())
        Die(r.error().ToString());
      if (auto st = sync::AddBrokerUser(dir, tab.id, device_pw); !st.ok()) Die(st.error().message);
    }
    // All at once: Paho takes a second or two over each connect, and
    // mosquitto may still be reloading its password file (each retried).
    for (Tablet& tab : tabs) {
      tab.mqtt = std::make_unique<sync::MqttClient>(
          sync::MqttClient::CleanSession(uri, tab.id, tab.id, device_pw, {sync::DownTopic(tab.id)}, 100000), on_down);
      tab.mqtt->Start();
    }
    if (!WaitFor([&] { return std::all_of(tabs.begin(), tabs.end(), [](const Tablet& t) { return t.mqtt->connected(); }); },
                 std::chrono::seconds(60)))
      Die("the tablets cannot all connect to " + uri);
    // The hub as pp-hub runs it: ops in on one connection, the relay's
    // publishes out on another.
    sync::MqttClient hub_in(sync::MqttClient::CleanSession(uri, "pp-hub-claims-in", "pp-hub", hub_pw,
                                                           {sync::kHubSubscription}, 200000),
                            [&](const std::string& t, const std::string& p, const std::string& tp) { pool.Post(t, p, tp); });
    sync::MqttClient hub_out(
        sync::MqttClient::CleanSession(uri, "pp-hub-claims-out", "pp-hub", hub_pw, {}, 200000),
        [](auto&, auto&, auto&) {});
    if (!hub_in.Connect(std::chrono::seconds(10)).ok() || !hub_out.Connect(std::chrono::seconds(10)).ok())
      Die("hub cannot connect");
    OutboxRelay relay(hub, hub_out);
    hub.SetCommitHook([&relay] { relay.Notify(); });
    relay.Start();
    // Everything unsent so far (the rounds' outcomes, to nobody connected)
    // goes out before the clock starts.
    if (!WaitFor([&] { auto u = hub.ListUnsentOutbox(1); return u.ok() && u->empty(); }, std::chrono::seconds(300)))
      Die("the relay did not catch up before the claims");
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // subscriptions in place

    const auto period = std::chrono::nanoseconds(1000000000LL / claims_per_second);
    const auto c0 = MarkCpu(dir);
    const auto t0 = Steady::now() + std::chrono::milliseconds(10);
    for (int i = 0; i < claims; ++i) {
      due[size_t(i)] = t0 + period * i;
      std::this_thread::sleep_until(due[size_t(i)]);
      Tablet& tab = tabs[size_t(i % tablets)];
      const sync::Envelope e = sync::Sealed(tab.id, uint64_t(i / tablets + 1), op_prefix + std::to_string(i),
                                            sync::kOpClaim, {{"surplus_id", post_ids[size_t(i)]}, {"version", 1}},
                                            ToUnixMillis(SystemClock::Instance().Now()), tab.keys.secret_key);
      if (auto ack = tab.mqtt->Publish(sync::UpTopic(tab.id, sync::kOpClaim), sync::Encode(e), NewTraceparent());
          !ack.ok())
        Die("claim publish failed: " + ack.error().ToString());
    }
    const auto sent_at = Steady::now();
    if (!WaitFor([&] { return answers >= claims; }, std::chrono::seconds(120)))
      Die("only " + std::to_string(answers.load()) + " of " + std::to_string(claims) + " claims were answered");
    const auto c1 = MarkCpu(dir);
    relay.Stop();
    hub.SetCommitHook(nullptr);
    std::vector<double> ms;
    int refused = 0;
    Steady::time_point last{};
    for (size_t i = 0; i < due.size(); ++i) {
      ms.push_back(std::chrono::duration<double, std::milli>(answered[i] - due[i]).count());
      refused += !accepted[i];
      last = std::max(last, answered[i]);
    }
    const double offered_s = std::chrono::duration<double>(sent_at - t0).count();
    const double answered_s = std::chrono::duration<double>(last - t0).count();
    std::printf(
        "claims: offered=%d/s claims=%d tablets=%d sent_in=%.2fs answered_in=%.2fs (%.0f claims/s) refused=%d "
        "round_trip_ms p50=%.1f p95=%.1f p99=%.1f max=%.1f cpu_us_per_claim: process=%.1f mosquitto=%.1f\n",
        claims_per_second, claims, tablets, offered_s, answered_s, claims / answered_s, refused,
        metrics::Percentile(ms, 0.50), metrics::Percentile(ms, 0.95), metrics::Percentile(ms, 0.99),
        *std::max_element(ms.begin(), ms.end()), (c1.self - c0.self) * 1e6 / claims,
        (c1.broker - c0.broker) * 1e6 / claims);
    if (refused > 0) Die(std::to_string(refused) + " claims were refused (see the log)");
    for (Tablet& tab : tabs) tab.mqtt->Disconnect();
    hub_in.Disconnect();
    hub_out.Disconnect();
  }

  auto st = ingest.stats();
  // The median round by its ratio: its rates and CPU figures go together.
  std::vector<size_t> by_ratio(done.size());
  for (size_t i = 0; i < by_ratio.size(); ++i) by_ratio[i] = i;
  auto ratio = [&](size_t i) { return done[i].hub_rate / done[i].broker_rate; };
  std::sort(by_ratio.begin(), by_ratio.end(),
            [&](size_t a, size_t b) { return ratio(a) < ratio(b); });
  const Round& m = done[by_ratio[by_ratio.size() / 2]];
  std::printf(
      "ops=%d rounds=%d bytes_per_op=%zu median round: broker_only=%.0f msg/s hub_ingest=%.0f "
      "ops/s ratio=%.0f%% "
      "(lowest %.0f%%, highest %.0f%%) "
      "ingest_without_broker=%.0f ops/s time_in_ingest_callback=%.2fs accepted=%llu refused=%llu "
      "avg_batch=%.1f\n"
      "cpu_us_per_msg (median round): broker_only process=%.1f mosquitto=%.1f | through_hub "
      "process=%.1f "
      "mosquitto=%.1f | ingest_without_broker process=%.1f | ed25519_verify=%.1f\n",
      ops, rounds, messages[0].size(), m.broker_rate, m.hub_rate, 100 * m.hub_rate / m.broker_rate,
      100 * ratio(by_ratio.front()), 100 * ratio(by_ratio.back()), direct_rate,
      double(callback_ns) / 1e9, (unsigned long long)st.accepted, (unsigned long long)st.refused,
      double(committer.stats().ops) / double(std::max<uint64_t>(1, committer.stats().batches)),
      m.broker_cpu.self, m.broker_cpu.broker, m.hub_cpu.self, m.hub_cpu.broker, direct_cpu,
      verify_us);
  std::printf("cpu_us_per_msg by thread (median round): broker_only %s | through_hub %s | "
              "ingest_without_broker %s\n",
              Format(m.broker_threads).c_str(), Format(m.hub_threads).c_str(),
              Format(direct_threads).c_str());
  return st.refused == 0 ? 0 : 1;
}
