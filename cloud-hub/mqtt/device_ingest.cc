#include "cloud-hub/mqtt/device_ingest.h"

#include <cmath>
#include <optional>

#include "common/log.h"
#include "common/time_format.h"
#include "common/trace.h"
#include "cloud-hub/mqtt/outbox_relay.h"

namespace pp {
namespace {

Error Refusal(Code code, std::string message) { return Error{code, std::move(message), {}, {}}; }

// The fields of an op body, strictly (the same rules as HTTP bodies).
Result<int64_t> SurplusIdOf(const nlohmann::json& body, std::initializer_list<const char*> allowed) {
  std::vector<FieldError> bad;
  for (const auto& [k, v] : body.items()) {
    bool ok = false;
    for (const char* a : allowed) ok |= k == a;
    if (!ok) bad.push_back({k, "unknown field"});
  }
  if (!body.contains("surplus_id") || !body["surplus_id"].is_number_unsigned() ||
      body["surplus_id"].get<uint64_t>() == 0 || body["surplus_id"].get<uint64_t>() > uint64_t(INT64_MAX))
    bad.push_back({"surplus_id", "must be a positive integer"});
  if (!bad.empty()) return Error::Invalid("request has invalid fields", std::move(bad));
  return body["surplus_id"].get<int64_t>();
}

bool RoleAllows(const std::string& role, const std::string& type) {
  if (type == sync::kOpPing || type == sync::kOpCatchUp) return true;
  if (role == "kiosk") return type == sync::kOpPostSurplus;
  return type == sync::kOpClaim || type == sync::kOpAccept || type == sync::kOpDecline || type == sync::kOpRelease ||
         type == sync::kOpVehicle || type == sync::kOpPickUp || type == sync::kOpDeliver ||
         type == sync::kOpNearby;
}

// An accepted outcome whose `data` is JSON text already, spliced in rather
// than parsed and serialised again: OutcomeJson()'s shape, plus the hub's
// clock ("ts") when given.
std::string AcceptedOutcomeJson(const std::string& op, uint64_t seq, const char* code,
                                const std::string& data_json, std::optional<int64_t> ts_ms = std::nullopt) {
  // Written out rather than built as a JSON object and dumped: one per op,
  // on the store writer's thread. `op` is the device's text: escaped.
  std::string message = "{\"v\":" + std::to_string(sync::kProtocolVersion) +
                        ",\"kind\":\"outcome\",\"op\":" +
                        nlohmann::json(op).dump() +
                        ",\"seq\":" + std::to_string(seq) + ",\"status\":\"accepted\",\"code\":\"" + code +
                        "\",\"message\":\"\"";
  if (ts_ms) message += ",\"ts\":" + std::to_string(*ts_ms);
  message += ",\"data\":" + data_json + "}";
  return message;
}

}  // namespace

OutboxEvent OutcomeEvent(const std::string& device, const sync::Outcome& outcome,
                         const std::string& traceparent, Timestamp now) {
  nlohmann::json payload{{"device", device}, {"message", sync::OutcomeJson(outcome)}};
  if (!traceparent.empty()) payload["traceparent"] = traceparent;
  return {0, "device.outcome", 0, payload.dump(), now, std::nullopt};
}

OutboxEvent AcceptedOutcomeEvent(const std::string& device, const std::string& op, uint64_t seq,
                                 const char* code, const std::string& result_json,
                                 const std::string& traceparent, Timestamp now) {
  // The hot path: the result is already JSON.
  std::string payload = "{\"device\":" + nlohmann::json(device).dump() + ",\"message\":" +
                        AcceptedOutcomeJson(op, seq, code, result_json);
  if (!traceparent.empty()) payload += ",\"traceparent\":" + nlohmann::json(traceparent).dump();
  payload += "}";
  return {0, "device.outcome", 0, std::move(payload), now, std::nullopt};
}

void DeviceIngest::Answer(const std::string& device, const sync::Outcome& outcome,
                          const std::string& traceparent) {
  hub_.Emit(OutcomeEvent(device, outcome, traceparent, hub_.clock().Now()), [device](Status st) {
    if (!st.ok())
      Log(LogLevel::kError, "outcome_not_stored", {{"device", device}, {"error", st.error().ToString()}});
  });
}

void DeviceIngest::AnswerQuery(const std::string& device, const sync::Outcome& outcome,
                               const std::string& traceparent) {
  queries_++;
  if (!query_reply_) return Answer(device, outcome, traceparent);
  nlohmann::json message = sync::OutcomeJson(outcome);
  message["ts"] = ToUnixMillis(hub_.clock().Now());  // the hub's clock, as on every down message
  query_reply_(device, message.dump(), traceparent);
}

void DeviceIngest::Refuse(const std::string& device, const sync::Envelope& env, Error error,
                          const std::string& traceparent) {
  refused_++;
  Log(LogLevel::kWarn, "op_refused",
      {{"device", device}, {"op", env.op}, {"type", env.type}, {"error", error.ToString()}});
  Answer(device, sync::OutcomeFor(env, error), traceparent);
}

void DeviceIngest::AnswerNearby(const Device& device, const sync::Envelope& env,
                                const std::string& traceparent) {
  std::vector<FieldError> bad;
  auto number = [&](const char* name, double lo, double hi, double fallback) {
    if (!env.body.contains(name)) {
      if (std::isnan(fallback)) bad.push_back({name, "is required"});
      return fallback;
    }
    const auto& v = env.body[name];
    if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi)) {
      bad.push_back({name, "must be a number from " + std::to_string(lo) + " to " + std::to_string(hi)});
      return 0.0;
    }
    return v.get<double>();
  };
  for (const auto& [k, v] : env.body.items())
    if (k != "lat" && k != "lon" && k != "km") bad.push_back({k, "unknown field"});
  double lat = number("lat", -90, 90, NAN), lon = number("lon", -180, 180, NAN);
  double km = number("km", 0.1, 50, 5.0);
  if (!bad.empty())
    return Refuse(device.id, env, Error::Invalid("request has invalid fields", std::move(bad)), traceparent);
  if (!nearby_) return Refuse(device.id, env, Error::Unavailable("matching is not running"), traceparent);
  accepted_++;
  sync::Outcome o{env.op, env.seq, sync::OutcomeStatus::kAccepted, "ok", "",
                  nearby_({lat, lon}, km)};
  AnswerQuery(device.id, o, traceparent);
}

