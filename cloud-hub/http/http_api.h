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
#include <string>

#include "cloud-hub/core/hub_service.h"
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
  std::vector<std::pair<std::string, std::string>> served_;
  const HttpOptions options_;
  const Cascade* cascade_;
  std::unique_ptr<httplib::Server> server_;
};

}  // namespace pp
