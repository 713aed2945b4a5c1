// The agent's local web UI and REST API, on 127.0.0.1 only (the UI has no
// login: being on the device is the authority). Nothing is loaded from the
// internet: the pages are compiled into the binary (edge-agent/ui/).
//
//   GET  /                       the UI (kiosk or tablet, by the config's role)
//   GET  /api/state              what the UI shows (Agent::State)
//   POST /api/posts              kiosk: post surplus
//   POST /api/surplus/{id}/claim|accept|decline|pickup|deliver   tablet
//   PUT  /api/vehicle            tablet: position, free capacity, online
//
// Writes answer 202 {"status":"queued","op","seq"} once the op is on disk;
// errors are RFC 9457 problems naming the bad fields. A full queue is 503.
// Browsers elsewhere cannot drive it: writes need Content-Type
// application/json (no simple cross-site form posts) and the Host header
// must be the loopback address (no DNS rebinding).
//
// Thread safety: Listen blocks; Stop may be called from another thread.
#pragma once

#include <memory>
#include <string>

#include "common/error.h"
#include "edge-agent/agent.h"

namespace httplib {
class Server;
}

namespace pp::agent {

class LocalApi {
 public:
  explicit LocalApi(Agent& agent);
  ~LocalApi();
  // Binds; port 0 picks a free one (see port()).
  Status Bind(const std::string& host, int port);
  int port() const { return port_; }
  void Serve();  // blocks until Stop()
  void Stop();

 private:
  Agent& agent_;
  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
};

}  // namespace pp::agent
