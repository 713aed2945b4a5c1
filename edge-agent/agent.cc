#include "edge-agent/agent.h"

#include <sodium.h>

#include <algorithm>
#include <tuple>
#include <utility>

#include "common/domain_json.h"
#include "common/log.h"
#include "common/process_cpu.h"
#include "common/time_format.h"
#include "common/trace.h"
#include "common/validation.h"

namespace pp::agent {
namespace {

using nlohmann::json;

std::string NewOpId() {
  unsigned char raw[16];
  randombytes_buf(raw, sizeof raw);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : raw) {
    out += hex[c >> 4];
    out += hex[c & 15];
  }
  return out;
}

Error Denied(std::string msg) { return Error{Code::kPermissionDenied, std::move(msg), {}, {}}; }

// {"surplus_id": N, ...} with exactly the keys allowed.
Status CheckIds(const json& body, std::initializer_list<const char*> ints,
                std::initializer_list<const char*> others = {}) {
  std::vector<FieldError> bad;
  for (const auto& [k, v] : body.items()) {
    bool known = std::any_of(ints.begin(), ints.end(), [&](const char* a) { return k == a; }) ||
                 std::any_of(others.begin(), others.end(), [&](const char* a) { return k == a; });
    if (!known) bad.push_back({k, "unknown field"});
  }
  for (const char* k : ints)
    if (!body.contains(k) || !body[k].is_number_integer() || body[k].get<int64_t>() <= 0)
      bad.push_back({k, "must be a positive integer"});
  if (!bad.empty()) return Error::Invalid("request has invalid fields", std::move(bad));
  return OkStatus();
}

int64_t MetaInt(AgentTxn& tx, const char* key) {
  auto v = tx.GetMeta(key);
  if (!v.ok() || !*v) return 0;
  return std::strtoll((*v)->c_str(), nullptr, 10);
}

// The fields the agent reads from a down message must have the types it
// reads them as (nlohmann-json throws otherwise, on the applier thread):
// what is wrong, or nothing. The hub never sends such a message; a broken
// or hostile one is dropped by name and the device goes on.
std::optional<std::string> BadDownField(const json& m) {
  for (const char* k : {"kind", "op", "status", "code", "message", "type"})
    if (m.contains(k) && !m[k].is_string()) return std::string(k) + " must be a string";
  if (m.contains("id") && !m["id"].is_number_integer()) return "id must be an integer";
  if (m.contains("seq") && !m["seq"].is_number_unsigned()) return "seq must be a non-negative integer";
  // Unix ms, bounded so that the hub clock's offset cannot overflow.
  if (m.contains("ts") && !(m["ts"].is_number_integer() && m["ts"].get<int64_t>() >= 0 &&
                            m["ts"].get<int64_t>() < int64_t{1'000'000'000'000'000}))
    return "ts must be Unix milliseconds";
  return std::nullopt;
}

// The post an op acts on (its body's surplus_id), or 0.
int64_t SurplusOf(const QueuedOp& op) {
  if (op.type == sync::kOpPostSurplus || op.type == sync::kOpVehicle) return 0;
  json body = json::parse(op.body, nullptr, false);
  if (!body.is_object() || !body.contains("surplus_id") || !body["surplus_id"].is_number_integer()) return 0;
  return body["surplus_id"].get<int64_t>();
}

// Ops that race other NGOs for the same food, where the first commit wins:
// held for a batch, one could lose (see the top of agent.h, "Batches").
bool Races(const std::string& type) { return type == sync::kOpClaim || type == sync::kOpAccept; }

// The ops the hub takes in one publish, from its answer to a ping: its
// `batch_ops`, at most ours; 1 (no batches) from a hub that names none.
size_t BatchOpsOf(const json& ping_answer) {
  if (!ping_answer.is_object() || !ping_answer.contains("batch_ops") ||
      !ping_answer["batch_ops"].is_number_unsigned())
    return 1;
  return std::clamp<size_t>(ping_answer["batch_ops"].get<uint64_t>(), 1, Agent::kMaxBatchOps);
}

}  // namespace

void InFlight::Sent(uint64_t seq, Timestamp at, int64_t surplus_id, uint64_t publish) {
  if (!ops_.try_emplace(seq, Op{at, surplus_id, publish}).second) return;
  if (surplus_id != 0) ++posts_[surplus_id];
  ++publishes_[publish];
}

void InFlight::Answered(uint64_t seq) {
  auto it = ops_.find(seq);
  if (it == ops_.end()) return;
  if (auto p = posts_.find(it->second.surplus_id); p != posts_.end() && --p->second == 0) posts_.erase(p);
  if (auto p = publishes_.find(it->second.publish); p != publishes_.end() && --p->second == 0)
    publishes_.erase(p);
  ops_.erase(it);
  if (!ops_.empty() && ops_.begin()->first < seq) overtaken_ = true;
}

void InFlight::Clear() {
  ops_.clear();
  posts_.clear();
  publishes_.clear();
  overtaken_ = false;
}

std::optional<std::pair<uint64_t, Timestamp>> InFlight::Oldest() const {
  auto it = std::min_element(ops_.begin(), ops_.end(), [](auto& a, auto& b) { return a.second.at < b.second.at; });
  if (it == ops_.end()) return std::nullopt;
  return std::pair{it->first, it->second.at};
}

Agent::Agent(DeviceConfig config, sync::SecretKey key, AgentStore& store, const Clock& clock,
             Uplink& uplink)
    : config_(std::move(config)), key_(key), store_(store), clock_(clock), uplink_(uplink) {
  (void)store_.Read([&](AgentTxn& tx) -> Status {
    last_seq_ = uint64_t(MetaInt(tx, "last_seq"));
    hub_offset_ms_ = MetaInt(tx, "hub_offset_ms");
    return OkStatus();
  });
}

Agent::~Agent() { Stop(); }

void Agent::Start() {
  // A tablet tells the hub what its vehicle can take (capacity, categories,
  // hours, start position) whenever that differs from what it last queued,
  // so an edited config reaches the matcher. Through the queue: durable.
  if (config_.role == "tablet") {
    json profile{{"free_kg", config_.vehicle.capacity_kg},
                 {"open_from", config_.vehicle.open_from},
                 {"open_to", config_.vehicle.open_to},
                 {"online", true}};
    if (!config_.vehicle.categories.empty()) profile["categories"] = config_.vehicle.categories;
    if (config_.position) {
      profile["lat"] = config_.position->lat;
      profile["lon"] = config_.position->lon;
    }
    std::optional<std::string> last;
    (void)store_.Read([&](AgentTxn& tx) -> Status {
      PP_ASSIGN_OR_RETURN(last, tx.GetMeta("vehicle_profile"));
      return OkStatus();
    });
    if (last != profile.dump()) {
      auto q = Submit(sync::kOpVehicle, profile);
      if (q.ok())
        (void)store_.Write([&](AgentTxn& tx) { return tx.SetMeta("vehicle_profile", profile.dump()); });
      else
        Log(LogLevel::kError, "vehicle_profile_not_queued", {{"error", q.error().ToString()}});
    }
  }
  // Named, so that top -H, perf and /proc/*/task tell them from Paho's.
  sender_ = std::thread([this] {
    NameThisThread("agent-send");
    SendLoop();
  });
  applier_ = std::thread([this] {
    NameThisThread("agent-apply");
    ApplyLoop();
  });
}

void Agent::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  send_cv_.notify_all();
  apply_cv_.notify_all();
  if (sender_.joinable()) sender_.join();
  if (applier_.joinable()) applier_.join();
}

Timestamp Agent::HubNow() const { return clock_.Now() + Duration(hub_offset_ms_.load()); }

void Agent::OnConnected() {
  {
    std::lock_guard lock(mu_);
    ++epoch_;
    send_work_ = true;
  }
  send_cv_.notify_all();
}

void Agent::OnDown(std::string payload) {
  {
    std::lock_guard lock(mu_);
    inbox_.push_back(std::move(payload));
  }
  apply_cv_.notify_one();
}

sync::Envelope Agent::Seal(uint64_t seq, const std::string& type, const json& body) {
  return sync::Sealed(config_.device_id, seq, NewOpId(), type, body, ToUnixMillis(clock_.Now()), key_);
}

Result<json> Agent::CheckBody(const std::string& type, json body) {
  if (!body.is_object()) return Error::Invalid("body must be a JSON object");
  const bool kiosk = config_.role == "kiosk";
  if (type == sync::kOpPostSurplus) {
    if (!kiosk) return Denied("only a kiosk posts surplus");
    // Durations the person picked ("cooked 1 h ago", "good for 4 h", "pick
    // up in 1 to 3 h"), turned into the hub's time: the device clock may be
    // hours off.
    const Timestamp now = HubNow();
    std::vector<FieldError> bad;
    auto minutes = [&](const char* field, int lo) -> std::optional<double> {
      if (!body.contains(field)) return std::nullopt;
      const auto& m = body[field];
      if (!m.is_number() || !(m.get<double>() >= lo && m.get<double>() <= 30 * 24 * 60)) {
        bad.push_back({field, "must be a number of minutes from " + std::to_string(lo) + " to 43200"});
        return std::nullopt;
      }
      return m.get<double>();
    };
    auto at = [&](const char* field, const char* target, double m) {
      body[target] = FormatRfc3339(now + std::chrono::minutes(int64_t(m)));
      body.erase(field);
    };
    if (auto m = minutes("best_before_in_min", 1)) at("best_before_in_min", "best_before", *m);
    if (auto m = minutes("prepared_min_ago", 0)) at("prepared_min_ago", "prepared_at", -*m);
    // A pickup window: from `start` to `end` minutes from now, both or neither.
    const auto start = minutes("pickup_start_in_min", 0), end = minutes("pickup_end_in_min", 1);
    if (body.contains("pickup_start_in_min") != body.contains("pickup_end_in_min"))
      bad.push_back({body.contains("pickup_start_in_min") ? "pickup_end_in_min" : "pickup_start_in_min",
                     "pickup_start_in_min and pickup_end_in_min must be given together"});
    else if (start && end && *end <= *start)
      bad.push_back({"pickup_end_in_min", "must be after pickup_start_in_min"});
    if (!bad.empty()) return Error::Invalid("request has invalid fields", std::move(bad));
    if (start && end) {
      at("pickup_start_in_min", "pickup_start", *start);
      at("pickup_end_in_min", "pickup_end", *end);
    }
    if (body.contains("provider_id") && body["provider_id"] != config_.org_id)
      return Denied("provider_id is not this kiosk's organisation");
    body["provider_id"] = config_.org_id;
    if (config_.position && !body.contains("lat") && !body.contains("lon")) {
      body["lat"] = config_.position->lat;
      body["lon"] = config_.position->lon;
    }
    // The hub's own rules, here too: the person hears at once what is wrong.
    PP_ASSIGN_OR_RETURN(SurplusDraft draft, ParseSurplusDraftJson(body, HubNow()));
    json out = ToJson(draft);
    for (auto it = out.begin(); it != out.end();) it = it->is_null() ? out.erase(it) : std::next(it);
    return out;
  }
  if (kiosk) return Denied("a kiosk only posts surplus; " + type + " is for tablets");
  if (type == sync::kOpClaim) {
    PP_RETURN_IF_ERROR(CheckIds(body, {"surplus_id", "version"}));
  } else if (type == sync::kOpAccept || type == sync::kOpDecline || type == sync::kOpRelease ||
             type == sync::kOpDeliver) {
    PP_RETURN_IF_ERROR(CheckIds(body, {"surplus_id"}));
  } else if (type == sync::kOpPickUp) {
    PP_RETURN_IF_ERROR(CheckIds(body, {"surplus_id"}, {"handover_code", "actual_kg"}));
    json rest = body;
    rest.erase("surplus_id");
    PP_RETURN_IF_ERROR(ParsePickUpRequestJson(rest, config_.org_id).status());
  } else if (type == sync::kOpVehicle) {
    PP_RETURN_IF_ERROR(ParseVehicleUpdate(body.dump(), Vehicle{}, HubNow()).status());
  } else {
    return Error::Invalid("unknown operation \"" + type + "\"");
  }
  return body;
}

Result<QueuedOp> Agent::Submit(const std::string& type, json body) {
  PP_ASSIGN_OR_RETURN(json checked, CheckBody(type, std::move(body)));
  // A post starts a trace; what is done to a post continues the post's.
  std::string traceparent;
  if (checked.contains("surplus_id") && checked["surplus_id"].is_number_integer()) {
    (void)store_.Read([&](AgentTxn& tx) -> Status {
      PP_ASSIGN_OR_RETURN(auto post, tx.GetPost(checked["surplus_id"].get<int64_t>()));
      if (post && post->is_object()) traceparent = post->value("traceparent", "");
      return OkStatus();
    });
  }
  traceparent = traceparent.empty() ? NewTraceparent() : ChildTraceparent(traceparent);
  QueuedOp queued;
  size_t waiting = 0;
  Status st = store_.Write([&](AgentTxn& tx) -> Status {
    PP_ASSIGN_OR_RETURN(waiting, tx.QueueSize());
    if (waiting >= config_.queue_limit)
      return Error{Code::kResourceExhausted,
                   "the queue is full: " + std::to_string(waiting) +
                       " operations are waiting for the hub; nothing was saved. Try again once "
                       "the device is back online.",
                   {}, {}};
    uint64_t seq = uint64_t(MetaInt(tx, "last_seq")) + 1;
    sync::Envelope env = Seal(seq, type, checked);
    queued = {seq, env.op, type, checked.dump(), sync::Encode(env), clock_.Now(), traceparent};
    PP_RETURN_IF_ERROR(tx.InsertOp(queued));
    return tx.SetMeta("last_seq", std::to_string(seq));
  });
  if (!st.ok()) {
    if (st.error().code == Code::kResourceExhausted)
      Log(LogLevel::kWarn, "queue_full",
          {{"device", config_.device_id}, {"waiting", std::to_string(waiting)}, {"type", type}});
    return st.take_error();
  }
  last_seq_ = queued.seq;
  Log(LogLevel::kInfo, "op_queued",
      {{"device", config_.device_id}, {"op", queued.op}, {"seq", std::to_string(queued.seq)},
       {"type", type}, {"trace", TraceId(traceparent)}});
  {
    std::lock_guard lock(mu_);
    send_work_ = true;
    if (type == sync::kOpVehicle) {
      reported_at_ = queued.created_at;
      if (checked.contains("lat")) moved_ = true;  // ask again from the new position, soon
    }
    if (Races(type)) race_queued_ = true;
  }
  send_cv_.notify_all();
  return queued;
}

void Agent::MaybeReportPresence() {
  if (config_.role != "tablet") return;
  {
    const Timestamp now = clock_.Now();
    std::lock_guard lock(mu_);
    if (now - reported_at_ < kTabletReportEvery) return;
    reported_at_ = now;  // once a period, even if it cannot be queued
  }
  // Empty: it changes nothing the driver set; the hub records when it came.
  if (auto q = Submit(sync::kOpVehicle, json::object()); !q.ok())
    Log(LogLevel::kWarn, "presence_not_queued", {{"device", config_.device_id}, {"error", q.error().ToString()}});
}

void Agent::MaybeAskNearby() {
  if (config_.role != "tablet") return;
  Timestamp now = clock_.Now();
  {
    std::lock_guard lock(mu_);
    const Duration since = now - last_nearby_;
    if (since < kNearbyAfterMove || (!moved_ && since < kNearbyEvery)) return;
    last_nearby_ = now;
    moved_ = false;
  }
  std::optional<GeoPoint> at = config_.position;
  (void)store_.Read([&](AgentTxn& tx) -> Status {
    auto v = tx.GetMeta("vehicle");
    if (v.ok() && *v) {
      json j = json::parse(**v, nullptr, false);
      if (j.is_object() && j["lat"].is_number() && j["lon"].is_number())
        at = GeoPoint{j["lat"].get<double>(), j["lon"].get<double>()};
    }
    return OkStatus();
  });
  if (at) SendQuery(sync::kOpNearby, {{"lat", at->lat}, {"lon", at->lon}, {"km", 10}});
}

void Agent::MaybeCatchUp() {
  const Timestamp now = clock_.Now();
  int64_t after;
  {
    std::lock_guard lock(mu_);
    // An answer is a QoS 0 publish: if none came, ask again.
    const bool unanswered = !catchup_op_.empty() && now - catchup_at_ > kResendAfter;
    if (!catchup_due_ && !unanswered) return;
    catchup_due_ = false;
    // After the first connect of this process, a connect that found our
    // session at the broker missed nothing: the broker kept our queue.
    const bool fresh_start = !std::exchange(connected_before_, true);
    if (!unanswered && !fresh_start && !catching_up_ && !gap_owed_ && uplink_.SessionKept()) return;
    gap_owed_ = false;
    queries_.erase(catchup_op_);
    catchup_op_.clear();
    catchup_at_ = now;
    after = catchup_from_;
  }
  if (after < 0) {
    after = 0;
    (void)store_.Read([&](AgentTxn& tx) -> Status {
      // A gap seen in the down stream (catchup_owed, kept across restarts)
      // starts before anything applied since; otherwise from the highest
      // id applied, or past what the last catch-up already looked at.
      if (int64_t owed = MetaInt(tx, "catchup_owed"); owed > 0) {
        after = owed;
        return OkStatus();
      }
      PP_ASSIGN_OR_RETURN(int64_t applied, tx.MaxApplied());
      after = std::max(applied, MetaInt(tx, "catchup_after"));
      return OkStatus();
    });
    if (after == 0) return;  // nothing applied yet: nothing missed
  }
  {
    std::lock_guard lock(mu_);
    catching_up_ = true;
    catchup_asked_after_ = after;
  }
  SendQuery(sync::kOpCatchUp, {{"after", after}}, &catchup_op_);
}

void Agent::SupersedePing() {
  std::string op = std::exchange(ping_op_, {});
  if (!queries_.count(op)) return;  // none, or answered
  earlier_pings_.push_back(std::move(op));
  if (earlier_pings_.size() > kEarlierPingsKept) {
    queries_.erase(earlier_pings_.front());
    earlier_pings_.pop_front();
  }
}

void Agent::ForgetPings() {
  SupersedePing();
  for (const auto& op : earlier_pings_) queries_.erase(op);
  earlier_pings_.clear();
}

bool Agent::HubListening() {
  const Timestamp now = clock_.Now();
  bool listening;
  {
    std::lock_guard lock(mu_);
    listening = hub_listening_;
    if (listening) {
      // Pinged again every kCheckEvery: the answer names the last message
      // the hub sent us, so a loss shows even when nothing more comes.
      if (now - pinged_at_ < kCheckEvery) return true;
    } else if (!ping_op_.empty()) {
      if (now - pinged_at_ < ping_gap_) return false;
      ping_gap_ = NextPingGap(ping_gap_);
    }
    SupersedePing();  // unanswered so far: the next follows
    pinged_at_ = now;
  }
  SendQuery(sync::kOpPing, json::object(), &ping_op_);  // its answer also carries the hub's clock ("ts")
  return listening;
}

void Agent::SendQuery(const char* type, const json& body, std::string* op_to) {
  // Not queued, not retried: the next one supersedes it. Its sequence number
  // is the last op's (queries do not advance the replay window).
  sync::Envelope env = Seal(std::max<uint64_t>(1, last_seq_), type, body);
  {
    // Recorded before publishing: the answer may come before Publish returns.
    std::lock_guard lock(mu_);
    queries_.insert(env.op);
    if (op_to) *op_to = env.op;
  }
  auto ack = uplink_.Publish(sync::UpTopic(config_.device_id, type), sync::Encode(env), "");
  if (!ack.ok()) {
    std::lock_guard lock(mu_);
    queries_.erase(env.op);
  }
}

Result<Uplink::AckWait> Agent::PublishBatch(const std::vector<QueuedOp>& ops, size_t n) {
  std::vector<std::string_view> envelopes, traceparents;
  for (size_t i = 0; i < n; ++i) {
    envelopes.push_back(ops[i].envelope);
    traceparents.push_back(ops[i].traceparent);
  }
  // Each op carries its own traceparent inside the batch; the publish none.
  return uplink_.Publish(sync::UpTopic(config_.device_id, sync::kUpBatch),
                         sync::EncodeUpBatch(envelopes, traceparents), "");
}

bool Agent::AwaitAcks(std::deque<Uplink::AckWait>& window, size_t keep) {
  // One deadline for the lot: a connection that died with publishes in
  // flight must not cost kAckTimeout per publish before we start over.
  auto deadline = std::chrono::steady_clock::now() + kAckTimeout;
  while (window.size() > keep) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    Status st = window.front()(std::max(left, std::chrono::milliseconds(0)));
    window.pop_front();
    if (!st.ok()) {
      Log(LogLevel::kWarn, "publish_unacknowledged",
          {{"device", config_.device_id}, {"error", st.error().message}});
      window.clear();
      return false;
    }
  }
  return true;
}

void Agent::SendLoop() {
  uint64_t cursor = 0, seen_epoch = ~uint64_t{0};
  std::deque<Uplink::AckWait> window;
  while (true) {
    {
      std::unique_lock lock(mu_);
      send_cv_.wait_for(lock, std::chrono::seconds(1), [&] { return stop_ || send_work_; });
      if (stop_) return;
      send_work_ = false;
      if (epoch_ != seen_epoch) {  // (re)connected: everything unanswered goes again, in order
        seen_epoch = epoch_;
        cursor = 0;
        unanswered_.Clear();
        hub_listening_ = false;
        ForgetPings();
        ping_gap_ = kPingRetry;
        catchup_due_ = true;
        catchup_from_ = -1;
        last_outcome_at_ = clock_.Now();
        resend_after_ = kResendAfter;
      }
      // When to send everything unanswered again: see the top of agent.h.
      const Timestamp now = clock_.Now();
      if (auto oldest = unanswered_.Oldest(); oldest && now - oldest->second > resend_after_) {
        const bool overtaken = unanswered_.Overtaken();
        const bool silent = now - last_outcome_at_ > resend_after_;
        if (overtaken || silent) {
          resend_after_ = std::min(resend_after_ * 2, kResendMax);
          Log(LogLevel::kWarn, "resending",
              {{"device", config_.device_id}, {"oldest_seq", std::to_string(oldest->first)},
               {"unanswered", std::to_string(unanswered_.size())},
               {"why", overtaken ? "a later op was answered" : "no outcome came"},
               {"next_after_s",
                std::to_string(std::chrono::duration_cast<std::chrono::seconds>(resend_after_).count())}});
          cursor = 0;
          unanswered_.Clear();
        }
      }
    }
    if (!uplink_.Connected() || !HubListening()) continue;
    MaybeCatchUp();
    MaybeAskNearby();
    MaybeReportPresence();
    bool broken = false;
    while (!broken) {
      size_t room;
      bool races_only = false;  // held for a batch: only claims and accepts at the head may go
      {
        std::lock_guard lock(mu_);
        if (stop_) return;
        room = unanswered_.size() < kMaxUnanswered ? kMaxUnanswered - unanswered_.size() : 0;
        // Under load the next ops wait for an outcome here, and go
        // together (see the top of agent.h, "Batches"); not to a hub that
        // takes no batches: they would only wait. A claim or accept at the
        // head of the queue goes all the same.
        if (room > 0 && hub_batch_ops_ > 1 && unanswered_.Publishes() >= kPublishesAwaiting) {
          awaiting_outcomes_ = true;
          races_only = std::exchange(race_queued_, false);  // else not worth a look at the queue
          if (!races_only) room = 0;
        }
        room = std::min(room, hub_batch_ops_);
      }
      if (room == 0) break;
      std::vector<QueuedOp> ops;
      Status read = store_.Read([&](AgentTxn& tx) -> Status {
        PP_ASSIGN_OR_RETURN(ops, tx.OpsAfter(cursor, int(room)));
        return OkStatus();
      });
      if (!read.ok() || ops.empty()) break;
      // The ops of one publish: in sequence order, up to an op held back
      // (an op on a post whose earlier op awaits its outcome, see the top
      // of agent.h; the next outcome wakes us) or the size limit. Recorded
      // as sent before publishing: the outcome may come back before
      // Publish returns.
      std::vector<int64_t> posts;
      for (const auto& op : ops) posts.push_back(SurplusOf(op));  // parses: outside the lock
      size_t n = 0, bytes = 0;
      bool held = false;
      {
        std::lock_guard lock(mu_);
        const uint64_t publish = ++publishes_made_;
        const Timestamp now = clock_.Now();
        for (; n < ops.size(); ++n) {
          if (races_only && !Races(ops[n].type)) break;
          if (posts[n] != 0 && unanswered_.OnPost(posts[n])) {
            held = held_ = true;
            break;
          }
          const size_t more = ops[n].envelope.size() + ops[n].traceparent.size();
          if (n > 0 && bytes + more + sync::UpBatchOverhead(n + 1) > sync::kMaxBatchBytes) break;
          bytes += more;
          unanswered_.Sent(ops[n].seq, now, posts[n], publish);
        }
      }
      if (n == 0) break;  // the first op is held
      auto ack = n == 1 ? uplink_.Publish(sync::UpTopic(config_.device_id, ops[0].type), ops[0].envelope,
                                          ops[0].traceparent)
                        : PublishBatch(ops, n);
      if (!ack.ok()) {
        broken = true;
        break;
      }
      cursor = ops[n - 1].seq;
      window.push_back(std::move(*ack));
      if (window.size() >= kWindow) broken = !AwaitAcks(window, kWindow - 1);
      if (held) break;
    }
    if (!AwaitAcks(window, 0)) broken = true;
    if (broken) {
      // Not published, or not acknowledged in time. Connection gone: start
      // again from the oldest unanswered op once it is back. Still up (a
      // busy broker answers late): go on from here; what went missing is
      // sent again by the resend rule above. Starting over at once here was
      // a resend of everything per late PUBACK — 8,182 of them in one
      // collapsed rush (docs/benchmarks.md, "Session 17").
      const bool connected = uplink_.Connected();
      std::unique_lock lock(mu_);
      if (!connected) {
        cursor = 0;
        unanswered_.Clear();
      }
      send_cv_.wait_for(lock, std::chrono::milliseconds(250), [&] { return stop_; });
    }
  }
}

void Agent::ApplyLoop() {
  while (true) {
    std::vector<std::string> batch;
    {
      std::unique_lock lock(mu_);
      apply_cv_.wait(lock, [&] { return stop_ || !inbox_.empty(); });
      if (stop_ && inbox_.empty()) return;
      while (!inbox_.empty() && batch.size() < 2000) {
        batch.push_back(std::move(inbox_.front()));
        inbox_.pop_front();
      }
    }
    Status st = ApplyBatch(batch);
    if (!st.ok()) {
      // The disk refused: keep the messages (nothing is lost) and try again.
      Log(LogLevel::kError, "apply_failed", {{"error", st.error().ToString()}});
      std::unique_lock lock(mu_);
      for (auto it = batch.rbegin(); it != batch.rend(); ++it) inbox_.push_front(std::move(*it));
      apply_cv_.wait_for(lock, std::chrono::milliseconds(500), [&] { return stop_; });
    }
  }
}

Status Agent::MergePost(AgentTxn& tx, const json& post) {
  if (!post.is_object() || !post.contains("id") || !post["id"].is_number_integer()) return OkStatus();
  if (post.contains("version") && !post["version"].is_number_integer()) return OkStatus();  // not a post we can order
  int64_t id = post["id"].get<int64_t>();
  if (config_.role == "kiosk" && post.contains("provider_id") && post["provider_id"] != config_.org_id)
    return OkStatus();
  PP_ASSIGN_OR_RETURN(auto existing, tx.GetPost(id));
  if (existing && existing->is_object()) {
    // Versions only grow: an older description never overwrites a newer one.
    if (existing->value("version", int64_t{0}) > post.value("version", int64_t{0})) return OkStatus();
    json merged = *existing;
    merged.update(post);
    // A handover code is good only while the post is claimed (a release
    // voids it; events carry it to the provider only while it holds).
    if (merged.value("status", "") != "claimed") merged.erase("handover_code");
    return tx.PutPost(id, merged);
  }
  return tx.PutPost(id, post);
}

Status Agent::ApplyBatch(std::vector<std::string>& batch) {
  const Timestamp now = clock_.Now();
  std::vector<uint64_t> answered;
  std::optional<int64_t> offset;
  bool heard = false;  // the answer to this connection's ping: the hub is listening
  int64_t catchup_next = -1;  // a catch-up answer said "more": ask from here
  bool catchup_done = false;  // a catch-up answer said there is no more
  bool gap = false;           // a publish named a prev never applied: catch up (catchup_owed)
  bool still_owed = false;    // a catch-up ended with an earlier gap still owed
  std::vector<std::tuple<std::string, std::string, json>> told;  // for the observer, after commit
  Status st = store_.Write([&](AgentTxn& tx) -> Status {
    answered.clear();
    told.clear();
    catchup_next = -1;
    catchup_done = false;
    gap = still_owed = false;
    // The hub says it sent us `id` (a publish's `prev`: the last message of
    // its previous publish; a ping answer's `last`): not applied means the
    // broker lost it and perhaps more before it (docs/protocol.md, section
    // 6, "Gaps"). Owed in this transaction, so a crash keeps the debt.
    auto check_sent = [&](int64_t id, const char* named_as) -> Status {
      PP_ASSIGN_OR_RETURN(auto lost_after, tx.GapBefore(id));
      if (!lost_after || *lost_after <= 0) return OkStatus();
      // A catch-up under way starts again from here, so it must not owe
      // less than what it had still to read.
      int64_t from = *lost_after;
      {
        std::lock_guard lock(mu_);
        if (catching_up_ && catchup_asked_after_ >= 0) from = std::min(from, catchup_asked_after_);
      }
      const int64_t owed = MetaInt(tx, "catchup_owed");
      if (owed == 0 || from < owed) PP_RETURN_IF_ERROR(tx.SetMeta("catchup_owed", std::to_string(from)));
      gap = true;
      Log(LogLevel::kWarn, "down_gap",
          {{"device", config_.device_id}, {named_as, std::to_string(id)}, {"after", std::to_string(*lost_after)}});
      return OkStatus();
    };
    // One down message: an outcome or an event (a batch is opened below;
    // a catch-up answer carries messages to apply the same way).
    std::function<Status(json&, const std::string&)> apply;
    apply = [&](json& m, const std::string& payload) -> Status {
      if (!m.contains("kind")) {
        Log(LogLevel::kWarn, "down_message_invalid",
            {{"reason", "no kind"}, {"payload", payload.substr(0, 200)}});
        return OkStatus();
      }
      if (auto bad = BadDownField(m)) {
        Log(LogLevel::kWarn, "down_message_invalid", {{"reason", *bad}, {"payload", payload.substr(0, 200)}});
        return OkStatus();
      }
      if (m.contains("ts")) offset = m["ts"].get<int64_t>() - ToUnixMillis(now);
      const json& data = m.contains("data") ? m["data"] : json();
      // The answer to one of our queries (nearby, ping): the hub sends it
      // straight, without an outbox id; nothing to apply twice.
      if (m["kind"] == "outcome" && m.contains("op") && m["op"].is_string()) {
        bool query, catchup = false, ping = false;
        int64_t asked_after = -1;
        {
          std::lock_guard lock(mu_);
          const std::string& op = m["op"].get_ref<const std::string&>();
          query = queries_.erase(op) > 0;
          if (query && (op == ping_op_ || std::erase(earlier_pings_, op) > 0)) {
            hub_listening_ = heard = ping = true;
            hub_batch_ops_ = BatchOpsOf(data);
          }
          if (query && op == catchup_op_) {
            catchup = true;
            catchup_op_.clear();
            asked_after = catchup_asked_after_;
          }
        }
        if (query) {
          // A refused query comes through the outbox, with an id: mark it,
          // so that a second delivery is dropped like any repeat.
          if (m.contains("id") && m["id"].is_number_integer())
            PP_RETURN_IF_ERROR(tx.MarkApplied(m["id"].get<int64_t>()).status());
          const bool accepted = m.value("status", "") == "accepted";
          if (ping && accepted && data.is_object() && data.contains("last") && data["last"].is_number_unsigned() &&
              data["last"].get<uint64_t>() > 0 && data["last"].get<uint64_t>() <= uint64_t(INT64_MAX))
            PP_RETURN_IF_ERROR(check_sent(data["last"].get<int64_t>(), "last"));
          if (catchup && accepted && data.is_object() && data.contains("messages") &&
              data["messages"].is_array() && data.contains("next") && data["next"].is_number_unsigned() &&
              data["next"].get<uint64_t>() <= uint64_t(INT64_MAX)) {
            json messages = data["messages"];
            for (auto& inner : messages)
              if (inner.is_object()) PP_RETURN_IF_ERROR(apply(inner, payload));
            const int64_t next = data["next"].get<int64_t>();
            const bool more = data.contains("more") && data["more"].is_boolean() && data["more"].get<bool>();
            PP_RETURN_IF_ERROR(tx.SetMeta("catchup_after", std::to_string(next)));
            // A gap owed from where this page began is paid up to `next`
            // (all of it without `more`). One owed from earlier (seen while
            // this catch-up ran) is asked for once this one ends.
            if (int64_t owed = MetaInt(tx, "catchup_owed"); owed > 0) {
              if (owed == asked_after)
                PP_RETURN_IF_ERROR(tx.SetMeta("catchup_owed", std::to_string(more ? next : 0)));
              else if (!more)
                still_owed = true;
            }
            if (more)
              catchup_next = next;
            else
              catchup_done = true;
            return OkStatus();
          }
          if (catchup && accepted)
            Log(LogLevel::kWarn, "down_message_invalid",
                {{"reason", "a catch-up answer without messages and next"}, {"payload", payload.substr(0, 200)}});
          if (!catchup && accepted && data.is_array()) PP_RETURN_IF_ERROR(tx.ReplaceNearby(data));
          return OkStatus();
        }
      }
      if (!m.contains("id") || !m["id"].is_number_integer()) {
        Log(LogLevel::kWarn, "down_message_invalid",
            {{"reason", "no outbox id, and not the answer to a query in flight"},
             {"payload", payload.substr(0, 200)}});
        return OkStatus();
      }
      PP_ASSIGN_OR_RETURN(bool fresh, tx.MarkApplied(m["id"].get<int64_t>()));
      if (!fresh) return OkStatus();  // a repeat: applied before
      if (m["kind"] == "event") {
        if (data.is_object() && data.contains("traceparent") && data["traceparent"].is_string())
          Log(LogLevel::kInfo, "event_received",
              {{"device", config_.device_id}, {"type", m.value("type", "")},
               {"surplus_id", data.contains("id") ? data["id"].dump() : ""},
               {"trace", TraceId(data["traceparent"].get<std::string>())}});
        PP_RETURN_IF_ERROR(MergePost(tx, data));
        if (observer_) told.emplace_back("event", m.value("type", ""), m);
        return OkStatus();
      }
      if (m["kind"] != "outcome" || !m.contains("op") || !m["op"].is_string()) return OkStatus();
      const std::string op = m["op"].get<std::string>();
      PP_ASSIGN_OR_RETURN(auto taken, tx.TakeOp(op));
      OutcomeRecord rec{op, m.value("seq", uint64_t{0}), taken ? taken->type : "",
                        m.value("status", ""), m.value("code", ""), m.value("message", ""),
                        data, now};
      if (taken) {
        answered.push_back(taken->seq);
        Log(LogLevel::kInfo, "outcome_received",
            {{"device", config_.device_id}, {"op", op}, {"type", taken->type},
             {"status", rec.status}, {"code", rec.code}, {"trace", TraceId(taken->traceparent)}});
      }
      PP_RETURN_IF_ERROR(tx.PutOutcome(rec));
      if (observer_ && taken) told.emplace_back("outcome", rec.type, m);
      if (rec.status == "accepted" || rec.status == "conflict") PP_RETURN_IF_ERROR(MergePost(tx, data));
      if (rec.status == "accepted" && rec.type == sync::kOpVehicle)
        PP_RETURN_IF_ERROR(tx.SetMeta("vehicle", data.dump()));
      return OkStatus();
    };
    for (const auto& payload : batch) {
      auto down = sync::DecodeDown(payload);
      if (!down.ok()) {
        Log(LogLevel::kWarn, "down_message_invalid",
            {{"error", down.error().message}, {"payload", payload.substr(0, 200)}});
        continue;
      }
      if (down->prev > 0) PP_RETURN_IF_ERROR(check_sent(down->prev, "prev"));
      for (auto& m : down->messages) PP_RETURN_IF_ERROR(apply(m, payload));
    }
    PP_RETURN_IF_ERROR(tx.SetMeta("last_sync", std::to_string(ToUnixMillis(now))));
    if (offset) PP_RETURN_IF_ERROR(tx.SetMeta("hub_offset_ms", std::to_string(*offset)));
    return OkStatus();
  });
  if (!st.ok()) return st;
  if (offset) hub_offset_ms_ = *offset;
  for (const auto& [kind, type, message] : told) observer_(kind, type, message);
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    // The sender waits on answers only when kMaxUnanswered are out, or when
    // it holds an op back for an earlier op's outcome; waking it for every
    // message down cost a thread switch and a read of the queue each (seen
    // in perf of pp-sim's thousand agents).
    const bool room_freed = unanswered_.size() >= kMaxUnanswered && !answered.empty();
    for (uint64_t seq : answered) unanswered_.Answered(seq);
    // The sender holds ops back while kPublishesAwaiting publishes await
    // their outcomes: wake it when one no longer does.
    const bool publish_answered = awaiting_outcomes_ && unanswered_.Publishes() < kPublishesAwaiting;
    if (publish_answered) awaiting_outcomes_ = false;
    const bool unheld = held_ && !answered.empty();  // perhaps the outcome it waits for
    if (unheld) held_ = false;
    if (!answered.empty()) {  // the hub is working through our ops
      last_outcome_at_ = clock_.Now();
      resend_after_ = kResendAfter;
    }
    if (catchup_next >= 0) {
      catchup_due_ = true;
      catchup_from_ = catchup_next;
    }
    if (catchup_done) catching_up_ = false;
    if (gap || still_owed) {  // a new catch-up, from what is owed
      catchup_due_ = gap_owed_ = true;
      catchup_from_ = -1;
    }
    wake = room_freed || publish_answered || unheld || heard || catchup_next >= 0 || gap || still_owed;
    if (wake) send_work_ = true;
  }
  if (wake) send_cv_.notify_all();
  return OkStatus();
}

