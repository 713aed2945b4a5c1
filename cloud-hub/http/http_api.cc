#include "cloud-hub/http/http_api.h"

#include <httplib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "cloud-hub/dashboard/assets.h"
#include "cloud-hub/matching/cascade.h"
#include "common/domain_json.h"
#include "sync/protocol.h"
#include "common/log.h"
#include "common/problem.h"
#include "common/time_format.h"
#include "common/trace.h"
#include "common/validation.h"

namespace pp {
namespace {

using httplib::ContentReader;
using httplib::Request;
using httplib::Response;

constexpr const char* kJson = "application/json";

// When the request being handled on this thread arrived (cpp-httplib runs a
// request's pre-routing handler, handler and logger on one pool thread).
thread_local std::chrono::steady_clock::time_point request_started;
// Its W3C traceparent: the caller's if valid, else a new trace. Answered in
// the `traceparent` response header, logged, and kept with a new post.
thread_local std::string request_trace;
// Who sent it (auth on), for the object-level checks in the handlers.
thread_local std::optional<Principal> request_principal;

// Object-level: may the caller act for organisation `org` in role `as`?
// Staff with write roles may; partners only for their own organisation.
Status MayActFor(int64_t org, Role as) {
  if (!request_principal) return OkStatus();  // auth off
  const Principal& p = *request_principal;
  if (p.role == Role::kAdmin || (p.role == Role::kOperator && as == Role::kProvider)) return OkStatus();
  if (p.role == as && p.org_id == org) return OkStatus();
  return Error{Code::kPermissionDenied,
               "this token may not act for organisation " + std::to_string(org), {}, {}};
}

// May the caller see this post? Staff: all. A provider: its own. An NGO:
// open posts, its offers and its claims. Others get 404 (no existence leak).
bool MaySee(const Surplus& x) {
  if (!request_principal || request_principal->staff()) return true;
  const Principal& p = *request_principal;
  if (p.role == Role::kProvider) return x.draft.provider_id == p.org_id;
  return x.claimed_by == p.org_id || x.match.offered_to == p.org_id ||
         x.status == SurplusStatus::kAvailable || x.status == SurplusStatus::kDeadLettered;
}
constexpr const char* kProblemJson = "application/problem+json";

void Problem(Response& res, int status, const Error& e, const std::string& instance) {
  res.status = status;
  res.set_content(ProblemJson(status, e, instance), kProblemJson);
  if (e.code == Code::kInternal || e.code == Code::kUnavailable)
    Log(LogLevel::kError, "http_error", {{"path", instance}, {"error", e.ToString()}});
}

void Problem(Response& res, const Error& e, const std::string& instance) {
  Problem(res, HttpStatusOf(e), e, instance);
}

void Reply201or200(Response& res, const Result<Reply>& r, const std::string& path, int created) {
  if (!r.ok()) return Problem(res, r.error(), path);
  res.status = r->replayed ? 200 : created;
  if (r->replayed) res.set_header("Idempotent-Replayed", "true");
  res.set_content(r->json, kJson);
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t start = 0;
  while (true) {
    size_t i = s.find(sep, start);
    out.push_back(s.substr(start, i == std::string::npos ? std::string::npos : i - start));
    if (i == std::string::npos) return out;
    start = i + 1;
  }
}

std::optional<int64_t> PathId(const Request& req, size_t group = 1) {
  const std::string s = req.matches[group];
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v <= 0) return std::nullopt;
  return v;
}

// Query parameters, strictly: a bad one is named, never ignored.
class Query {
 public:
  explicit Query(const Request& req) : req_(req) {}
  std::optional<int64_t> Int(const char* name, int64_t lo, int64_t hi) {
    if (!req_.has_param(name)) return std::nullopt;
    const std::string v = req_.get_param_value(name);
    int64_t out = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || p != v.data() + v.size() || out < lo || out > hi) {
      bad_.push_back({name, "must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi)});
      return std::nullopt;
    }
    return out;
  }
  std::optional<Timestamp> Time(const char* name) {
    if (!req_.has_param(name)) return std::nullopt;
    auto t = ParseRfc3339(req_.get_param_value(name));
    if (!t) bad_.push_back({name, "must be an RFC 3339 time, e.g. 2026-11-24T22:00:00Z"});
    return t;
  }
  std::string Text(const char* name) { return req_.has_param(name) ? req_.get_param_value(name) : ""; }
  void Fail(std::string name, std::string reason) { bad_.push_back({std::move(name), std::move(reason)}); }
  std::vector<FieldError>& errors() { return bad_; }

 private:
  const Request& req_;
  std::vector<FieldError> bad_;
};

// RFC 4180: quote fields that need it, double the quotes inside.
std::string CsvField(const std::string& v) {
  if (v.find_first_of(",\"\r\n") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

HttpApi::HttpApi(HubService& hub, HttpOptions options, const Cascade* cascade)
    : hub_(hub), options_(options), cascade_(cascade), server_(std::make_unique<httplib::Server>()) {
  int threads = options_.threads;
  server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  server_->set_payload_max_length(options_.max_body_bytes);
  server_->set_read_timeout(10, 0);
  server_->set_write_timeout(10, 0);
  server_->set_keep_alive_timeout(30);
  server_->set_keep_alive_max_count(10000);
  // A response goes out in more than one write (headers, then body): with
  // Nagle on, the second waits for the client's delayed ACK, ~40 ms on
  // every request after the first of a kept-alive connection.
  server_->set_tcp_nodelay(true);

  // Runs after the headers are read and before the body is: refuse what we
  // will not read.
  server_->set_logger([this](const Request& req, const Response& res) { Observe(req, res); });
  server_->set_pre_routing_handler([this](const Request& req, Response& res) {
    request_started = std::chrono::steady_clock::now();
    std::string incoming = req.get_header_value("traceparent");
    request_trace = ValidTraceparent(incoming) ? incoming : NewTraceparent();
    res.set_header("traceparent", request_trace);
    request_principal.reset();
    if (verifier_ && req.path.rfind("/api/v1/", 0) == 0) {
      std::string auth = req.get_header_value("Authorization");
      if (auth.rfind("Bearer ", 0) != 0) {
        res.set_header("WWW-Authenticate", "Bearer realm=\"pp-hub\"");
        Problem(res, 401, Error{Code::kUnauthenticated, "Authorization: Bearer <token> is required", {}, {}},
                req.path);
        return httplib::Server::HandlerResponse::Handled;
      }
      auto who = verifier_->Verify(std::string_view(auth).substr(7), hub_.clock().Now());
      if (!who.ok()) {
        res.set_header("WWW-Authenticate", "Bearer realm=\"pp-hub\", error=\"invalid_token\"");
        Problem(res, 401, who.error(), req.path);
        return httplib::Server::HandlerResponse::Handled;
      }
      request_principal = *who;
      Error why = Error::Internal("");
      if (int status = Authorize(req.method, RouteLabel(req.path), req.path, why)) {
        Problem(res, status, why, req.path);
        return httplib::Server::HandlerResponse::Handled;
      }
      if (who->role == Role::kProvider) {
        if (int wait = TakeProviderToken(who->org_id)) {
          res.set_header("Retry-After", std::to_string(wait));
          Problem(res, 429,
                  Error{Code::kResourceExhausted,
                        "more than " + std::to_string(provider_rate_) + " requests a minute from provider " +
                            std::to_string(who->org_id),
                        {}, {}},
                  req.path);
          return httplib::Server::HandlerResponse::Handled;
        }
      }
    }
    auto fail = [&](int status, Code code, std::string msg) {
      Problem(res, status, Error{code, std::move(msg), {}, {}}, req.path);
      // The body (if any) stays unread; the connection cannot be reused.
      res.set_header("Connection", "close");
      return httplib::Server::HandlerResponse::Handled;
    };
    size_t header_bytes = 0;
    for (const auto& [k, v] : req.headers) {
      header_bytes += k.size() + v.size() + 4;
      // cpp-httplib stores the peer address in these too; a client sending
      // them could pass for another address.
      if (EqualsIgnoreCase(k, "REMOTE_ADDR") || EqualsIgnoreCase(k, "REMOTE_PORT") ||
          EqualsIgnoreCase(k, "LOCAL_ADDR") || EqualsIgnoreCase(k, "LOCAL_PORT")) {
        // cpp-httplib adds these four itself after the client's headers;
        // more than one of a kind means the client sent one.
        if (req.headers.count(k) > 1)
          return fail(400, Code::kInvalidArgument, "header " + k + " is reserved");
      }
    }
    if (req.headers.size() > options_.max_headers + 4)  // +4: the addresses httplib adds
      return fail(431, Code::kResourceExhausted,
                  "more than " + std::to_string(options_.max_headers) + " headers");
    if (header_bytes > options_.max_header_bytes)
      return fail(431, Code::kResourceExhausted,
                  "headers exceed " + std::to_string(options_.max_header_bytes) + " bytes");
    bool has_te = req.has_header("Transfer-Encoding");
    if (has_te) {
      if (!EqualsIgnoreCase(req.get_header_value("Transfer-Encoding"), "chunked") ||
          req.get_header_value_count("Transfer-Encoding") != 1)
        return fail(501, Code::kInvalidArgument,
                    "only Transfer-Encoding: chunked is supported");
      if (req.has_header("Content-Length"))
        return fail(400, Code::kInvalidArgument,
                    "Content-Length and Transfer-Encoding must not both be sent");
    }
    if (req.has_header("Content-Length")) {
      const auto& cl = req.get_header_value("Content-Length");
      uint64_t n = 0;
      auto [p, ec] = std::from_chars(cl.data(), cl.data() + cl.size(), n);
      if (ec != std::errc() || p != cl.data() + cl.size())
        return fail(400, Code::kInvalidArgument, "Content-Length is not a number");
      if (n > options_.max_body_bytes)
        return fail(413, Code::kResourceExhausted,
                    "body exceeds " + std::to_string(options_.max_body_bytes) + " bytes");
    }
    if (req.method == "POST" || req.method == "PUT" || req.method == "PATCH") {
      std::string ct = req.get_header_value("Content-Type");
      std::string base = ct.substr(0, ct.find(';'));
      while (!base.empty() && base.back() == ' ') base.pop_back();
      if (!EqualsIgnoreCase(base, kJson))
        return fail(415, Code::kInvalidArgument, "Content-Type must be application/json");
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  server_->set_exception_handler([](const Request& req, Response& res, std::exception_ptr ep) {
    std::string what = "unknown";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    Problem(res, 500, Error::Internal("unexpected error: " + what), req.path);
  });
  server_->set_error_handler([](const Request& req, Response& res) {
    if (!res.body.empty()) return;  // a handler already wrote a problem
    if (res.status == 404)
      Problem(res, 404, Error::NotFound("no route " + req.method + " " + req.path), req.path);
    else if (res.status == 413)
      Problem(res, 413, Error{Code::kResourceExhausted, "body too large", {}, {}}, req.path);
    else
      Problem(res, res.status, Error::Invalid("request could not be processed"), req.path);
  });
  Routes();
}

HttpApi::~HttpApi() = default;

std::string HttpApi::RouteLabel(const std::string& path) {
  static const char* const kKnown[] = {"/healthz", "/readyz", "/metrics", "/api/v1/"};
  bool known = false;
  for (const char* k : kKnown) known |= path.rfind(k, 0) == 0;
  if (!known) return "other";  // scanners must not mint label sets
  std::string out;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i + 1);
    std::string seg = path.substr(i, j == std::string::npos ? std::string::npos : j - i);
    bool digits = seg.size() > 1 && seg.find_first_not_of("0123456789", 1) == std::string::npos;
    bool device = out == "/api/v1/devices" && seg.size() > 1;
    out += digits || device ? "/:id" : seg;
    if (j == std::string::npos) break;
    i = j;
  }
  return out;
}

void HttpApi::Observe(const Request& req, const Response& res) {
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - request_started).count();
  std::string route = RouteLabel(req.path);
  if (req.method != "GET")  // changes, one line each, with their trace
    Log(res.status >= 500 ? LogLevel::kError : LogLevel::kInfo, "http_request",
        {{"method", req.method}, {"route", route}, {"path", req.path.substr(0, 200)},
         {"status", std::to_string(res.status)}, {"ms", std::to_string(int(seconds * 1000))},
         {"trace", TraceId(request_trace)}});
  if (!metrics_) return;
  metrics_->GetCounter("http_requests_total", "HTTP requests by route, method and status.",
                       {{"route", route}, {"method", req.method}, {"code", std::to_string(res.status)}})
      .Inc();
  if (res.status >= 500)
    metrics_->GetCounter("http_errors_total", "HTTP answers with a 5xx status, by route.", {{"route", route}})
        .Inc();
  metrics_->GetHistogram("http_request_duration_seconds", "HTTP request latency by route.",
                         metrics::LatencyBuckets(), {{"route", route}})
      .Observe(seconds);
  bool claim = req.method == "POST" && (route == "/api/v1/surplus/:id/claim" ||
                                        route == "/api/v1/surplus/:id/accept");
  if (claim && res.status < 500) claim_latency_->Observe(seconds);
}

void HttpApi::SetAuth(const JwtVerifier* verifier, int provider_rate_per_min) {
  verifier_ = verifier;
  provider_rate_ = provider_rate_per_min;
}

int HttpApi::TakeProviderToken(int64_t org) {
  // A token bucket per provider: provider_rate_ a minute, bursts up to that.
  auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(rate_mu_);
  auto [it, fresh] = buckets_.try_emplace(org, double(provider_rate_), now);
  auto& [tokens, last] = it->second;
  double per_second = provider_rate_ / 60.0;
  tokens = std::min(double(provider_rate_), tokens + std::chrono::duration<double>(now - last).count() * per_second);
  last = now;
  if (tokens >= 1) {
    tokens -= 1;
    return 0;
  }
  return std::max(1, int(std::ceil((1 - tokens) / per_second)));
}

int HttpApi::Authorize(const std::string& method, const std::string& route, const std::string& path,
                       Error& why) {
  const Principal& p = *request_principal;
  auto deny = [&](std::string msg) {
    why = Error{Code::kPermissionDenied, std::move(msg), {}, {}};
    return 403;
  };
  const std::string role(ToString(p.role));
  auto is = [&](std::initializer_list<Role> roles) {
    return std::find(roles.begin(), roles.end(), p.role) != roles.end();
  };
  auto ends = [&](const char* suffix) {
    std::string_view r(route), s(suffix);
    return r.size() >= s.size() && r.substr(r.size() - s.size()) == s;
  };
  if (method == "GET") {
    if (p.staff()) return 0;
    // Partners read single posts (checked per post), nearby, and organisations.
    if (route == "/api/v1/surplus/:id" || route == "/api/v1/organizations/:id") return 0;
    if (route == "/api/v1/surplus/nearby" && p.role == Role::kNgo) return 0;
    return deny("a " + role + " token may not read " + route);
  }
  if (route == "/api/v1/organizations" || route == "/api/v1/organizations/:id" ||
      route.rfind("/api/v1/devices", 0) == 0)
    return is({Role::kAdmin}) ? 0 : deny("only an admin registers or edits organisations and devices");
  if (route == "/api/v1/surplus")
    return is({Role::kProvider, Role::kOperator, Role::kAdmin}) ? 0 : deny("a " + role + " may not post surplus");
  if (ends("/assign") || ends("/cancel"))
    return is({Role::kOperator, Role::kAdmin}) ? 0 : deny("only an operator assigns or cancels");
  if (ends("/release"))
    return is({Role::kNgo, Role::kOperator, Role::kAdmin}) ? 0 : deny("only the claiming NGO or an operator releases a claim");
  if (ends("/claim") || ends("/accept") || ends("/decline") || ends("/pickup") || ends("/deliver"))
    return is({Role::kNgo, Role::kAdmin}) ? 0 : deny("only an NGO claims, answers offers and collects");
  if (route.rfind("/api/v1/vehicles/", 0) == 0) {
    if (is({Role::kOperator, Role::kAdmin})) return 0;
    if (p.role == Role::kNgo && path == "/api/v1/vehicles/" + std::to_string(p.org_id)) return 0;
    return deny("a token may move only its own NGO's vehicle");
  }
  return deny("a " + role + " may not " + method + " " + route);
}

void HttpApi::SetMetrics(metrics::Registry* registry) {
  metrics_ = registry;
  claim_latency_ = &registry->GetHistogram(kClaimLatencyMetric, kClaimLatencyHelp,
                                           metrics::LatencyBuckets(), {{"door", "http"}});
}

std::string HttpApi::Served(const std::string& method, const std::string& path) {
  served_.emplace_back(method, path);
  // "{name}" is one path segment.
  std::string pattern;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '{') {
      i = path.find('}', i);
      pattern += "([^/]+)";
    } else {
      pattern += path[i];
    }
  }
  return pattern;
}

void HttpApi::Routes() {
  auto& s = *server_;
  const size_t max_body = options_.max_body_bytes;

  // Reads the body while counting, so chunked bodies obey the limit too.
  // false: a problem has been written.
  auto read_body = [max_body](const Request& req, Response& res, const ContentReader& reader,
                              std::string& body) {
    bool too_big = false;
    bool ok = reader([&](const char* data, size_t n) {
      if (body.size() + n > max_body) {
        too_big = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
    if (too_big) {
      Problem(res, 413,
              Error{Code::kResourceExhausted,
                    "body exceeds " + std::to_string(max_body) + " bytes", {}, {}},
              req.path);
      res.set_header("Connection", "close");
      return false;
    }
    if (!ok) {
      Problem(res, 400, Error::Invalid("body could not be read"), req.path);
      res.set_header("Connection", "close");
      return false;
    }
    return true;
  };

  // The Idempotency-Key header: required where `required`, 1-200 visible ASCII.
  auto idem_key = [](const Request& req, Response& res, bool required) -> std::optional<std::string> {
    std::string key = req.get_header_value("Idempotency-Key");
    if (key.empty()) {
      if (!required) return std::string();
      Problem(res, 400,
              Error::Invalid("header Idempotency-Key is required: a unique string per operation, "
                             "reused only when retrying it"),
              req.path);
      return std::nullopt;
    }
    bool visible = std::all_of(key.begin(), key.end(), [](char c) { return c > 32 && c < 127; });
    if (key.size() > 200 || !visible) {
      Problem(res, 400, Error::Invalid("header Idempotency-Key must be 1-200 visible ASCII characters"),
              req.path);
      return std::nullopt;
    }
    return key;
  };

  s.Get(Served("GET", "/healthz"), [this](const Request&, Response& res) {
    res.set_content(nlohmann::json{{"status", "ok"}}.dump(), kJson);
  });
  // Ready: the store answers and, with a broker configured, it is connected.
  s.Get(Served("GET", "/readyz"), [this](const Request& req, Response& res) {
    Status st = ready_ ? ready_() : OkStatus();
    if (!st.ok()) return Problem(res, 503, st.error(), req.path);
    res.set_content(nlohmann::json{{"status", "ready"}}.dump(), kJson);
  });
  s.Get(Served("GET", "/metrics"), [this](const Request& req, Response& res) {
    if (!metrics_) return Problem(res, 404, Error::NotFound("metrics are off"), req.path);
    res.set_content(metrics_->Render(), "text/plain; version=0.0.4; charset=utf-8");
  });

  s.Post(Served("POST", "/api/v1/organizations"), [this, read_body, idem_key](const Request& req, Response& res,
                                                              const ContentReader& reader) {
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    auto key = idem_key(req, res, false);
    if (!key) return;
    auto org = ParseNewOrganization(body);
    if (!org.ok()) return Problem(res, org.error(), req.path);
    Reply201or200(res, hub_.CreateOrganization(std::move(*org), std::move(*key)), req.path, 201);
  });

  s.Get(Served("GET", "/api/v1/organizations/{id}"), [this](const Request& req, Response& res) {
    auto id = PathId(req);
    if (!id) return Problem(res, Error::NotFound("no organisation " + std::string(req.matches[1])), req.path);
    Reply201or200(res, hub_.GetOrganization(*id), req.path, 200);
  });

  s.Patch(Served("PATCH", "/api/v1/organizations/{id}"), [this, read_body](const Request& req, Response& res,
                                                                 const ContentReader& reader) {
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    auto id = PathId(req);
    if (!id) return Problem(res, Error::NotFound("no organisation " + std::string(req.matches[1])), req.path);
    auto change = ParseOrganizationChange(body);
    if (!change.ok()) return Problem(res, change.error(), req.path);
    Reply201or200(res, hub_.UpdateOrganization(*id, std::move(*change)), req.path, 200);
  });

  s.Post(Served("POST", "/api/v1/surplus"), [this, read_body, idem_key](const Request& req, Response& res,
                                                        const ContentReader& reader) {
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    auto key = idem_key(req, res, true);
    if (!key) return;
    auto draft = ParseSurplusDraft(body, hub_.clock().Now());
    if (!draft.ok()) return Problem(res, draft.error(), req.path);
    if (auto st = MayActFor(draft->provider_id, Role::kProvider); !st.ok())
      return Problem(res, st.error(), req.path);
    auto r = hub_.PostSurplus(std::move(*draft), std::move(*key), request_trace);
    if (r.ok() && !r->replayed) {
      auto id = nlohmann::json::parse(r->json)["id"].get<int64_t>();
      res.set_header("Location", "/api/v1/surplus/" + std::to_string(id));
    }
    Reply201or200(res, r, req.path, 201);
  });

  // Before /surplus/{id}: routes match in the order they are added.
  s.Get(Served("GET", "/api/v1/surplus/nearby"), [this](const Request& req, Response& res) {
    std::vector<FieldError> bad;
    auto number = [&](const char* name, double lo, double hi, std::optional<double> fallback) {
      if (!req.has_param(name)) {
        if (!fallback) bad.push_back({name, "is required"});
        return fallback.value_or(0);
      }
      const std::string v = req.get_param_value(name);
      char* end = nullptr;
      double d = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(d >= lo && d <= hi)) {
        bad.push_back({name, "must be a number from " + std::to_string(lo) + " to " + std::to_string(hi)});
        return 0.0;
      }
      return d;
    };
    double lat = number("lat", -90, 90, std::nullopt), lon = number("lon", -180, 180, std::nullopt);
    double km = number("km", 0.1, 50, 5.0), limit = number("limit", 1, 500, 50.0);
    if (!bad.empty()) return Problem(res, Error::Invalid("invalid query parameters", bad), req.path);
    if (!cascade_) return Problem(res, Error::Unavailable("matching is not running"), req.path);
    auto items = cascade_->NearbyPosts({lat, lon}, km, size_t(limit));
    res.set_content(nlohmann::json{{"items", items}, {"count", items.size()}}.dump(), kJson);
  });

  s.Get(Served("GET", "/api/v1/surplus/{id}"), [this](const Request& req, Response& res) {
    auto id = PathId(req);
    if (!id) return Problem(res, Error::NotFound("no surplus post " + std::string(req.matches[1])), req.path);
    auto r = hub_.GetSurplus(*id);
    if (r.ok() && r->surplus && !MaySee(*r->surplus))
      return Problem(res, Error::NotFound("no surplus post " + std::to_string(*id)), req.path);
    Reply201or200(res, r, req.path, 200);
  });

  // Commands on one post (claim, accept, decline, release, assign, pickup, deliver):
  // read the body, the post id and the Idempotency-Key, then `run` parses
  // the body and calls the hub.
  using PostCommand =
      std::function<Result<Reply>(int64_t id, const std::string& body, std::string key)>;
  auto post_command = [this, read_body, idem_key](PostCommand run) {
    return [this, read_body, idem_key, run](const Request& req, Response& res,
                                            const ContentReader& reader) {
      std::string body;
      if (!read_body(req, res, reader, body)) return;
      auto id = PathId(req);
      if (!id)
        return Problem(res, Error::NotFound("no surplus post " + std::string(req.matches[1])),
                       req.path);
      auto key = idem_key(req, res, true);
      if (!key) return;
      Reply201or200(res, run(*id, body, std::move(*key)), req.path, 200);
    };
  };
  s.Post(Served("POST", "/api/v1/surplus/{id}/claim"),
         post_command([this](int64_t id, const std::string& body, std::string key) -> Result<Reply> {
           PP_ASSIGN_OR_RETURN(auto claim, ParseClaimRequest(body));
           PP_RETURN_IF_ERROR(MayActFor(claim.ngo_id, Role::kNgo));
           return hub_.Claim(id, claim, std::move(key));
         }));
  s.Post(Served("POST", "/api/v1/surplus/{id}/pickup"),
         post_command([this](int64_t id, const std::string& body, std::string key) -> Result<Reply> {
           PP_ASSIGN_OR_RETURN(auto pickup, ParsePickUpRequest(body));
           PP_RETURN_IF_ERROR(MayActFor(pickup.ngo_id, Role::kNgo));
           return hub_.PickUp(id, std::move(pickup), std::move(key));
         }));
  // The rest take {"ngo_id": N}.
  using NgoCommand = Result<Reply> (HubService::*)(int64_t, int64_t, std::string);
  // Whom the body's ngo_id may name, once Authorize has let the role in.
  enum class ForNgo {
    kOwn,         // the NGO's own token (or an admin's)
    kOwnOrStaff,  // also an operator on its behalf: the driver phoned
    kAny,         // an operator's command for any NGO
  };
  auto ngo_command = [this, post_command](NgoCommand command, ForNgo for_ngo) {
    return post_command([this, command, for_ngo](int64_t id, const std::string& body,
                                                 std::string key) -> Result<Reply> {
      PP_ASSIGN_OR_RETURN(int64_t ngo, ParseNgoRequest(body));
      const bool staff = request_principal && request_principal->staff();
      if (for_ngo == ForNgo::kOwn || (for_ngo == ForNgo::kOwnOrStaff && !staff))
        PP_RETURN_IF_ERROR(MayActFor(ngo, Role::kNgo));
      return (hub_.*command)(id, ngo, std::move(key));
    });
  };
  s.Post(Served("POST", "/api/v1/surplus/{id}/accept"), ngo_command(&HubService::Accept, ForNgo::kOwn));
  s.Post(Served("POST", "/api/v1/surplus/{id}/decline"), ngo_command(&HubService::Decline, ForNgo::kOwn));
  s.Post(Served("POST", "/api/v1/surplus/{id}/release"), ngo_command(&HubService::Release, ForNgo::kOwnOrStaff));
  s.Post(Served("POST", "/api/v1/surplus/{id}/assign"), ngo_command(&HubService::Assign, ForNgo::kAny));
  s.Post(Served("POST", "/api/v1/surplus/{id}/deliver"), ngo_command(&HubService::Deliver, ForNgo::kOwn));

  s.Post(Served("POST", "/api/v1/surplus/{id}/cancel"),
         post_command([this](int64_t id, const std::string& body, std::string key) -> Result<Reply> {
           if (!body.empty() && body != "{}")
             return Error::Invalid("cancel takes an empty body or {}");
           return hub_.Cancel(id, std::move(key));
         }));

  // The operator's list: filters, keyset pages (`after` = the last id seen),
  // JSON or CSV.
  s.Get(Served("GET", "/api/v1/surplus"), [this](const Request& req, Response& res) {
    Query q(req);
    SurplusFilter f;
    for (const auto& name : Split(q.Text("status"), ',')) {
      auto st = ParseSurplusStatus(name);
      if (!st) q.Fail("status", "unknown status \"" + name + "\"");
      else f.statuses.push_back(*st);
    }
    f.provider_id = q.Int("provider_id", 1, INT64_MAX);
    f.ngo_id = q.Int("ngo_id", 1, INT64_MAX);
    f.from = q.Time("from");
    f.to = q.Time("to");
    if (std::string area = q.Text("bbox"); !area.empty()) {
      auto parts = Split(area, ',');
      double v[4];
      bool ok = parts.size() == 4;
      for (size_t i = 0; ok && i < 4; ++i) {
        char* end = nullptr;
        v[i] = std::strtod(parts[i].c_str(), &end);
        ok = *end == '\0' && std::isfinite(v[i]);
      }
      if (!ok || v[0] > v[2] || v[1] > v[3] || v[0] < -90 || v[2] > 90 || v[1] < -180 || v[3] > 180)
        q.Fail("bbox", "must be min_lat,min_lon,max_lat,max_lon");
      else
        f.area = SurplusFilter::Box{v[0], v[1], v[2], v[3]};
    }
    f.after_id = q.Int("after", 0, INT64_MAX).value_or(0);
    f.limit = int(q.Int("limit", 1, 1000).value_or(100));
    std::string format = q.Text("format");
    if (!format.empty() && format != "json" && format != "csv") q.Fail("format", "must be json or csv");
    if (!q.errors().empty())
      return Problem(res, Error::Invalid("invalid query parameters", q.errors()), req.path);
    auto page = hub_.FindSurplus(f);
    if (!page.ok()) return Problem(res, page.error(), req.path);
    nlohmann::json next = page->size() == size_t(f.limit) ? nlohmann::json(page->back().id) : nlohmann::json(nullptr);
    if (format == "csv") {
      std::string csv = "id,status,provider_id,claimed_by,category,description,quantity_kg,picked_up_kg,"
                        "best_before,created_at,updated_at,lat,lon\r\n";
      for (const auto& x : *page) {
        auto opt = [](const auto& v) { return v ? nlohmann::json(*v).dump() : std::string(); };
        csv += std::to_string(x.id) + "," + std::string(ToString(x.status)) + "," +
               std::to_string(x.draft.provider_id) + "," + opt(x.claimed_by) + "," +
               CsvField(x.draft.category) + "," + CsvField(x.draft.description) + "," +
               opt(x.draft.quantity_kg) + "," + opt(x.picked_up_kg) + "," +
               FormatRfc3339(x.draft.best_before) + "," + FormatRfc3339(x.created_at) + "," +
               FormatRfc3339(x.updated_at) + "," + nlohmann::json(x.position.lat).dump() + "," +
               nlohmann::json(x.position.lon).dump() + "\r\n";
      }
      if (!next.is_null()) res.set_header("Link", "<" + req.path + "?after=" + next.dump() + ">; rel=\"next\"");
      return res.set_content(csv, "text/csv; charset=utf-8");
    }
    nlohmann::json items = nlohmann::json::array();
    for (const auto& x : *page) items.push_back(ToJson(x));
    res.set_content(nlohmann::json{{"items", items}, {"count", items.size()}, {"next_after", next}}.dump(),
                    kJson);
  });

  // Food rescued: delivered posts by day, month, provider or NGO.
  s.Get(Served("GET", "/api/v1/impact"), [this](const Request& req, Response& res) {
    Query q(req);
    std::string by = q.Text("by").empty() ? "day" : q.Text("by");
    static const std::map<std::string, ImpactBy> kBy{{"day", ImpactBy::kDay}, {"month", ImpactBy::kMonth},
                                                     {"provider", ImpactBy::kProvider}, {"ngo", ImpactBy::kNgo}};
    if (!kBy.count(by)) q.Fail("by", "must be day, month, provider or ngo");
    SurplusFilter f;
    f.statuses = {SurplusStatus::kDelivered};
    f.by_updated_at = true;  // when it was delivered
    f.from = q.Time("from");
    f.to = q.Time("to");
    std::string format = q.Text("format");
    if (!format.empty() && format != "json" && format != "csv") q.Fail("format", "must be json or csv");
    if (!q.errors().empty())
      return Problem(res, Error::Invalid("invalid query parameters", q.errors()), req.path);
    std::vector<Surplus> delivered;
    f.limit = 1000;
    while (true) {
      auto page = hub_.FindSurplus(f);
      if (!page.ok()) return Problem(res, page.error(), req.path);
      delivered.insert(delivered.end(), page->begin(), page->end());
      if (page->size() < size_t(f.limit)) break;
      f.after_id = page->back().id;
    }
    auto rows = Impact(delivered, kBy.at(by), options_.impact);
    if (format == "csv") {
      std::string csv = by + ",posts,kg,meals,co2e_kg\r\n";
      for (const auto& r : rows)
        csv += CsvField(r.key) + "," + std::to_string(r.posts) + "," + nlohmann::json(r.kg).dump() + "," +
               nlohmann::json(r.meals).dump() + "," + nlohmann::json(r.co2e_kg).dump() + "\r\n";
      return res.set_content(csv, "text/csv; charset=utf-8");
    }
    nlohmann::json out = nlohmann::json::array();
    double kg = 0;
    for (const auto& r : rows) {
      out.push_back({{by, r.key}, {"posts", r.posts}, {"kg", r.kg}, {"meals", r.meals}, {"co2e_kg", r.co2e_kg}});
      kg += r.kg;
    }
    res.set_content(nlohmann::json{{"by", by},
                                   {"rows", out},
                                   {"total_kg", kg},
                                   {"grams_per_meal", options_.impact.grams_per_meal},
                                   {"co2e_kg_per_kg", options_.impact.co2e_kg_per_kg}}
                        .dump(),
                    kJson);
  });

  s.Get(Served("GET", "/api/v1/organizations"), [this](const Request& req, Response& res) {
    Query q(req);
    std::optional<OrgKind> kind;
    if (std::string k = q.Text("kind"); !k.empty()) {
      kind = ParseOrgKind(k);
      if (!kind) q.Fail("kind", "must be provider or ngo");
    }
    int64_t after = q.Int("after", 0, INT64_MAX).value_or(0);
    int limit = int(q.Int("limit", 1, 1000).value_or(100));
    if (!q.errors().empty())
      return Problem(res, Error::Invalid("invalid query parameters", q.errors()), req.path);
    auto page = hub_.ListOrganizations(kind, after, limit);
    if (!page.ok()) return Problem(res, page.error(), req.path);
    nlohmann::json items = nlohmann::json::array();
    for (const auto& o : *page) items.push_back(ToJson(o));
    nlohmann::json next = page->size() == size_t(limit) ? nlohmann::json(page->back().id) : nlohmann::json(nullptr);
    res.set_content(nlohmann::json{{"items", items}, {"count", items.size()}, {"next_after", next}}.dump(), kJson);
  });

  s.Get(Served("GET", "/api/v1/devices"), [this](const Request& req, Response& res) {
    Query q(req);
    auto org = q.Int("org_id", 1, INT64_MAX);
    if (!org && q.errors().empty()) q.Fail("org_id", "is required");
    if (!q.errors().empty())
      return Problem(res, Error::Invalid("invalid query parameters", q.errors()), req.path);
    auto devices = hub_.ListDevicesOfOrg(*org);
    if (!devices.ok()) return Problem(res, devices.error(), req.path);
    nlohmann::json items = nlohmann::json::array();
    for (const auto& d : *devices) items.push_back(ToJson(d));
    res.set_content(nlohmann::json{{"items", items}, {"count", items.size()}}.dump(), kJson);
  });

  // The dashboard's view of the city: counts by status, open posts and
  // vehicles for the map, and the hub's own state.
  s.Get(Served("GET", "/api/v1/summary"), [this](const Request& req, Response& res) {
    nlohmann::json counts = nlohmann::json::object(), posts = nlohmann::json::array();
    SurplusFilter f;
    f.statuses = {SurplusStatus::kAvailable, SurplusStatus::kOffered, SurplusStatus::kDeadLettered,
                  SurplusStatus::kClaimed, SurplusStatus::kPickedUp};
    f.limit = 1000;
    size_t shown = 0;
    const Timestamp now = hub_.clock().Now();
    while (true) {
      auto page = hub_.FindSurplus(f);
      if (!page.ok()) return Problem(res, page.error(), req.path);
      for (const auto& x : *page) {
        std::string st(ToString(x.status));
        counts[st] = counts.value(st, 0) + 1;
        if (shown++ < 2000)  // the map shows at most this many
          posts.push_back({{"id", x.id}, {"status", st}, {"lat", x.position.lat}, {"lon", x.position.lon},
                           {"description", x.draft.description},
                           {"quantity_kg", x.draft.quantity_kg ? nlohmann::json(*x.draft.quantity_kg) : nlohmann::json(nullptr)},
                           {"provider_id", x.draft.provider_id},
                           {"claimed_by", x.claimed_by ? nlohmann::json(*x.claimed_by) : nlohmann::json(nullptr)}});
      }
      if (page->size() < size_t(f.limit)) break;
      f.after_id = page->back().id;
    }
    auto vehicles = hub_.ListVehicles();
    if (!vehicles.ok()) return Problem(res, vehicles.error(), req.path);
    // The same count as the pickups_overdue gauge: one rule, the store's.
    auto overdue = hub_.CountOverduePickups(now);
    if (!overdue.ok()) return Problem(res, overdue.error(), req.path);
    nlohmann::json vs = nlohmann::json::array();
    for (const auto& v : *vehicles) {
      nlohmann::json j = ToJson(v);
      j["silent"] = v.Silent(now);  // its tablet not heard from: offered nothing
      vs.push_back(std::move(j));
    }
    nlohmann::json out{{"counts", counts}, {"posts", posts}, {"vehicles", vs}, {"now", FormatRfc3339(now)},
                       {"pickups_overdue", *overdue}};
    out["status"] = status_probe_ ? status_probe_() : nlohmann::json::object();
    res.set_content(out.dump(), kJson);
  });

  // The dashboard's files; its API calls carry the operator's token.
  for (const auto& asset : dashboard::Assets()) {
    std::string path = "/dashboard/" + std::string(asset.name == "index.html" ? "" : asset.name);
    std::string_view body = asset.body, type = asset.content_type;
    s.Get(path, [body, type](const Request&, Response& res) {
      res.set_content(body.data(), body.size(), std::string(type).c_str());
      res.set_header("Content-Security-Policy", "default-src 'self'");
    });
  }

  s.Get(Served("GET", "/api/v1/dlq"), [this](const Request& req, Response& res) {
    nlohmann::json out = nlohmann::json::array();
    int64_t after = 0;
    while (true) {
      auto page = hub_.ListSurplus({SurplusStatus::kDeadLettered}, after, 500);
      if (!page.ok()) return Problem(res, page.error(), req.path);
      for (const auto& x : *page) out.push_back(ToJson(x));
      if (page->size() < 500) break;
      after = page->back().id;
    }
    res.set_content(nlohmann::json{{"items", out}, {"count", out.size()}}.dump(), kJson);
  });

  s.Post(Served("POST", "/api/v1/devices"), [this, read_body](const Request& req, Response& res,
                                             const ContentReader& reader) {
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    auto parsed = ParseJsonObject(body, "body");
    if (!parsed.ok()) return Problem(res, parsed.error(), req.path);
    const nlohmann::json& j = *parsed;
    std::vector<FieldError> bad;
    for (const auto& [k, v] : j.items())
      if (k != "id" && k != "role" && k != "org_id" && k != "public_key") bad.push_back({k, "unknown field"});
    Device d;
    if (!j.contains("id") || !j["id"].is_string() || !sync::ValidDeviceId(j["id"].get<std::string>()))
      bad.push_back({"id", "must be 1-64 of A-Z a-z 0-9 _ . -"});
    else
      d.id = j["id"].get<std::string>();
    if (!j.contains("role") || (j["role"] != "kiosk" && j["role"] != "tablet"))
      bad.push_back({"role", "must be kiosk or tablet"});
    else
      d.role = j["role"].get<std::string>();
    if (!j.contains("org_id") || !j["org_id"].is_number_unsigned() || j["org_id"].get<uint64_t>() == 0)
      bad.push_back({"org_id", "must be a positive integer"});
    else
      d.org_id = j["org_id"].get<int64_t>();
    auto key = j.contains("public_key") && j["public_key"].is_string()
                   ? sync::PublicKeyFromBase64(j["public_key"].get<std::string>())
                   : Result<sync::PublicKey>(Error::Invalid("no key"));
    if (!key.ok())
      bad.push_back({"public_key", "must be a 32-byte Ed25519 public key in standard base64"});
    else if (!sync::IsDevicePublicKey(*key))
      bad.push_back({"public_key", "is not an Ed25519 public key: not a point of the curve's "
                                   "prime-order subgroup (a small-order or off-curve value)"});
    else
      d.public_key = j["public_key"].get<std::string>();
    if (!bad.empty()) return Problem(res, Error::Invalid("request has invalid fields", bad), req.path);
    Reply201or200(res, hub_.RegisterDevice(std::move(d)), req.path, 201);
  });

  s.Post(Served("POST", "/api/v1/devices/{id}/revoke"), [this](const Request& req, Response& res,
                                                     const ContentReader& reader) {
    reader([](const char*, size_t) { return true; });  // no body expected; drain any
    std::string id = req.matches[1];
    auto st = hub_.RevokeDevice(id);
    if (!st.ok()) return Problem(res, st.error(), req.path);
    auto d = hub_.FindDevice(id);
    if (!d.ok() || !*d) return Problem(res, Error::NotFound("no device " + id), req.path);
    res.set_content(ToJson(**d).dump(), kJson);
  });

  s.Get(Served("GET", "/api/v1/devices/{id}"), [this](const Request& req, Response& res) {
    std::string id = req.matches[1];
    auto d = hub_.FindDevice(id);
    if (!d.ok()) return Problem(res, d.error(), req.path);
    if (!*d) return Problem(res, Error::NotFound("no device " + id), req.path);
    res.set_content(ToJson(**d).dump(), kJson);
  });

  s.Put(Served("PUT", "/api/v1/vehicles/{ngo_id}"), [this, read_body](const Request& req, Response& res,
                                                         const ContentReader& reader) {
    std::string body;
    if (!read_body(req, res, reader, body)) return;
    auto id = PathId(req);
    if (!id) return Problem(res, Error::NotFound("no vehicle " + std::string(req.matches[1])), req.path);
    auto v = hub_.UpdateVehicle(*id, std::move(body));
    if (!v.ok()) return Problem(res, v.error(), req.path);
    res.set_content(ToJson(*v).dump(), kJson);
  });
}

Result<int> HttpApi::Bind(const std::string& host, int port) {
  int bound = port == 0 ? server_->bind_to_any_port(host) : (server_->bind_to_port(host, port) ? port : -1);
  if (bound <= 0)
    return Error::Unavailable("cannot listen on " + host + ":" + std::to_string(port));
  return bound;
}

void HttpApi::Serve() { server_->listen_after_bind(); }

void HttpApi::Stop() { server_->stop(); }

}  // namespace pp
