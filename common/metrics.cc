#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace pp::metrics {
namespace {

std::string Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  // The shortest form that reads back as the same double (0.1, not 0.10000000000000001).
  char buf[64];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string Escape(const std::string& s, bool in_help) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '"' && !in_help) out += "\\\"";
    else out += c;
  }
  return out;
}

// Adds one label to a rendered set: {a="b"} + le="0.1" -> {a="b",le="0.1"}.
std::string WithLabel(const std::string& rendered, const std::string& label) {
  if (rendered.empty()) return "{" + label + "}";
  return rendered.substr(0, rendered.size() - 1) + "," + label + "}";
}

}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i] = 0;
}

void Histogram::Observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot s;
  s.bounds = bounds_;
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  s.count = running;
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

const std::vector<double>& LatencyBuckets() {
  static const std::vector<double> b{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,  0.5,    0.8,   1,    1.5,   2.5,  5, 10};
  return b;
}

std::string RenderLabels(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) out += ",";
    out += labels[i].first + "=\"" + Escape(labels[i].second, false) + "\"";
  }
  return out + "}";
}

Registry::Family& Registry::FamilyFor(const std::string& name, Type type, const std::string& help) {
  auto [it, fresh] = families_.try_emplace(name);
  if (fresh) {
    it->second.type = type;
    it->second.help = help;
  } else if (it->second.type != type) {
    throw std::logic_error("metric " + name + " registered with two types");  // our bug
  }
  return it->second;
}

Counter& Registry::GetCounter(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = FamilyFor(name, Type::kCounter, help).counters[RenderLabels(labels)];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& Registry::GetGauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = FamilyFor(name, Type::kGauge, help).gauges[RenderLabels(labels)];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& Registry::GetHistogram(const std::string& name, const std::string& help,
                                  const std::vector<double>& bounds, const Labels& labels) {
  std::lock_guard lock(mu_);
  auto& slot = FamilyFor(name, Type::kHistogram, help).histograms[RenderLabels(labels)];
  if (!slot) slot = std::make_unique<Histogram>(bounds);
  return *slot;
}

void Registry::AddCounterCallback(const std::string& name, const std::string& help,
                                  const Labels& labels, std::function<double()> read) {
  std::lock_guard lock(mu_);
  FamilyFor(name, Type::kCounter, help).callbacks[RenderLabels(labels)] = std::move(read);
}

void Registry::AddGaugeCallback(const std::string& name, const std::string& help,
                                const Labels& labels, std::function<double()> read) {
  std::lock_guard lock(mu_);
  FamilyFor(name, Type::kGauge, help).callbacks[RenderLabels(labels)] = std::move(read);
}

std::string Registry::Render() const {
  std::lock_guard lock(mu_);
  std::string out;
  for (const auto& [name, f] : families_) {
    const char* type = f.type == Type::kCounter ? "counter" : f.type == Type::kGauge ? "gauge" : "histogram";
    out += "# HELP " + name + " " + Escape(f.help, true) + "\n";
    out += "# TYPE " + name + " " + type + "\n";
    for (const auto& [labels, c] : f.counters) out += name + labels + " " + Number(c->Value()) + "\n";
    for (const auto& [labels, g] : f.gauges) out += name + labels + " " + Number(g->Value()) + "\n";
    for (const auto& [labels, read] : f.callbacks) out += name + labels + " " + Number(read()) + "\n";
    for (const auto& [labels, h] : f.histograms) {
      auto s = h->Read();
      for (size_t i = 0; i < s.bounds.size(); ++i)
        out += name + "_bucket" + WithLabel(labels, "le=\"" + Number(s.bounds[i]) + "\"") + " " +
               std::to_string(s.cumulative[i]) + "\n";
      out += name + "_bucket" + WithLabel(labels, "le=\"+Inf\"") + " " + std::to_string(s.count) + "\n";
      out += name + "_sum" + labels + " " + Number(s.sum) + "\n";
      out += name + "_count" + labels + " " + std::to_string(s.count) + "\n";
    }
  }
  return out;
}

double Percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0;
  // Rank ceil(p * n), 1-based: the smallest sample with at least p of them at or below it.
  size_t rank = size_t(std::ceil(p * double(samples.size())));
  size_t i = std::min(samples.size(), std::max<size_t>(rank, 1)) - 1;
  std::nth_element(samples.begin(), samples.begin() + long(i), samples.end());
  return samples[i];
}

}  // namespace pp::metrics
