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

Result<std::map<std::string, std::string>> ParseFlags(int argc, char** argv, int from) {
  std::map<std::string, std::string> out;
  for (int i = from; i < argc; ++i) {
    std::string f = argv[i];
    if (f.rfind("--", 0) != 0 || f.size() == 2 || i + 1 >= argc)
      return Error::Invalid("expected --flag VALUE, got " + f);
    out[f.substr(2)] = argv[++i];
  }
  return out;
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
