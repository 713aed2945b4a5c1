// Publishes the outbox, in order, to the devices each event concerns, with
// QoS 1; an event is marked sent only after the broker acknowledged every
// publish of it (PUBACK). A crash between publish and mark republishes the
// event after restart: receivers drop repeats by the event id ("id").
//
// Marking does not hold up the next page: a page's marks go to the group
// committer and the relay moves on, leaving the ids it published but has
// not yet seen marked out of the pages it lists meanwhile. If marking
// fails, those ids are listed again and republished (after the usual
// backoff), which receivers drop as repeats.
//
// Who receives what (cloud-hub/mqtt/outbox_relay.cc, WireOf and OrgsOf):
//   device.outcome          -> the device that sent the op
//   surplus.* events        -> the devices of the post's provider, of the NGO
//                              holding the offer or the claim, and of the NGO
//                              that just declined or timed out
//
// A page's messages for one device go in one publish (a batch, see
// docs/protocol.md, "Batch"), in outbox order, cut where the next would not
// fit the broker's packet size: an MQTT message costs far more than its bytes.
// Where a pass lists from: after the last event this run published (a
// cursor), so that events published and only waiting for their marks are not
// read again page after page. In a rush thousands of marks wait behind the
// ingest in the group committer, and listing them again cost the relay more
// than its publishing did. From the start instead (skipping what awaits its
// mark) on the first pass, after a failure, once a pass has caught up with
// no page in flight, and every kRescanEvery passes: an event that commits
// late with an id below the cursor (PostgreSQL with several writers) still
// goes out.
//
// Pages overlap: while a page's PUBACKs are coming, the relay lists and
// publishes the next as soon as something is committed (or at once if the
// page was full), the window of kWindow publishes shared by every page in
// flight; each is marked, oldest first, as soon as its PUBACKs are in.
// Otherwise every event committed during a page's round trip to the
// broker waits for it: with the broker on another host that is most of
// the relay's delay (docs/benchmarks.md, "Session 24"). If a PUBACK fails,
// no page from it on is marked: all of them are listed again from the
// start.
//
// Each publish names (`prev`) the last message of this relay's previous
// publish to the same device: a device that never got it knows it lost
// something (docs/protocol.md, section 6, "Gaps").
//
// One relay publishes among several hub replicas on one store: RelayLeader
// runs it only while this process holds the store's relay lease, and
// another replica's takes over when its holder dies. (Every replica ran
// one before: ~1.8 times the down messages in a two-replica rush, each
// device's `prev` chain split between two relays.)
//
// Thread safety: Start/Stop from one thread; Notify from any.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "cloud-hub/core/hub_service.h"
#include "common/metrics.h"
#include "sync/mqtt_client.h"

namespace pp {

// An outbox event as devices read it (docs/protocol.md, section 5), and
// who reads it. The relay publishes it; the `catchup` query answers with it.
struct EventWire {
  std::string device;      // device.outcome: the one device it is for
  std::set<int64_t> orgs;  // any other event: the organisations whose devices get it,
  std::string except;      // but this one (the device whose op made the post: its outcome carries it)
  int64_t provider = 0;    // its devices get provider_bytes (with the handover code)
  std::string bytes, provider_bytes, traceparent;
  const std::string& BytesFor(int64_t org) const { return org == provider ? provider_bytes : bytes; }
  // Whether `device` (of organisation `org`) gets it: the relay and the
  // catch-up answer decide with this one rule.
  bool Reaches(const std::string& device_id, int64_t org) const {
    return device.empty() ? orgs.count(org) > 0 && device_id != except : device_id == device;
  }
};
// nullopt for an event nobody receives (a payload that is not an object),
// or that `wanted` (given the recipients, before any bytes are made) turns
// down. `now_ms`: the hub's clock, carried as "ts" on every down message.
using WantedBy = std::function<bool(const EventWire& recipients)>;
std::optional<EventWire> WireOf(const OutboxEvent& event, int64_t now_ms, const WantedBy& wanted = nullptr);

class OutboxRelay {
 public:
  // How a page is marked sent, with each device's last message in it:
  // `done` runs once the marks are committed or have failed. By default
  // HubService::MarkOutboxSent. A test may fail it to stand for a crash
  // between publish and mark.
  using Mark = std::function<void(std::vector<int64_t> ids, HubService::LastSentByDevice last_sent,
                                  std::function<void(Status)> done)>;
  OutboxRelay(HubService& hub, sync::MqttClient& mqtt, Mark mark = nullptr);
  ~OutboxRelay();
  // Again after Stop() too: from the start of the unsent events.
  void Start();
  // Returns once the loop has ended and every mark it started has finished.
  void Stop();
  // Something was written: look now rather than at the next poll.
  void Notify();
  // outbox_relay_delay_seconds: from an event's commit to the broker's
  // PUBACK of its last publish, i.e. the relay's share of what devices wait.
  // outbox_relay_pages_total{overlapped}: pages published, and whether the
  // page before still awaited PUBACKs.
  void SetMetrics(metrics::Registry* registry);
  // The last id of the last publish to `device` the broker acknowledged:
  // named in the hub's answer to a ping, so that a device that has heard
  // nothing since can still see what it lost. For a device this run has
  // sent nothing yet, what the marks of earlier runs recorded (read once,
  // then kept): a restarted hub still names it. While this relay is not
  // running (another replica holds the relay lease), what the marks
  // recorded, read each time: the replica that publishes moves it on.
  std::optional<int64_t> LastSentTo(const std::string& device);

