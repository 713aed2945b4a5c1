// pp-store-bench: durable posts/s and claims/s through the hub core
// (validation-free HubService -> GroupCommitter -> store), each operation
// acknowledged only after the transaction holding it has committed.
//
//   pp-store-bench --db sqlite:PATH|postgresql://... [--posts N] [--window W] [--batch B]
//                  [--rate R]
//
// Prints one line per phase. `window` is the number of operations in flight
// (clients waiting for their acknowledgement); group commit batches them.
// With `--rate`, operations arrive at R a second, as devices' would, instead
// of as fast as acknowledgements free the window: that measures what an op
// waits at a given load (its latency counts from when it was due, so a
// stalled store shows in full, not hidden by the ops it kept from starting).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <semaphore>
#include <string>
#include <thread>
#include <vector>

#include "cloud-hub/core/hub_service.h"
#include "common/metrics.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string db;
  int posts = 50000;
  int window = 2048;
  int batch = 1024;
  int rate = 0;  // ops a second; 0: as fast as the window allows
};

[[noreturn]] void Usage(const std::string& msg) {
  std::fprintf(stderr,
               "pp-store-bench: %s\nusage: pp-store-bench --db URL [--posts N] [--window W] "
               "[--batch B] [--rate R]\n",
               msg.c_str());
  std::exit(2);
}

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string f = argv[i];
    if (i + 1 >= argc) Usage("missing value for " + f);
    std::string v = argv[++i];
    auto num = [&](int lo, int hi) {
      try {
        int n = std::stoi(v);
        if (n < lo || n > hi) throw 0;
        return n;
      } catch (...) {
        Usage(f + " must be " + std::to_string(lo) + ".." + std::to_string(hi));
      }
    };
    if (f == "--db") a.db = v;
    else if (f == "--posts") a.posts = num(1, 10'000'000);
    else if (f == "--window") a.window = num(1, 100'000);
    else if (f == "--batch") a.batch = num(1, 100'000);
    else if (f == "--rate") a.rate = num(1, 1'000'000);
    else Usage("unknown option " + f);
  }
  if (a.db.empty()) Usage("--db is required");
  return a;
}

struct Phase {
  double seconds = 0;
  int ok = 0, failed = 0;
  std::vector<double> latency_ms;
};

// Runs `n` asynchronous operations with at most `window` in flight; with
// `rate` > 0, op i is due at i / rate seconds and its latency counts from then.
template <typename Start>
Phase RunPhase(int n, int window, int rate, Start start) {
  Phase ph;
  ph.latency_ms.resize(n);
  std::counting_semaphore<> slots(window);
  std::atomic<int> ok{0}, failed{0};
  auto t0 = Clock::now();
  std::atomic<int> done{0};
  std::mutex mu;
  std::condition_variable cv;
  for (int i = 0; i < n; ++i) {
    auto issued = Clock::now();
    if (rate > 0) {
      issued = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(double(i) / rate));
      std::this_thread::sleep_until(issued);
    }
    slots.acquire();
    start(i, [&, i, issued](pp::Result<pp::Reply> r) {
      ph.latency_ms[i] = std::chrono::duration<double, std::milli>(Clock::now() - issued).count();
      (r.ok() ? ok : failed)++;
      if (!r.ok() && failed < 5) std::fprintf(stderr, "op failed: %s\n", r.error().ToString().c_str());
      slots.release();
      if (++done == n) {
        std::lock_guard lock(mu);
        cv.notify_all();
      }
    });
  }
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done == n; });
  }
  ph.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  ph.ok = ok;
  ph.failed = failed;
  return ph;
}

using pp::metrics::Percentile;

void Report(const char* what, const std::string& backend, const Phase& ph,
            const pp::GroupCommitter::Stats& before, const pp::GroupCommitter::Stats& after) {
  double batches = double(after.batches - before.batches);
  std::printf(
      "%-6s backend=%-10s ops=%d failed=%d seconds=%.3f rate=%.0f/s avg_batch=%.1f "
      "ack_p50=%.1fms ack_p99=%.1fms ack_p999=%.1fms ack_max=%.1fms\n",
      what, backend.c_str(), ph.ok, ph.failed, ph.seconds, ph.ok / ph.seconds,
      batches > 0 ? double(after.ops - before.ops) / batches : 0.0,
      Percentile(ph.latency_ms, 0.5), Percentile(ph.latency_ms, 0.99),
      Percentile(ph.latency_ms, 0.999), Percentile(ph.latency_ms, 1.0));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Args args = Parse(argc, argv);
  if (args.db.rfind("sqlite:", 0) == 0) {
    std::filesystem::path p(args.db.substr(7));
    std::filesystem::remove(p);
    std::filesystem::remove(p.string() + "-wal");
    std::filesystem::remove(p.string() + "-shm");
  }
  auto store = pp::OpenStore(args.db);
  if (!store.ok()) Usage(store.error().ToString());
  auto committer = pp::GroupCommitter::Start(**store, {.max_batch = args.batch, .writers = 0});
  if (!committer.ok()) Usage(committer.error().ToString());
  pp::HubService hub(**store, **committer, pp::SystemClock::Instance());
  std::string backend((*store)->Backend());

  auto org = [&](pp::OrgKind k) {
    auto r = hub.CreateOrganization({k, "bench", {51.5, -0.1}}, "");
    if (!r.ok()) Usage(r.error().ToString());
    return nlohmann::json::parse(r->json)["id"].get<int64_t>();
  };
  int64_t provider = org(pp::OrgKind::kProvider), ngo = org(pp::OrgKind::kNgo);

  pp::SurplusDraft draft;
  draft.provider_id = provider;
  draft.category = "prepared_meals";
  draft.description = "benchmark meals";
  draft.quantity_kg = 3.2;
  draft.portions = 8;
  draft.allergens = {"milk"};
  draft.storage = pp::Storage::kChilled;
  draft.best_before = pp::SystemClock::Instance().Now() + std::chrono::hours(6);

  std::vector<int64_t> ids(args.posts);
  auto s0 = (*committer)->stats();
  Phase posts = RunPhase(args.posts, args.window, args.rate, [&](int i, pp::HubService::Callback cb) {
    hub.PostSurplus(draft, "post-" + std::to_string(i), [&ids, i, cb](pp::Result<pp::Reply> r) {
      if (r.ok()) ids[i] = nlohmann::json::parse(r->json)["id"].get<int64_t>();
      cb(std::move(r));
    });
  });
  auto s1 = (*committer)->stats();
  Report("posts", backend, posts, s0, s1);

  Phase claims = RunPhase(args.posts, args.window, args.rate, [&](int i, pp::HubService::Callback cb) {
    hub.Claim(ids[i], {ngo, 1}, "claim-" + std::to_string(i), cb);
  });
  auto s2 = (*committer)->stats();
  Report("claims", backend, claims, s1, s2);
  return posts.failed + claims.failed == 0 ? 0 : 1;
}
