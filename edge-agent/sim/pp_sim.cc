// pp-sim: a city of kiosks and NGO vans, placed from the London food
// premises (tests/data), playing the 10 PM rush against a running hub.
// Every device is a real agent — the same Agent, AgentStore (SQLite) and
// signed MQTT ops as pp-agent — through mosquitto. The devices run in
// --processes simulator processes (city_shard.h), which this one, the
// director, sets up, starts together, ends and merges (shard_link.h):
// Paho serves all of one process's connections from a single receive
// thread, so a thousand devices in one process measure mostly that thread.
//
//   pp-sim --hub http://127.0.0.1:8080 --token ADMIN_JWT --broker-dir var/broker
//          [--kiosks 50] [--posts-per-kiosk 1] [--vehicles 10] [--window 10s]
//          [--accept 0.8] [--race 0.2] [--delay 200ms] [--speed-kmh 25] [--speed-up 60]
//          [--baseline 2000] [--data tests/data/london_food_premises.csv] [--out DIR] [--seed N]
//          [--device-dir DIR] [--processes N: default one per 250 devices]
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
#include <errno.h>
#include <fcntl.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <tuple>

#include "common/cli.h"
#include "common/log.h"
#include "common/metrics.h"
#include "common/premises.h"
#include "common/process_cpu.h"
#include "common/time_format.h"
#include "edge-agent/sim/city_shard.h"
#include "edge-agent/sim/shard_link.h"
#include "edge-agent/sim/tally.h"
#include "sync/broker_admin.h"
#include "sync/mqtt_client.h"

