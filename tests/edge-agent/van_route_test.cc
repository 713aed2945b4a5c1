#include "edge-agent/sim/van_route.h"

#include <gtest/gtest.h>

#include "common/geo.h"

namespace pp::sim {
namespace {

using std::chrono::minutes;
const GeoPoint kDepot{51.5000, -0.1000};
// ~1.1 km north and ~2.2 km north of the depot.
const GeoPoint kNear{51.5100, -0.1000}, kFar{51.5200, -0.1000};

TEST(VanRouteTest, StandsStillWithNothingToDo) {
  VanRoute van(kDepot, 30, 300);
  EXPECT_TRUE(van.Advance(minutes(10)).empty());
  EXPECT_DOUBLE_EQ(van.position().lat, kDepot.lat);
  EXPECT_TRUE(van.idle());
}

TEST(VanRouteTest, DrivesAtItsSpeedPicksUpInOrderAndDeliversAtTheDepot) {
  VanRoute van(kDepot, 30, 300);  // 30 km/h: 0.5 km a minute
  van.Add({1, kNear, "111111", 10});
  van.Add({2, kFar, "222222", 20});
  // One minute: half a kilometre north, nothing reached yet.
  EXPECT_TRUE(van.Advance(minutes(1)).empty());
  EXPECT_NEAR(HaversineKm(kDepot, van.position()), 0.5, 0.01);
  // Two more minutes: past the first kitchen (1.11 km), not yet at the second.
  auto reached = van.Advance(minutes(2));
  ASSERT_EQ(reached.size(), 1u);
  EXPECT_EQ(reached[0].kind, Arrival::Kind::kPickUp);
  EXPECT_EQ(reached[0].stop.surplus_id, 1);
  EXPECT_EQ(reached[0].stop.handover_code, "111111");
  EXPECT_DOUBLE_EQ(van.free_kg(), 290);
  // Long enough for the second kitchen and the way home: both delivered.
  reached = van.Advance(minutes(60));
  ASSERT_EQ(reached.size(), 3u);
  EXPECT_EQ(reached[0].kind, Arrival::Kind::kPickUp);
  EXPECT_EQ(reached[0].stop.surplus_id, 2);
  EXPECT_EQ(reached[1].kind, Arrival::Kind::kDeliver);
  EXPECT_EQ(reached[2].kind, Arrival::Kind::kDeliver);
  EXPECT_EQ(reached[1].stop.surplus_id + reached[2].stop.surplus_id, 3);
  EXPECT_NEAR(HaversineKm(kDepot, van.position()), 0, 1e-9);
  EXPECT_DOUBLE_EQ(van.free_kg(), 300);
  EXPECT_TRUE(van.idle());
}

TEST(VanRouteTest, AStopAddedOnTheWayHomeIsCollectedBeforeDelivering) {
  VanRoute van(kDepot, 60, 300);
  van.Add({1, kFar, "1", 5});
  ASSERT_EQ(van.Advance(minutes(3)).size(), 1u);  // 2.2 km at 1 km/min: picked up
  van.Add({2, kNear, "2", 5});
  auto reached = van.Advance(minutes(1) + std::chrono::seconds(10));  // 1.1 km back south
  ASSERT_EQ(reached.size(), 1u);
  EXPECT_EQ(reached[0].kind, Arrival::Kind::kPickUp);
  EXPECT_EQ(reached[0].stop.surplus_id, 2);
  EXPECT_FALSE(van.idle());
}

}  // namespace
}  // namespace pp::sim
