// What operators watch: /metrics (checked by promtool, Debian's prometheus
// package) and /readyz, on a live pp-hub with a real broker.
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <regex>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;
using std::chrono::seconds;

// The value of one sample line ("name{labels} value"), or -1 if absent.
double Sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  return -1;
}

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_GT(broker_.port(), 0);
    hub_ = test::HubWithBroker(dir_.file("hub.db"), broker_);
    ASSERT_GT(hub_->port(), 0);
  }
  test::HttpAnswer Call(const std::string& method, const std::string& path, const json& body = nullptr) {
    return test::HttpCall(hub_->port(), method, path, body);
  }
  std::string Scrape() {
    httplib::Client cli("127.0.0.1", hub_->port());
    auto r = cli.Get("/metrics");
    EXPECT_TRUE(r && r->status == 200);
    EXPECT_EQ(r->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    return r ? r->body : "";
  }
  // promtool's verdict on a scrape: "" when clean.
  std::string Promtool(const std::string& scrape) {
    std::ofstream(dir_.file("scrape.txt")) << scrape;
    test::Process p({"/bin/sh", "-c", "promtool check metrics < " + dir_.file("scrape.txt") + " 2>&1; echo rc=$?"});
    std::string out, line;
    while (!(line = p.WaitForLine("", seconds(30))).empty()) {
      out += line + "\n";
      if (line.rfind("rc=", 0) == 0) break;
    }
    p.Wait();
    return out == "rc=0\n" ? "" : out;
  }

  test::TempDir dir_;
  test::Broker broker_;
  std::unique_ptr<test::Hub> hub_;
};

TEST_F(ObservabilityTest, MetricsFollowAClaimAndADeliveryAndPassPromtool) {
  std::string before = Scrape();
  EXPECT_EQ(Promtool(before), "");
  // Present from the start, before any traffic.
  for (const char* family : {"surplus_claim_latency_seconds", "food_waste_prevented_tons_total",
                             "matching_engine_saturation_ratio", "mqtt_ingest_messages_total",
                             "outbox_lag_seconds", "outbox_relay_delay_seconds", "routing_circuit_open",
                             "dlq_posts", "pickups_overdue", "process_cpu_seconds_total"})
    EXPECT_NE(before.find("# TYPE " + std::string(family) + " "), std::string::npos) << family;
  EXPECT_EQ(Sample(before, "food_waste_prevented_tons_total"), 0);

  int64_t provider = Call("POST", "/api/v1/organizations",
                          {{"kind", "provider"}, {"name", "p"}, {"lat", 51.5}, {"lon", -0.1}}).body["id"];
  int64_t ngo = Call("POST", "/api/v1/organizations",
                     {{"kind", "ngo"}, {"name", "n"}, {"lat", 51.6}, {"lon", -0.1}}).body["id"];
  // The provider's kiosk hears the handover code.
  test::TestDevice kiosk(broker_, "kiosk-1");
  ASSERT_EQ(Call("POST", "/api/v1/devices", {{"id", "kiosk-1"}, {"role", "kiosk"}, {"org_id", provider},
                                            {"public_key", kiosk.public_key()}}).status, 201);
  broker_.AddUser("kiosk-1", kiosk.password());
  ASSERT_TRUE(kiosk.Connect().ok());

  httplib::Client cli("127.0.0.1", hub_->port());
  auto post = cli.Post("/api/v1/surplus", {{"Idempotency-Key", "p1"}},
                       json{{"provider_id", provider}, {"category", "bakery"}, {"description", "roti"},
                            {"quantity_kg", 250}, {"best_before", test::HoursFromNow(3)}}.dump(),
                       "application/json");
  ASSERT_TRUE(post && post->status == 201);
  int64_t id = json::parse(post->body)["id"];
  // The only NGO is offered the post at once; it accepts.
  ASSERT_TRUE(test::Eventually([&] {
    return Call("GET", "/api/v1/surplus/" + std::to_string(id)).body["status"] == "offered";
  }, seconds(10)));
  auto claim = cli.Post(("/api/v1/surplus/" + std::to_string(id) + "/accept").c_str(), {{"Idempotency-Key", "c1"}},
                        json{{"ngo_id", ngo}}.dump(), "application/json");
  ASSERT_TRUE(claim && claim->status == 200) << (claim ? claim->body : "");
  json claimed = kiosk.WaitEvent("surplus.claimed", [&](const json& e) { return e["data"]["id"] == id; });
  ASSERT_TRUE(claimed.is_object());
  std::string code = claimed["data"]["handover_code"];
  std::string base = "/api/v1/surplus/" + std::to_string(id);
  ASSERT_EQ(cli.Post((base + "/pickup").c_str(), {{"Idempotency-Key", "k1"}},
                     json{{"ngo_id", ngo}, {"handover_code", code}, {"actual_kg", 250}}.dump(),
                     "application/json")->status, 200);
  ASSERT_EQ(cli.Post((base + "/deliver").c_str(), {{"Idempotency-Key", "d1"}},
                     json{{"ngo_id", ngo}}.dump(), "application/json")->status, 200);

  std::string after = Scrape();
  EXPECT_EQ(Promtool(after), "");
  for (const char* family : {"http_requests_total", "http_request_duration_seconds"})
    EXPECT_NE(after.find("# TYPE " + std::string(family) + " "), std::string::npos) << family;
  EXPECT_EQ(Sample(after, "surplus_claim_latency_seconds_count{door=\"http\"}"), 1);
  EXPECT_DOUBLE_EQ(Sample(after, "food_waste_prevented_tons_total"), 0.25);
  EXPECT_EQ(Sample(after, "http_requests_total{route=\"/api/v1/surplus/:id/accept\",method=\"POST\",code=\"200\"}"), 1);
  EXPECT_EQ(Sample(after, "surplus_changes_total{status=\"delivered\"}"), 1);
  EXPECT_GE(Sample(after, "matching_engine_saturation_ratio"), 0);
}

