// The HTTP door, in process on a free loopback port over a SQLite store:
// the full flow, RFC 9457 problems, and bad input of every kind followed by
// proof that the hub still serves.
#include "cloud-hub/http/http_api.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <httplib.h>

#include <algorithm>

#include <nlohmann/json.hpp>
#include <thread>

#include "common/trace.h"
#include "sync/protocol.h"
#include "tests/support/mangle.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class HttpApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = std::move(*OpenStore("sqlite:" + dir_.file("hub.db")));
    committer_ = std::move(*GroupCommitter::Start(*store_, {}));
    hub_ = std::make_unique<HubService>(*store_, *committer_, SystemClock::Instance());
    api_ = std::make_unique<HttpApi>(*hub_, HttpOptions{});
    auto port = api_->Bind("127.0.0.1", 0);
    ASSERT_TRUE(port.ok());
    port_ = *port;
    server_ = std::thread([this] { api_->Serve(); });
    client_ = std::make_unique<httplib::Client>("127.0.0.1", port_);
    client_->set_read_timeout(10, 0);
    ASSERT_TRUE(test::Eventually([&] { return bool(client_->Get("/healthz")); }));
    provider_ = CreateOrg("provider");
    ngo_ = CreateOrg("ngo");
  }
  void TearDown() override {
    api_->Stop();
    server_.join();
  }

  int64_t CreateOrg(const std::string& kind) {
    auto r = client_->Post("/api/v1/organizations",
                           json{{"kind", kind}, {"name", "x"}, {"lat", 51.5}, {"lon", -0.1}}.dump(),
                           "application/json");
    EXPECT_EQ(r->status, 201);
    return json::parse(r->body)["id"].get<int64_t>();
  }

  json ValidPost() {
    return {{"provider_id", provider_},
            {"category", "bakery"},
            {"description", "roti tawar"},
            {"quantity_kg", 3},
            {"best_before", best_before_}};
  }

  httplib::Result PostJson(const std::string& path, const json& body, const std::string& key) {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Idempotency-Key", key);
    return client_->Post(path.c_str(), h, body.dump(), "application/json");
  }

  test::TempDir dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<GroupCommitter> committer_;
  std::unique_ptr<HubService> hub_;
  std::unique_ptr<HttpApi> api_;
  std::thread server_;
  std::unique_ptr<httplib::Client> client_;
  int port_ = 0;
  int64_t provider_ = 0, ngo_ = 0;
  const std::string best_before_ = test::HoursFromNow(3);
};

// A response goes out in several writes; with Nagle on, each kept-alive
// request after the first waited ~40 ms for the client's delayed ACK. The
// server's side of a connection (found among this process's sockets: local
// port = the API's) must have TCP_NODELAY.
TEST_F(HttpApiTest, ConnectionsHaveNagleOff) {
  httplib::Client cli("127.0.0.1", port_);
  cli.set_keep_alive(true);
  ASSERT_EQ(cli.Get("/healthz")->status, 200);
  // The accepted side: this connection, and any the fixture's requests left
  // open that the server has not closed yet (seen in CI: two).
  std::vector<int> accepted = test::NoDelayOfSockets(port_, 0);
  EXPECT_FALSE(accepted.empty());
  EXPECT_EQ(std::count(accepted.begin(), accepted.end(), 0), 0) << "an accepted connection with Nagle on";
}

