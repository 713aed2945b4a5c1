// pp-hub: the authoritative cloud hub.
//
//   pp-hub [--http HOST:PORT] [--db URL] [options]   (pp-hub --help lists them)
//
// Port 0 picks a free port; the first line on stdout says which
// ("pp-hub listening on ..."). SIGINT/SIGTERM stop it cleanly: requests in
// flight finish, every accepted write is committed.
#include <cerrno>
#include <csignal>
#include <fstream>
#include <sstream>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <thread>

#include "cloud-hub/core/group_committer.h"
#include "cloud-hub/core/hub_service.h"
#include "cloud-hub/http/http_api.h"
#include "cloud-hub/matching/cascade.h"
#include "cloud-hub/matching/webhook_alerts.h"
#include "cloud-hub/matching/matcher.h"
#include "cloud-hub/mqtt/device_ingest.h"
#include "common/cli.h"
#include "cloud-hub/mqtt/ingest_pool.h"
#include "cloud-hub/mqtt/outbox_relay.h"
#include "sync/mqtt_client.h"
#include "cloud-hub/store/store.h"
#include "common/log.h"
#include "common/process_cpu.h"
#include "common/time_format.h"

namespace {

constexpr const char* kUsage =
    "usage: pp-hub [options]\n"
    "  --http HOST:PORT           HTTP API (default 127.0.0.1:8080; port 0 = any free)\n"
    "  --db URL                   sqlite:PATH (default sqlite:./var/hub.db) or postgresql://...\n"
    "  --max-body BYTES           largest request body (default 65536)\n"
    "  --offer-ack-timeout DUR    how long an NGO has to answer an offer (default 5m)\n"
    "  --dlq-retry-base DUR       dead-letter re-matches after 1, 2, 4 x this (default 1m)\n"
    "  --alert-webhook URL        where operator alerts are POSTed (PagerDuty Events v2 JSON)\n"
    "  --alert-routing-key KEY    routing_key in the alerts (default pp-hub)\n"
    "  --routing-url URL          OSRM-compatible routing service (default: none, haversine)\n"
    "  --routing-deadline DUR     routing answer deadline (default 300ms)\n"
    "  --shards N                 matching shard threads (default 2)\n"
    "  --max-radius-km KM         never offer to a vehicle further than this (default 25)\n"
    "  --jwt-public-key PATH      verify operator and partner tokens (RS256, pp-token); without it\n"
    "                             the HTTP API is open: development only\n"
    "  --jwt-issuer ISS           expected iss (default pahlawan-pangan)\n"
    "  --jwt-audience AUD         expected aud (default pp-hub)\n"
    "  --provider-rate N          requests a minute per provider token (default 100)\n"
    "  --grams-per-meal G         impact: grams of food per meal (default 420, WRAP)\n"
    "  --co2e-per-kg KG           impact: kg CO2e avoided per kg of food rescued (default 2.5)\n"
    "  --mqtt URI                 broker for the device protocol, e.g. tcp://127.0.0.1:1883\n"
    "                             (default: none, HTTP only)\n"
    "  --mqtt-user NAME           broker user (default pp-hub)\n"
    "  --mqtt-password-file PATH  file holding the broker password (or env PP_MQTT_PASSWORD)\n"
    "  --mqtt-client-id ID        this replica's MQTT client id (default pp-hub)\n"
    "  --mqtt-session-expiry DUR  how long the broker keeps queueing devices' ops for this hub\n"
    "                             while it is away (default 168h); 0: not at all — with several\n"
    "                             replicas, else a dead one keeps taking its share of the ops\n"
    "  --ingest-workers N         threads verifying and applying device ops (default 2)\n"
    "DUR is a number and a unit: 250ms, 30s, 5m, 2h.\n";

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "pp-hub: %s\n%s", msg.c_str(), kUsage);
  std::exit(2);
}

struct Args {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string db = "sqlite:./var/hub.db";
  size_t max_body = 64 * 1024;
  pp::CascadePolicy policy;
  std::string alert_webhook, alert_routing_key = "pp-hub", routing_url;
  pp::Duration routing_deadline{300};
  pp::MatchOptions match;
  std::string mqtt_uri, mqtt_user = "pp-hub", mqtt_password, mqtt_client_id = "pp-hub";
  int mqtt_session_expiry_s = 7 * 24 * 3600;
  int ingest_workers = 2;
  pp::ImpactOptions impact;
  std::string jwt_public_key;
  pp::JwtOptions jwt;
  int provider_rate = 100;
};

