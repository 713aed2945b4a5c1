// SQLite backend: the embedded default. WAL journal with synchronous=FULL,
// so a commit is on disk before it returns (NORMAL would not flush on
// commit); group commit is what makes FULL fast.
//
// Thread safety: as Store. SQLite allows one writer at a time, so
// MaxConcurrentWriters() is 1; readers run concurrently under WAL.
#pragma once

#include <memory>
#include <string>

#include "cloud-hub/store/store.h"

namespace pp {

Result<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path);

}  // namespace pp