void DeviceIngest::AnswerCatchUp(const Device& device, const sync::Envelope& env,
                                 const std::string& traceparent) {
  std::vector<FieldError> bad;
  for (const auto& [k, v] : env.body.items())
    if (k != "after") bad.push_back({k, "unknown field"});
  const auto& after_v = env.body.contains("after") ? env.body["after"] : nlohmann::json();
  if (!after_v.is_number_unsigned() || after_v.get<uint64_t>() > uint64_t(INT64_MAX))
    bad.push_back({"after", "must be an outbox id, an integer from 0"});
  if (!bad.empty())
    return Refuse(device.id, env, Error::Invalid("request has invalid fields", std::move(bad)), traceparent);
  const int64_t after = after_v.get<int64_t>();
  auto page = hub_.ListOutbox(after, kCatchUpScan);
  if (!page.ok()) return Refuse(device.id, env, page.take_error(), traceparent);
  // What the relay sent (or will send) this device, as it sent it: its own
  // outcomes, and the events of its organisation's posts, the handover code
  // only to the provider's devices.
  const int64_t now_ms = ToUnixMillis(hub_.clock().Now());
  // Whether an event is this device's, judged before its bytes are made.
  const WantedBy mine = [&](const EventWire& w) { return w.Reaches(device.id, device.org_id); };
  // The messages are spliced in as the relay made them, not parsed and
  // serialised again.
  std::string messages = "[";
  size_t count = 0;
  int64_t next = after;
  bool more = int(page->size()) == kCatchUpScan;
  for (const OutboxEvent& e : *page) {
    if (auto w = WireOf(e, now_ms, mine)) {
      const std::string& bytes = w->device.empty() ? w->BytesFor(device.org_id) : w->bytes;
      if (messages.size() + bytes.size() > kCatchUpBytes && count > 0) {
        more = true;  // the answer must fit one MQTT message
        break;
      }
      if (count++ > 0) messages += ',';
      messages += bytes;
    }
    next = e.id;
  }
  messages += ']';
  accepted_++;
  const std::string data = "{\"messages\":" + messages + ",\"more\":" + (more ? "true" : "false") +
                           ",\"next\":" + std::to_string(next) + "}";
  AnswerQueryData(device.id, env, data, traceparent);
}

