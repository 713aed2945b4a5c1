// What pp-sim measures, as one simulator process counted it, and how the
// counts of several processes become the city's. Pure: no clocks read, no
// I/O; the processes send a Tally to one another as JSON (ToJson/FromJson).
//
// Times are std::chrono::steady_clock points. On Linux that clock is
// CLOCK_MONOTONIC, one clock for every process on the machine, so a post
// pressed in one process and first offered in another give a latency.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace pp::sim {

using Steady = std::chrono::steady_clock;

struct Tally {
  std::map<int64_t, Steady::time_point> posted_at;    // surplus id -> its post op's press (the kiosk's process)
  std::map<int64_t, Steady::time_point> first_offer;  // surplus id -> first offer seen by any van
  std::vector<double> claim_ms;                       // press to outcome applied, accepts and race claims
  std::vector<double> claim_queue_ms, claim_wire_ms, claim_apply_ms;  // its three parts
  std::map<std::string, int> counts;                  // posts_accepted, conflicts, claims, ...
  std::set<std::string> accepted_posts;               // descriptions the kiosks were told were accepted
  std::map<int64_t, int> posts_per_second, claims_per_second;  // seconds since the rush's start
  std::map<int64_t, std::vector<double>> claim_ms_per_second;
  std::optional<Steady::time_point> first_post_sent, last_post_accepted;
  int posts_sent = 0;
  uint64_t mqtt_up = 0, mqtt_down = 0;  // messages the devices published and received
  double cpu_seconds = 0;               // the process's CPU over the rush

  // Adds another process's tally: counts and samples add up, the earliest
  // first offer and post and the latest accepted post win.
  void Merge(const Tally& other);
  // Post -> first offer, ms, for every post both were seen for.
  std::vector<double> OfferLatenciesMs() const;
  // First post pressed to the last post's outcome applied, seconds (0 if none).
  double PostSpanSeconds() const;

  nlohmann::json ToJson() const;
  static Result<Tally> FromJson(const nlohmann::json& j);
};

}  // namespace pp::sim