namespace {

using namespace pp;
using nlohmann::json;
using Steady = std::chrono::steady_clock;

constexpr const char* kUsage =
    "pp-sim --hub URL --token JWT --broker-dir DIR [--kiosks N] [--posts-per-kiosk N] [--vehicles N]\n"
    "              [--window 10s] [--accept P] [--race P] [--delay 200ms] [--speed-kmh 25] [--speed-up 60]\n"
    "              [--baseline N] [--data CSV] [--out DIR] [--seed N] [--device-dir DIR] [--processes N]\n"
    "              [--silence 30s] [--overtime 180s]";
[[noreturn]] void Die(const std::string& m, int code = 2) { DieWithUsage("pp-sim", kUsage, m, code); }

// The seed's SLA for a claim (p95, p99), to compare with.
constexpr double kSlaClaimP95Ms = 800, kSlaClaimP99Ms = 1500;

struct Options {
  std::string hub, token, broker_dir, data = "tests/data/london_food_premises.csv", out_dir = "var/sim";
  // Where each device's SQLite store lives (default OUT/devices). Real
  // kiosks and tablets each sync to their own flash; a thousand of them
  // simulated here share one disk, whose fsyncs then cost the machine the
  // hub runs on. A RAM disk (/dev/shm/...) models "each device its own
  // storage"; the stores still commit with synchronous=FULL.
  std::string device_dir;
  int kiosks = 50, posts_per_kiosk = 1, vehicles = 10, baseline = 2000;
  int processes = 1;  // --processes, else one per kDevicesPerProcess devices (ParseOptions)
  double accept_p = 0.8, race_p = 0.2, speed_kmh = 25, speed_up = 60;
  Duration window = std::chrono::seconds(10), delay = Duration(200);
  // A simulator process reports once a second during the rush; one that
  // says nothing for this long (or, once told to stop, sends no results and
  // does not exit) is taken as stuck: the run ends without it, reported
  // incomplete. Session 17 saw the director wait forever for such a one.
  Duration silence = std::chrono::seconds(30);
  // How long past its window the rush may go on settling (every post
  // answered, claimed ones delivered, vans home). Past it the run ends with
  // "finished": false, the ops still unanswered counted, exit status 4. A
  // run cut short this way once reported itself complete with 1,713 of
  // 20,000 posts answered (docs/benchmarks.md, "Session 20").
  Duration overtime = std::chrono::seconds(180);
  uint64_t seed = 7;
};

// Devices a simulator process serves well. Paho serves all of a process's
// connections from one receive thread and one send thread: on the 2-core
// machine of docs/benchmarks.md, 250 a process kept up with a
// 1,000-posts/s rush; 500 a process did not (those threads stalled past the
// keepalive, the broker dropped nearly every connection, and the rush
// collapsed: 438 of 20,000 posts in 3 minutes in one process, 176 in
// 206 s in two; sessions 16 and 17). Session 20: 500 a process finished
// (~1,050 posts/s, but ~1,700 PUBACKs later than the agents wait); 1,000
// in one still stalled in 2 of 3 runs, its Paho receive thread walking
// lists of every client per packet. Hence the default and the warning
// above it.
constexpr int kDevicesPerProcess = 250;

Options ParseOptions(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv, 1);
  if (!flags.ok()) Die(flags.error().message);
  std::map<std::string, std::string> opt = std::move(*flags);
  const std::set<std::string> known{"hub", "token", "broker-dir", "kiosks", "posts-per-kiosk", "vehicles",
                                    "window", "accept", "race", "delay", "speed-kmh", "speed-up",
                                    "baseline", "data", "out", "seed", "device-dir", "processes",
                                    "silence", "overtime"};
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
  const int devices = o.kiosks + o.vehicles;
  const int by_devices = std::clamp((devices + kDevicesPerProcess - 1) / kDevicesPerProcess, 1, sim::kMaxShards);
  o.processes = int(number("processes", by_devices, 1, sim::kMaxShards));
  if (devices > o.processes * kDevicesPerProcess)
    std::fprintf(stderr,
                 "pp-sim: warning: %d devices in %d process%s, over %d a process: Paho's one receive "
                 "thread a process may fall behind them (raise --processes, at most %d)\n",
                 devices, o.processes, o.processes == 1 ? "" : "es", kDevicesPerProcess, sim::kMaxShards);
  o.accept_p = number("accept", o.accept_p, 0, 1);
  o.race_p = number("race", o.race_p, 0, 1);  // per van and second: claim from its nearby list
  o.speed_kmh = number("speed-kmh", o.speed_kmh, 1, 200);
  o.speed_up = number("speed-up", o.speed_up, 1, 3600);
  o.window = duration("window", o.window);
  o.delay = duration("delay", o.delay);
  o.silence = duration("silence", o.silence);
  if (o.silence < std::chrono::seconds(1)) Die("--silence must be at least 1s");
  o.overtime = duration("overtime", o.overtime);
  if (o.overtime < std::chrono::seconds(1)) Die("--overtime must be at least 1s");
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

using metrics::Percentile;

json Percentiles(const std::vector<double>& v) {
  return {{"p50", Percentile(v, .5)}, {"p95", Percentile(v, .95)}, {"p99", Percentile(v, .99)}, {"n", v.size()}};
}

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


// The simulator processes, from the director's side: started with their
// pipes in place (shard_link.h), then spoken to and listened to.
class ShardProcesses {
 public:
  explicit ShardProcesses(int count) {
    std::vector<int> inbox_read(static_cast<size_t>(count)), status_write(static_cast<size_t>(count));
    for (int k = 0; k < count; ++k) {
      int in[2], st[2];
      if (pipe2(in, O_CLOEXEC) != 0 || pipe2(st, O_CLOEXEC) != 0) Die(std::string("pipe: ") + strerror(errno), 1);
      // Above every fd number a shard is given (3 .. 4 + count), so that
      // moving them into place in the child never overwrites one not yet moved.
      inbox_read[size_t(k)] = High(in[0]);
      inbox_write_.push_back(High(in[1]));
      status_.emplace_back(High(st[0]));
      status_write[size_t(k)] = High(st[1]);
    }
    // This binary by its real path, so that the processes are called pp-sim
    // in ps, top and perf (exec of /proc/self/exe would name them "exe").
    std::error_code error;
    const std::string self = std::filesystem::read_symlink("/proc/self/exe", error).string();
    if (error) Die("cannot find this program's path: " + error.message(), 1);
    char arg0[] = "pp-sim", flag[] = "--shard", value[] = "1";
    char* argv[] = {arg0, flag, value, nullptr};
    const pid_t director = getpid();
    for (int k = 0; k < count; ++k) {
      pid_t pid = fork();
      if (pid < 0) Die(std::string("fork: ") + strerror(errno), 1);
      if (pid == 0) {  // only async-signal-safe calls until exec
        // If the director dies (an error exits without unwinding), its
        // processes hear SIGTERM and finish rather than wait for a start.
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != director) _exit(127);
        if (dup2(inbox_read[size_t(k)], sim::kInboxFd) < 0 || dup2(status_write[size_t(k)], sim::kStatusFd) < 0)
          _exit(127);
        for (int j = 0; j < count; ++j)
          if (dup2(inbox_write_[size_t(j)], sim::kFirstPeerFd + j) < 0) _exit(127);
        execv(self.c_str(), argv);
        _exit(127);
      }
      pids_.push_back(pid);
    }
    // Ours closed, so that a shard's end shows as end of file on its status.
    for (int k = 0; k < count; ++k) close(inbox_read[size_t(k)]), close(status_write[size_t(k)]);
  }
  ~ShardProcesses() {
    for (pid_t pid : pids_)
      if (pid > 0) kill(pid, SIGTERM);  // only those not yet waited for
    Wait(std::chrono::seconds(10));
  }

