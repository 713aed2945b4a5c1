#include "edge-agent/agent_store.h"

#include <cstdlib>

namespace pp::agent {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS queue (
  seq        INTEGER PRIMARY KEY,
  op         TEXT    NOT NULL UNIQUE,
  type       TEXT    NOT NULL,
  body       TEXT    NOT NULL,
  envelope   TEXT    NOT NULL,
  created_at INTEGER NOT NULL,
  traceparent TEXT   NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS outcomes (
  op      TEXT PRIMARY KEY,
  seq     INTEGER NOT NULL,
  type    TEXT    NOT NULL,
  status  TEXT    NOT NULL,
  code    TEXT    NOT NULL,
  message TEXT    NOT NULL,
  data    TEXT    NOT NULL,
  at      INTEGER NOT NULL
);
-- Files from before the outcomes were trimmed by rowid kept an index on
-- "at": one more page written for every outcome, read only for the screen.
DROP INDEX IF EXISTS outcomes_by_time;
CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nearby (id INTEGER PRIMARY KEY, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
)sql";

// Kept for the person to read; older answers are of no use on the device.
// Trimmed to kKeepOutcomes once every kTrimOutcomesEvery recorded (so
// between 500 and 563 are kept): trimming each time walked 500 index
// entries and rewrote the oldest rows' pages in every transaction that
// applied an outcome, half of its cost (docs/benchmarks.md, "Session 22").
constexpr int kKeepOutcomes = 500;
constexpr int kTrimOutcomesEvery = 64;
// Down-message ids are increasing; a repeat older than this many is not
// possible (the hub republishes only what it had not marked sent).
constexpr int64_t kKeepApplied = 100000;

QueuedOp ReadOp(const Stmt& s) {
  return {uint64_t(s.Int(0)), s.Text(1), s.Text(2), s.Text(3), s.Text(4), FromUnixMillis(s.Int(5)),
          s.Text(6)};
}

}  // namespace

Result<std::unique_ptr<AgentStore>> AgentStore::Open(const std::string& path) {
  // The agent's process alone: a second agent on the same file would send
  // the same queue under the same sequence numbers.
  PP_ASSIGN_OR_RETURN(auto db, SqliteDb::Open(path, SqliteDb::Sharing::kExclusive));
  PP_RETURN_IF_ERROR(db->Exec(kSchema));
  // Files from before the queue kept traces: add the column (once).
  if (auto st = db->Exec("ALTER TABLE queue ADD COLUMN traceparent TEXT NOT NULL DEFAULT ''");
      !st.ok() && st.error().message.find("duplicate column") == std::string::npos)
    return st.take_error();
  return std::unique_ptr<AgentStore>(new AgentStore(std::move(db)));
}

Status AgentStore::Write(const std::function<Status(AgentTxn&)>& f) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(db_->BeginWrite());
  AgentTxn tx(*db_);
  Status st = f(tx);
  if (!st.ok()) {
    db_->Rollback();
    return st;
  }
  st = db_->Commit();
  if (!st.ok()) db_->Rollback();
  return st;
}

Status AgentStore::Read(const std::function<Status(AgentTxn&)>& f) {
  std::lock_guard lock(mu_);
  PP_RETURN_IF_ERROR(db_->BeginRead());
  AgentTxn tx(*db_);
  Status st = f(tx);
  db_->Rollback();
  return st;
}

int64_t AgentStore::PagesWritten() {
  std::lock_guard lock(mu_);
  int current = 0, highest = 0;
  sqlite3_db_status(db_->raw(), SQLITE_DBSTATUS_CACHE_WRITE, &current, &highest, 0);
  return current;
}

int64_t AgentStore::PageBytes() {
  std::lock_guard lock(mu_);
  auto& s = db_->Prepare("PRAGMA page_size");
  s.Reset();
  auto row = s.Step("page size");
  const int64_t bytes = row.ok() && *row ? s.Int(0) : 0;
  s.Reset();
  return bytes;
}

Result<size_t> AgentTxn::QueueSize() {
  auto& s = db_.Prepare("SELECT count(*) FROM queue");
  s.Reset();
  PP_RETURN_IF_ERROR(s.Step("count queue"));
  return size_t(s.Int(0));
}

