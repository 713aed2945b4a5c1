// RFC 3339 timestamps, the only time format on the wire.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/clock.h"

namespace pp {

// Accepts "2026-11-24T21:30:00Z", fractional seconds (truncated to ms) and
// numeric offsets ("+07:00"). Returns nullopt for anything else, including
// impossible dates (2026-02-30) and a missing zone.
std::optional<Timestamp> ParseRfc3339(std::string_view text);

// "250ms", "30s", "5m", "2h" (a positive integer and a unit). nullopt otherwise.
std::optional<Duration> ParseDuration(std::string_view text);

// UTC with a 'Z'; milliseconds only when non-zero.
std::string FormatRfc3339(Timestamp t);

}  // namespace pp
