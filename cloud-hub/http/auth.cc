#include "cloud-hub/http/auth.h"

#include <jwt.h>

#include <cerrno>
#include <cstdlib>
#include <memory>

namespace pp {
namespace {

Error Unauthenticated(std::string why) { return Error{Code::kUnauthenticated, std::move(why), {}, {}}; }

struct JwtFree {
  void operator()(jwt_t* j) const { jwt_free(j); }
};
using JwtPtr = std::unique_ptr<jwt_t, JwtFree>;

}  // namespace

std::string_view ToString(Role r) {
  switch (r) {
    case Role::kViewer: return "viewer";
    case Role::kOperator: return "operator";
    case Role::kAdmin: return "admin";
    case Role::kProvider: return "provider";
    case Role::kNgo: return "ngo";
  }
  return "?";
}

std::optional<Role> ParseRole(std::string_view s) {
  for (Role r : {Role::kViewer, Role::kOperator, Role::kAdmin, Role::kProvider, Role::kNgo})
    if (ToString(r) == s) return r;
  return std::nullopt;
}

Result<Principal> JwtVerifier::Verify(std::string_view token, Timestamp now) const {
  if (token.empty() || token.size() > 8192) return Unauthenticated("missing or oversized bearer token");
  std::string t(token);
  {
    std::lock_guard lock(mu_);
    if (auto it = remembered_.find(t); it != remembered_.end()) {
      Verified v = it->second;
      if (Status st = CheckTimes(v, now); !st.ok()) {
        remembered_.erase(it);
        return st.error();
      }
      return v.who;
    }
  }
  PP_ASSIGN_OR_RETURN(Verified v, Decode(t));
  PP_RETURN_IF_ERROR(CheckTimes(v, now));
  std::lock_guard lock(mu_);
  if (remembered_.size() >= kRemembered) remembered_.clear();
  remembered_.emplace(std::move(t), v);
  return v.who;
}

size_t JwtVerifier::remembered() const {
  std::lock_guard lock(mu_);
  return remembered_.size();
}

Status JwtVerifier::CheckTimes(const Verified& v, Timestamp now) const {
  const int64_t now_s = ToUnixMillis(now) / 1000, leeway = options_.leeway.count() / 1000;
  if (now_s > v.exp + leeway) return Unauthenticated("token expired");
  if (v.iat > now_s + leeway) return Unauthenticated("token issued in the future");
  return OkStatus();
}

Result<JwtVerifier::Verified> JwtVerifier::Decode(const std::string& token) const {
  jwt_t* raw = nullptr;
  if (jwt_decode(&raw, token.c_str(), reinterpret_cast<const unsigned char*>(key_.data()), int(key_.size())) != 0)
    return Unauthenticated("token signature or format is invalid");
  JwtPtr jwt(raw);
  if (jwt_get_alg(jwt.get()) != JWT_ALG_RS256) return Unauthenticated("token algorithm must be RS256");
  auto claim = [&](const char* name) -> std::string {
    const char* v = jwt_get_grant(jwt.get(), name);
    return v ? v : "";
  };
  if (claim("iss") != options_.issuer) return Unauthenticated("token issuer is not " + options_.issuer);
  if (claim("aud") != options_.audience) return Unauthenticated("token audience is not " + options_.audience);
  Verified v;
  errno = 0;
  v.exp = jwt_get_grant_int(jwt.get(), "exp");
  if (errno != 0) return Unauthenticated("token has no exp");
  v.iat = jwt_get_grant_int(jwt.get(), "iat");
  if (errno != 0) return Unauthenticated("token has no iat");
  if (v.exp - v.iat > options_.max_lifetime.count() / 1000)
    return Unauthenticated("token lives longer than " + std::to_string(options_.max_lifetime.count() / 60000) +
                           " minutes");
  auto role = ParseRole(claim("role"));
  if (!role) return Unauthenticated("token role must be viewer, operator, admin, provider or ngo");
  v.who.role = *role;
  v.who.subject = claim("sub");
  if (v.who.role == Role::kProvider || v.who.role == Role::kNgo) {
    errno = 0;
    v.who.org_id = jwt_get_grant_int(jwt.get(), "org_id");
    if (errno != 0 || v.who.org_id <= 0) return Unauthenticated("a provider or ngo token needs org_id");
  }
  return v;
}

Result<std::string> MintJwt(const std::string& private_key_pem, const Principal& who,
                            const JwtOptions& options, Timestamp now, Duration ttl) {
  jwt_t* raw = nullptr;
  if (jwt_new(&raw) != 0) return Error::Internal("jwt_new failed");
  JwtPtr jwt(raw);
  const int64_t now_s = ToUnixMillis(now) / 1000;
  const int64_t life = std::min(ttl, options.max_lifetime).count() / 1000;
  bool ok = jwt_add_grant(jwt.get(), "iss", options.issuer.c_str()) == 0 &&
            jwt_add_grant(jwt.get(), "aud", options.audience.c_str()) == 0 &&
            jwt_add_grant(jwt.get(), "sub", who.subject.c_str()) == 0 &&
            jwt_add_grant(jwt.get(), "role", std::string(ToString(who.role)).c_str()) == 0 &&
            jwt_add_grant_int(jwt.get(), "iat", now_s) == 0 &&
            jwt_add_grant_int(jwt.get(), "exp", now_s + life) == 0;
  if (ok && who.org_id) ok = jwt_add_grant_int(jwt.get(), "org_id", who.org_id) == 0;
  if (!ok) return Error::Internal("cannot build the token");
  if (jwt_set_alg(jwt.get(), JWT_ALG_RS256, reinterpret_cast<const unsigned char*>(private_key_pem.data()),
                  int(private_key_pem.size())) != 0)
    return Error::Invalid("the signing key is not an RSA private key (PEM)");
  char* out = jwt_encode_str(jwt.get());
  if (!out) return Error::Invalid("cannot sign the token: is the key an RSA private key (PEM)?");
  std::string token(out);
  free(out);  // libjwt 1.10 allocates with malloc and has no jwt_free_str
  return token;
}

}  // namespace pp