Result<std::vector<QueuedOp>> AgentTxn::OpsAfter(uint64_t seq, int limit) {
  auto& s = db_.Prepare(
      "SELECT seq, op, type, body, envelope, created_at, traceparent FROM queue WHERE seq > ? "
      "ORDER BY seq LIMIT ?");
  s.Reset().Bind(int64_t(seq)).Bind(int64_t(limit));
  return s.Rows<QueuedOp>("list queue", [](Stmt& r) { return ReadOp(r); });
}

Status AgentTxn::InsertOp(const QueuedOp& op) {
  auto& s = db_.Prepare(
      "INSERT INTO queue (seq, op, type, body, envelope, created_at, traceparent) "
      "VALUES (?,?,?,?,?,?,?)");
  s.Reset().Bind(int64_t(op.seq)).Bind(op.op).Bind(op.type).Bind(op.body).Bind(op.envelope)
      .Bind(op.created_at).Bind(op.traceparent);
  return s.Run("queue op");
}

Result<std::optional<QueuedOp>> AgentTxn::TakeOp(const std::string& op) {
  auto& q = db_.Prepare("SELECT seq, op, type, body, envelope, created_at, traceparent FROM queue WHERE op=?");
  q.Reset().Bind(op);
  PP_ASSIGN_OR_RETURN(bool row, q.Step("find op"));
  if (!row) return std::optional<QueuedOp>();
  QueuedOp found = ReadOp(q);
  q.Reset();
  auto& d = db_.Prepare("DELETE FROM queue WHERE op=?");
  d.Reset().Bind(op);
  PP_RETURN_IF_ERROR(d.Run("dequeue op"));
  return std::optional<QueuedOp>(std::move(found));
}

Status AgentTxn::PutOutcome(const OutcomeRecord& o) {
  auto& s = db_.Prepare(
      "INSERT OR REPLACE INTO outcomes (op, seq, type, status, code, message, data, at) "
      "VALUES (?,?,?,?,?,?,?,?)");
  s.Reset().Bind(o.op).Bind(int64_t(o.seq)).Bind(o.type).Bind(o.status).Bind(o.code)
      .Bind(o.message).Bind(o.data.dump()).Bind(o.at);
  PP_RETURN_IF_ERROR(s.Run("record outcome"));
  // Rowids grow with each outcome recorded (a replaced one is recorded
  // anew), so the newest are the highest.
  if (db_.LastInsertId() % kTrimOutcomesEvery != 0) return OkStatus();
  auto& trim = db_.Prepare(
      "DELETE FROM outcomes WHERE rowid < (SELECT rowid FROM outcomes ORDER BY rowid DESC LIMIT 1 OFFSET ?)");
  trim.Reset().Bind(int64_t(kKeepOutcomes - 1));
  return trim.Run("trim outcomes");
}

Result<std::vector<OutcomeRecord>> AgentTxn::RecentOutcomes(int limit) {
  auto& s = db_.Prepare(
      "SELECT op, seq, type, status, code, message, data, at FROM outcomes "
      "ORDER BY at DESC, seq DESC LIMIT ?");
  s.Reset().Bind(int64_t(limit));
  return s.Rows<OutcomeRecord>("list outcomes", [](Stmt& r) {
    return OutcomeRecord{r.Text(0), uint64_t(r.Int(1)), r.Text(2), r.Text(3), r.Text(4), r.Text(5),
                         nlohmann::json::parse(r.Text(6), nullptr, false), FromUnixMillis(r.Int(7))};
  });
}

Result<bool> AgentTxn::MarkApplied(int64_t id) {
  auto& s = db_.Prepare("INSERT OR IGNORE INTO applied (id) VALUES (?)");
  s.Reset().Bind(id);
  PP_RETURN_IF_ERROR(s.Run("mark applied"));
  bool fresh = db_.Changes() == 1;
  if (fresh && id % 1000 == 0) {
    auto& trim = db_.Prepare("DELETE FROM applied WHERE id < ?");
    trim.Reset().Bind(id - kKeepApplied);
    PP_RETURN_IF_ERROR(trim.Run("trim applied"));
    auto floor = GetMeta("applied_floor");
    if (!floor.ok()) return floor.take_error();
    if (!*floor || std::strtoll((*floor)->c_str(), nullptr, 10) < id - kKeepApplied)
      PP_RETURN_IF_ERROR(SetMeta("applied_floor", std::to_string(id - kKeepApplied)));
  }
  return fresh;
}

