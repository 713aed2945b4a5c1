#include "common/process_cpu.h"

#include <cstdlib>

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace pp {

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

namespace {

// utime + stime of one line of /proc/.../stat, in seconds.
std::optional<double> CpuSecondsOfStatLine(const std::string& line) {
  auto close = line.rfind(')');  // the command name may hold spaces and ')'
  if (close == std::string::npos || close + 2 > line.size()) return std::nullopt;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  double ticks = 0;
  int fields = 0;
  for (int i = 3; rest >> field && i <= 15; ++i)  // fields 14 and 15: utime, stime
    if (i == 14 || i == 15) ticks += std::stod(field), ++fields;
  if (fields != 2) return std::nullopt;
  return ticks / double(sysconf(_SC_CLK_TCK));
}

}  // namespace

std::optional<double> ProcessCpuSeconds(long pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return std::nullopt;
  return CpuSecondsOfStatLine(line);
}

std::map<std::string, double> SelfCpuSecondsByThreadName() {
  std::map<std::string, double> by_name;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    std::ifstream stat(task.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;  // the thread ended meanwhile
    const auto open = line.find('('), close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos || close < open) continue;
    if (auto s = CpuSecondsOfStatLine(line)) by_name[line.substr(open + 1, close - open - 1)] += *s;
  }
  return by_name;
}

std::optional<double> ProcessCpuSecondsFromPidFile(const std::string& pid_file) {
  std::ifstream in(pid_file);
  long pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  return ProcessCpuSeconds(pid);
}

std::optional<double> CpuSecondsFromMetrics(const std::string& metrics_text) {
  const std::string name = "process_cpu_seconds_total ";
  for (size_t at = metrics_text.find(name); at != std::string::npos; at = metrics_text.find(name, at + 1)) {
    if (at != 0 && metrics_text[at - 1] != '\n') continue;  // a sample line, not a word in # HELP
    const char* begin = metrics_text.c_str() + at + name.size();
    char* end = nullptr;
    double v = std::strtod(begin, &end);
    if (end == begin) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

void NameThisThread(const std::string& name) {
  pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
}

}  // namespace pp
