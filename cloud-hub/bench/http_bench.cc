// pp-http-bench: authenticated requests against a running pp-hub, beside the
// same number of requests to its open /healthz, in the same run.
//
//   pp-http-bench --hub http://127.0.0.1:8080 --token JWT [--requests 4000] [--threads 4]
//                 [--path /api/v1/surplus?limit=1]
//
// Each thread keeps one connection and sends its share of the requests one
// after another. Prints, for each of the two: requests/s, latency p50 and
// p99, and the hub's CPU per request (its process_cpu_seconds_total on
// /metrics, read before and after).
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "common/cli.h"
#include "common/metrics.h"
#include "common/process_cpu.h"

namespace {

using Steady = std::chrono::steady_clock;
constexpr const char* kUsage =
    "pp-http-bench --hub URL --token JWT [--requests N] [--threads N] [--path /api/v1/surplus?limit=1]";
[[noreturn]] void Die(const std::string& m) { pp::DieWithUsage("pp-http-bench", kUsage, m, 2); }

double HubCpuSeconds(httplib::Client& hub) {
  auto r = hub.Get("/metrics");
  if (!r || r->status != 200) Die("cannot read the hub's /metrics");
  auto cpu = pp::CpuSecondsFromMetrics(r->body);
  if (!cpu) Die("the hub's /metrics has no process_cpu_seconds_total");
  return *cpu;
}

struct Run {
  double per_second, p50_ms, p99_ms, cpu_us_per_request;
};

Run Measure(const std::string& hub_url, const std::string& token, const std::string& path, int requests,
            int threads) {
  httplib::Client metrics(hub_url);
  const double cpu0 = HubCpuSeconds(metrics);
  std::mutex mu;
  std::vector<double> latency_ms;
  std::atomic<int> failed{0};
  const auto t0 = Steady::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, share = requests / threads + (t < requests % threads)] {
      httplib::Client cli(hub_url);
      cli.set_keep_alive(true);
      cli.set_tcp_nodelay(true);  // as browsers do
      if (!token.empty()) cli.set_bearer_token_auth(token.c_str());
      std::vector<double> mine;
      for (int i = 0; i < share; ++i) {
        auto a = Steady::now();
        auto r = cli.Get(path.c_str());
        if (!r || r->status != 200) failed++;
        mine.push_back(std::chrono::duration<double, std::milli>(Steady::now() - a).count());
      }
      std::lock_guard lock(mu);
      latency_ms.insert(latency_ms.end(), mine.begin(), mine.end());
    });
  for (auto& t : pool) t.join();
  const double seconds = std::chrono::duration<double>(Steady::now() - t0).count();
  const double cpu1 = HubCpuSeconds(metrics);
  if (failed) Die(std::to_string(failed) + " of " + std::to_string(requests) + " requests to " + path + " failed");
  return {requests / seconds, pp::metrics::Percentile(latency_ms, .5), pp::metrics::Percentile(latency_ms, .99),
          (cpu1 - cpu0) * 1e6 / requests};
}

}  // namespace

int main(int argc, char** argv) {
  auto flags = pp::ParseFlags(argc, argv, 1);
  if (!flags.ok()) Die(flags.error().message);
  std::string hub, token, path = "/api/v1/surplus?limit=1";
  int requests = 4000, threads = 4;
  for (const auto& [k, v] : *flags) {
    if (k == "hub") hub = v;
    else if (k == "token") token = v;
    else if (k == "path") path = v;
    else if (k == "requests") requests = std::atoi(v.c_str());
    else if (k == "threads") threads = std::atoi(v.c_str());
    else Die("unknown option --" + k);
  }
  if (hub.empty() || token.empty()) Die("--hub and --token are required");
  if (requests <= 0 || threads <= 0 || threads > 64) Die("--requests must be > 0 and --threads 1..64");
  Run open = Measure(hub, "", "/healthz", requests, threads);
  Run authed = Measure(hub, token, path, requests, threads);
  std::printf(
      "requests=%d threads=%d\n"
      "open /healthz:          %.0f req/s  p50 %.2f ms  p99 %.2f ms  hub CPU %.0f us/request\n"
      "with a bearer token %s: %.0f req/s  p50 %.2f ms  p99 %.2f ms  hub CPU %.0f us/request\n",
      requests, threads, open.per_second, open.p50_ms, open.p99_ms, open.cpu_us_per_request, path.c_str(),
      authed.per_second, authed.p50_ms, authed.p99_ms, authed.cpu_us_per_request);
  return 0;
}
