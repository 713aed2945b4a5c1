#include "cloud-hub/store/sqlite/sqlite_store.h"

#include <sqlite3.h>

#include <set>
#include <unordered_map>

#include "cloud-hub/store/store_sql.h"
#include "common/sqlite_db.h"

namespace pp {
namespace {

using store_sql::Migration;

constexpr Migration kMigrations[] = {
    {1, "organisations, surplus, history, outbox, idempotency", R"sql(
CREATE TABLE organizations (
  id          INTEGER PRIMARY KEY,
  kind        TEXT    NOT NULL CHECK (kind IN ('provider', 'ngo')),
  name        TEXT    NOT NULL,
  lat         REAL    NOT NULL,
  lon         REAL    NOT NULL,
  created_at  INTEGER NOT NULL
);
CREATE TABLE surplus (
  id            INTEGER PRIMARY KEY,
  provider_id   INTEGER NOT NULL REFERENCES organizations(id),
  category      TEXT    NOT NULL,
  description   TEXT    NOT NULL,
  quantity_kg   REAL,
  portions      INTEGER,
  allergens     TEXT    NOT NULL,
  storage       TEXT    NOT NULL,
  prepared_at   INTEGER,
  best_before   INTEGER NOT NULL,
  pickup_start  INTEGER,
  pickup_end    INTEGER,
  instructions  TEXT    NOT NULL,
  lat           REAL    NOT NULL,
  lon           REAL    NOT NULL,
  status        TEXT    NOT NULL,
  version       INTEGER NOT NULL,
  claimed_by    INTEGER REFERENCES organizations(id),
  created_at    INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
);
CREATE INDEX surplus_by_status ON surplus (status, best_before);
CREATE TABLE surplus_history (
  surplus_id  INTEGER NOT NULL,
  version     INTEGER NOT NULL,
  at          INTEGER NOT NULL,
  from_status TEXT,
  to_status   TEXT    NOT NULL,
  event       TEXT    NOT NULL,
  actor_org   INTEGER,
  PRIMARY KEY (surplus_id, version)
) WITHOUT ROWID;
CREATE TABLE outbox (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  type         TEXT    NOT NULL,
  aggregate_id INTEGER NOT NULL,
  payload      TEXT    NOT NULL,
  created_at   INTEGER NOT NULL,
  sent_at      INTEGER
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE TABLE idempotency (
  scope       TEXT    NOT NULL,
  key         TEXT    NOT NULL,
  fingerprint TEXT    NOT NULL,
  result      TEXT    NOT NULL,
  created_at  INTEGER NOT NULL,
  PRIMARY KEY (scope, key)
) WITHOUT ROWID;
)sql"},
    {2, "offer cascade state on surplus; NGO vehicles", R"sql(
ALTER TABLE surplus ADD COLUMN offered_to INTEGER;
ALTER TABLE surplus ADD COLUMN offer_expires_at INTEGER;
ALTER TABLE surplus ADD COLUMN excluded TEXT NOT NULL DEFAULT '';
ALTER TABLE surplus ADD COLUMN dlq_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE surplus ADD COLUMN next_retry_at INTEGER;
CREATE INDEX surplus_offer_due ON surplus (offer_expires_at) WHERE status = 'offered';
CREATE INDEX surplus_retry_due ON surplus (next_retry_at) WHERE status = 'dead_lettered';
CREATE TABLE vehicles (
  ngo_id        INTEGER PRIMARY KEY REFERENCES organizations(id),
  lat           REAL    NOT NULL,
  lon           REAL    NOT NULL,
  free_kg       REAL    NOT NULL,
  accepts       INTEGER NOT NULL,
  open_from_min INTEGER NOT NULL,
  open_to_min   INTEGER NOT NULL,
  online        INTEGER NOT NULL,
  reported      INTEGER NOT NULL,
  updated_at    INTEGER NOT NULL
);
)sql"},
    {3, "devices for the sync protocol", R"sql(
CREATE TABLE devices (
  id          TEXT    PRIMARY KEY,
  role        TEXT    NOT NULL CHECK (role IN ('kiosk', 'tablet')),
  org_id      INTEGER NOT NULL REFERENCES organizations(id),
  public_key  TEXT    NOT NULL,
  revoked     INTEGER NOT NULL DEFAULT 0,
  max_seq     INTEGER NOT NULL DEFAULT 0,
  created_at  INTEGER NOT NULL
);
CREATE INDEX devices_by_org ON devices (org_id);
)sql"},
    {4, "handover code and picked-up weight", R"sql(
ALTER TABLE surplus ADD COLUMN handover_code TEXT NOT NULL DEFAULT '';
ALTER TABLE surplus ADD COLUMN picked_up_kg REAL;
)sql"},
    {5, "the trace a post was created in", R"sql(
ALTER TABLE surplus ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
)sql"},
    {6, "the last message the relay sent each device", R"sql(
ALTER TABLE devices ADD COLUMN last_sent INTEGER NOT NULL DEFAULT 0;
)sql"},
    {7, "which tablet's report a vehicle's position is", R"sql(
ALTER TABLE vehicles ADD COLUMN report_device TEXT NOT NULL DEFAULT '';
ALTER TABLE vehicles ADD COLUMN report_seq INTEGER NOT NULL DEFAULT 0;
)sql"},
};

class SqliteSession final : public StoreSession {
 public:
  explicit SqliteSession(std::unique_ptr<SqliteDb> db) : sql_(std::move(db)), db_(sql_->raw()) {}

  Status Exec(const char* sql) { return sql_->Exec(sql); }
  Status Begin(TxnMode mode) override {
    return mode == TxnMode::kWrite ? sql_->BeginWrite() : sql_->BeginRead();
  }
  Status Commit() override { return sql_->Commit(); }
  void Rollback() override { sql_->Rollback(); }

  Result<int64_t> InsertOrganization(const NewOrganization& o, Timestamp now) override {
    auto& s = Prepare(
        "INSERT INTO organizations (kind, name, lat, lon, created_at) VALUES (?,?,?,?,?)");
    s.Reset().Bind(ToString(o.kind)).Bind(o.name).Bind(o.position.lat).Bind(o.position.lon).Bind(now);
    PP_RETURN_IF_ERROR(s.Step("insert organization"));
    return int64_t(sqlite3_last_insert_rowid(db_));
  }

  static Organization ReadOrganization(const Stmt& s) {
    Organization o;
    o.id = s.Int(0);
    o.kind = ParseOrgKind(s.Text(1)).value_or(OrgKind::kProvider);
    o.name = s.Text(2);
    o.position = {s.Real(3), s.Real(4)};
    o.created_at = FromUnixMillis(s.Int(5));
    return o;
  }

  Result<std::optional<Organization>> GetOrganization(int64_t id) override {
    auto& s = Prepare("SELECT id, kind, name, lat, lon, created_at FROM organizations WHERE id=?");
    s.Reset().Bind(id);
    PP_ASSIGN_OR_RETURN(bool row, s.Step("get organization"));
    if (!row) return std::optional<Organization>();
    return std::optional<Organization>(ReadOrganization(s));
  }

  Result<bool> UpdateOrganization(const Organization& o) override {
    auto& s = Prepare("UPDATE organizations SET name=?, lat=?, lon=? WHERE id=?");
    s.Reset().Bind(o.name).Bind(o.position.lat).Bind(o.position.lon).Bind(o.id);
    PP_RETURN_IF_ERROR(s.Step("update organization"));
    return sqlite3_changes(db_) == 1;
  }

  Result<std::vector<Organization>> ListOrganizations(std::optional<OrgKind> kind, int64_t after_id,
                                                      int limit) override {
    auto& s = Prepare(
        "SELECT id, kind, name, lat, lon, created_at FROM organizations "
        "WHERE id > ? AND (? = '' OR kind = ?) ORDER BY id LIMIT ?");
    std::string k = kind ? std::string(ToString(*kind)) : "";
    s.Reset().Bind(after_id).Bind(k).Bind(k).Bind(int64_t(limit));
    return s.Rows<Organization>("list organizations", [](Stmt& r) { return ReadOrganization(r); });
  }

  Result<int64_t> InsertSurplus(const Surplus& x) override {
    auto& s = Prepare(
        "INSERT INTO surplus (provider_id, category, description, quantity_kg, portions, "
        "allergens, storage, prepared_at, best_before, pickup_start, pickup_end, instructions, "
        "lat, lon, status, version, claimed_by, created_at, updated_at, offered_to, "
        "offer_expires_at, excluded, dlq_attempts, next_retry_at, traceparent) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
    const auto& d = x.draft;
    s.Reset()
        .Bind(d.provider_id).Bind(d.category).Bind(d.description).Bind(d.quantity_kg)
        .Bind(d.portions).Bind(store_sql::JoinAllergens(d.allergens)).Bind(ToString(d.storage))
        .Bind(d.prepared_at).Bind(d.best_before).Bind(d.pickup_start).Bind(d.pickup_end)
        .Bind(d.instructions).Bind(x.position.lat).Bind(x.position.lon)
        .Bind(ToString(x.status)).Bind(x.version).Bind(x.claimed_by).Bind(x.created_at)
        .Bind(x.updated_at).Bind(x.match.offered_to).Bind(x.match.offer_expires_at)
        .Bind(store_sql::JoinIds(x.match.excluded)).Bind(int64_t(x.match.dlq_attempts))
        .Bind(x.match.next_retry_at).Bind(x.traceparent);
    PP_RETURN_IF_ERROR(s.Step("insert surplus"));
    return int64_t(sqlite3_last_insert_rowid(db_));
  }

  Result<std::optional<Surplus>> GetSurplus(int64_t id) override {
    auto& s = Prepare(surplus_by_id_sql_.c_str());
    s.Reset().Bind(id);
    PP_ASSIGN_OR_RETURN(bool row, s.Step("get surplus"));
    if (!row) return std::optional<Surplus>();
    return std::optional<Surplus>(ReadSurplus(s));
  }

  Result<std::vector<Surplus>> FindSurplus(const SurplusFilter& f) override {
    auto& s = Prepare(find_sql_.c_str());
    auto a = store_sql::FindSurplusArgs(f);
    s.Reset().Bind(f.after_id).Bind(a.statuses).Bind(f.provider_id).Bind(f.ngo_id).Bind(f.from)
        .Bind(f.to).Bind(int64_t(f.by_updated_at)).Bind(a.min_lat).Bind(a.max_lat).Bind(a.min_lon)
        .Bind(a.max_lon).Bind(int64_t(f.limit));
    return s.Rows<Surplus>("find surplus", [](Stmt& r) { return ReadSurplus(r); });
  }

  Result<std::vector<int64_t>> ListDue(const DueQuery& q) override {
    auto& s = Prepare(due_sql_.c_str());
    s.Reset().Bind(q.now).Bind(int64_t(q.limit));
    return s.Rows<int64_t>("list due", [](Stmt& r) { return r.Int(0); });
  }

  Status UpsertVehicle(const Vehicle& v) override {
    auto& s = Prepare(
        "INSERT INTO vehicles (ngo_id, lat, lon, free_kg, accepts, open_from_min, open_to_min, "
        "online, reported, updated_at, report_device, report_seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
        "ON CONFLICT (ngo_id) DO "
        "UPDATE SET lat=excluded.lat, lon=excluded.lon, free_kg=excluded.free_kg, "
        "accepts=excluded.accepts, open_from_min=excluded.open_from_min, "
        "open_to_min=excluded.open_to_min, online=excluded.online, reported=excluded.reported, "
        "updated_at=excluded.updated_at, report_device=excluded.report_device, "
        "report_seq=excluded.report_seq");
    s.Reset().Bind(v.ngo_id).Bind(v.position.lat).Bind(v.position.lon).Bind(v.free_kg)
        .Bind(int64_t(v.accepts)).Bind(int64_t(v.open_from_min)).Bind(int64_t(v.open_to_min))
        .Bind(int64_t(v.online)).Bind(int64_t(v.reported)).Bind(v.updated_at)
        .Bind(v.report_device).Bind(int64_t(v.report_seq));
    PP_RETURN_IF_ERROR(s.Step("upsert vehicle"));
    return OkStatus();
  }

  Result<std::vector<Vehicle>> ListVehicles() override {
    auto& s = Prepare(
        "SELECT ngo_id, lat, lon, free_kg, accepts, open_from_min, open_to_min, online, reported, "
        "updated_at, report_device, report_seq FROM vehicles ORDER BY ngo_id");
    s.Reset();
    return s.Rows<Vehicle>("list vehicles", [](Stmt& r) { return ReadVehicle(r); });
  }

  Result<std::optional<Vehicle>> GetVehicle(int64_t ngo_id) override {
    auto& s = Prepare(
        "SELECT ngo_id, lat, lon, free_kg, accepts, open_from_min, open_to_min, online, reported, "
        "updated_at, report_device, report_seq FROM vehicles WHERE ngo_id=?");
    s.Reset().Bind(ngo_id);
    PP_ASSIGN_OR_RETURN(bool row, s.Step("get vehicle"));
    if (!row) return std::optional<Vehicle>();
    return std::optional<Vehicle>(ReadVehicle(s));
  }

  Status InsertDevice(const Device& d) override {
    auto& s = Prepare(
        "INSERT INTO devices (id, role, org_id, public_key, revoked, max_seq, created_at) "
        "VALUES (?,?,?,?,?,?,?)");
    s.Reset().Bind(d.id).Bind(d.role).Bind(d.org_id).Bind(d.public_key).Bind(int64_t(d.revoked))
        .Bind(int64_t(d.max_seq)).Bind(d.created_at);
    PP_RETURN_IF_ERROR(s.Step("insert device"));
    return OkStatus();
  }

  Result<std::optional<Device>> GetDevice(std::string_view id) override {
    auto& s = Prepare(
        "SELECT id, role, org_id, public_key, revoked, max_seq, created_at FROM devices WHERE id=?");
    s.Reset().Bind(id);
    PP_ASSIGN_OR_RETURN(bool row, s.Step("get device"));
    if (!row) return std::optional<Device>();
    return std::optional<Device>(ReadDevice(s));
  }

  Result<bool> RevokeDevice(std::string_view id) override {
    auto& s = Prepare("UPDATE devices SET revoked=1 WHERE id=?");
    s.Reset().Bind(id);
    PP_RETURN_IF_ERROR(s.Step("revoke device"));
    return sqlite3_changes(db_) == 1;
  }

  Status AdvanceDeviceSeq(std::string_view id, uint64_t seq) override {
    auto& s = Prepare("UPDATE devices SET max_seq=max(max_seq, ?) WHERE id=?");
    s.Reset().Bind(int64_t(seq)).Bind(id);
    PP_RETURN_IF_ERROR(s.Step("advance device seq"));
    return OkStatus();
  }

  Status LockRows(const RowLocks&) override { return OkStatus(); }

  Status RecordLastSent(const std::map<std::string, int64_t>& last) override {
    auto& s = Prepare("UPDATE devices SET last_sent=max(last_sent, ?) WHERE id=?");
    for (const auto& [device, id] : last) {
      s.Reset().Bind(id).Bind(device);
      PP_RETURN_IF_ERROR(s.Step("record last sent"));
    }
    return OkStatus();
  }

  Result<int64_t> GetLastSent(std::string_view device) override {
    auto& s = Prepare("SELECT last_sent FROM devices WHERE id=?");
    s.Reset().Bind(device);
    PP_ASSIGN_OR_RETURN(bool row, s.Step("get last sent"));
    return row ? s.Int(0) : int64_t{0};
  }

  Result<std::vector<Device>> ListDevicesOfOrg(int64_t org_id) override {
    auto& s = Prepare(
        "SELECT id, role, org_id, public_key, revoked, max_seq, created_at FROM devices "
        "WHERE org_id=? ORDER BY id");
    s.Reset().Bind(org_id);
    return s.Rows<Device>("list devices", [](Stmt& r) { return ReadDevice(r); });
  }

  static Device ReadDevice(const Stmt& s) {
    return Device{s.Text(0), s.Text(1), s.Int(2), s.Text(3), s.Int(4) != 0, uint64_t(s.Int(5)),
                  FromUnixMillis(s.Int(6))};
  }

  Result<std::vector<OutboxEvent>> ListUnsentOutbox(int64_t after_id, int limit) override {
    auto& s = Prepare(
        "SELECT id, type, aggregate_id, payload, created_at, sent_at FROM outbox "
        "WHERE id > ? AND sent_at IS NULL ORDER BY id LIMIT ?");
    s.Reset().Bind(after_id).Bind(int64_t(limit));
    return s.Rows<OutboxEvent>("list unsent outbox", [](Stmt& r) { return OutboxEvent{r.Int(0), r.Text(1), r.Int(2), r.Text(3), FromUnixMillis(r.Int(4)), r.OptTime(5)}; });
  }

  Status MarkOutboxSent(const std::vector<int64_t>& ids, Timestamp at) override {
    auto& s = Prepare("UPDATE outbox SET sent_at=? WHERE id=? AND sent_at IS NULL");  // the first mark's time stays
    for (int64_t id : ids) {
      s.Reset().Bind(at).Bind(id);
      PP_RETURN_IF_ERROR(s.Step("mark outbox sent"));
    }
    return OkStatus();
  }

  static Vehicle ReadVehicle(const Stmt& s) {
    Vehicle v;
    v.ngo_id = s.Int(0);
    v.position = {s.Real(1), s.Real(2)};
    v.free_kg = s.Real(3);
    v.accepts = CategoryMask(s.Int(4));
    v.open_from_min = int(s.Int(5));
    v.open_to_min = int(s.Int(6));
    v.online = s.Int(7) != 0;
    v.reported = s.Int(8) != 0;
    v.updated_at = FromUnixMillis(s.Int(9));
    v.report_device = s.Text(10);
    v.report_seq = uint64_t(s.Int(11));
    return v;
  }

  Result<bool> ApplyChange(const SurplusChange& c) override {
    // One statement per event, built from the lifecycle table once.
    auto it = change_sql_.find(c.event);
    if (it == change_sql_.end()) {
      std::string sql = "UPDATE surplus SET status='" + std::string(ToString(TargetOf(c.event))) +
                        "', claimed_by=?, offered_to=?, offer_expires_at=?, excluded=?, "
                        "dlq_attempts=?, next_retry_at=?, handover_code=?, picked_up_kg=?, "
                        "version=version+1, updated_at=? "
                        "WHERE id=? AND version=? AND status IN (" +
                        store_sql::QuotedSources(c.event) + ")";
      it = change_sql_.emplace(c.event, std::move(sql)).first;
    }
    auto& s = Prepare(it->second.c_str());
    s.Reset().Bind(c.claimed_by).Bind(c.match.offered_to).Bind(c.match.offer_expires_at)
        .Bind(store_sql::JoinIds(c.match.excluded)).Bind(int64_t(c.match.dlq_attempts))
        .Bind(c.match.next_retry_at).Bind(c.handover_code).Bind(c.picked_up_kg).Bind(c.at)
        .Bind(c.surplus_id).Bind(c.expected_version);
    PP_RETURN_IF_ERROR(s.Step("apply surplus change"));
    return sqlite3_changes(db_) == 1;
  }

  Status AppendHistory(const HistoryEntry& h) override {
    auto& s = Prepare(
        "INSERT INTO surplus_history (surplus_id, version, at, from_status, to_status, event, "
        "actor_org) VALUES (?,?,?,?,?,?,?)");
    std::optional<std::string> from;
    if (h.from) from = std::string(ToString(*h.from));
    s.Reset().Bind(h.surplus_id).Bind(h.version).Bind(h.at).Bind(from)
        .Bind(ToString(h.to)).Bind(h.event).Bind(h.actor_org);
    PP_RETURN_IF_ERROR(s.Step("append history"));
    return OkStatus();
  }

  Result<std::vector<HistoryEntry>> GetHistory(int64_t id) override {
    auto& s = Prepare(
        "SELECT version, at, from_status, to_status, event, actor_org FROM surplus_history "
        "WHERE surplus_id=? ORDER BY version");
    s.Reset().Bind(id);
    return s.Rows<HistoryEntry>("get history", [id](Stmt& r) {
      HistoryEntry h;
      h.surplus_id = id;
      h.version = r.Int(0);
      h.at = FromUnixMillis(r.Int(1));
      if (!r.Null(2)) h.from = ParseSurplusStatus(r.Text(2));
      h.to = ParseSurplusStatus(r.Text(3)).value_or(SurplusStatus::kAvailable);
      h.event = r.Text(4);
      h.actor_org = r.OptInt(5);
      return h;
    });
  }

  Status AppendOutbox(const OutboxEvent& e) override {
    auto& s = Prepare(
        "INSERT INTO outbox (type, aggregate_id, payload, created_at) VALUES (?,?,?,?)");
    s.Reset().Bind(e.type).Bind(e.aggregate_id).Bind(e.payload_json).Bind(e.created_at);
    PP_RETURN_IF_ERROR(s.Step("append outbox"));
    return OkStatus();
  }

  Result<std::vector<OutboxEvent>> ListOutbox(int64_t after_id, int limit) override {
    auto& s = Prepare(
        "SELECT id, type, aggregate_id, payload, created_at, sent_at FROM outbox "
        "WHERE id > ? ORDER BY id LIMIT ?");
    s.Reset().Bind(after_id).Bind(int64_t(limit));
    return s.Rows<OutboxEvent>("list outbox", [](Stmt& r) { return OutboxEvent{r.Int(0), r.Text(1), r.Int(2), r.Text(3), FromUnixMillis(r.Int(4)), r.OptTime(5)}; });
  }

  Result<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                          std::string_view key) override {
    auto& s = Prepare(
        "SELECT fingerprint, result, created_at FROM idempotency WHERE scope=? AND key=?");
    s.Reset().Bind(scope).Bind(key);
    PP_ASSIGN_OR_RETURN(bool row, s.Step("get idempotency"));
    if (!row) return std::optional<IdempotencyRecord>();
    return std::optional<IdempotencyRecord>(IdempotencyRecord{
        std::string(scope), std::string(key), s.Text(0), s.Text(1), FromUnixMillis(s.Int(2))});
  }

  Status PutIdempotency(const IdempotencyRecord& r) override {
    auto& s = Prepare(
        "INSERT INTO idempotency (scope, key, fingerprint, result, created_at) VALUES (?,?,?,?,?)");
    s.Reset().Bind(r.scope).Bind(r.key).Bind(r.fingerprint).Bind(r.result_json).Bind(r.created_at);
    PP_RETURN_IF_ERROR(s.Step("put idempotency"));
    return OkStatus();
  }

  Result<int64_t> CountSurplus() override {
    auto& s = Prepare("SELECT count(*) FROM surplus");
    s.Reset();
    PP_RETURN_IF_ERROR(s.Step("count surplus"));
    return s.Int(0);
  }

  Result<int64_t> CountSurplusIn(SurplusStatus status) override {
    auto& s = Prepare("SELECT count(*) FROM surplus WHERE status = ?");
    s.Reset().Bind(ToString(status));
    PP_RETURN_IF_ERROR(s.Step("count surplus in status"));
    return s.Int(0);
  }

  Result<int64_t> CountOverduePickups(Timestamp now) override {
    // A post without a window (pickup_end NULL) is never overdue.
    auto& s = Prepare("SELECT count(*) FROM surplus WHERE status = 'claimed' AND pickup_end < ?");
    s.Reset().Bind(now);
    PP_RETURN_IF_ERROR(s.Step("count overdue pickups"));
    return s.Int(0);
  }

  Status Migrate() {
    PP_RETURN_IF_ERROR(Exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "description TEXT NOT NULL, applied_at INTEGER NOT NULL)"));
    for (const auto& m : kMigrations) {
      PP_RETURN_IF_ERROR(Begin(TxnMode::kWrite));
      auto& q = Prepare("SELECT 1 FROM schema_migrations WHERE version=?");
      q.Reset().Bind(int64_t(m.version));
      auto applied = q.Step("check migration");
      q.Reset();
      if (!applied.ok()) return Rollback(), applied.take_error();
      if (!*applied) {
        auto st = Exec(m.sql);
        if (!st.ok()) return Rollback(), Error::Internal("migration " + std::to_string(m.version) +
                                                         " failed: " + st.error().message);
        auto& ins = Prepare(
            "INSERT INTO schema_migrations (version, description, applied_at) "
            "VALUES (?,?,strftime('%s','now')*1000)");
        ins.Reset().Bind(int64_t(m.version)).Bind(std::string_view(m.description));
        auto r = ins.Step("record migration");
        if (!r.ok()) return Rollback(), r.take_error();
      }
      PP_RETURN_IF_ERROR(Commit());
    }
    return OkStatus();
  }

 private:
  Stmt& Prepare(const char* sql) { return sql_->Prepare(sql); }

  static Surplus ReadSurplus(const Stmt& s) {
    Surplus x;
    auto& d = x.draft;
    x.id = s.Int(0);
    d.provider_id = s.Int(1);
    d.category = s.Text(2);
    d.description = s.Text(3);
    if (!s.Null(4)) d.quantity_kg = s.Real(4);
    d.portions = s.OptInt(5);
    d.allergens = store_sql::SplitAllergens(s.Text(6));
    d.storage = ParseStorage(s.Text(7)).value_or(Storage::kAmbient);
    d.prepared_at = s.OptTime(8);
    d.best_before = FromUnixMillis(s.Int(9));
    d.pickup_start = s.OptTime(10);
    d.pickup_end = s.OptTime(11);
    d.instructions = s.Text(12);
    x.position = {s.Real(13), s.Real(14)};
    x.status = ParseSurplusStatus(s.Text(15)).value_or(SurplusStatus::kAvailable);
    x.version = s.Int(16);
    x.claimed_by = s.OptInt(17);
    x.created_at = FromUnixMillis(s.Int(18));
    x.updated_at = FromUnixMillis(s.Int(19));
    x.match.offered_to = s.OptInt(20);
    x.match.offer_expires_at = s.OptTime(21);
    x.match.excluded = store_sql::SplitIds(s.Text(22));
    x.match.dlq_attempts = int(s.Int(23));
    x.match.next_retry_at = s.OptTime(24);
    x.handover_code = s.Text(25);
    if (!s.Null(26)) x.picked_up_kg = s.Real(26);
    x.traceparent = s.Text(27);
    return x;
  }

  const std::string surplus_by_id_sql_ =
      std::string("SELECT ") + store_sql::kSurplusColumns + " FROM surplus WHERE id=?";
  const std::string due_sql_ = store_sql::DueSql('?');
  const std::string find_sql_ = store_sql::FindSurplusSql('?');
  std::set<std::string> dynamic_sql_;  // node-stable storage for built statements

  std::unique_ptr<SqliteDb> sql_;
  sqlite3* db_;
  // Statements are cached by the SQL text's address: every one is a literal
  // or lives in change_sql_, whose nodes never move.
  std::unordered_map<SurplusEvent, std::string> change_sql_;
};

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(std::string path) : path_(std::move(path)) {}

  Result<std::unique_ptr<StoreSession>> OpenSession() override {
    PP_ASSIGN_OR_RETURN(auto s, Connect());
    return std::unique_ptr<StoreSession>(std::move(s));
  }

  Result<std::unique_ptr<SqliteSession>> Connect() {
    PP_ASSIGN_OR_RETURN(auto db, SqliteDb::Open(path_));
    return std::make_unique<SqliteSession>(std::move(db));
  }

  std::string_view Backend() const override { return "sqlite"; }
  int MaxConcurrentWriters() const override { return 1; }
  Result<std::unique_ptr<StoreLease>> TryLease(int64_t) override {
    struct Held final : StoreLease {
      bool StillHeld() override { return true; }
    };
    return std::unique_ptr<StoreLease>(std::make_unique<Held>());
  }

 private:
  std::string path_;
};

}  // namespace

Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path) {
  auto store = std::make_unique<SqliteStore>(path);
  PP_ASSIGN_OR_RETURN(auto session, store->Connect());
  PP_RETURN_IF_ERROR(session->Migrate());
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace pp
