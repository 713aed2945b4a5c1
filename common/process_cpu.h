// CPU time used by a process (user + system), for benchmarks and the hub's
// process_cpu_seconds_total: what a run cost, not just how long it took.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace pp {

// This process, all threads.
double SelfCpuSeconds();
// Another process on this machine, from /proc/PID/stat; nullopt if gone.
std::optional<double> ProcessCpuSeconds(long pid);
// The process whose pid is the first line of `pid_file` (mosquitto.pid).
std::optional<double> ProcessCpuSecondsFromPidFile(const std::string& pid_file);
// This process's threads by name (/proc/self/task/*/stat): CPU seconds of
// all threads sharing a name, summed. A thread that ended is not counted.
std::map<std::string, double> SelfCpuSecondsByThreadName();
// A process's own report: process_cpu_seconds_total in the text of its
// Prometheus /metrics page (pp-hub's); nullopt if absent or not a number.
std::optional<double> CpuSecondsFromMetrics(const std::string& metrics_text);

// Names the calling thread (at most 15 characters are kept), so that
// `top -H`, perf and /proc/PID/task/*/comm tell which of a process's
// threads costs what.
void NameThisThread(const std::string& name);

}  // namespace pp
