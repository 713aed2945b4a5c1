// The hub's authoritative store, behind one interface with two backends:
// SQLite (embedded, the default; store/sqlite/) and PostgreSQL (store/postgres/).
// Both pass the same contract suite (tests/cloud-hub/store_contract_test.cc).
//
// A Store hands out Sessions; a Session is one database connection and runs
// one transaction at a time. Writes go through the GroupCommitter
// (core/group_committer.h), which batches many operations into one
// transaction; reads open their own Session.
//
// Error mapping at this border (the drivers throw or return codes; nothing
// past this interface does):
//   lost races the database detected (deadlock, serialization) -> kUnavailable
//   unique-key clash                                            -> kAlreadyExists
//   connection lost, busy                                       -> kUnavailable
//   anything else                                               -> kInternal
//
// Thread safety: a Store is safe for concurrent use; a Session is not (one
// thread at a time).
#pragma once

#include <memory>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/domain.h"
#include "common/error.h"
#include "common/lifecycle.h"
#include "common/validation.h"
#include "common/vehicle.h"

namespace pp {

// A conditional status change: the optimistic lock. Succeeds only if the post
// is at `expected_version` and in a status from which `event` is allowed.
struct SurplusChange {
  int64_t surplus_id = 0;
  int64_t expected_version = 0;
  SurplusEvent event = SurplusEvent::kClaim;
  // The post's fields after the change (the caller computes them with the
  // domain; the store writes them only if the lock holds).
  std::optional<int64_t> claimed_by;
  MatchState match;
  std::string handover_code;
  std::optional<double> picked_up_kg;
  Timestamp at{};
};

// Work that has come due: offers past their deadline, dead-lettered posts
// whose retry time has come, open posts past best_before.
struct DueQuery {
  Timestamp now{};
  int limit = 100;
};

// What an operator lists posts by. Unset fields do not filter.
struct SurplusFilter {
  std::vector<SurplusStatus> statuses;   // any of these (all when empty)
  std::optional<int64_t> provider_id;
  std::optional<int64_t> ngo_id;         // claimed_by
  std::optional<Timestamp> from, to;     // [from, to) on created_at, or updated_at (below)
  bool by_updated_at = false;
  struct Box {
    double min_lat, min_lon, max_lat, max_lon;
  };
  std::optional<Box> area;
  int64_t after_id = 0;
  int limit = 100;
};

enum class TxnMode { kRead, kWrite };

class StoreSession {
 public:
  virtual ~StoreSession() = default;

  // kRead transactions see one consistent snapshot and never block writers.
  virtual Status Begin(TxnMode mode = TxnMode::kWrite) = 0;
  virtual Status Commit() = 0;
  virtual void Rollback() = 0;

  virtual Result<int64_t> InsertOrganization(const NewOrganization& org, Timestamp now) = 0;
  virtual Result<std::optional<Organization>> GetOrganization(int64_t id) = 0;
  // Its name and position (kind and id never change); false: no such organisation.
  virtual Result<bool> UpdateOrganization(const Organization& org) = 0;
  // By id after `after_id`; `kind` filters when set.
  virtual Result<std::vector<Organization>> ListOrganizations(std::optional<OrgKind> kind,
                                                              int64_t after_id, int limit) = 0;

  // Inserts `s` (its id is ignored) and returns the new id.
  virtual Result<int64_t> InsertSurplus(const Surplus& s) = 0;
  virtual Result<std::optional<Surplus>> GetSurplus(int64_t id) = 0;
  // true: applied, the post is now at expected_version + 1.
  // false: the lock was lost (other version, other status, or no such post).
  virtual Result<bool> ApplyChange(const SurplusChange& change) = 0;

  // Append-only rows (history, outbox, idempotency) may be written when the
  // transaction commits rather than at the call: a backend may batch them
  // (PostgreSQL does, to save round trips). Their errors (a duplicate key)
  // then surface from Commit(); reads in the same transaction still see them.
  // Posts matching `f`, by id, after `f.after_id` (keyset pagination).
  virtual Result<std::vector<Surplus>> FindSurplus(const SurplusFilter& f) = 0;
  // Posts in `statuses` (all when empty), oldest first, after `after_id`.
  Result<std::vector<Surplus>> ListSurplus(const std::vector<SurplusStatus>& statuses,
                                           int64_t after_id, int limit) {
    SurplusFilter f;
    f.statuses = statuses;
    f.after_id = after_id;
    f.limit = limit;
    return FindSurplus(f);
  }
  // Ids of posts with work due (see DueQuery), oldest deadline first.
  virtual Result<std::vector<int64_t>> ListDue(const DueQuery& q) = 0;

  // NGO vehicles (one per NGO; see common/vehicle.h).
  virtual Status UpsertVehicle(const Vehicle& v) = 0;
  virtual Result<std::vector<Vehicle>> ListVehicles() = 0;
  virtual Result<std::optional<Vehicle>> GetVehicle(int64_t ngo_id) = 0;

