#include "cloud-hub/bench/bench_hub.h"

#include <cstdio>

#include "common/clock.h"

namespace pp {

Result<BenchHub> StartBenchHub(const std::string& db_path, const std::string& kiosk_id,
                               const sync::PublicKey& kiosk_key) {
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((db_path + suffix).c_str());
  BenchHub b;
  PP_ASSIGN_OR_RETURN(b.store, OpenStore("sqlite:" + db_path));
  PP_ASSIGN_OR_RETURN(b.committer, GroupCommitter::Start(*b.store, {}));
  b.hub = std::make_unique<HubService>(*b.store, *b.committer, SystemClock::Instance());
  PP_ASSIGN_OR_RETURN(auto org, b.hub->CreateOrganization({OrgKind::kProvider, "bench", {51.5, -0.1}}, ""));
  b.provider = nlohmann::json::parse(org.json)["id"].get<int64_t>();
  PP_RETURN_IF_ERROR(
      b.hub->RegisterDevice({kiosk_id, "kiosk", b.provider, sync::ToBase64(kiosk_key), false, 0, {}}).status());
  return b;
}

}  // namespace pp
