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
// Thread safety: a JwtVerifier is immutable after construction.
#pragma once

#include <optional>
#include <string>
#include <string_view>

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
  JwtVerifier(std::string public_key_pem, JwtOptions options)
      : key_(std::move(public_key_pem)), options_(std::move(options)) {}
  // kUnauthenticated naming what is wrong (never the token itself).
  Result<Principal> Verify(std::string_view token, Timestamp now) const;

 private:
  const std::string key_;
  const JwtOptions options_;
};

// What pp-token and the tests use. `ttl` is capped at options.max_lifetime.
Result<std::string> MintJwt(const std::string& private_key_pem, const Principal& who,
                            const JwtOptions& options, Timestamp now, Duration ttl);

}  // namespace pp