  int count() const { return int(pids_.size()); }
  // Ends a process that stopped answering (SIGKILL also ends a stopped one).
  void Kill(int k) {
    if (pids_[size_t(k)] > 0) kill(pids_[size_t(k)], SIGKILL);
  }
  void Send(int k, const json& m) {
    if (auto st = sim::WriteLine(inbox_write_[size_t(k)], m.dump()); !st.ok())
      std::fprintf(stderr, "pp-sim: to simulator process %d: %s\n", k, st.error().message.c_str());
  }
  void SendAll(const json& m) {
    for (int k = 0; k < count(); ++k) Send(k, m);
  }
  // Messages that arrive within `timeout`, as (shard, message); a shard whose
  // status pipe ended is reported once as (shard, null).
  std::vector<std::pair<int, json>> Receive(std::chrono::milliseconds timeout) {
    std::vector<pollfd> fds;
    std::vector<int> which;
    for (int k = 0; k < count(); ++k)
      if (!ended_.count(k)) fds.push_back({status_[size_t(k)].fd(), POLLIN, 0}), which.push_back(k);
    std::vector<std::pair<int, json>> got;
    if (fds.empty() || poll(fds.data(), fds.size(), int(timeout.count())) <= 0) return got;
    for (size_t i = 0; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int k = which[i];
      std::vector<std::string> lines;
      bool open = status_[size_t(k)].ReadSome(lines);
      for (const auto& line : lines) {
        json m = json::parse(line, nullptr, false);
        if (m.is_object()) got.push_back({k, std::move(m)});
        else std::fprintf(stderr, "pp-sim: simulator process %d sent a line that is not JSON: %.200s\n", k, line.c_str());
      }
      if (!open) ended_.insert(k), got.push_back({k, nullptr});
    }
    return got;
  }
  // Waits for every process, and kills those still there after `grace`
  // (a process stuck going off shift must not keep the director waiting);
  // true if each exited 0 by itself.
  bool Wait(std::chrono::seconds grace) {
    bool ok = true;
    const auto kill_at = Steady::now() + grace;
    for (size_t k = 0; k < pids_.size(); ++k) {
      if (pids_[k] <= 0) continue;
      int status = 0;
      pid_t got;
      while ((got = waitpid(pids_[k], &status, WNOHANG)) == 0 && Steady::now() < kill_at)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));  // polling: waitpid has no timeout
      if (got == 0) {
        std::fprintf(stderr, "pp-sim: simulator process %zu had not exited %lld s after the rush: killed\n", k,
                     (long long)grace.count());
        kill(pids_[k], SIGKILL);
        while ((got = waitpid(pids_[k], &status, 0)) < 0 && errno == EINTR) {
        }
      }
      ok = ok && got == pids_[k] && WIFEXITED(status) && WEXITSTATUS(status) == 0;
      pids_[k] = 0;
    }
    return ok;
  }

 private:
  static int High(int fd) {
    int high = fcntl(fd, F_DUPFD_CLOEXEC, 64);
    if (high < 0) Die(std::string("fcntl: ") + strerror(errno), 1);
    close(fd);
    return high;
  }
  std::vector<pid_t> pids_;
  std::vector<int> inbox_write_;
  std::vector<sim::LineReader> status_;
  std::set<int> ended_;
};

