// The SQLite helpers both the hub's store and the edge agent use: a
// connection with its cache of prepared statements, and a statement wrapper
// with typed binds and reads. Errors come back as the one Error type
// (SQLITE_BUSY -> kUnavailable, unique violations -> kAlreadyExists).
//
// Thread safety: a SqliteDb is used by one thread at a time.
#pragma once

#include <sqlite3.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/error.h"

namespace pp {

Error SqlError(sqlite3* db, int rc, const char* what);

// A prepared statement, reset on every use. Binding indexes are 1-based as in SQLite.
class Stmt {
 public:
  Stmt(sqlite3* db, sqlite3_stmt* s) : db_(db), s_(s) {}
  Stmt& Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
    idx_ = 0;
    return *this;
  }
  Stmt& Bind(int64_t v) { sqlite3_bind_int64(s_, ++idx_, v); return *this; }
  Stmt& Bind(double v) { sqlite3_bind_double(s_, ++idx_, v); return *this; }
  Stmt& Bind(const std::string& v) { return Bind(std::string_view(v)); }
  Stmt& Bind(std::string_view v) {
    sqlite3_bind_text(s_, ++idx_, v.data(), int(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(Timestamp t) { return Bind(ToUnixMillis(t)); }
  template <typename T>
  Stmt& Bind(const std::optional<T>& v) {
    if (v) return Bind(*v);
    sqlite3_bind_null(s_, ++idx_);
    return *this;
  }
  // SQLITE_ROW -> true, SQLITE_DONE -> false.
  Result<bool> Step(const char* what);
  // Every row, each turned into a T by `read(*this)`: the loop of a list query.
  template <typename T, typename Read>
  Result<std::vector<T>> Rows(const char* what, Read read) {
    std::vector<T> out;
    while (true) {
      PP_ASSIGN_OR_RETURN(bool row, Step(what));
      if (!row) return out;
      out.push_back(read(*this));
    }
  }
  // Step for statements that return no rows.
  Status Run(const char* what) {
    auto r = Step(what);
    if (!r.ok()) return r.take_error();
    return OkStatus();
  }
  void Finalize() { sqlite3_finalize(s_); }
  int64_t Int(int c) const { return sqlite3_column_int64(s_, c); }
  double Real(int c) const { return sqlite3_column_double(s_, c); }
  bool Null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  std::string Text(int c) const;
  std::optional<int64_t> OptInt(int c) const {
    return Null(c) ? std::nullopt : std::optional<int64_t>(Int(c));
  }
  std::optional<Timestamp> OptTime(int c) const {
    return Null(c) ? std::nullopt : std::optional<Timestamp>(FromUnixMillis(Int(c)));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* s_;
  int idx_ = 0;
};

class SqliteDb {
 public:
  // Who may open the file while this connection has it.
  enum class Sharing {
    kShared,  // other connections and processes too (the hub's writer and readers)
    // This connection alone, until it closes: it holds the file's lock from
    // the moment it opens it and keeps its WAL index in its own memory, which
    // spares every transaction the POSIX lock calls and the shared-memory
    // index (an edge device's store: one process owns it, and a second
    // agent started on the same file is refused instead of sending the
    // same queue twice).
    kExclusive,
  };
  // Opens (creating) the file in WAL mode with synchronous=FULL: a commit
  // is on disk when it returns, which is what lets us acknowledge.
  static Result<std::unique_ptr<SqliteDb>> Open(const std::string& path,
                                                Sharing sharing = Sharing::kShared);
  explicit SqliteDb(sqlite3* db) : db_(db) {}
  ~SqliteDb();
  SqliteDb(const SqliteDb&) = delete;
  SqliteDb& operator=(const SqliteDb&) = delete;

  Status Exec(const char* sql);
  // Cached by the SQL text's address: pass literals or strings that never move.
  Stmt& Prepare(const char* sql);
  // A statement left on a row keeps its read snapshot open: reset them all
  // when a transaction ends, or the next one on this connection reads the past.
  void ResetAll();
  // IMMEDIATE takes the write lock up front, so a write transaction never
  // fails half-way on a read-to-write upgrade.
  Status BeginWrite() { return RunPrepared("BEGIN IMMEDIATE"); }
  Status BeginRead() { return RunPrepared("BEGIN"); }
  Status Commit() {
    ResetAll();
    return RunPrepared("COMMIT");
  }
  void Rollback();
  // A statement without parameters or rows, prepared once and kept:
  // sqlite3_exec (Exec) would parse its text again on every call.
  Status RunPrepared(const char* sql) { return Prepare(sql).Reset().Run(sql); }
  int64_t LastInsertId() const { return sqlite3_last_insert_rowid(db_); }
  int Changes() const { return sqlite3_changes(db_); }
  sqlite3* raw() const { return db_; }

 private:
  sqlite3* db_;
  std::unordered_map<const char*, Stmt> stmts_;
};

}  // namespace pp
