#include "common/trace.h"

#include <gtest/gtest.h>

namespace pp {
namespace {

TEST(Trace, ValidatesW3CTraceparent) {
  EXPECT_TRUE(ValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  EXPECT_FALSE(ValidTraceparent(""));
  EXPECT_FALSE(ValidTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));  // version
  EXPECT_FALSE(ValidTraceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));  // zero trace
  EXPECT_FALSE(ValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));  // zero span
  EXPECT_FALSE(ValidTraceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));  // upper case
  EXPECT_FALSE(ValidTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"));
}

TEST(Trace, ChildrenKeepTheTraceAndGetANewSpan) {
  std::string root = NewTraceparent();
  ASSERT_TRUE(ValidTraceparent(root));
  std::string child = ChildTraceparent(root);
  ASSERT_TRUE(ValidTraceparent(child));
  EXPECT_EQ(TraceId(child), TraceId(root));
  EXPECT_NE(child, root);
  EXPECT_NE(TraceId(NewTraceparent()), TraceId(root));
  EXPECT_TRUE(ValidTraceparent(ChildTraceparent("garbage")));  // a new trace
  EXPECT_EQ(TraceId("garbage"), "");
}

}  // namespace
}  // namespace pp
