// Tokens on the hub's HTTP API: who may do what, to which organisation's
// posts, how often; and the tokens libjwt 1.10 alone would let through.
#include "cloud-hub/http/auth.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <jwt.h>

#include <thread>

#include "cloud-hub/http/http_api.h"
#include "cloud-hub/store/store.h"
#include "common/time_format.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    test::Process keygen({test::BinPath("pp-token"), "keygen", "--out", dir_->path().string()});
    keygen.Wait();
    private_ = test::ReadFile(dir_->file("jwt.key"));
    public_ = test::ReadFile(dir_->file("jwt.pub"));
  }
  static void TearDownTestSuite() { delete dir_; }

  void SetUp() override {
    ASSERT_NE(public_.find("PUBLIC KEY"), std::string::npos) << "pp-token keygen made no key";
    store_ = std::move(*OpenStore("sqlite:" + dir_->file("hub-" + std::to_string(counter_++) + ".db")));
    committer_ = std::move(*GroupCommitter::Start(*store_, {}));
    hub_ = std::make_unique<HubService>(*store_, *committer_, SystemClock::Instance());
    verifier_ = std::make_unique<JwtVerifier>(public_, JwtOptions{});
    api_ = std::make_unique<HttpApi>(*hub_, HttpOptions{});
    api_->SetAuth(verifier_.get(), 5);  // 5 a minute: the limit is reachable in a test
    port_ = *api_->Bind("127.0.0.1", 0);
    server_ = std::thread([this] { api_->Serve(); });
    ASSERT_TRUE(test::Eventually([&] { return test::HttpCall(port_, "GET", "/healthz").status == 200; }));
    admin_ = Token(Role::kAdmin);
    p1_ = Org("provider"), p2_ = Org("provider"), n1_ = Org("ngo"), n2_ = Org("ngo");
  }
  void TearDown() override {
    api_->Stop();
    server_.join();
  }

  std::string Token(Role role, int64_t org = 0, Duration ttl = std::chrono::minutes(15)) {
    Principal p;
    p.role = role;
    p.org_id = org;
    p.subject = "test";
    return *MintJwt(private_, p, JwtOptions{}, SystemClock::Instance().Now(), ttl);
  }
  test::HttpAnswer Call(const std::string& token, const std::string& method, const std::string& path,
                        const json& body = nullptr) {
    httplib::Client cli("127.0.0.1", port_);
    httplib::Headers h{{"Idempotency-Key", "k" + std::to_string(key_++)}};
    if (!token.empty()) h.emplace("Authorization", "Bearer " + token);
    auto r = method == "GET" ? cli.Get(path.c_str(), h)
             : method == "PUT" ? cli.Put(path.c_str(), h, body.dump(), "application/json")
             : method == "PATCH" ? cli.Patch(path.c_str(), h, body.dump(), "application/json")
                               : cli.Post(path.c_str(), h, body.dump(), "application/json");
    if (!r) return {};
    return {r->status, json::parse(r->body, nullptr, false)};
  }
  int64_t Org(const std::string& kind) {
    auto r = Call(admin_, "POST", "/api/v1/organizations", {{"kind", kind}, {"name", kind}, {"lat", 51.5}, {"lon", -0.1}});
    EXPECT_EQ(r.status, 201) << r.body.dump();
    return r.body["id"].get<int64_t>();
  }
  json Post(int64_t provider) {
    return {{"provider_id", provider}, {"category", "bakery"}, {"description", "roti"},
            {"quantity_kg", 2}, {"best_before", test::HoursFromNow(3)}};
  }

  static inline test::TempDir* dir_ = nullptr;
  static inline std::string private_, public_;
  static inline int counter_ = 0;
  std::unique_ptr<Store> store_;
  std::unique_ptr<GroupCommitter> committer_;
  std::unique_ptr<HubService> hub_;
  std::unique_ptr<JwtVerifier> verifier_;
  std::unique_ptr<HttpApi> api_;
  std::thread server_;
  int port_ = 0, key_ = 0;
  std::string admin_;
  int64_t p1_ = 0, p2_ = 0, n1_ = 0, n2_ = 0;
};

