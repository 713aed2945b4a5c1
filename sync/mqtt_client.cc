#include "sync/mqtt_client.h"

#include <deque>
#include <fstream>
#include <limits>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <random>
#include <string_view>

#include <mqtt/async_client.h>

#include "common/log.h"

namespace pp::sync {
namespace {

// The number of file descriptors this process's table has room for (every
// open fd is below it), from /proc/self/status; 1024 if it cannot be read.
int FdTableSize() {
  std::ifstream status("/proc/self/status");
  std::string key;
  while (status >> key) {
    if (key == "FDSize:") {
      int n = 0;
      if (status >> n && n > 0) return n;
      break;
    }
    status.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 1024;
}

// Paho keeps its socket to itself (and never sets TCP_NODELAY, so PUBACKs
// would wait on Nagle): find ours among this process's TCP sockets by the
// broker's port and set it. One getsockopt per fd number: it fails at once
// for closed fds, files and non-TCP sockets, and skips sockets already set
// (the other clients of this process): one cheap system call per fd.
// (Listing /proc/self/fd and fstat-ing each entry cost ~12 ms per connect
// with a thousand clients in one process — pp-sim — all of it on Paho's one
// receive thread, which then delivered nothing else.)
void SetNoDelayOnSocketsTo(int port) {
  const int n = FdTableSize();
  for (int fd = 3; fd < n; ++fd) {
    int on = 0;
    socklen_t len = sizeof on;
    if (getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) != 0 || on) continue;
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;
    int peer_port = peer.ss_family == AF_INET
                        ? ntohs(reinterpret_cast<sockaddr_in*>(&peer)->sin_port)
                        : peer.ss_family == AF_INET6
                              ? ntohs(reinterpret_cast<sockaddr_in6*>(&peer)->sin6_port)
                              : -1;
    if (peer_port != port) continue;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
}

int PortOf(const std::string& uri) {
  auto colon = uri.rfind(':');
  return colon == std::string::npos ? 1883 : std::atoi(uri.c_str() + colon + 1);
}

// Paho C sets up its globals when a process creates its first client and
// tears them down when the last one is destroyed; the next create sets them
// up again. Its heap tracking then starts a new, empty record of what it
// allocated, and whatever it allocated before and is freed later — the
// properties of a message a token still holds, of a connect's options — is
// not found in it and never freed (Paho logs "Failed to remove heap item").
// sync_test creates and destroys clients test after test, and LeakSanitizer
// saw those leaks once in about ten runs. One client, never connected (no
// traffic, no threads), made before the process's first client and
// destroyed at exit after its last, keeps Paho set up for the process's
// lifetime.
void KeepPahoSetUp() {
  static mqtt::async_client anchor("tcp://127.0.0.1:1", "pp-paho-anchor",
                                   mqtt::create_options(MQTTVERSION_5), nullptr);
}

}  // namespace

Status MqttClient::Ack::Wait(std::chrono::milliseconds timeout) const {
  try {
    if (!token_->wait_for(timeout)) return Error::Unavailable("no PUBACK within the timeout");
    if (token_->get_return_code() != 0)
      return Error::Unavailable("publish failed: code " + std::to_string(token_->get_return_code()));
    return OkStatus();
  } catch (const mqtt::exception& e) {
    return Error::Unavailable(std::string("publish failed: ") + e.what());
  }
}

bool MqttClient::Ack::Done() const {
  try {
    return token_->wait_for(std::chrono::milliseconds(0));
  } catch (const mqtt::exception&) {
    return true;  // failed: Wait says how
  }
}

// Every publish's: Paho marks the token complete before it calls these.
class MqttClient::DoneListener : public mqtt::iaction_listener {
 public:
  void Set(std::function<void()> done) {
    std::lock_guard lock(mu_);
    done_ = std::move(done);
  }
  void on_success(const mqtt::token&) override { Tell(); }
  void on_failure(const mqtt::token&) override { Tell(); }

