// pp-token: mints the short-lived RS256 tokens operators and partners use on
// the hub's HTTP API, and makes the key pair.
//
//   pp-token keygen --out DIR                 writes DIR/jwt.key (private, 0600) and DIR/jwt.pub
//   pp-token mint --key DIR/jwt.key --role admin|operator|viewer [--sub NAME] [--ttl 15m]
//   pp-token mint --key DIR/jwt.key --role provider|ngo --org N [--sub NAME] [--ttl 15m]
//
// The hub verifies with --jwt-public-key DIR/jwt.pub. Tokens live at most
// 15 minutes; mint a fresh one rather than keeping one.
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "cloud-hub/http/auth.h"
#include "common/cli.h"
#include "common/time_format.h"

namespace {

[[noreturn]] void Die(const std::string& m, int code = 2) {
  std::fprintf(stderr,
               "pp-token: %s\nusage: pp-token keygen --out DIR\n"
               "       pp-token mint --key FILE --role ROLE [--org N] [--sub NAME] [--ttl 15m]\n",
               m.c_str());
  std::exit(code);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  if (!in) Die("cannot read " + path, 1);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) Die("no command");
  std::string cmd = argv[1];
  auto flags = pp::ParseFlags(argc, argv, 2);
  if (!flags.ok()) Die(flags.error().message);
  std::map<std::string, std::string> opt = std::move(*flags);
  if (cmd == "keygen") {
    if (!opt.count("out")) Die("keygen needs --out DIR");
    std::filesystem::create_directories(opt["out"]);
    std::string key = opt["out"] + "/jwt.key", pub = opt["out"] + "/jwt.pub";
    // OpenSSL's own tool: no hand-written key generation.
    std::string sh = "umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out '" + key +
                     "' 2>/dev/null && openssl pkey -in '" + key + "' -pubout -out '" + pub + "'";
    if (std::system(sh.c_str()) != 0) Die("openssl could not make the key pair", 1);
    std::printf("%s\n%s\n", key.c_str(), pub.c_str());
    return 0;
  }
  if (cmd != "mint") Die("unknown command " + cmd);
  if (!opt.count("key") || !opt.count("role")) Die("mint needs --key and --role");
  auto role = pp::ParseRole(opt["role"]);
  if (!role) Die("--role must be viewer, operator, admin, provider or ngo");
  pp::Principal who;
  who.role = *role;
  who.subject = opt.count("sub") ? opt["sub"] : opt["role"];
  if (who.role == pp::Role::kProvider || who.role == pp::Role::kNgo) {
    if (!opt.count("org")) Die("a provider or ngo token needs --org N");
    try {
      who.org_id = std::stoll(opt["org"]);
    } catch (...) {
      Die("--org must be a number");
    }
    if (who.org_id <= 0) Die("--org must be positive");
  }
  pp::Duration ttl{std::chrono::minutes(15)};
  if (opt.count("ttl")) {
    auto d = pp::ParseDuration(opt["ttl"]);
    if (!d || *d > std::chrono::minutes(15)) Die("--ttl must be a duration up to 15m");
    ttl = *d;
  }
  pp::JwtOptions jo;
  if (opt.count("iss")) jo.issuer = opt["iss"];
  if (opt.count("aud")) jo.audience = opt["aud"];
  auto token = pp::MintJwt(ReadAll(opt["key"]), who, jo, pp::SystemClock::Instance().Now(), ttl);
  if (!token.ok()) Die(token.error().message, 1);
  std::printf("%s\n", token->c_str());
  return 0;
}
