#include "cloud-hub/matching/webhook_alerts.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "common/domain_json.h"
#include "common/log.h"
#include "common/process_cpu.h"
#include "common/time_format.h"

namespace pp {

WebhookAlertSink::WebhookAlertSink(std::string url, std::string routing_key, Options options)
    : options_(options), routing_key_(std::move(routing_key)) {
  // "http://host:port/path" -> ("http://host:port", "/path")
  auto scheme_end = url.find("://");
  auto path_start = url.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
  scheme_host_port_ = url.substr(0, path_start);
  path_ = path_start == std::string::npos ? "/" : url.substr(path_start);
  thread_ = std::thread([this] { Run(); });
}

WebhookAlertSink::~WebhookAlertSink() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void WebhookAlertSink::Trigger(const Surplus& post, const std::string& summary) {
  nlohmann::json event{
      {"routing_key", routing_key_},
      {"event_action", "trigger"},
      {"dedup_key", "pp-surplus-" + std::to_string(post.id)},
      {"payload",
       {{"summary", summary},
        {"source", "pp-hub"},
        {"severity", "warning"},
        {"component", "matching"},
        {"group", "dead-letter-queue"},
        {"class", "surplus.dlq_exhausted"},
        {"timestamp", FormatRfc3339(post.updated_at)},
        {"custom_details", ToJson(post)}}}};
  Enqueue(post.id, event.dump());
}

void WebhookAlertSink::Resolve(const Surplus& post) {
  // Events v2: a resolve names the incident by its dedup_key alone.
  nlohmann::json event{{"routing_key", routing_key_},
                       {"event_action", "resolve"},
                       {"dedup_key", "pp-surplus-" + std::to_string(post.id)}};
  Enqueue(post.id, event.dump());
}

void WebhookAlertSink::Enqueue(int64_t surplus_id, std::string body) {
  {
    std::lock_guard lock(mu_);
    if (queue_.size() < options_.queue_limit) {
      // In order: an incident's resolve never overtakes its trigger.
      queue_.push_back({surplus_id, std::move(body)});
      cv_.notify_one();
      return;
    }
    stats_.dropped++;
  }
  Log(LogLevel::kError, "alert_dropped",
      {{"surplus_id", std::to_string(surplus_id)},
       {"error", "alert queue full (" + std::to_string(options_.queue_limit) + " waiting for the webhook)"}});
}

WebhookAlertSink::Stats WebhookAlertSink::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void WebhookAlertSink::Run() {
  NameThisThread("alerts");
  std::unique_lock lock(mu_);
  while (true) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) break;
    Alert alert = std::move(queue_.front());
    queue_.pop_front();
    auto wait = options_.first_retry;
    while (true) {
      const bool last = alert.posted + 1 >= options_.attempts;
      lock.unlock();
      const Answer answer = Post(alert, options_.timeout, last);
      lock.lock();
      Count(answer, last);
      if (answer != Answer::kMayPass || last) break;
      // Stopping cuts the wait short: the alert goes back to the head of
      // the queue for the drain's last POST.
      if (cv_.wait_for(lock, wait, [&] { return stop_; })) {
        queue_.push_front(std::move(alert));
        break;
      }
      wait *= 2;
      stats_.retries++;
    }
  }
  Drain(lock);
}

void WebhookAlertSink::Drain(std::unique_lock<std::mutex>& lock) {
  using Clock = std::chrono::steady_clock;
  const auto end = Clock::now() + options_.drain;
  while (!queue_.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
    if (left <= std::chrono::milliseconds(0)) break;
    Alert alert = std::move(queue_.front());
    queue_.pop_front();
    if (alert.posted > 0) stats_.retries++;
    lock.unlock();
    const Answer answer = Post(alert, std::min<std::chrono::milliseconds>(options_.timeout, left), true);
    lock.lock();
    Count(answer, true);
  }
  if (!queue_.empty())
    Log(LogLevel::kWarn, "alerts_unsent",
        {{"alerts", std::to_string(queue_.size())},
         {"error", "the hub stopped; " + std::to_string(options_.drain.count()) + " ms to send them ran out"}});
}

void WebhookAlertSink::Count(Answer answer, bool last) {
  if (answer == Answer::kSent)
    stats_.sent++;
  else if (answer == Answer::kRefused || last)
    stats_.failed++;
}

WebhookAlertSink::Answer WebhookAlertSink::Post(Alert& alert, std::chrono::milliseconds timeout, bool last) {
  const int attempt = ++alert.posted;
  httplib::Client client(scheme_host_port_);
  const time_t sec = time_t(timeout.count() / 1000), usec = time_t(timeout.count() % 1000 * 1000);
  client.set_connection_timeout(sec, usec);
  client.set_read_timeout(sec, usec);
  client.set_write_timeout(sec, usec);
  auto res = client.Post(path_.c_str(), alert.body, "application/json");
  const std::string id = std::to_string(alert.surplus_id);
  if (res && res->status / 100 == 2) {
    Log(LogLevel::kWarn, "alert_sent", {{"surplus_id", id}, {"attempt", std::to_string(attempt)}});
    return Answer::kSent;
  }
  // A 4xx other than 429 says the alert itself is wrong: sending it again
  // gets the same answer.
  const bool final = res && res->status / 100 == 4 && res->status != 429;
  Log(final || last ? LogLevel::kError : LogLevel::kWarn, "alert_failed",
      {{"surplus_id", id},
       {"attempt", std::to_string(attempt)},
       {"error", res ? "HTTP " + std::to_string(res->status) : httplib::to_string(res.error())},
       {"next", final || last ? "dropped" : "retry"}});
  return final ? Answer::kRefused : Answer::kMayPass;
}

}  // namespace pp
