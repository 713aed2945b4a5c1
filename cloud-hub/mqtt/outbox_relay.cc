#include "cloud-hub/mqtt/outbox_relay.h"

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "common/log.h"
#include "common/process_cpu.h"
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
  // The NGO whose offer just lapsed, or who released its claim, learns it is over.
  if ((type == "surplus.offer_declined" || type == "surplus.offer_timed_out" ||
       type == "surplus.released") &&
      data.contains("excluded") && data["excluded"].is_array() && !data["excluded"].empty())
    add(data["excluded"].back());
  return orgs;
}

}  // namespace

std::optional<EventWire> WireOf(const OutboxEvent& e, int64_t now_ms, const WantedBy& wanted) {
  auto payload = nlohmann::json::parse(e.payload_json, nullptr, false);
  if (!payload.is_object()) return std::nullopt;
  EventWire w;
  if (e.type == "device.outcome") {
    if (!payload["device"].is_string()) return std::nullopt;
    w.device = payload["device"].get<std::string>();
    if (wanted && !wanted(w)) return std::nullopt;
    nlohmann::json message = payload["message"];
    message["id"] = e.id;
    message["ts"] = now_ms;
    w.bytes = message.dump();
    w.traceparent = payload.value("traceparent", "");
    return w;
  }
  w.orgs = OrgsOf(e.type, payload);
  if (payload.contains("source_device")) {  // the hub's own note (PostEffect), not the post's
    if (payload["source_device"].is_string()) w.except = payload["source_device"].get<std::string>();
    payload.erase("source_device");
  }
  w.provider = payload.contains("provider_id") && payload["provider_id"].is_number_integer()
                   ? payload["provider_id"].get<int64_t>()
                   : 0;
  if (wanted && !wanted(w)) return std::nullopt;
  // The handover code is the provider's secret: only its devices see it.
  std::string code;
  if (payload.contains("handover_code") && payload["handover_code"].is_string())
    code = payload["handover_code"].get<std::string>();
  payload.erase("handover_code");
  nlohmann::json message{{"v", sync::kProtocolVersion}, {"kind", "event"}, {"id", e.id},
                         {"ts", now_ms}, {"type", e.type}, {"data", payload}};
  w.bytes = message.dump();
  w.provider_bytes = w.bytes;
  if (!code.empty()) {
    message["data"]["handover_code"] = code;
    w.provider_bytes = message.dump();
  }
  // The post's trace travels on as the MQTT v5 user property too.
  w.traceparent = payload.value("traceparent", "");
  return w;
}

struct OutboxRelay::InFlight {
  std::vector<int64_t> ids;            // the page's events, in id order
  std::vector<Timestamp> committed;    // and when each was committed (for the delay metric)
  bool full = false;                   // the listing was full: more may wait
  std::vector<sync::MqttClient::Ack> acks;
  size_t acked = 0;
  Status failed = OkStatus();          // a PUBACK that did not come: the page is not marked
  // Per event, how many publishes must be acknowledged before all of its
  // are; events in that order (for the delay metric), and how many of them
  // have been counted.
  std::vector<size_t> last_publish, settle_order;
  size_t settled = 0;
  std::map<std::string, int64_t> last_now;  // this page's last id per device

  size_t outstanding() const { return failed.ok() ? acks.size() - acked : 0; }
  // Waits for the oldest PUBACK still out; counts the events it completes.
  Status AwaitNext(metrics::Histogram* delay, const Clock& clock) {
    if (!failed.ok()) return failed;
    if (Status st = acks[acked].Wait(std::chrono::seconds(10)); !st.ok()) return failed = st;
    SettleThrough(++acked, delay, clock);
    return OkStatus();
  }
  void SettleThrough(size_t acks_done, metrics::Histogram* delay, const Clock& clock) {
    for (; settled < settle_order.size() && last_publish[settle_order[settled]] <= acks_done; ++settled)
      if (delay)
        delay->Observe(std::chrono::duration<double>(clock.Now() - committed[settle_order[settled]]).count());
  }
};

OutboxRelay::OutboxRelay(HubService& hub, sync::MqttClient& mqtt, Mark mark)
    : hub_(hub), mqtt_(mqtt), mark_(std::move(mark)) {
  // Under the lock, so that a waiter cannot check a PUBACK, find it
  // missing and then miss its notice.
  mqtt_.OnPublishDone([signal = signal_] {
    std::lock_guard lock(signal->mu);
    signal->cv.notify_all();
  });
  if (!mark_)
    mark_ = [this](std::vector<int64_t> ids, HubService::LastSentByDevice last_sent,
                   std::function<void(Status)> done) {
      hub_.MarkOutboxSent(std::move(ids), std::move(last_sent), std::move(done));
    };
}

