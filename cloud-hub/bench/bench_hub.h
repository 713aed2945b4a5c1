// The hub the device benchmarks (pp-sync-bench, pp-agent-bench) run in their
// own process, as pp-hub runs it: a fresh SQLite store (synchronous=FULL),
// group commit and HubService, with one provider organisation and one
// registered kiosk device.
#pragma once

#include <memory>
#include <string>

#include "cloud-hub/core/group_committer.h"
#include "cloud-hub/core/hub_service.h"
#include "cloud-hub/store/store.h"
#include "sync/protocol.h"

namespace pp {

struct BenchHub {
  // Declared in the order they are built: destroyed hub first, store last.
  std::unique_ptr<Store> store;
  std::unique_ptr<GroupCommitter> committer;
  std::unique_ptr<HubService> hub;
  int64_t provider = 0;  // the organisation the kiosk belongs to
};

// Removes any earlier `db_path` (and its -wal/-shm) first.
Result<BenchHub> StartBenchHub(const std::string& db_path, const std::string& kiosk_id,
                               const sync::PublicKey& kiosk_key);

}  // namespace pp
