// Shared test support: temporary folders, the PostgreSQL the test command
// started, child processes (pp-hub) and a small HTTP client. Tests never
// sleep to wait for something: they poll a condition with a deadline.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <set>
#include <vector>

namespace pp::test {

// What test processes that are gone left behind: a process that aborts (a
// sanitizer's report, ctest's kill at its timeout) never runs its
// destructors, and its brokers run daemonized. Each of its TempDirs
// (t<pid>_<n>, <pid> no longer alive) is removed, after stopping the
// mosquitto still running from it. The first TempDir of every test
// process calls it.
void ReapLeftovers();

// A fresh folder under the build tree, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// The PostgreSQL started by the ctest fixture "postgres"
// (tests/support/pg_fixture.sh). Creates a new empty database per call so
// tests do not see each other's rows. Fails the test if none is running.
std::string NewPostgresDatabase(const std::string& prefix);

// How many sessions of the database at `url` wait for a lock another
// transaction holds (pg_stat_activity): lets a test see a transaction
// blocked on a row rather than wait a while and assume it.
int PostgresSessionsWaitingOnALock(const std::string& url);

// The store URL for a parameterised backend test: "sqlite" (a file in
// `dir`) or "postgresql" (a new database on the fixture's server).
std::string StoreUrl(const std::string& backend, const TempDir& dir, const std::string& prefix);

// A whole file; "" if it cannot be read.
std::string ReadFile(const std::string& path);

// Where the built binaries are (PP_BIN_DIR, set by pp_test()).
std::string BinPath(const std::string& name);

// A child process whose stdout we read; killed (SIGKILL) at destruction if
// still running.
class Process {
 public:
  // `stderr_path`: append the child's stderr (its logs) to this file
  // instead of the test's output.
  explicit Process(std::vector<std::string> argv, const std::string& stderr_path = "");
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Reads stdout until a line containing `needle` appears or the deadline
  // passes; returns the line, or "" on timeout/EOF.
  std::string WaitForLine(const std::string& needle,
                          std::chrono::milliseconds deadline = std::chrono::seconds(20));
  void Kill(int sig);
  // Waits for exit; returns the exit status as from waitpid, or -1.
  int Wait();
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buffer_;
};

// Starts pp-hub on a free loopback port with `db`, and waits until it serves.
class Hub {
 public:
  explicit Hub(const std::string& db, std::vector<std::string> extra_args = {},
               const std::string& stderr_path = "");
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  Process& process() { return process_; }

 private:
  Process process_;
  int port_ = 0;
};

class Broker;
// pp-hub on SQLite in `db_path` with its MQTT door on `broker`.
std::unique_ptr<Hub> HubWithBroker(const std::string& db_path, const Broker& broker,
                                   const std::string& stderr_path = "");

// Repeats `cond` until it holds or `deadline` passes.
bool Eventually(const std::function<bool()>& cond,
                std::chrono::milliseconds deadline = std::chrono::seconds(10));

// A future RFC 3339 time, `hours` from the real clock.
std::string HoursFromNow(int hours);

}  // namespace pp::test

namespace pp::test {
// Sends raw bytes to 127.0.0.1:port and returns whatever comes back until the
// server closes or `deadline` passes. For requests no well-behaved client
// library would send (oversized chunked bodies, forged headers).
std::string RawHttp(int port, const std::string& request,
                    std::chrono::milliseconds deadline = std::chrono::seconds(10));
// The status code of a raw response ("HTTP/1.1 413 ..." -> 413), or 0.
int RawStatus(const std::string& response);
// One series of a hub's /metrics, named with its labels as scraped
// (`mqtt_ingest_messages_total{result="accepted"}`); -1 if absent or the
// scrape failed.
double MetricValue(int port, const std::string& series);
// TCP_NODELAY (0 or 1) of each IPv4 TCP socket of this process whose local
// port is `local_port` and whose peer's port is `peer_port` (0: any), found
// by listing /proc/self/fd: slow, for tests only.
std::vector<int> NoDelayOfSockets(int local_port, int peer_port);
}  // namespace pp::test

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace httplib {
class Server;
}

namespace pp::test {

// A loopback HTTP server that answers, fails, hangs or dawdles on command:
// the routing service and the alert webhook in tests. Hanging requests are
// released at destruction.
class FakeHttpServer {
 public:
  // kFail answers 500, kRefuse 400; kHang holds each request until
  // Release() (or 30 s) and then answers 504.
  enum class Mode { kOk, kFail, kRefuse, kHang, kSlow };
  // `answer` gets (path with query, body) and returns the 200 JSON body.
  using Answer = std::function<std::string(const std::string& path, const std::string& body)>;

  explicit FakeHttpServer(Answer answer);
  ~FakeHttpServer();
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  void set_mode(Mode m, std::chrono::milliseconds slow_delay = std::chrono::milliseconds(0));
  // Lets every request held by kHang or kSlow go, now and from now on.
  void Release();
  int requests() const { return requests_; }
  std::vector<std::string> bodies() const;

 private:
  Answer answer_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<int> requests_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Mode mode_ = Mode::kOk;                  // guarded by mu_
  std::chrono::milliseconds delay_{0};     // guarded by mu_
  bool released_ = false;                  // guarded by mu_
  std::vector<std::string> bodies_;        // guarded by mu_
};

}  // namespace pp::test