OutboxRelay::~OutboxRelay() { Stop(); }

void OutboxRelay::Start() {
  {
    std::lock_guard lock(mu_);
    stop_ = false;
    // After a Stop(): what a page left unmarked is listed and sent again
    // (receivers drop repeats); no mark is pending (Stop waited for them).
    unmarked_.clear();
    mark_failed_ = false;
  }
  in_flight_.clear();
  cursor_ = 0;
  passes_to_start_ = 0;
  {
    std::lock_guard lock(last_mu_);
    last_sent_.clear();
    publishing_ = true;
  }
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
  std::lock_guard last_lock(last_mu_);
  publishing_ = false;
}

void OutboxRelay::SetMetrics(metrics::Registry* registry) {
  delay_ = &registry->GetHistogram("outbox_relay_delay_seconds",
                                   "From an outbox event's commit to the PUBACK of its last publish.",
                                   metrics::LatencyBuckets());
  const char* help = "Pages of outbox events published, and whether the page before still awaited PUBACKs.";
  pages_alone_ = &registry->GetCounter("outbox_relay_pages_total", help, {{"overlapped", "false"}});
  pages_overlapped_ = &registry->GetCounter("outbox_relay_pages_total", help, {{"overlapped", "true"}});
}

void OutboxRelay::Notify() {
  {
    std::lock_guard lock(mu_);
    poke_ = true;
  }
  cv_.notify_all();
}

void OutboxRelay::Loop() {
  NameThisThread("outbox-relay");
  auto backoff = std::chrono::milliseconds(50);
  auto failed = [&](const Error& e) {
    // Nothing of a page whose PUBACKs did not all come is marked, nor of
    // the pages after it: all of it goes again, from the start.
    Log(LogLevel::kWarn, "relay_failed", {{"error", e.ToString()}});
    in_flight_.clear();
    passes_to_start_ = 0;
    backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
  };
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (stop_) break;
    }
    auto page = PublishPage();
    if (!page.ok()) {
      failed(page.error());
    } else {
      backoff = std::chrono::milliseconds(50);
      const bool full = *page && (*page)->full;
      if (*page) in_flight_.push_back(std::move(*page));
      // Mark the pages whose PUBACKs are all in, oldest first, until one
      // still awaits some and something new was committed meanwhile (or
      // Stop): then publish that at once rather than wait. After a full
      // page, list the next at once.
      Status st = OkStatus();
      while (st.ok() && !in_flight_.empty()) {
        auto all_in = AwaitAcksOrNews(*in_flight_.front(), /*wait=*/!full);
        if (all_in.ok() && !*all_in) break;
        st = all_in.ok() ? Finish(*in_flight_.front()) : Status(all_in.take_error());
        if (st.ok()) in_flight_.pop_front();
      }
      if (!st.ok()) {
        failed(st.error());
      } else if (full || !in_flight_.empty()) {
        continue;  // more than a page waiting, or news
      }
    }
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, backoff, [&] { return stop_ || poke_; });
    poke_ = false;
  }
  // What is acknowledged in time is marked; the rest goes again next run.
  while (!in_flight_.empty() && Finish(*in_flight_.front()).ok()) in_flight_.pop_front();
}

std::optional<int64_t> OutboxRelay::LastSentTo(const std::string& device) {
  int64_t last = 0;
  bool known = false, publishing;
  {
    std::lock_guard lock(last_mu_);
    publishing = publishing_;
    if (auto it = last_sent_.find(device); publishing && it != last_sent_.end()) last = it->second, known = true;
  }
  if (!known) {
    // Not sent to in this run, or another replica publishes: what the marks
    // recorded (read outside the lock). Kept only while this relay
    // publishes; a publish acknowledged meanwhile is newer and wins.
    auto stored = hub_.LastSentTo(device);
    if (!stored.ok()) return std::nullopt;  // asked again next time
    last = *stored;
    if (publishing) {
      std::lock_guard lock(last_mu_);
      last = last_sent_.try_emplace(device, last).first->second;
    }
  }
  if (last == 0) return std::nullopt;  // 0: nothing ever sent
  return last;
}

