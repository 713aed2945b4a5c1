// One simulator process's share of the city: its kiosks and vans as real
// agents (Agent, AgentStore, signed MQTT ops through mosquitto), playing
// the rush the director planned and counting what happens (Tally). Talks to
// the director and the other shards over the pipes of shard_link.h.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/domain.h"
#include "common/error.h"
#include "sync/protocol.h"

namespace pp::sim {

// What the director hands a shard: who its devices are and how they behave.
struct ShardPlan {
  struct Device {
    std::string id;
    int64_t org = 0;
    bool kiosk = true;
    GeoPoint home;
    sync::SecretKey secret{};
  };
  struct Post {
    int64_t at_ms = 0;  // after the rush's start
    size_t device = 0;  // index into devices, a kiosk
    int number = 0;     // the post's number in the whole city (its description)
    int kg = 0;
  };
  int shard = 0, shards = 1;
  std::string broker_uri, device_dir;
  double accept_p = 0.8, race_p = 0.2, speed_kmh = 25, speed_up = 60;
  int64_t delay_ms = 200, window_ms = 10000;
  uint64_t seed = 7;
  std::vector<Device> devices;
  std::vector<Post> posts;
  std::vector<std::pair<int64_t, int>> van_shard;  // every van's organisation -> the shard that drives it
  // Every kiosk's organisation in the run: vans race only for their posts
  // (a hub kept from an earlier run may still offer its unclaimed posts
  // nearby, whose kitchens no process here plays: won, never picked up).
  std::vector<int64_t> kitchens;

  nlohmann::json ToJson() const;
  static Result<ShardPlan> FromJson(const nlohmann::json& j);
};

// What a simulated kiosk posts: hot meals good for 3 h, to be collected
// from now within 1, 2 or 3 h (by the post's number: the kiosk form's
// "now to" windows), so every rush runs the hub's pickup-window rule.
nlohmann::json SimPostBody(const std::string& kiosk, int number, int kg);

// The shard process's main: reads its plan from the inbox (kInboxFd),
// reports online, plays the rush from "start" to "end", sends its tally.
// Returns the process's exit code.
int RunCityShard();

}  // namespace pp::sim
