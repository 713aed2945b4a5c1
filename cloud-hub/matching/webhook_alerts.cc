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
  size_t unsent;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    unsent = queue_.size();
  }
  cv_.notify_all();
  thread_.join();
  if (unsent > 0) Log(LogLevel::kWarn, "alerts_unsent", {{"alerts", std::to_string(unsent)}});
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
    if (stop_) return;
    Alert alert = std::move(queue_.front());
    queue_.pop_front();
    auto wait = options_.first_retry;
    for (int attempt = 1;; ++attempt) {
      lock.unlock();
      const Answer answer = Post(alert, attempt);
      lock.lock();
      if (answer == Answer::kSent) {
        stats_.sent++;
        break;
      }
      if (answer == Answer::kRefused || attempt == options_.attempts) {
        stats_.failed++;
        break;
      }
      // The destructor cuts the wait short; the alert is then dropped with the rest.
      if (cv_.wait_for(lock, wait, [&] { return stop_; })) return;
      wait *= 2;
      stats_.retries++;
    }
  }
}

WebhookAlertSink::Answer WebhookAlertSink::Post(const Alert& alert, int attempt) {
  httplib::Client client(scheme_host_port_);
  client.set_connection_timeout(options_.timeout.count(), 0);
  client.set_read_timeout(options_.timeout.count(), 0);
  client.set_write_timeout(options_.timeout.count(), 0);
  auto res = client.Post(path_.c_str(), alert.body, "application/json");
  const std::string id = std::to_string(alert.surplus_id);
  if (res && res->status / 100 == 2) {
    Log(LogLevel::kWarn, "alert_sent", {{"surplus_id", id}, {"attempt", std::to_string(attempt)}});
    return Answer::kSent;
  }
  // A 4xx other than 429 says the alert itself is wrong: sending it again
  // gets the same answer.
  const bool final = res && res->status / 100 == 4 && res->status != 429;
  const bool last = final || attempt == options_.attempts;
  Log(last ? LogLevel::kError : LogLevel::kWarn, "alert_failed",
      {{"surplus_id", id},
       {"attempt", std::to_string(attempt)},
       {"error", res ? "HTTP " + std::to_string(res->status) : httplib::to_string(res.error())},
       {"next", last ? "dropped" : "retry"}});
  return final ? Answer::kRefused : Answer::kMayPass;
}

}  // namespace pp
