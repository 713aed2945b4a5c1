// pp-agent-bench: how fast a kiosk's queue drains after the network comes
// back, and what a post costs on the wire.
//
//   packaging/broker.sh start /tmp/ppb            # a broker as in production
//   pp-agent-bench --broker-dir /tmp/ppb [--ops 10000]
//
// An agent (the same Agent and AgentStore as pp-agent, SQLite with
// synchronous=FULL) queues N posts while it has no connection, then
// connects; an in-process hub (SQLite, group commit, ingest pool, outbox
// relay, as pp-hub runs them) applies them and answers each. Measured:
//   enqueue   durable ops/s into the agent's queue (what a person waits for)
//   drain     N / time from connect until the last outcome removed the last op
//   wire      TCP payload bytes of the agent's connection (read with
//             TCP_INFO), up and down, per post: MQTT headers, the signed
//             envelope, the outcome, events, acknowledgements.
//   apply     (--apply N, default 2000; 0 skips it) CPU of this process per
//             down publish applied, one publish per transaction as in a
//             rush, by two offline agents fed the same events in alternating
//             rounds: one without `prev`, one with each publish naming the
//             one before (the gap check, docs/protocol.md "Gaps").
//   outcomes  (with apply) CPU of this process per outcome applied: an
//             offline agent queues N posts, then is fed the hub's answer to
//             each, one publish per transaction, in rounds; the op leaves
//             the queue and the outcome is kept for the screen.
//   device storage  (with apply) the pages SQLite wrote to the agent's WAL
//             for each post queued and each outcome applied, in that same
//             offline agent: what a kiosk's flash wears per post.

#include <dirent.h>
#include <netinet/in.h>
#include <linux/tcp.h>  // tcp_info with byte counters (glibc's copy predates them)
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "cloud-hub/bench/bench_hub.h"
#include "cloud-hub/mqtt/device_ingest.h"
#include "cloud-hub/mqtt/ingest_pool.h"
#include "cloud-hub/mqtt/outbox_relay.h"
#include "edge-agent/agent.h"
#include "edge-agent/mqtt_uplink.h"
#include "sync/broker_admin.h"
#include "common/cli.h"
#include "sync/mqtt_client.h"

namespace {

using namespace pp;
using Steady = std::chrono::steady_clock;

constexpr const char* kUsage = "pp-agent-bench --broker-dir DIR [--ops N] [--apply N]";
[[noreturn]] void Die(const std::string& m) { DieWithUsage("pp-agent-bench", kUsage, m); }
std::string ReadLine(const std::string& p) { return FirstLineOrDie("pp-agent-bench", kUsage, p); }

// This process's TCP sockets to `port`, by local port: {bytes sent and
// acknowledged, bytes received}.
std::map<int, std::pair<uint64_t, uint64_t>> SocketsTo(int port) {
  std::map<int, std::pair<uint64_t, uint64_t>> out;
  DIR* dir = opendir("/proc/self/fd");
  while (dir && (errno = 0, true)) {
    dirent* ent = readdir(dir);
    if (!ent) break;
    int fd = std::atoi(ent->d_name);
    struct stat st;
    if (fd <= 2 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_in peer{}, self{};
    socklen_t len = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0 || peer.sin_family != AF_INET ||
        ntohs(peer.sin_port) != port)
      continue;
    len = sizeof self;
    getsockname(fd, reinterpret_cast<sockaddr*>(&self), &len);
    tcp_info info{};
    len = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) continue;
    out[ntohs(self.sin_port)] = {info.tcpi_bytes_acked, info.tcpi_bytes_received};
  }
  if (dir) closedir(dir);
  return out;
}

double CpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + double(t.tv_nsec) / 1e9;
}

