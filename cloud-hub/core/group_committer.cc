#include "cloud-hub/core/group_committer.h"

#include <algorithm>
#include <future>

#include "common/log.h"
#include "common/process_cpu.h"

namespace pp {

bool IsStoreFailure(const Error& e) {
  return e.code == Code::kUnavailable || e.code == Code::kInternal ||
         e.code == Code::kAlreadyExists;
}

Result<std::unique_ptr<GroupCommitter>> GroupCommitter::Start(Store& store, Options options) {
  if (options.writers <= 0) options.writers = store.MaxConcurrentWriters();
  if (options.max_batch <= 0) options.max_batch = 1;
  std::unique_ptr<GroupCommitter> gc(new GroupCommitter(store, options));
  if (options.metrics) {
    gc->batch_seconds_ = &options.metrics->GetHistogram(
        "store_batch_seconds",
        "A group commit's transaction, from BEGIN to the end of COMMIT (its fsync included), retries included.",
        metrics::LatencyBuckets());
    gc->batch_ops_ = &options.metrics->GetHistogram("store_batch_ops", "Operations in one group commit.",
                                                    {1, 2, 5, 10, 20, 50, 100, 200, 512});
  }
  for (int i = 0; i < options.writers; ++i) {
    auto w = std::make_unique<Writer>();
    PP_ASSIGN_OR_RETURN(w->session, store.OpenSession());
    gc->writers_.push_back(std::move(w));
  }
  for (auto& w : gc->writers_) w->thread = std::thread([g = gc.get(), wp = w.get()] {
    g->WriterLoop(*wp);
  });
  return gc;
}

GroupCommitter::~GroupCommitter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& w : writers_) w->thread.join();
}

void GroupCommitter::Submit(Op op, Done done, Lanes lanes) {
  bool wake;
  {
    std::lock_guard lock(mu_);
    queue_.push_back({std::move(op), std::move(done), std::move(lanes)});
    // A busy writer looks at the queue again when its batch is done; a
    // futex wake-up per op would only cost CPU.
    wake = idle_writers_ > 0;
  }
  if (wake) cv_.notify_one();
}

void GroupCommitter::SubmitLazy(Op op, Done done) {
  bool wake;
  {
    std::lock_guard lock(mu_);
    // An idle writer waits without a deadline until there is a lazy op.
    wake = lazy_.empty() && idle_writers_ > 0;
    if (lazy_.empty()) lazy_due_ = std::chrono::steady_clock::now() + options_.lazy_wait;
    lazy_.push_back({std::move(op), std::move(done), {}});
  }
  if (wake) cv_.notify_one();
}

Status GroupCommitter::Run(Op op, Lanes lanes) {
  std::promise<Status> p;
  auto f = p.get_future();
  Submit(std::move(op), [&p](Status s) { p.set_value(std::move(s)); }, std::move(lanes));
  return f.get();
}

void GroupCommitter::SetLanePrologue(LanePrologue prologue) {
  std::lock_guard lock(mu_);
  lane_prologue_ = std::move(prologue);
}

GroupCommitter::Stats GroupCommitter::stats() const {
  return {ops_.load(), batches_.load(), batch_failures_.load()};
}

void GroupCommitter::WriterLoop(Writer& w) {
  NameThisThread("store-writer");
  std::vector<Item> batch;
  std::unordered_set<std::string> lanes;  // this batch's, held in busy_lanes_ until it is done
  while (true) {
    {
      std::unique_lock lock(mu_);
      ++idle_writers_;
      while (true) {
        TakeFromQueue(batch, lanes);
        if (!batch.empty()) break;
        // Nothing we may run: the queue is empty, or its ops wait for lanes
        // another writer holds (its batch's end wakes us).
        if (!lazy_.empty() && (stopping_ || std::chrono::steady_clock::now() >= lazy_due_))
          break;  // the lazy ops waited long enough: alone
        if (stopping_ && queue_.empty() && lazy_.empty()) {
          --idle_writers_;
          return;  // everything is done
        }
        if (lazy_.empty()) {
          cv_.wait(lock);
        } else {
          cv_.wait_until(lock, lazy_due_);
        }
      }
      --idle_writers_;
      // Lazy ops ride along, as many as the batch has room for.
      while (!lazy_.empty() && batch.size() < size_t(options_.max_batch)) {
        batch.push_back(std::move(lazy_.front()));
        lazy_.pop_front();
      }
    }
    RunBatch(w, batch);
    batch.clear();
    if (!lanes.empty()) {
      std::lock_guard lock(mu_);
      for (const auto& lane : lanes) busy_lanes_.erase(lane);
      lanes.clear();
      // Ops left behind for these lanes may run now.
      if (!queue_.empty() && idle_writers_ > 0) cv_.notify_all();
    }
  }
}

