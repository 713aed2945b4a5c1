// Who is calling the HTTP API: RS256 JSON Web Tokens (libjwt 1.10) with a
// role and, for partners, their organisation.
//
// libjwt 1.10 verifies a signature with whatever algorithm the token's
// header names and checks no claim; so this code pins RS256 after decoding
// (an HS256 token "signed" with our public key as the HMAC secret would
// otherwise pass) and checks iss, aud, exp, iat and the lifetime itself.
//
// Roles: viewer (reads), operator (+ assign, cancel), admin (+ organisations
// and devices), provider and ngo (their own organisation's posts only; the
// `org_id` claim says which).
//
// Verified tokens are remembered (up to kRemembered, exact bytes as the
// key): libjwt 1.10 parses the PEM key again on every decode, and OpenSSL 3's
// key decoder made that the hub's largest cost per authenticated request
// (docs/benchmarks.md, "HTTP API: bearer tokens and kept-alive connections").
// A remembered token still has its times checked on every request; only a
// token that passed every other check is remembered, so a forged or altered
// one is decoded (and refused) every time.
//
// Thread safety: Verify may be called from any thread.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "common/clock.h"
#include "common/error.h"

namespace pp {

enum class Role { kViewer, kOperator, kAdmin, kProvider, kNgo };
std::string_view ToString(Role r);
std::optional<Role> ParseRole(std::string_view s);

struct Principal {
  Role role = Role::kViewer;
  int64_t org_id = 0;  // provider and ngo only
  std::string subject;
  bool staff() const { return role == Role::kViewer || role == Role::kOperator || role == Role::kAdmin; }
};

struct JwtOptions {
  std::string issuer = "pahlawan-pangan";
  std::string audience = "pp-hub";
  Duration max_lifetime{std::chrono::minutes(15)};
  Duration leeway{std::chrono::seconds(30)};  // clock skew between minter and hub
};

class JwtVerifier {
 public:
  static constexpr size_t kRemembered = 1024;  // all forgotten at once when full

  JwtVerifier(std::string public_key_pem, JwtOptions options)
      : key_(std::move(public_key_pem)), options_(std::move(options)) {}
  // kUnauthenticated naming what is wrong (never the token itself).
  Result<Principal> Verify(std::string_view token, Timestamp now) const;
  // Tokens remembered as verified now (for tests).
  size_t remembered() const;

 private:
  // What a token says once its signature and every claim but the times
  // have been checked.
  struct Verified {
    Principal who;
    int64_t exp = 0, iat = 0;  // Unix seconds
  };
  Result<Verified> Decode(const std::string& token) const;
  Status CheckTimes(const Verified& v, Timestamp now) const;

  const std::string key_;
  const JwtOptions options_;
  mutable std::mutex mu_;
  mutable std::unordered_map<std::string, Verified> remembered_;
};

// What pp-token and the tests use. `ttl` is capped at options.max_lifetime.
Result<std::string> MintJwt(const std::string& private_key_pem, const Principal& who,
                            const JwtOptions& options, Timestamp now, Duration ttl);

}  // namespace pp