// The whole city's progress: the shards' latest counts, every claim timed.
struct CityProgress {
  std::vector<std::map<std::string, int>> counts;
  std::vector<bool> done;
  std::vector<double> claim_ms;

  explicit CityProgress(int shards) : counts(size_t(shards)), done(size_t(shards), false) {}
  void Update(int k, const json& m) {
    if (m["counts"].is_object()) counts[size_t(k)] = m["counts"].get<std::map<std::string, int>>();
    if (m["claim_ms"].is_array())
      for (const auto& v : m["claim_ms"]) claim_ms.push_back(v.get<double>());
    done[size_t(k)] = m.value("done", false);
  }
  int Sum(const std::string& key) const {
    int n = 0;
    for (const auto& c : counts) n += c.count(key) ? c.at(key) : 0;
    return n;
  }
  // Every process has nothing left to do, and every claim, pick-up and
  // delivery a van was told was accepted has been heard by its kitchen (the
  // two ends of a post may be in different processes).
  bool Done() const {
    return std::all_of(done.begin(), done.end(), [](bool d) { return d; }) &&
           Sum("claims") == Sum("kitchens_told_claimed") && Sum("pickups_accepted") == Sum("picked_up") &&
           Sum("deliveries_accepted") == Sum("delivered");
  }
  void Print(Steady::duration since, int total_posts) const {
    std::fprintf(stderr,
                 "\r[%3llds] posts %d/%d  offers %d  claims %d  picked up %d  delivered %d  conflicts %d  "
                 "rematches %d  dlq %d  claim p95 %.0f ms   ",
                 (long long)std::chrono::duration_cast<std::chrono::seconds>(since).count(), Sum("posts_accepted"),
                 total_posts, Sum("offers"), Sum("claims"), Sum("picked_up"), Sum("delivered"), Sum("conflicts"),
                 Sum("rematches"), Sum("dead_lettered"), Percentile(claim_ms, 0.95));
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--shard") return sim::RunCityShard();
  const Options o = ParseOptions(argc, argv);
  sim::StopSignal::Install();

  std::mt19937_64 rng(o.seed);
  SetMinLogLevel(LogLevel::kWarn);
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
  // Kiosks and vans are dealt to the processes in turn, so each has a share of both.
  std::vector<sim::ShardPlan> plans(size_t(o.processes));
  std::vector<std::pair<std::string, std::string>> broker_users;
  std::vector<int64_t> kitchens;  // every kiosk's organisation, for the check at the end
  auto make = [&](bool kiosk, int i, const Place& place) {
    auto r = hub.Post("/api/v1/organizations",
                      json{{"kind", kiosk ? "provider" : "ngo"}, {"name", place.name},
                           {"lat", place.at.lat}, {"lon", place.at.lon}}.dump(), "application/json");
    if (!r || r->status != 201) Die("hub refused an organisation: " + (r ? r->body : httplib::to_string(r.error())), 1);
    sim::ShardPlan::Device d;
    d.kiosk = kiosk;
    d.home = place.at;
    d.org = json::parse(r->body)["id"].get<int64_t>();
    d.id = std::string(kiosk ? "sim-kiosk-" : "sim-van-") + run + "-" + std::to_string(i);
    auto keys = sync::GenerateKeyPair();
    r = hub.Post("/api/v1/devices", json{{"id", d.id}, {"role", kiosk ? "kiosk" : "tablet"}, {"org_id", d.org},
                                         {"public_key", sync::ToBase64(keys.public_key)}}.dump(), "application/json");
    if (!r || r->status != 201) Die("hub refused a device: " + (r ? r->body : httplib::to_string(r.error())), 1);
    d.secret = keys.secret_key;
    broker_users.push_back({d.id, d.id + "-pw"});
    const int k = i % o.processes;
    if (kiosk) kitchens.push_back(d.org);
    else
      for (auto& p : plans) p.van_shard.push_back({d.org, k});
    plans[size_t(k)].devices.push_back(std::move(d));
  };
  for (int i = 0; i < o.kiosks; ++i) make(true, i, providers[size_t(i)]);
  for (int i = 0; i < o.vehicles; ++i) make(false, i, receivers[size_t(i)]);
  for (auto& p : plans) p.kitchens = kitchens;
  const std::string baseline_user = "sim-baseline-" + run;
  broker_users.push_back({baseline_user, baseline_user + "-pw"});
  if (auto st = sync::AddNewBrokerUsers(o.broker_dir, broker_users); !st.ok()) Die(st.error().ToString(), 1);

  // 1. The broker alone, the same size of message, before anything else runs.
  double broker_only = 0;
  if (o.baseline > 0) {
    const auto& first = plans[0].devices[0];
    sync::Envelope sample;
    sample.device = first.id;
    sample.seq = 1;
    sample.op = "00000000-0000-4000-8000-000000000000";
    sample.type = sync::kOpPostSurplus;
    sample.ts_ms = ToUnixMillis(SystemClock::Instance().Now());
    sample.body = sim::SimPostBody(first.id, 0, 12);
    sync::Sign(sample, first.secret);
    broker_only = BrokerOnlyRate(broker, o.broker_dir, baseline_user, baseline_user + "-pw", sync::Encode(sample),
                                 o.baseline);
  }

  // 2. The rush's schedule: each kiosk posts --posts-per-kiosk times within
  // the window, each post in the process that holds its kiosk.
  int total_posts = 0;
  {
    std::uniform_int_distribution<int64_t> when(0, o.window.count());
    std::vector<std::tuple<int64_t, int, size_t>> schedule;  // at, process, its device
    for (int n = 0; n < o.posts_per_kiosk; ++n)
      for (size_t k = 0; k < plans.size(); ++k)
        for (size_t i = 0; i < plans[k].devices.size(); ++i)
          if (plans[k].devices[i].kiosk) schedule.push_back({when(rng), int(k), i});
    std::sort(schedule.begin(), schedule.end());
    for (const auto& [at, k, i] : schedule)
      plans[size_t(k)].posts.push_back({at, i, total_posts++, 2 + int(rng() % 20)});
  }
  for (size_t k = 0; k < plans.size(); ++k) {
    auto& p = plans[k];
    p.shard = int(k);
    p.shards = o.processes;
    p.broker_uri = broker;
    p.device_dir = o.device_dir;
    p.accept_p = o.accept_p;
    p.race_p = o.race_p;
    p.speed_kmh = o.speed_kmh;
    p.speed_up = o.speed_up;
    p.delay_ms = o.delay.count();
    p.window_ms = o.window.count();
    p.seed = rng();
  }

  // 3. The city comes online, a share in each process.
  ShardProcesses shards(o.processes);
  for (int k = 0; k < shards.count(); ++k) shards.Send(k, plans[size_t(k)].ToJson());
  // What the processes say, in whichever phase it arrives: a process that
  // was signalled itself (Ctrl-C reaches the whole process group) sends its
  // results early.
  CityProgress progress(shards.count());
  sim::Tally tally;
  std::set<int> reported;
  // Processes given up on: ended without their results, or silent for
  // --silence (cut_off below). Their devices' counts are missing from the
  // results, which then say the run is incomplete.
  std::map<int, std::string> given_up;
  std::vector<Steady::time_point> heard(size_t(shards.count()), Steady::now());
  int online = 0;
  auto receive = [&] {
    for (auto& [k, m] : shards.Receive(std::chrono::milliseconds(200))) {
      heard[size_t(k)] = Steady::now();
      if (m.is_null()) {
        if (!reported.count(k) && !given_up.count(k)) {
          given_up[k] = "ended before its results";
          std::fprintf(stderr, "\npp-sim: simulator process %d ended before its results (its error is above)\n", k);
        }
        continue;
      }
      const std::string t = m.value("t", "");
      if (t == "online") online++;
      if (t == "progress") progress.Update(k, m);
      if (t == "results") {
        auto shard_tally = sim::Tally::FromJson(m);
        if (!shard_tally.ok()) Die(shard_tally.error().message, 1);
        tally.Merge(*shard_tally);
        reported.insert(k);
      }
    }
  };
  const auto online_from = Steady::now();
  while (online < shards.count() && reported.empty() && given_up.empty() && !sim::StopSignal::raised()) receive();
  std::fprintf(stderr, "%d devices online in %.1f s (%d simulator process%s)\n", o.kiosks + o.vehicles,
               std::chrono::duration<double>(Steady::now() - online_from).count(), o.processes,
               o.processes == 1 ? "" : "es");

  // 4. The rush, started in every process at the same moment; ended when
  // each has nothing left to do (or on a signal, or after --overtime more).
  const CpuMark cpu_before = MarkCpu(hub, o.broker_dir);
  const auto start = Steady::now() + std::chrono::milliseconds(50);  // every process has it before then
  shards.SendAll({{"t", "start"}, {"at_ns", std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                start.time_since_epoch()).count()}});
  const auto give_up = start + o.window + o.overtime;
  // Gives up on every process that has said nothing for o.silence.
  auto cut_off = [&](const char* doing) {
    for (int k = 0; k < shards.count(); ++k) {
      if (reported.count(k) || given_up.count(k) || Steady::now() - heard[size_t(k)] < o.silence) continue;
      char why[120];
      std::snprintf(why, sizeof why, "said nothing for %.1f s %s", o.silence.count() / 1000.0, doing);
      given_up[k] = why;
      std::fprintf(stderr, "\npp-sim: simulator process %d %s: taken as stuck, killed\n", k, why);
      shards.Kill(k);
    }
  };
  bool interrupted = false;
  std::fill(heard.begin(), heard.end(), start);
  for (auto printed = start; !progress.Done() && Steady::now() < give_up;) {
    cut_off("during the rush");
    if (sim::StopSignal::raised() || !reported.empty() || !given_up.empty()) {
      interrupted = true;
      shards.SendAll({{"t", "interrupt"}});
      break;
    }
    receive();
    if (Steady::now() - printed >= std::chrono::seconds(1)) {
      progress.Print(Steady::now() - start, total_posts);
      printed = Steady::now();
    }
  }
  progress.Print(Steady::now() - start, total_posts);
  std::fprintf(stderr, "\n");
  const bool finished = progress.Done();
  const CpuMark cpu_after = MarkCpu(hub, o.broker_dir);
  if (!interrupted) shards.SendAll({{"t", "end"}});
  // A process's results are the first thing it does when told; the clock
  // for its silence restarts now.
  std::fill(heard.begin(), heard.end(), Steady::now());
  while (int(reported.size() + given_up.size()) < shards.count()) {
    receive();
    cut_off("after it was told to stop");
  }
  // Said once every process has counted, before the hub's store is read.
  const int ops_unanswered = tally.counts["ops_unanswered"], posts_unanswered = tally.counts["posts_unanswered"];
  if (!finished && !interrupted)
    std::fprintf(stderr,
                 "pp-sim: the rush did not settle within --overtime %.0f s after its window: %d ops (%d posts) "
                 "still unanswered on the devices\n",
                 std::chrono::duration<double>(o.overtime).count(), ops_unanswered, posts_unanswered);