void DeviceIngest::AnswerQueryData(const std::string& device, const sync::Envelope& env,
                                   const std::string& data_json, const std::string& traceparent) {
  if (!query_reply_)
    return AnswerQuery(device,
                       {env.op, env.seq, sync::OutcomeStatus::kAccepted, "ok", "", nlohmann::json::parse(data_json)},
                       traceparent);
  queries_++;
  query_reply_(device, AcceptedOutcomeJson(env.op, env.seq, "ok", data_json, ToUnixMillis(hub_.clock().Now())),
               traceparent);
}

void DeviceIngest::SetMetrics(metrics::Registry* r) {
  claim_latency_ = &r->GetHistogram(kClaimLatencyMetric, kClaimLatencyHelp, metrics::LatencyBuckets(),
                                    {{"door", "mqtt"}});
  const char* help = "Device messages through the MQTT door, by result.";
  r->AddCounterCallback("mqtt_ingest_messages_total", help, {{"result", "received"}},
                        [this] { return double(received_.load()); });
  r->AddCounterCallback("mqtt_ingest_messages_total", help, {{"result", "accepted"}},
                        [this] { return double(accepted_.load()); });
  r->AddCounterCallback("mqtt_ingest_messages_total", help, {{"result", "refused"}},
                        [this] { return double(refused_.load()); });
  r->AddCounterCallback("mqtt_ingest_messages_total", help, {{"result", "dropped"}},
                        [this] { return double(dropped_.load()); });
}

void DeviceIngest::OnMessage(const std::string& topic, const std::string& payload,
                             const std::string& raw_traceparent,
                             std::chrono::steady_clock::time_point received_at) {
  received_++;
  // A device's traceparent is copied onto its outcome in the outbox: one
  // that is not a W3C traceparent (up to 64 KB of anything) is dropped.
  auto valid = [](const std::string& tp) { return ValidTraceparent(tp) ? tp : std::string(); };
  const std::string traceparent = valid(raw_traceparent);
  auto where = sync::ParseUpTopic(topic);
  if (!where) {  // nobody to answer: the broker's ACL should not have let it through
    dropped_++;
    Log(LogLevel::kWarn, "op_dropped", {{"topic", topic.substr(0, 200)}, {"reason", "not an up topic"}});
    return;
  }
  const auto& [topic_device, topic_type] = *where;
  // What cannot be decoded is answered with an outcome naming no op: the
  // device learns that something it sent was refused, and why.
  auto shell = [&](const std::string& type) {
    sync::Envelope e;
    e.device = topic_device;
    e.type = type;
    return e;
  };
  if (topic_type == sync::kUpBatch) {
    auto items = sync::DecodeUpBatch(payload);
    if (!items.ok()) return Refuse(topic_device, shell(topic_type), items.take_error(), traceparent);
    received_ += items->size() - 1;  // counted per op
    for (auto& item : *items) {
      if (!item.env.ok()) {
        Refuse(topic_device, shell(topic_type), item.env.take_error(), valid(item.traceparent));
        continue;
      }
      OnEnvelope(topic_device, "", std::move(*item.env), valid(item.traceparent), received_at);
    }
    return;
  }
  auto decoded = sync::Decode(payload);
  if (!decoded.ok()) return Refuse(topic_device, shell(topic_type), decoded.take_error(), traceparent);
  OnEnvelope(topic_device, topic_type, std::move(*decoded), traceparent, received_at);
}

