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

namespace httplib {
class Server;
}

namespace pp {

class Cascade;

struct HttpOptions {
  size_t max_body_bytes = 64 * 1024;
  size_t max_header_bytes = 16 * 1024;
  size_t max_headers = 64;
  // Concurrent requests; many in flight let group commit batch them.
  int threads = 64;
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

 private:
  void Routes();

  HubService& hub_;
  const HttpOptions options_;
  const Cascade* cascade_;
  std::unique_ptr<httplib::Server> server_;
};

}  // namespace pp