#include "sync/mqtt_client.h"
#include "sync/protocol.h"

namespace pp::test {

// A real mosquitto on a free loopback port, configured as in production
// (packaging/broker.sh: no anonymous access, per-device ACL).
class Broker {
 public:
  Broker();
  ~Broker();
  int port() const { return port_; }
  std::string uri() const { return "tcp://127.0.0.1:" + std::to_string(port_); }
  std::string hub_password_file() const { return dir_.file("hub.password"); }
  std::string dir() const { return dir_.path().string(); }
  void AddUser(const std::string& name, const std::string& password);
  void Stop();
  // Again, on the same port, with the same data. `max_queued` > 0: the
  // messages it keeps for an offline client (else packaging's default).
  void Start(int max_queued = 0);
  std::string Log() const;  // mosquitto's log: for a failing test's message
  // Freezes the broker (SIGSTOP) and lets it go on (SIGCONT): connections
  // stay open, nothing is read or acknowledged meanwhile. Keep it under
  // the clients' keepalive.
  void Freeze();
  void Thaw();
  // kill -9, frozen or not; then Start() on the same port.
  void Kill();

 private:
  void WaitForPortFree();
  TempDir dir_;
  int port_ = 0;
};

// A device speaking the protocol through the broker: signs, numbers and
// sends ops; collects what comes down, dropping repeats by id.
class TestDevice {
 public:
  TestDevice(const Broker& broker, std::string id);
  const std::string& id() const { return id_; }
  std::string public_key() const { return sync::ToBase64(keys_.public_key); }
  Status Connect();
  // Sends an op; returns the envelope (op id, seq) it sent.
  sync::Envelope Send(const std::string& type, nlohmann::json body);
  // Publishes exactly these bytes on `topic` (for forged or foreign messages).
  void SendRaw(const std::string& topic, const std::string& bytes);
  // The outcome for op `op`, waiting up to `deadline`; null if none came.
  nlohmann::json WaitOutcome(const std::string& op,
                             std::chrono::milliseconds deadline = std::chrono::seconds(10));
  // The first event of `type` (and matching `pred`), waiting up to `deadline`.
  nlohmann::json WaitEvent(const std::string& type,
                           const std::function<bool(const nlohmann::json&)>& pred = nullptr,
                           std::chrono::milliseconds deadline = std::chrono::seconds(10));
  int duplicates_dropped() const { return duplicates_; }
  // MQTT publishes received, and the down messages they carried (a batch
  // carries several; repeats dropped).
  int publishes() const {
    std::lock_guard lock(mu_);
    return int(publish_log_.size());
  }
  std::vector<nlohmann::json> messages() const {
    std::lock_guard lock(mu_);
    return received_;
  }
  // Each publish received, in order: the `prev` it named (0: none) and the
  // ids of its messages, repeats included.
  struct Received {
    int64_t prev = 0;
    std::vector<int64_t> ids;
  };
  std::vector<Received> publish_log() const {
    std::lock_guard lock(mu_);
    return publish_log_;
  }
  std::string password() const { return password_; }
  sync::KeyPair& keys() { return keys_; }
  uint64_t next_seq = 1;

 private:
  std::string id_, password_;
  sync::KeyPair keys_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<nlohmann::json> received_;  // guarded by mu_
  std::set<int64_t> seen_ids_;            // guarded by mu_
  int duplicates_ = 0;                    // guarded by mu_
  std::vector<Received> publish_log_;     // guarded by mu_
  // Last: destroyed first, so its callback thread is gone before the state
  // the callback touches.
  std::unique_ptr<sync::MqttClient> client_;
};

}  // namespace pp::test

namespace pp::test {

// The source tree (PP_SOURCE_DIR, set by pp_test()).
std::string SourceDir();

// A loopback port that was free a moment ago (for programs that need a port
// in their config file rather than picking their own).
int FreePort();

// One HTTP exchange with a local server: status (0 if unreachable) and the
// JSON body (null if none).
struct HttpAnswer {
  int status = 0;
  nlohmann::json body;
};
HttpAnswer HttpCall(int port, const std::string& method, const std::string& path,
                    const nlohmann::json& body = nullptr);

// A kiosk or tablet: registered with the hub and the broker by
// `pp-device register` (as an installer would), its config completed with
// `extra_config`, and pp-agent run on it. Start() again after Kill() reuses
// the same config and database: a reboot.
class AgentProcess {
 public:
  AgentProcess(const std::string& hub_url, const Broker& broker, const std::string& dir,
               std::string id, const std::string& role, int64_t org,
               nlohmann::json extra_config = nlohmann::json::object(),
               std::vector<std::string> extra_args = {}, std::string stderr_path = "");
  void Start();
  void Kill(int sig);  // and waits for it to exit
  void Signal(int sig) { process_->Kill(sig); }  // SIGSTOP, SIGCONT: does not wait
  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string config_path() const { return config_; }
  const std::string& id() const { return id_; }
  nlohmann::json State();
  HttpAnswer Call(const std::string& method, const std::string& path,
                  const nlohmann::json& body = nullptr) {
    return HttpCall(port_, method, path, body);
  }

 private:
  std::string id_, config_;
  std::vector<std::string> extra_args_;
  std::string stderr_path_;
  int port_ = 0;
  std::unique_ptr<Process> process_;
};

}  // namespace pp::test
