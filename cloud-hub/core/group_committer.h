// Group commit: many write operations share one transaction, and each is
// acknowledged only after that transaction has committed. One commit (one
// fsync under SQLite synchronous=FULL, one WAL flush in PostgreSQL) then pays
// for hundreds of operations instead of one.
//
// An Op runs inside an open write transaction and must keep this contract:
//   - it returns Ok having made its writes, or
//   - it returns a domain error (invalid, not found, conflict, precondition)
//     having made NO writes — so it checks everything before it writes — or
//   - it returns the store's own error (kUnavailable, kInternal,
//     kAlreadyExists) untouched.
// On a store error the whole batch is rolled back and every op in it is run
// again alone, so one poisoned op cannot fail its neighbours. Ops may
// therefore run more than once before they commit; they must only touch the
// session and state they own.
//
// Some writes need not be durable soon, only eventually: the relay's "sent"
// marks (a mark lost in a crash means a message sent again, which devices
// drop by id). SubmitLazy() queues such an op to ride in the next batch of
// other ops, or alone once it has waited `lazy_wait`: at light load each
// mark had a transaction and an fsync of its own, a third of the hub's
// commits, in the way of the claims committing beside them.
//
// Ops may name lanes: the rows they will update (the MQTT door passes the
// device's; a decision on a post, the post's). Ops of one lane commit in
// the order submitted and never sit in two writers' batches at once; an op
// of several lanes waits until each is free. With one writer (SQLite) that
// is always so; PostgreSQL runs four, and two batches each updating the
// same two devices' rows in opposite orders deadlocked (a second lost to
// deadlock_timeout each time), and a device's later op could commit before
// an earlier one in a batch that started sooner.
//
// Lanes keep one hub's writers apart, not several hubs': on PostgreSQL two
// replicas' batches can still hold the same rows. A lane prologue (set by
// HubService) runs first in each batch's transaction with the batch's
// lanes sorted, and locks their rows in one order: batches that share rows
// then wait for each other instead of deadlocking.
//
// Thread safety: Submit(), SubmitLazy() and Run() may be called from any
// thread. `done` runs on a writer thread; it must not block for long.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "cloud-hub/store/store.h"
#include "common/metrics.h"

namespace pp {

class GroupCommitter {
 public:
  using Op = std::function<Status(StoreSession&)>;
  using Done = std::function<void(Status)>;

  struct Options {
    int max_batch = 512;  // ops per transaction
    int writers = 0;      // 0: the store's MaxConcurrentWriters()
    // Where to record each batch's transaction time and size
    // (store_batch_seconds, store_batch_ops); none if null.
    metrics::Registry* metrics = nullptr;
    // How long a lazy op waits for company before it commits alone.
    std::chrono::milliseconds lazy_wait{100};
  };

  struct Stats {
    uint64_t ops = 0;
    uint64_t batches = 0;
    uint64_t batch_failures = 0;  // batches rolled back and split
  };

  // Opens one session per writer thread and starts them.
  static Result<std::unique_ptr<GroupCommitter>> Start(Store& store, Options options);
  // Finishes every op already submitted, then stops the writers.
  ~GroupCommitter();

  // `lanes`: see above; none for an op that updates no shared row.
  using Lanes = std::vector<std::string>;
  void Submit(Op op, Done done, Lanes lanes = {});
  // Committed with the next ops submitted, or alone after lazy_wait.
  void SubmitLazy(Op op, Done done);
  // Submit and wait for the commit.
  Status Run(Op op, Lanes lanes = {});
  // Runs at the start of each batch's transaction, on a store that allows
  // several writers (in this process or others), with the batch's lanes
  // sorted and without repeats; none if the batch has no lane. Its error
  // fails the batch like an op's store error. Set it before the first
  // Submit.
  using LanePrologue = std::function<Status(StoreSession&, const std::vector<std::string>& lanes)>;
  void SetLanePrologue(LanePrologue prologue);

  Stats stats() const;

 private:
  struct Item {
    Op op;
    Done done;
    Lanes lanes;
  };
  struct Writer {
    std::unique_ptr<StoreSession> session;
    std::thread thread;
  };

  GroupCommitter(Store& store, Options options) : store_(store), options_(options) {}
  void WriterLoop(Writer& w);
  // Moves into `batch` the oldest queued ops, up to max_batch, leaving
  // behind those with a lane another writer's batch holds (and every later
  // op of each of their lanes); the lanes taken go into busy_lanes_ and
  // `lanes` (empty on entry). mu_ held.
  void TakeFromQueue(std::vector<Item>& batch, std::unordered_set<std::string>& lanes);
  void RunBatch(Writer& w, std::vector<Item>& batch);
  // Runs the batch in one transaction; false (rolled back) if a store
  // error hit it. `results` gets one status an op run.
  bool RunTogether(Writer& w, std::vector<Item>& batch, std::vector<Status>& results);
  // The lane prologue, if set and the batch has lanes.
  Status LockLanes(Writer& w, const std::vector<Item>& batch);
  // Runs one op in its own transaction, retrying transient store errors.
  Status RunAlone(Writer& w, Item& item);
  // Records a batch's transaction time (BEGIN to the end of COMMIT, retries
  // included), before its ops are acknowledged.
  void Record(std::chrono::steady_clock::time_point began, size_t ops);
  Status EnsureSession(Writer& w);

  // Constant after construction.
  Store& store_;
  const Options options_;
  std::vector<std::unique_ptr<Writer>> writers_;

  // State below is protected by mu_.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::deque<Item> lazy_;                          // SubmitLazy's, oldest first
  std::unordered_set<std::string> busy_lanes_;     // lanes in batches being run (several writers only)
  std::chrono::steady_clock::time_point lazy_due_;  // when the oldest of lazy_ goes alone
  LanePrologue lane_prologue_;
  int idle_writers_ = 0;  // waiting on cv_: Submit() wakes one only if any
  bool stopping_ = false;

  std::atomic<uint64_t> ops_{0}, batches_{0}, batch_failures_{0};
  metrics::Histogram* batch_seconds_ = nullptr;  // set before the writers start
  metrics::Histogram* batch_ops_ = nullptr;
};

// Store errors (as opposed to domain answers) make the batch roll back.
bool IsStoreFailure(const Error& e);

}  // namespace pp
