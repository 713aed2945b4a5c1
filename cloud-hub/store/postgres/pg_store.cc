#include "cloud-hub/store/postgres/pg_store.h"

#include <pqxx/pqxx>
#include <unordered_map>

#include "cloud-hub/store/store_sql.h"

namespace pp {
namespace {

using store_sql::Migration;

constexpr Migration kMigrations[] = {
    {1, "organisations, surplus, history, outbox, idempotency", R"sql(
CREATE TABLE organizations (
  id          BIGSERIAL PRIMARY KEY,
  kind        TEXT    NOT NULL CHECK (kind IN ('provider', 'ngo')),
  name        TEXT    NOT NULL,
  lat         DOUBLE PRECISION NOT NULL,
  lon         DOUBLE PRECISION NOT NULL,
  created_at  BIGINT  NOT NULL
);
CREATE TABLE surplus (
  id            BIGSERIAL PRIMARY KEY,
  provider_id   BIGINT  NOT NULL REFERENCES organizations(id),
  category      TEXT    NOT NULL,
  description   TEXT    NOT NULL,
  quantity_kg   DOUBLE PRECISION,
  portions      BIGINT,
  allergens     TEXT    NOT NULL,
  storage       TEXT    NOT NULL,
  prepared_at   BIGINT,
  best_before   BIGINT  NOT NULL,
  pickup_start  BIGINT,
  pickup_end    BIGINT,
  instructions  TEXT    NOT NULL,
  lat           DOUBLE PRECISION NOT NULL,
  lon           DOUBLE PRECISION NOT NULL,
  status        TEXT    NOT NULL,
  version       BIGINT  NOT NULL,
  claimed_by    BIGINT REFERENCES organizations(id),
  created_at    BIGINT  NOT NULL,
  updated_at    BIGINT  NOT NULL
);
CREATE INDEX surplus_by_status ON surplus (status, best_before);
CREATE TABLE surplus_history (
  surplus_id  BIGINT  NOT NULL,
  version     BIGINT  NOT NULL,
  at          BIGINT  NOT NULL,
  from_status TEXT,
  to_status   TEXT    NOT NULL,
  event       TEXT    NOT NULL,
  actor_org   BIGINT,
  PRIMARY KEY (surplus_id, version)
);
CREATE TABLE outbox (
  id           BIGSERIAL PRIMARY KEY,
  type         TEXT    NOT NULL,
  aggregate_id BIGINT  NOT NULL,
  payload      TEXT    NOT NULL,
  created_at   BIGINT  NOT NULL,
  sent_at      BIGINT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE TABLE idempotency (
  scope       TEXT    NOT NULL,
  key         TEXT    NOT NULL,
  fingerprint TEXT    NOT NULL,
  result      TEXT    NOT NULL,
  created_at  BIGINT  NOT NULL,
  PRIMARY KEY (scope, key)
);
)sql"},
    {2, "offer cascade state on surplus; NGO vehicles", R"sql(
ALTER TABLE surplus ADD COLUMN offered_to BIGINT;
ALTER TABLE surplus ADD COLUMN offer_expires_at BIGINT;
ALTER TABLE surplus ADD COLUMN excluded TEXT NOT NULL DEFAULT '';
ALTER TABLE surplus ADD COLUMN dlq_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE surplus ADD COLUMN next_retry_at BIGINT;
CREATE INDEX surplus_offer_due ON surplus (offer_expires_at) WHERE status = 'offered';
CREATE INDEX surplus_retry_due ON surplus (next_retry_at) WHERE status = 'dead_lettered';
CREATE TABLE vehicles (
  ngo_id        BIGINT PRIMARY KEY REFERENCES organizations(id),
  lat           DOUBLE PRECISION NOT NULL,
  lon           DOUBLE PRECISION NOT NULL,
  free_kg       DOUBLE PRECISION NOT NULL,
  accepts       INTEGER NOT NULL,
  open_from_min INTEGER NOT NULL,
  open_to_min   INTEGER NOT NULL,
  online        BOOLEAN NOT NULL,
  reported      BOOLEAN NOT NULL,
  updated_at    BIGINT  NOT NULL
);
)sql"},
    {3, "devices for the sync protocol", R"sql(
CREATE TABLE devices (
  id          TEXT    PRIMARY KEY,
  role        TEXT    NOT NULL CHECK (role IN ('kiosk', 'tablet')),
  org_id      BIGINT  NOT NULL REFERENCES organizations(id),
  public_key  TEXT    NOT NULL,
  revoked     BOOLEAN NOT NULL DEFAULT false,
  max_seq     BIGINT  NOT NULL DEFAULT 0,
  created_at  BIGINT  NOT NULL
);
CREATE INDEX devices_by_org ON devices (org_id);
)sql"},
    {4, "handover code and picked-up weight", R"sql(
ALTER TABLE surplus ADD COLUMN handover_code TEXT NOT NULL DEFAULT '';
ALTER TABLE surplus ADD COLUMN picked_up_kg DOUBLE PRECISION;
)sql"},
    {5, "the trace a post was created in", R"sql(
ALTER TABLE surplus ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
)sql"},
    {6, "the last message the relay sent each device", R"sql(
ALTER TABLE devices ADD COLUMN last_sent BIGINT NOT NULL DEFAULT 0;
)sql"},
    {7, "which tablet's report a vehicle's position is", R"sql(
ALTER TABLE vehicles ADD COLUMN report_device TEXT NOT NULL DEFAULT '',
                     ADD COLUMN report_seq BIGINT NOT NULL DEFAULT 0;
)sql"},
};

// Any stable number: the advisory lock that serialises migrations of hubs
// starting together on one database.
constexpr int64_t kMigrationLock = 0x70702d6875620001;

// Runs `f`, translating libpqxx's exceptions into our Error at this border.
template <typename F>
auto Guard(const char* what, F&& f) -> Result<decltype(f())> {
  try {
    return f();
  } catch (const pqxx::transaction_rollback& e) {  // deadlock, serialization failure
    return Error::Unavailable(std::string(what) + ": " + e.what());
  } catch (const pqxx::unique_violation& e) {
    return Error{Code::kAlreadyExists, std::string(what) + ": " + e.what(), {}, {}};
  } catch (const pqxx::broken_connection& e) {
    return Error::Unavailable(std::string(what) + ": connection lost: " + e.what());
  } catch (const pqxx::in_doubt_error& e) {
    return Error::Unavailable(std::string(what) + ": commit outcome unknown: " + e.what());
  } catch (const std::exception& e) {
    return Error::Internal(std::string(what) + ": " + e.what());
  }
}

template <typename T>
std::optional<T> Opt(const pqxx::field& f) {
  return f.is_null() ? std::nullopt : std::optional<T>(f.as<T>());
}
std::optional<Timestamp> OptTime(const pqxx::field& f) {
  return f.is_null() ? std::nullopt : std::optional<Timestamp>(FromUnixMillis(f.as<int64_t>()));
}
std::optional<int64_t> OptMillis(const std::optional<Timestamp>& t) {
  return t ? std::optional<int64_t>(ToUnixMillis(*t)) : std::nullopt;
}

// PostgreSQL array literals, for sending many rows as one parameter per
// column ("{1,NULL,3}", "{\"a\",\"b \\\"q\\\"\"}").
class ArrayLiteral {
 public:
  void Add(const std::string& v) {
    Sep();
    out_ += '"';
    for (char c : v) {
      if (c == '"' || c == '\\') out_ += '\\';
      out_ += c;
    }
    out_ += '"';
  }
  void Add(std::string_view v) { Add(std::string(v)); }
  void Add(int64_t v) {
    Sep();
    out_ += std::to_string(v);
  }
  template <typename T>
  void Add(const std::optional<T>& v) {
    if (v) return Add(*v);
    Sep();
    out_ += "NULL";
  }
  std::string str() const { return out_ + "}"; }

 private:
  void Sep() { out_ += out_.size() > 1 ? "," : ""; }
  std::string out_ = "{";
};

struct Statement {
  const char* name;
  std::string sql;
};

std::vector<Statement> Statements() {
  std::vector<Statement> v{
      {"org_insert",
       "INSERT INTO organizations (kind, name, lat, lon, created_at) VALUES ($1,$2,$3,$4,$5) "
       "RETURNING id"},
      {"org_get", "SELECT id, kind, name, lat, lon, created_at FROM organizations WHERE id=$1"},
      {"org_update", "UPDATE organizations SET name=$2, lat=$3, lon=$4 WHERE id=$1"},
      {"org_list",
       "SELECT id, kind, name, lat, lon, created_at FROM organizations "
       "WHERE id > $1 AND ($2 = '' OR kind = $2) ORDER BY id LIMIT $3"},
      {"surplus_insert",
       "INSERT INTO surplus (provider_id, category, description, quantity_kg, portions, "
       "allergens, storage, prepared_at, best_before, pickup_start, pickup_end, instructions, "
       "lat, lon, status, version, claimed_by, created_at, updated_at, offered_to, "
       "offer_expires_at, excluded, dlq_attempts, next_retry_at, traceparent) VALUES "
       "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,$22,$23,$24,$25) "
       "RETURNING id"},
      {"surplus_get",
       std::string("SELECT ") + store_sql::kSurplusColumns + " FROM surplus WHERE id=$1"},
      {"surplus_find", store_sql::FindSurplusSql('$')},
      {"due_list", store_sql::DueSql('$')},
      {"vehicle_upsert",
       "INSERT INTO vehicles (ngo_id, lat, lon, free_kg, accepts, open_from_min, open_to_min, "
       "online, reported, updated_at, report_device, report_seq) "
       "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) ON CONFLICT "
       "(ngo_id) DO UPDATE SET lat=excluded.lat, lon=excluded.lon, free_kg=excluded.free_kg, "
       "accepts=excluded.accepts, open_from_min=excluded.open_from_min, "
       "open_to_min=excluded.open_to_min, online=excluded.online, reported=excluded.reported, "
       "updated_at=excluded.updated_at, report_device=excluded.report_device, "
       "report_seq=excluded.report_seq"},
      {"vehicle_list",
       "SELECT ngo_id, lat, lon, free_kg, accepts, open_from_min, open_to_min, online, reported, "
       "updated_at, report_device, report_seq FROM vehicles ORDER BY ngo_id"},
      {"device_insert",
       "INSERT INTO devices (id, role, org_id, public_key, revoked, max_seq, created_at) "
       "VALUES ($1,$2,$3,$4,$5,$6,$7)"},
      {"device_get",
       "SELECT id, role, org_id, public_key, revoked, max_seq, created_at FROM devices WHERE id=$1"},
      {"device_revoke", "UPDATE devices SET revoked=true WHERE id=$1"},
      {"device_seq", "UPDATE devices SET max_seq=GREATEST(max_seq, $1) WHERE id=$2"},
      // The rows are locked as the sort returns them (LockRows runs above
      // the Sort): in id order, whichever order the caller named them in.
      {"device_lock", "SELECT id FROM devices WHERE id=ANY($1::text[]) ORDER BY id FOR UPDATE"},
      {"surplus_lock", "SELECT id FROM surplus WHERE id=ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE"},
      {"vehicle_lock", "SELECT ngo_id FROM vehicles WHERE ngo_id=ANY($1::bigint[]) ORDER BY ngo_id FOR UPDATE"},
      // Skips the rows another transaction holds: the ingest's max_seq
      // updates lock the same rows in op order, and waiting for them
      // deadlocked (PostgreSQL ends one side after deadlock_timeout, 1 s:
      // 42 times in a 400-post rush, claims waiting seconds;
      // docs/benchmarks.md, "Session 24"). A device skipped now is recorded
      // by a later page's mark; the record only ever grows.
      {"device_last_sent_set",
       "UPDATE devices d SET last_sent=GREATEST(d.last_sent, v.id) "
       "FROM unnest($1::text[], $2::bigint[]) AS v(device, id) WHERE d.id=v.device "
       "AND d.id IN (SELECT id FROM devices WHERE id=ANY($1::text[]) FOR UPDATE SKIP LOCKED)"},
      {"device_last_sent_get", "SELECT last_sent FROM devices WHERE id=$1"},
      {"device_list_org",
       "SELECT id, role, org_id, public_key, revoked, max_seq, created_at FROM devices "
       "WHERE org_id=$1 ORDER BY id"},
      {"outbox_unsent",
       "SELECT id, type, aggregate_id, payload, created_at, sent_at FROM outbox "
       "WHERE id > $1 AND sent_at IS NULL ORDER BY id LIMIT $2"},
      // Skips the events another transaction is marking: two relays may
      // mark the same events in batches of their own (every replica ran one
      // until the relay lease; one that lost the lease may still be
      // finishing as the next starts), and waiting for each other's row
      // locks deadlocked (docs/benchmarks.md, "Session 26"). The other marks
      // them, or rolls back and runs again. An event keeps the time of its
      // first mark.
      {"outbox_mark",
       "UPDATE outbox SET sent_at=$1 WHERE id IN (SELECT id FROM outbox WHERE id = ANY($2::bigint[]) "
       "AND sent_at IS NULL FOR UPDATE SKIP LOCKED)"},
      {"vehicle_get",
       "SELECT ngo_id, lat, lon, free_kg, accepts, open_from_min, open_to_min, online, reported, "
       "updated_at, report_device, report_seq FROM vehicles WHERE ngo_id=$1"},
      {"history_insert",
       "INSERT INTO surplus_history (surplus_id, version, at, from_status, to_status, event, "
       "actor_org) VALUES ($1,$2,$3,$4,$5,$6,$7)"},
      {"history_get",
       "SELECT version, at, from_status, to_status, event, actor_org FROM surplus_history "
       "WHERE surplus_id=$1 ORDER BY version"},
      {"outbox_insert",
       "INSERT INTO outbox (type, aggregate_id, payload, created_at) VALUES ($1,$2,$3,$4) "
       "RETURNING id"},
      {"outbox_list",
       "SELECT id, type, aggregate_id, payload, created_at, sent_at FROM outbox WHERE id > $1 "
       "ORDER BY id LIMIT $2"},
      {"idem_get",
       "SELECT fingerprint, result, created_at FROM idempotency WHERE scope=$1 AND key=$2"},
      {"idem_put",
       "INSERT INTO idempotency (scope, key, fingerprint, result, created_at) "
       "VALUES ($1,$2,$3,$4,$5)"},
      {"surplus_count", "SELECT count(*) FROM surplus"},
      {"surplus_count_in", "SELECT count(*) FROM surplus WHERE status = $1"},
      // A post without a window (pickup_end NULL) is never overdue.
      {"surplus_count_overdue", "SELECT count(*) FROM surplus WHERE status = 'claimed' AND pickup_end < $1"},
      // Deferred append-only rows, one statement per table per transaction.
      {"history_flush",
       "INSERT INTO surplus_history (surplus_id, version, at, from_status, to_status, event, "
       "actor_org) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], "
       "$5::text[], $6::text[], $7::bigint[])"},
      {"outbox_flush",
       "INSERT INTO outbox (type, aggregate_id, payload, created_at) "
       "SELECT t, a, p, c FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) "
       "WITH ORDINALITY AS u(t, a, p, c, n) ORDER BY n"},
      {"idem_flush",
       "INSERT INTO idempotency (scope, key, fingerprint, result, created_at) "
       "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])"},
  };
  return v;
}

std::string ChangeStatementName(SurplusEvent e) { return "change_" + std::string(ToString(e)); }

class PgSession final : public StoreSession {
 public:
  explicit PgSession(std::unique_ptr<pqxx::connection> conn) : conn_(std::move(conn)) {}
  ~PgSession() override { Rollback(); }

  static Result<std::unique_ptr<PgSession>> Connect(const std::string& url) {
    return Guard("connect to PostgreSQL", [&] {
      auto conn = std::make_unique<pqxx::connection>(url);
      for (const auto& s : Statements()) conn->prepare(s.name, s.sql);
      // One conditional UPDATE per lifecycle event, its WHERE clause taken
      // from the transition table (see common/lifecycle.h).
      for (const auto& t : SurplusTransitions()) {
        std::string name = ChangeStatementName(t.event);
        std::string sql = "UPDATE surplus SET status='" + std::string(ToString(TargetOf(t.event))) +
                          "', claimed_by=$1, offered_to=$2, offer_expires_at=$3, excluded=$4, "
                          "dlq_attempts=$5, next_retry_at=$6, handover_code=$7, picked_up_kg=$8, "
                          "version=version+1, updated_at=$9 "
                          "WHERE id=$10 AND version=$11 AND status IN (" +
                          store_sql::QuotedSources(t.event) + ")";
        try {
          conn->prepare(name, sql);
        } catch (const pqxx::argument_error&) {
          // Already prepared (several transitions share an event).
        }
      }
      return std::make_unique<PgSession>(std::move(conn));
    });
  }

  Status Begin(TxnMode mode) override {
    return Guard("begin", [&] {
      if (mode == TxnMode::kWrite)
        txn_ = std::make_unique<pqxx::work>(*conn_);
      else
        txn_ = std::make_unique<pqxx::read_transaction>(*conn_);
      return Ok{};
    });
  }
  Status Commit() override {
    if (auto st = FlushPending(); !st.ok()) return st;
    auto st = Guard("commit", [&] {
      txn_->commit();
      return Ok{};
    });
    txn_.reset();
    return st;
  }
  void Rollback() override {
    ClearPending();
    if (!txn_) return;
    try {
      txn_->abort();
    } catch (...) {
      // The connection may be gone; nothing was committed either way.
    }
    txn_.reset();
  }

  Result<int64_t> InsertOrganization(const NewOrganization& o, Timestamp now) override {
    return Exec("insert organization", [&] {
      return txn_->exec_prepared1("org_insert", std::string(ToString(o.kind)), o.name,
                                  o.position.lat, o.position.lon, ToUnixMillis(now))[0]
          .as<int64_t>();
    });
  }

  static Organization ReadOrganization(const pqxx::row& row) {
    Organization o;
    o.id = row[0].as<int64_t>();
    o.kind = ParseOrgKind(row[1].c_str()).value_or(OrgKind::kProvider);
    o.name = row[2].as<std::string>();
    o.position = {row[3].as<double>(), row[4].as<double>()};
    o.created_at = FromUnixMillis(row[5].as<int64_t>());
    return o;
  }

  Result<std::optional<Organization>> GetOrganization(int64_t id) override {
    return Exec("get organization", [&] {
      auto r = txn_->exec_prepared("org_get", id);
      if (r.empty()) return std::optional<Organization>();
      return std::optional<Organization>(ReadOrganization(r[0]));
    });
  }

  Result<bool> UpdateOrganization(const Organization& o) override {
    return Exec("update organization", [&] {
      return txn_->exec_prepared("org_update", o.id, o.name, o.position.lat, o.position.lon)
                 .affected_rows() == 1;
    });
  }

  Result<std::vector<Organization>> ListOrganizations(std::optional<OrgKind> kind, int64_t after_id,
                                                      int limit) override {
    std::string k = kind ? std::string(ToString(*kind)) : "";
    return Exec("list organizations", [&] {
      std::vector<Organization> out;
      for (const auto& row : txn_->exec_prepared("org_list", after_id, k, limit))
        out.push_back(ReadOrganization(row));
      return out;
    });
  }

  Result<int64_t> InsertSurplus(const Surplus& x) override {
    return Exec("insert surplus", [&] {
      const auto& d = x.draft;
      return txn_
          ->exec_prepared1("surplus_insert", d.provider_id, d.category, d.description,
                           d.quantity_kg, d.portions, store_sql::JoinAllergens(d.allergens),
                           std::string(ToString(d.storage)), OptMillis(d.prepared_at),
                           ToUnixMillis(d.best_before), OptMillis(d.pickup_start),
                           OptMillis(d.pickup_end), d.instructions, x.position.lat,
                           x.position.lon, std::string(ToString(x.status)), x.version,
                           x.claimed_by, ToUnixMillis(x.created_at), ToUnixMillis(x.updated_at),
                           x.match.offered_to, OptMillis(x.match.offer_expires_at),
                           store_sql::JoinIds(x.match.excluded), x.match.dlq_attempts,
                           OptMillis(x.match.next_retry_at), x.traceparent)[0]
          .as<int64_t>();
    });
  }

  Result<std::optional<Surplus>> GetSurplus(int64_t id) override {
    return Exec("get surplus", [&] {
      auto r = txn_->exec_prepared("surplus_get", id);
      if (r.empty()) return std::optional<Surplus>();
      return std::optional<Surplus>(ReadSurplus(r[0]));
    });
  }

  Result<std::vector<Surplus>> FindSurplus(const SurplusFilter& f) override {
    auto a = store_sql::FindSurplusArgs(f);
    return Exec("find surplus", [&] {
      std::vector<Surplus> out;
      for (const auto& row : txn_->exec_prepared("surplus_find", f.after_id, a.statuses, f.provider_id,
                                                 f.ngo_id, OptMillis(f.from), OptMillis(f.to),
                                                 int64_t(f.by_updated_at), a.min_lat, a.max_lat,
                                                 a.min_lon, a.max_lon, f.limit))
        out.push_back(ReadSurplus(row));
      return out;
    });
  }

  Result<std::vector<int64_t>> ListDue(const DueQuery& q) override {
    return Exec("list due", [&] {
      std::vector<int64_t> out;
      for (const auto& row : txn_->exec_prepared("due_list", ToUnixMillis(q.now), q.limit))
        out.push_back(row[0].as<int64_t>());
      return out;
    });
  }

  Status UpsertVehicle(const Vehicle& v) override {
    return Exec("upsert vehicle", [&] {
      txn_->exec_prepared("vehicle_upsert", v.ngo_id, v.position.lat, v.position.lon, v.free_kg,
                          int(v.accepts), v.open_from_min, v.open_to_min, v.online, v.reported,
                          ToUnixMillis(v.updated_at), v.report_device, int64_t(v.report_seq));
      return Ok{};
    });
  }

  Result<std::vector<Vehicle>> ListVehicles() override {
    return Exec("list vehicles", [&] {
      std::vector<Vehicle> out;
      for (const auto& row : txn_->exec_prepared("vehicle_list")) out.push_back(ReadVehicle(row));
      return out;
    });
  }

  Result<std::optional<Vehicle>> GetVehicle(int64_t ngo_id) override {
    return Exec("get vehicle", [&] {
      auto r = txn_->exec_prepared("vehicle_get", ngo_id);
      if (r.empty()) return std::optional<Vehicle>();
      return std::optional<Vehicle>(ReadVehicle(r[0]));
    });
  }

  Status InsertDevice(const Device& d) override {
    return Exec("insert device", [&] {
      txn_->exec_prepared("device_insert", d.id, d.role, d.org_id, d.public_key, d.revoked,
                          int64_t(d.max_seq), ToUnixMillis(d.created_at));
      return Ok{};
    });
  }

  Result<std::optional<Device>> GetDevice(std::string_view id) override {
    return Exec("get device", [&] {
      auto r = txn_->exec_prepared("device_get", std::string(id));
      if (r.empty()) return std::optional<Device>();
      return std::optional<Device>(ReadDevice(r[0]));
    });
  }

  Result<bool> RevokeDevice(std::string_view id) override {
    return Exec("revoke device", [&] {
      return txn_->exec_prepared("device_revoke", std::string(id)).affected_rows() == 1;
    });
  }

  Status AdvanceDeviceSeq(std::string_view id, uint64_t seq) override {
    return Exec("advance device seq", [&] {
      txn_->exec_prepared("device_seq", int64_t(seq), std::string(id));
      return Ok{};
    });
  }

  Status LockRows(const RowLocks& rows) override {
    return Exec("lock rows", [&] {
      // One statement a table, each in key order; the tables always in
      // this order.
      auto lock = [&](const char* statement, const auto& keys) {
        if (keys.empty()) return;
        ArrayLiteral a;
        for (const auto& k : keys) a.Add(k);
        txn_->exec_prepared(statement, a.str());
      };
      lock("device_lock", rows.devices);
      lock("surplus_lock", rows.surplus);
      lock("vehicle_lock", rows.vehicles);
      return Ok{};
    });
  }

  Status RecordLastSent(const std::map<std::string, int64_t>& last) override {
    if (last.empty()) return OkStatus();
    return Exec("record last sent", [&] {
      ArrayLiteral devices, ids;  // one statement for the page, not a round trip per device
      for (const auto& [device, id] : last) devices.Add(device), ids.Add(id);
      txn_->exec_prepared("device_last_sent_set", devices.str(), ids.str());
      return Ok{};
    });
  }

  Result<int64_t> GetLastSent(std::string_view device) override {
    return Exec("get last sent", [&] {
      auto r = txn_->exec_prepared("device_last_sent_get", std::string(device));
      return r.empty() ? int64_t{0} : r[0][0].as<int64_t>();
    });
  }

  Result<std::vector<Device>> ListDevicesOfOrg(int64_t org_id) override {
    return Exec("list devices", [&] {
      std::vector<Device> out;
      for (const auto& row : txn_->exec_prepared("device_list_org", org_id))
        out.push_back(ReadDevice(row));
      return out;
    });
  }

  static Device ReadDevice(const pqxx::row& row) {
    return Device{row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<int64_t>(),
                  row[3].as<std::string>(), row[4].as<bool>(),      uint64_t(row[5].as<int64_t>()),
                  FromUnixMillis(row[6].as<int64_t>())};
  }

  Result<std::vector<OutboxEvent>> ListUnsentOutbox(int64_t after_id, int limit) override {
    PP_RETURN_IF_ERROR(FlushPending());
    return Exec("list unsent outbox", [&] {
      std::vector<OutboxEvent> out;
      for (const auto& row : txn_->exec_prepared("outbox_unsent", after_id, limit))
        out.push_back({row[0].as<int64_t>(), row[1].as<std::string>(), row[2].as<int64_t>(),
                       row[3].as<std::string>(), FromUnixMillis(row[4].as<int64_t>()),
                       OptTime(row[5])});
      return out;
    });
  }

  Status MarkOutboxSent(const std::vector<int64_t>& ids, Timestamp at) override {
    PP_RETURN_IF_ERROR(FlushPending());
    return Exec("mark outbox sent", [&] {
      ArrayLiteral a;
      for (int64_t id : ids) a.Add(id);
      txn_->exec_prepared("outbox_mark", ToUnixMillis(at), a.str());
      return Ok{};
    });
  }

  static Vehicle ReadVehicle(const pqxx::row& row) {
    Vehicle v;
    v.ngo_id = row[0].as<int64_t>();
    v.position = {row[1].as<double>(), row[2].as<double>()};
    v.free_kg = row[3].as<double>();
    v.accepts = CategoryMask(row[4].as<int>());
    v.open_from_min = row[5].as<int>();
    v.open_to_min = row[6].as<int>();
    v.online = row[7].as<bool>();
    v.reported = row[8].as<bool>();
    v.updated_at = FromUnixMillis(row[9].as<int64_t>());
    v.report_device = row[10].as<std::string>();
    v.report_seq = uint64_t(row[11].as<int64_t>());
    return v;
  }

  Result<bool> ApplyChange(const SurplusChange& c) override {
    return Exec("apply surplus change", [&] {
      auto r = txn_->exec_prepared(ChangeStatementName(c.event), c.claimed_by, c.match.offered_to,
                                   OptMillis(c.match.offer_expires_at),
                                   store_sql::JoinIds(c.match.excluded), c.match.dlq_attempts,
                                   OptMillis(c.match.next_retry_at), c.handover_code,
                                   c.picked_up_kg, ToUnixMillis(c.at),
                                   c.surplus_id, c.expected_version);
      return r.affected_rows() == 1;
    });
  }

  Status AppendHistory(const HistoryEntry& h) override {
    pending_history_.push_back(h);
    return OkStatus();
  }

  Result<std::vector<HistoryEntry>> GetHistory(int64_t id) override {
    PP_RETURN_IF_ERROR(FlushPending());
    return Exec("get history", [&] {
      std::vector<HistoryEntry> out;
      for (const auto& row : txn_->exec_prepared("history_get", id)) {
        HistoryEntry h;
        h.surplus_id = id;
        h.version = row[0].as<int64_t>();
        h.at = FromUnixMillis(row[1].as<int64_t>());
        if (!row[2].is_null()) h.from = ParseSurplusStatus(row[2].c_str());
        h.to = ParseSurplusStatus(row[3].c_str()).value_or(SurplusStatus::kAvailable);
        h.event = row[4].as<std::string>();
        h.actor_org = Opt<int64_t>(row[5]);
        out.push_back(std::move(h));
      }
      return out;
    });
  }

  Status AppendOutbox(const OutboxEvent& e) override {
    pending_outbox_.push_back(e);
    return OkStatus();
  }

  Result<std::vector<OutboxEvent>> ListOutbox(int64_t after_id, int limit) override {
    PP_RETURN_IF_ERROR(FlushPending());
    return Exec("list outbox", [&] {
      std::vector<OutboxEvent> out;
      for (const auto& row : txn_->exec_prepared("outbox_list", after_id, limit)) {
        out.push_back({row[0].as<int64_t>(), row[1].as<std::string>(), row[2].as<int64_t>(),
                       row[3].as<std::string>(), FromUnixMillis(row[4].as<int64_t>()),
                       OptTime(row[5])});
      }
      return out;
    });
  }

  Result<std::optional<IdempotencyRecord>> GetIdempotency(std::string_view scope,
                                                          std::string_view key) override {
    if (auto it = pending_idem_.find(IdemKey(scope, key)); it != pending_idem_.end())
      return std::optional<IdempotencyRecord>(it->second);
    return Exec("get idempotency", [&] {
      auto r = txn_->exec_prepared("idem_get", std::string(scope), std::string(key));
      if (r.empty()) return std::optional<IdempotencyRecord>();
      return std::optional<IdempotencyRecord>(
          IdempotencyRecord{std::string(scope), std::string(key), r[0][0].as<std::string>(),
                            r[0][1].as<std::string>(), FromUnixMillis(r[0][2].as<int64_t>())});
    });
  }

  Status PutIdempotency(const IdempotencyRecord& r) override {
    if (!pending_idem_.emplace(IdemKey(r.scope, r.key), r).second)
      return Error{Code::kAlreadyExists, "idempotency key already used in this transaction", {}, {}};
    return OkStatus();
  }

  Result<int64_t> CountSurplus() override {
    return Exec("count surplus",
                [&] { return txn_->exec_prepared1("surplus_count")[0].as<int64_t>(); });
  }

  Result<int64_t> CountSurplusIn(SurplusStatus status) override {
    return Exec("count surplus in status", [&] {
      return txn_->exec_prepared1("surplus_count_in", std::string(ToString(status)))[0].as<int64_t>();
    });
  }

  Result<int64_t> CountOverduePickups(Timestamp now) override {
    return Exec("count overdue pickups", [&] {
      return txn_->exec_prepared1("surplus_count_overdue", ToUnixMillis(now))[0].as<int64_t>();
    });
  }

  Status Migrate() {
    for (const auto& m : kMigrations) {
      PP_RETURN_IF_ERROR(Begin(TxnMode::kWrite));
      auto st = Exec("migrate", [&] {
        txn_->exec("SELECT pg_advisory_xact_lock(" + std::to_string(kMigrationLock) + ")");
        txn_->exec0(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())");
        auto r = txn_->exec_params("SELECT 1 FROM schema_migrations WHERE version=$1", m.version);
        if (r.empty()) {
          txn_->exec0(m.sql);
          txn_->exec_params("INSERT INTO schema_migrations (version, description) VALUES ($1,$2)",
                            m.version, std::string(m.description));
        }
        return Ok{};
      });
      if (!st.ok()) return st;
      PP_RETURN_IF_ERROR(Commit());
    }
    return OkStatus();
  }

 private:
  // Every call inside a transaction: an exception aborts the transaction, so
  // drop it here; the caller sees the Error and must Begin() again.
  template <typename F>
  auto Exec(const char* what, F&& f) -> Result<decltype(f())> {
    if (!txn_) return Error::Internal(std::string(what) + ": no open transaction");
    auto r = Guard(what, std::forward<F>(f));
    if (!r.ok()) Rollback();
    return r;
  }

  static Surplus ReadSurplus(const pqxx::row& row) {
    Surplus x;
    auto& d = x.draft;
    x.id = row[0].as<int64_t>();
    d.provider_id = row[1].as<int64_t>();
    d.category = row[2].as<std::string>();
    d.description = row[3].as<std::string>();
    d.quantity_kg = Opt<double>(row[4]);
    d.portions = Opt<int64_t>(row[5]);
    d.allergens = store_sql::SplitAllergens(row[6].as<std::string>());
    d.storage = ParseStorage(row[7].c_str()).value_or(Storage::kAmbient);
    d.prepared_at = OptTime(row[8]);
    d.best_before = FromUnixMillis(row[9].as<int64_t>());
    d.pickup_start = OptTime(row[10]);
    d.pickup_end = OptTime(row[11]);
    d.instructions = row[12].as<std::string>();
    x.position = {row[13].as<double>(), row[14].as<double>()};
    x.status = ParseSurplusStatus(row[15].c_str()).value_or(SurplusStatus::kAvailable);
    x.version = row[16].as<int64_t>();
    x.claimed_by = Opt<int64_t>(row[17]);
    x.created_at = FromUnixMillis(row[18].as<int64_t>());
    x.updated_at = FromUnixMillis(row[19].as<int64_t>());
    x.match.offered_to = Opt<int64_t>(row[20]);
    x.match.offer_expires_at = OptTime(row[21]);
    x.match.excluded = store_sql::SplitIds(row[22].as<std::string>());
    x.match.dlq_attempts = row[23].as<int>();
    x.match.next_retry_at = OptTime(row[24]);
    x.handover_code = row[25].as<std::string>();
    x.picked_up_kg = Opt<double>(row[26]);
    x.traceparent = row[27].as<std::string>();
    return x;
  }

  static std::string IdemKey(std::string_view scope, std::string_view key) {
    std::string k(scope);
    k += '\0';
    k += key;
    return k;
  }

  void ClearPending() {
    pending_history_.clear();
    pending_outbox_.clear();
    pending_idem_.clear();
  }

  // Writes the deferred rows: three statements for a whole batch instead of
  // three per operation.
  Status FlushPending() {
    if (pending_history_.empty() && pending_outbox_.empty() && pending_idem_.empty())
      return OkStatus();
    auto st = Exec("flush", [&] {
      if (!pending_history_.empty()) {
        ArrayLiteral id, version, at, from, to, event, actor;
        for (const auto& h : pending_history_) {
          id.Add(h.surplus_id);
          version.Add(h.version);
          at.Add(ToUnixMillis(h.at));
          from.Add(h.from ? std::optional<std::string_view>(ToString(*h.from)) : std::nullopt);
          to.Add(ToString(h.to));
          event.Add(h.event);
          actor.Add(h.actor_org);
        }
        txn_->exec_prepared("history_flush", id.str(), version.str(), at.str(), from.str(),
                            to.str(), event.str(), actor.str());
      }
      if (!pending_outbox_.empty()) {
        ArrayLiteral type, agg, payload, created;
        for (const auto& e : pending_outbox_) {
          type.Add(e.type);
          agg.Add(e.aggregate_id);
          payload.Add(e.payload_json);
          created.Add(ToUnixMillis(e.created_at));
        }
        txn_->exec_prepared("outbox_flush", type.str(), agg.str(), payload.str(), created.str());
      }
      if (!pending_idem_.empty()) {
        ArrayLiteral scope, key, fp, result, created;
        for (const auto& [k, r] : pending_idem_) {
          scope.Add(r.scope);
          key.Add(r.key);
          fp.Add(r.fingerprint);
          result.Add(r.result_json);
          created.Add(ToUnixMillis(r.created_at));
        }
        txn_->exec_prepared("idem_flush", scope.str(), key.str(), fp.str(), result.str(),
                            created.str());
      }
      return Ok{};
    });
    ClearPending();
    return st;
  }

  std::unique_ptr<pqxx::connection> conn_;
  std::unique_ptr<pqxx::transaction_base> txn_;
  // Deferred append-only rows of the open transaction (see store.h).
  std::vector<HistoryEntry> pending_history_;
  std::vector<OutboxEvent> pending_outbox_;
  std::unordered_map<std::string, IdempotencyRecord> pending_idem_;
};

class PgStore final : public Store {
 public:
  explicit PgStore(std::string url) : url_(std::move(url)) {}
  Result<std::unique_ptr<StoreSession>> OpenSession() override {
    PP_ASSIGN_OR_RETURN(auto s, PgSession::Connect(url_));
    return std::unique_ptr<StoreSession>(std::move(s));
  }
  std::string_view Backend() const override { return "postgresql"; }
  // Several transactions in flight hide the round trips of each.
  int MaxConcurrentWriters() const override { return 4; }
  Result<std::unique_ptr<StoreLease>> TryLease(int64_t key) override {
    // The lock belongs to the connection: PostgreSQL drops it when the
    // connection ends, however the holder died.
    class Lease final : public StoreLease {
     public:
      explicit Lease(std::unique_ptr<pqxx::connection> conn) : conn_(std::move(conn)) {}
      bool StillHeld() override {
        return Guard("check lease", [&] {
                 pqxx::nontransaction n(*conn_);
                 n.exec1("SELECT 1");
                 return true;
               })
            .ok();
      }

     private:
      std::unique_ptr<pqxx::connection> conn_;
    };
    return Guard("try lease", [&]() -> std::unique_ptr<StoreLease> {
      auto conn = std::make_unique<pqxx::connection>(url_);
      bool got = false;
      {
        pqxx::nontransaction n(*conn);
        got = n.exec1("SELECT pg_try_advisory_lock(" + std::to_string(key) + ")")[0].as<bool>();
      }
      if (!got) return nullptr;
      return std::make_unique<Lease>(std::move(conn));
    });
  }

 private:
  std::string url_;
};

}  // namespace

Result<std::unique_ptr<Store>> OpenPostgresStore(const std::string& url) {
  PP_ASSIGN_OR_RETURN(auto session, PgSession::Connect(url));
  PP_RETURN_IF_ERROR(session->Migrate());
  return std::unique_ptr<Store>(std::make_unique<PgStore>(url));
}

}  // namespace pp
