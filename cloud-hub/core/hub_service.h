// The hub's command handlers: the one core behind both doors. An HTTP request
// and (later) an MQTT op become the same call here, with the same validation,
// the same idempotency and the same optimistic lock; adapters only translate.
//
// Every write goes through the GroupCommitter and is answered only after its
// transaction committed. Every state change writes its history line and its
// outbox event in that same transaction.
//
// Idempotency: a command with a key runs at most once per (scope, key); a
// retry with the same request gets the first result (Reply::replayed), a
// different request under a used key gets kFailedPrecondition.
//
// Thread safety: all methods may be called from any thread.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cloud-hub/core/group_committer.h"
#include "cloud-hub/store/store.h"
#include "common/cascade.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "common/validation.h"

namespace pp {

// The claim latency histogram both doors record (label door="http"|"mqtt").
inline constexpr const char* kClaimLatencyMetric = "surplus_claim_latency_seconds";
inline constexpr const char* kClaimLatencyHelp =
    "Claims and offer acceptances, from receipt to the committed answer.";

// The JSON result of a command, exactly as first produced. Built with
// designated initializers: name what a command sets, the rest is empty.
struct Reply {
  std::string json;
  bool replayed = false;  // true when served from the idempotency record
  // For commands that changed a post, when freshly applied: the post after
  // the change (the matching engine continues from it).
  std::shared_ptr<const Surplus> surplus{};
  OperatorAlert alert = OperatorAlert::kNone;  // raise or resolve the post's operator alert
  std::shared_ptr<const Vehicle> vehicle{};  // for vehicle reports
  // A second post the command created (the remainder of a partial pickup).
  std::shared_ptr<const Surplus> also_posted{};
  // A tablet's vehicle report older than that tablet's report standing:
  // not applied, `json` is the vehicle as it stands (outcome code "stale").
  bool stale = false;
};

// Told about every change after it committed (never about replays). The
// matching engine listens to continue the cascade. Called on a writer
// thread: must not block.
class ChangeListener {
 public:
  virtual ~ChangeListener() = default;
  virtual void OnSurplusChanged(const Surplus& after, OperatorAlert alert) = 0;
  virtual void OnVehicleChanged(const Vehicle& v) = 0;
};

class HubService {
 public:
  using Callback = std::function<void(Result<Reply>)>;

  HubService(Store& store, GroupCommitter& committer, const Clock& clock);

  // Asynchronous: `done` runs after the commit (on a writer thread).
  void CreateOrganization(NewOrganization org, std::string idempotency_key, Callback done);
  // A new name or place (ParseOrganizationChange). A provider's posts made
  // after it start from the new place; posts already made keep theirs.
  // kNotFound if there is no such organisation.
  void UpdateOrganization(int64_t id, OrganizationChange change, Callback done);
  // `traceparent` (W3C, may be empty) stays with the post: its events carry it.
  void PostSurplus(SurplusDraft draft, std::string idempotency_key, Callback done,
                   std::string traceparent = "");
  void Claim(int64_t surplus_id, ClaimRequest req, std::string idempotency_key, Callback done);
  // The offer cascade: an NGO answers its offer; an operator assigns.
  void Accept(int64_t surplus_id, int64_t ngo, std::string idempotency_key, Callback done);
  void Decline(int64_t surplus_id, int64_t ngo, std::string idempotency_key, Callback done);
  // The claiming NGO drops out before pickup (DecideRelease).
  void Release(int64_t surplus_id, int64_t ngo, std::string idempotency_key, Callback done);
  void Assign(int64_t surplus_id, int64_t ngo, std::string idempotency_key, Callback done);
  // Collection and delivery by the claiming NGO. A partial pickup posts the
  // remainder (at least kMinRemainderKg) as a new post in the same transaction.
  void PickUp(int64_t surplus_id, PickUpRequest req, std::string idempotency_key, Callback done);
  void Deliver(int64_t surplus_id, int64_t ngo, std::string idempotency_key, Callback done);
  static constexpr double kMinRemainderKg = 0.1;
  // An operator withdraws a post.
  Result<Reply> Cancel(int64_t surplus_id, std::string idempotency_key);
  // Decisions taken by the hub itself (matching, timers), applied to the
  // post's state at commit time.
  using Decide = std::function<Result<Decision>(const Surplus& current, Timestamp now)>;
  void ApplyInternal(int64_t surplus_id, Decide decide, Callback done);