Result<std::unique_ptr<OutboxRelay::InFlight>> OutboxRelay::PublishPage() {
  std::set<int64_t> skip;  // published, not yet marked
  {
    std::lock_guard lock(mu_);
    if (std::exchange(mark_failed_, false))
      return Error::Unavailable("marking published events sent failed");
    skip = unmarked_;
  }
  for (const auto& f : in_flight_) skip.insert(f->ids.begin(), f->ids.end());
  if (!mqtt_.connected()) return Error::Unavailable("broker not connected");
  // Everything awaiting its mark lies at or below the cursor: a pass after
  // it has nothing to skip (the header comment says when to start over).
  const bool from_start = passes_to_start_ == 0;
  const int limit = kPage + (from_start ? int(skip.size()) : 0);
  auto page = hub_.ListUnsentOutbox(limit, from_start ? 0 : cursor_);
  if (!page.ok()) return page.take_error();
  const bool full = int(page->size()) == limit;  // more may wait: go on at once
  // Caught up after the cursor with nothing in flight: look below it once.
  // With pages in flight the relay is back at once (on the next commit or
  // PUBACK), and listing everything they hold again each time doubled its
  // reads of the outbox (docs/benchmarks.md, "Session 24"): kRescanEvery
  // still bounds the wait.
  passes_to_start_ = from_start                     ? kRescanEvery
                     : full || !in_flight_.empty()  ? passes_to_start_ - 1
                                                    : 0;
  std::erase_if(*page, [&](const OutboxEvent& e) { return skip.count(e.id) > 0; });
  if (page->empty()) return std::unique_ptr<InFlight>();

  auto out = std::make_unique<InFlight>();
  out->full = full;
  std::map<int64_t, std::vector<std::string>> devices_of;  // per org, this page
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
  // What each device is to receive from this page, in outbox order; an
  // event sent to several devices is in several lists.
  struct Message {
    std::string bytes, traceparent;
    size_t event;  // index in *page
  };
  std::vector<std::string> order;  // devices, as first met
  std::map<std::string, std::vector<Message>> inbox;
  auto send = [&](const std::string& device, std::string bytes, std::string traceparent, size_t event) {
    auto [it, fresh] = inbox.try_emplace(device);
    if (fresh) order.push_back(device);
    it->second.push_back({std::move(bytes), std::move(traceparent), event});
  };
  // The hub's clock on every message: devices whose clocks are off convert
  // the times people pick with it (docs/protocol.md, "ts").
  const int64_t now_ms = ToUnixMillis(hub_.clock().Now());
  for (size_t i = 0; i < page->size(); ++i) {
    const OutboxEvent& e = (*page)[i];
    out->ids.push_back(e.id);
    out->committed.push_back(e.created_at);
    auto w = WireOf(e, now_ms);
    if (!w) continue;
    if (!w->device.empty()) {
      send(w->device, std::move(w->bytes), w->traceparent, i);
      continue;
    }
    for (int64_t org : w->orgs) {
      PP_ASSIGN_OR_RETURN(auto devices, devices_of_org(org));
      for (const auto& device : *devices)
        if (w->Reaches(device, org)) send(device, w->BytesFor(org), w->traceparent, i);
    }
  }

  // One publish per device, its messages batched (sync::EncodeDownBatch) up
  // to the broker's packet size, in the order the devices were first met.
  struct Publish {
    const std::string* device;
    std::vector<Message>::const_iterator from, to;
  };
  std::vector<Publish> plan;
  out->last_publish.assign(page->size(), 0);
  for (const auto& device : order) {
    const auto& messages = inbox[device];
    std::vector<size_t> sizes;
    for (const auto& m : messages) sizes.push_back(m.bytes.size());
    for (auto [first, last] : sync::CutIntoBatches(sizes)) {
      plan.push_back({&device, messages.begin() + first, messages.begin() + last});
      for (size_t i = first; i < last; ++i) out->last_publish[messages[i].event] = plan.size();
    }
  }
  out->settle_order.resize(page->size());
  for (size_t i = 0; i < page->size(); ++i) out->settle_order[i] = i;
  std::stable_sort(out->settle_order.begin(), out->settle_order.end(),
                   [&](size_t a, size_t b) { return out->last_publish[a] < out->last_publish[b]; });
  out->SettleThrough(0, delay_, hub_.clock());  // events nobody was to receive
  if (auto* pages = in_flight_.empty() ? pages_alone_ : pages_overlapped_) pages->Inc();
  // At most kWindow publishes awaiting PUBACK, this page's and those of the
  // pages still in flight, the oldest first. The broker allows 200 in
  // flight (its MQTT v5 Receive Maximum); beyond that Paho C 1.3 parks
  // publishes and resumes them only on its 1-second timer, which showed as
  // whole-second stalls per page.
  auto outstanding = [&] {
    size_t n = out->outstanding();
    for (const auto& f : in_flight_) n += f->outstanding();
    return n;
  };
  auto await_oldest = [&]() -> Status {
    for (auto& f : in_flight_)
      if (f->outstanding() > 0) return f->AwaitNext(delay_, hub_.clock());
    return out->AwaitNext(delay_, hub_.clock());
  };
  for (const auto& p : plan) {
    while (outstanding() >= kWindow) PP_RETURN_IF_ERROR(await_oldest());
    // Each publish names the last message of the one before it to this
    // device (perhaps in a page still in flight), so that a device whose
    // broker dropped some (its queue over max_queued_messages while away)
    // sees the gap and catches up.
    auto last_sent = [&]() -> std::optional<int64_t> {
      if (auto it = out->last_now.find(*p.device); it != out->last_now.end()) return it->second;
      for (auto f = in_flight_.rbegin(); f != in_flight_.rend(); ++f)  // newest first
        if (auto it = (*f)->last_now.find(*p.device); it != (*f)->last_now.end()) return it->second;
      return LastSentTo(*p.device);
    };
    const int64_t prev = last_sent().value_or(0);
    out->last_now[*p.device] = (*page)[(p.to - 1)->event].id;
    std::string bytes;
    if (p.to - p.from == 1) {
      bytes = sync::WithPrev(p.from->bytes, prev);
    } else {
      std::vector<std::string_view> parts;
      for (auto m = p.from; m != p.to; ++m) parts.push_back(m->bytes);
      bytes = sync::EncodeDownBatch(parts, prev);
    }
    PP_ASSIGN_OR_RETURN(auto ack, mqtt_.Publish(sync::DownTopic(*p.device), bytes, p.from->traceparent));
    out->acks.push_back(std::move(ack));
  }
  cursor_ = std::max(cursor_, page->back().id);  // a page is in id order
  return out;
}