void GroupCommitter::TakeFromQueue(std::vector<Item>& batch, std::unordered_set<std::string>& lanes) {
  const size_t max = size_t(options_.max_batch);
  if (writers_.size() == 1) {  // no other writer to keep lanes from
    while (!queue_.empty() && batch.size() < max) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    return;
  }
  std::unordered_set<std::string> left_behind;  // a lane's later ops stay behind its earlier ones
  std::deque<Item> rest;
  // A lane is free for this batch if the batch holds it already, or if no
  // other writer does and no earlier op of it was left behind.
  auto free = [&](const std::string& lane) {
    return lanes.count(lane) || (!busy_lanes_.count(lane) && !left_behind.count(lane));
  };
  while (!queue_.empty() && batch.size() < max) {
    Item& item = queue_.front();
    if (std::all_of(item.lanes.begin(), item.lanes.end(), free)) {
      for (const auto& lane : item.lanes)
        if (lanes.insert(lane).second) busy_lanes_.insert(lane);
      batch.push_back(std::move(item));
    } else {
      left_behind.insert(item.lanes.begin(), item.lanes.end());
      rest.push_back(std::move(item));
    }
    queue_.pop_front();
  }
  // What was left behind goes back in front of what was not looked at.
  while (!rest.empty()) {
    queue_.push_front(std::move(rest.back()));
    rest.pop_back();
  }
}

Status GroupCommitter::EnsureSession(Writer& w) {
  if (w.session) return OkStatus();
  PP_ASSIGN_OR_RETURN(w.session, store_.OpenSession());
  return OkStatus();
}

void GroupCommitter::RunBatch(Writer& w, std::vector<Item>& batch) {
  batches_++;
  ops_ += batch.size();
  const auto began = std::chrono::steady_clock::now();
  std::vector<Status> results;
  results.reserve(batch.size());
  if (batch.size() == 1 || !RunTogether(w, batch, results)) {
    // One op, or something in the batch hit a store error: every op runs
    // in its own transaction, so that only the op at fault fails.
    results.clear();
    for (auto& item : batch) results.push_back(RunAlone(w, item));
  }
  Record(began, batch.size());
  for (size_t i = 0; i < batch.size(); ++i) batch[i].done(std::move(results[i]));
}

bool GroupCommitter::RunTogether(Writer& w, std::vector<Item>& batch, std::vector<Status>& results) {
  bool failed = !EnsureSession(w).ok() || !w.session->Begin(TxnMode::kWrite).ok() ||
                !LockLanes(w, batch).ok();
  for (size_t i = 0; !failed && i < batch.size(); ++i) {
    results.push_back(batch[i].op(*w.session));
    if (!results.back().ok() && IsStoreFailure(results.back().error())) failed = true;
  }
  if (!failed) failed = !w.session->Commit().ok();
  if (failed) {
    batch_failures_++;
    if (w.session) w.session->Rollback();
  }
  return !failed;
}

Status GroupCommitter::LockLanes(Writer& w, const std::vector<Item>& batch) {
  if (store_.MaxConcurrentWriters() < 2) return OkStatus();  // one writer: nothing to wait for
  LanePrologue prologue;
  {
    std::lock_guard lock(mu_);
    prologue = lane_prologue_;
  }
  if (!prologue) return OkStatus();
  std::vector<std::string> lanes;
  for (const auto& item : batch) lanes.insert(lanes.end(), item.lanes.begin(), item.lanes.end());
  if (lanes.empty()) return OkStatus();
  std::sort(lanes.begin(), lanes.end());
  lanes.erase(std::unique(lanes.begin(), lanes.end()), lanes.end());
  return prologue(*w.session, lanes);
}

void GroupCommitter::Record(std::chrono::steady_clock::time_point began, size_t ops) {
  const auto took = std::chrono::steady_clock::now() - began;
  const double seconds = std::chrono::duration<double>(took).count();
  if (batch_seconds_) {
    batch_seconds_->Observe(seconds);
    batch_ops_->Observe(double(ops));
  }
  // A store that stops committing stops every door: it says so.
  constexpr auto kSlowBatch = std::chrono::seconds(1);
  if (took > kSlowBatch) {
    Log(LogLevel::kWarn, "slow_batch", {{"ops", std::to_string(ops)}, {"seconds", std::to_string(seconds)}});
  }
}

Status GroupCommitter::RunAlone(Writer& w, Item& item) {
  constexpr int kAttempts = 5;
  Status last = Error::Unavailable("store unavailable");
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    if (attempt > 0) {
      // Transient (deadlock, busy, reconnect): back off a little, growing.
      std::this_thread::sleep_for(std::chrono::milliseconds(1 << attempt));
    }
    if (auto st = EnsureSession(w); !st.ok()) {
      last = st;
      continue;
    }
    if (auto st = w.session->Begin(TxnMode::kWrite); !st.ok()) {
      last = st;
      w.session.reset();  // a broken connection is replaced on the next try
      continue;
    }
    Status st = item.op(*w.session);
    if (st.ok()) st = w.session->Commit();
    if (st.ok()) return st;
    w.session->Rollback();
    if (!IsStoreFailure(st.error())) return st;  // a domain answer: final
    last = st;
    // An idempotency key taken by a concurrent replica shows up as
    // kAlreadyExists; the retry then finds the stored result.
    if (st.error().code == Code::kInternal) break;
  }
  Log(LogLevel::kError, "store_op_failed", {{"error", last.error().ToString()}});
  return last;
}

}  // namespace pp
