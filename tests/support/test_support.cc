#include "tests/support/test_support.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <mutex>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <pqxx/pqxx>
#include <random>
#include <thread>

#include "common/clock.h"
#include "common/time_format.h"

extern char** environ;

namespace pp::test {
namespace {

std::string Env(const char* name, const char* fallback = "") {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

bool Alive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

// Where every TempDir of every test process is made.
std::filesystem::path TempRoot() { return std::filesystem::path(Env("PP_TEST_STATE", "/tmp")) / "tmp"; }

}  // namespace

void ReapLeftovers() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(TempRoot(), ec)) {
    // t<pid>_<n>: a TempDir of test process <pid>.
    const std::string name = entry.path().filename().string();
    const auto underscore = name.find('_');
    if (name.size() < 3 || name[0] != 't' || underscore == std::string::npos) continue;
    const pid_t owner = std::atoi(name.substr(1, underscore - 1).c_str());
    if (owner <= 0 || owner == getpid() || Alive(owner)) continue;
    // Its broker, if one still runs from this very directory: a pid file
    // alone could name a process that has since taken the number.
    const std::string dir = entry.path().string();
    const pid_t broker = std::atoi(ReadFile(dir + "/mosquitto.pid").c_str());
    if (Alive(broker) &&
        ReadFile("/proc/" + std::to_string(broker) + "/cmdline").find(dir + "/mosquitto.conf") != std::string::npos) {
      kill(broker, SIGTERM);
      Eventually([&] { return !Alive(broker); }, std::chrono::seconds(5));
    }
    std::filesystem::remove_all(entry.path(), ec);
  }
}

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  static std::once_flag reap_once;
  std::call_once(reap_once, [] { ReapLeftovers(); });
  path_ = TempRoot() / ("t" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(path_);
  std::filesystem::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string NewPostgresDatabase(const std::string& prefix) {
  std::string state = Env("PP_TEST_STATE");
  std::ifstream in(state + "/pg.url");
  std::string admin_url;
  std::getline(in, admin_url);
  if (admin_url.empty()) {
    ADD_FAILURE() << "no PostgreSQL running: " << state
                  << "/pg.url is missing (run the tests through ctest, whose fixture starts it)";
    return "";
  }
  static std::atomic<int> counter{0};
  std::string db = prefix + "_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
  pqxx::connection c(admin_url);
  pqxx::nontransaction tx(c);
  tx.exec0("DROP DATABASE IF EXISTS " + db);
  tx.exec0("CREATE DATABASE " + db);
  auto slash = admin_url.rfind('/');
  return admin_url.substr(0, slash + 1) + db;
}

int PostgresSessionsWaitingOnALock(const std::string& url) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  return tx
      .exec1("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")[0]
      .as<int>();
}

std::string StoreUrl(const std::string& backend, const TempDir& dir, const std::string& prefix) {
  return backend == "sqlite" ? "sqlite:" + dir.file("hub.db") : NewPostgresDatabase(prefix);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string BinPath(const std::string& name) { return Env("PP_BIN_DIR", ".") + "/" + name; }

Process::Process(std::vector<std::string> argv, const std::string& stderr_path) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  if (!stderr_path.empty())
    posix_spawn_file_actions_addopen(&fa, 2, stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int rc = posix_spawn(&pid_, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  out_fd_ = fds[0];
  if (rc != 0) {
    pid_ = -1;
    ADD_FAILURE() << "cannot start " << argv[0] << ": " << strerror(rc);
  }
}

Process::~Process() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) close(out_fd_);
}

std::string Process::WaitForLine(const std::string& needle, std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (true) {
    size_t nl;
    while ((nl = buffer_.find('\n')) != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (line.find(needle) != std::string::npos) return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) return "";
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, int(left.count())) <= 0) return "";
    char buf[4096];
    ssize_t n = read(out_fd_, buf, sizeof buf);
    if (n <= 0) return "";
    buffer_.append(buf, size_t(n));
  }
}

