// pp-agent: the kiosk and tablet daemon, and a CLI that scripts it.
//
//   pp-agent run --config FILE [--clock-skew [-]DURATION]
//   pp-agent check-config FILE
//   pp-agent status   --config FILE
//   pp-agent post     --config FILE --json '{"category":...,"best_before_in_min":240,...}'
//   pp-agent claim    --config FILE --surplus N --version V
//   pp-agent accept|decline|release|deliver --config FILE --surplus N
//   pp-agent pickup   --config FILE --surplus N --code CODE --kg KG
//   pp-agent vehicle  --config FILE --json '{"lat":...,"lon":...,"free_kg":...}'
//
// `run` prints "pp-agent DEVICE (ROLE): UI on http://127.0.0.1:PORT" once it
// serves, and stops cleanly on SIGINT/SIGTERM. The other commands talk to a
// running agent's local API (the daemon owns the database), print its JSON
// answer, and exit 0 on success, 1 when the agent refused, 2 on bad usage.
#include <httplib.h>

#include <csignal>
#include <cstdio>
#include <map>
#include <set>
#include <thread>

#include "common/cli.h"
#include "common/log.h"
#include "common/time_format.h"
#include "common/validation.h"
#include "edge-agent/agent.h"
#include "edge-agent/mqtt_uplink.h"
#include "edge-agent/local_api.h"
#include "firmware-cfg/device_config.h"
#include "sync/mqtt_client.h"

