// A small metrics registry that renders the Prometheus text format (0.0.4):
// counters, gauges and histograms with labels, and values read at scrape
// time from callbacks (for state owned elsewhere: queues, breakers).
//
// Names follow Prometheus conventions (checked by `promtool check metrics`
// in tests): base units (seconds, bytes), counters end in _total.
//
// Thread safety: all methods may be called from any thread. Metric objects
// returned by reference live as long as the registry.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace pp::metrics {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void Inc(double by = 1) { v_.fetch_add(by, std::memory_order_relaxed); }
  double Value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0};
};

class Gauge {
 public:
  void Set(double v) { v_.store(v, std::memory_order_relaxed); }
  double Value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0};
};

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void Observe(double v);
  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound, then +Inf
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Read() const;

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
};

// Latency buckets in seconds, 1 ms to 10 s.
const std::vector<double>& LatencyBuckets();

class Registry {
 public:
  Counter& GetCounter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& GetGauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& GetHistogram(const std::string& name, const std::string& help,
                          const std::vector<double>& bounds, const Labels& labels = {});
  // Read when scraped.
  void AddCounterCallback(const std::string& name, const std::string& help, const Labels& labels,
                          std::function<double()> read);
  void AddGaugeCallback(const std::string& name, const std::string& help, const Labels& labels,
                        std::function<double()> read);

  std::string Render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Family {
    Type type;
    std::string help;
    // By rendered label set ("" or {k="v",...}).
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
    std::map<std::string, std::function<double()>> callbacks;
  };
  Family& FamilyFor(const std::string& name, Type type, const std::string& help);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

// {k="v",...} with the text format's escaping; "" for no labels.
std::string RenderLabels(const Labels& labels);

// The nearest-rank p-quantile (0 < p <= 1) of `samples`; 0 when empty.
// For benchmarks and the simulator, which keep every sample.
double Percentile(std::vector<double> samples, double p);

}  // namespace pp::metrics
