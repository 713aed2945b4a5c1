#include "cloud-hub/mqtt/outbox_relay.h"

#include <set>
#include <utility>

#include "common/log.h"
#include "sync/protocol.h"

namespace pp {
namespace {

// The organisations a surplus event concerns.
std::set<int64_t> OrgsOf(const std::string& type, const nlohmann::json& data) {
  std::set<int64_t> orgs;
  auto add = [&](const nlohmann::json& v) {
    if (v.is_number_integer()) orgs.insert(v.get<int64_t>());
  };
  if (data.contains("provider_id")) add(data["provider_id"]);
  if (data.contains("claimed_by")) add(data["claimed_by"]);
  if (data.contains("offer") && data["offer"].is_object()) add(data["offer"]["ngo_id"]);
  // The NGO whose offer just lapsed learns it is over.
  if ((type == "surplus.offer_declined" || type == "surplus.offer_timed_out") &&
      data.contains("excluded") && data["excluded"].is_array() && !data["excluded"].empty())
    add(data["excluded"].back());
  return orgs;
}

}  // namespace

OutboxRelay::OutboxRelay(HubService& hub, sync::MqttClient& mqtt, Mark mark)
    : hub_(hub), mqtt_(mqtt), mark_(std::move(mark)) {
  if (!mark_)
    mark_ = [this](std::vector<int64_t> ids, std::function<void(Status)> done) {
      hub_.MarkOutboxSent(std::move(ids), std::move(done));
    };
}

OutboxRelay::~OutboxRelay() { Stop(); }

void OutboxRelay::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void OutboxRelay::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  std::unique_lock lock(mu_);  // their callbacks use this object
  cv_.wait(lock, [&] { return marks_pending_ == 0; });
}

void OutboxRelay::SetMetrics(metrics::Registry* registry) {
  delay_ = &registry->GetHistogram("outbox_relay_delay_seconds",
                                   "From an outbox event's commit to the PUBACK of its last publish.",
                                   metrics::LatencyBuckets());
}

void OutboxRelay::Notify() {
  {
    std::lock_guard lock(mu_);
    poke_ = true;
  }
  cv_.notify_all();
}

void OutboxRelay::Loop() {
  auto backoff = std::chrono::milliseconds(50);
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
    }
    auto more = RelayPage();
    if (!more.ok()) {
      Log(LogLevel::kWarn, "relay_failed", {{"error", more.error().ToString()}});
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    } else {
      backoff = std::chrono::milliseconds(50);
      if (*more) continue;  // a full page: go on at once
    }
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, backoff, [&] { return stop_ || poke_; });
    poke_ = false;
  }
}

