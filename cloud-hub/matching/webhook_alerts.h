// Operator alerts as PagerDuty Events v2 JSON, POSTed to a webhook
// ({"routing_key","event_action":"trigger","dedup_key","payload":{...}}),
// and their resolves once the post has left the DLQ.
//
// Trigger() only queues: it is called on a store writer's thread, and a
// webhook that answered slowly (or not at all) used to hold that thread for
// up to its 10 s of timeouts, every door's commits waiting behind it. One
// thread of its own POSTs the queue in order. A failure that may pass (no
// connection, a timeout, 429, 5xx) is tried again after 1, 2, 4, 8 s; the
// dedup_key ("pp-surplus-{id}") makes a repeat one incident on the
// receiver's side. What is refused outright (another 4xx) or still failing
// after the last attempt is logged (alert_failed) and dropped: the post
// itself stays dead-lettered in the store, on the dashboard and in the
// dlq_posts gauge, whatever became of its alert.
//
// Stopping (the destructor) does not drop what is queued: an alert is
// raised once, when the post's last retry fails, and one lost at a restart
// would never be raised again. The POST in progress finishes; then every
// queued alert, and one whose retry was waiting, gets one more POST, until
// the queue is empty or Options::drain has passed (each POST's timeouts cut
// to what is left of it). What is left then is logged (alerts_unsent).
//
// Thread safety: Trigger() from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "cloud-hub/matching/cascade.h"

namespace pp {

class WebhookAlertSink final : public AlertSink {
 public:
  struct Options {
    int attempts = 5;                                  // POSTs of one alert, at most
    std::chrono::milliseconds first_retry{1000};       // then doubled each time
    std::chrono::seconds timeout{5};                   // to connect, and to read the answer
    size_t queue_limit = 1000;                         // alerts waiting; more are dropped, logged
    std::chrono::milliseconds drain{5000};             // at stop, for what is still queued
  };
  struct Stats {
    uint64_t sent = 0;     // answered 2xx
    uint64_t failed = 0;   // refused, or failing after the last attempt
    uint64_t dropped = 0;  // the queue was full
    uint64_t retries = 0;  // POSTs after the first of an alert
  };

  // `url`: http://host[:port]/path (or https).
  WebhookAlertSink(std::string url, std::string routing_key) : WebhookAlertSink(url, routing_key, Options{}) {}
  WebhookAlertSink(std::string url, std::string routing_key, Options options);
  // Finishes the POST in progress (at most its timeouts), then sends what is
  // queued within Options::drain (see the top of this file).
  ~WebhookAlertSink() override;

  void Trigger(const Surplus& post, const std::string& summary) override;
  // {"event_action":"resolve"} under the same dedup_key: the receiver
  // closes the incident (one never triggered, or closed already, is ignored).
  void Resolve(const Surplus& post) override;
  // Triggers and resolves alike.
  Stats stats() const;

 private:
  struct Alert {
    int64_t surplus_id;
    std::string body;
    int posted = 0;  // POSTs made of it so far
  };
  void Enqueue(int64_t surplus_id, std::string body);
  void Run();
  // At stop: one POST for each alert queued, within Options::drain; mu_ held.
  void Drain(std::unique_lock<std::mutex>& lock);
  enum class Answer { kSent, kRefused, kMayPass };  // kRefused: the same again would be too
  // One POST (the alert's next), logged; `last`: none follows if it fails.
  // The caller keeps the counts.
  Answer Post(Alert& alert, std::chrono::milliseconds timeout, bool last);
  void Count(Answer answer, bool last);  // mu_ held

  const Options options_;
  std::string scheme_host_port_, path_, routing_key_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Alert> queue_;  // guarded by mu_
  bool stop_ = false;        // guarded by mu_
  Stats stats_;              // guarded by mu_
  std::thread thread_;
};

}  // namespace pp
