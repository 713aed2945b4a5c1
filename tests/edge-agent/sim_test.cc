// pp-sim end to end: a small London through a real mosquitto and pp-hub.
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "common/time_format.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using nlohmann::json;

class SimTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test::Process keygen({test::BinPath("pp-token"), "keygen", "--out", dir_.path().string()});
    ASSERT_EQ(keygen.Wait(), 0);
    hub_ = std::make_unique<test::Hub>(
        "sqlite:" + dir_.file("hub.db"),
        std::vector<std::string>{"--mqtt", broker_.uri(), "--mqtt-password-file", broker_.hub_password_file(),
                                 "--jwt-public-key", dir_.file("jwt.pub")},
        dir_.file("hub.log"));
    ASSERT_GT(hub_->port(), 0);
    test::Process mint({test::BinPath("pp-token"), "mint", "--key", dir_.file("jwt.key"), "--role", "admin"});
    token_ = mint.WaitForLine("");
    mint.Wait();
    while (!token_.empty() && token_.back() == '\n') token_.pop_back();
    ASSERT_GT(token_.size(), 100u);
  }

  std::vector<std::string> SimArgs(std::vector<std::string> extra) {
    std::vector<std::string> argv{test::BinPath("pp-sim"), "--hub", hub_->url(), "--token", token_,
                                  "--broker-dir", broker_.dir(), "--out", dir_.file("sim"),
                                  "--data", test::SourceDir() + "/tests/data/london_food_premises.csv"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
  }

  test::TempDir dir_;
  test::Broker broker_;
  std::unique_ptr<test::Hub> hub_;
  std::string token_;
};

// The same small city in one simulator process and in three: with three,
// kiosks and vans are dealt to different processes, so most posts are won
// by a van in another process than their kitchen's, which must still learn
// the kitchen's place and handover code to pick up and deliver.
class SimRushTest : public SimTest, public ::testing::WithParamInterface<int> {};

