// The relay through a real broker: events reach the devices concerned, and a
// failure between publish and mark (a crash, as far as the relay can tell)
// republishes — the device drops the repeat by its id.
#include "cloud-hub/mqtt/outbox_relay.h"

#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

TEST(OutboxRelay, RepublishesWhatWasNotMarkedAndDevicesDropRepeats) {
  test::TempDir dir;
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  auto store = std::move(*OpenStore("sqlite:" + dir.file("hub.db")));
  auto committer = std::move(*GroupCommitter::Start(*store, {}));
  HubService hub(*store, *committer, SystemClock::Instance());
  auto org = hub.CreateOrganization({OrgKind::kProvider, "warung", {51.5, -0.1}}, "");
  int64_t provider = json::parse(org->json)["id"].get<int64_t>();

  test::TestDevice kiosk(broker, "kiosk-r");
  ASSERT_TRUE(hub.RegisterDevice({kiosk.id(), "kiosk", provider, kiosk.public_key(), false, 0, {}}).ok());
  broker.AddUser(kiosk.id(), kiosk.password());
  ASSERT_TRUE(kiosk.Connect().ok());

  std::ifstream pw_in(broker.hub_password_file());
  std::string hub_pw;
  pw_in >> hub_pw;
  sync::MqttClient mqtt(sync::MqttClient::CleanSession(broker.uri(), "pp-hub-relay-test", "pp-hub", hub_pw, {}, 10000),
                        [](auto&, auto&, auto&) {});
  ASSERT_TRUE(mqtt.Connect(std::chrono::seconds(10)).ok());
  std::atomic<int> marks{0};
  OutboxRelay relay(hub, mqtt, [&](std::vector<int64_t> ids, std::function<void(Status)> done) {
    if (marks++ == 0) return done(Error::Unavailable("crash between publish and mark"));
    hub.MarkOutboxSent(std::move(ids), std::move(done));
  });

  SurplusDraft d;
  d.provider_id = provider;
  d.category = "bakery";
  d.description = "roti";
  d.best_before = SystemClock::Instance().Now() + std::chrono::hours(2);
  auto posted = hub.PostSurplus(d, "p1");
  ASSERT_TRUE(posted.ok());
  int64_t id = json::parse(posted->json)["id"].get<int64_t>();
  metrics::Registry registry;
  relay.SetMetrics(&registry);
  relay.Start();

  json event = kiosk.WaitEvent("surplus.posted", [&](const json& e) { return e["data"]["id"] == id; });
  ASSERT_FALSE(event.is_null()) << "the kiosk got no event";
  EXPECT_TRUE(test::Eventually([&] { return kiosk.duplicates_dropped() >= 1; }, std::chrono::seconds(10)))
      << "the unmarked page was not published again";
  EXPECT_TRUE(test::Eventually([&] { return hub.ListUnsentOutbox(10)->empty(); }, std::chrono::seconds(10)))
      << "the second attempt did not mark the page sent";
  relay.Stop();
  EXPECT_GE(marks.load(), 2);
  // Every publish acknowledged counts in the relay's delay, the failed page's too.
  auto delay = registry.GetHistogram("outbox_relay_delay_seconds", "", metrics::LatencyBuckets()).Read();
  EXPECT_GE(delay.count, 2u);
  EXPECT_GT(delay.sum, 0.0);
}

}  // namespace
}  // namespace pp