Result<std::optional<int64_t>> AgentTxn::GapBefore(int64_t prev) {
  auto& had = db_.Prepare("SELECT 1 FROM applied WHERE id=?");
  had.Reset().Bind(prev);
  PP_ASSIGN_OR_RETURN(bool applied, had.Step("applied prev"));
  if (applied) return std::optional<int64_t>();
  PP_ASSIGN_OR_RETURN(auto floor_text, GetMeta("applied_floor"));
  const int64_t floor = floor_text ? std::strtoll(floor_text->c_str(), nullptr, 10) : 0;
  if (prev < floor) return std::optional<int64_t>();  // trimmed: applied or not, nobody knows
  auto& below = db_.Prepare("SELECT coalesce(max(id), 0) FROM applied WHERE id < ?");
  below.Reset().Bind(prev);
  PP_ASSIGN_OR_RETURN(bool row, below.Step("applied before prev"));
  int64_t after = row ? below.Int(0) : 0;
  if (after == 0 && floor > 0) after = floor - 1;  // all kept ids are later: from the floor
  return std::optional<int64_t>(after);
}

Result<int64_t> AgentTxn::MaxApplied() {
  auto& s = db_.Prepare("SELECT coalesce(max(id), 0) FROM applied");
  s.Reset();
  PP_ASSIGN_OR_RETURN(bool row, s.Step("max applied"));
  return row ? s.Int(0) : 0;
}

Result<std::optional<nlohmann::json>> AgentTxn::GetPost(int64_t id) {
  auto& s = db_.Prepare("SELECT json FROM posts WHERE id=?");
  s.Reset().Bind(id);
  PP_ASSIGN_OR_RETURN(bool row, s.Step("get post"));
  if (!row) return std::optional<nlohmann::json>();
  return std::optional<nlohmann::json>(nlohmann::json::parse(s.Text(0), nullptr, false));
}

Status AgentTxn::PutPost(int64_t id, const nlohmann::json& post) {
  auto& s = db_.Prepare("INSERT OR REPLACE INTO posts (id, json) VALUES (?,?)");
  s.Reset().Bind(id).Bind(post.dump());
  return s.Run("put post");
}

Result<std::vector<nlohmann::json>> AgentTxn::Posts(int limit) {
  auto& s = db_.Prepare("SELECT json FROM posts ORDER BY id DESC LIMIT ?");
  s.Reset().Bind(int64_t(limit));
  return s.Rows<nlohmann::json>("list posts",
                                 [](Stmt& r) { return nlohmann::json::parse(r.Text(0), nullptr, false); });
}

Status AgentTxn::ReplaceNearby(const nlohmann::json& posts) {
  PP_RETURN_IF_ERROR(db_.Exec("DELETE FROM nearby"));
  auto& s = db_.Prepare("INSERT OR REPLACE INTO nearby (id, json) VALUES (?,?)");
  for (const auto& p : posts) {
    if (!p.is_object() || !p.contains("id") || !p["id"].is_number_integer()) continue;
    s.Reset().Bind(p["id"].get<int64_t>()).Bind(p.dump());
    PP_RETURN_IF_ERROR(s.Run("put nearby"));
  }
  return OkStatus();
}

Result<nlohmann::json> AgentTxn::Nearby() {
  auto& s = db_.Prepare("SELECT json FROM nearby");
  s.Reset();
  PP_ASSIGN_OR_RETURN(auto rows, s.Rows<nlohmann::json>("list nearby", [](Stmt& r) {
    return nlohmann::json::parse(r.Text(0), nullptr, false);
  }));
  return nlohmann::json(std::move(rows));
}

Result<std::optional<std::string>> AgentTxn::GetMeta(const char* key) {
  auto& s = db_.Prepare("SELECT v FROM meta WHERE k=?");
  s.Reset().Bind(std::string_view(key));
  PP_ASSIGN_OR_RETURN(bool row, s.Step("get meta"));
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(s.Text(0));
}

Status AgentTxn::SetMeta(const char* key, const std::string& value) {
  auto& s = db_.Prepare("INSERT OR REPLACE INTO meta (k, v) VALUES (?,?)");
  s.Reset().Bind(std::string_view(key)).Bind(value);
  return s.Run("set meta");
}

}  // namespace pp::agent