TEST_P(SimRushTest, ASmallRushIsPostedClaimedDrivenAndDeliveredWithNothingLost) {
  test::Process sim(SimArgs({"--kiosks", "12", "--posts-per-kiosk", "2", "--vehicles", "4", "--window", "3s",
                             "--delay", "50ms", "--accept", "0.7", "--race", "0.5", "--speed-up", "3000",
                             "--baseline", "500", "--device-dir", dir_.file("device-stores"),
                             "--processes", std::to_string(GetParam())}),
                    dir_.file("sim.err"));
  ASSERT_EQ(sim.Wait(), 0) << test::ReadFile(dir_.file("sim.err"));
  json r = json::parse(test::ReadFile(dir_.file("sim/results.json")));
  EXPECT_EQ(r["processes"], GetParam());
  EXPECT_EQ(r["posts_sent"], 24);
  EXPECT_EQ(r["posts_accepted"], 24);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["duplicated"], 0);
  EXPECT_EQ(r["errors"], 0);
  EXPECT_FALSE(r["interrupted"].get<bool>());
  EXPECT_TRUE(r["finished"].get<bool>());
  EXPECT_EQ(r["posts_unanswered"], 0);
  EXPECT_EQ(r["posts_in_hub_store"], 24);
  // Every post won by a van was driven to, picked up with the kitchen's
  // code and delivered at the van's depot.
  EXPECT_GT(r["claims"].get<int>(), 0);
  EXPECT_EQ(r["picked_up"], r["claims"]);
  EXPECT_EQ(r["delivered"], r["claims"]);
  // Every post was claimed or dead-lettered at least once (a dead-lettered
  // post may be retried, dead-lettered again or claimed later).
  EXPECT_GE(r["claims"].get<int>() + r["dead_lettered"].get<int>(), 24) << r.dump();
  // Declines were offered to the next van; vans reported as they drove.
  EXPECT_GT(r["rematches"].get<int>(), 0);
  EXPECT_GT(r["vehicle_updates"].get<int>(), 0);
  EXPECT_GT(r["broker_only_msgs_per_second"].get<double>(), 0);
  EXPECT_GT(r["posts_per_second"].get<double>(), 0);
  // Each device's store where --device-dir said: 12 kiosks and 4 vans.
  int stores = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir_.file("device-stores")))
    stores += f.path().extension() == ".db";
  EXPECT_EQ(stores, 16);
  // A post costs the broker at least its op up and its outcome down; the
  // offers, claims, pick-ups and van reports come on top.
  const json& m = r["mqtt_messages"];
  EXPECT_GE(m["up"].get<int>(), 24);
  EXPECT_GE(m["down"].get<int>(), 24);
  EXPECT_GT(m["per_post"].get<double>(), 2.0);
  EXPECT_NEAR(m["broker_bound_posts_per_second"].get<double>(),
              r["broker_only_msgs_per_second"].get<double>() / m["per_post"].get<double>(), 0.01);
  // Each of the three processes cost some CPU per post (the hub's from its
  // /metrics, the broker's from /proc).
  for (const char* process : {"simulator", "hub", "broker"})
    EXPECT_GT(r["cpu_us_per_post"][process].is_number() ? r["cpu_us_per_post"][process].get<double>() : 0.0, 0.0)
        << process << " " << r["cpu_us_per_post"].dump();
  // Every accept and race claim was answered: won, or lost to another van.
  EXPECT_EQ(r["claim_round_trip_ms"]["n"].get<int>(), r["claims"].get<int>() + r["conflicts"].get<int>()) << r.dump();
  // Each trip in its three parts: every one was seen leaving and its answer
  // arriving, and a part of a trip is never longer than the trip, so no
  // percentile of a part exceeds the same percentile of the whole.
  const json& whole = r["claim_round_trip_ms"];
  double medians = 0;
  for (const char* part : {"device_queue", "broker_and_hub", "device_apply"}) {
    const json& p = r["claim_round_trip_parts_ms"][part];
    EXPECT_EQ(p["n"], whole["n"]) << part;
    for (const char* q : {"p50", "p95", "p99"}) {
      EXPECT_GE(p[q].get<double>(), 0) << part << " " << q;
      EXPECT_LE(p[q].get<double>(), whole[q].get<double>() + 1e-6) << part << " " << q;
    }
    medians += p["p50"].get<double>();
  }
  EXPECT_GT(medians, 0);
  EXPECT_GT(r["post_to_first_offer_ms"]["p99"].get<double>(), 0);
  EXPECT_NE(test::ReadFile(dir_.file("sim/timeline.svg")).find("<svg"), std::string::npos);

  // The hub's own view agrees: 24 posts, all delivered or dead-lettered, and
  // the vans are no longer where they started.
  httplib::Client cli("127.0.0.1", hub_->port());
  cli.set_bearer_token_auth(token_.c_str());
  auto posts = cli.Get("/api/v1/surplus?limit=1000");
  ASSERT_TRUE(posts && posts->status == 200);
  json page = json::parse(posts->body);
  ASSERT_EQ(page["items"].size(), 24u);
  int delivered = 0, in_dlq = 0;
  std::set<int64_t> windows;  // minutes: each kitchen asks for its post to be collected within 1, 2 or 3 h
  for (const auto& p : page["items"]) {
    delivered += p["status"] == "delivered", in_dlq += p["status"] == "dead_lettered";
    ASSERT_TRUE(p["pickup_start"].is_string() && p["pickup_end"].is_string()) << p.dump();
    windows.insert(std::chrono::duration_cast<std::chrono::minutes>(*ParseRfc3339(p["pickup_end"].get<std::string>()) -
                                                                    *ParseRfc3339(p["pickup_start"].get<std::string>()))
                       .count());
  }
  EXPECT_EQ(windows, (std::set<int64_t>{60, 120, 180}));
  EXPECT_EQ(delivered, r["delivered"].get<int>());
  EXPECT_EQ(delivered + in_dlq, 24) << posts->body;
  EXPECT_LE(in_dlq, r["dead_lettered"].get<int>());
}

