#include "common/circuit_breaker.h"

#include <gtest/gtest.h>

namespace pp {
namespace {

using S = CircuitBreaker::State;

TEST(CircuitBreaker, OpensAfterThresholdProbesAfterCoolDownAndCloses) {
  SimulatedClock clock(FromUnixMillis(0));
  CircuitBreaker b(clock, {3, std::chrono::seconds(30)});
  EXPECT_TRUE(b.Allow());
  b.RecordFailure();
  b.RecordFailure();
  EXPECT_EQ(b.state(), S::kClosed);
  b.RecordSuccess();  // resets the count
  b.RecordFailure();
  b.RecordFailure();
  EXPECT_EQ(b.state(), S::kClosed);
  b.RecordFailure();
  EXPECT_EQ(b.state(), S::kOpen);
  EXPECT_FALSE(b.Allow());
  clock.Advance(std::chrono::seconds(29));
  EXPECT_FALSE(b.Allow());
  clock.Advance(std::chrono::seconds(1));
  EXPECT_TRUE(b.Allow());  // the probe
  EXPECT_EQ(b.state(), S::kHalfOpen);
  EXPECT_FALSE(b.Allow());  // one probe at a time
  b.RecordFailure();
  EXPECT_EQ(b.state(), S::kOpen);
  clock.Advance(std::chrono::seconds(30));
  EXPECT_TRUE(b.Allow());
  b.RecordSuccess();
  EXPECT_EQ(b.state(), S::kClosed);
  EXPECT_TRUE(b.Allow());
  EXPECT_TRUE(b.Allow());
}

}  // namespace
}  // namespace pp
