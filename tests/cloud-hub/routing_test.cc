// Travel times from an OSRM-compatible service on loopback that can be told
// to fail, hang or answer slowly; the circuit breaker and the fallback.
#include "cloud-hub/matching/routing.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace pp {
namespace {

using Mode = test::FakeHttpServer::Mode;

// Answers a /table request with 100 s per source, and remembers the query.
std::string TableAnswer(const std::string& path, const std::string&) {
  auto q = path.find("sources=");
  size_t n = 1;
  for (size_t i = q; i < path.size() && path[i] != '&'; ++i) n += path[i] == ';';
  nlohmann::json durations = nlohmann::json::array();
  for (size_t i = 0; i < n; ++i) durations.push_back({100.0 + double(i)});
  return nlohmann::json{{"code", "Ok"}, {"durations", durations}}.dump();
}

class RoutingTest : public ::testing::Test {
 protected:
  RoutingTest()
      : server_(TableAnswer),
        travel_(clock_, TravelModel{},
                std::make_unique<OsrmClient>(server_.url(), std::chrono::milliseconds(200)),
                {3, std::chrono::seconds(30)}) {}

  TravelTimes::Answer Ask() {
    return travel_.For({{51.51, -0.10}, {51.52, -0.11}}, {1.0, 2.0}, {51.50, -0.12});
  }

  SimulatedClock clock_{FromUnixMillis(0)};
  test::FakeHttpServer server_;
  TravelTimes travel_;
};

TEST_F(RoutingTest, AsksForAllCandidatesInOneTableRequest) {
  auto a = Ask();
  EXPECT_TRUE(a.routed);
  EXPECT_EQ(a.seconds, (std::vector<double>{100, 101}));
  EXPECT_EQ(server_.requests(), 1);
}

TEST_F(RoutingTest, FailuresOpenTheBreakerAndTheModelAnswers) {
  server_.set_mode(Mode::kFail);
  TravelModel model;
  for (int i = 0; i < 3; ++i) {
    auto a = Ask();
    EXPECT_FALSE(a.routed);
    EXPECT_DOUBLE_EQ(a.seconds[0], model.SecondsFor(1.0));
  }
  EXPECT_EQ(travel_.breaker_state(), CircuitBreaker::State::kOpen);
  EXPECT_EQ(server_.requests(), 3);
  // Open: the service is not asked at all.
  server_.set_mode(Mode::kOk);
  EXPECT_FALSE(Ask().routed);
  EXPECT_EQ(server_.requests(), 3);
  // After the cool-down one probe goes through; success closes the breaker.
  clock_.Advance(std::chrono::seconds(30));
  EXPECT_TRUE(Ask().routed);
  EXPECT_EQ(travel_.breaker_state(), CircuitBreaker::State::kClosed);
}

TEST_F(RoutingTest, AHangingServiceCostsOnlyTheDeadline) {
  server_.set_mode(Mode::kHang);
  auto t0 = std::chrono::steady_clock::now();
  auto a = Ask();
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_FALSE(a.routed);
  EXPECT_LT(took, std::chrono::seconds(3)) << "the 200 ms deadline must cut the wait";
  Ask();
  Ask();
  EXPECT_EQ(travel_.breaker_state(), CircuitBreaker::State::kOpen);
}

TEST_F(RoutingTest, SlowAnswersPastTheDeadlineFallBackAndWithinItAreUsed) {
  server_.set_mode(Mode::kSlow, std::chrono::milliseconds(1500));
  EXPECT_FALSE(Ask().routed);
  server_.set_mode(Mode::kSlow, std::chrono::milliseconds(20));
  EXPECT_TRUE(Ask().routed);
}

TEST(Routing, MalformedAnswersAreFailures) {
  test::FakeHttpServer bad([](const std::string&, const std::string&) {
    return std::string("{\"code\":\"Ok\",\"durations\":[[\"soon\"]]}");
  });
  OsrmClient client(bad.url(), std::chrono::milliseconds(500));
  auto r = client.Seconds({{51.5, -0.1}}, {51.6, -0.1});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Code::kUnavailable);
}

}  // namespace
}  // namespace pp