void Process::Kill(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int Process::Wait() {
  if (pid_ <= 0) return -1;
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

Hub::Hub(const std::string& db, std::vector<std::string> extra_args, const std::string& stderr_path)
    : process_([&] {
        std::vector<std::string> argv{BinPath("pp-hub"), "--http", "127.0.0.1:0", "--db", db};
        argv.insert(argv.end(), extra_args.begin(), extra_args.end());
        return argv;
      }(), stderr_path) {
  std::string line = process_.WaitForLine("listening on");
  // "pp-hub listening on http://127.0.0.1:PORT (store: ...)"
  if (std::sscanf(line.c_str(), "pp-hub listening on http://%*[^:]:%d", &port_) != 1) {
    ADD_FAILURE() << "pp-hub did not start with --db " << db;
    port_ = 0;
  }
}

bool Eventually(const std::function<bool()>& cond, std::chrono::milliseconds deadline) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    // A polling interval (not a stand-in for time passing): on 2 cores a
    // spinning test would starve the processes it waits for.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return cond();
}

std::string HoursFromNow(int hours) {
  return FormatRfc3339(SystemClock::Instance().Now() + std::chrono::hours(hours));
}

}  // namespace pp::test

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace pp::test {

std::string RawHttp(int port, const std::string& request, std::chrono::milliseconds deadline) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "";
  }
  // The server may answer and close before we finish sending (that is the
  // point of an oversized body): stop sending on the first error.
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;
    sent += size_t(n);
  }
  std::string out;
  auto end = std::chrono::steady_clock::now() + deadline;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, int(left.count())) <= 0) break;
    char buf[8192];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, size_t(n));
    // One response is enough: stop once the declared body has arrived.
    auto head_end = out.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      auto cl = out.find("Content-Length: ");
      if (cl != std::string::npos && cl < head_end &&
          out.size() >= head_end + 4 + std::stoul(out.substr(cl + 16)))
        break;
    }
  }
  close(fd);
  return out;
}

int RawStatus(const std::string& response) {
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) return 0;
  return std::atoi(response.c_str() + 9);
}

double MetricValue(int port, const std::string& series) {
  httplib::Client c("127.0.0.1", port);
  auto r = c.Get("/metrics");
  if (!r || r->status != 200) return -1;
  const std::string key = "\n" + series + " ";
  auto at = r->body.find(key);
  return at == std::string::npos ? -1 : std::atof(r->body.c_str() + at + key.size());
}

std::vector<int> NoDelayOfSockets(int local_port, int peer_port) {
  std::vector<int> out;
  DIR* dir = opendir("/proc/self/fd");
  while (dirent* ent = dir ? readdir(dir) : nullptr) {
    int fd = std::atoi(ent->d_name);
    sockaddr_in local{}, peer{};
    socklen_t len = sizeof local, peer_len = sizeof peer;
    if (fd <= 2 || getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 || local.sin_family != AF_INET ||
        (local_port && ntohs(local.sin_port) != local_port) || (peer_port && ntohs(peer.sin_port) != peer_port))
      continue;
    int on = -1;
    len = sizeof on;
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0) out.push_back(on);
  }
  if (dir) closedir(dir);
  return out;
}

}  // namespace pp::test

#include <httplib.h>

namespace pp::test {

FakeHttpServer::FakeHttpServer(Answer answer)
    : answer_(std::move(answer)), server_(std::make_unique<httplib::Server>()) {
  auto handle = [this](const httplib::Request& req, httplib::Response& res) {
    requests_++;
    std::unique_lock lock(mu_);
    bodies_.push_back(req.body);
    switch (mode_) {
      case Mode::kFail:
        res.status = 500;
        res.set_content("{\"code\":\"InternalError\"}", "application/json");
        return;
      case Mode::kRefuse:
        res.status = 400;
        res.set_content("{\"status\":\"invalid event\"}", "application/json");
        return;
      case Mode::kHang:
        cv_.wait_for(lock, std::chrono::seconds(30), [&] { return released_; });
        res.status = 504;
        return;
      case Mode::kSlow:
        // A server that is genuinely slow to answer: the client's deadline
        // is what is under test.
        cv_.wait_for(lock, delay_, [&] { return released_; });
        break;
      case Mode::kOk:
        break;
    }
    lock.unlock();
    std::string target = req.path;
    if (!req.params.empty()) {
      target += "?";
      for (const auto& [k, v] : req.params) target += k + "=" + v + "&";
      target.pop_back();
    }
    res.set_content(answer_(target, req.body), "application/json");
  };
  server_->Get(".*", handle);
  server_->Post(".*", handle);
  port_ = server_->bind_to_any_port("127.0.0.1");
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  Eventually([&] { return server_->is_running(); });
}

FakeHttpServer::~FakeHttpServer() {
  Release();
  server_->stop();
  thread_.join();
}

void FakeHttpServer::Release() {
  {
    std::lock_guard lock(mu_);
    released_ = true;
  }
  cv_.notify_all();
}

void FakeHttpServer::set_mode(Mode m, std::chrono::milliseconds slow_delay) {
  std::lock_guard lock(mu_);
  mode_ = m;
  delay_ = slow_delay;
}

std::vector<std::string> FakeHttpServer::bodies() const {
  std::lock_guard lock(mu_);
  return bodies_;
}

}  // namespace pp::test