  static constexpr size_t kWindow = 100;  // publishes awaiting PUBACK
  static constexpr int kPage = 500;       // events a pass takes
  static constexpr int kRescanEvery = 20; // passes after the cursor between passes from the start

 private:
  struct InFlight;  // a page published, its PUBACKs not all in
  void Loop();
  // Lists the next page of unsent events (after those in flight) and
  // publishes it, sharing the window with the pages in flight. nullptr:
  // nothing to send.
  Result<std::unique_ptr<InFlight>> PublishPage();
  // Waits for the page's PUBACKs, or until something new is committed
  // (Notify) or Stop(): true once they are all in. Without `wait`, only
  // takes what has come.
  Result<bool> AwaitAcksOrNews(InFlight& page, bool wait);
  // Waits for the rest of the page's PUBACKs; then records its devices'
  // last messages and asks for its mark.
  Status Finish(InFlight& page);

  HubService& hub_;
  sync::MqttClient& mqtt_;
  Mark mark_;
  metrics::Histogram* delay_ = nullptr;  // set before Start()
  metrics::Counter* pages_alone_ = nullptr;       // set before Start()
  metrics::Counter* pages_overlapped_ = nullptr;  // set before Start()
  std::thread thread_;
  // The relay's thread only: the highest id a pass published, and how many
  // passes after it may go before one from the start (0: the next; set
  // after any failure, as what failed lies below the cursor).
  int64_t cursor_ = 0;
  int passes_to_start_ = 0;
  std::deque<std::unique_ptr<InFlight>> in_flight_;  // published, oldest first, not yet marked
  // mu_ and cv_ live apart from the relay: Paho tells cv_ of PUBACKs
  // (MqttClient::OnPublishDone) and may do so after the relay is gone.
  struct Signal {
    std::mutex mu;
    std::condition_variable cv;
  };
  std::shared_ptr<Signal> signal_ = std::make_shared<Signal>();
  std::mutex& mu_ = signal_->mu;
  std::condition_variable& cv_ = signal_->cv;
  bool stop_ = false, poke_ = false;  // guarded by mu_
  std::set<int64_t> unmarked_;        // published, mark not yet committed; guarded by mu_
  int marks_pending_ = 0;             // guarded by mu_
  bool mark_failed_ = false;          // since the last pass; guarded by mu_
  // Per device, the last id of the last publish the broker acknowledged (a
  // publish's `prev`), or what the store recorded before this run (0: none).
  // Written by the relay's thread and by LastSentTo's first read, read by
  // the ingest workers answering pings. One entry per device heard of:
  // under 100 bytes each. Emptied at each Start(): while stopped, another
  // replica's relay may have sent more.
  std::mutex last_mu_;
  std::unordered_map<std::string, int64_t> last_sent_;  // guarded by last_mu_
  bool publishing_ = false;                             // between Start and Stop; guarded by last_mu_
};

// Runs `relay` only while this process holds the store's relay lease
// (Store::TryLease): with several hub replicas, one publishes; if it dies,
// PostgreSQL releases its lease and another replica's relay starts within
// `retry`, from the oldest unsent event. With SQLite the lease is always
// held.
class RelayLeader {
 public:
  static constexpr int64_t kLeaseKey = 7201002;  // any stable number
  RelayLeader(Store& store, OutboxRelay& relay, std::chrono::milliseconds retry = std::chrono::seconds(1));
  ~RelayLeader();  // stops the relay if it runs
  void Start();
  bool leading() const { return leading_; }

 private:
  void Loop();
  Store& store_;
  OutboxRelay& relay_;
  const std::chrono::milliseconds retry_;
  std::atomic<bool> leading_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace pp