TEST_F(HttpApiTest, PostClaimConflictAndReplay) {
  auto post = PostJson("/api/v1/surplus", ValidPost(), "p1");
  ASSERT_EQ(post->status, 201) << post->body;
  json created = json::parse(post->body);
  int64_t id = created["id"].get<int64_t>();
  EXPECT_EQ(created["status"], "available");
  EXPECT_EQ(created["version"], 1);
  EXPECT_EQ(post->get_header_value("Location"), "/api/v1/surplus/" + std::to_string(id));

  auto replay = PostJson("/api/v1/surplus", ValidPost(), "p1");
  ASSERT_EQ(replay->status, 200);
  EXPECT_EQ(replay->body, post->body);
  EXPECT_EQ(replay->get_header_value("Idempotent-Replayed"), "true");

  std::string claim_path = "/api/v1/surplus/" + std::to_string(id) + "/claim";
  auto claim = PostJson(claim_path, {{"ngo_id", ngo_}, {"version", 1}}, "c1");
  ASSERT_EQ(claim->status, 200) << claim->body;
  EXPECT_EQ(json::parse(claim->body)["status"], "claimed");

  int64_t ngo2 = CreateOrg("ngo");
  auto lost = PostJson(claim_path, {{"ngo_id", ngo2}, {"version", 1}}, "c2");
  ASSERT_EQ(lost->status, 409);
  EXPECT_EQ(lost->get_header_value("Content-Type"), "application/problem+json");
  json problem = json::parse(lost->body);
  EXPECT_EQ(problem["status"], 409);
  EXPECT_EQ(problem["code"], "conflict");
  EXPECT_EQ(problem["current"]["claimed_by"], ngo_);
  EXPECT_EQ(problem["current"]["version"], 2);

  auto get = client_->Get(("/api/v1/surplus/" + std::to_string(id)).c_str());
  ASSERT_EQ(get->status, 200);
  json x = json::parse(get->body);
  EXPECT_EQ(x["status"], "claimed");
  ASSERT_EQ(x["history"].size(), 2u);
  EXPECT_EQ(x["history"][1]["event"], "claim");
}

struct BadCase {
  std::string name;
  std::string raw_request;  // sent as is
  int status;
  std::string mentions;  // the body must say what is wrong
};

TEST_F(HttpApiTest, BadInputGetsAClearProblemAndTheHubKeepsServing) {
  auto req = [](const std::string& method, const std::string& path, const std::string& body,
                const std::string& extra_headers = "Content-Type: application/json\r\nIdempotency-Key: k\r\n") {
    return method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra_headers +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  std::string valid = ValidPost().dump();
  json wrong_types = ValidPost();
  wrong_types["quantity_kg"] = "three";
  wrong_types["provider_id"] = true;
  json out_of_range = ValidPost();
  out_of_range["lat"] = 91.0;
  out_of_range["lon"] = -181.0;
  out_of_range["quantity_kg"] = -2;
  out_of_range["best_before"] = "2001-01-01T00:00:00Z";
  json bad_date = ValidPost();
  bad_date["best_before"] = "next tuesday";

  std::string big(10 * 1024 * 1024, 'a');
  std::string chunked =
      "POST /api/v1/surplus HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Idempotency-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string chunk(64 * 1024, ' ');
  for (int i = 0; i < 32; ++i) chunked += "10000\r\n" + chunk + "\r\n";
  chunked += "0\r\n\r\n";
  std::string many_headers;
  for (int i = 0; i < 100; ++i) many_headers += "X-H" + std::to_string(i) + ": v\r\n";

  std::vector<BadCase> cases{
      {"malformed JSON", req("POST", "/api/v1/surplus", "{\"provider_id\":"), 400, "not valid JSON"},
      {"not an object", req("POST", "/api/v1/surplus", "[1,2]"), 400, "JSON object"},
      {"a number out of range", req("POST", "/api/v1/surplus", "{\"quantity_kg\":1e999}"), 400, "out of range"},
      {"nested 20,000 deep",
       req("POST", "/api/v1/surplus", "{\"notes\":" + std::string(20000, '[') + std::string(20000, ']') + "}"), 400,
       "nests deeper than 32"},
      {"wrong types", req("POST", "/api/v1/surplus", wrong_types.dump()), 422, "quantity_kg"},
      {"out of range", req("POST", "/api/v1/surplus", out_of_range.dump()), 422, "\"lat\""},
      {"impossible date", req("POST", "/api/v1/surplus", bad_date.dump()), 422, "RFC 3339"},
      {"10 MB body", req("POST", "/api/v1/surplus", big), 413, "exceeds"},
      {"oversized chunked body", chunked, 413, "exceeds"},
      {"no idempotency key",
       req("POST", "/api/v1/surplus", valid, "Content-Type: application/json\r\n"), 400,
       "Idempotency-Key"},
      {"wrong content type",
       req("POST", "/api/v1/surplus", valid, "Content-Type: text/plain\r\nIdempotency-Key: k\r\n"),
       415, "application/json"},
      {"forged REMOTE_ADDR",
       req("POST", "/api/v1/surplus", valid,
           "Content-Type: application/json\r\nIdempotency-Key: k\r\nREMOTE_ADDR: 10.0.0.1\r\n"),
       400, "REMOTE_ADDR"},
      {"odd transfer coding",
       "POST /api/v1/surplus HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
       "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
       501, "chunked"},
      {"too many headers", req("GET", "/healthz", "", many_headers), 431, "headers"},
      {"unknown route", req("GET", "/api/v1/nothing", ""), 404, "no route"},
      {"bad id", req("GET", "/api/v1/surplus/abc", ""), 404, "abc"},
      {"missing post", req("GET", "/api/v1/surplus/999999", ""), 404, "999999"},
      {"claim bad body",
       req("POST", "/api/v1/surplus/1/claim", R"({"ngo_id":"me","version":-1})"), 422, "ngo_id"},
      {"bad organisation",
       req("POST", "/api/v1/organizations", R"({"kind":"shop","name":"x","lat":0,"lon":0})"), 422,
       "kind"},
  };
  for (const auto& c : cases) {
    std::string response = test::RawHttp(port_, c.raw_request);
    EXPECT_EQ(test::RawStatus(response), c.status) << c.name << ": " << response.substr(0, 300);
    EXPECT_NE(response.find("application/problem+json"), std::string::npos) << c.name;
    EXPECT_NE(response.find(c.mentions), std::string::npos) << c.name << ": " << response.substr(0, 600);
  }
  // Still serving, and nothing was stored by the bad requests.
  auto ok = PostJson("/api/v1/surplus", ValidPost(), "after");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 201);
  EXPECT_EQ(json::parse(ok->body)["id"], 1);
}