TEST_F(ObservabilityTest, ReadyzFollowsTheBroker) {
  EXPECT_EQ(Call("GET", "/healthz").status, 200);
  EXPECT_EQ(Call("GET", "/readyz").status, 200);
  broker_.Stop();
  ASSERT_TRUE(test::Eventually([&] { return Call("GET", "/readyz").status == 503; }, seconds(20)));
  auto down = Call("GET", "/readyz");
  EXPECT_NE(down.body["detail"].get<std::string>().find("broker"), std::string::npos);
  EXPECT_EQ(Call("GET", "/healthz").status, 200);  // alive, just not ready
  broker_.Start();
  EXPECT_TRUE(test::Eventually([&] { return Call("GET", "/readyz").status == 200; }, seconds(30)));
}

// A post nobody can take runs out of DLQ retries: the hub POSTs the
// operator alert to the webhook, and /metrics says what became of it — here
// refused (400), which OperatorAlertsFailing pages on, then sent.
TEST(AlertTest, AnExhaustedPostsAlertReachesTheWebhookAndIsCountedOnMetrics) {
  test::TempDir dir;
  test::FakeHttpServer pager{[](const std::string&, const std::string&) { return std::string("{}"); }};
  pager.set_mode(test::FakeHttpServer::Mode::kRefuse);
  test::Hub hub("sqlite:" + dir.file("hub.db"),
                {"--dlq-retry-base", "100ms", "--alert-webhook", pager.url() + "/v2/enqueue",
                 "--alert-routing-key", "pp-test"});
  ASSERT_GT(hub.port(), 0);
  auto call = [&](const std::string& method, const std::string& path, const json& body = nullptr) {
    return test::HttpCall(hub.port(), method, path, body);
  };
  auto scrape = [&] {
    httplib::Client cli("127.0.0.1", hub.port());
    auto r = cli.Get("/metrics");
    return r && r->status == 200 ? r->body : std::string();
  };
  EXPECT_EQ(Sample(scrape(), "operator_alerts_total{result=\"failed\"}"), 0);  // there from the start
  int64_t provider = call("POST", "/api/v1/organizations",
                          {{"kind", "provider"}, {"name", "p"}, {"lat", 51.5}, {"lon", -0.1}}).body["id"];
  // No NGO anywhere: each post is dead-lettered, re-matched after 0.1, 0.2
  // and 0.4 s (at the hub's next ticks), then alerted.
  auto post = [&](const std::string& key) {
    httplib::Client cli("127.0.0.1", hub.port());
    auto r = cli.Post("/api/v1/surplus", {{"Idempotency-Key", key}},
                      json{{"provider_id", provider}, {"category", "bakery"}, {"description", "roti"},
                           {"quantity_kg", 5}, {"best_before", test::HoursFromNow(3)}}.dump(),
                      "application/json");
    EXPECT_TRUE(r && r->status == 201);
    return r ? json::parse(r->body)["id"].get<int64_t>() : 0;
  };
  const int64_t first = post("a1");
  ASSERT_TRUE(test::Eventually([&] { return Sample(scrape(), "operator_alerts_total{result=\"failed\"}") == 1; },
                               seconds(20)));
  ASSERT_EQ(pager.requests(), 1);  // a refusal is not sent again
  json alert = json::parse(pager.bodies()[0]);
  EXPECT_EQ(alert["routing_key"], "pp-test");
  EXPECT_EQ(alert["dedup_key"], "pp-surplus-" + std::to_string(first));
  EXPECT_EQ(call("GET", "/api/v1/surplus/" + std::to_string(first)).body["status"], "dead_lettered");

  pager.set_mode(test::FakeHttpServer::Mode::kOk);
  const int64_t second = post("a2");
  ASSERT_TRUE(test::Eventually([&] { return Sample(scrape(), "operator_alerts_total{result=\"sent\"}") == 1; },
                               seconds(20)));
  EXPECT_EQ(json::parse(pager.bodies().back())["dedup_key"], "pp-surplus-" + std::to_string(second));
  EXPECT_EQ(Sample(scrape(), "operator_alerts_total{result=\"dropped\"}"), 0);
}