INSTANTIATE_TEST_SUITE_P(Processes, SimRushTest, ::testing::Values(1, 3),
                         [](const auto& info) { return "In" + std::to_string(info.param); });

TEST_F(SimTest, ABadProcessCountIsRefusedByName) {
  for (const char* bad : {"0", "17", "two"}) {
    test::Process sim(SimArgs({"--processes", bad}), dir_.file("sim.err"));
    const int status = sim.Wait();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << bad;  // 2: the command line was wrong
    EXPECT_NE(test::ReadFile(dir_.file("sim.err")).find("--processes must be a number in 1"), std::string::npos)
        << test::ReadFile(dir_.file("sim.err"));
  }
}

// Without --processes, one process per 250 devices: a thousand kiosks in
// one process collapsed (pp_sim.cc, kDevicesPerProcess). 251 kiosks: two.
// Asked for fewer processes than that, it plays anyway, with a warning.
TEST_F(SimTest, WithoutProcessesItRunsOneProcessPer250Devices) {
  auto play = [&](std::vector<std::string> extra) {
    std::vector<std::string> args{"--kiosks", "251", "--vehicles", "0", "--window", "1s", "--baseline", "0",
                                  "--device-dir", dir_.file("device-stores")};
    args.insert(args.end(), extra.begin(), extra.end());
    std::filesystem::remove_all(dir_.file("device-stores"));
    test::Process sim(SimArgs(args), dir_.file("sim.err"));
    EXPECT_EQ(sim.Wait(), 0) << test::ReadFile(dir_.file("sim.err"));
    return json::parse(test::ReadFile(dir_.file("sim/results.json")));
  };
  json r = play({});
  EXPECT_EQ(r["processes"], 2);
  EXPECT_EQ(r["posts_accepted"], 251);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(test::ReadFile(dir_.file("sim.err")).find("warning"), std::string::npos);

  r = play({"--processes", "1"});
  EXPECT_EQ(r["processes"], 1);
  EXPECT_EQ(r["posts_accepted"], 251);
  EXPECT_NE(test::ReadFile(dir_.file("sim.err")).find("warning: 251 devices in 1 process, over 250 a process"),
            std::string::npos)
      << test::ReadFile(dir_.file("sim.err")).substr(0, 2000);
}

TEST_F(SimTest, InterruptedItStillCountsAndWritesItsResults) {
  test::Process sim(SimArgs({"--kiosks", "6", "--vehicles", "2", "--window", "60s", "--baseline", "0"}),
                    dir_.file("sim.err"));
  ASSERT_TRUE(test::Eventually([&] { return test::ReadFile(dir_.file("sim.err")).find("posts ") != std::string::npos; },
                               std::chrono::seconds(30)));
  sim.Kill(SIGTERM);
  int status = sim.Wait();
  ASSERT_TRUE(WIFEXITED(status)) << "pp-sim should finish its summary, not die of the signal";
  EXPECT_EQ(WEXITSTATUS(status), 0);
  json r = json::parse(test::ReadFile(dir_.file("sim/results.json")));
  EXPECT_TRUE(r["interrupted"].get<bool>());
  EXPECT_TRUE(r["store_checked"].get<bool>());
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["duplicated"], 0);
  // Posts were due over a minute; the signal came within seconds of the start.
  EXPECT_EQ(r["posts_scheduled"], 6);
  EXPECT_LT(r["posts_sent"].get<int>(), 6);
  EXPECT_LE(r["posts_accepted"].get<int>(), r["posts_sent"].get<int>());
}