// The post a kiosk queues in every figure, and that post as the hub sends
// it down (its outcome's or an event's data).
nlohmann::json PostBody() {
  return {{"category", "prepared_meals"}, {"description", "nasi goreng, 20 boxes"},
          {"quantity_kg", 6}, {"storage", "hot"}, {"allergens", {"eggs", "soya"}},
          {"best_before_in_min", 240}, {"instructions", "back door, ask for Sri"}};
}
nlohmann::json PostAsSent(int64_t provider) {
  return {{"id", 0}, {"status", "available"}, {"version", 1}, {"provider_id", provider},
          {"category", "prepared_meals"}, {"description", "nasi goreng, 20 boxes"},
          {"quantity_kg", 6.0}, {"storage", "hot"}, {"allergens", {"eggs", "soya"}},
          {"best_before", "2026-11-30T23:00:00.000Z"}, {"lat", 51.5138}, {"lon", -0.0984},
          {"instructions", "back door, ask for Sri"}};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The "apply" figure (see the top of this file): µs of CPU per publish,
// without and with `prev`, medians over `rounds` alternating rounds.
void MeasureApply(const std::string& dir, int n, int64_t provider) {
  const int rounds = 5;
  struct Side {
    std::unique_ptr<agent::AgentStore> store;
    agent::OfflineUplink uplink;
    std::unique_ptr<agent::Agent> agent;
    std::mutex mu;
    std::condition_variable cv;
    int applied = 0;  // guarded by mu
    int64_t last = 0;  // the id of the last publish fed to it
    std::vector<double> us;
  } sides[2];
  for (int k = 0; k < 2; ++k) {
    std::string db = dir + "/agent-bench-apply-" + std::to_string(k) + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db + suffix).c_str());
    auto store = agent::AgentStore::Open(db);
    if (!store.ok()) Die(store.error().ToString());
    sides[k].store = std::move(*store);
    DeviceConfig cfg;
    cfg.device_id = "bench-apply-" + std::to_string(k);
    cfg.role = "kiosk";
    cfg.org_id = provider;
    sides[k].agent = std::make_unique<agent::Agent>(cfg, sync::GenerateKeyPair().secret_key, *sides[k].store,
                                                    SystemClock::Instance(), sides[k].uplink);
    sides[k].agent->SetObserver([&side = sides[k]](auto&, auto&, auto&) {
      std::lock_guard lock(side.mu);
      ++side.applied;
      side.cv.notify_one();
    });
    sides[k].agent->Start();
  }
  nlohmann::json data = PostAsSent(provider);
  int64_t id = 0;
  const int per_round = std::max(1, n / rounds);
  for (int r = 0; r < rounds; ++r) {
    for (int k = 0; k < 2; ++k) {
      Side& side = sides[k];
      double c0 = CpuSeconds();
      for (int i = 0; i < per_round; ++i) {
        ++id;
        data["id"] = id;
        nlohmann::json m{{"v", 1}, {"kind", "event"}, {"id", id}, {"ts", 1}, {"type", "surplus.posted"}, {"data", data}};
        int want;
        {
          std::lock_guard lock(side.mu);
          want = side.applied + 1;
        }
        // Side 1 names the previous publish it was fed.
        side.agent->OnDown(sync::WithPrev(m.dump(), k == 1 ? side.last : 0));
        side.last = id;
        std::unique_lock lock(side.mu);  // blocking, so that waiting costs no CPU
        side.cv.wait(lock, [&] { return side.applied >= want; });
      }
      side.us.push_back((CpuSeconds() - c0) * 1e6 / per_round);
    }
  }
  std::printf("apply: %d publishes a side, %d rounds: CPU per publish without prev %.1f us, with prev %.1f us "
              "(medians; rounds without:",
              per_round * rounds, rounds, Median(sides[0].us), Median(sides[1].us));
  for (double u : sides[0].us) std::printf(" %.1f", u);
  std::printf("; with:");
  for (double u : sides[1].us) std::printf(" %.1f", u);
  std::printf(")\n");
  for (auto& side : sides) side.agent->Stop();
}

