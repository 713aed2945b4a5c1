// A circuit breaker as a transition table (circuit_breaker.cc):
//   closed --failure x N--> open --cool-down elapsed--> half_open
//   half_open --probe succeeds--> closed; --probe fails--> open
// While open, callers skip the protected call and use their fallback.
//
// Thread safety: all methods are safe for concurrent use.
#pragma once

#include <mutex>
#include <string_view>

#include "common/clock.h"

namespace pp {

class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };
  struct Options {
    int failure_threshold = 3;          // consecutive failures that open it
    Duration cool_down{std::chrono::seconds(30)};
  };

  CircuitBreaker(const Clock& clock, Options options) : clock_(clock), options_(options) {}

  // May the protected call be tried now? In half-open, only one caller at a
  // time gets true (the probe).
  bool Allow();
  void RecordSuccess();
  void RecordFailure();
  State state() const;
  static std::string_view Name(State s);

 private:
  enum class Event { kSuccess, kFailureBelowThreshold, kFailureAtThreshold, kCoolDownElapsed };
  void Apply(Event e);  // requires mu_

  const Clock& clock_;
  const Options options_;
  mutable std::mutex mu_;
  State state_ = State::kClosed;  // guarded by mu_
  int failures_ = 0;              // guarded by mu_
  bool probe_in_flight_ = false;  // guarded by mu_
  Timestamp opened_at_{};         // guarded by mu_
};

}  // namespace pp