  Status UpsertVehicle(const Vehicle& v);
  // A vehicle's report (JSON, see ParseVehicleUpdate) applied over its
  // current state; returns the vehicle as stored.
  Result<Vehicle> UpdateVehicle(int64_t ngo_id, std::string body);

  // Blocking forms of the above.
  Result<Reply> CreateOrganization(NewOrganization org, std::string idempotency_key);
  Result<Reply> UpdateOrganization(int64_t id, OrganizationChange change);
  Result<Reply> PostSurplus(SurplusDraft draft, std::string idempotency_key,
                            std::string traceparent = "");
  Result<Reply> Claim(int64_t surplus_id, ClaimRequest req, std::string idempotency_key);
  Result<Reply> Accept(int64_t surplus_id, int64_t ngo, std::string idempotency_key);
  Result<Reply> Decline(int64_t surplus_id, int64_t ngo, std::string idempotency_key);
  Result<Reply> Release(int64_t surplus_id, int64_t ngo, std::string idempotency_key);
  Result<Reply> Assign(int64_t surplus_id, int64_t ngo, std::string idempotency_key);
  Result<Reply> PickUp(int64_t surplus_id, PickUpRequest req, std::string idempotency_key);
  Result<Reply> Deliver(int64_t surplus_id, int64_t ngo, std::string idempotency_key);
  Result<Reply> ApplyInternal(int64_t surplus_id, Decide decide);

  // Reads (a snapshot; never blocks writers).
  Result<Reply> GetOrganization(int64_t id);
  // The post with its full history.
  Result<Reply> GetSurplus(int64_t id);
  // The posts of `ids` that exist, in that order, without their histories,
  // in one read: what the matcher's lists need (GetSurplus for each of a
  // van's 50 nearby posts was 50 transactions, 50 history reads and 50
  // documents built only to be thrown away).
  Result<std::vector<Surplus>> GetSurplusMany(const std::vector<int64_t>& ids);
  Result<std::vector<Surplus>> ListSurplus(const std::vector<SurplusStatus>& statuses,
                                           int64_t after_id, int limit);
  Result<std::vector<Surplus>> FindSurplus(const SurplusFilter& filter);
  Result<int64_t> CountSurplusIn(SurplusStatus status);
  Result<int64_t> CountOverduePickups(Timestamp now);
  Result<std::vector<Organization>> ListOrganizations(std::optional<OrgKind> kind, int64_t after_id,
                                                      int limit);
  Result<std::vector<int64_t>> ListDue(Timestamp now, int limit);
  Result<std::vector<Vehicle>> ListVehicles();

  // Devices (sync protocol). Register: kAlreadyExists if the id is taken;
  // the organisation must exist and match the role (kiosk: provider, tablet: NGO).
  Result<Reply> RegisterDevice(Device d);
  Status RevokeDevice(const std::string& id);
  // Cached; a revocation through this hub is seen at once, through another
  // replica within kDeviceCacheTtl (of the hub's clock: tests move it).
  Result<std::optional<Device>> FindDevice(const std::string& id);
  static constexpr Duration kDeviceCacheTtl{std::chrono::seconds(5)};
  static constexpr Duration kOrgCacheTtl{std::chrono::seconds(5)};  // FindOrganization's
  Result<std::vector<Device>> ListDevicesOfOrg(int64_t org_id);