namespace {

using nlohmann::json;

[[noreturn]] void Usage(const std::string& why) {
  std::fprintf(stderr,
               "pp-agent: %s\n"
               "usage: pp-agent run --config FILE [--clock-skew [-]DURATION]\n"
               "       pp-agent check-config FILE\n"
               "       pp-agent status --config FILE\n"
               "       pp-agent post --config FILE --json BODY\n"
               "       pp-agent claim --config FILE --surplus N --version V\n"
               "       pp-agent accept|decline|release|deliver --config FILE --surplus N\n"
               "       pp-agent pickup --config FILE --surplus N --code CODE --kg KG\n"
               "       pp-agent vehicle --config FILE --json BODY\n",
               why.c_str());
  std::exit(2);
}

std::map<std::string, std::string> Flags(int argc, char** argv, int from) {
  auto flags = pp::ParseFlags(argc, argv, from);
  if (!flags.ok()) Usage(flags.error().message);
  return std::move(*flags);
}

pp::DeviceConfig LoadOrDie(const std::string& path) {
  auto cfg = pp::LoadDeviceConfig(path);
  if (!cfg.ok()) {
    std::fprintf(stderr, "pp-agent: %s\n", cfg.error().message.c_str());
    for (const auto& f : cfg.error().fields)
      std::fprintf(stderr, "  %s: %s\n", f.field.c_str(), f.reason.c_str());
    std::exit(2);
  }
  return *cfg;
}

std::string ReadLine(const std::string& path) { return pp::ReadFirstLine(path).value_or(""); }

int Run(const std::map<std::string, std::string>& flags) {
  if (!flags.count("config")) Usage("run needs --config FILE");
  pp::DeviceConfig cfg = LoadOrDie(flags.at("config"));
  pp::Duration skew{0};
  if (flags.count("clock-skew")) {
    std::string v = flags.at("clock-skew");
    bool negative = !v.empty() && v[0] == '-';
    auto d = pp::ParseDuration(negative ? v.substr(1) : v);
    if (!d) Usage("--clock-skew must be a duration like 3h, 90m or -5h");
    skew = negative ? -*d : *d;
  }
  auto key = pp::sync::SecretKeyFromBase64(ReadLine(cfg.key_file));
  if (!key.ok()) {
    std::fprintf(stderr, "pp-agent: key_file %s: %s\n", cfg.key_file.c_str(), key.error().message.c_str());
    return 2;
  }
  auto store = pp::agent::AgentStore::Open(cfg.database);
  if (!store.ok()) {
    std::fprintf(stderr, "pp-agent: %s\n", store.error().ToString().c_str());
    return 1;
  }

  sigset_t stop_signals = pp::BlockStopSignals();

  pp::OffsetClock clock(pp::SystemClock::Instance(), skew);
  pp::agent::Agent* agent_ptr = nullptr;
  pp::sync::MqttClient::Options mo;
  mo.uri = cfg.broker_url;
  mo.client_id = cfg.device_id;
  mo.username = cfg.broker_user;
  mo.password = ReadLine(cfg.broker_password_file);
  mo.subscriptions = {pp::sync::DownTopic(cfg.device_id)};
  mo.clean_start = false;  // the broker keeps our down messages while we are away
  mo.max_buffered = 1000;  // our queue is in SQLite, not in Paho
  mo.on_connected = [&agent_ptr] {
    if (agent_ptr) agent_ptr->OnConnected();
  };
  pp::sync::MqttClient mqtt(mo, [&agent_ptr](const std::string&, const std::string& payload,
                                             const std::string&) {
    if (agent_ptr) agent_ptr->OnDown(payload);
  });
  pp::agent::MqttUplink uplink(mqtt);
  pp::agent::Agent agent(cfg, *key, **store, clock, uplink);
  agent_ptr = &agent;
  agent.Start();
  mqtt.Start();

  pp::agent::LocalApi api(agent);
  if (auto st = api.Bind(cfg.http_host(), cfg.http_port()); !st.ok()) {
    std::fprintf(stderr, "pp-agent: %s\n", st.error().message.c_str());
    agent.Stop();
    return 1;
  }
  std::thread server([&api] { api.Serve(); });
  std::printf("pp-agent %s (%s): UI on http://%s:%d\n", cfg.device_id.c_str(), cfg.role.c_str(),
              cfg.http_host().c_str(), api.port());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  pp::Log(pp::LogLevel::kInfo, "agent_stopping", {{"signal", std::to_string(sig)}});
  api.Stop();
  server.join();
  agent_ptr = nullptr;
  mqtt.Disconnect();
  agent.Stop();
  return 0;
}

// The client side: one request to the running agent's local API.
int Call(const std::string& cmd, const std::map<std::string, std::string>& flags) {
  if (!flags.count("config")) Usage(cmd + " needs --config FILE");
  pp::DeviceConfig cfg = LoadOrDie(flags.at("config"));
  httplib::Client cli(cfg.http_host(), cfg.http_port());
  cli.set_connection_timeout(std::chrono::seconds(5));
  auto need = [&](const char* f) {
    if (!flags.count(f)) Usage(cmd + " needs --" + f);
    return flags.at(f);
  };
  auto number = [&](const char* f) -> json {
    std::string v = need(f);
    json j = json::parse(v, nullptr, false);
    if (!j.is_number()) Usage(std::string("--") + f + " must be a number");
    return j;
  };
  auto send = [&]() -> httplib::Result {
    if (cmd == "status") return cli.Get("/api/state");
    if (cmd == "post" || cmd == "vehicle") {
      auto body = pp::ParseJsonObject(need("json"), "--json");
      if (!body.ok()) Usage(body.error().message);
      return cmd == "post" ? cli.Post("/api/posts", body->dump(), "application/json")
                           : cli.Put("/api/vehicle", body->dump(), "application/json");
    }
    json body = json::object();
    if (cmd == "claim") body["version"] = number("version");
    if (cmd == "pickup") {
      body["handover_code"] = need("code");
      body["actual_kg"] = number("kg");
    }
    return cli.Post("/api/surplus/" + number("surplus").dump() + "/" + cmd, body.dump(),
                    "application/json");
  };
  auto r = send();
  if (!r) {
    std::fprintf(stderr, "pp-agent: no agent answering on %s (%s)\n", cfg.http_listen.c_str(),
                 httplib::to_string(r.error()).c_str());
    return 1;
  }
  std::printf("%s\n", r->body.c_str());
  return r->status < 300 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Usage("no command");
  std::string cmd = argv[1];
  if (cmd == "check-config") {
    if (argc != 3) Usage("check-config FILE");
    pp::DeviceConfig cfg = LoadOrDie(argv[2]);
    std::printf("%s: ok (%s %s of organisation %lld)\n", argv[2], cfg.role.c_str(),
                cfg.device_id.c_str(), static_cast<long long>(cfg.org_id));
    return 0;
  }
  auto flags = Flags(argc, argv, 2);
  if (cmd == "run") return Run(flags);
  static const std::set<std::string> calls{"status", "post", "claim", "accept", "decline",
                                           "release", "pickup", "deliver", "vehicle"};
  if (calls.count(cmd)) return Call(cmd, flags);
  Usage("unknown command " + cmd);
}
