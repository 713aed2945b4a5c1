#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/time_format.h"

namespace pp {
namespace {
std::atomic<int> g_min_level{static_cast<int>(LogLevel::kInfo)};
std::mutex g_mu;
constexpr std::string_view kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

void SetMinLogLevel(LogLevel level) { g_min_level = static_cast<int>(level); }

void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) {
  if (static_cast<int>(level) < g_min_level) return;
  nlohmann::json j{{"ts", FormatRfc3339(SystemClock::Instance().Now())},
                   {"level", kNames[static_cast<int>(level)]},
                   {"event", event}};
  for (const auto& [k, v] : fields) j[std::string(k)] = v;
  // Replace invalid UTF-8 rather than throw: log lines may quote client input.
  std::string line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line += '\n';
  std::lock_guard lock(g_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace pp
