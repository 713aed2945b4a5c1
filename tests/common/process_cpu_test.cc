#include "common/process_cpu.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <thread>

#include "tests/support/test_support.h"

namespace pp {
namespace {

TEST(ProcessCpu, ThisProcessSeenBothWaysAgreesAndGrowsWithWork) {
  const double before = SelfCpuSeconds();
  volatile double x = 0;
  // Burn CPU until 50 ms of it were counted (on a busy machine that takes
  // longer than 50 ms of wall time; 10 s is the give-up).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (SelfCpuSeconds() - before < 0.05 && std::chrono::steady_clock::now() < give_up)
    for (int i = 0; i < 100000; ++i) x = x + 1;
  EXPECT_GE(SelfCpuSeconds() - before, 0.05);
  auto via_proc = ProcessCpuSeconds(getpid());
  ASSERT_TRUE(via_proc.has_value());
  // /proc counts in clock ticks (10 ms); getrusage in microseconds.
  EXPECT_NEAR(*via_proc, SelfCpuSeconds(), 0.05);
}

TEST(ProcessCpu, AGoneProcessOrABadPidFileIsUnknown) {
  EXPECT_FALSE(ProcessCpuSeconds(-1).has_value());
  test::TempDir dir;
  EXPECT_FALSE(ProcessCpuSecondsFromPidFile(dir.file("missing.pid")).has_value());
  std::ofstream(dir.file("bad.pid")) << "not a pid\n";
  EXPECT_FALSE(ProcessCpuSecondsFromPidFile(dir.file("bad.pid")).has_value());
  std::ofstream(dir.file("me.pid")) << getpid() << "\n";
  EXPECT_TRUE(ProcessCpuSecondsFromPidFile(dir.file("me.pid")).has_value());
}

TEST(ProcessCpu, ReadFromAMetricsPage) {
  const std::string page =
      "# HELP process_cpu_seconds_total CPU seconds\n# TYPE process_cpu_seconds_total counter\n"
      "other_process_cpu_seconds_total 9\nprocess_cpu_seconds_total 12.5\nup 1\n";
  EXPECT_EQ(CpuSecondsFromMetrics(page), 12.5);
  EXPECT_EQ(CpuSecondsFromMetrics("process_cpu_seconds_total 3\n"), 3.0) << "first line";
  EXPECT_FALSE(CpuSecondsFromMetrics("up 1\n").has_value());
  EXPECT_FALSE(CpuSecondsFromMetrics("process_cpu_seconds_total x\n").has_value());
}

TEST(ProcessCpu, AThreadNamesItselfAndLongNamesAreCut) {
  auto comm_of_a_thread_named = [](const std::string& name) {
    std::string comm;
    std::thread([&] {
      NameThisThread(name);
      std::ifstream("/proc/self/task/" + std::to_string(gettid()) + "/comm") >> comm;
    }).join();
    return comm;
  };
  EXPECT_EQ(comm_of_a_thread_named("store-writer"), "store-writer");
  EXPECT_EQ(comm_of_a_thread_named("a-name-longer-than-fifteen"), "a-name-longer-t");
}

TEST(ProcessCpu, ThreadsAreCountedByNameAndOnlyTheBusyOneGrows) {
  // Two threads named alike are summed; an idle one by another name stays
  // where it was while the busy pair burns 60 ms (ticks are 10 ms).
  std::atomic<bool> stop{false}, idle_named{false};
  std::atomic<int> busy_named{0};
  auto burn = [&] {
    NameThisThread("pp-test-busy");
    busy_named++;
    volatile double x = 0;
    while (!stop) x = x + 1;
  };
  std::thread idle([&] {
    NameThisThread("pp-test-idle");
    idle_named = true;
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  });
  std::thread a(burn), b(burn);
  while (busy_named < 2 || !idle_named) std::this_thread::yield();
  const auto before = SelfCpuSecondsByThreadName();
  ASSERT_EQ(before.count("pp-test-busy"), 1u);
  ASSERT_EQ(before.count("pp-test-idle"), 1u);
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto after = before;
  while (after["pp-test-busy"] - before.at("pp-test-busy") < 0.06 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = SelfCpuSecondsByThreadName();
  }
  stop = true;
  a.join(), b.join(), idle.join();
  EXPECT_GE(after["pp-test-busy"] - before.at("pp-test-busy"), 0.06);
  EXPECT_LT(after["pp-test-idle"] - before.at("pp-test-idle"), 0.03);
}

}  // namespace
}  // namespace pp
