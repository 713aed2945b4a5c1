#include "common/problem.h"

#include <nlohmann/json.hpp>

namespace pp {

int HttpStatusOf(const Error& e) {
  switch (e.code) {
    case Code::kInvalidArgument: return e.fields.empty() ? 400 : 422;
    case Code::kNotFound: return 404;
    case Code::kAborted: return 409;
    case Code::kAlreadyExists: return 409;
    case Code::kFailedPrecondition: return 422;
    case Code::kResourceExhausted: return 413;
    case Code::kUnauthenticated: return 401;
    case Code::kPermissionDenied: return 403;
    case Code::kUnavailable: return 503;
    case Code::kOk:
    case Code::kInternal: return 500;
  }
  return 500;
}

const char* HttpTitle(int status) {
  switch (status) {
    case 400: return "Bad request";
    case 404: return "Not found";
    case 409: return "Conflict";
    case 413: return "Content too large";
    case 415: return "Unsupported media type";
    case 422: return "Unprocessable content";
    case 431: return "Request header fields too large";
    case 501: return "Not implemented";
    case 503: return "Service unavailable";
    default: return "Internal error";
  }
}

// RFC 9457 problem details, with our extensions: `code` (machine-readable),
// `errors` (one per bad field) and `current` (the current state, on 409).
std::string ProblemJson(int status, const Error& e, const std::string& instance) {
  nlohmann::json j{{"type", "urn:pahlawan-pangan:problem:" + std::string(CodeName(e.code))},
                   {"title", HttpTitle(status)},
                   {"status", status},
                   {"detail", e.message},
                   {"code", CodeName(e.code)},
                   {"instance", instance}};
  if (!e.fields.empty()) {
    j["errors"] = nlohmann::json::array();
    for (const auto& f : e.fields) j["errors"].push_back({{"field", f.field}, {"reason", f.reason}});
  }
  if (!e.context_json.empty()) j["current"] = nlohmann::json::parse(e.context_json, nullptr, false);
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace pp