Result<bool> OutboxRelay::AwaitAcksOrNews(InFlight& page, bool wait) {
  while (page.outstanding() > 0) {
    {
      std::unique_lock lock(mu_);
      const auto& next = page.acks[page.acked];
      const auto timeout = wait ? std::chrono::seconds(10) : std::chrono::seconds(0);
      bool done = false;  // checked once a wake-up: a check not yet done costs a system call
      const bool woke = cv_.wait_for(lock, timeout, [&] { return (done = next.Done()) || stop_ || poke_; });
      if (!woke && wait) {
        page.failed = Error::Unavailable("no PUBACK within the timeout");
        return page.failed.error();
      }
      if (!done) {
        if (!stop_) poke_ = false;  // the next pass lists what it was told of
        return false;
      }
    }
    PP_RETURN_IF_ERROR(page.AwaitNext(delay_, hub_.clock()));  // done: at once
  }
  return true;
}

RelayLeader::RelayLeader(Store& store, OutboxRelay& relay, std::chrono::milliseconds retry)
    : store_(store), relay_(relay), retry_(retry) {}

RelayLeader::~RelayLeader() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void RelayLeader::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void RelayLeader::Loop() {
  NameThisThread("relay-leader");
  std::unique_ptr<StoreLease> lease;
  while (true) {
    if (!lease) {
      auto got = store_.TryLease(kLeaseKey);
      if (!got.ok()) {
        Log(LogLevel::kWarn, "relay_lease_failed", {{"error", got.error().ToString()}});
      } else if (*got) {
        lease = std::move(*got);
        relay_.Start();
        leading_ = true;
        Log(LogLevel::kInfo, "relay_leading");
      }
    } else if (!lease->StillHeld()) {
      Log(LogLevel::kWarn, "relay_lease_lost", {});
      relay_.Stop();
      leading_ = false;
      lease.reset();
    }
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, retry_, [&] { return stop_; })) break;
  }
  if (leading_) relay_.Stop();
  leading_ = false;
}

Status OutboxRelay::Finish(InFlight& page) {
  // Mark only what the broker has acknowledged, all of it or nothing.
  while (page.outstanding() > 0) PP_RETURN_IF_ERROR(page.AwaitNext(delay_, hub_.clock()));
  PP_RETURN_IF_ERROR(page.failed);
  // Only now: a page that failed half-way is published again naming the
  // same prev as the first time.
  {
    std::lock_guard lock(last_mu_);
    for (auto& [device, id] : page.last_now) last_sent_[device] = id;
  }
  {
    std::lock_guard lock(mu_);
    unmarked_.insert(page.ids.begin(), page.ids.end());
    ++marks_pending_;
  }
  mark_(page.ids, std::move(page.last_now), [this, ids = page.ids](Status st) {
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
  return OkStatus();
}

}  // namespace pp