namespace pp::test {

std::string SourceDir() { return Env("PP_SOURCE_DIR", "."); }

namespace {

void RunOrFail(std::vector<std::string> argv) {
  Process p(std::move(argv));
  int st = p.Wait();
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ADD_FAILURE() << "command failed";
}
}  // namespace

Broker::Broker() {
  Process p({"/bin/bash", SourceDir() + "/packaging/broker.sh", "start", dir_.path().string()});
  std::string line = p.WaitForLine("");
  p.Wait();
  port_ = std::atoi(line.c_str());
  if (port_ <= 0) ADD_FAILURE() << "mosquitto did not start in " << dir_.path();
}

Broker::~Broker() { Stop(); }

void Broker::AddUser(const std::string& name, const std::string& password) {
  RunOrFail({"/bin/bash", SourceDir() + "/packaging/broker.sh", "add-user", dir_.path().string(),
             name, password});
}

void Broker::Stop() {
  RunOrFail({"/bin/bash", SourceDir() + "/packaging/broker.sh", "stop", dir_.path().string()});
  WaitForPortFree();
}

void Broker::WaitForPortFree() {
  Eventually([&] {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool refused = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0;
    close(fd);
    return refused;
  });
}

void Broker::Start(int max_queued) {
  // On its old port: a test that restarts the broker expects its devices to
  // find it again. Fails the test if that port was taken meanwhile.
  std::vector<std::string> argv{"/bin/bash", SourceDir() + "/packaging/broker.sh", "start",
                                dir_.path().string(), std::to_string(port_)};
  if (max_queued > 0) argv.insert(argv.begin(), {"/usr/bin/env", "PP_BROKER_MAX_QUEUED=" + std::to_string(max_queued)});
  RunOrFail(argv);
}

std::string Broker::Log() const { return ReadFile(dir_.file("mosquitto.log")); }

namespace {
void SignalBroker(const TempDir& dir, int sig) {
  const int pid = std::atoi(ReadFile(dir.file("mosquitto.pid")).c_str());
  if (pid <= 0 || kill(pid, sig) != 0) ADD_FAILURE() << "cannot signal mosquitto in " << dir.path();
}
}  // namespace

void Broker::Freeze() { SignalBroker(dir_, SIGSTOP); }
void Broker::Thaw() { SignalBroker(dir_, SIGCONT); }
void Broker::Kill() {
  SignalBroker(dir_, SIGKILL);
  WaitForPortFree();
}

TestDevice::TestDevice(const Broker& broker, std::string id)
    : id_(std::move(id)), password_("pw-" + id_), keys_(sync::GenerateKeyPair()) {
  sync::MqttClient::Options o;
  o.uri = broker.uri();
  o.client_id = id_;
  o.username = id_;
  o.password = password_;
  o.subscriptions = {sync::DownTopic(id_)};
  client_ = std::make_unique<sync::MqttClient>(
      o, [this](const std::string&, const std::string& payload, const std::string&) {
        auto down = sync::DecodeDown(payload);
        if (!down.ok()) return;
        std::lock_guard lock(mu_);
        Received got{down->prev, {}};
        for (const auto& j : down->messages)
          if (j.contains("id") && j["id"].is_number_integer()) got.ids.push_back(j["id"].get<int64_t>());
        publish_log_.push_back(std::move(got));
        for (auto& j : down->messages) {
          if (j.contains("id") && j["id"].is_number_integer() &&
              !seen_ids_.insert(j["id"].get<int64_t>()).second) {
            duplicates_++;  // QoS 1 may deliver twice; the id tells
            continue;
          }
          received_.push_back(std::move(j));
        }
        cv_.notify_all();
      });
}

Status TestDevice::Connect() { return client_->Connect(std::chrono::seconds(10)); }

sync::Envelope TestDevice::Send(const std::string& type, nlohmann::json body) {
  const uint64_t seq = next_seq++;
  sync::Envelope e = sync::Sealed(id_, seq, id_ + "-op-" + std::to_string(seq), type, std::move(body),
                                  ToUnixMillis(SystemClock::Instance().Now()), keys_.secret_key);
  SendRaw(sync::UpTopic(id_, type), sync::Encode(e));
  return e;
}

void TestDevice::SendRaw(const std::string& topic, const std::string& bytes) {
  auto ack = client_->Publish(topic, bytes);
  if (ack.ok()) (void)ack->Wait(std::chrono::seconds(10));
}

nlohmann::json TestDevice::WaitOutcome(const std::string& op, std::chrono::milliseconds deadline) {
  return WaitEvent("", [&](const nlohmann::json& j) {
    return j.value("kind", "") == "outcome" && j.value("op", "") == op;
  }, deadline);
}

nlohmann::json TestDevice::WaitEvent(const std::string& type,
                                     const std::function<bool(const nlohmann::json&)>& pred,
                                     std::chrono::milliseconds deadline) {
  std::unique_lock lock(mu_);
  nlohmann::json found;
  cv_.wait_for(lock, deadline, [&] {
    for (const auto& j : received_) {
      if (!type.empty() && (j.value("kind", "") != "event" || j.value("type", "") != type)) continue;
      if (pred && !pred(j)) continue;
      found = j;
      return true;
    }
    return false;
  });
  return found;
}

}  // namespace pp::test