// A hub kept from an earlier run may still hold unclaimed posts of kitchens
// no process of this run plays (an interrupted demo leaves some). Won by a
// van, such a post was never handed over and the rush never settled. Vans
// now neither race for them nor take their offers: the rush finishes, and
// those posts stay unclaimed for the hub to offer on.
TEST_F(SimTest, PostsOfKitchensNotInTheRunAreLeftAloneAndTheRushStillFinishes) {
  // A small London: four kitchens and two depots a few hundred metres apart.
  const std::string data = dir_.file("small-london.csv");
  {
    std::ofstream f(data);
    f << "fhrsid,role,name,business_type,borough,postcode,lat,lon,rating,rating_date\n";
    for (int i = 0; i < 4; ++i)
      f << 100 + i << ",provider,Kitchen " << i << ",Restaurant/Cafe/Canteen,Camden,NW1 1AA," << 51.530 + 0.001 * i
        << ",-0.125,5,2024-01-01\n";
    for (int i = 0; i < 2; ++i)
      f << 200 + i << ",receiver,Depot " << i << ",Other catering premises,Camden,NW1 1AB," << 51.532 + 0.001 * i
        << ",-0.127,5,2024-01-01\n";
  }
  // An earlier run's post, at the depots' door.
  httplib::Client api("127.0.0.1", hub_->port());
  const httplib::Headers auth{{"Authorization", "Bearer " + token_}};
  auto org = api.Post("/api/v1/organizations", auth,
                      json{{"kind", "provider"}, {"name", "an earlier run's kitchen"}, {"lat", 51.532}, {"lon", -0.127}}.dump(),
                      "application/json");
  ASSERT_TRUE(org && org->status == 201) << (org ? org->body : "no answer");
  httplib::Headers post_headers = auth;
  post_headers.emplace("Idempotency-Key", "an-earlier-run");
  auto post = api.Post("/api/v1/surplus", post_headers,
                       json{{"provider_id", json::parse(org->body)["id"]}, {"category", "prepared_meals"},
                            {"description", "left from an earlier run"}, {"quantity_kg", 2.0},
                            {"best_before", test::HoursFromNow(5)}}.dump(),
                       "application/json");
  ASSERT_TRUE(post && post->status == 201) << (post ? post->body : "no answer");
  const int64_t earlier = json::parse(post->body)["id"].get<int64_t>();

  std::vector<std::string> argv = SimArgs({"--kiosks", "4", "--vehicles", "2", "--window", "3s", "--delay", "50ms",
                                           "--accept", "1", "--race", "1", "--speed-up", "3000", "--baseline", "0",
                                           "--overtime", "40s"});
  argv[std::find(argv.begin(), argv.end(), "--data") - argv.begin() + 1] = data;
  test::Process sim(argv, dir_.file("sim.err"));
  ASSERT_EQ(sim.Wait(), 0) << test::ReadFile(dir_.file("sim.err"));
  json r = json::parse(test::ReadFile(dir_.file("sim/results.json")));
  EXPECT_TRUE(r["finished"].get<bool>()) << r.dump();
  EXPECT_EQ(r["lost"], 0);
  EXPECT_GT(r["claims"].get<int>(), 0);
  EXPECT_EQ(r["delivered"], r["claims"]);
  auto left = api.Get(("/api/v1/surplus/" + std::to_string(earlier)).c_str(), auth);
  ASSERT_TRUE(left && left->status == 200);
  EXPECT_TRUE(json::parse(left->body)["claimed_by"].is_null()) << left->body;
}

// Ctrl-C in a terminal reaches the hub too when both run in it: the hub
// gone, the store cannot be checked at the end. The results are still
// written, with lost and duplicated unknown rather than a usage message,
// and the exit code says the check was not made.
TEST_F(SimTest, InterruptedWithTheHubGoneItWritesItsResultsWithoutTheStoreCheck) {
  test::Process sim(SimArgs({"--kiosks", "6", "--vehicles", "2", "--window", "60s", "--baseline", "0"}),
                    dir_.file("sim.err"));
  ASSERT_TRUE(test::Eventually([&] { return test::ReadFile(dir_.file("sim.err")).find("posts ") != std::string::npos; },
                               std::chrono::seconds(30)));
  hub_.reset();  // stopped
  sim.Kill(SIGTERM);
  int status = sim.Wait();
  ASSERT_TRUE(WIFEXITED(status)) << "pp-sim should finish its summary, not die of the signal";
  EXPECT_EQ(WEXITSTATUS(status), 5);
  const std::string err = test::ReadFile(dir_.file("sim.err"));
  EXPECT_NE(err.find("cannot read the hub's posts"), std::string::npos) << err.substr(0, 2000);
  EXPECT_EQ(err.find("usage:"), std::string::npos) << "not a usage error";
  json r = json::parse(test::ReadFile(dir_.file("sim/results.json")));
  EXPECT_TRUE(r["interrupted"].get<bool>());
  EXPECT_FALSE(r["store_checked"].get<bool>());
  EXPECT_TRUE(r["lost"].is_null());
  EXPECT_TRUE(r["duplicated"].is_null());
  EXPECT_TRUE(r["posts_in_hub_store"].is_null());
  EXPECT_EQ(r["posts_scheduled"], 6);
}

