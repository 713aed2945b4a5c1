// How several simulator processes' tallies become the city's.
#include "edge-agent/sim/tally.h"

#include <gtest/gtest.h>

namespace pp::sim {
namespace {

using std::chrono::milliseconds;

Steady::time_point At(int ms) { return Steady::time_point(milliseconds(1'000'000 + ms)); }

TEST(TallyTest, OfferLatencyCrossesProcessesAndTheEarliestOfferCounts) {
  Tally kiosks, vans_a, vans_b;
  kiosks.posted_at[1] = At(0);
  kiosks.posted_at[2] = At(100);
  kiosks.counts["posts_accepted"] = 2;
  vans_a.first_offer[1] = At(30);
  vans_b.first_offer[1] = At(500);  // offered again after a decline, to a van elsewhere
  vans_b.first_offer[2] = At(120);
  vans_b.first_offer[3] = At(9);    // a post of a kiosk not in this city: no latency
  Tally city;
  for (const Tally* t : {&kiosks, &vans_a, &vans_b}) city.Merge(Tally::FromJson(t->ToJson()).value());
  EXPECT_EQ(city.OfferLatenciesMs(), (std::vector<double>{30, 20}));
  EXPECT_EQ(city.counts["posts_accepted"], 2);
}

TEST(TallyTest, SamplesAndCountsAddUpAndTheSpanRunsFromFirstPostToLastAccepted) {
  Tally a, b;
  a.claim_ms = {5, 7};
  b.claim_ms = {9};
  a.claim_wire_ms = {1};
  b.claim_wire_ms = {2};
  a.counts = {{"claims", 2}, {"conflicts", 1}};
  b.counts = {{"claims", 1}};
  a.posts_per_second = {{0, 3}, {1, 2}};
  b.posts_per_second = {{1, 4}};
  a.claim_ms_per_second = {{1, {5, 7}}};
  b.claim_ms_per_second = {{1, {9}}};
  a.accepted_posts = {"k-1 surplus 0"};
  b.accepted_posts = {"k-2 surplus 1"};
  a.first_post_sent = At(10);
  b.first_post_sent = At(0);
  a.last_post_accepted = At(2'000);
  b.last_post_accepted = At(1'500);
  a.posts_sent = 3, b.posts_sent = 4;
  a.mqtt_up = 10, b.mqtt_up = 5;
  a.cpu_seconds = 1.5, b.cpu_seconds = 0.5;

  Tally city = Tally::FromJson(a.ToJson()).value();
  city.Merge(Tally::FromJson(b.ToJson()).value());
  EXPECT_EQ(city.claim_ms, (std::vector<double>{5, 7, 9}));
  EXPECT_EQ(city.claim_wire_ms, (std::vector<double>{1, 2}));
  EXPECT_EQ(city.counts, (std::map<std::string, int>{{"claims", 3}, {"conflicts", 1}}));
  EXPECT_EQ(city.posts_per_second, (std::map<int64_t, int>{{0, 3}, {1, 6}}));
  EXPECT_EQ(city.claim_ms_per_second[1].size(), 3u);
  EXPECT_EQ(city.accepted_posts.size(), 2u);
  EXPECT_DOUBLE_EQ(city.PostSpanSeconds(), 2.0);
  EXPECT_EQ(city.posts_sent, 7);
  EXPECT_EQ(city.mqtt_up, 15u);
  EXPECT_DOUBLE_EQ(city.cpu_seconds, 2.0);
}

TEST(TallyTest, AMalformedTallyIsAnErrorNamingTheField) {
  auto j = Tally().ToJson();
  j.erase("claim_ms");
  auto t = Tally::FromJson(j);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("claim_ms"), std::string::npos) << t.error().message;
  j = Tally().ToJson();
  j["posted_at"] = {{"one", 2}};
  EXPECT_FALSE(Tally::FromJson(j).ok());
  EXPECT_FALSE(Tally::FromJson(nlohmann::json::array()).ok());
  // Nothing pressed: no span, no latencies.
  EXPECT_EQ(Tally().PostSpanSeconds(), 0);
  EXPECT_TRUE(Tally().OfferLatenciesMs().empty());
}

}  // namespace
}  // namespace pp::sim
