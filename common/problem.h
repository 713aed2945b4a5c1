// Errors as HTTP answers: the status for each error code, and RFC 9457
// problem details with our extensions: `code` (machine-readable), `errors`
// (one per bad field) and `current` (the current state, on 409). Used by the
// hub's API and the agent's local API alike.
#pragma once

#include <string>

#include "common/error.h"

namespace pp {

int HttpStatusOf(const Error& e);
const char* HttpTitle(int status);
// The problem document, as JSON text.
std::string ProblemJson(int status, const Error& e, const std::string& instance);

}  // namespace pp