// The processes pp-sim started, by their parent's pid in /proc/PID/stat.
std::vector<pid_t> ChildrenOf(pid_t parent) {
  std::vector<pid_t> children;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string stat = test::ReadFile(entry.path().string() + "/stat");
    // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    int ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent)
      children.push_back(std::stoi(entry.path().filename().string()));
  }
  return children;
}

// A simulator process that stops answering mid-rush (here: stopped with
// SIGSTOP) used to keep the director waiting for its results forever. Now
// it is given up on after --silence, killed, and the run ends with the
// others' results, marked incomplete, and a non-zero exit.
TEST_F(SimTest, AProcessThatStopsAnsweringIsGivenUpOnAndTheRunSaysItIsIncomplete) {
  test::Process sim(SimArgs({"--kiosks", "6", "--vehicles", "2", "--window", "60s", "--baseline", "0",
                             "--processes", "2", "--silence", "3s"}),
                    dir_.file("sim.err"));
  ASSERT_TRUE(test::Eventually([&] { return test::ReadFile(dir_.file("sim.err")).find("posts ") != std::string::npos; },
                               std::chrono::seconds(30)));
  auto children = ChildrenOf(sim.pid());
  ASSERT_EQ(children.size(), 2u);
  // Should the test fail, the stopped process must not outlive it.
  struct KillLeftovers {
    std::vector<pid_t> pids;
    ~KillLeftovers() {
      for (pid_t pid : pids) kill(pid, SIGKILL);
    }
  } leftovers{children};
  ASSERT_EQ(kill(children[0], SIGSTOP), 0);
  // Without the fix this never comes: the director waits for the stopped one.
  ASSERT_TRUE(test::Eventually([&] { return std::filesystem::exists(dir_.file("sim/results.json")); },
                               std::chrono::seconds(40)))
      << test::ReadFile(dir_.file("sim.err")).substr(0, 3000);
  const int status = sim.Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3) << status;
  json r = json::parse(test::ReadFile(dir_.file("sim/results.json")));
  EXPECT_FALSE(r["complete"].get<bool>());
  ASSERT_EQ(r["processes_given_up"].size(), 1u) << r.dump();
  EXPECT_NE(r["processes_given_up"][0]["why"].get<std::string>().find("said nothing for 3.0 s"), std::string::npos)
      << r.dump();
  EXPECT_TRUE(r["interrupted"].get<bool>());
  const std::string err = test::ReadFile(dir_.file("sim.err"));
  EXPECT_NE(err.find("taken as stuck, killed"), std::string::npos) << err.substr(0, 3000);
  EXPECT_NE(err.find("the run is incomplete: 1 of 2 simulator processes gave no results"), std::string::npos);
  // Nothing left behind: both processes are gone, the stopped one too.
  for (pid_t child : children) EXPECT_TRUE(kill(child, 0) != 0 && errno == ESRCH) << child;
}

