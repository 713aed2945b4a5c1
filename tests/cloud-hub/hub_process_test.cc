// pp-hub as a process: two hubs on one PostgreSQL racing claims, and kill -9
// in the middle of a stream of posts.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <latch>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

struct Api {
  explicit Api(int port) : c("127.0.0.1", port) {
    c.set_read_timeout(20, 0);
    c.set_connection_timeout(5, 0);
  }
  httplib::Result Post(const std::string& path, const json& body, const std::string& key = "") {
    httplib::Headers h;
    if (!key.empty()) h.emplace("Idempotency-Key", key);
    return c.Post(path.c_str(), h, body.dump(), "application/json");
  }
  int64_t Org(const std::string& kind) {
    auto r = Post("/api/v1/organizations", {{"kind", kind}, {"name", kind}, {"lat", 51.5}, {"lon", -0.12}});
    EXPECT_TRUE(r && r->status == 201);
    return r ? json::parse(r->body)["id"].get<int64_t>() : 0;
  }
  httplib::Client c;
};

// One best_before for the whole run, so that a retried post is the same request.
const std::string& BestBefore() {
  static const std::string t = test::HoursFromNow(5);
  return t;
}

json PostBody(int64_t provider, int i) {
  return {{"provider_id", provider},
          {"category", "prepared_meals"},
          {"description", "batch " + std::to_string(i)},
          {"quantity_kg", 1.5},
          {"best_before", BestBefore()}};
}

TEST(HubProcess, TwoHubsOnOnePostgresGiveExactlyOneWinnerPerPost) {
  std::string db = test::NewPostgresDatabase("twohubs");
  ASSERT_FALSE(db.empty());
  test::Hub a(db), b(db);
  ASSERT_GT(a.port(), 0);
  ASSERT_GT(b.port(), 0);
  constexpr int kPosts = 200, kClaimers = 4;
  Api admin(a.port());
  int64_t provider = admin.Org("provider");
  std::vector<int64_t> ngos;
  for (int i = 0; i < kClaimers; ++i) ngos.push_back(admin.Org("ngo"));
  std::vector<int64_t> posts;
  for (int i = 0; i < kPosts; ++i) {
    auto r = admin.Post("/api/v1/surplus", PostBody(provider, i), "p" + std::to_string(i));
    ASSERT_TRUE(r && r->status == 201);
    posts.push_back(json::parse(r->body)["id"].get<int64_t>());
  }

  // The hubs' matching offers every post to the nearest NGO (version 2); wait
  // for that to settle and race at the version a tablet would show.
  std::vector<int64_t> versions(kPosts);
  ASSERT_TRUE(test::Eventually(
      [&] {
        for (int p = 0; p < kPosts; ++p) {
          auto r = admin.c.Get(("/api/v1/surplus/" + std::to_string(posts[p])).c_str());
          if (!r || r->status != 200) return false;
          json x = json::parse(r->body);
          if (x["status"] == "available") return false;
          versions[p] = x["version"].get<int64_t>();
        }
        return true;
      },
      std::chrono::seconds(30)));

  std::vector<std::vector<int>> status(kClaimers, std::vector<int>(kPosts, 0));
  std::latch start(kClaimers);
  std::vector<std::thread> threads;
  for (int t = 0; t < kClaimers; ++t) {
    threads.emplace_back([&, t] {
      Api api(t % 2 == 0 ? a.port() : b.port());  // half on each hub
      start.arrive_and_wait();
      for (int p = 0; p < kPosts; ++p) {
        auto r = api.Post("/api/v1/surplus/" + std::to_string(posts[p]) + "/claim",
                          {{"ngo_id", ngos[t]}, {"version", versions[p]}}, "c" + std::to_string(p));
        status[t][p] = r ? r->status : -1;
      }
    });
  }
  for (auto& th : threads) th.join();

  Api reader(b.port());
  for (int p = 0; p < kPosts; ++p) {
    int wins = 0, conflicts = 0;
    int64_t winner = 0;
    for (int t = 0; t < kClaimers; ++t) {
      if (status[t][p] == 200) wins++, winner = ngos[t];
      if (status[t][p] == 409) conflicts++;
    }
    ASSERT_EQ(wins, 1) << "post " << posts[p];
    EXPECT_EQ(conflicts, kClaimers - 1);
    auto r = reader.c.Get(("/api/v1/surplus/" + std::to_string(posts[p])).c_str());
    ASSERT_TRUE(r && r->status == 200);
    json x = json::parse(r->body);
    EXPECT_EQ(x["claimed_by"], winner);
    EXPECT_EQ(x["version"], versions[p] + 1);
    EXPECT_EQ(x["history"].size(), size_t(versions[p] + 1));
  }
}

class CrashTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CrashTest, EveryAcknowledgedPostSurvivesKillDashNine) {
  test::TempDir dir;
  std::string db = test::StoreUrl(GetParam(), dir, "crash");
  ASSERT_FALSE(db.empty());
  auto hub = std::make_unique<test::Hub>(db);
  ASSERT_GT(hub->port(), 0);
  int64_t provider = Api(hub->port()).Org("provider");

  // Several clients stream posts; each records what got a 201.
  constexpr int kClients = 6;
  std::mutex mu;
  std::map<std::string, json> acked;  // idempotency key -> 201 body
  std::atomic<bool> stop{false};
  std::atomic<int> acks{0};
  std::vector<std::thread> clients;
  int port = hub->port();
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      Api api(port);
      for (int i = 0; !stop; ++i) {
        std::string key = "c" + std::to_string(c) + "-" + std::to_string(i);
        auto r = api.Post("/api/v1/surplus", PostBody(provider, i), key);
        if (!r) break;  // the hub is gone
        if (r->status == 201) {
          std::lock_guard lock(mu);
          acked[key] = json::parse(r->body);
          acks++;
        }
      }
    });
  }
  ASSERT_TRUE(test::Eventually([&] { return acks >= 300; }, std::chrono::seconds(60)));
  hub->process().Kill(SIGKILL);
  hub->process().Wait();
  stop = true;
  for (auto& t : clients) t.join();

  test::Hub restarted(db);
  ASSERT_GT(restarted.port(), 0);
  Api api(restarted.port());
  ASSERT_GE(acked.size(), 300u);
  for (const auto& [key, body] : acked) {
    int64_t id = body["id"].get<int64_t>();
    auto r = api.c.Get(("/api/v1/surplus/" + std::to_string(id)).c_str());
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << "acknowledged post " << id << " lost";
    EXPECT_EQ(json::parse(r->body)["description"], body["description"]);
  }
  // A client retrying an acknowledged post after the crash gets the same post.
  const auto& [key, body] = *acked.begin();
  int i = std::stoi(body["description"].get<std::string>().substr(6));
  auto retry = api.Post("/api/v1/surplus", PostBody(provider, i), key);
  ASSERT_TRUE(retry);
  EXPECT_EQ(retry->status, 200);
  EXPECT_EQ(json::parse(retry->body)["id"], body["id"]);
}

INSTANTIATE_TEST_SUITE_P(Backends, CrashTest, ::testing::Values("sqlite", "postgresql"),
                         [](const auto& info) { return info.param; });

TEST(HubProcess, BadCommandLineIsNamedAndExitsNonZero) {
  for (std::vector<std::string> args : {std::vector<std::string>{"--http", "nowhere"},
                                        {"--db", "mysql://x", "--http", "127.0.0.1:0"},
                                        {"--frobnicate", "1"},
                                        {"--max-body", "12abc"}}) {
    std::vector<std::string> argv{test::BinPath("pp-hub")};
    argv.insert(argv.end(), args.begin(), args.end());
    test::Process p(argv);
    int status = p.Wait();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << args[0];
  }
}

// The allocator is a build choice that a linker flag (--as-needed, say) could
// quietly undo: look at what the running hub has mapped.
TEST(HubProcess, RunsOnJemallocWhereTheBuildLinksIt) {
#ifndef PP_PROGRAMS_ON_JEMALLOC
  GTEST_SKIP() << "built without jemalloc (the sanitizer build brings its own malloc)";
#endif
  test::TempDir dir;
  test::Hub hub("sqlite:" + dir.file("hub.db"));
  std::string maps = test::ReadFile("/proc/" + std::to_string(hub.process().pid()) + "/maps");
  ASSERT_FALSE(maps.empty());
  EXPECT_NE(maps.find("libjemalloc"), std::string::npos) << "pp-hub does not have jemalloc mapped";
}

}  // namespace
}  // namespace pp
