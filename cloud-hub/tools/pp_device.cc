// pp-device: registers and revokes kiosks and tablets.
//
//   pp-device register --hub URL --id ID --role kiosk|tablet --org N --out DIR
//                      [--broker tcp://HOST:PORT] [--broker-dir DIR] [--ui 127.0.0.1:PORT]
//   pp-device revoke --hub URL --id ID
// Both take --token TOKEN (or env PP_TOKEN): an admin token when the hub
// checks tokens (pp-token mint --role admin).
//
// register makes the device's Ed25519 key pair and broker password, registers
// the public key with the hub, and writes into DIR (mode 0600):
//   ID.key       the secret key, base64 (never leaves the device)
//   ID.password  the broker password
//   ID.json      the device's configuration (id, role, organisation, files, broker)
// With --broker-dir (a folder made by packaging/broker.sh) it also adds the
// broker user and makes mosquitto reload its password file.
#include <fcntl.h>
#include <httplib.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "common/cli.h"
#include "sync/broker_admin.h"
#include "sync/protocol.h"


namespace {

constexpr const char* kUsage =
    "usage: pp-device register --hub URL --id ID --role kiosk|tablet --org N --out DIR\n"
    "                          [--broker tcp://HOST:PORT] [--broker-dir DIR] [--ui 127.0.0.1:PORT]\n"
    "       pp-device revoke --hub URL --id ID\n"
    "  (both: --token TOKEN or env PP_TOKEN, an admin token when the hub checks them)\n";

[[noreturn]] void Die(const std::string& msg, int code = 2) {
  std::fprintf(stderr, "pp-device: %s\n%s", msg.c_str(), code == 2 ? kUsage : "");
  std::exit(code);
}

bool WriteSecret(const std::filesystem::path& p, const std::string& content) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return false;
  bool ok = ::write(fd, content.data(), content.size()) == ssize_t(content.size());
  return ::close(fd) == 0 && ok;
}

std::pair<std::string, std::string> SplitUrl(const std::string& url) {
  auto scheme = url.find("://");
  auto path = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  return {url.substr(0, path), path == std::string::npos ? "" : url.substr(path)};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Die("missing command");
  std::string cmd = argv[1];
  auto flags = pp::ParseFlags(argc, argv, 2);
  if (!flags.ok()) Die(flags.error().message);
  std::map<std::string, std::string> opt = std::move(*flags);
  auto need = [&](const char* k) {
    if (!opt.count(k)) Die(std::string("--") + k + " is required");
    return opt[k];
  };
  std::string id = need("id");
  if (!pp::sync::ValidDeviceId(id)) Die("--id must be 1-64 of A-Z a-z 0-9 _ . -");
  auto [host, base] = SplitUrl(need("hub"));
  httplib::Client hub(host);
  // An admin token (pp-token mint --role admin) when the hub checks tokens.
  std::string token = opt.count("token") ? opt["token"] : (getenv("PP_TOKEN") ? getenv("PP_TOKEN") : "");
  if (!token.empty()) hub.set_bearer_token_auth(token.c_str());
  hub.set_connection_timeout(5, 0);
  hub.set_read_timeout(10, 0);

  if (cmd == "revoke") {
    auto r = hub.Post((base + "/api/v1/devices/" + id + "/revoke").c_str(), "", "application/json");
    if (!r) Die("hub unreachable: " + httplib::to_string(r.error()), 1);
    if (r->status != 200) Die("hub refused: " + r->body, 1);
    std::printf("revoked %s\n", id.c_str());
    return 0;
  }
  if (cmd != "register") Die("unknown command " + cmd);
  std::string role = need("role");
  if (role != "kiosk" && role != "tablet") Die("--role must be kiosk or tablet");
  std::string org = need("org");
  std::filesystem::path out = need("out");
  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  if (ec) Die("cannot create " + out.string() + ": " + ec.message(), 1);

  auto keys = pp::sync::GenerateKeyPair();
  unsigned char pw[18];
  randombytes_buf(pw, sizeof pw);
  std::string password = pp::sync::ToBase64(pw, sizeof pw);
  nlohmann::json reg{{"id", id}, {"role", role}, {"public_key", pp::sync::ToBase64(keys.public_key)}};
  try {
    reg["org_id"] = std::stoll(org);
  } catch (...) {
    Die("--org must be a number");
  }
  auto r = hub.Post((base + "/api/v1/devices").c_str(), reg.dump(), "application/json");
  if (!r) Die("hub unreachable: " + httplib::to_string(r.error()), 1);
  if (r->status != 201) Die("hub refused: " + r->body, 1);

  auto key_file = out / (id + ".key"), pw_file = out / (id + ".password");
  nlohmann::json config{{"device_id", id},
                        {"role", role},
                        {"org_id", reg["org_id"]},
                        // Next to the config, which resolves them (firmware-cfg): the
                        // folder can be copied to the device as it is.
                        {"key_file", key_file.filename().string()},
                        {"broker_url", opt.count("broker") ? opt["broker"] : "tcp://127.0.0.1:1883"},
                        {"broker_user", id},
                        {"broker_password_file", pw_file.filename().string()}};
  // Where pp-agent serves its UI (firmware-cfg validates it: loopback only).
  if (opt.count("ui")) config["http_listen"] = opt["ui"];
  if (!WriteSecret(key_file, pp::sync::ToBase64(keys.secret_key) + "\n") ||
      !WriteSecret(pw_file, password + "\n") ||
      !WriteSecret(out / (id + ".json"), config.dump(2) + "\n"))
    Die("cannot write into " + out.string(), 1);
  if (opt.count("broker-dir")) {
    if (auto st = pp::sync::AddBrokerUser(opt["broker-dir"], id, password); !st.ok())
      Die(st.error().message, 1);
  }
  std::printf("registered %s (%s of organisation %s); files in %s\n", id.c_str(), role.c_str(),
              org.c_str(), out.c_str());
  return 0;
}