// A rush whose outcomes stop coming (here: the broker stopped with SIGSTOP
// once the rush is under way) ends --overtime after its window, says it did
// not finish and how many ops were left unanswered, and exits 4. Before,
// such a run wrote "complete": true and exited 0.
TEST_F(SimTest, ARushThatDoesNotSettleWithinItsOvertimeSaysSoAndExits4) {
  test::Process sim(SimArgs({"--kiosks", "4", "--posts-per-kiosk", "3", "--vehicles", "0", "--window", "6s",
                             "--baseline", "0", "--overtime", "2s"}),
                    dir_.file("sim.err"));
  const pid_t broker = std::stoi(test::ReadFile(broker_.dir() + "/mosquitto.pid"));
  struct ContinueBroker {
    pid_t pid;
    ~ContinueBroker() { kill(pid, SIGCONT); }
  } resume{broker};
  ASSERT_TRUE(test::Eventually([&] { return test::ReadFile(dir_.file("sim.err")).find("posts ") != std::string::npos; },
                               std::chrono::seconds(30)));
  ASSERT_EQ(kill(broker, SIGSTOP), 0);
  ASSERT_TRUE(test::Eventually(
      [&] { return test::ReadFile(dir_.file("sim.err")).find("did not settle") != std::string::npos; },
      std::chrono::seconds(30)))
      << test::ReadFile(dir_.file("sim.err")).substr(0, 3000);
  ASSERT_EQ(kill(broker, SIGCONT), 0);
  const int status = sim.Wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 4) << status;
  json r = json::parse(test::ReadFile(dir_.file("sim/results.json")));
  EXPECT_FALSE(r["finished"].get<bool>());
  EXPECT_FALSE(r["interrupted"].get<bool>());
  EXPECT_TRUE(r["complete"].get<bool>());  // every process answered
  EXPECT_EQ(r["posts_sent"], 12);
  // Posts were due over 6 s and the broker stopped within the first second or so.
  EXPECT_LT(r["posts_accepted"].get<int>(), 12) << test::ReadFile(dir_.file("sim.err")).substr(0, 3000);
  EXPECT_EQ(r["posts_unanswered"].get<int>(), 12 - r["posts_accepted"].get<int>()) << r.dump();
  EXPECT_EQ(r["ops_unanswered"], r["posts_unanswered"]);  // kiosks alone: every op a post
  EXPECT_GE(r["posts_in_hub_store"].get<int>(), r["posts_accepted"].get<int>());
  EXPECT_LE(r["posts_in_hub_store"].get<int>(), 12);
  EXPECT_EQ(r["lost"], 0);
  EXPECT_EQ(r["duplicated"], 0);
  EXPECT_NE(test::ReadFile(dir_.file("sim.err"))
                .find("ops (" + std::to_string(r["posts_unanswered"].get<int>()) + " posts) still unanswered"),
            std::string::npos);
}

TEST_F(SimTest, BadOptionsAreNamed) {
  std::ofstream(dir_.file("broken.csv")) << "fhrsid,role,name,business_type,borough,postcode,lat,lon,rating,rating_date\n"
                                         << "1,provider,A,Restaurant,Hackney,E8,north,-0.1,5,2020-01-01\n";
  for (auto [args, needle] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--data", dir_.file("broken.csv")}, "premises line 2: lat/lon \"north\""},
           {{"--kiosks", "many"}, "--kiosks must be a number"},
           {{"--window", "soon"}, "--window must be a duration"},
           {{"--accept", "1.5"}, "--accept must be a number in"},
           {{"--silence", "500ms"}, "--silence must be at least 1s"},
           {{"--overtime", "500ms"}, "--overtime must be at least 1s"},
           {{"--speed", "9"}, "unknown option --speed"},
           {{"--device-dir", "/proc/no-such-place"}, "cannot create --device-dir /proc/no-such-place"},
           {{"--data", "/nonexistent.csv"}, "cannot read /nonexistent.csv"}}) {
    std::string err = dir_.file("bad.err");
    std::remove(err.c_str());
    test::Process sim(SimArgs(args), err);
    int status = sim.Wait();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << needle;
    EXPECT_NE(test::ReadFile(err).find(needle), std::string::npos) << test::ReadFile(err);
  }
}

}  // namespace
}  // namespace pp
