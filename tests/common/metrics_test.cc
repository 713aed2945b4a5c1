// The Prometheus text rendering: families, labels and their escaping,
// cumulative histogram buckets, values read at scrape time.
#include "common/metrics.h"

#include <gtest/gtest.h>

namespace pp::metrics {
namespace {

TEST(Metrics, RendersCountersGaugesAndCallbacksWithEscapedLabels) {
  Registry r;
  r.GetCounter("jobs_total", "Jobs done.", {{"kind", "a\"b\\c\nd"}}).Inc(2);
  r.GetCounter("jobs_total", "Jobs done.", {{"kind", "a\"b\\c\nd"}}).Inc();  // the same series
  r.GetGauge("depth", "Queue depth.").Set(0.1);
  double v = 7;
  r.AddGaugeCallback("read_later", "Read when scraped.", {}, [&v] { return v; });
  v = 8;
  std::string text = r.Render();
  EXPECT_NE(text.find("# TYPE jobs_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("jobs_total{kind=\"a\\\"b\\\\c\\nd\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("depth 0.1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("read_later 8\n"), std::string::npos);
}

TEST(Metrics, HistogramBucketsAreCumulativeWithInfSumAndCount) {
  Registry r;
  auto& h = r.GetHistogram("latency_seconds", "Latency.", {0.1, 1}, {{"door", "http"}});
  for (double x : {0.05, 0.1, 0.5, 3.0}) h.Observe(x);
  std::string text = r.Render();
  EXPECT_NE(text.find("latency_seconds_bucket{door=\"http\",le=\"0.1\"} 2\n"), std::string::npos) << text;
  EXPECT_NE(text.find("latency_seconds_bucket{door=\"http\",le=\"1\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_bucket{door=\"http\",le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_sum{door=\"http\"} 3.65\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_count{door=\"http\"} 4\n"), std::string::npos);
}

TEST(Metrics, OneNameOneType) {
  Registry r;
  r.GetCounter("x_total", "x");
  EXPECT_THROW(r.GetGauge("x_total", "x"), std::logic_error);
}

TEST(Metrics, PercentileIsTheNearestRank) {
  std::vector<double> v;
  for (int i = 100; i >= 1; --i) v.push_back(i);  // 1..100, unsorted
  EXPECT_EQ(Percentile(v, 0.5), 50);
  EXPECT_EQ(Percentile(v, 0.95), 95);
  EXPECT_EQ(Percentile(v, 0.99), 99);
  EXPECT_EQ(Percentile(v, 1.0), 100);
  EXPECT_EQ(Percentile({7, 3}, 0.5), 3);
  EXPECT_EQ(Percentile({7, 3}, 0.51), 7);
  EXPECT_EQ(Percentile({}, 0.99), 0);
}

}  // namespace
}  // namespace pp::metrics
