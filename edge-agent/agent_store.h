// The agent's durable state, in one SQLite file (WAL, synchronous=FULL):
//
//   queue     ops typed on this device and not yet answered by the hub, in
//             sequence order, each with the exact signed bytes to (re)send;
//   outcomes  the hub's answers (kept for the person: conflicts, rejections);
//   posts     the mirror of the posts this device shows, as the hub last
//             described them;
//   nearby    the last answer to the tablet's "what is available near me";
//   applied   ids of down messages already applied (QoS 1 repeats them),
//             the last 100,000 ids' worth (meta applied_floor: below it,
//             nothing is known);
//   meta      the next sequence number, the last sync time, the hub clock offset.
//
// An op is in the queue from the moment Enqueue() returns (the commit is
// on disk) until the transaction that records its outcome commits.
//
// Thread safety: every Read/Write runs under one mutex, in one transaction.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/error.h"
#include "common/sqlite_db.h"

namespace pp::agent {

struct QueuedOp {
  uint64_t seq = 0;
  std::string op;        // op id
  std::string type;      // sync::kOp*
  std::string body;      // JSON, as sent
  std::string envelope;  // the signed bytes published
  Timestamp created_at{};
  std::string traceparent;  // W3C; sent as the MQTT v5 user property, every time
};

struct OutcomeRecord {
  std::string op;
  uint64_t seq = 0;
  std::string type;    // of the op; empty if the op was not ours any more
  std::string status;  // accepted | conflict | rejected
  std::string code;
  std::string message;
  nlohmann::json data;
  Timestamp at{};
};

// The statements, valid inside AgentStore::Read/Write.
class AgentTxn {
 public:
  explicit AgentTxn(SqliteDb& db) : db_(db) {}

  Result<size_t> QueueSize();
  Result<std::vector<QueuedOp>> OpsAfter(uint64_t seq, int limit);
  Status InsertOp(const QueuedOp& op);
  // Removes the op and returns it (nullopt: not queued, e.g. answered before).
  Result<std::optional<QueuedOp>> TakeOp(const std::string& op);

  Status PutOutcome(const OutcomeRecord& o);
  Result<std::vector<OutcomeRecord>> RecentOutcomes(int limit);

  // True the first time an id is marked.
  Result<bool> MarkApplied(int64_t id);
  // The highest id marked; 0 if none.
  Result<int64_t> MaxApplied();
  // For a publish that names `prev` (docs/protocol.md, section 6, "Gaps"):
  // nullopt if `prev` was applied, or is older than the ids still kept
  // (nothing can be told); otherwise the highest id applied before it (0:
  // none), after which the messages in between were lost.
  Result<std::optional<int64_t>> GapBefore(int64_t prev);

  Result<std::optional<nlohmann::json>> GetPost(int64_t id);
  Status PutPost(int64_t id, const nlohmann::json& post);
  Result<std::vector<nlohmann::json>> Posts(int limit);

  Status ReplaceNearby(const nlohmann::json& posts);
  Result<nlohmann::json> Nearby();

  Result<std::optional<std::string>> GetMeta(const char* key);
  Status SetMeta(const char* key, const std::string& value);

 private:
  SqliteDb& db_;
};

class AgentStore {
 public:
  // Opens the file for this process alone (SqliteDb::Sharing::kExclusive):
  // while it is open, another open of it fails (after SQLite's 5-second
  // busy wait) with an error that says the file is in use.
  static Result<std::unique_ptr<AgentStore>> Open(const std::string& path);

  // Runs `f` in a write transaction, committed (on disk) when this returns
  // OK; rolled back if `f` fails.
  Status Write(const std::function<Status(AgentTxn&)>& f);
  Status Read(const std::function<Status(AgentTxn&)>& f);
  // Pages this connection has written to the file's WAL since it opened
  // (SQLite's SQLITE_DBSTATUS_CACHE_WRITE): what a device's storage wears.
  int64_t PagesWritten();
  int64_t PageBytes();

 private:
  explicit AgentStore(std::unique_ptr<SqliteDb> db) : db_(std::move(db)) {}
  std::mutex mu_;
  std::unique_ptr<SqliteDb> db_;
};

}  // namespace pp::agent