// The "outcomes" figure (see the top of this file): µs of CPU per outcome
// applied, median of `rounds` rounds.
void MeasureOutcomes(const std::string& dir, int n, int64_t provider) {
  const int rounds = 5;
  const int per_round = std::max(1, n / rounds);
  std::string db = dir + "/agent-bench-outcomes.db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db + suffix).c_str());
  auto store = agent::AgentStore::Open(db);
  if (!store.ok()) Die(store.error().ToString());
  DeviceConfig cfg;
  cfg.device_id = "bench-outcomes";
  cfg.role = "kiosk";
  cfg.org_id = provider;
  cfg.queue_limit = size_t(per_round * rounds) + 10;
  agent::OfflineUplink uplink;
  agent::Agent agent(cfg, sync::GenerateKeyPair().secret_key, **store, SystemClock::Instance(), uplink);
  std::mutex mu;
  std::condition_variable cv;
  int applied = 0;  // guarded by mu
  agent.SetObserver([&](const std::string& kind, auto&, auto&) {
    if (kind != "outcome") return;
    std::lock_guard lock(mu);
    ++applied;
    cv.notify_one();
  });
  agent.Start();
  nlohmann::json post = PostBody();
  std::vector<agent::QueuedOp> queued;
  const int64_t pages_before_queue = (*store)->PagesWritten();
  for (int i = 0; i < per_round * rounds; ++i) {
    auto q = agent.Submit(sync::kOpPostSurplus, post);
    if (!q.ok()) Die(q.error().ToString());
    queued.push_back(std::move(*q));
  }
  const int64_t pages_queued = (*store)->PagesWritten() - pages_before_queue;
  nlohmann::json data = PostAsSent(provider);
  std::vector<double> us;
  size_t next = 0;
  const int64_t pages_before_outcomes = (*store)->PagesWritten();
  for (int r = 0; r < rounds; ++r) {
    double c0 = CpuSeconds();
    for (int i = 0; i < per_round; ++i, ++next) {
      const auto& op = queued[next];
      data["id"] = int64_t(next + 1);
      nlohmann::json m{{"v", 1}, {"kind", "outcome"}, {"id", int64_t(next + 1)}, {"ts", 1}, {"op", op.op},
                       {"seq", op.seq}, {"status", "accepted"}, {"code", "ok"}, {"message", ""}, {"data", data}};
      agent.OnDown(m.dump());
      std::unique_lock lock(mu);  // blocking, so that waiting costs no CPU
      cv.wait(lock, [&] { return applied >= int(next + 1); });
    }
    us.push_back((CpuSeconds() - c0) * 1e6 / per_round);
  }
  std::printf("outcomes: %d applied, %d rounds: CPU per outcome %.1f us (median; rounds:", per_round * rounds,
              rounds, Median(us));
  for (double u : us) std::printf(" %.1f", u);
  std::printf(")\n");
  const double queued_per_post = double(pages_queued) / double(queued.size());
  const double applied_per_post = double((*store)->PagesWritten() - pages_before_outcomes) / double(queued.size());
  const int64_t page = (*store)->PageBytes();
  std::printf("device storage: %.1f pages (%.0f B) written a post queued, %.1f (%.0f B) an outcome applied\n",
              queued_per_post, queued_per_post * double(page), applied_per_post, applied_per_post * double(page));
  agent.Stop();
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  int ops = 10000, apply = 2000;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string f = argv[i];
    if (f == "--broker-dir") dir = argv[i + 1];
    else if (f == "--ops") ops = std::atoi(argv[i + 1]);
    else if (f == "--apply") apply = std::atoi(argv[i + 1]);
    else Die("unknown option " + f);
  }
  if (dir.empty() || ops <= 0 || apply < 0) Die("--broker-dir is required; --ops > 0; --apply >= 0");
  const int port = std::atoi(ReadLine(dir + "/port").c_str());
  const std::string uri = "tcp://127.0.0.1:" + std::to_string(port);
  const std::string device = "bench-agent-" + std::to_string(Steady::now().time_since_epoch().count() % 1000000);
  if (auto st = sync::AddBrokerUser(dir, device, "bench-pw"); !st.ok()) Die(st.error().message);

  // The hub, in process, on a fresh SQLite file.
  auto keys = sync::GenerateKeyPair();
  auto bench_hub = StartBenchHub(dir + "/agent-bench-hub.db", device, keys.public_key);
  if (!bench_hub.ok()) Die(bench_hub.error().ToString());
  HubService& hub = *bench_hub->hub;
  const int64_t provider = bench_hub->provider;
  DeviceIngest ingest(hub);
  IngestPool pool(ingest, 2);
  sync::MqttClient hub_mqtt(
      sync::MqttClient::CleanSession(uri, "pp-hub-agent-bench", "pp-hub", ReadLine(dir + "/hub.password"),
                                     {sync::kHubSubscription}, 200000),
      [&](const std::string& t, const std::string& p, const std::string& tp) { pool.Post(t, p, tp); });
  if (!hub_mqtt.Connect(std::chrono::seconds(10)).ok()) Die("hub cannot connect");
  OutboxRelay relay(hub, hub_mqtt);
  hub.SetCommitHook([&relay] { relay.Notify(); });
  relay.Start();

  // The agent, offline, queueing.
  std::string agent_db = dir + "/agent-bench.db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((agent_db + suffix).c_str());
  auto agent_store = agent::AgentStore::Open(agent_db);
  if (!agent_store.ok()) Die(agent_store.error().ToString());
  DeviceConfig cfg;
  cfg.device_id = device;
  cfg.role = "kiosk";
  cfg.org_id = provider;
  cfg.queue_limit = size_t(ops) + 10;
  agent::Agent* agent_ptr = nullptr;
  sync::MqttClient::Options mo;
  mo.uri = uri;
  mo.client_id = device;
  mo.username = device;
  mo.password = "bench-pw";
  mo.subscriptions = {sync::DownTopic(device)};
  mo.max_buffered = 1000;
  mo.on_connected = [&agent_ptr] { if (agent_ptr) agent_ptr->OnConnected(); };
  sync::MqttClient agent_mqtt(mo, [&agent_ptr](const std::string&, const std::string& p, const std::string&) {
    if (agent_ptr) agent_ptr->OnDown(p);
  });
  agent::MqttUplink uplink(agent_mqtt);
  agent::Agent agent(cfg, keys.secret_key, **agent_store, SystemClock::Instance(), uplink);
  agent_ptr = &agent;
  agent.Start();

  nlohmann::json post = PostBody();
  auto t0 = Steady::now();
  for (int i = 0; i < ops; ++i)
    if (auto q = agent.Submit(sync::kOpPostSurplus, post); !q.ok()) Die(q.error().ToString());
  double enqueue_s = std::chrono::duration<double>(Steady::now() - t0).count();

  auto queued = [&] {
    size_t n = 0;
    (void)(*agent_store)->Read([&](agent::AgentTxn& tx) -> Status {
      PP_ASSIGN_OR_RETURN(n, tx.QueueSize());
      return OkStatus();
    });
    return n;
  };
  auto before = SocketsTo(port);
  auto t1 = Steady::now();
  agent_mqtt.Start();
  int agent_port = 0;
  double hub_done_s = 0;  // when the hub had committed the last op (and its outcome)
  // The agent pings on connecting (again if unanswered) and sends its queue
  // once the hub has answered: the hub counts its answers to queries among
  // the accepted messages, and apart.
  auto ops_applied = [&] { return ingest.stats().accepted - ingest.stats().queries; };
  while (queued() > 0) {
    if (!hub_done_s && ops_applied() >= uint64_t(ops))
      hub_done_s = std::chrono::duration<double>(Steady::now() - t1).count();
    if (Steady::now() - t1 > std::chrono::seconds(600)) Die("drain stalled");
    if (!agent_port)
      for (const auto& [local, bytes] : SocketsTo(port))
        if (!before.count(local)) agent_port = local;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  double drain_s = std::chrono::duration<double>(Steady::now() - t1).count();
  if (!hub_done_s) hub_done_s = drain_s;  // both within the last poll
  auto bytes = SocketsTo(port)[agent_port];
  std::printf("ops=%d enqueue=%.0f ops/s (durable) drain=%.0f ops/s (%.2f s; hub had applied all at "
              "%.2f s) wire_up=%.0f B/post "
              "wire_down=%.0f B/post accepted=%llu refused=%llu\n",
              ops, ops / enqueue_s, ops / drain_s, drain_s, hub_done_s, double(bytes.first) / ops,
              double(bytes.second) / ops, (unsigned long long)ingest.stats().accepted,
              (unsigned long long)ingest.stats().refused);
  agent_ptr = nullptr;
  agent_mqtt.Disconnect();
  agent.Stop();
  relay.Stop();
  hub_mqtt.Disconnect();
  if (apply > 0) {
    MeasureApply(dir, apply, provider);
    MeasureOutcomes(dir, apply, provider);
  }
  return ingest.stats().refused == 0 ? 0 : 1;
}