  // 5. Lost or doubled? The hub's store against what the kiosks were told.
  // A hub that cannot be read (stopped by the same Ctrl-C, say) leaves the
  // check undone: the results still go out, with lost and duplicated unknown.
  std::map<std::string, int> in_store;
  std::string unchecked;  // why the store was not checked; empty if it was
  for (size_t i = 0; i < kitchens.size() && unchecked.empty(); ++i) {
    std::string after;
    do {
      auto r = hub.Get(("/api/v1/surplus?limit=1000&provider_id=" + std::to_string(kitchens[i]) + after).c_str());
      if (!r || r->status != 200) {
        unchecked = r ? "HTTP " + std::to_string(r->status) : httplib::to_string(r.error());
        break;
      }
      json page = json::parse(r->body);
      for (const auto& p : page["items"]) in_store[p["description"].get<std::string>()]++;
      after = page.contains("next_after") && page["next_after"].is_number_integer()
                  ? "&after=" + std::to_string(page["next_after"].get<int64_t>())
                  : "";
    } while (!after.empty());
  }
  if (!unchecked.empty())
    std::fprintf(stderr, "pp-sim: cannot read the hub's posts (%s): lost and duplicated are not checked\n",
                 unchecked.c_str());
  int lost = 0, doubled = 0;
  for (const auto& desc : tally.accepted_posts) lost += in_store[desc] == 0;
  for (const auto& [desc, c] : in_store) doubled += c > 1;
  // What the store check found; unknown (null) if it was not made.
  auto checked = [&](json found) { return unchecked.empty() ? std::move(found) : json(nullptr); };

