#include "common/time_format.h"

#include <gtest/gtest.h>

namespace pp {
namespace {

TEST(TimeFormat, ParsesUtcAndOffsets) {
  auto z = ParseRfc3339("2026-11-24T21:30:00Z");
  ASSERT_TRUE(z);
  EXPECT_EQ(ToUnixMillis(*z), 1795555800000);
  auto jakarta = ParseRfc3339("2026-11-25T04:30:00+07:00");
  ASSERT_TRUE(jakarta);
  EXPECT_EQ(*jakarta, *z);
  auto frac = ParseRfc3339("2026-11-24T21:30:00.1234Z");
  ASSERT_TRUE(frac);
  EXPECT_EQ(ToUnixMillis(*frac), 1795555800123);
}

TEST(TimeFormat, RejectsWhatIsNotRfc3339) {
  for (const char* bad : {"", "2026-11-24", "2026-11-24T21:30:00", "2026-02-30T00:00:00Z",
                          "2026-11-24T24:00:00Z", "2026-11-24T21:30:00Zjunk", "tomorrow",
                          "2026-11-24T21:30:00+7:00", "2026-11-24T21:30:00.Z"})
    EXPECT_FALSE(ParseRfc3339(bad)) << bad;
}

TEST(TimeFormat, FormatRoundTrips) {
  auto t = FromUnixMillis(1795555800123);
  EXPECT_EQ(FormatRfc3339(t), "2026-11-24T21:30:00.123Z");
  EXPECT_EQ(ParseRfc3339(FormatRfc3339(t)), t);
  EXPECT_EQ(FormatRfc3339(FromUnixMillis(1795555800000)), "2026-11-24T21:30:00Z");
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {
TEST(TimeFormat, Durations) {
  EXPECT_EQ(ParseDuration("250ms"), Duration(250));
  EXPECT_EQ(ParseDuration("30s"), Duration(30000));
  EXPECT_EQ(ParseDuration("5m"), Duration(300000));
  EXPECT_EQ(ParseDuration("2h"), Duration(7200000));
  for (const char* bad : {"", "5", "m", "-5m", "0s", "5 m", "5min", "1.5s"})
    EXPECT_FALSE(ParseDuration(bad)) << bad;
}
}  // namespace
}  // namespace pp
