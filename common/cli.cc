#include "common/cli.h"

#include <pthread.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace pp {

std::optional<std::string> ReadFirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

void DieWithUsage(const char* program, const char* usage, const std::string& message, int code) {
  std::fprintf(stderr, "%s: %s\nusage: %s\n", program, message.c_str(), usage);
  std::exit(code);
}

std::string FirstLineOrDie(const char* program, const char* usage, const std::string& path) {
  auto line = ReadFirstLine(path);
  if (!line) DieWithUsage(program, usage, "cannot read " + path, 1);
  return *line;
}

sigset_t BlockStopSignals() {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  return stop;
}

}  // namespace pp
