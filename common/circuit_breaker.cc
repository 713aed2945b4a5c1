#include "common/circuit_breaker.h"

namespace pp {
namespace {

using S = CircuitBreaker::State;

}  // namespace

void CircuitBreaker::Apply(Event e) {
  struct Line {
    S from;
    Event event;
    S to;
  };
  // One line a transition; anything not listed leaves the state as it is.
  static constexpr Line kTable[] = {
      {S::kClosed,   Event::kFailureAtThreshold,    S::kOpen},
      {S::kOpen,     Event::kCoolDownElapsed,       S::kHalfOpen},
      {S::kHalfOpen, Event::kSuccess,               S::kClosed},
      {S::kHalfOpen, Event::kFailureBelowThreshold, S::kOpen},
      {S::kHalfOpen, Event::kFailureAtThreshold,    S::kOpen},
  };
  for (const auto& l : kTable) {
    if (l.from == state_ && l.event == e) {
      state_ = l.to;
      if (state_ == S::kOpen) opened_at_ = clock_.Now();
      if (state_ != S::kOpen) probe_in_flight_ = false;
      if (state_ == S::kClosed) failures_ = 0;
      return;
    }
  }
}

bool CircuitBreaker::Allow() {
  std::lock_guard lock(mu_);
  if (state_ == S::kOpen && clock_.Now() - opened_at_ >= options_.cool_down)
    Apply(Event::kCoolDownElapsed);
  switch (state_) {
    case S::kClosed: return true;
    case S::kOpen: return false;
    case S::kHalfOpen:
      if (probe_in_flight_) return false;
      probe_in_flight_ = true;
      return true;
  }
  return false;
}

void CircuitBreaker::RecordSuccess() {
  std::lock_guard lock(mu_);
  failures_ = 0;
  Apply(Event::kSuccess);
}

void CircuitBreaker::RecordFailure() {
  std::lock_guard lock(mu_);
  ++failures_;
  Apply(failures_ >= options_.failure_threshold ? Event::kFailureAtThreshold
                                                 : Event::kFailureBelowThreshold);
}

CircuitBreaker::State CircuitBreaker::state() const {
  std::lock_guard lock(mu_);
  return state_;
}

std::string_view CircuitBreaker::Name(State s) {
  switch (s) {
    case S::kClosed: return "closed";
    case S::kOpen: return "open";
    case S::kHalfOpen: return "half_open";
  }
  return "?";
}

}  // namespace pp