Result<json> Agent::State() {
  json out{{"device", config_.device_id},
           {"role", config_.role},
           {"org_id", config_.org_id},
           {"language", config_.language},
           {"online", uplink_.Connected()},
           {"queue_limit", config_.queue_limit}};
  Status st = store_.Read([&](AgentTxn& tx) -> Status {
    // The hub's clock as of this snapshot: hub_offset_ms_ is set only after
    // the batch that taught it commits, so a reader could see the batch's
    // posts with the clock from before it (seen once in ten runs).
    out["hub_now"] = FormatRfc3339(clock_.Now() + Duration(MetaInt(tx, "hub_offset_ms")));
    PP_ASSIGN_OR_RETURN(size_t n, tx.QueueSize());
    out["queued"] = n;
    out["queue_full"] = n >= config_.queue_limit;
    PP_ASSIGN_OR_RETURN(auto ops, tx.OpsAfter(0, 200));
    json q = json::array();
    for (const auto& op : ops)
      q.push_back({{"op", op.op}, {"seq", op.seq}, {"type", op.type},
                   {"body", json::parse(op.body, nullptr, false)},
                   {"created_at", FormatRfc3339(op.created_at)}});
    out["queued_ops"] = std::move(q);
    PP_ASSIGN_OR_RETURN(auto posts, tx.Posts(200));
    out["posts"] = posts;
    PP_ASSIGN_OR_RETURN(auto outcomes, tx.RecentOutcomes(50));
    json o = json::array();
    for (const auto& r : outcomes)
      o.push_back({{"op", r.op}, {"seq", r.seq}, {"type", r.type}, {"status", r.status},
                   {"code", r.code}, {"message", r.message}, {"data", r.data},
                   {"at", FormatRfc3339(r.at)}});
    out["outcomes"] = std::move(o);
    PP_ASSIGN_OR_RETURN(out["nearby"], tx.Nearby());
    int64_t last_sync = MetaInt(tx, "last_sync");
    out["last_sync"] = last_sync ? json(FormatRfc3339(FromUnixMillis(last_sync))) : json(nullptr);
    auto vehicle = tx.GetMeta("vehicle");
    out["vehicle"] = vehicle.ok() && *vehicle ? json::parse(**vehicle, nullptr, false) : json(nullptr);
    return OkStatus();
  });
  if (!st.ok()) return st.take_error();
  return out;
}

}  // namespace pp::agent