TEST_F(AuthTest, NoTokenOrABadOneIsRefused) {
  httplib::Client cli("127.0.0.1", port_);
  auto bare = cli.Get("/api/v1/surplus");
  EXPECT_EQ(bare->status, 401);
  EXPECT_NE(bare->get_header_value("WWW-Authenticate").find("Bearer"), std::string::npos);
  EXPECT_EQ(Call("", "GET", "/healthz").status, 200);  // health and metrics stay open
  EXPECT_EQ(Call("garbage", "GET", "/api/v1/surplus").status, 401);

  // The classic confusion: HS256 "signed" with our public key as the secret.
  jwt_t* forged = nullptr;
  jwt_new(&forged);
  jwt_add_grant(forged, "iss", "pahlawan-pangan");
  jwt_add_grant(forged, "aud", "pp-hub");
  jwt_add_grant(forged, "role", "admin");
  int64_t now = ToUnixMillis(SystemClock::Instance().Now()) / 1000;
  jwt_add_grant_int(forged, "iat", now);
  jwt_add_grant_int(forged, "exp", now + 600);
  jwt_set_alg(forged, JWT_ALG_HS256, reinterpret_cast<const unsigned char*>(public_.data()), int(public_.size()));
  char* hs = jwt_encode_str(forged);
  auto confused = Call(hs, "GET", "/api/v1/surplus");
  free(hs);
  jwt_free(forged);
  EXPECT_EQ(confused.status, 401) << confused.body.dump();

  JwtOptions other;
  other.issuer = "someone-else";
  Principal admin{Role::kAdmin, 0, "x"};
  auto wrong_iss = *MintJwt(private_, admin, other, SystemClock::Instance().Now(), std::chrono::minutes(5));
  EXPECT_EQ(Call(wrong_iss, "GET", "/api/v1/surplus").body["detail"], "token issuer is not pahlawan-pangan");
  auto old = *MintJwt(private_, admin, JwtOptions{}, SystemClock::Instance().Now() - std::chrono::hours(1),
                      std::chrono::minutes(15));
  EXPECT_EQ(Call(old, "GET", "/api/v1/surplus").body["detail"], "token expired");
  JwtOptions long_lived;
  long_lived.max_lifetime = std::chrono::hours(24);
  auto day = *MintJwt(private_, admin, long_lived, SystemClock::Instance().Now(), std::chrono::hours(24));
  EXPECT_EQ(Call(day, "GET", "/api/v1/surplus").status, 401);  // the hub allows 15 minutes
}

// Verified tokens are remembered (libjwt parses the key on every decode);
// remembering must not let through a token that has since expired, one
// "issued" later than the clock says, or an altered copy of a good one, and
// must stay bounded.
TEST_F(AuthTest, ARememberedTokenIsStillCheckedAndTheMemoryIsBounded) {
  JwtVerifier v(public_, JwtOptions{});
  const Timestamp now = SystemClock::Instance().Now();
  const std::string token = Token(Role::kOperator, 0, std::chrono::minutes(15));
  ASSERT_TRUE(v.Verify(token, now).ok());
  EXPECT_EQ(v.remembered(), 1u);
  auto again = v.Verify(token, now + std::chrono::minutes(1));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->role, Role::kOperator);
  EXPECT_EQ(again->subject, "test");

  std::string altered = token;
  altered[altered.size() - 5] = altered[altered.size() - 5] == 'A' ? 'B' : 'A';  // in the signature
  auto forged = v.Verify(altered, now);
  ASSERT_FALSE(forged.ok());
  EXPECT_EQ(forged.error().message, "token signature or format is invalid");

  auto early = v.Verify(token, now - std::chrono::hours(1));
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.error().message, "token issued in the future");
  ASSERT_TRUE(v.Verify(token, now).ok());
  auto late = v.Verify(token, now + std::chrono::minutes(16));  // 15 min + 30 s leeway passed
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().message, "token expired");
  EXPECT_EQ(v.remembered(), 0u) << "an expired token is forgotten";

  // A provider's organisation comes back from memory as it was verified.
  const std::string partner = Token(Role::kProvider, 42);
  ASSERT_TRUE(v.Verify(partner, now).ok());
  EXPECT_EQ(v.Verify(partner, now)->org_id, 42);

  for (size_t i = 0; i <= JwtVerifier::kRemembered; ++i) {
    Principal p{Role::kViewer, 0, "viewer-" + std::to_string(i)};
    ASSERT_TRUE(v.Verify(*MintJwt(private_, p, JwtOptions{}, now, std::chrono::minutes(5)), now).ok());
  }
  EXPECT_LE(v.remembered(), JwtVerifier::kRemembered);
}

