// Structured logs: one JSON object a line on stderr, so that one grep (for a
// surplus id, a device, later a trace id) follows an operation across processes.
//
// Thread safety: Log() may be called from any thread; lines never interleave.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace pp {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

using LogField = std::pair<std::string_view, std::string>;

void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields = {});
void SetMinLogLevel(LogLevel level);

}  // namespace pp
