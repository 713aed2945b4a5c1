#include "common/geo.h"

#include <cmath>

namespace pp {

double HaversineKm(const GeoPoint& a, const GeoPoint& b) {
  constexpr double kDeg = M_PI / 180.0;
  double dlat = (b.lat - a.lat) * kDeg, dlon = (b.lon - a.lon) * kDeg;
  double h = std::sin(dlat / 2) * std::sin(dlat / 2) +
             std::cos(a.lat * kDeg) * std::cos(b.lat * kDeg) * std::sin(dlon / 2) *
                 std::sin(dlon / 2);
  return 2 * kEarthRadiusKm * std::asin(std::min(1.0, std::sqrt(h)));
}

}  // namespace pp
