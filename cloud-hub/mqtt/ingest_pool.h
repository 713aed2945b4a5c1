// Runs DeviceIngest on a few worker threads instead of Paho's single
// callback thread, so decoding and Ed25519 verification of one device's op
// overlap with another's. A device always maps to the same worker: its ops
// are still handled in arrival order. The queues are bounded: when they are
// full, Post() blocks the broker callback, which is the backpressure.
//
// Thread safety: Post() from any thread.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cloud-hub/mqtt/device_ingest.h"

namespace pp {

class IngestPool {
 public:
  IngestPool(DeviceIngest& ingest, int workers, size_t queue_limit = 4096);
  ~IngestPool();  // finishes what is queued
  void Post(std::string topic, std::string payload, std::string traceparent);

 private:
  struct Item {
    std::string topic, payload, traceparent;
    std::chrono::steady_clock::time_point received_at;
  };
  // Wake-ups cost a futex call each, on the same 2 cores the broker and
  // the ingest need: Post() wakes the worker only when it may be asleep,
  // and the worker takes everything queued at once.
  struct Worker {
    std::mutex mu;
    std::condition_variable has_work, has_room;
    std::deque<Item> queue;  // guarded by mu
    bool asleep = false;     // guarded by mu
    int blocked = 0;         // Post() calls waiting for room; guarded by mu
    bool stop = false;       // guarded by mu
    std::thread thread;
  };
  void Run(Worker& w);

  DeviceIngest& ingest_;
  const size_t limit_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace pp