  auto count = [&](const char* key) { return tally.counts.count(key) ? tally.counts.at(key) : 0; };
  json given_up_json = json::array();
  for (const auto& [k, why] : given_up) given_up_json.push_back({{"process", k}, {"why", why}});
  const int accepted = count("posts_accepted");
  const double seconds = std::chrono::duration<double>(Steady::now() - start).count();
  const double post_span = tally.PostSpanSeconds();
  const double claim_p95 = Percentile(tally.claim_ms, .95), claim_p99 = Percentile(tally.claim_ms, .99);
  // Every message of the rush crosses the broker once: what a post costs
  // the broker, and so the most posts/s it could carry at the rate it
  // moved messages alone (measured above, same run).
  const uint64_t up = tally.mqtt_up, down = tally.mqtt_down;
  const double per_post = accepted > 0 ? double(up + down) / accepted : 0;
  auto cpu_us_per_post = [&](std::optional<double> used) -> json {
    if (!used || accepted == 0) return nullptr;
    return *used * 1e6 / accepted;
  };
  auto used = [](std::optional<double> before, std::optional<double> after) -> std::optional<double> {
    if (!before || !after) return std::nullopt;
    return *after - *before;
  };
  json results{
      {"kiosks", o.kiosks}, {"posts_per_kiosk", o.posts_per_kiosk}, {"vehicles", o.vehicles},
      {"processes", o.processes},
      // Processes the director gave up on (see --silence): their devices'
      // posts are missing from every count, and "lost" checks only the rest.
      {"complete", given_up.empty()}, {"processes_given_up", given_up_json},
      // Every post answered and settled before the end; if not, the ops
      // (and posts among them) whose outcome had not reached their device:
      // still queued there, not lost ("lost" checks what the kiosks were
      // told was accepted).
      {"finished", finished}, {"ops_unanswered", ops_unanswered}, {"posts_unanswered", posts_unanswered},
      // This run's posts the hub holds, answered or not: above
      // posts_accepted, the outcomes were what did not come back.
      {"posts_in_hub_store",
       checked(std::count_if(in_store.begin(), in_store.end(), [](const auto& p) { return p.second > 0; }))},
      {"window_s", o.window.count() / 1000.0}, {"accept_probability", o.accept_p}, {"interrupted", interrupted},
      {"posts_scheduled", total_posts}, {"posts_sent", tally.posts_sent}, {"posts_accepted", accepted},
      {"claims", count("claims")}, {"picked_up", count("picked_up")}, {"delivered", count("delivered")},
      {"race_claims", count("race_claims")}, {"conflicts", count("conflicts")},
      {"rematches", count("rematches")}, {"dead_lettered", count("dead_lettered")},
      {"errors", count("errors")}, {"vehicle_updates", count("vehicle_updates")},
      // Durable posts per second end to end: first post pressed to the last
      // post's outcome back on its kiosk.
      {"posts_per_second", post_span > 0 ? accepted / post_span : 0.0},
      {"broker_only_msgs_per_second", broker_only},
      {"mqtt_messages", {{"up", up}, {"down", down}, {"per_post", per_post},
                         {"broker_bound_posts_per_second", per_post > 0 ? broker_only / per_post : 0.0}}},
      {"seconds", seconds},
      {"post_to_first_offer_ms", Percentiles(tally.OfferLatenciesMs())},
      {"claim_round_trip_ms", Percentiles(tally.claim_ms)},
      // CPU each process used over the rush (first post to every post settled
      // and every van home), per post accepted: where two cores' time went.
      // The simulator's is every simulator process's and this one's.
      {"cpu_us_per_post", {{"simulator", cpu_us_per_post(tally.cpu_seconds + (cpu_after.sim - cpu_before.sim))},
                           {"hub", cpu_us_per_post(used(cpu_before.hub, cpu_after.hub))},
                           {"broker", cpu_us_per_post(used(cpu_before.broker, cpu_after.broker))}}},
      // The same trips in three parts: pressed to first handed to the broker
      // (the device's queue and sender), to the outcome off the wire (broker,
      // hub ingest and commit, outbox relay, broker), to applied on the device.
      {"claim_round_trip_parts_ms", {{"device_queue", Percentiles(tally.claim_queue_ms)},
                                     {"broker_and_hub", Percentiles(tally.claim_wire_ms)},
                                     {"device_apply", Percentiles(tally.claim_apply_ms)}}},
      {"seed_sla", {{"claim_p95_ms", kSlaClaimP95Ms}, {"claim_p99_ms", kSlaClaimP99Ms},
                    {"met", !tally.claim_ms.empty() && claim_p95 < kSlaClaimP95Ms && claim_p99 < kSlaClaimP99Ms}}},
      {"store_checked", unchecked.empty()},
      {"lost", checked(lost)}, {"duplicated", checked(doubled)}};
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

  std::printf("%s\n", results.dump().c_str());
  std::fflush(stdout);
  // The processes go off shift (their vans tell the hub) and exit.
  if (!shards.Wait(std::chrono::seconds(60)))
    std::fprintf(stderr, "pp-sim: a simulator process did not exit cleanly\n");
  if (!given_up.empty()) {
    std::fprintf(stderr, "pp-sim: the run is incomplete: %zu of %d simulator processes gave no results "
                 "(\"processes_given_up\" in %s/results.json)\n", given_up.size(), shards.count(), o.out_dir.c_str());
    return 3;
  }
  if (!unchecked.empty()) return 5;
  if (lost != 0 || doubled != 0) return 1;
  return finished || interrupted ? 0 : 4;
}
