#include "cloud-hub/core/hub_service.h"

#include <cstdio>
#include <future>

#include <sodium.h>

#include "common/domain_json.h"
#include "common/geo.h"
#include "common/time_format.h"
#include "common/lifecycle.h"

namespace pp {
namespace {

Result<Reply> Await(const std::function<void(HubService::Callback)>& start) {
  std::promise<Result<Reply>> p;
  auto f = p.get_future();
  start([&p](Result<Reply> r) { p.set_value(std::move(r)); });
  return f.get();
}

std::string NgoCommandFingerprint(const char* what, int64_t surplus_id, int64_t ngo,
                                  int64_t version = 0) {
  return Fingerprint(nlohmann::json{{"op", what}, {"surplus_id", surplus_id}, {"ngo_id", ngo},
                                    {"version", version}}
                         .dump());
}

// Six digits, uniformly random (libsodium's CSPRNG): short enough to read
// out at a kitchen door, and a wrong guess only earns a refusal.
std::string NewHandoverCode() {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06u", unsigned(randombytes_uniform(1000000)));
  return buf;
}

// Until its tablet reports, an NGO's vehicle stands at the depot.
Vehicle DepotVehicle(const Organization& ngo) {
  Vehicle v;
  v.ngo_id = ngo.id;
  v.position = ngo.position;
  v.updated_at = ngo.created_at;
  return v;
}

}  // namespace

HubService::HubService(Store& store, GroupCommitter& committer, const Clock& clock)
    : store_(store), committer_(committer), clock_(clock) {
  if (sodium_init() < 0) std::abort();  // no CSPRNG: handover codes would be guessable
  committer_.SetLanePrologue([](StoreSession& s, const std::vector<std::string>& lanes) -> Status {
    StoreSession::RowLocks rows;
    for (const auto& lane : lanes) {
      if (lane.starts_with(kDeviceLane)) rows.devices.push_back(lane.substr(kDeviceLane.size()));
      else if (lane.starts_with(kSurplusLane)) rows.surplus.push_back(std::stoll(lane.substr(kSurplusLane.size())));
      else if (lane.starts_with(kVehicleLane)) rows.vehicles.push_back(std::stoll(lane.substr(kVehicleLane.size())));
    }
    // One post or vehicle row besides the devices is taken by its op after
    // the devices' locks: already in the one order. Only two or more could
    // be taken out of order (and the statement costs a round trip).
    if (rows.surplus.size() + rows.vehicles.size() < 2) rows.surplus.clear(), rows.vehicles.clear();
    return s.LockRows(rows);
  });
}

void HubService::Submit(std::string scope, std::string key, std::string fingerprint,
                        Effect effect, Also also, Callback done, GroupCommitter::Lanes lanes) {
  // Filled by the op (possibly more than once, if its batch is retried) and
  // read by `done` after the commit.
  auto reply = std::make_shared<Result<Reply>>(Error::Internal("operation did not run"));
  auto op = [this, scope, key, fingerprint, effect = std::move(effect), also = std::move(also),
             reply](StoreSession& s) -> Status {
    if (!key.empty()) {
      PP_ASSIGN_OR_RETURN(auto prior, s.GetIdempotency(scope, key));
      if (prior) {
        if (prior->fingerprint != fingerprint) {
          Error e = Error::Precondition("Idempotency-Key \"" + key +
                                        "\" was already used for a different request");
          *reply = e;
          return e;
        }
        Reply replayed{.json = prior->result_json, .replayed = true};
        if (also) PP_RETURN_IF_ERROR(also(s, replayed));
        *reply = std::move(replayed);
        return OkStatus();
      }
    }
    auto result = effect(s);
    if (!result.ok()) {
      *reply = result.error();
      return result.take_error();
    }
    if (!key.empty())
      PP_RETURN_IF_ERROR(s.PutIdempotency({scope, key, fingerprint, result->json, clock_.Now()}));
    if (also) PP_RETURN_IF_ERROR(also(s, *result));
    *reply = std::move(result);
    return OkStatus();
  };
  committer_.Submit(std::move(op), [this, reply, done = std::move(done)](Status st) {
    if (!st.ok()) return done(st.take_error());
    if (commit_hook_) commit_hook_();
    if (metrics_ && reply->ok() && !(*reply)->replayed && (*reply)->surplus) CountChange(*(*reply)->surplus);
    if (listener_ && reply->ok() && !(*reply)->replayed) {
      if ((*reply)->surplus) listener_->OnSurplusChanged(*(*reply)->surplus, (*reply)->alert);
      if ((*reply)->also_posted) listener_->OnSurplusChanged(*(*reply)->also_posted, OperatorAlert::kNone);
      if ((*reply)->vehicle) listener_->OnVehicleChanged(*(*reply)->vehicle);
    }
    done(std::move(*reply));
  }, std::move(lanes));
}

void HubService::SetMetrics(metrics::Registry* registry) {
  metrics_ = registry;
  tons_delivered_ = &registry->GetCounter("food_waste_prevented_tons_total",
                                          "Food delivered to NGOs (weight picked up), in tonnes.");
}

void HubService::CountChange(const Surplus& after) {
  metrics_->GetCounter("surplus_changes_total", "Committed changes to surplus posts, by the status they reached.",
                       {{"status", std::string(ToString(after.status))}})
      .Inc();
  if (after.status == SurplusStatus::kDelivered)
    tons_delivered_->Inc(after.picked_up_kg.value_or(after.draft.quantity_kg.value_or(0)) / 1000.0);
}

Result<std::optional<Organization>> HubService::FindOrganization(StoreSession& s, int64_t id) {
  {
    std::lock_guard lock(mu_);
    if (auto it = orgs_.find(id);
        it != orgs_.end() && clock_.Monotonic() - it->second.second < kOrgCacheTtl)
      return std::optional<Organization>(it->second.first);
  }
  // Read in the op's transaction: committed, or this batch's own edit,
  // which commits with it (a batch that rolls back is run again op by op).
  PP_ASSIGN_OR_RETURN(auto org, s.GetOrganization(id));
  if (org) CacheOrganization(*org);
  return org;
}

void HubService::CacheOrganization(const Organization& o) {
  std::lock_guard lock(mu_);
  orgs_[o.id] = {o, clock_.Monotonic()};
}

void HubService::UpdateOrganization(int64_t id, OrganizationChange change, Callback done) {
  auto updated = std::make_shared<Organization>();
  auto effect = [id, change = std::move(change), updated](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(auto org, s.GetOrganization(id));
    if (!org) return Error::NotFound("no organisation " + std::to_string(id));
    *updated = *org;
    if (change.name) updated->name = *change.name;
    if (change.position) updated->position = *change.position;
    PP_ASSIGN_OR_RETURN(bool found, s.UpdateOrganization(*updated));
    if (!found) return Error::NotFound("no organisation " + std::to_string(id));
    return Reply{.json = ToJson(*updated).dump()};
  };
  // No idempotency key: the same edit twice leaves the same organisation.
  Submit("", "", "", effect, nullptr, [this, updated, done = std::move(done)](Result<Reply> r) {
    if (r.ok()) CacheOrganization(*updated);
    done(std::move(r));
  });
}

void HubService::CreateOrganization(NewOrganization org, std::string key, Callback done) {
  Timestamp now = clock_.Now();
  nlohmann::json canonical{{"kind", ToString(org.kind)},
                           {"name", org.name},
                           {"lat", org.position.lat},
                           {"lon", org.position.lon}};
  auto created =
      std::make_shared<Organization>(Organization{0, org.kind, org.name, org.position, now});
  auto effect = [created](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(created->id, s.InsertOrganization(
                                         {created->kind, created->name, created->position},
                                         created->created_at));
    if (created->kind == OrgKind::kNgo) PP_RETURN_IF_ERROR(s.UpsertVehicle(DepotVehicle(*created)));
    return Reply{.json = ToJson(*created).dump()};
  };
  Submit("organization.create", std::move(key), Fingerprint(canonical.dump()), effect, nullptr,
                   [this, created, done = std::move(done)](Result<Reply> r) {
                     if (r.ok() && !r->replayed) {
                       CacheOrganization(*created);
                       if (listener_ && created->kind == OrgKind::kNgo)
                         listener_->OnVehicleChanged(DepotVehicle(*created));
                     }
                     done(std::move(r));
                   });
}

HubService::Effect HubService::PostEffect(SurplusDraft draft, std::string traceparent, std::string source_device) {
  return [this, draft = std::move(draft), traceparent = std::move(traceparent),
          source_device = std::move(source_device)](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(auto provider, FindOrganization(s, draft.provider_id));
    if (!provider || provider->kind != OrgKind::kProvider)
      return Error::Invalid("request has invalid fields",
                            {{"provider_id", "no provider organisation with this id"}});
    Timestamp now = clock_.Now();
    auto x = std::make_shared<Surplus>();
    x->draft = draft;
    x->position = draft.position.value_or(provider->position);
    x->status = SurplusStatus::kAvailable;
    x->version = 1;
    x->created_at = x->updated_at = now;
    x->traceparent = traceparent;
    PP_ASSIGN_OR_RETURN(x->id, s.InsertSurplus(*x));
    PP_RETURN_IF_ERROR(
        s.AppendHistory({x->id, 1, now, std::nullopt, x->status, "post", draft.provider_id}));
    std::string body = ToJson(*x).dump();
    std::string event = body;
    if (!source_device.empty()) {  // spliced: body is a JSON object
      event.pop_back();
      event += ",\"source_device\":" + nlohmann::json(source_device).dump() + "}";
    }
    PP_RETURN_IF_ERROR(s.AppendOutbox({0, "surplus.posted", x->id, std::move(event), now, std::nullopt}));
    return Reply{.json = std::move(body), .surplus = x};
  };
}

void HubService::PostSurplus(SurplusDraft draft, std::string key, Callback done,
                             std::string traceparent) {
  std::string scope = "surplus.post/provider:" + std::to_string(draft.provider_id);
  std::string fingerprint = Fingerprint(ToJson(draft).dump());
  Submit(std::move(scope), std::move(key), std::move(fingerprint),
         PostEffect(std::move(draft), std::move(traceparent)),
         nullptr, std::move(done));
}

Result<Reply> HubService::ApplyDecision(StoreSession& s, int64_t surplus_id,
                                        std::optional<int64_t> ngo, const Decide& decide) {
  if (ngo) {
    PP_ASSIGN_OR_RETURN(auto org, FindOrganization(s, *ngo));
    if (!org || org->kind != OrgKind::kNgo)
      return Error::Invalid("request has invalid fields",
                            {{"ngo_id", "no NGO organisation with this id"}});
  }
  PP_ASSIGN_OR_RETURN(auto current, s.GetSurplus(surplus_id));
  if (!current) return Error::NotFound("no surplus post " + std::to_string(surplus_id));
  Timestamp now = clock_.Now();
  // The domain decides (table, version, offer), the store enforces (the
  // conditional UPDATE), because another transaction may have won since our
  // read — in another hub process, say.
  PP_ASSIGN_OR_RETURN(Decision d, decide(*current, now));
  if (TargetOf(d.event) == SurplusStatus::kClaimed) d.handover_code = NewHandoverCode();
  auto after = std::make_shared<Surplus>(Apply(*current, d, now));
  PP_ASSIGN_OR_RETURN(bool applied,
                      s.ApplyChange({surplus_id, current->version, d.event, d.claimed_by, d.match,
                                     after->handover_code, after->picked_up_kg, now}));
  if (!applied) {
    PP_ASSIGN_OR_RETURN(auto winner, s.GetSurplus(surplus_id));
    if (!winner) return Error::NotFound("no surplus post " + std::to_string(surplus_id));
    return Error::Conflict("surplus " + std::to_string(surplus_id) + " changed concurrently",
                           StateJson(*winner).dump());
  }
  PP_RETURN_IF_ERROR(s.AppendHistory({surplus_id, after->version, now, current->status,
                                      after->status, std::string(ToString(d.event)), d.actor}));
  nlohmann::json body = ToJson(*after);
  nlohmann::json event = body;
  if (after->claimed_by) {
    // What the provider's kiosk shows: who is coming, and when.
    PP_ASSIGN_OR_RETURN(auto claimer, FindOrganization(s, *after->claimed_by));
    if (claimer) event["claimed_by_name"] = body["claimed_by_name"] = claimer->name;
    if (after->status == SurplusStatus::kClaimed) {
      PP_ASSIGN_OR_RETURN(auto vehicle, s.GetVehicle(*after->claimed_by));
      if (vehicle) {
        auto eta = now + std::chrono::seconds(int64_t(
                             TravelModel{}.SecondsFor(HaversineKm(vehicle->position, after->position))));
        event["pickup_eta"] = body["pickup_eta"] = FormatRfc3339(eta);
      }
    }
  }
  // The code travels only in the outbox; the relay shows it to the
  // provider's devices alone (cloud-hub/mqtt/outbox_relay.cc).
  if (!after->handover_code.empty()) event["handover_code"] = after->handover_code;
  PP_RETURN_IF_ERROR(s.AppendOutbox({0, d.outbox_type, surplus_id, event.dump(), now, std::nullopt}));
  return Reply{.json = body.dump(), .surplus = after, .alert = AlertOf(*current, d)};
}

HubService::Effect HubService::PickUpEffect(int64_t surplus_id, int64_t ngo, std::string code,
                                            double kg) {
  auto decide = [ngo, code, kg](const Surplus& cur, Timestamp) {
    return DecidePickUp(cur, ngo, code, kg);
  };
  return [this, surplus_id, ngo, decide](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(Reply r, ApplyDecision(s, surplus_id, ngo, decide));
    const Surplus& after = *r.surplus;
    // A partial pickup: what was left behind is posted again, at once and in
    // the same transaction, so the food is offered to the next NGO.
    double left = after.draft.quantity_kg.value_or(0) - after.picked_up_kg.value_or(0);
    if (after.draft.quantity_kg && left >= kMinRemainderKg) {
      SurplusDraft rest = after.draft;
      rest.quantity_kg = left;
      rest.portions.reset();
      rest.position = after.position;
      rest.description = "Remainder of post " + std::to_string(after.id) + ": " + after.draft.description;
      PP_ASSIGN_OR_RETURN(Reply posted, PostEffect(std::move(rest), after.traceparent)(s));
      auto j = nlohmann::json::parse(r.json);
      j["remainder_id"] = posted.surplus->id;
      r.json = j.dump();
      r.also_posted = posted.surplus;
    }
    return r;
  };
}

void HubService::PickUp(int64_t surplus_id, PickUpRequest req, std::string key, Callback done) {
  Submit("surplus.pickup/ngo:" + std::to_string(req.ngo_id), std::move(key),
         Fingerprint(nlohmann::json{{"op", "pickup"}, {"surplus_id", surplus_id},
                                    {"ngo_id", req.ngo_id}, {"code", req.handover_code},
                                    {"kg", req.actual_kg}}
                         .dump()),
         PickUpEffect(surplus_id, req.ngo_id, req.handover_code, req.actual_kg), nullptr,
         std::move(done), {SurplusLane(surplus_id)});
}

void HubService::Deliver(int64_t surplus_id, int64_t ngo, std::string key, Callback done) {
  SubmitDecision(
      surplus_id, ngo, "surplus.deliver/ngo:" + std::to_string(ngo), std::move(key),
      NgoCommandFingerprint("deliver", surplus_id, ngo),
      [ngo](const Surplus& cur, Timestamp) { return DecideDeliver(cur, ngo); }, std::move(done));
}

HubService::Effect HubService::DecisionEffect(int64_t surplus_id, std::optional<int64_t> ngo,
                                              Decide decide) {
  return [this, surplus_id, ngo, decide = std::move(decide)](StoreSession& s) {
    return ApplyDecision(s, surplus_id, ngo, decide);
  };
}

void HubService::SubmitDecision(int64_t surplus_id, std::optional<int64_t> ngo, std::string scope,
                                std::string key, std::string fingerprint, Decide decide,
                                Callback done) {
  Submit(std::move(scope), std::move(key), std::move(fingerprint),
         DecisionEffect(surplus_id, ngo, std::move(decide)), nullptr, std::move(done),
         {SurplusLane(surplus_id)});
}

void HubService::Emit(OutboxEvent event, std::function<void(Status)> done) {
  committer_.Submit([event = std::move(event)](StoreSession& s) { return s.AppendOutbox(event); },
                    [this, done = std::move(done)](Status st) {
                      if (st.ok() && commit_hook_) commit_hook_();
                      done(std::move(st));
                    });
}

void HubService::Claim(int64_t surplus_id, ClaimRequest req, std::string key, Callback done) {
  SubmitDecision(
      surplus_id, req.ngo_id, "surplus.claim/ngo:" + std::to_string(req.ngo_id), std::move(key),
      NgoCommandFingerprint("claim", surplus_id, req.ngo_id, req.version),
      [req](const Surplus& cur, Timestamp) { return DecideClaim(cur, req.ngo_id, req.version); },
      std::move(done));
}

void HubService::Accept(int64_t surplus_id, int64_t ngo, std::string key, Callback done) {
  SubmitDecision(
      surplus_id, ngo, "surplus.accept/ngo:" + std::to_string(ngo), std::move(key),
      NgoCommandFingerprint("accept", surplus_id, ngo),
      [ngo](const Surplus& cur, Timestamp now) { return DecideAccept(cur, ngo, now); },
      std::move(done));
}

void HubService::Decline(int64_t surplus_id, int64_t ngo, std::string key, Callback done) {
  SubmitDecision(
      surplus_id, ngo, "surplus.decline/ngo:" + std::to_string(ngo), std::move(key),
      NgoCommandFingerprint("decline", surplus_id, ngo),
      [ngo](const Surplus& cur, Timestamp) { return DecideDecline(cur, ngo); }, std::move(done));
}

void HubService::Release(int64_t surplus_id, int64_t ngo, std::string key, Callback done) {
  SubmitDecision(
      surplus_id, ngo, "surplus.release/ngo:" + std::to_string(ngo), std::move(key),
      NgoCommandFingerprint("release", surplus_id, ngo),
      [ngo](const Surplus& cur, Timestamp) { return DecideRelease(cur, ngo); }, std::move(done));
}

void HubService::Assign(int64_t surplus_id, int64_t ngo, std::string key, Callback done) {
  SubmitDecision(
      surplus_id, ngo, "surplus.assign", std::move(key),
      NgoCommandFingerprint("assign", surplus_id, ngo),
      [ngo](const Surplus& cur, Timestamp) { return DecideAssign(cur, ngo); }, std::move(done));
}

void HubService::ApplyInternal(int64_t surplus_id, Decide decide, Callback done) {
  SubmitDecision(surplus_id, std::nullopt, "", "", "", std::move(decide), std::move(done));
}

Status HubService::UpsertVehicle(const Vehicle& v) {
  auto st = committer_.Run([this, v](StoreSession& s) -> Status {
    PP_ASSIGN_OR_RETURN(auto org, FindOrganization(s, v.ngo_id));
    if (!org || org->kind != OrgKind::kNgo)
      return Error::NotFound("no NGO organisation " + std::to_string(v.ngo_id));
    return s.UpsertVehicle(v);
  }, {VehicleLane(v.ngo_id)});
  if (st.ok() && listener_) listener_->OnVehicleChanged(v);
  return st;
}

HubService::Effect HubService::VehicleEffect(int64_t ngo_id, std::string body, std::string device,
                                             uint64_t seq) {
  return [this, ngo_id, body = std::move(body), device = std::move(device),
          seq](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(auto current, s.GetVehicle(ngo_id));
    if (!current) return Error::NotFound("no NGO vehicle " + std::to_string(ngo_id));
    PP_ASSIGN_OR_RETURN(Vehicle v, ParseVehicleUpdate(body, *current, clock_.Now()));
    // With several hub replicas a tablet's reports may commit out of order.
    // Read-then-write is safe here: a device's ops never run in two
    // transactions at once (its lane in this hub; across replicas, the lane
    // prologue's lock on its device row, taken before this read).
    if (!device.empty() && current->report_device == device && seq <= current->report_seq) {
      return Reply{.json = ToJson(*current).dump(), .stale = true};
    }
    v.report_device = device;
    v.report_seq = seq;
    PP_RETURN_IF_ERROR(s.UpsertVehicle(v));
    return Reply{.json = ToJson(v).dump(), .vehicle = std::make_shared<Vehicle>(v)};
  };
}

Result<Vehicle> HubService::UpdateVehicle(int64_t ngo_id, std::string body) {
  auto r = Await([&](Callback cb) {
    Submit("", "", "", VehicleEffect(ngo_id, std::move(body)), nullptr, cb, {VehicleLane(ngo_id)});
  });
  if (!r.ok()) return r.take_error();
  return *r->vehicle;
}

Result<Reply> HubService::RegisterDevice(Device d) {
  d.created_at = clock_.Now();
  d.revoked = false;
  d.max_seq = 0;
  auto r = Await([&](Callback cb) {
    Submit("", "", "",
           [this, d](StoreSession& s) -> Result<Reply> {
             PP_ASSIGN_OR_RETURN(auto org, FindOrganization(s, d.org_id));
             OrgKind want = d.role == "kiosk" ? OrgKind::kProvider : OrgKind::kNgo;
             if (!org || org->kind != want)
               return Error::Invalid("request has invalid fields",
                                     {{"org_id", d.role == "kiosk"
                                                     ? "a kiosk belongs to a provider organisation"
                                                     : "a tablet belongs to an NGO organisation"}});
             PP_ASSIGN_OR_RETURN(auto existing, s.GetDevice(d.id));
             if (existing)
               return Error{Code::kAlreadyExists, "device " + d.id + " is already registered", {}, {}};
             PP_RETURN_IF_ERROR(s.InsertDevice(d));
             return Reply{.json = ToJson(d).dump()};
           },
           nullptr, cb);
  });
  return r;
}

Status HubService::RevokeDevice(const std::string& id) {
  auto st = committer_.Run([id](StoreSession& s) -> Status {
    PP_ASSIGN_OR_RETURN(bool found, s.RevokeDevice(id));
    if (!found) return Error::NotFound("no device " + id);
    return OkStatus();
  }, {DeviceLane(id)});
  std::lock_guard lock(mu_);
  devices_.erase(id);
  return st;
}

Result<std::optional<Device>> HubService::FindDevice(const std::string& id) {
  auto now = clock_.Monotonic();
  {
    std::lock_guard lock(mu_);
    auto it = devices_.find(id);
    if (it != devices_.end() && now - it->second.second < kDeviceCacheTtl)
      return std::optional<Device>(it->second.first);
  }
  auto d = Read<std::optional<Device>>([&](StoreSession& s) { return s.GetDevice(id); });
  if (d.ok() && *d) {
    std::lock_guard lock(mu_);
    devices_[id] = {**d, now};
  }
  return d;
}

Result<std::vector<OutboxEvent>> HubService::ListUnsentOutbox(int limit, int64_t after_id) {
  return Read<std::vector<OutboxEvent>>([&](StoreSession& s) { return s.ListUnsentOutbox(after_id, limit); });
}

Result<std::vector<OutboxEvent>> HubService::ListOutbox(int64_t after_id, int limit) {
  return Read<std::vector<OutboxEvent>>([&](StoreSession& s) { return s.ListOutbox(after_id, limit); });
}

void HubService::MarkOutboxSent(std::vector<int64_t> ids, LastSentByDevice last_sent,
                                std::function<void(Status)> done) {
  Timestamp now = clock_.Now();
  // Lazy: a mark lost in a crash only sends the events again (devices drop
  // repeats by id), so it waits for the next ops' commit rather than paying
  // for one of its own. The devices' last ids go with it: a restarted hub
  // names what was marked, and republishes what was not.
  committer_.SubmitLazy(
      [ids = std::move(ids), last_sent = std::move(last_sent), now](StoreSession& s) -> Status {
        PP_RETURN_IF_ERROR(s.MarkOutboxSent(ids, now));
        return s.RecordLastSent(last_sent);
      },
      std::move(done));
}

Result<int64_t> HubService::LastSentTo(const std::string& device) {
  return Read<int64_t>([&](StoreSession& s) { return s.GetLastSent(device); });
}

Result<std::vector<Device>> HubService::ListDevicesOfOrg(int64_t org_id) {
  return Read<std::vector<Device>>([&](StoreSession& s) { return s.ListDevicesOfOrg(org_id); });
}

Result<Reply> HubService::CreateOrganization(NewOrganization org, std::string key) {
  return Await([&](Callback cb) { CreateOrganization(std::move(org), std::move(key), cb); });
}
Result<Reply> HubService::UpdateOrganization(int64_t id, OrganizationChange change) {
  return Await([&](Callback cb) { UpdateOrganization(id, std::move(change), cb); });
}
Result<Reply> HubService::PostSurplus(SurplusDraft draft, std::string key, std::string traceparent) {
  return Await([&](Callback cb) { PostSurplus(std::move(draft), std::move(key), cb, std::move(traceparent)); });
}
Result<Reply> HubService::Claim(int64_t id, ClaimRequest req, std::string key) {
  return Await([&](Callback cb) { Claim(id, req, std::move(key), cb); });
}
Result<Reply> HubService::Accept(int64_t id, int64_t ngo, std::string key) {
  return Await([&](Callback cb) { Accept(id, ngo, std::move(key), cb); });
}
Result<Reply> HubService::Decline(int64_t id, int64_t ngo, std::string key) {
  return Await([&](Callback cb) { Decline(id, ngo, std::move(key), cb); });
}
Result<Reply> HubService::Release(int64_t id, int64_t ngo, std::string key) {
  return Await([&](Callback cb) { Release(id, ngo, std::move(key), cb); });
}
Result<Reply> HubService::Assign(int64_t id, int64_t ngo, std::string key) {
  return Await([&](Callback cb) { Assign(id, ngo, std::move(key), cb); });
}
Result<Reply> HubService::PickUp(int64_t id, PickUpRequest req, std::string key) {
  return Await([&](Callback cb) { PickUp(id, std::move(req), std::move(key), cb); });
}
Result<Reply> HubService::Deliver(int64_t id, int64_t ngo, std::string key) {
  return Await([&](Callback cb) { Deliver(id, ngo, std::move(key), cb); });
}
Result<Reply> HubService::ApplyInternal(int64_t id, Decide decide) {
  return Await([&](Callback cb) { ApplyInternal(id, std::move(decide), cb); });
}

template <typename T, typename F>
Result<T> HubService::Read(F&& f) {
  std::unique_ptr<StoreSession> s;
  {
    std::lock_guard lock(mu_);
    if (!idle_readers_.empty()) {
      s = std::move(idle_readers_.back());
      idle_readers_.pop_back();
    }
  }
  if (!s) {
    PP_ASSIGN_OR_RETURN(s, store_.OpenSession());
  }
  PP_RETURN_IF_ERROR(s->Begin(TxnMode::kRead));
  Result<T> r = f(*s);
  s->Rollback();  // read-only: nothing to keep
  // A session whose read failed may be broken: let it go.
  if (r.ok() || !IsStoreFailure(r.error())) {
    std::lock_guard lock(mu_);
    idle_readers_.push_back(std::move(s));
  }
  return r;
}

Result<Reply> HubService::GetOrganization(int64_t id) {
  return Read<Reply>([&](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(auto org, s.GetOrganization(id));
    if (!org) return Error::NotFound("no organisation " + std::to_string(id));
    CacheOrganization(*org);
    return Reply{.json = ToJson(*org).dump()};
  });
}

Result<Reply> HubService::GetSurplus(int64_t id) {
  return Read<Reply>([&](StoreSession& s) -> Result<Reply> {
    PP_ASSIGN_OR_RETURN(auto x, s.GetSurplus(id));
    if (!x) return Error::NotFound("no surplus post " + std::to_string(id));
    PP_ASSIGN_OR_RETURN(auto history, s.GetHistory(id));
    nlohmann::json j = ToJson(*x);
    j["history"] = nlohmann::json::array();
    for (const auto& h : history) j["history"].push_back(ToJson(h));
    return Reply{.json = j.dump(), .surplus = std::make_shared<Surplus>(*x)};
  });
}

Result<std::vector<Surplus>> HubService::GetSurplusMany(const std::vector<int64_t>& ids) {
  return Read<std::vector<Surplus>>([&](StoreSession& s) -> Result<std::vector<Surplus>> {
    std::vector<Surplus> out;
    out.reserve(ids.size());
    for (int64_t id : ids) {
      PP_ASSIGN_OR_RETURN(auto x, s.GetSurplus(id));
      if (x) out.push_back(std::move(*x));
    }
    return out;
  });
}

Result<std::vector<Surplus>> HubService::ListSurplus(const std::vector<SurplusStatus>& statuses,
                                                     int64_t after_id, int limit) {
  return Read<std::vector<Surplus>>(
      [&](StoreSession& s) { return s.ListSurplus(statuses, after_id, limit); });
}

Result<int64_t> HubService::CountSurplusIn(SurplusStatus status) {
  return Read<int64_t>([&](StoreSession& s) { return s.CountSurplusIn(status); });
}

Result<int64_t> HubService::CountOverduePickups(Timestamp now) {
  return Read<int64_t>([&](StoreSession& s) { return s.CountOverduePickups(now); });
}

Result<std::vector<Surplus>> HubService::FindSurplus(const SurplusFilter& filter) {
  return Read<std::vector<Surplus>>([&](StoreSession& s) { return s.FindSurplus(filter); });
}

Result<std::vector<Organization>> HubService::ListOrganizations(std::optional<OrgKind> kind,
                                                                int64_t after_id, int limit) {
  return Read<std::vector<Organization>>(
      [&](StoreSession& s) { return s.ListOrganizations(kind, after_id, limit); });
}

Result<Reply> HubService::Cancel(int64_t surplus_id, std::string key) {
  return Await([&](Callback cb) {
    SubmitDecision(surplus_id, std::nullopt, "surplus.cancel", std::move(key),
                   NgoCommandFingerprint("cancel", surplus_id, 0),
                   [](const Surplus& cur, Timestamp) { return DecideCancel(cur); }, cb);
  });
}

Result<std::vector<int64_t>> HubService::ListDue(Timestamp now, int limit) {
  return Read<std::vector<int64_t>>([&](StoreSession& s) { return s.ListDue({now, limit}); });
}

Result<std::vector<Vehicle>> HubService::ListVehicles() {
  return Read<std::vector<Vehicle>>([&](StoreSession& s) { return s.ListVehicles(); });
}

}  // namespace pp
