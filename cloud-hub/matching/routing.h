// Travel times from candidate vehicles to a post.
//
// OsrmClient asks an OSRM-compatible routing service (/table/v1/driving/...)
// for all candidates in one request, within a deadline. TravelTimes wraps it
// in a circuit breaker and falls back to the haversine model (straight line
// x detour factor / average speed) when the service is slow, failing, open
// or not configured (the default).
//
// Thread safety: TravelTimes and OsrmClient are safe for concurrent use.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/circuit_breaker.h"
#include "common/error.h"
#include "common/geo.h"

namespace pp {

class TravelTimeSource {
 public:
  virtual ~TravelTimeSource() = default;
  // Seconds from each point of `from` to `to`, in order.
  virtual Result<std::vector<double>> Seconds(const std::vector<GeoPoint>& from,
                                              const GeoPoint& to) = 0;
};

class OsrmClient final : public TravelTimeSource {
 public:
  // base_url: "http://host:port"; deadline: for connecting and for the answer.
  OsrmClient(std::string base_url, Duration deadline);
  Result<std::vector<double>> Seconds(const std::vector<GeoPoint>& from,
                                      const GeoPoint& to) override;

 private:
  const std::string base_url_;
  const Duration deadline_;
};

class TravelTimes {
 public:
  struct Answer {
    std::vector<double> seconds;
    bool routed = false;  // false: the haversine model answered
  };

  // `routing` may be null: the model always answers.
  TravelTimes(const Clock& clock, TravelModel model, std::unique_ptr<TravelTimeSource> routing,
              CircuitBreaker::Options breaker);

  // `straight_km[i]` is the straight-line distance of from[i], used by the fallback.
  Answer For(const std::vector<GeoPoint>& from, const std::vector<double>& straight_km,
             const GeoPoint& to);

  const TravelModel& model() const { return model_; }
  CircuitBreaker::State breaker_state() const { return breaker_.state(); }

 private:
  const TravelModel model_;
  std::unique_ptr<TravelTimeSource> routing_;
  CircuitBreaker breaker_;
};

}  // namespace pp
