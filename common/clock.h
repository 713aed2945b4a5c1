// The one source of time. Production code asks a Clock; tests hand in a
// SimulatedClock and move it forward, so no test sleeps to wait for a timeout.
//
// Now() is wall-clock time (UTC, milliseconds) for what people see and what
// is stored; Monotonic() is for measuring intervals and must never go back.
//
// Thread safety: all implementations are safe for concurrent use.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace pp {

using Timestamp = std::chrono::sys_time<std::chrono::milliseconds>;
using Duration = std::chrono::milliseconds;

inline int64_t ToUnixMillis(Timestamp t) { return t.time_since_epoch().count(); }
inline Timestamp FromUnixMillis(int64_t ms) { return Timestamp(Duration(ms)); }

class Clock {
 public:
  virtual ~Clock() = default;
  virtual Timestamp Now() const = 0;
  virtual std::chrono::steady_clock::time_point Monotonic() const = 0;
};

class SystemClock final : public Clock {
 public:
  Timestamp Now() const override;
  std::chrono::steady_clock::time_point Monotonic() const override;
  static SystemClock& Instance();
};

// Starts at a fixed instant; only Advance()/Set() move it.
class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(Timestamp start) : now_ms_(ToUnixMillis(start)) {}
  Timestamp Now() const override { return FromUnixMillis(now_ms_.load()); }
  std::chrono::steady_clock::time_point Monotonic() const override {
    return std::chrono::steady_clock::time_point(Duration(now_ms_.load()));
  }
  void Advance(Duration d) { now_ms_ += d.count(); }
  void Set(Timestamp t) { now_ms_ = ToUnixMillis(t); }

 private:
  std::atomic<int64_t> now_ms_;
};

// Another clock, shifted: a device whose clock is wrong (pp-agent's
// --clock-skew shows that nothing the hub decides depends on it).
class OffsetClock final : public Clock {
 public:
  OffsetClock(const Clock& base, Duration offset) : base_(base), offset_(offset) {}
  Timestamp Now() const override { return base_.Now() + offset_; }
  std::chrono::steady_clock::time_point Monotonic() const override { return base_.Monotonic(); }

 private:
  const Clock& base_;
  const Duration offset_;
};

}  // namespace pp
