#include "cloud-hub/matching/routing.h"

#include <httplib.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/log.h"

namespace pp {

OsrmClient::OsrmClient(std::string base_url, Duration deadline)
    : base_url_(std::move(base_url)), deadline_(deadline) {}

Result<std::vector<double>> OsrmClient::Seconds(const std::vector<GeoPoint>& from,
                                                const GeoPoint& to) {
  if (from.empty()) return std::vector<double>{};
  // Coordinates are lon,lat; the post is index 0 (the destination), the
  // vehicles 1..n (the sources).
  std::string path = "/table/v1/driving/";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f,%.6f", to.lon, to.lat);
  path += buf;
  std::string sources;
  for (size_t i = 0; i < from.size(); ++i) {
    std::snprintf(buf, sizeof buf, ";%.6f,%.6f", from[i].lon, from[i].lat);
    path += buf;
    sources += (i ? ";" : "") + std::to_string(i + 1);
  }
  path += "?sources=" + sources + "&destinations=0&annotations=duration";

  httplib::Client client(base_url_);
  auto secs = std::chrono::duration_cast<std::chrono::microseconds>(deadline_).count();
  client.set_connection_timeout(secs / 1000000, secs % 1000000);
  client.set_read_timeout(secs / 1000000, secs % 1000000);
  client.set_write_timeout(secs / 1000000, secs % 1000000);
  auto res = client.Get(path.c_str());
  if (!res) return Error::Unavailable("routing: " + httplib::to_string(res.error()));
  if (res->status != 200)
    return Error::Unavailable("routing: HTTP " + std::to_string(res->status));
  auto j = nlohmann::json::parse(res->body, nullptr, false);
  if (j.is_discarded() || j.value("code", "") != "Ok" || !j.contains("durations") ||
      !j["durations"].is_array() || j["durations"].size() != from.size())
    return Error::Unavailable("routing: malformed table answer");
  std::vector<double> out;
  for (const auto& row : j["durations"]) {
    if (!row.is_array() || row.size() != 1 || !row[0].is_number())
      return Error::Unavailable("routing: malformed table row");
    out.push_back(row[0].get<double>());
  }
  return out;
}

TravelTimes::TravelTimes(const Clock& clock, TravelModel model,
                         std::unique_ptr<TravelTimeSource> routing,
                         CircuitBreaker::Options breaker)
    : model_(model), routing_(std::move(routing)), breaker_(clock, breaker) {}

TravelTimes::Answer TravelTimes::For(const std::vector<GeoPoint>& from,
                                     const std::vector<double>& straight_km, const GeoPoint& to) {
  if (routing_ && !from.empty() && breaker_.Allow()) {
    auto r = routing_->Seconds(from, to);
    if (r.ok()) {
      breaker_.RecordSuccess();
      return {std::move(*r), true};
    }
    breaker_.RecordFailure();
    Log(LogLevel::kWarn, "routing_failed",
        {{"error", r.error().ToString()},
         {"breaker", std::string(CircuitBreaker::Name(breaker_.state()))}});
  }
  Answer a;
  for (double km : straight_km) a.seconds.push_back(model_.SecondsFor(km));
  return a;
}

}  // namespace pp