  // The building blocks both doors use. An Effect is a command's work inside
  // the write transaction; `also` (may be empty) runs in the same transaction
  // after it succeeded or was replayed — the MQTT door writes the device's
  // outcome there.
  using Effect = std::function<Result<Reply>(StoreSession&)>;
  using Also = std::function<Status(StoreSession&, const Reply&)>;
  // `source_device`: the device whose op posts it, if any. Its outcome
  // already carries the post, so the relay leaves that device out of the
  // surplus.posted event (named in the outbox payload, see WireOf): half of
  // a kiosk's bytes down a post, and one write to its store fewer.
  Effect PostEffect(SurplusDraft draft, std::string traceparent = "", std::string source_device = "");
  Effect DecisionEffect(int64_t surplus_id, std::optional<int64_t> ngo, Decide decide);
  // `device`, `seq`: the tablet whose report this is and its sequence
  // number; empty for a report over HTTP (always applied).
  Effect VehicleEffect(int64_t ngo_id, std::string body, std::string device = "", uint64_t seq = 0);
  Effect PickUpEffect(int64_t surplus_id, int64_t ngo, std::string code, double kg);
  // `lanes`: the shared rows the op updates (GroupCommitter): a device's
  // (its sequence mark: the MQTT door passes DeviceLane(id)), a post's
  // (SurplusLane: every decision on it) and an NGO's vehicle's
  // (VehicleLane). Ops of one lane commit in the order submitted; a batch
  // locks its lanes' rows before its ops run, in one order (on PostgreSQL:
  // batches of writers and replicas that share rows then wait for each
  // other instead of deadlocking). An op that updates a shared row without
  // naming it can take that row out of order: deadlocks again.
  static constexpr std::string_view kDeviceLane = "device:", kSurplusLane = "surplus:",
                                    kVehicleLane = "vehicle:";
  static std::string DeviceLane(const std::string& device_id) { return std::string(kDeviceLane) + device_id; }
  static std::string SurplusLane(int64_t surplus_id) { return std::string(kSurplusLane) + std::to_string(surplus_id); }
  static std::string VehicleLane(int64_t ngo_id) { return std::string(kVehicleLane) + std::to_string(ngo_id); }
  void Submit(std::string scope, std::string key, std::string fingerprint, Effect effect, Also also,
              Callback done, GroupCommitter::Lanes lanes = {});
  // Appends one outbox event in its own transaction.
  void Emit(OutboxEvent event, std::function<void(Status)> done);
  // The relay's side of the outbox: unsent events after `after_id`, in id order.
  Result<std::vector<OutboxEvent>> ListUnsentOutbox(int limit, int64_t after_id = 0);
  // Sent or not, after `after_id`, in id order (a device catching up).
  Result<std::vector<OutboxEvent>> ListOutbox(int64_t after_id, int limit);
  // Marks events sent with the next ops' group commit, or alone once the
  // committer's lazy_wait has passed (GroupCommitter::SubmitLazy); `done`
  // runs after it. `last_sent`: per device, the last message these events
  // made (StoreSession::RecordLastSent), recorded in the same transaction.
  using LastSentByDevice = std::map<std::string, int64_t>;
  void MarkOutboxSent(std::vector<int64_t> ids, LastSentByDevice last_sent, std::function<void(Status)> done);
  // What the marks recorded for a device so far (0: nothing).
  Result<int64_t> LastSentTo(const std::string& device);

  const Clock& clock() const { return clock_; }
  // Set once, before traffic.
  void SetListener(ChangeListener* listener) { listener_ = listener; }
  // Counts committed changes by status and the food delivered
  // (food_waste_prevented_tons_total). Set once, before traffic.
  void SetMetrics(metrics::Registry* registry);
  // Called after every committed write (the outbox relay looks at once).
  void SetCommitHook(std::function<void()> hook) { commit_hook_ = std::move(hook); }

 private:
  // Reads the post, asks `decide`, applies the decision with the optimistic
  // lock, writes history and outbox. For NGO commands `ngo` must be an NGO.
  void SubmitDecision(int64_t surplus_id, std::optional<int64_t> ngo, std::string scope,
                      std::string key, std::string fingerprint, Decide decide, Callback done);
  Result<Reply> ApplyDecision(StoreSession& s, int64_t surplus_id, std::optional<int64_t> ngo,
                              const Decide& decide);
  // Organisations are cached after their commit or a committed read: an
  // edit through this hub is seen at once, through another replica within
  // kOrgCacheTtl (a post placed there meanwhile starts from the old place).
  Result<std::optional<Organization>> FindOrganization(StoreSession& s, int64_t id);
  void CacheOrganization(const Organization& o);
  void CountChange(const Surplus& after);

  template <typename T, typename F>
  Result<T> Read(F&& f);

  // Constant after construction.
  Store& store_;
  GroupCommitter& committer_;
  const Clock& clock_;
  ChangeListener* listener_ = nullptr;
  metrics::Registry* metrics_ = nullptr;
  metrics::Counter* tons_delivered_ = nullptr;
  std::function<void()> commit_hook_;

  // Protected by mu_.
  std::mutex mu_;
  std::unordered_map<int64_t, std::pair<Organization, std::chrono::steady_clock::time_point>> orgs_;
  std::unordered_map<std::string, std::pair<Device, std::chrono::steady_clock::time_point>> devices_;
  std::vector<std::unique_ptr<StoreSession>> idle_readers_;
};

}  // namespace pp
