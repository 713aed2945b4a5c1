// The one error type of the project, and Result<T>, a value or an Error.
//
// Codes follow absl::StatusCode's meanings so that every adapter can map them
// the same way (HTTP status, MQTT outcome code):
//   kInvalidArgument    the request itself is wrong (bad field, bad syntax)
//   kNotFound           the object named does not exist
//   kAlreadyExists      a unique thing was created twice
//   kFailedPrecondition the request is well-formed but the system is not in a
//                       state that allows it (e.g. idempotency key reused
//                       with a different request)
//   kAborted            an optimistic-lock race was lost; `context` holds the
//                       current state so the caller can show the truth
//   kResourceExhausted  a size or rate limit was hit
//   kUnavailable        transient: retry with backoff (store down, deadlock)
//   kInternal           a bug or an unexpected failure of a dependency
//
// Thread safety: plain values; safe to copy between threads.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace pp {

enum class Code {
  kOk = 0,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kAborted,
  kResourceExhausted,
  kUnavailable,
  kUnauthenticated,
  kPermissionDenied,
  kInternal,
};

std::string_view CodeName(Code code);

// One invalid field of a request: `field` is a JSON pointer-like path
// ("quantity_kg", "allergens/2"), `reason` a sentence for a person.
struct FieldError {
  std::string field;
  std::string reason;
};

struct [[nodiscard]] Error {
  Code code = Code::kInternal;
  std::string message;
  std::vector<FieldError> fields;
  // Serialized JSON object with machine-readable context (for kAborted the
  // current state of the object). Empty when there is none.
  std::string context_json;

  static Error Invalid(std::string msg, std::vector<FieldError> fields = {}) {
    return Error{Code::kInvalidArgument, std::move(msg), std::move(fields), {}};
  }
  static Error NotFound(std::string msg) { return Error{Code::kNotFound, std::move(msg), {}, {}}; }
  static Error Internal(std::string msg) { return Error{Code::kInternal, std::move(msg), {}, {}}; }
  static Error Unavailable(std::string msg) {
    return Error{Code::kUnavailable, std::move(msg), {}, {}};
  }
  static Error Precondition(std::string msg) {
    return Error{Code::kFailedPrecondition, std::move(msg), {}, {}};
  }
  static Error Conflict(std::string msg, std::string context_json) {
    return Error{Code::kAborted, std::move(msg), {}, std::move(context_json)};
  }

  // "kInvalidArgument: bad request (quantity_kg: must be > 0)"
  std::string ToString() const;
};

// A value or an Error; never both, never neither.
// Result<void>: success carries nothing (Status, below).
struct Ok {};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}           // NOLINT(implicit)
  Result(Error error) : v_(std::move(error)) {}       // NOLINT(implicit)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(v_); }
  const T& value() const& { assert(ok()); return std::get<0>(v_); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(v_); }
  Error&& take_error() { assert(!ok()); return std::get<1>(std::move(v_)); }
  // The outcome without the value.
  Result<Ok> status() const;

 private:
  std::variant<T, Error> v_;
};

using Status = Result<Ok>;
inline Status OkStatus() { return Ok{}; }

template <typename T>
Status Result<T>::status() const {
  if (ok()) return OkStatus();
  return error();
}

}  // namespace pp

// Propagates an error from an expression yielding Result<...>.
#define PP_CONCAT_INNER(a, b) a##b
#define PP_CONCAT(a, b) PP_CONCAT_INNER(a, b)
#define PP_RETURN_IF_ERROR(expr)                              \
  do {                                                        \
    auto pp_status_ = (expr);                                 \
    if (!pp_status_.ok()) return pp_status_.take_error();     \
  } while (0)
#define PP_ASSIGN_OR_RETURN(lhs, expr) PP_ASSIGN_OR_RETURN_IMPL(PP_CONCAT(pp_r_, __LINE__), lhs, expr)
#define PP_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.take_error();        \
  lhs = std::move(tmp).value()
