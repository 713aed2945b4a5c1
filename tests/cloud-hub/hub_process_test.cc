// pp-hub as a process: two hubs on one PostgreSQL racing claims, and kill -9
// in the middle of a stream of posts.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <latch>
#include <map>
#include <mutex>
#include <set>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
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

// Several hub replicas split the devices' ops through the shared
// subscription ($share/hub/...): each op reaches one replica and is applied
// once, whichever replica commits it. One replica killed mid-stream, the
// other carries the rest at once: the ops the dead one had taken are sent
// again by their devices and answered by the live one the first time, and
// nothing is applied twice. Replicas run with `--mqtt-session-expiry 0`:
// mosquitto keeps handing a kept session its share of a shared
// subscription while its hub is dead (eclipse/mosquitto#1747), and with the
// default (a session kept 7 days) every second op sent again went to the
// dead replica and was lost again. One replica's outbox relay publishes
// (the relay lease; every replica's did before, and devices got each
// message about twice); the live one's takes over. The replicas' store
// writers meet on the same devices' rows (max_seq): none of their batches
// may deadlock.
TEST(HubProcess, TwoReplicasSplitTheDevicesOpsAndApplyEachOnce) {
  std::string db = test::NewPostgresDatabase("replicas");
  ASSERT_FALSE(db.empty());
  test::TempDir logs;
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  auto replica = [&](const std::string& name) {
    return std::make_unique<test::Hub>(
        db,
        std::vector<std::string>{"--mqtt", broker.uri(), "--mqtt-password-file", broker.hub_password_file(),
                                 "--mqtt-client-id", name, "--mqtt-session-expiry", "0"},
        logs.file(name + ".log"));
  };
  auto a = replica("pp-hub-a"), b = replica("pp-hub-b");
  ASSERT_GT(a->port(), 0);
  ASSERT_GT(b->port(), 0);
  Api admin(a->port());
  const int64_t provider = admin.Org("provider");
  constexpr int kKiosks = 6, kFirst = 150, kSecond = 100;
  std::vector<std::unique_ptr<test::TestDevice>> kiosks;
  for (int k = 0; k < kKiosks; ++k) {
    const std::string id = "kiosk-" + std::to_string(k);
    auto d = std::make_unique<test::TestDevice>(broker, id);
    auto r = admin.Post("/api/v1/devices",
                        {{"id", id}, {"role", "kiosk"}, {"org_id", provider}, {"public_key", d->public_key()}});
    ASSERT_TRUE(r && r->status == 201) << (r ? r->body : "no answer");
    broker.AddUser(id, d->password());
    ASSERT_TRUE(d->Connect().ok());
    kiosks.push_back(std::move(d));
  }
  auto body = [](int k, int i) {
    return json{{"category", "prepared_meals"},
                {"description", "k" + std::to_string(k) + " " + std::to_string(i)},
                {"quantity_kg", 1.5},
                {"best_before", BestBefore()}};
  };
  // Every kiosk sends at once; `kill_after` ops into the stream (all
  // kiosks together), replica a is killed.
  std::vector<std::vector<sync::Envelope>> sent(kKiosks);
  auto stream = [&](int from, int count, int kill_after) {
    std::atomic<int> sent_so_far{0};
    std::once_flag killed;
    std::vector<std::thread> threads;
    for (int k = 0; k < kKiosks; ++k)
      threads.emplace_back([&, k] {
        for (int i = from; i < from + count; ++i) {
          sent[k].push_back(kiosks[k]->Send("post_surplus", body(k, i)));
          if (kill_after > 0 && ++sent_so_far == kill_after)
            std::call_once(killed, [&] {
              a->process().Kill(SIGKILL);
              a->process().Wait();
            });
        }
      });
    for (auto& t : threads) t.join();
  };
  // Each op's outcome, waiting `wait` for it before sending the op again
  // (same bytes) as a device's queue does; the post ids of the accepted
  // ones. Returns how many ops had to be sent more than once again.
  auto answers = [&](std::set<int64_t>& ids, std::chrono::milliseconds wait) {
    int resent_twice = 0;
    for (int k = 0; k < kKiosks; ++k)
      for (const auto& e : sent[k]) {
        json o = kiosks[k]->WaitOutcome(e.op, wait);
        for (int attempt = 0; o.is_null() && attempt < 10; ++attempt) {
          if (attempt > 0) resent_twice++;
          kiosks[k]->SendRaw(sync::UpTopic(e.device, e.type), sync::Encode(e));
          o = kiosks[k]->WaitOutcome(e.op, std::chrono::seconds(5));
        }
        EXPECT_FALSE(o.is_null()) << "op " << e.op << " never answered";
        if (o.is_null()) continue;
        EXPECT_EQ(o["status"], "accepted") << o.dump();
        ids.insert(o["data"]["id"].get<int64_t>());
      }
    return resent_twice;
  };

  // One replica's outbox relay publishes (it holds the store's relay lease).
  auto leads = [](const std::unique_ptr<test::Hub>& h) {
    return test::MetricValue(h->port(), "outbox_relay_leading");
  };
  ASSERT_TRUE(test::Eventually([&] { return leads(a) + leads(b) == 1; }))
      << "a: " << leads(a) << " b: " << leads(b);
  const bool a_leads = leads(a) == 1;

  stream(0, kFirst, 0);
  std::set<int64_t> ids;
  EXPECT_EQ(answers(ids, std::chrono::seconds(10)), 0);
  ASSERT_EQ(ids.size(), size_t(kKiosks * kFirst)) << "an op applied twice, or two ops as one";
  const std::string accepted = "mqtt_ingest_messages_total{result=\"accepted\"}";
  const double on_a = test::MetricValue(a->port(), accepted), on_b = test::MetricValue(b->port(), accepted);
  EXPECT_GT(on_a, 0) << "replica a got none of the ops";
  EXPECT_GT(on_b, 0) << "replica b got none of the ops";
  EXPECT_EQ(on_a + on_b, kKiosks * kFirst) << "each op reached one replica";
  int repeats = 0;
  for (const auto& k : kiosks) repeats += k->duplicates_dropped();
  EXPECT_EQ(repeats, 0) << "down messages published twice: more than one relay at work";

  stream(kFirst, kSecond, kKiosks * kSecond / 3);
  EXPECT_EQ(answers(ids, std::chrono::milliseconds(300)), 0)
      << "ops sent again still went to the dead replica";
  EXPECT_EQ(ids.size(), size_t(kKiosks * (kFirst + kSecond)));
  EXPECT_EQ(leads(b), 1) << "the live replica's relay took over (a led: " << a_leads << ")";
  // The store holds exactly those posts: nothing applied twice.
  pqxx::connection store(db);
  pqxx::work read(store);
  EXPECT_EQ(read.exec1("SELECT count(*) FROM surplus")[0].as<int64_t>(), int64_t(kKiosks * (kFirst + kSecond)));
  for (const char* name : {"pp-hub-a", "pp-hub-b"}) {
    const std::string log = test::ReadFile(logs.file(std::string(name) + ".log"));
    EXPECT_EQ(log.find("deadlock detected"), std::string::npos) << name << "'s store writers deadlocked";
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
                                        {"--max-body", "12abc"},
                                        {"--mqtt-session-expiry", "5d"},
                                        {"--mqtt-session-expiry", "800h"}}) {
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
