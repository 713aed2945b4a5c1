// A small MQTT v5 client over Paho C++ 1.2.0, shaped for this protocol:
// QoS 1, a persistent session, automatic reconnect with backoff, the
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

  // Connects (waiting up to `timeout`); from then on reconnects by itself
  // (Paho's automatic reconnect). Fails if the broker is not there now.
  Status Connect(std::chrono::milliseconds timeout);
  // For devices, whose broker may be away when they start: returns at once
  // and keeps the client connected from a thread of its own, with jittered
  // exponential backoff (Options). Use either Start() or Connect().
  void Start();
  Result<Ack> Publish(const std::string& topic, const std::string& payload,
                      const std::string& traceparent = "");
  bool connected() const;
  void Disconnect();

 private:
  void OnConnected();
  Status ConnectOnce(std::chrono::milliseconds timeout, bool paho_reconnects);
  void Supervise();

  const Options options_;
  Handler handler_;
  std::unique_ptr<mqtt::async_client> client_;
  int broker_port_ = 0;

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;   // guarded by mu_
  bool lost_ = false;   // guarded by mu_
  std::thread supervisor_;
};

// Publishes every payload on `topic` with at most `window` awaiting their
// PUBACK, as a draining device queue does (Paho C++ keeps each pending
// token in a list it scans per acknowledgement: thousands at once make it
// erratic). Returns after the last PUBACK, or the first failure.
Status PublishWindowed(MqttClient& client, const std::string& topic,
                       const std::vector<std::string>& payloads, size_t window);

}  // namespace pp::sync
