// How pp-sim's processes talk. The city runs as K "shard" processes (each
// a share of the kiosks and vans, with its own Paho client library: Paho
// serves all of a process's connections from one receive thread, which a
// thousand devices in one process turned into the simulator's bottleneck)
// and one "director" that set the city up and merges what they measured.
//
// Each shard has an inbox pipe, read only by it and written by the
// director and by every shard; and a status pipe to the director. Messages
// are single lines of JSON, each with "t" naming its kind:
//
//   director -> shard  {"t":"plan", ...}        its devices and settings (first line)
//                      {"t":"start","at_ns":N}  the rush begins at that steady-clock time
//                      {"t":"end"}              every shard is done: stop, report
//                      {"t":"interrupt"}        a stop signal reached the director
//   shard -> shard     {"t":"route", ...}       a van of yours won a post of my kitchen's:
//                                               the kitchen's place and handover code
//   shard -> director  {"t":"online","s":X}     all its devices' connects handled
//                      {"t":"progress",...}     counts so far, once a second
//                      {"t":"results",...}      its Tally (tally.h), last
//
// A line on an inbox has several writers, so it is written with one write(2)
// and kept under PIPE_BUF bytes (Linux: 4,096), which the kernel never
// interleaves; the plan is the one long line, written before any shard can
// write to another.
#pragma once

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace pp::sim {

// In a shard process: its inbox (read), its status pipe (write), and every
// shard's inbox (write), the inbox of shard j at kFirstPeerFd + j.
constexpr int kInboxFd = 3, kStatusFd = 4, kFirstPeerFd = 5;
constexpr int kMaxShards = 16;

// Writes `line` and a newline. Lines up to PIPE_BUF bytes go in one write(2)
// and never interleave with other writers'; longer ones loop (one writer
// only). An error (EPIPE: the reader is gone) names the fd.
Status WriteLine(int fd, std::string_view line);

// Splits what arrives on an fd into lines.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd) {}
  // The next whole line, blocking; nullopt at end of file or on an error.
  // (A reader is used through Next() or through ReadSome(), not both.)
  std::optional<std::string> Next();
  // One read(2) (call when poll(2) says readable); appends every line now
  // complete. False at end of file or on an error.
  bool ReadSome(std::vector<std::string>& lines);
  int fd() const { return fd_; }

 private:
  void TakeLines(std::vector<std::string>& lines);
  int fd_;
  std::string buffer_;                // a line not yet complete
  std::vector<std::string> pending_;  // Next(): lines read, pending_[next_] the next one
  size_t next_ = 0;
};

// The stop flag both kinds of process share: SIGINT/SIGTERM (or the
// director's "interrupt") end the rush early, and the results so far are
// still written.
class StopSignal {
 public:
  // Blocks SIGINT/SIGTERM in every thread started from here on and starts
  // the one thread that waits for them. Call first in main().
  static void Install();
  static void Raise();
  static bool raised();
  // Waits until `when` or a stop; false if stopped.
  static bool WaitUntil(std::chrono::steady_clock::time_point when);
};

}  // namespace pp::sim