namespace pp::test {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

HttpAnswer HttpCall(int port, const std::string& method, const std::string& path,
                    const nlohmann::json& body) {
  httplib::Client cli("127.0.0.1", port);
  cli.set_connection_timeout(std::chrono::seconds(5));
  cli.set_read_timeout(std::chrono::seconds(30));
  std::string text = body.is_null() ? "" : body.dump();
  auto r = method == "GET"   ? cli.Get(path)
           : method == "PUT" ? cli.Put(path, text, "application/json")
                             : cli.Post(path, text, "application/json");
  if (!r) return {};
  return {r->status, nlohmann::json::parse(r->body, nullptr, false)};
}

AgentProcess::AgentProcess(const std::string& hub_url, const Broker& broker, const std::string& dir,
                           std::string id, const std::string& role, int64_t org,
                           nlohmann::json extra_config, std::vector<std::string> extra_args,
                           std::string stderr_path)
    : id_(std::move(id)),
      config_(dir + "/" + id_ + ".json"),
      extra_args_(std::move(extra_args)),
      stderr_path_(std::move(stderr_path)) {
  RunOrFail({BinPath("pp-device"), "register", "--hub", hub_url, "--id", id_, "--role", role,
             "--org", std::to_string(org), "--out", dir, "--broker", broker.uri(), "--broker-dir",
             broker.dir()});
  std::ifstream in(config_);
  nlohmann::json cfg = nlohmann::json::parse(in, nullptr, false);
  if (!cfg.is_object()) {
    ADD_FAILURE() << "pp-device wrote no config at " << config_;
    return;
  }
  port_ = FreePort();
  cfg["http_listen"] = "127.0.0.1:" + std::to_string(port_);
  cfg.update(extra_config);
  std::ofstream(config_) << cfg.dump(2);
  Start();
}

void AgentProcess::Start() {
  std::vector<std::string> argv{BinPath("pp-agent"), "run", "--config", config_};
  argv.insert(argv.end(), extra_args_.begin(), extra_args_.end());
  process_ = std::make_unique<Process>(argv, stderr_path_);
  if (process_->WaitForLine("UI on http://").empty()) ADD_FAILURE() << "pp-agent " << id_ << " did not start";
}

void AgentProcess::Kill(int sig) {
  process_->Kill(sig);
  process_->Wait();
}

nlohmann::json AgentProcess::State() { return Call("GET", "/api/state").body; }

}  // namespace pp::test

namespace pp::test {

std::unique_ptr<Hub> HubWithBroker(const std::string& db_path, const Broker& broker,
                                   const std::string& stderr_path) {
  return std::make_unique<Hub>("sqlite:" + db_path,
                               std::vector<std::string>{"--mqtt", broker.uri(), "--mqtt-password-file",
                                                        broker.hub_password_file()},
                               stderr_path);
}

}  // namespace pp::test
