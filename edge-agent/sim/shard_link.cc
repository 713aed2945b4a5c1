#include "edge-agent/sim/shard_link.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "common/cli.h"

namespace pp::sim {

Status WriteLine(int fd, std::string_view line) {
  std::string buf;
  buf.reserve(line.size() + 1);
  buf.append(line).push_back('\n');
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::write(fd, buf.data() + done, buf.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Error::Unavailable("write to pipe fd " + std::to_string(fd) + ": " + strerror(errno));
    done += size_t(n);
  }
  return OkStatus();
}

void LineReader::TakeLines(std::vector<std::string>& lines) {
  size_t from = 0;
  for (size_t nl; (nl = buffer_.find('\n', from)) != std::string::npos; from = nl + 1)
    lines.push_back(buffer_.substr(from, nl - from));
  buffer_.erase(0, from);
}

bool LineReader::ReadSome(std::vector<std::string>& lines) {
  char chunk[65536];
  ssize_t n;
  do n = ::read(fd_, chunk, sizeof chunk);
  while (n < 0 && errno == EINTR);
  if (n <= 0) return false;
  buffer_.append(chunk, size_t(n));
  TakeLines(lines);
  return true;
}

std::optional<std::string> LineReader::Next() {
  while (next_ == pending_.size()) {
    pending_.clear();
    next_ = 0;
    if (!ReadSome(pending_)) return std::nullopt;
  }
  return std::move(pending_[next_++]);
}

namespace {
std::atomic<bool> g_stop{false};
std::mutex g_stop_mu;
std::condition_variable g_stop_cv;
}  // namespace

void StopSignal::Install() {
  // Signals go to one thread that only raises the flag; every other thread
  // (Paho's included) inherits the blocked mask.
  const sigset_t sigs = BlockStopSignals();
  std::thread([sigs] {
    int sig = 0;
    sigwait(&sigs, &sig);
    Raise();
  }).detach();
}

void StopSignal::Raise() {
  std::lock_guard lock(g_stop_mu);
  g_stop = true;
  g_stop_cv.notify_all();
}

bool StopSignal::raised() { return g_stop; }

bool StopSignal::WaitUntil(std::chrono::steady_clock::time_point when) {
  std::unique_lock lock(g_stop_mu);
  return !g_stop_cv.wait_until(lock, when, [] { return g_stop.load(); });
}

}  // namespace pp::sim
