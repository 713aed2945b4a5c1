// Distances and travel-time estimates on the Earth. Pure functions.
#pragma once

#include "common/domain.h"

namespace pp {

constexpr double kEarthRadiusKm = 6371.0088;  // mean radius (IUGG), as S2Earth uses

// Great-circle distance.
double HaversineKm(const GeoPoint& a, const GeoPoint& b);

// The fallback travel-time model when no routing service answers: road
// distance is the straight line times a detour factor, driven at an average
// urban speed. Both are configurable (MatchingOptions).
struct TravelModel {
  double detour_factor = 1.4;   // typical road/straight ratio in cities
  double avg_speed_kmh = 25.0;  // London average traffic speed is ~20-30 km/h
  double SecondsFor(double straight_km) const {
    return straight_km * detour_factor / avg_speed_kmh * 3600.0;
  }
  // The straight-line distance coverable in `seconds`.
  double KmWithin(double seconds) const {
    return seconds / 3600.0 * avg_speed_kmh / detour_factor;
  }
};

}  // namespace pp
