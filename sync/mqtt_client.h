// A small MQTT v5 client over Paho C++ 1.2.0, shaped for this protocol:
// QoS 1, a persistent session, reconnect with jittered backoff from a
// supervisor thread of its own (not Paho's automatic reconnect: see
// SessionHealth and Supervise() for the two ways Paho was seen stuck), the
// subscriptions renewed on every (re)connect, TCP_NODELAY set on the socket
// after every (re)connect (Paho never sets it: without it a QoS 1 round trip
// takes ~26 ms instead of ~0.5 ms), and the W3C traceparent carried as an
// MQTT v5 user property.
//
// Paho's exceptions stop at this border: every call returns a Status.
//
// Thread safety: all methods may be called from any thread. The message
// handler runs on Paho's callback thread and must not block for long.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

namespace mqtt {
class async_client;
class delivery_token;
}  // namespace mqtt

namespace pp::sync {

// Whether the next connect should start a clean session. After a broker
// restart Paho C 1.3.11 was seen (agent_test, about one run in ten under
// load) to send, right after its CONNACK, a packet mosquitto refuses as a
// protocol error; with a persistent session it sends it again on every
// reconnect, and the client loops forever. Sessions that keep ending within
// kQuick of starting are that loop: after kQuickInARow of them the next
// connect starts clean, dropping Paho's in-flight state and the broker's
// queue for this client. Nothing is lost for good: devices re-send every op
// still unanswered, the hub's relay re-publishes every event not marked
// sent, devices ask the hub for those marked sent (`catchup`, see
// docs/protocol.md), and tablets ask for their nearby posts again.
class SessionHealth {
 public:
  static constexpr std::chrono::seconds kQuick{5};
  static constexpr int kQuickInARow = 3;
  void Ended(std::chrono::steady_clock::duration lasted) { quick_ = lasted < kQuick ? quick_ + 1 : 0; }
  // True once per run of kQuickInARow quick endings.
  bool StartClean() {
    if (quick_ < kQuickInARow) return false;
    quick_ = 0;
    return true;
  }

 private:
  int quick_ = 0;
};

class MqttClient {
 public:
  struct Options {
    std::string uri;  // tcp://127.0.0.1:1883
    std::string client_id;
    std::string username;
    std::string password;
    std::vector<std::string> subscriptions;  // QoS 1 each
    bool clean_start = false;
    int session_expiry_s = 7 * 24 * 3600;
    int max_buffered = 100000;  // Paho's default of 100 throws -12 under load
    // Told after every (re)connect and every loss; on Paho's threads, must not block.
    std::function<void()> on_connected;
    std::function<void()> on_lost;
    // Reconnect backoff for Start(): exponential from min to max, each wait
    // drawn uniformly from [d/2, d] so that a fleet coming back after an
    // outage does not reconnect in lockstep.
    std::chrono::milliseconds min_backoff{250};
    std::chrono::milliseconds max_backoff{30000};
  };
  using Handler = std::function<void(const std::string& topic, const std::string& payload,
                                     const std::string& traceparent)>;

  // A publish in flight: Wait() returns once the broker acknowledged it.
  class Ack {
   public:
    Status Wait(std::chrono::milliseconds timeout) const;
    // Acknowledged or failed (Wait then returns at once).
    bool Done() const;

   private:
    friend class MqttClient;
    std::shared_ptr<mqtt::delivery_token> token_;
  };

  // A clean session that the broker forgets on disconnect: for tools,
  // benchmarks and tests that start from nothing every run.
  static Options CleanSession(std::string uri, std::string client_id, std::string username,
                              std::string password, std::vector<std::string> subscriptions,
                              int max_buffered);

  MqttClient(Options options, Handler handler);
  ~MqttClient();

  // Connects (waiting up to `timeout`); from then on reconnects by itself,
  // as after Start(). Fails if the broker is not there now.
  Status Connect(std::chrono::milliseconds timeout);
  // For devices, whose broker may be away when they start: returns at once
  // and keeps the client connected from a thread of its own, with jittered
  // exponential backoff (Options). Use either Start() or Connect().
  void Start();
  // QoS 1 unless told otherwise; a QoS 0 publish is never acknowledged (its
  // Ack completes once Paho has written it) and never counts against the
  // broker's in-flight limit.
  Result<Ack> Publish(const std::string& topic, const std::string& payload,
                      const std::string& traceparent = "", int qos = 1);
  // Told each time a publish is acknowledged or has failed, on Paho's
  // thread (must not block, must not call this client): a publisher can
  // then wait for "a PUBACK or something else" on one condition variable
  // of its own. Replaces the one before; nullptr: none.
  void OnPublishDone(std::function<void()> done);
  // True once this connection is ready: the broker accepted it, its
  // subscriptions were asked for and on_connected has returned; false from
  // a loss, a connect's start or Disconnect() until then. Paho's own
  // is_connected() turns true before any of that, and a device that sent on
  // it then would ping before its agent had heard of the new connection
  // (the agent then forgets the ping, and the answer is dropped).
  bool connected() const;
  // Whether the broker still held this client's session at the latest
  // connect (the CONNACK's "session present"): if not, whatever it had
  // queued for this client is gone. False from the start of each connect
  // until its CONNACK says otherwise, so a reader can never see the answer
  // of an earlier connect as that of a later one.
  bool session_kept() const { return session_kept_; }
  // Stops reconnecting and disconnects; Connect() or Start() again resumes.
  void Disconnect();

 private:
  void OnConnected();
  Status ConnectOnce(std::chrono::milliseconds timeout, bool clean_start);
  void StartSupervisor(bool connected);
  void Supervise(bool connected);
  // Until the connection is lost (true) or Disconnect() (false).
  bool WaitWhileConnected();
  // Waits `d`; false if Disconnect() came first.
  bool Pause(std::chrono::milliseconds d);

  const Options options_;
  Handler handler_;
  // Before client_: Paho's tokens point at it until the client is gone.
  class DoneListener;
  std::unique_ptr<DoneListener> done_listener_;
  std::unique_ptr<mqtt::async_client> client_;
  int broker_port_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;   // guarded by mu_
  bool lost_ = false;   // guarded by mu_
  std::atomic<bool> session_kept_{false};
  std::atomic<bool> ready_{false};  // see connected()
  std::thread supervisor_;
};

// Publishes every payload on `topic` with at most `window` awaiting their
// PUBACK, as a draining device queue does (Paho C++ keeps each pending
// token in a list it scans per acknowledgement: thousands at once make it
// erratic). Each carries `traceparent` (none if empty), as a device's
// ops do. Returns after the last PUBACK, or the first failure.
Status PublishWindowed(MqttClient& client, const std::string& topic,
                       const std::vector<std::string>& payloads, size_t window,
                       const std::string& traceparent = "");

}  // namespace pp::sync