// The dashboard, with tokens on, in Debian's chromium (playwright-core).
TEST(DashboardTest, SignInSeeTheCityAndAssignFromTheDlq) {
  test::TempDir dir;
  test::Process keygen({test::BinPath("pp-token"), "keygen", "--out", dir.path().string()});
  ASSERT_EQ(keygen.Wait(), 0);
  test::Hub hub("sqlite:" + dir.file("hub.db"), {"--jwt-public-key", dir.file("jwt.pub")});
  ASSERT_GT(hub.port(), 0);
  test::Process mint({test::BinPath("pp-token"), "mint", "--key", dir.file("jwt.key"), "--role", "admin"});
  std::string token = mint.WaitForLine("");
  mint.Wait();
  ASSERT_GT(token.size(), 100u);
  httplib::Client cli("127.0.0.1", hub.port());
  cli.set_bearer_token_auth(token.c_str());
  auto org = [&](const std::string& kind, double lat, double lon) {
    auto r = cli.Post("/api/v1/organizations", json{{"kind", kind}, {"name", kind}, {"lat", lat}, {"lon", lon}}.dump(),
                      "application/json");
    EXPECT_TRUE(r && r->status == 201);
    return json::parse(r->body)["id"].get<int64_t>();
  };
  int64_t provider = org("provider", 51.5138, -0.0984);
  int64_t ngo = org("ngo", 50.8225, -0.1372);  // Brighton: too far for an offer, so the post is dead-lettered
  // Its pickup window closed an hour ago (nobody could come in time either):
  // once assigned, the claim is overdue.
  auto post = cli.Post("/api/v1/surplus", {{"Idempotency-Key", "p1"}},
                       json{{"provider_id", provider}, {"category", "bakery"}, {"description", "roti"},
                            {"quantity_kg", 4}, {"best_before", test::HoursFromNow(3)},
                            {"pickup_start", test::HoursFromNow(-2)}, {"pickup_end", test::HoursFromNow(-1)}}.dump(),
                       "application/json");
  ASSERT_TRUE(post && post->status == 201);
  int64_t id = json::parse(post->body)["id"];
  ASSERT_TRUE(test::Eventually([&] {
    auto r = cli.Get(("/api/v1/surplus/" + std::to_string(id)).c_str());
    return r && json::parse(r->body)["status"] == "dead_lettered";
  }, seconds(10)));
  ASSERT_TRUE(std::filesystem::exists(test::SourceDir() + "/tests/browser/node_modules/playwright-core"))
      << "run: npm ci --prefix tests/browser (packaging/test.sh does)";
  test::Process node({"/usr/bin/env", "node", test::SourceDir() + "/tests/browser/dashboard.mjs", hub.url(), token,
                      std::to_string(ngo), dir.path().string()});
  std::string line = node.WaitForLine("", seconds(120));
  EXPECT_EQ(node.Wait(), 0) << line;
  EXPECT_EQ(line.rfind("ok:", 0), 0u) << line;
  auto after = cli.Get(("/api/v1/surplus/" + std::to_string(id)).c_str());
  EXPECT_EQ(json::parse(after->body)["status"], "claimed");
  EXPECT_EQ(json::parse(after->body)["claimed_by"], ngo);
  // The NGO's vehicle, at its depot, no tablet: never silent.
  auto summary = cli.Get("/api/v1/summary");
  ASSERT_TRUE(summary && summary->status == 200);
  const json vehicles = json::parse(summary->body)["vehicles"];
  ASSERT_EQ(vehicles.size(), 1u) << vehicles.dump();
  EXPECT_EQ(vehicles[0]["silent"], false) << vehicles.dump();
  EXPECT_EQ(json::parse(summary->body)["pickups_overdue"], 1);
  auto metrics = cli.Get("/metrics");
  ASSERT_TRUE(metrics && metrics->status == 200);
  EXPECT_NE(metrics->body.find("\npickups_overdue 1\n"), std::string::npos) << "the gauge agrees";
}

}  // namespace
}  // namespace pp
