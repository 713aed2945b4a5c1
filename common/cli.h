// Small pieces every program's main() needs, so that each says them once.
#pragma once

#include <csignal>
#include <optional>
#include <string>

namespace pp {

// The first line of a file (a password, a key, a port); nullopt if unreadable.
std::optional<std::string> ReadFirstLine(const std::string& path);

// Blocks SIGINT and SIGTERM in this thread and every thread started after
// (call it first in main), ignores SIGPIPE, and returns the set for one
// thread to sigwait() on: a clean stop happens where we choose, not inside
// whatever a signal interrupted.
sigset_t BlockStopSignals();

}  // namespace pp
