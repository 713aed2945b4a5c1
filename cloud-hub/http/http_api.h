// The hub's HTTP door (cpp-httplib 0.11.4). Translates requests into
// HubService calls and Errors into RFC 9457 problem documents; no business
// rule lives here. Routes and bodies are specified in docs/openapi.yaml.
//
// cpp-httplib 0.11.4 has holes this adapter closes itself (see docs/security.md):
// it ignores the body limit for chunked bodies (we cap every body while
// reading it), it lets a client-sent REMOTE_ADDR header shadow the socket's
// address (such headers are refused), and it caps header lines only after
// reading them (we cap header count and total size).
//
// Thread safety: Serve() blocks on the calling thread and handles requests on
// a pool of `threads`; Stop() may be called from any thread.
#pragma once

#include <memory>

#include <nlohmann/json.hpp>
#include <mutex>
#include <unordered_map>
#include <string>

#include "cloud-hub/core/hub_service.h"
#include "cloud-hub/http/auth.h"
#include "common/impact.h"
#include "common/metrics.h"

namespace httplib {
class Server;
struct Request;
struct Response;
}

namespace pp {

class Cascade;

struct HttpOptions {
  size_t max_body_bytes = 64 * 1024;
  size_t max_header_bytes = 16 * 1024;
  size_t max_headers = 64;
  // Concurrent requests; many in flight let group commit batch them.
  int threads = 64;
  ImpactOptions impact;  // GET /api/v1/impact
};

class HttpApi {
 public:
  // `cascade` may be null (no matching engine): nearby lists are then refused.
  HttpApi(HubService& hub, HttpOptions options, const Cascade* cascade = nullptr);
  ~HttpApi();

  // Binds host:port (port 0 picks a free one) and returns the bound port.
  Result<int> Bind(const std::string& host, int port);
  // Serves until Stop().
  void Serve();
  void Stop();

  // Set before Serve(). With a registry: per-route request counts and
  // latencies, the claim latency histogram, and GET /metrics. Readiness:
  // what GET /readyz checks (store and broker reachable).
  void SetMetrics(metrics::Registry* registry);
  void SetReadiness(std::function<Status()> check) { ready_ = std::move(check); }
  // With a verifier, every /api/v1 request needs `Authorization: Bearer JWT`
  // and is held to its role and organisation (see Authorize); providers get
  // `provider_rate_per_min` requests a minute (429 beyond). Without, the API
  // is open (development only; pp-hub logs a warning).
  void SetAuth(const JwtVerifier* verifier, int provider_rate_per_min = 100);
  // Extra state for GET /api/v1/summary (breaker, outbox, ingest...), as
  // JSON; optional.
  void SetStatusProbe(std::function<nlohmann::json()> probe) { status_probe_ = std::move(probe); }

  // "/api/v1/surplus/12/claim" -> "/api/v1/surplus/:id/claim": a bounded
  // label set for metrics.
  static std::string RouteLabel(const std::string& path);

  // What this API serves: (method, path template as in docs/openapi.yaml).
  const std::vector<std::pair<std::string, std::string>>& served() const { return served_; }

 private:
  void Routes();
  // Records a route and returns its cpp-httplib pattern.
  std::string Served(const std::string& method, const std::string& path);
  void Observe(const httplib::Request& req, const httplib::Response& res);

  HubService& hub_;
  metrics::Registry* metrics_ = nullptr;
  metrics::Histogram* claim_latency_ = nullptr;
  std::function<Status()> ready_;
  std::function<nlohmann::json()> status_probe_;
  std::vector<std::pair<std::string, std::string>> served_;
  const JwtVerifier* verifier_ = nullptr;
  int provider_rate_ = 100;
  // Per provider organisation: tokens left and when last refilled.
  std::mutex rate_mu_;
  std::unordered_map<int64_t, std::pair<double, std::chrono::steady_clock::time_point>> buckets_;
  // The coarse check before routing: role against method and route; 0 if allowed.
  int Authorize(const std::string& method, const std::string& route, const std::string& path,
                Error& why);
  // Seconds to wait, or 0 if the provider may go ahead now.
  int TakeProviderToken(int64_t org);
  const HttpOptions options_;
  const Cascade* cascade_;
  std::unique_ptr<httplib::Server> server_;
};

}  // namespace pp
