#include "cloud-hub/store/postgres/pg_store.h"
#include "cloud-hub/store/sqlite/sqlite_store.h"

namespace pp {

Result<std::unique_ptr<Store>> OpenStore(std::string_view url) {
  constexpr std::string_view kSqlite = "sqlite:";
  if (url.starts_with(kSqlite)) {
    std::string path(url.substr(kSqlite.size()));
    if (path.empty()) return Error::Invalid("store URL sqlite: needs a path, e.g. sqlite:./var/hub.db");
    return OpenSqliteStore(path);
  }
  if (url.starts_with("postgresql://") || url.starts_with("postgres://"))
    return OpenPostgresStore(std::string(url));
  return Error::Invalid("unknown store URL \"" + std::string(url.substr(0, 80)) +
                        "\": use sqlite:PATH or postgresql://...");
}

}  // namespace pp