long long Number(const std::string& flag, const std::string& v, long long lo, long long hi) {
  try {
    size_t used = 0;
    long long n = std::stoll(v, &used);
    if (used == v.size() && n >= lo && n <= hi) return n;
  } catch (...) {
  }
  Die(flag + " must be a whole number in " + std::to_string(lo) + ".." + std::to_string(hi) +
      ", got \"" + v + "\"");
}

pp::Duration Dur(const std::string& flag, const std::string& v) {
  auto d = pp::ParseDuration(v);
  if (!d) Die(flag + " wants a duration like 300ms, 30s, 5m, got \"" + v + "\"");
  return *d;
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
      a.port = int(Number("--http port", v.substr(colon + 1), 0, 65535));
    } else if (flag == "--db") {
      a.db = v;
    } else if (flag == "--max-body") {
      a.max_body = size_t(Number(flag, v, 1024, 64 << 20));
    } else if (flag == "--offer-ack-timeout") {
      a.policy.offer_ack_timeout = Dur(flag, v);
    } else if (flag == "--dlq-retry-base") {
      a.policy.dlq_retry_base = Dur(flag, v);
    } else if (flag == "--alert-webhook") {
      if (v.rfind("http://", 0) != 0 && v.rfind("https://", 0) != 0)
        Die("--alert-webhook wants an http:// or https:// URL, got \"" + v + "\"");
      a.alert_webhook = v;
    } else if (flag == "--alert-routing-key") {
      a.alert_routing_key = v;
    } else if (flag == "--routing-url") {
      if (v.rfind("http://", 0) != 0 && v.rfind("https://", 0) != 0)
        Die("--routing-url wants an http:// or https:// URL, got \"" + v + "\"");
      a.routing_url = v;
    } else if (flag == "--routing-deadline") {
      a.routing_deadline = Dur(flag, v);
    } else if (flag == "--shards") {
      a.match.shards = int(Number(flag, v, 1, 64));
    } else if (flag == "--jwt-public-key") {
      a.jwt_public_key = v;
    } else if (flag == "--jwt-issuer") {
      a.jwt.issuer = v;
    } else if (flag == "--jwt-audience") {
      a.jwt.audience = v;
    } else if (flag == "--provider-rate") {
      a.provider_rate = int(Number(flag, v, 1, 100000));
    } else if (flag == "--grams-per-meal") {
      a.impact.grams_per_meal = double(Number(flag, v, 50, 5000));
    } else if (flag == "--co2e-per-kg") {
      char* end = nullptr;
      double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(x >= 0 && x <= 100))
        Die(flag + " must be a number in 0..100, got \"" + v + "\"");
      a.impact.co2e_kg_per_kg = x;
    } else if (flag == "--max-radius-km") {
      a.match.max_radius_km = double(Number(flag, v, 1, 500));
    } else if (flag == "--mqtt") {
      if (v.rfind("tcp://", 0) != 0 && v.rfind("mqtt://", 0) != 0)
        Die("--mqtt wants tcp://HOST:PORT, got \"" + v + "\"");
      a.mqtt_uri = v;
    } else if (flag == "--mqtt-user") {
      a.mqtt_user = v;
    } else if (flag == "--mqtt-password-file") {
      std::FILE* f = std::fopen(v.c_str(), "r");
      if (!f) Die("cannot read --mqtt-password-file " + v + ": " + std::strerror(errno));
      char buf[256] = {};
      size_t n = std::fread(buf, 1, sizeof buf - 1, f);
      std::fclose(f);
      a.mqtt_password.assign(buf, n);
      while (!a.mqtt_password.empty() && (a.mqtt_password.back() == '\n' || a.mqtt_password.back() == '\r'))
        a.mqtt_password.pop_back();
    } else if (flag == "--mqtt-client-id") {
      a.mqtt_client_id = v;
    } else if (flag == "--mqtt-session-expiry") {
      // MQTT's Session Expiry Interval: whole seconds, 0 for none.
      if (v == "0" || v == "0s") {
        a.mqtt_session_expiry_s = 0;
      } else {
        const auto d = Dur(flag, v);
        if (d < std::chrono::seconds(1) || d > std::chrono::hours(24 * 30))
          Die(flag + " must be 0 or from 1s to 720h, got \"" + v + "\"");
        a.mqtt_session_expiry_s = int(std::chrono::duration_cast<std::chrono::seconds>(d).count());
      }
    } else if (flag == "--ingest-workers") {
      a.ingest_workers = int(Number(flag, v, 1, 32));
    } else {
      Die("unknown option " + flag);
    }
  }
  if (a.mqtt_password.empty())
    if (const char* p = std::getenv("PP_MQTT_PASSWORD")) a.mqtt_password = p;
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  Args args = ParseArgs(argc, argv);

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t stop_signals = pp::BlockStopSignals();

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
  pp::metrics::Registry metrics;
  auto committer = pp::GroupCommitter::Start(**store, {.metrics = &metrics});
  if (!committer.ok()) {
    std::fprintf(stderr, "pp-hub: %s\n", committer.error().ToString().c_str());
    return 1;
  }
  const pp::Clock& clock = pp::SystemClock::Instance();
  pp::HubService hub(**store, **committer, clock);
  hub.SetMetrics(&metrics);
  // The Prometheus convention's process CPU: what the hub costs per post or
  // claim, beside the rates (pp-sim divides it by the posts of a rush).
  metrics.AddCounterCallback("process_cpu_seconds_total", "User and system CPU time of the hub process.", {},
                             [] { return pp::SelfCpuSeconds(); });

  std::unique_ptr<pp::TravelTimeSource> routing;
  if (!args.routing_url.empty())
    routing = std::make_unique<pp::OsrmClient>(args.routing_url, args.routing_deadline);
  pp::TravelTimes travel(clock, pp::TravelModel{}, std::move(routing), {});
  pp::Matcher matcher(clock, args.match, travel);
  std::unique_ptr<pp::WebhookAlertSink> alerts;
  if (!args.alert_webhook.empty()) {
    alerts = std::make_unique<pp::WebhookAlertSink>(args.alert_webhook, args.alert_routing_key);
    // An alert the pager never got is itself worth an alert (OperatorAlertsFailing),
    // through Prometheus, the other way to a person.
    const char* help = "Operator alerts (a post's DLQ retries exhausted) by what became of them.";
    using Stats = pp::WebhookAlertSink::Stats;
    for (auto [result, field] : {std::pair{"sent", &Stats::sent}, std::pair{"failed", &Stats::failed},
                                 std::pair{"dropped", &Stats::dropped}})
      metrics.AddCounterCallback("operator_alerts_total", help, {{"result", result}},
                                 [sink = alerts.get(), field] { return double(sink->stats().*field); });
  }
  pp::Cascade cascade(hub, matcher, clock, args.policy, alerts.get());
  hub.SetListener(&cascade);
  if (auto st = cascade.Start(); !st.ok()) {
    std::fprintf(stderr, "pp-hub: cannot start matching: %s\n", st.error().ToString().c_str());
    return 1;
  }

  // The device door: signed ops in through the broker, outbox out.
  std::unique_ptr<pp::DeviceIngest> ingest;
  std::unique_ptr<pp::IngestPool> pool;
  // Two connections to the broker: `mqtt` reads the devices' ops, `mqtt_out`
  // writes everything down (the relay's QoS 1 publishes, query answers).
  // Why apart: Paho C queues a QoS 1 PUBACK instead of writing it whenever
  // its socket still has bytes to send, so on one connection the hub's
  // acknowledgements of ops wait behind the relay's publishes, and the
  // broker, which sends a client at most 200 unacknowledged messages,
  // slows what it gives the hub to what the hub manages to write. Apart,
  // reading never waits on writing. In the rushes measured the difference
  // was within the noise (docs/benchmarks.md, "Session 19").
  std::unique_ptr<pp::sync::MqttClient> mqtt, mqtt_out;
  std::unique_ptr<pp::OutboxRelay> relay;
  std::unique_ptr<pp::RelayLeader> relay_leader;
  if (!args.mqtt_uri.empty()) {
    ingest = std::make_unique<pp::DeviceIngest>(hub);
    ingest->SetMetrics(&metrics);
    ingest->SetNearbyQuery(
        [&cascade](const pp::GeoPoint& at, double km) { return cascade.NearbyPosts(at, km, 50); });
    pool = std::make_unique<pp::IngestPool>(*ingest, args.ingest_workers);
    pp::sync::MqttClient::Options mo;
    mo.uri = args.mqtt_uri;
    mo.client_id = args.mqtt_client_id;
    mo.username = args.mqtt_user;
    mo.password = args.mqtt_password;
    mo.subscriptions = {pp::sync::kHubSubscription};
    // A session the broker keeps queues devices' ops while this hub is
    // away. But mosquitto goes on handing an away member of a shared
    // subscription its share (eclipse/mosquitto#1747): with several
    // replicas, a dead one's session would hold 1/N of the ops until it came
    // back, so replicas run with none (docs/operations.md, "Several hubs").
    mo.session_expiry_s = args.mqtt_session_expiry_s;
    mo.clean_start = args.mqtt_session_expiry_s == 0;
    mqtt = std::make_unique<pp::sync::MqttClient>(
        mo, [&pool](const std::string& topic, const std::string& payload, const std::string& tp) {
          pool->Post(topic, payload, tp);
        });
    pp::sync::MqttClient::Options out = mo;
    out.client_id = args.mqtt_client_id + "-out";
    out.subscriptions.clear();
    // Nothing is ever queued for it: a session that ends with the connection.
    out.session_expiry_s = 0;
    out.clean_start = true;
    mqtt_out = std::make_unique<pp::sync::MqttClient>(
        out, [](const std::string&, const std::string&, const std::string&) {});
    ingest->SetQueryReply([m = mqtt_out.get()](const std::string& device, const std::string& message,
                                           const std::string& tp) {
      // QoS 0: a lost answer is asked for again, and the relay's QoS 1
      // window of in-flight publishes stays its own.
      if (auto ack = m->Publish(pp::sync::DownTopic(device), message, tp, 0); !ack.ok())
        pp::Log(pp::LogLevel::kWarn, "query_answer_not_sent", {{"device", device}, {"error", ack.error().ToString()}});
    });
    // Made before the first message can arrive: pings name what it sent.
    relay = std::make_unique<pp::OutboxRelay>(hub, *mqtt_out);
    ingest->SetLastSent([r = relay.get()](const std::string& device) { return r->LastSentTo(device); });
    // The writer first: the first op read may be answered at once.
    for (auto* client : {mqtt_out.get(), mqtt.get()}) {
      if (auto st = client->Connect(std::chrono::seconds(10)); !st.ok()) {
        std::fprintf(stderr, "pp-hub: %s\n", st.error().ToString().c_str());
        return 1;
      }
    }
    relay->SetMetrics(&metrics);
    hub.SetCommitHook([r = relay.get()] { r->Notify(); });
    // One replica's relay publishes; the others wait to take over.
    relay_leader = std::make_unique<pp::RelayLeader>(**store, *relay);
    relay_leader->Start();
  }

  pp::HttpOptions http_options;
  http_options.max_body_bytes = args.max_body;
  http_options.impact = args.impact;
  pp::HttpApi api(hub, http_options, &cascade);
  api.SetMetrics(&metrics);
  std::unique_ptr<pp::JwtVerifier> verifier;
  if (!args.jwt_public_key.empty()) {
    auto pem = pp::ReadFirstLine(args.jwt_public_key);  // presence check; the whole file below
    std::ifstream in(args.jwt_public_key);
    std::stringstream text;
    text << in.rdbuf();
    if (!pem || text.str().find("PUBLIC KEY") == std::string::npos) {
      std::fprintf(stderr, "pp-hub: --jwt-public-key %s is not a PEM public key\n", args.jwt_public_key.c_str());
      return 2;
    }
    verifier = std::make_unique<pp::JwtVerifier>(text.str(), args.jwt);
    api.SetAuth(verifier.get(), args.provider_rate);
  } else {
    pp::Log(pp::LogLevel::kWarn, "auth_disabled",
            {{"why", "no --jwt-public-key: the HTTP API trusts every caller (development only)"}});
  }
  // Read at scrape time: state the matcher, the relay and the store own.
  metrics.AddGaugeCallback("matching_engine_saturation_ratio",
                           "Share of the matching shards' time spent busy, with their backlog (1 = saturated).",
                           {}, [&matcher] { return matcher.SaturationRatio(); });
  metrics.AddGaugeCallback("routing_circuit_open", "1 while the routing circuit breaker is open.", {},
                           [&travel] {
                             return travel.breaker_state() == pp::CircuitBreaker::State::kOpen ? 1.0 : 0.0;
                           });
  metrics.AddGaugeCallback("outbox_relay_leading",
                           "1 while this replica's outbox relay publishes (it holds the relay lease).", {},
                           [&relay_leader] { return relay_leader && relay_leader->leading() ? 1.0 : 0.0; });
  metrics.AddGaugeCallback("outbox_lag_seconds",
                           "Age of the oldest outbox event not yet published (0 when none).", {},
                           [&hub, &clock, &mqtt] {
                             if (!mqtt) return 0.0;  // no devices, nothing to relay
                             auto page = hub.ListUnsentOutbox(1);
                             if (!page.ok() || page->empty()) return 0.0;
                             return std::chrono::duration<double>(clock.Now() - page->front().created_at).count();
                           });
  metrics.AddGaugeCallback("dlq_posts", "Posts waiting in the dead-letter queue.", {}, [&hub] {
    auto n = hub.CountSurplusIn(pp::SurplusStatus::kDeadLettered);
    return n.ok() ? double(*n) : 0.0;
  });
  metrics.AddGaugeCallback("pickups_overdue",
                           "Claimed posts whose pickup window has closed with nobody collecting.", {},
                           [&hub, &clock] {
                             auto n = hub.CountOverduePickups(clock.Now());
                             return n.ok() ? double(*n) : 0.0;
                           });
  auto broker_up = [&mqtt, &mqtt_out] { return mqtt->connected() && mqtt_out->connected(); };
  api.SetStatusProbe([&matcher, &travel, &hub, &clock, &ingest, &mqtt, broker_up] {
    nlohmann::json j{{"saturation", matcher.SaturationRatio()},
                     {"routing_breaker", travel.breaker_state() == pp::CircuitBreaker::State::kOpen       ? "open"
                                         : travel.breaker_state() == pp::CircuitBreaker::State::kHalfOpen ? "half_open"
                                                                                                            : "closed"},
                     {"broker", mqtt ? (broker_up() ? "connected" : "disconnected") : "not configured"}};
    auto page = hub.ListUnsentOutbox(1);
    j["outbox_lag_seconds"] = mqtt && page.ok() && !page->empty()
                                  ? std::chrono::duration<double>(clock.Now() - page->front().created_at).count()
                                  : 0.0;
    if (ingest) {
      auto st = ingest->stats();
      j["mqtt"] = {{"received", st.received}, {"accepted", st.accepted}, {"refused", st.refused}};
    }
    return j;
  });
  api.SetReadiness([&hub, &mqtt, broker_up]() -> pp::Status {
    if (auto r = hub.ListUnsentOutbox(1); !r.ok()) return pp::Error::Unavailable("store: " + r.error().message);
    if (mqtt && !broker_up()) return pp::Error::Unavailable("broker not connected");
    return pp::OkStatus();
  });
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
           {"store", std::string((*store)->Backend())},
           {"routing", args.routing_url.empty() ? "haversine" : args.routing_url}});

  // Offer deadlines, DLQ retries and expiry, once a second.
  std::atomic<bool> stopping{false};
  std::thread ticker([&] {
    while (!stopping) {
      if (auto st = cascade.Tick(); !st.ok())
        pp::Log(pp::LogLevel::kError, "tick_failed", {{"error", st.error().ToString()}});
      for (int i = 0; i < 10 && !stopping; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
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
  stopping = true;
  ticker.join();
  cascade.WaitIdle();
  matcher.WaitIdle();
  cascade.WaitIdle();
  hub.SetListener(nullptr);
  if (mqtt) mqtt->Disconnect();  // stop taking ops; what was taken still commits
  pool.reset();                  // finishes the ops already queued
  relay_leader.reset();  // stops the relay if this replica ran it
  if (mqtt_out) mqtt_out->Disconnect();
  hub.SetCommitHook(nullptr);
  committer->reset();  // drains: every accepted write commits before exit
  pp::Log(pp::LogLevel::kInfo, "hub_stopped");
  return 0;
}
