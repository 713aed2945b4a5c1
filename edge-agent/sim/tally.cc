#include "edge-agent/sim/tally.h"

#include <algorithm>

namespace pp::sim {

using nlohmann::json;

namespace {

// Time points travel as nanoseconds of the machine's monotonic clock.
int64_t Ns(Steady::time_point t) { return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count(); }
Steady::time_point FromNs(int64_t ns) { return Steady::time_point(std::chrono::nanoseconds(ns)); }

template <typename V>
json Pairs(const std::map<int64_t, V>& m) {
  json a = json::array();
  for (const auto& [k, v] : m) a.push_back({k, v});
  return a;
}
json TimePairs(const std::map<int64_t, Steady::time_point>& m) {
  json a = json::array();
  for (const auto& [k, v] : m) a.push_back({k, Ns(v)});
  return a;
}

}  // namespace

void Tally::Merge(const Tally& o) {
  posted_at.insert(o.posted_at.begin(), o.posted_at.end());  // each post is pressed in one process
  for (const auto& [id, at] : o.first_offer) {
    auto [it, fresh] = first_offer.emplace(id, at);
    if (!fresh) it->second = std::min(it->second, at);  // a rematch's offer reaches another van later
  }
  for (auto [into, from] : {std::pair{&claim_ms, &o.claim_ms}, {&claim_queue_ms, &o.claim_queue_ms},
                            {&claim_wire_ms, &o.claim_wire_ms}, {&claim_apply_ms, &o.claim_apply_ms}})
    into->insert(into->end(), from->begin(), from->end());
  for (const auto& [k, v] : o.counts) counts[k] += v;
  accepted_posts.insert(o.accepted_posts.begin(), o.accepted_posts.end());
  for (const auto& [s, c] : o.posts_per_second) posts_per_second[s] += c;
  for (const auto& [s, c] : o.claims_per_second) claims_per_second[s] += c;
  for (const auto& [s, v] : o.claim_ms_per_second) {
    auto& into = claim_ms_per_second[s];
    into.insert(into.end(), v.begin(), v.end());
  }
  if (o.first_post_sent && (!first_post_sent || *o.first_post_sent < *first_post_sent))
    first_post_sent = o.first_post_sent;
  if (o.last_post_accepted && (!last_post_accepted || *o.last_post_accepted > *last_post_accepted))
    last_post_accepted = o.last_post_accepted;
  posts_sent += o.posts_sent;
  mqtt_up += o.mqtt_up;
  mqtt_down += o.mqtt_down;
  cpu_seconds += o.cpu_seconds;
}

std::vector<double> Tally::OfferLatenciesMs() const {
  std::vector<double> ms;
  for (const auto& [id, at] : first_offer)
    if (auto p = posted_at.find(id); p != posted_at.end())
      ms.push_back(std::chrono::duration<double, std::milli>(at - p->second).count());
  return ms;
}

double Tally::PostSpanSeconds() const {
  if (!first_post_sent || !last_post_accepted) return 0;
  return std::max(0.0, std::chrono::duration<double>(*last_post_accepted - *first_post_sent).count());
}

json Tally::ToJson() const {
  json per_second = json::array();
  for (const auto& [s, v] : claim_ms_per_second) per_second.push_back({s, v});
  return {{"posted_at", TimePairs(posted_at)},
          {"first_offer", TimePairs(first_offer)},
          {"claim_ms", claim_ms},
          {"claim_queue_ms", claim_queue_ms},
          {"claim_wire_ms", claim_wire_ms},
          {"claim_apply_ms", claim_apply_ms},
          {"counts", counts},
          {"accepted_posts", accepted_posts},
          {"posts_per_second", Pairs(posts_per_second)},
          {"claims_per_second", Pairs(claims_per_second)},
          {"claim_ms_per_second", per_second},
          {"first_post_sent", first_post_sent ? json(Ns(*first_post_sent)) : json()},
          {"last_post_accepted", last_post_accepted ? json(Ns(*last_post_accepted)) : json()},
          {"posts_sent", posts_sent},
          {"mqtt_up", mqtt_up},
          {"mqtt_down", mqtt_down},
          {"cpu_seconds", cpu_seconds}};
}

Result<Tally> Tally::FromJson(const json& j) {
  // Written by our own processes, but read like any input: a wrong shape is
  // an error naming the field, never a crash.
  try {
    Tally t;
    for (const auto& p : j.at("posted_at")) t.posted_at[p.at(0).get<int64_t>()] = FromNs(p.at(1).get<int64_t>());
    for (const auto& p : j.at("first_offer")) t.first_offer[p.at(0).get<int64_t>()] = FromNs(p.at(1).get<int64_t>());
    t.claim_ms = j.at("claim_ms").get<std::vector<double>>();
    t.claim_queue_ms = j.at("claim_queue_ms").get<std::vector<double>>();
    t.claim_wire_ms = j.at("claim_wire_ms").get<std::vector<double>>();
    t.claim_apply_ms = j.at("claim_apply_ms").get<std::vector<double>>();
    t.counts = j.at("counts").get<std::map<std::string, int>>();
    t.accepted_posts = j.at("accepted_posts").get<std::set<std::string>>();
    for (const auto& p : j.at("posts_per_second")) t.posts_per_second[p.at(0).get<int64_t>()] = p.at(1).get<int>();
    for (const auto& p : j.at("claims_per_second")) t.claims_per_second[p.at(0).get<int64_t>()] = p.at(1).get<int>();
    for (const auto& p : j.at("claim_ms_per_second"))
      t.claim_ms_per_second[p.at(0).get<int64_t>()] = p.at(1).get<std::vector<double>>();
    if (!j.at("first_post_sent").is_null()) t.first_post_sent = FromNs(j["first_post_sent"].get<int64_t>());
    if (!j.at("last_post_accepted").is_null()) t.last_post_accepted = FromNs(j["last_post_accepted"].get<int64_t>());
    t.posts_sent = j.at("posts_sent").get<int>();
    t.mqtt_up = j.at("mqtt_up").get<uint64_t>();
    t.mqtt_down = j.at("mqtt_down").get<uint64_t>();
    t.cpu_seconds = j.at("cpu_seconds").get<double>();
    return t;
  } catch (const json::exception& e) {
    return Error::Invalid(std::string("a simulator process's tally: ") + e.what());
  }
}

}  // namespace pp::sim
