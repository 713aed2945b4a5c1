// pp-hub: the authoritative cloud hub.
//
//   pp-hub [--http HOST:PORT] [--db URL] [--max-body BYTES]
//
// Defaults: --http 127.0.0.1:8080, --db sqlite:./var/hub.db. Port 0 picks a
// free port; the first line on stdout says which ("pp-hub listening on ...").
// SIGINT/SIGTERM stop it cleanly: requests in flight finish, every accepted
// write is committed.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "cloud-hub/core/group_committer.h"
#include "cloud-hub/core/hub_service.h"
#include "cloud-hub/http/http_api.h"
#include "cloud-hub/store/store.h"
#include "common/log.h"

namespace {

constexpr const char* kUsage =
    "usage: pp-hub [--http HOST:PORT] [--db sqlite:PATH|postgresql://...] [--max-body BYTES]\n"
    "  --http      where the HTTP API listens (default 127.0.0.1:8080; port 0 = any free)\n"
    "  --db        the store (default sqlite:./var/hub.db)\n"
    "  --max-body  largest request body accepted, in bytes (default 65536)\n";

struct Args {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string db = "sqlite:./var/hub.db";
  size_t max_body = 64 * 1024;
};

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "pp-hub: %s\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) Die("missing value for " + flag);
    std::string v = argv[++i];
    if (flag == "--http") {
      auto colon = v.rfind(':');
      if (colon == std::string::npos || colon == 0) Die("--http wants HOST:PORT, got \"" + v + "\"");
      a.host = v.substr(0, colon);
      try {
        size_t used = 0;
        a.port = std::stoi(v.substr(colon + 1), &used);
        if (used != v.size() - colon - 1 || a.port < 0 || a.port > 65535) throw 0;
      } catch (...) {
        Die("--http port must be 0-65535, got \"" + v.substr(colon + 1) + "\"");
      }
    } else if (flag == "--db") {
      a.db = v;
    } else if (flag == "--max-body") {
      try {
        size_t used = 0;
        long long n = std::stoll(v, &used);
        if (used != v.size() || n < 1024 || n > (64 << 20)) throw 0;
        a.max_body = size_t(n);
      } catch (...) {
        Die("--max-body must be 1024..67108864 bytes, got \"" + v + "\"");
      }
    } else {
      Die("unknown option " + flag);
    }
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = ParseArgs(argc, argv);

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  if (args.db.rfind("sqlite:", 0) == 0) {
    std::filesystem::path p(args.db.substr(7));
    std::error_code ec;
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path(), ec);
  }
  auto store = pp::OpenStore(args.db);
  if (!store.ok()) {
    std::fprintf(stderr, "pp-hub: cannot open store: %s\n", store.error().ToString().c_str());
    return 1;
  }
  auto committer = pp::GroupCommitter::Start(**store, {});
  if (!committer.ok()) {
    std::fprintf(stderr, "pp-hub: %s\n", committer.error().ToString().c_str());
    return 1;
  }
  pp::HubService hub(**store, **committer, pp::SystemClock::Instance());
  pp::HttpOptions http_options;
  http_options.max_body_bytes = args.max_body;
  pp::HttpApi api(hub, http_options);
  auto port = api.Bind(args.host, args.port);
  if (!port.ok()) {
    std::fprintf(stderr, "pp-hub: %s\n", port.error().ToString().c_str());
    return 1;
  }
  std::printf("pp-hub listening on http://%s:%d (store: %s)\n", args.host.c_str(), *port,
              std::string((*store)->Backend()).c_str());
  std::fflush(stdout);
  pp::Log(pp::LogLevel::kInfo, "hub_started",
          {{"http", args.host + ":" + std::to_string(*port)},
           {"store", std::string((*store)->Backend())}});

  std::thread stopper([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    pp::Log(pp::LogLevel::kInfo, "hub_stopping", {{"signal", strsignal(sig)}});
    api.Stop();
  });
  api.Serve();
  // Serve() also returns if listening fails; make sure the stopper ends.
  pthread_kill(stopper.native_handle(), SIGTERM);
  stopper.join();
  committer->reset();  // drains: every accepted write commits before exit
  pp::Log(pp::LogLevel::kInfo, "hub_stopped");
  return 0;
}