void DeviceIngest::OnEnvelope(const std::string& topic_device, const std::string& topic_type,
                              sync::Envelope env, const std::string& traceparent,
                              std::chrono::steady_clock::time_point received_at) {
  // A device speaks only for itself: the topic (which the broker's ACL ties
  // to the authenticated user) and the signed envelope must agree.
  if (env.device != topic_device)
    return Refuse(topic_device, env,
                  Refusal(Code::kPermissionDenied, "envelope device " + env.device +
                                                       " does not match topic device " + topic_device),
                  traceparent);
  if ((!topic_type.empty() && env.type != topic_type) || !sync::KnownOpType(env.type))
    return Refuse(topic_device, env,
                  Error::Invalid("type \"" + env.type + "\" does not match the topic or is unknown"),
                  traceparent);
  auto found = hub_.FindDevice(env.device);
  if (!found.ok()) return Refuse(topic_device, env, found.take_error(), traceparent);
  if (!*found)
    return Refuse(topic_device, env, Refusal(Code::kUnauthenticated, "unknown device"), traceparent);
  const Device device = **found;
  if (device.revoked)
    return Refuse(topic_device, env, Refusal(Code::kUnauthenticated, "device is revoked"), traceparent);
  // The body's compact JSON, made once: it is signed, and it is the op's fingerprint.
  const std::string body_json = env.body.dump();
  auto key = sync::PublicKeyFromBase64(device.public_key);
  if (!key.ok() || !sync::Verify(env, body_json, *key))
    return Refuse(topic_device, env, Refusal(Code::kUnauthenticated, "bad signature"), traceparent);
  if (env.seq + kReplayWindow < device.max_seq)
    return Refuse(topic_device, env,
                  Refusal(Code::kFailedPrecondition,
                          "replay: sequence " + std::to_string(env.seq) + " is older than the window"),
                  traceparent);
  if (!RoleAllows(device.role, env.type))
    return Refuse(topic_device, env,
                  Refusal(Code::kPermissionDenied, "a " + device.role + " may not send " + env.type),
                  traceparent);

  // The same commands as the HTTP door, with the device's organisation as
  // the actor: never an identity taken from the body.
  HubService::Effect effect;
  const int64_t org = device.org_id;
  if (env.type == sync::kOpNearby) return AnswerNearby(device, env, traceparent);
  if (env.type == sync::kOpCatchUp) return AnswerCatchUp(device, env, traceparent);
  if (env.type == sync::kOpPing) {
    if (!env.body.empty())
      return Refuse(topic_device, env, Error::Invalid("ping takes an empty body"), traceparent);
    accepted_++;
    // "batch_ops": this hub takes batches up of that many ops; a device
    // sends one only to a hub whose answer says so (docs/protocol.md,
    // "Batch up").
    nlohmann::json data{{"now", FormatRfc3339(hub_.clock().Now())}, {"batch_ops", sync::kMaxUpBatchOps}};
    if (last_sent_)
      if (auto last = last_sent_(device.id)) data["last"] = *last;
    return AnswerQuery(device.id, {env.op, env.seq, sync::OutcomeStatus::kAccepted, "ok", "", std::move(data)},
                       traceparent);
  }
  // The shared rows the op will update: the device's, and the post's or
  // the vehicle's (see HubService::Submit).
  GroupCommitter::Lanes lanes{HubService::DeviceLane(device.id)};
  if (env.type == sync::kOpPickUp) {
    auto id = SurplusIdOf(env.body, {"surplus_id", "handover_code", "actual_kg"});
    if (!id.ok()) return Refuse(topic_device, env, id.take_error(), traceparent);
    lanes.push_back(HubService::SurplusLane(*id));
    nlohmann::json rest = std::move(env.body);  // not read again: body_json stands for it
    rest.erase("surplus_id");
    auto req = ParsePickUpRequestJson(rest, org);
    if (!req.ok()) return Refuse(topic_device, env, req.take_error(), traceparent);
    effect = hub_.PickUpEffect(*id, org, req->handover_code, req->actual_kg);
  } else if (env.type == sync::kOpPostSurplus) {
    nlohmann::json body = std::move(env.body);  // not read again: body_json stands for it
    if (body.contains("provider_id") && body["provider_id"] != org)
      return Refuse(topic_device, env,
                    Refusal(Code::kPermissionDenied, "provider_id is not this device's organisation"),
                    traceparent);
    body["provider_id"] = org;
    auto draft = ParseSurplusDraftJson(body, hub_.clock().Now());
    if (!draft.ok()) return Refuse(topic_device, env, draft.take_error(), traceparent);
    effect = hub_.PostEffect(std::move(*draft), traceparent, device.id);
  } else if (env.type == sync::kOpVehicle) {
    effect = hub_.VehicleEffect(org, body_json, device.id, env.seq);
    lanes.push_back(HubService::VehicleLane(org));
  } else {
    bool claim = env.type == sync::kOpClaim;
    auto id = claim ? SurplusIdOf(env.body, {"surplus_id", "version"})
                    : SurplusIdOf(env.body, {"surplus_id"});
    if (!id.ok()) return Refuse(topic_device, env, id.take_error(), traceparent);
    lanes.push_back(HubService::SurplusLane(*id));
    HubService::Decide decide;
    if (claim) {
      if (!env.body.contains("version") || !env.body["version"].is_number_unsigned())
        return Refuse(topic_device, env,
                      Error::Invalid("request has invalid fields",
                                     {{"version", "must be a positive integer"}}),
                      traceparent);
      int64_t version = env.body["version"].get<int64_t>();
      decide = [org, version](const Surplus& cur, Timestamp) { return DecideClaim(cur, org, version); };
    } else if (env.type == sync::kOpDeliver) {
      decide = [org](const Surplus& cur, Timestamp) { return DecideDeliver(cur, org); };
    } else if (env.type == sync::kOpAccept) {
      decide = [org](const Surplus& cur, Timestamp now) { return DecideAccept(cur, org, now); };
    } else if (env.type == sync::kOpRelease) {
      decide = [org](const Surplus& cur, Timestamp) { return DecideRelease(cur, org); };
    } else {
      decide = [org](const Surplus& cur, Timestamp) { return DecideDecline(cur, org); };
    }
    effect = hub_.DecisionEffect(*id, org, std::move(decide));
  }

  std::string device_id = device.id;
  uint64_t seq = env.seq;
  std::string op = env.op;
  // The checks above used a cached device record; revocation and the replay
  // window are decided again on the committed row, in the transaction.
  effect = [device_id, seq, effect = std::move(effect)](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(auto d, s.GetDevice(device_id));
    if (!d || d->revoked) return Refusal(Code::kUnauthenticated, "device is revoked");
    if (seq + kReplayWindow < d->max_seq)
      return Refusal(Code::kFailedPrecondition,
                     "replay: sequence " + std::to_string(seq) + " is older than the window");
    return effect(s);
  };
  // In the effect's transaction: the device's outcome and its sequence mark.
  auto also = [this, device_id, seq, op, traceparent](StoreSession& s, const Reply& r) -> Status {
    PP_RETURN_IF_ERROR(s.AdvanceDeviceSeq(device_id, seq));
    return s.AppendOutbox(AcceptedOutcomeEvent(device_id, op, seq,
                                               r.replayed ? "duplicate" : r.stale ? "stale" : "ok",
                                               r.json, traceparent,
                                               hub_.clock().Now()));
  };
  std::string fingerprint = Fingerprint(env.type + "\n" + body_json);
  const bool is_claim = env.type == sync::kOpClaim || env.type == sync::kOpAccept;
  std::string scope = "device:" + device_id;
  // The device's ops commit in the order they came, and never sit in two
  // store writers' batches at once (its row's max_seq: no deadlocks); a
  // batch locks its lanes' rows in one order before its ops run (other
  // replicas' batches on the same rows wait, not deadlock).
  hub_.Submit(std::move(scope), op, fingerprint, std::move(effect), also,
              [this, device_id, env = std::move(env), traceparent, is_claim,
               received_at](Result<Reply> r) {
                if (is_claim && claim_latency_ && (r.ok() || r.error().code == Code::kAborted))
                  claim_latency_->Observe(std::chrono::duration<double>(
                                              std::chrono::steady_clock::now() - received_at)
                                              .count());
                if (r.ok()) {
                  accepted_++;
                  if (!traceparent.empty())  // devices that trace: one line per op, greppable
                    Log(LogLevel::kInfo, "op_applied",
                        {{"device", device_id}, {"op", env.op}, {"type", env.type},
                         {"trace", TraceId(traceparent)}, {"replayed", r->replayed ? "true" : "false"}});
                  return;
                }
                Refuse(device_id, env, r.take_error(), traceparent);
              },
              std::move(lanes));
}

}  // namespace pp
