#include "edge-agent/sim/van_route.h"

#include <algorithm>

#include "common/geo.h"

namespace pp::sim {

VanRoute::VanRoute(GeoPoint depot, double speed_kmh, double capacity_kg)
    : depot_(depot), position_(depot), speed_kmh_(speed_kmh), capacity_kg_(capacity_kg) {}

void VanRoute::Add(Stop stop) { stops_.push_back(std::move(stop)); }

std::vector<Arrival> VanRoute::Advance(Duration simulated) {
  std::vector<Arrival> reached;
  double km_left = speed_kmh_ * std::chrono::duration<double, std::ratio<3600>>(simulated).count();
  while (!idle()) {
    const GeoPoint target = stops_.empty() ? depot_ : stops_.front().at;
    const double km = HaversineKm(position_, target);
    if (km > km_left) {  // part of the way: a straight line is fine at city scale
      const double f = km_left / km;
      position_ = {position_.lat + f * (target.lat - position_.lat),
                   position_.lon + f * (target.lon - position_.lon)};
      break;
    }
    km_left -= km;
    position_ = target;
    if (!stops_.empty()) {
      Stop s = std::move(stops_.front());
      stops_.pop_front();
      load_kg_ = std::min(capacity_kg_, load_kg_ + s.kg);
      carried_.push_back(s);
      reached.push_back({Arrival::Kind::kPickUp, std::move(s)});
    } else {
      for (auto& s : carried_) reached.push_back({Arrival::Kind::kDeliver, std::move(s)});
      carried_.clear();
      load_kg_ = 0;
    }
  }
  return reached;
}

}  // namespace pp::sim