  // Devices (sync protocol). InsertDevice: kAlreadyExists if the id is taken.
  virtual Status InsertDevice(const Device& d) = 0;
  virtual Result<std::optional<Device>> GetDevice(std::string_view id) = 0;
  // false if there is no such device.
  virtual Result<bool> RevokeDevice(std::string_view id) = 0;
  // max_seq = max(max_seq, seq)
  virtual Status AdvanceDeviceSeq(std::string_view id, uint64_t seq) = 0;
  // Locks these rows until the transaction ends, always in one order (the
  // store's: devices, then posts, then vehicles, each by key), so that
  // transactions locking overlapping sets wait for each other rather than
  // deadlock. Unknown keys are skipped. SQLite: nothing to do (one writer
  // holds the whole database).
  struct RowLocks {
    std::vector<std::string> devices;
    std::vector<int64_t> surplus;   // post ids
    std::vector<int64_t> vehicles;  // NGO ids
  };
  virtual Status LockRows(const RowLocks& rows) = 0;
  virtual Result<std::vector<Device>> ListDevicesOfOrg(int64_t org_id) = 0;
  // The id of the last message the outbox relay published to a device, as
  // of its committed marks (0: none, or no such device). A restarted hub
  // names it to the device (`prev`, a ping's `last`) so that a loss from
  // before the restart still shows. Per device of `last`: last_sent =
  // max(last_sent, id); a device that is gone is skipped.
  virtual Status RecordLastSent(const std::map<std::string, int64_t>& last) = 0;
  virtual Result<int64_t> GetLastSent(std::string_view device) = 0;

  virtual Status AppendHistory(const HistoryEntry& entry) = 0;
  virtual Result<std::vector<HistoryEntry>> GetHistory(int64_t surplus_id) = 0;

  // The store assigns the event's id, increasing in commit order per writer.
  virtual Status AppendOutbox(const OutboxEvent& event) = 0;
  // Events with id > after_id, oldest first, at most `limit`.
  virtual Result<std::vector<OutboxEvent>> ListOutbox(int64_t after_id, int limit) = 0;
  // Unsent events with id > after_id, oldest first (the relay's work).
  virtual Result<std::vector<OutboxEvent>> ListUnsentOutbox(int64_t after_id, int limit) = 0;
  // An event already marked keeps its first time; one that another
  // transaction is marking is left to it (PostgreSQL: no waiting).
  virtual Status MarkOutboxSent(const std::vector<int64_t>& ids, Timestamp at) = 0;

  virtual Result<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                                  std::string_view key) = 0;
  // kAlreadyExists if (scope, key) is taken (from Commit() where deferred).
  virtual Status PutIdempotency(const IdempotencyRecord& record) = 0;

  // Counts for tests and /healthz-style reports.
  virtual Result<int64_t> CountSurplus() = 0;
  // Posts in one status, from the status index (the dlq_posts gauge: a
  // scrape must not read the posts themselves).
  virtual Result<int64_t> CountSurplusIn(SurplusStatus status) = 0;
  // Claimed posts whose pickup window closed before `now` with nobody
  // collecting (the pickups_overdue gauge): from the status index, reading
  // only the claimed posts.
  virtual Result<int64_t> CountOverduePickups(Timestamp now) = 0;
};

// Something one process among several does at a time (the outbox relay),
// held for as long as its holder stays connected to the store.
class StoreLease {
 public:
  virtual ~StoreLease() = default;  // releases it
  // False once the lease is lost (its connection broke): stop the work.
  virtual bool StillHeld() = 0;
};

class Store {
 public:
  virtual ~Store() = default;
  virtual Result<std::unique_ptr<StoreSession>> OpenSession() = 0;
  // The lease named `key`, or nullptr while another process holds it.
  // PostgreSQL: a session advisory lock on a connection of its own, which
  // PostgreSQL releases when the holder's connection ends, a crash
  // included. SQLite: always granted (one hub process per file).
  virtual Result<std::unique_ptr<StoreLease>> TryLease(int64_t key) = 0;
  // "sqlite" or "postgresql".
  virtual std::string_view Backend() const = 0;
  // How many transactions may usefully commit at once: SQLite has one writer.
  virtual int MaxConcurrentWriters() const = 0;
};

// Opens (creating and migrating as needed) the store named by `url`:
//   sqlite:PATH                 e.g. sqlite:./var/hub.db
//   postgresql://USER@HOST:PORT/DB?...   (any libpq connection URI)
// Migrations run at open; concurrent opens of one PostgreSQL database are
// serialised with an advisory lock.
Result<std::unique_ptr<Store>> OpenStore(std::string_view url);

}  // namespace pp