TEST_F(HttpApiTest, SmallChunkedBodiesAreAccepted) {
  std::string body = ValidPost().dump();
  char size[16];
  std::snprintf(size, sizeof size, "%zx", body.size());
  std::string r = test::RawHttp(
      port_, "POST /api/v1/surplus HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             "Content-Type: application/json; charset=utf-8\r\nIdempotency-Key: ch\r\n"
             "Transfer-Encoding: chunked\r\n\r\n" +
                 std::string(size) + "\r\n" + body + "\r\n0\r\n\r\n");
  EXPECT_EQ(test::RawStatus(r), 201) << r;
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {

TEST_F(HttpApiTest, CascadeRoutes) {
  auto post = PostJson("/api/v1/surplus", ValidPost(), "cr1");
  int64_t id = json::parse(post->body)["id"].get<int64_t>();
  std::string base = "/api/v1/surplus/" + std::to_string(id);
  // No offer is open (no matching engine in this test): accepting is a conflict.
  auto accept = PostJson(base + "/accept", {{"ngo_id", ngo_}}, "a1");
  ASSERT_EQ(accept->status, 409) << accept->body;
  EXPECT_EQ(json::parse(accept->body)["current"]["status"], "available");
  auto no_key = PostJson(base + "/decline", {{"ngo_id", ngo_}}, "");
  EXPECT_EQ(no_key->status, 400);
  auto bad = PostJson(base + "/decline", {{"ngo", ngo_}}, "d1");
  EXPECT_EQ(bad->status, 422);
  auto assign = PostJson(base + "/assign", {{"ngo_id", ngo_}}, "as1");
  ASSERT_EQ(assign->status, 200) << assign->body;
  EXPECT_EQ(json::parse(assign->body)["claimed_by"], ngo_);

  auto dlq = client_->Get("/api/v1/dlq");
  ASSERT_EQ(dlq->status, 200);
  EXPECT_EQ(json::parse(dlq->body)["count"], 0);

  std::string vpath = "/api/v1/vehicles/" + std::to_string(ngo_);
  auto moved = client_->Put(vpath.c_str(), R"({"lat":51.52,"lon":-0.09,"free_kg":80})", "application/json");
  ASSERT_EQ(moved->status, 200) << moved->body;
  EXPECT_EQ(json::parse(moved->body)["at_depot"], false);
  auto wrong = client_->Put(vpath.c_str(), R"({"free_kg":-1,"categories":["caviar"]})", "application/json");
  ASSERT_EQ(wrong->status, 422);
  EXPECT_EQ(json::parse(wrong->body)["errors"].size(), 2u);
  auto nobody = client_->Put("/api/v1/vehicles/424242", "{}", "application/json");
  EXPECT_EQ(nobody->status, 404);

  auto near_bad = client_->Get("/api/v1/surplus/nearby?lat=91&km=abc");
  ASSERT_EQ(near_bad->status, 422);
  EXPECT_EQ(json::parse(near_bad->body)["errors"].size(), 3u);  // lat, lon, km
  auto near = client_->Get("/api/v1/surplus/nearby?lat=51.5&lon=-0.1");
  EXPECT_EQ(near->status, 503);  // no matching engine in this test
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {

// Metrics labels: ids collapse, unknown paths do not mint new label sets.
TEST(HttpApiRouteLabel, IdsCollapseAndStrangersAreOther) {
  EXPECT_EQ(HttpApi::RouteLabel("/api/v1/surplus/123/claim"), "/api/v1/surplus/:id/claim");
  EXPECT_EQ(HttpApi::RouteLabel("/api/v1/surplus/9"), "/api/v1/surplus/:id");
  EXPECT_EQ(HttpApi::RouteLabel("/api/v1/surplus/nearby"), "/api/v1/surplus/nearby");
  EXPECT_EQ(HttpApi::RouteLabel("/api/v1/devices/kiosk-7/revoke"), "/api/v1/devices/:id/revoke");
  EXPECT_EQ(HttpApi::RouteLabel("/metrics"), "/metrics");
  EXPECT_EQ(HttpApi::RouteLabel("/wp-admin/x.php"), "other");
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {

TEST_F(HttpApiTest, TraceparentIsEchoedOrStarted) {
  const std::string tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto r = client_->Get("/healthz", {{"traceparent", tp}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->get_header_value("traceparent"), tp);
  auto fresh = client_->Get("/healthz", {{"traceparent", "not-a-trace"}});
  ASSERT_TRUE(fresh);
  EXPECT_TRUE(ValidTraceparent(fresh->get_header_value("traceparent")));
  EXPECT_NE(fresh->get_header_value("traceparent"), tp);
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {

// The operator's API: filtered keyset pages in JSON and CSV, cancel, impact.
TEST_F(HttpApiTest, OperatorListsFiltersPagesAndExports) {
  std::vector<int64_t> ids;
  for (int i = 0; i < 5; ++i) {
    json p = ValidPost();
    p["description"] = "roti \"tawar\", batch " + std::to_string(i);  // CSV must quote this
    auto r = PostJson("/api/v1/surplus", p, "op-" + std::to_string(i));
    ASSERT_EQ(r->status, 201);
    ids.push_back(json::parse(r->body)["id"].get<int64_t>());
  }
  ASSERT_EQ(PostJson("/api/v1/surplus/" + std::to_string(ids[1]) + "/claim", {{"ngo_id", ngo_}, {"version", 1}}, "c1")->status, 200);

  auto page1 = json::parse(client_->Get("/api/v1/surplus?limit=2")->body);
  ASSERT_EQ(page1["count"], 2);
  EXPECT_EQ(page1["items"][0]["id"], ids[0]);
  EXPECT_EQ(page1["next_after"], ids[1]);
  auto page3 = json::parse(client_->Get("/api/v1/surplus?limit=2&after=" + std::to_string(ids[3]))->body);
  EXPECT_EQ(page3["count"], 1);
  EXPECT_TRUE(page3["next_after"].is_null());

  auto claimed = json::parse(client_->Get("/api/v1/surplus?status=claimed&ngo_id=" + std::to_string(ngo_))->body);
  ASSERT_EQ(claimed["count"], 1);
  EXPECT_EQ(claimed["items"][0]["id"], ids[1]);
  EXPECT_EQ(json::parse(client_->Get("/api/v1/surplus?bbox=50,-1,50.5,0")->body)["count"], 0);
  EXPECT_EQ(json::parse(client_->Get("/api/v1/surplus?bbox=51,-1,52,0&provider_id=" + std::to_string(provider_))->body)["count"], 5);

  auto csv = client_->Get("/api/v1/surplus?format=csv&status=claimed");
  ASSERT_EQ(csv->status, 200);
  EXPECT_EQ(csv->get_header_value("Content-Type"), "text/csv; charset=utf-8");
  EXPECT_NE(csv->body.find("\"roti \"\"tawar\"\", batch 1\""), std::string::npos) << csv->body;
  EXPECT_EQ(std::count(csv->body.begin(), csv->body.end(), '\n'), 2);  // header + one row

  auto bad = client_->Get("/api/v1/surplus?status=eaten&limit=0&bbox=1,2&from=yesterday");
  ASSERT_EQ(bad->status, 422);
  std::set<std::string> fields;
  json problem = json::parse(bad->body);
  for (const auto& e : problem["errors"]) fields.insert(e["field"].get<std::string>());
  EXPECT_EQ(fields, (std::set<std::string>{"status", "limit", "bbox", "from"})) << bad->body;
  EXPECT_EQ(client_->Get("/api/v1/organizations?kind=ngo")->status, 200);
  EXPECT_EQ(json::parse(client_->Get("/api/v1/organizations?kind=ngo")->body)["count"], 1);
  EXPECT_EQ(client_->Get("/api/v1/devices")->status, 422);  // org_id is required
}

// A device's key must be one a key pair can have: 32 bytes that decode but
// are no point of Ed25519's prime-order subgroup could never verify an op,
// so the device would be registered only to have its every message refused.
TEST_F(HttpApiTest, ADeviceIsRegisteredOnlyWithARealEd25519PublicKey) {
  auto reg = [&](const std::string& id, const std::string& key) {
    return PostJson("/api/v1/devices",
                    {{"id", id}, {"role", "kiosk"}, {"org_id", provider_}, {"public_key", key}}, "");
  };
  std::array<unsigned char, 32> identity{};  // the neutral point: order 1
  identity[0] = 1;
  std::array<unsigned char, 32> off_curve{};  // y = 2: no x satisfies the curve's equation
  off_curve[0] = 2;
  for (const auto& bad : {identity, off_curve}) {
    ASSERT_TRUE(sync::PublicKeyFromBase64(sync::ToBase64(bad)).ok());  // the right length: not what fails
    auto r = reg("kiosk-bad", sync::ToBase64(bad));
    ASSERT_EQ(r->status, 422) << r->body;
    json problem = json::parse(r->body);
    ASSERT_EQ(problem["errors"].size(), 1u) << r->body;
    EXPECT_EQ(problem["errors"][0]["field"], "public_key");
    EXPECT_NE(problem["errors"][0]["reason"].get<std::string>().find("not an Ed25519 public key"),
              std::string::npos)
        << r->body;
  }
  EXPECT_EQ(reg("kiosk-bad", "c2hvcnQ=")->status, 422);  // "short": not 32 bytes
  EXPECT_EQ(client_->Get("/api/v1/devices/kiosk-bad")->status, 404);  // nothing was registered
  auto good = reg("kiosk-good", sync::ToBase64(sync::GenerateKeyPair().public_key));
  EXPECT_EQ(good->status, 201) << good->body;
}

// An operator's admin renames a kitchen and moves it: its next post starts
// from the new place, the posts it made before keep theirs; its kind cannot
// change, and a bad edit changes nothing.
TEST_F(HttpApiTest, AnOrganizationIsRenamedAndMovedAndItsNextPostStartsThere) {
  auto patch = [&](const std::string& path, const json& body) {
    return client_->Patch(path.c_str(), body.dump(), "application/json");
  };
  const std::string org = "/api/v1/organizations/" + std::to_string(provider_);
  auto before = json::parse(PostJson("/api/v1/surplus", ValidPost(), "mv1")->body);
  EXPECT_EQ(before["lat"], 51.5);

  auto moved = patch(org, {{"name", "Warung Bu Sri"}, {"lat", 51.52}, {"lon", -0.08}});
  ASSERT_EQ(moved->status, 200) << moved->body;
  EXPECT_EQ(json::parse(moved->body)["name"], "Warung Bu Sri");
  auto now = json::parse(client_->Get(org.c_str())->body);
  EXPECT_EQ(now["name"], "Warung Bu Sri");
  EXPECT_EQ(now["lat"], 51.52);
  EXPECT_EQ(now["lon"], -0.08);
  EXPECT_EQ(now["kind"], "provider");

  auto after = json::parse(PostJson("/api/v1/surplus", ValidPost(), "mv2")->body);
  EXPECT_EQ(after["lat"], 51.52);
  EXPECT_EQ(after["lon"], -0.08);
  auto old = json::parse(client_->Get(("/api/v1/surplus/" + std::to_string(before["id"].get<int64_t>())).c_str())->body);
  EXPECT_EQ(old["lat"], 51.5);  // a post already made stays where the food is

  EXPECT_EQ(json::parse(patch(org, {{"name", "Bu Sri"}})->body)["lat"], 51.52);  // a name alone keeps the place

  auto fields = [&](const json& body) {
    auto r = patch(org, body);
    EXPECT_EQ(r->status, 422) << r->body;
    std::set<std::string> f;
    const json problem = json::parse(r->body);
    for (const auto& e : problem["errors"]) f.insert(e["field"].get<std::string>());
    return f;
  };
  EXPECT_EQ(fields({{"kind", "ngo"}}), (std::set<std::string>{"kind"}));
  EXPECT_EQ(fields({{"lat", 51.6}}), (std::set<std::string>{"lon"}));
  EXPECT_EQ(fields({{"lat", 91}, {"lon", 0}, {"colour", "red"}}), (std::set<std::string>{"lat", "colour"}));
  EXPECT_EQ(fields({{"name", ""}}), (std::set<std::string>{"name"}));
  EXPECT_EQ(fields(json::object()), (std::set<std::string>{"body"}));
  EXPECT_EQ(patch("/api/v1/organizations/999999", {{"name", "x"}})->status, 404);
  auto kept = json::parse(client_->Get(org.c_str())->body);
  EXPECT_EQ(kept["name"], "Bu Sri");
  EXPECT_EQ(kept["lat"], 51.52);
}

TEST_F(HttpApiTest, CancelAndImpact) {
  auto a = json::parse(PostJson("/api/v1/surplus", ValidPost(), "a")->body)["id"].get<int64_t>();
  auto b = json::parse(PostJson("/api/v1/surplus", ValidPost(), "b")->body)["id"].get<int64_t>();
  auto cancelled = PostJson("/api/v1/surplus/" + std::to_string(a) + "/cancel", json::object(), "x1");
  ASSERT_EQ(cancelled->status, 200) << cancelled->body;
  EXPECT_EQ(json::parse(cancelled->body)["status"], "cancelled");
  EXPECT_EQ(PostJson("/api/v1/surplus/" + std::to_string(a) + "/cancel", json::object(), "x2")->status, 409);

  // b: claimed, picked up (2.1 of 3 kg) and delivered.
  auto claim = hub_->Claim(b, {ngo_, 1}, "c");
  ASSERT_TRUE(claim.ok());
  ASSERT_TRUE(hub_->PickUp(b, {ngo_, claim->surplus->handover_code, 2.1}, "p").ok());
  ASSERT_TRUE(hub_->Deliver(b, ngo_, "d").ok());

  auto by_ngo = json::parse(client_->Get("/api/v1/impact?by=ngo")->body);
  ASSERT_EQ(by_ngo["rows"].size(), 1u);
  EXPECT_EQ(by_ngo["rows"][0]["ngo"], std::to_string(ngo_));
  EXPECT_DOUBLE_EQ(by_ngo["rows"][0]["kg"].get<double>(), 2.1);
  EXPECT_DOUBLE_EQ(by_ngo["rows"][0]["meals"].get<double>(), 2.1 * 1000 / 420);
  EXPECT_DOUBLE_EQ(by_ngo["rows"][0]["co2e_kg"].get<double>(), 2.1 * 2.5);
  auto day = json::parse(client_->Get("/api/v1/impact?by=day")->body);
  ASSERT_EQ(day["rows"].size(), 1u);
  EXPECT_EQ(day["rows"][0]["day"].get<std::string>().size(), 10u);
  auto csv = client_->Get("/api/v1/impact?by=month&format=csv");
  EXPECT_EQ(csv->body.substr(0, 28), "month,posts,kg,meals,co2e_kg");
  auto future = json::parse(client_->Get("/api/v1/impact?from=2099-01-01T00:00:00Z")->body);
  EXPECT_TRUE(future["rows"].empty());
  EXPECT_EQ(client_->Get("/api/v1/impact?by=week")->status, 422);
}

}  // namespace
}  // namespace pp

namespace pp {
namespace {

// docs/openapi.yaml and the routes the hub serves agree, both ways. The
// file is read by indentation (paths at 2 spaces, methods at 4), which is
// how it is written.
TEST_F(HttpApiTest, OpenApiFileAndServedRoutesAgree) {
  std::ifstream in(test::SourceDir() + "/docs/openapi.yaml");
  ASSERT_TRUE(in) << "docs/openapi.yaml not found";
  auto normal = [](std::string path) {  // parameter names do not matter
    std::string out;
    for (size_t i = 0; i < path.size(); ++i) {
      if (path[i] == '{') {
        i = path.find('}', i);
        out += "{}";
      } else {
        out += path[i];
      }
    }
    return out;
  };
  std::set<std::string> documented, served;
  std::string line, path;
  bool in_paths = false;
  while (std::getline(in, line)) {
    if (line == "paths:") { in_paths = true; continue; }
    if (!line.empty() && line[0] != ' ') in_paths = false;
    if (!in_paths) continue;
    if (line.rfind("  /", 0) == 0 && line.back() == ':') path = normal(line.substr(2, line.size() - 3));
    for (const char* m : {"get", "post", "put", "delete", "patch"})
      if (line == std::string("    ") + m + ":") {
        std::string upper = m;
        for (auto& c : upper) c = char(std::toupper(c));
        documented.insert(upper + " " + path);
      }
  }
  for (const auto& [method, p] : api_->served()) served.insert(method + " " + normal(p));
  ASSERT_GT(documented.size(), 10u);
  std::vector<std::string> undocumented, missing;
  std::set_difference(served.begin(), served.end(), documented.begin(), documented.end(), std::back_inserter(undocumented));
  std::set_difference(documented.begin(), documented.end(), served.begin(), served.end(), std::back_inserter(missing));
  EXPECT_TRUE(undocumented.empty()) << "served but not in docs/openapi.yaml: " << testing::PrintToString(undocumented);
  EXPECT_TRUE(missing.empty()) << "in docs/openapi.yaml but not served: " << testing::PrintToString(missing);
}

// Request bodies of every write route, mangled at random (tests/support/
// mangle.h): each is answered, never with a server error, a refusal always
// as a problem that says what is wrong; what was stored is exactly what was
// answered 201; and the hub still serves. The seed is printed on failure:
// a failing case replays exactly.
TEST_F(HttpApiTest, MangledRequestBodiesGetProblemsNeverAServerErrorAndStoreOnlyWhatWasAnswered) {
  ASSERT_EQ(PostJson("/api/v1/surplus", ValidPost(), "first")->status, 201);
  struct Valid {
    std::string method, path;
    json body;
  };
  const std::string ngo = std::to_string(ngo_), provider = std::to_string(provider_);
  const std::vector<Valid> valid{
      {"POST", "/api/v1/surplus", ValidPost()},
      {"POST", "/api/v1/organizations", {{"kind", "ngo"}, {"name", "y"}, {"lat", 51.5}, {"lon", -0.1}}},
      {"PATCH", "/api/v1/organizations/" + provider, {{"name", "renamed"}, {"lat", 51.51}, {"lon", -0.11}}},
      {"POST", "/api/v1/surplus/1/claim", {{"ngo_id", ngo_}, {"version", 1}}},
      {"POST", "/api/v1/surplus/1/accept", {{"ngo_id", ngo_}}},
      {"POST", "/api/v1/surplus/1/decline", {{"ngo_id", ngo_}}},
      {"POST", "/api/v1/surplus/1/pickup", {{"ngo_id", ngo_}, {"handover_code", "123456"}, {"actual_kg", 2}}},
      {"POST", "/api/v1/surplus/1/deliver", {{"ngo_id", ngo_}}},
      {"POST", "/api/v1/surplus/1/cancel", json::object()},
      {"POST", "/api/v1/devices",
       {{"id", "kiosk-x"}, {"role", "kiosk"}, {"org_id", provider_},
        {"public_key", sync::ToBase64(sync::GenerateKeyPair().public_key)}}},
      {"PUT", "/api/v1/vehicles/" + ngo, {{"lat", 51.5}, {"lon", -0.1}, {"free_kg", 40}, {"online", true}}},
  };
  const uint32_t seed = 20261208;
  SCOPED_TRACE("mutation seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  int posts_created = 1;
  for (int i = 0; i < 1500; ++i) {
    const Valid& v = valid[std::uniform_int_distribution<size_t>(0, valid.size() - 1)(rng)];
    const std::string body = test::Mangle(v.body.dump(), rng);
    const httplib::Headers headers{{"Idempotency-Key", "fuzz-" + std::to_string(i)}};
    httplib::Result r = v.method == "POST"  ? client_->Post(v.path.c_str(), headers, body, "application/json")
                        : v.method == "PUT" ? client_->Put(v.path.c_str(), headers, body, "application/json")
                                            : client_->Patch(v.path.c_str(), headers, body, "application/json");
    ASSERT_TRUE(r) << v.method << " " << v.path << " " << body.substr(0, 200) << ": no answer";
    EXPECT_LT(r->status, 500) << v.method << " " << v.path << " " << body.substr(0, 200) << ": " << r->body;
    if (r->status >= 400) {
      EXPECT_EQ(r->get_header_value("Content-Type"), "application/problem+json") << r->body;
      json problem = json::parse(r->body, nullptr, false);
      EXPECT_TRUE(problem.is_object() && !problem.value("detail", "").empty())
          << v.method << " " << v.path << ": " << r->body;
    }
    posts_created += v.path == "/api/v1/surplus" && r->status == 201;
  }
  auto posts = hub_->ListSurplus({}, 0, 1000);
  ASSERT_TRUE(posts.ok());
  EXPECT_EQ(int(posts->size()), posts_created) << "stored posts are exactly those answered 201";
  auto ok = PostJson("/api/v1/surplus", ValidPost(), "after");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 201) << ok->body;
}

}  // namespace
}  // namespace pp
