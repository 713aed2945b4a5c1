#include "common/sqlite_db.h"

#include <cstdio>
#include <cstdlib>

namespace pp {

Error SqlError(sqlite3* db, int rc, const char* what) {
  std::string msg = std::string(what) + ": " + sqlite3_errmsg(db);
  int primary = rc & 0xff;
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) return Error::Unavailable(msg);
  if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
    return Error{Code::kAlreadyExists, msg, {}, {}};
  return Error::Internal(msg);
}

Result<bool> Stmt::Step(const char* what) {
  int rc = sqlite3_step(s_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  Error e = SqlError(db_, sqlite3_extended_errcode(db_), what);
  sqlite3_reset(s_);
  return e;
}

std::string Stmt::Text(int c) const {
  auto p = reinterpret_cast<const char*>(sqlite3_column_text(s_, c));
  return p ? std::string(p, sqlite3_column_bytes(s_, c)) : std::string();
}

namespace {

// Once per process, before SQLite initialises itself on the first open.
// SQLite's memory statistics (which we never read) put every allocation of
// every connection behind one process-wide mutex: a thousand simulated
// devices, or the hub's writer and readers, queued on it.
void ConfigureSqliteOnce() {
  static const bool configured = [] {
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);  // SQLITE_MISUSE if already initialised: harmless
    return true;
  }();
  (void)configured;
}

}  // namespace

Result<std::unique_ptr<SqliteDb>> SqliteDb::Open(const std::string& path, Sharing sharing) {
  ConfigureSqliteOnce();
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = "cannot open SQLite database " + path + ": " +
                      (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return Error::Unavailable(msg);
  }
  auto out = std::make_unique<SqliteDb>(db);
  sqlite3_busy_timeout(db, 5000);
  // Before WAL mode is entered: only then does SQLite keep the WAL index in
  // this connection's memory rather than a shared-memory file.
  if (sharing == Sharing::kExclusive) PP_RETURN_IF_ERROR(out->Exec("PRAGMA locking_mode=EXCLUSIVE;"));
  Status st = out->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
  if (!st.ok() && sharing == Sharing::kExclusive && st.error().code == Code::kUnavailable)
    return Error::Unavailable("SQLite database " + path +
                              " is in use by another process, and this one must have it alone: " +
                              st.error().message);
  if (!st.ok()) return st.take_error();
  return out;
}

SqliteDb::~SqliteDb() {
  for (auto& [sql, s] : stmts_) s.Finalize();
  sqlite3_close_v2(db_);
}

Status SqliteDb::Exec(const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    Error e = SqlError(db_, rc, sql);
    sqlite3_free(err);
    return e;
  }
  return OkStatus();
}

Stmt& SqliteDb::Prepare(const char* sql) {
  auto it = stmts_.find(sql);
  if (it == stmts_.end()) {
    sqlite3_stmt* st = nullptr;
    // A failure here is a bug in our SQL, not bad input: fail loudly.
    if (sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, nullptr) != SQLITE_OK) {
      std::fprintf(stderr, "sqlite prepare failed: %s\n%s\n", sqlite3_errmsg(db_), sql);
      std::abort();
    }
    it = stmts_.emplace(sql, Stmt(db_, st)).first;
  }
  return it->second;
}

void SqliteDb::ResetAll() {
  for (auto& [sql, s] : stmts_) s.Reset();
}

void SqliteDb::Rollback() {
  ResetAll();
  if (!sqlite3_get_autocommit(db_)) (void)Exec("ROLLBACK");
}

}  // namespace pp
