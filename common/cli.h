// Small pieces every program's main() needs, so that each says them once.
#pragma once

#include <csignal>
#include <map>
#include <optional>
#include <string>

#include "common/error.h"

namespace pp {

// Prints "PROGRAM: MESSAGE" and the usage to stderr and exits with `code`
// (2: the command line was wrong; 1: the world was).
[[noreturn]] void DieWithUsage(const char* program, const char* usage, const std::string& message,
                               int code = 2);

// The "--name VALUE" pairs of argv[from..] as name -> VALUE (a later
// repeat wins). Anything else — a bare word, a flag without its value — is
// an error naming it.
Result<std::map<std::string, std::string>> ParseFlags(int argc, char** argv, int from);

// The first line of a file, or DieWithUsage naming the file.
std::string FirstLineOrDie(const char* program, const char* usage, const std::string& path);

// The first line of a file (a password, a key, a port); nullopt if unreadable.
std::optional<std::string> ReadFirstLine(const std::string& path);

// Blocks SIGINT and SIGTERM in this thread and every thread started after
// (call it first in main), ignores SIGPIPE, and returns the set for one
// thread to sigwait() on: a clean stop happens where we choose, not inside
// whatever a signal interrupted.
sigset_t BlockStopSignals();

}  // namespace pp
