// PostgreSQL backend (libpqxx 6.4). READ COMMITTED transactions: a claim's
// conditional UPDATE waits for a concurrent claimer's row lock, then
// re-checks version and status against the committed row, so exactly one of
// them matches — across threads, processes and hub replicas alike.
//
// Thread safety: as Store. Each Session owns one connection.
#pragma once

#include <memory>
#include <string>

#include "cloud-hub/store/store.h"

namespace pp {

Result<std::unique_ptr<Store>> OpenPostgresStore(const std::string& url);

}  // namespace pp
