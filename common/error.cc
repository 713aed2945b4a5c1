#include "common/error.h"

namespace pp {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid_argument";
    case Code::kNotFound: return "not_found";
    case Code::kAlreadyExists: return "already_exists";
    case Code::kFailedPrecondition: return "failed_precondition";
    case Code::kAborted: return "conflict";
    case Code::kResourceExhausted: return "resource_exhausted";
    case Code::kUnavailable: return "unavailable";
    case Code::kUnauthenticated: return "unauthenticated";
    case Code::kPermissionDenied: return "permission_denied";
    case Code::kInternal: return "internal";
  }
  return "unknown";
}

std::string Error::ToString() const {
  std::string out(CodeName(code));
  out += ": ";
  out += message;
  if (!fields.empty()) {
    out += " (";
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i) out += "; ";
      out += fields[i].field + ": " + fields[i].reason;
    }
    out += ")";
  }
  return out;
}

}  // namespace pp