 private:
  void Tell() {
    std::lock_guard lock(mu_);
    if (done_) done_();
  }
  std::mutex mu_;
  std::function<void()> done_;  // guarded by mu_
};

void MqttClient::OnPublishDone(std::function<void()> done) { done_listener_->Set(std::move(done)); }

MqttClient::Options MqttClient::CleanSession(std::string uri, std::string client_id,
                                             std::string username, std::string password,
                                             std::vector<std::string> subscriptions,
                                             int max_buffered) {
  Options o;
  o.uri = std::move(uri);
  o.client_id = std::move(client_id);
  o.username = std::move(username);
  o.password = std::move(password);
  o.subscriptions = std::move(subscriptions);
  o.clean_start = true;
  o.session_expiry_s = 0;
  o.max_buffered = max_buffered;
  return o;
}

MqttClient::MqttClient(Options options, Handler handler)
    : options_(std::move(options)),
      handler_(std::move(handler)),
      done_listener_(std::make_unique<DoneListener>()),
      broker_port_(PortOf(options_.uri)) {
  KeepPahoSetUp();
  mqtt::create_options create(MQTTVERSION_5);
  create.set_max_buffered_messages(options_.max_buffered);
  create.set_send_while_disconnected(true);
  client_ = std::make_unique<mqtt::async_client>(options_.uri, options_.client_id, create, nullptr);
  client_->set_connected_handler([this](const std::string&) { OnConnected(); });
  client_->set_connection_lost_handler([this](const std::string& cause) {
    ready_ = false;
    Log(LogLevel::kWarn, "mqtt_connection_lost",
        {{"client", options_.client_id}, {"cause", cause}});
    {
      std::lock_guard lock(mu_);
      lost_ = true;
    }
    cv_.notify_all();
    if (options_.on_lost) options_.on_lost();
  });
  client_->set_message_callback([this](mqtt::const_message_ptr msg) {
    // Read from Paho's C struct in place: properties::get() is not const in
    // Paho C++ 1.2.0, and a copy of the properties costs Paho C allocations,
    // each behind its process-wide heap-tracking lock, on the one thread
    // that receives for every client of the process.
    std::string traceparent;
    const MQTTProperties& props = msg->get_properties().c_struct();
    for (int i = 0; i < props.count; ++i) {
      const MQTTProperty& p = props.array[i];
      if (p.identifier != MQTTPROPERTY_CODE_USER_PROPERTY || !p.value.data.data || !p.value.value.data) continue;
      if (std::string_view(p.value.data.data, size_t(p.value.data.len)) == "traceparent")
        traceparent.assign(p.value.value.data, size_t(p.value.value.len));
    }
    handler_(msg->get_topic(), msg->get_payload_str(), traceparent);
  });
}

MqttClient::~MqttClient() { Disconnect(); }

void MqttClient::Start() { StartSupervisor(false); }

Status MqttClient::Connect(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(mu_);
    lost_ = false;
  }
  PP_RETURN_IF_ERROR(ConnectOnce(timeout, options_.clean_start));
  StartSupervisor(true);
  return OkStatus();
}

void MqttClient::StartSupervisor(bool connected) {
  std::lock_guard lock(mu_);
  if (supervisor_.joinable()) return;
  stop_ = false;
  supervisor_ = std::thread([this, connected] { Supervise(connected); });
}

void MqttClient::Supervise(bool connected) {
  std::mt19937_64 rng(std::random_device{}());
  auto jittered = [&](std::chrono::milliseconds d) {
    return std::chrono::milliseconds(
        std::uniform_int_distribution<int64_t>(d.count() / 2, d.count())(rng));
  };
  SessionHealth health;
  auto delay = options_.min_backoff;
  while (true) {
    if (!connected) {
      bool clean = options_.clean_start;
      if (!clean && health.StartClean()) {
        clean = true;
        Log(LogLevel::kWarn, "mqtt_session_reset",
            {{"client", options_.client_id},
             {"why", "the last sessions all ended within seconds of connecting"}});
      }
      {
        std::lock_guard lock(mu_);
        if (stop_) return;
        lost_ = false;
      }
      Status st = ConnectOnce(std::chrono::seconds(10), clean);
      if (!st.ok()) {
        Log(LogLevel::kWarn, "mqtt_connect_failed",
            {{"client", options_.client_id}, {"error", st.error().message},
             {"retry_ms", std::to_string(delay.count())}});
        auto wait = jittered(delay);
        delay = std::min(delay * 2, options_.max_backoff);
        if (!Pause(wait)) return;
        continue;
      }
    }
    connected = false;
    delay = options_.min_backoff;
    const auto began = std::chrono::steady_clock::now();
    if (!WaitWhileConnected()) return;
    health.Ended(std::chrono::steady_clock::now() - began);
    if (!Pause(jittered(delay))) return;
  }
}

bool MqttClient::Pause(std::chrono::milliseconds d) {
  std::unique_lock lock(mu_);
  return !cv_.wait_for(lock, d, [&] { return stop_; });
}

bool MqttClient::WaitWhileConnected() {
  int silent = 0;
  while (true) {
    {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stop_ || lost_; })) return !stop_;
    }
    // Paho was also seen (same test) to lose a connection the broker closed
    // without ever calling its connection-lost handler: is_connected()
    // false, and nobody told. Two looks a second apart, then reconnect.
    // Asked without holding mu_: Paho calls our handlers, which take mu_,
    // while holding its own lock, and is_connected() takes that lock.
    if (client_->is_connected()) {
      silent = 0;
      continue;
    }
    if (++silent < 2) continue;
    Log(LogLevel::kWarn, "mqtt_connection_lost_silently", {{"client", options_.client_id}});
    ready_ = false;
    try {
      client_->disconnect()->wait_for(std::chrono::seconds(1));  // reset Paho's state
    } catch (const mqtt::exception&) {
      // Not connected: nothing to reset.
    }
    return true;
  }
}