TEST_F(AuthTest, RolesAndOrganisationsAreChecked) {
  std::string viewer = Token(Role::kViewer), op = Token(Role::kOperator);
  std::string prov1 = Token(Role::kProvider, p1_), ngo1 = Token(Role::kNgo, n1_), ngo2 = Token(Role::kNgo, n2_);
  EXPECT_EQ(Call(viewer, "GET", "/api/v1/surplus").status, 200);
  EXPECT_EQ(Call(viewer, "POST", "/api/v1/surplus", Post(p1_)).status, 403);
  EXPECT_EQ(Call(prov1, "POST", "/api/v1/surplus", Post(p2_)).status, 403);  // another provider's name
  auto mine = Call(prov1, "POST", "/api/v1/surplus", Post(p1_));
  ASSERT_EQ(mine.status, 201);
  int64_t id = mine.body["id"];
  EXPECT_EQ(Call(prov1, "GET", "/api/v1/surplus/" + std::to_string(id)).status, 200);
  EXPECT_EQ(Call(Token(Role::kProvider, p2_), "GET", "/api/v1/surplus/" + std::to_string(id)).status, 404);
  EXPECT_EQ(Call(prov1, "GET", "/api/v1/surplus").status, 403);  // the list is for staff
  EXPECT_EQ(Call(prov1, "POST", "/api/v1/organizations", {{"kind", "ngo"}, {"name", "x"}, {"lat", 1}, {"lon", 1}}).status, 403);

  std::string claim_path = "/api/v1/surplus/" + std::to_string(id) + "/claim";
  EXPECT_EQ(Call(ngo2, "POST", claim_path, {{"ngo_id", n1_}, {"version", 1}}).status, 403);  // for another NGO
  EXPECT_EQ(Call(ngo1, "POST", claim_path, {{"ngo_id", n1_}, {"version", 1}}).status, 200);
  EXPECT_EQ(Call(ngo2, "GET", "/api/v1/surplus/" + std::to_string(id)).status, 404);  // claimed by n1 now
  EXPECT_EQ(Call(ngo1, "GET", "/api/v1/surplus/" + std::to_string(id)).status, 200);
  EXPECT_EQ(Call(ngo1, "POST", "/api/v1/surplus/" + std::to_string(id) + "/cancel", json::object()).status, 403);
  EXPECT_EQ(Call(op, "POST", "/api/v1/surplus/" + std::to_string(id) + "/cancel", json::object()).status, 200);
  EXPECT_EQ(Call(ngo1, "PUT", "/api/v1/vehicles/" + std::to_string(n2_), {{"free_kg", 10}}).status, 403);
  EXPECT_EQ(Call(ngo1, "PUT", "/api/v1/vehicles/" + std::to_string(n1_), {{"free_kg", 10}}).status, 200);
  EXPECT_EQ(Call(op, "POST", "/api/v1/devices", {{"id", "k"}, {"role", "kiosk"}, {"org_id", p1_},
                                                 {"public_key", "x"}}).status, 403);  // admin only
  const std::string org1 = "/api/v1/organizations/" + std::to_string(p1_);
  EXPECT_EQ(Call(prov1, "PATCH", org1, {{"name", "mine"}}).status, 403);  // not even its own
  EXPECT_EQ(Call(op, "PATCH", org1, {{"name", "x"}}).status, 403);
  EXPECT_EQ(Call(admin_, "PATCH", org1, {{"name", "renamed"}}).status, 200);
}

// A claim is released by the claiming NGO, or by an operator on its behalf
// (the driver phoned): nobody else.
TEST_F(AuthTest, TheClaimingNgoOrAnOperatorReleasesAClaim) {
  std::string viewer = Token(Role::kViewer), op = Token(Role::kOperator);
  std::string prov1 = Token(Role::kProvider, p1_), ngo1 = Token(Role::kNgo, n1_), ngo2 = Token(Role::kNgo, n2_);
  auto posted = Call(prov1, "POST", "/api/v1/surplus", Post(p1_));
  ASSERT_EQ(posted.status, 201);
  const std::string post = "/api/v1/surplus/" + std::to_string(posted.body["id"].get<int64_t>());
  auto claim = [&] {
    auto now = Call(admin_, "GET", post);
    return Call(ngo1, "POST", post + "/claim", {{"ngo_id", n1_}, {"version", now.body["version"]}}).status;
  };
  ASSERT_EQ(claim(), 200);
  const json for_n1{{"ngo_id", n1_}};
  EXPECT_EQ(Call(ngo2, "POST", post + "/release", for_n1).status, 403);  // for another NGO
  EXPECT_EQ(Call(viewer, "POST", post + "/release", for_n1).status, 403);
  EXPECT_EQ(Call(prov1, "POST", post + "/release", for_n1).status, 403);
  EXPECT_EQ(Call(ngo2, "POST", post + "/release", {{"ngo_id", n2_}}).status, 409);  // holds no claim
  auto released = Call(ngo1, "POST", post + "/release", for_n1);
  ASSERT_EQ(released.status, 200) << released.body.dump();
  EXPECT_TRUE(released.body["claimed_by"].is_null()) << released.body.dump();
  EXPECT_FALSE(released.body.contains("handover_code"));
  EXPECT_EQ(Call(ngo1, "POST", post + "/release", for_n1).status, 409);  // nothing left to release
  ASSERT_EQ(claim(), 200);
  EXPECT_EQ(Call(op, "POST", post + "/release", for_n1).status, 200);  // on the NGO's behalf
}

TEST_F(AuthTest, ProvidersAreRateLimitedWithRetryAfter) {
  std::string prov = Token(Role::kProvider, p1_);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Call(prov, "POST", "/api/v1/surplus", Post(p1_)).status, 201) << i;
  httplib::Client cli("127.0.0.1", port_);
  auto limited = cli.Get("/api/v1/surplus/1", {{"Authorization", "Bearer " + prov}});
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->status, 429);
  int retry = std::stoi(limited->get_header_value("Retry-After"));
  EXPECT_GE(retry, 1);
  EXPECT_LE(retry, 12);  // one token comes back every 12 s at 5 a minute
  // Another provider has its own budget; staff are not limited.
  EXPECT_EQ(Call(Token(Role::kProvider, p2_), "POST", "/api/v1/surplus", Post(p2_)).status, 201);
  EXPECT_EQ(Call(admin_, "GET", "/api/v1/surplus").status, 200);
}

}  // namespace
}  // namespace pp
