// A simulated NGO van's drive: from wherever it is to each claimed post's
// kitchen in the order the claims were won, then home to its depot, where
// it hands over everything it carries. Pure: the simulator moves it by
// calling Advance() with simulated time; nothing here sleeps or does I/O.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/domain.h"

namespace pp::sim {

// A post to collect: where, the code the kitchen will ask for, how much.
struct Stop {
  int64_t surplus_id = 0;
  GeoPoint at;
  std::string handover_code;
  double kg = 0;
};

struct Arrival {
  enum class Kind { kPickUp, kDeliver };
  Kind kind;
  Stop stop;
};

class VanRoute {
 public:
  VanRoute(GeoPoint depot, double speed_kmh, double capacity_kg);

  // Queues a collection; the van sets off on the next Advance().
  void Add(Stop stop);
  // Drives `simulated` time along the route (straight lines at the van's
  // speed) and returns every stop reached on the way, in order: a pick-up
  // at each kitchen, then one delivery per post carried on reaching home.
  std::vector<Arrival> Advance(Duration simulated);

  const GeoPoint& position() const { return position_; }
  double free_kg() const { return capacity_kg_ - load_kg_; }
  // Nothing to collect and nothing on board.
  bool idle() const { return stops_.empty() && carried_.empty(); }

 private:
  GeoPoint depot_, position_;
  double speed_kmh_, capacity_kg_, load_kg_ = 0;
  std::deque<Stop> stops_;
  std::vector<Stop> carried_;
};

}  // namespace pp::sim