void MqttClient::OnConnected() {
  SetNoDelayOnSocketsTo(broker_port_);
  // Re-subscribe on every connect: cheap, and right even if the broker lost
  // the session (restart without persistence).
  for (const auto& topic : options_.subscriptions) {
    try {
      client_->subscribe(topic, 1);
    } catch (const mqtt::exception& e) {
      Log(LogLevel::kError, "mqtt_subscribe_failed", {{"topic", topic}, {"error", e.what()}});
    }
  }
  Log(LogLevel::kInfo, "mqtt_connected", {{"client", options_.client_id}});
  if (options_.on_connected) options_.on_connected();
  ready_ = true;  // after on_connected: whoever sees it sees what that did
}

Status MqttClient::ConnectOnce(std::chrono::milliseconds timeout, bool clean_start) {
  // A named object that outlives connect(), not connect_options_builder's
  // finalize(): Paho C++ 1.2.0's copy of connect_options keeps pointing
  // its C struct at the properties of the object it was copied from, so a
  // builder's copy carried a dangling pointer to the session expiry. In a
  // release build the freed bytes happened to survive and the broker kept
  // sessions; under ASan they did not, and every session ended on
  // disconnect (found by MqttClient.SaysWhetherTheBrokerKeptItsSession).
  mqtt::connect_options opts;
  opts.set_mqtt_version(MQTTVERSION_5);
  opts.set_clean_start(clean_start);
  opts.set_properties(mqtt::properties{{mqtt::property::SESSION_EXPIRY_INTERVAL, options_.session_expiry_s}});
  opts.set_user_name(options_.username);
  opts.set_password(options_.password);
  opts.set_keep_alive_interval(std::chrono::seconds(20));
  session_kept_ = false;
  ready_ = false;
  try {
    auto tok = client_->connect(opts);
    if (!tok->wait_for(timeout)) return Error::Unavailable("MQTT connect timed out");
    session_kept_ = tok->get_connect_response().is_session_present();
    return OkStatus();
  } catch (const mqtt::exception& e) {
    return Error::Unavailable(std::string("MQTT connect to ") + options_.uri + " failed: " + e.what());
  }
}

Result<MqttClient::Ack> MqttClient::Publish(const std::string& topic, const std::string& payload,
                                            const std::string& traceparent, int qos) {
  try {
    auto msg = mqtt::make_message(topic, payload, qos, false);
    if (!traceparent.empty()) {
      mqtt::properties props;
      props.add({mqtt::property::USER_PROPERTY, "traceparent", traceparent});
      msg->set_properties(std::move(props));  // a copy costs Paho C allocations
    }
    Ack ack;
    ack.token_ = client_->publish(msg, nullptr, *done_listener_);
    return ack;
  } catch (const mqtt::exception& e) {
    return Error::Unavailable(std::string("publish failed: ") + e.what());
  }
}

bool MqttClient::connected() const { return ready_ && client_->is_connected(); }

void MqttClient::Disconnect() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (supervisor_.joinable()) supervisor_.join();
  ready_ = false;
  try {
    if (client_->is_connected()) client_->disconnect()->wait_for(std::chrono::seconds(2));
  } catch (const mqtt::exception&) {
    // Already gone.
  }
}

Status PublishWindowed(MqttClient& client, const std::string& topic,
                       const std::vector<std::string>& payloads, size_t window,
                       const std::string& traceparent) {
  std::deque<MqttClient::Ack> acks;
  for (const auto& p : payloads) {
    if (acks.size() >= window) {
      PP_RETURN_IF_ERROR(acks.front().Wait(std::chrono::seconds(60)));
      acks.pop_front();
    }
    PP_ASSIGN_OR_RETURN(auto ack, client.Publish(topic, p, traceparent));
    acks.push_back(std::move(ack));
  }
  for (auto& a : acks) PP_RETURN_IF_ERROR(a.Wait(std::chrono::seconds(60)));
  return OkStatus();
}

}  // namespace pp::sync
