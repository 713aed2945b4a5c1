#include "cloud-hub/mqtt/ingest_pool.h"

#include <functional>

#include "common/process_cpu.h"

namespace pp {

IngestPool::IngestPool(DeviceIngest& ingest, int workers, size_t queue_limit)
    : ingest_(ingest), limit_(queue_limit) {
  for (int i = 0; i < std::max(1, workers); ++i) workers_.push_back(std::make_unique<Worker>());
  for (auto& w : workers_) w->thread = std::thread([this, wp = w.get()] { Run(*wp); });
}

IngestPool::~IngestPool() {
  for (auto& w : workers_) {
    std::lock_guard lock(w->mu);
    w->stop = true;
    w->has_work.notify_all();
  }
  for (auto& w : workers_) w->thread.join();
}

void IngestPool::Post(std::string topic, std::string payload, std::string traceparent) {
  const auto received_at = std::chrono::steady_clock::now();
  // pp/v1/up/{device}/{type}: the device level picks the worker.
  auto start = topic.find('/', 9);
  std::string_view device = start == std::string::npos ? topic : std::string_view(topic).substr(0, start);
  Worker& w = *workers_[std::hash<std::string_view>{}(device) % workers_.size()];
  std::unique_lock lock(w.mu);
  if (w.queue.size() >= limit_) {  // backpressure: Paho stops reading, the broker holds on
    ++w.blocked;
    w.has_room.wait(lock, [&] { return w.queue.size() < limit_; });
    --w.blocked;
  }
  w.queue.push_back({std::move(topic), std::move(payload), std::move(traceparent), received_at});
  if (w.asleep) w.has_work.notify_one();
}

void IngestPool::Run(Worker& w) {
  NameThisThread("ingest");
  std::deque<Item> batch;
  while (true) {
    {
      std::unique_lock lock(w.mu);
      w.asleep = true;
      w.has_work.wait(lock, [&] { return w.stop || !w.queue.empty(); });
      w.asleep = false;
      if (w.queue.empty()) return;
      batch.swap(w.queue);
      if (w.blocked > 0) w.has_room.notify_all();
    }
    for (auto& item : batch) ingest_.OnMessage(item.topic, item.payload, item.traceparent, item.received_at);
    batch.clear();
  }
}

}  // namespace pp