Result<bool> OutboxRelay::RelayPage() {
  std::set<int64_t> unmarked;
  {
    std::lock_guard lock(mu_);
    if (std::exchange(mark_failed_, false)) return Error::Unavailable("marking published events sent failed");
    unmarked = unmarked_;
  }
  if (!mqtt_.connected()) return Error::Unavailable("broker not connected");
  auto page = hub_.ListUnsentOutbox(kPage + int(unmarked.size()));
  if (!page.ok()) return page.take_error();
  const bool full = int(page->size()) == kPage + int(unmarked.size());  // more may wait: go on at once
  std::erase_if(*page, [&](const OutboxEvent& e) { return unmarked.count(e.id) > 0; });
  if (page->empty()) return false;

  std::map<int64_t, std::vector<std::string>> devices_of;  // per org, this page
  std::vector<sync::MqttClient::Ack> acks;
  std::vector<int64_t> ids;
  auto devices_of_org = [&](int64_t org) -> Result<const std::vector<std::string>*> {
    auto it = devices_of.find(org);
    if (it == devices_of.end()) {
      std::vector<std::string> ids_of_org;
      auto devs = hub_.ListDevicesOfOrg(org);
      if (!devs.ok()) return devs.take_error();
      for (const auto& d : *devs)
        if (!d.revoked) ids_of_org.push_back(d.id);
      it = devices_of.emplace(org, std::move(ids_of_org)).first;
    }
    return &it->second;
  };
  // At most kWindow publishes awaiting PUBACK. The broker allows 200 in
  // flight (its MQTT v5 Receive Maximum); beyond that Paho C 1.3 parks
  // publishes and resumes them only on its 1-second timer, which showed as
  // whole-second stalls per page.
  size_t acked = 0;
  // For the delay metric: each event's commit time and how many publishes
  // must be acknowledged before all of its own are, observed as they are.
  std::vector<std::pair<size_t, Timestamp>> settles_at;
  size_t settled = 0;
  auto settle_through = [&](size_t acks_done) {
    for (; settled < settles_at.size() && settles_at[settled].first <= acks_done; ++settled)
      if (delay_)
        delay_->Observe(std::chrono::duration<double>(hub_.clock().Now() - settles_at[settled].second).count());
  };
  auto await_next_ack = [&]() -> Status {
    PP_RETURN_IF_ERROR(acks[acked++].Wait(std::chrono::seconds(10)));
    settle_through(acked);
    return OkStatus();
  };
  auto publish = [&](const std::string& device, const std::string& bytes,
                     const std::string& traceparent) -> Status {
    while (acks.size() - acked >= kWindow) PP_RETURN_IF_ERROR(await_next_ack());
    PP_ASSIGN_OR_RETURN(auto ack, mqtt_.Publish(sync::DownTopic(device), bytes, traceparent));
    acks.push_back(std::move(ack));
    return OkStatus();
  };
  // The hub's clock on every message: devices whose clocks are off convert
  // the times people pick with it (docs/protocol.md, "ts").
  const int64_t now_ms = ToUnixMillis(hub_.clock().Now());
  for (const auto& e : *page) {
    auto payload = nlohmann::json::parse(e.payload_json, nullptr, false);
    if (e.type == "device.outcome") {
      if (payload.is_object() && payload["device"].is_string()) {
        nlohmann::json message = payload["message"];
        message["id"] = e.id;
        message["ts"] = now_ms;
        PP_RETURN_IF_ERROR(publish(payload["device"].get<std::string>(), message.dump(),
                                   payload.value("traceparent", "")));
      }
    } else if (payload.is_object()) {
      // The handover code is the provider's secret: only its devices see it.
      std::string code;
      if (payload.contains("handover_code") && payload["handover_code"].is_string())
        code = payload["handover_code"].get<std::string>();
      payload.erase("handover_code");
      nlohmann::json message{{"v", sync::kProtocolVersion}, {"kind", "event"}, {"id", e.id},
                             {"ts", now_ms}, {"type", e.type}, {"data", payload}};
      const std::string bytes = message.dump();
      std::string provider_bytes = bytes;
      int64_t provider = payload.value("provider_id", int64_t{0});
      if (!code.empty()) {
        message["data"]["handover_code"] = code;
        provider_bytes = message.dump();
      }
      // The post's trace travels on as the MQTT v5 user property too.
      std::string trace = payload.value("traceparent", "");
      for (int64_t org : OrgsOf(e.type, payload)) {
        PP_ASSIGN_OR_RETURN(auto devices, devices_of_org(org));
        for (const auto& device : *devices)
          PP_RETURN_IF_ERROR(publish(device, org == provider ? provider_bytes : bytes, trace));
      }
    }
    ids.push_back(e.id);
    settles_at.emplace_back(acks.size(), e.created_at);
  }
  // Mark only what the broker has acknowledged, all of it or nothing.
  while (acked < acks.size()) PP_RETURN_IF_ERROR(await_next_ack());
  settle_through(acks.size());  // and events nobody was to receive
  {
    std::lock_guard lock(mu_);
    unmarked_.insert(ids.begin(), ids.end());
    ++marks_pending_;
  }
  mark_(ids, [this, ids](Status st) {
    if (!st.ok())
      Log(LogLevel::kWarn, "outbox_mark_failed",
          {{"events", std::to_string(ids.size())}, {"error", st.error().ToString()}});
    std::lock_guard lock(mu_);
    for (int64_t id : ids) unmarked_.erase(id);
    --marks_pending_;
    if (!st.ok()) mark_failed_ = true;
    // Under the lock: once Stop() sees no mark pending it may destroy us.
    cv_.notify_all();
  });
  return full;
}

}  // namespace pp
