// Adding broker users to a running mosquitto, from several tools at once.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "sync/broker_admin.h"
#include "sync/mqtt_client.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

// A test process that aborts leaves its brokers running (they run
// daemonized) and its folders behind; the next test process stops and
// removes them. Here a broker is started in a folder named for a process
// that has exited, beside one named for a process that lives (init).
TEST(TestBrokers, ThoseOfATestProcessThatIsGoneAreStoppedAndItsFoldersRemoved) {
  test::TempDir mine;  // reaps whatever earlier runs left, before this test's own
  const std::filesystem::path root = mine.path().parent_path();
  const pid_t gone = fork();
  if (gone == 0) _exit(0);
  ASSERT_GT(gone, 0);
  ASSERT_EQ(waitpid(gone, nullptr, 0), gone);
  const auto left = root / ("t" + std::to_string(gone) + "_0");
  const auto left_empty = root / ("t" + std::to_string(gone) + "_1");
  const auto living = root / "t1_0";
  for (const auto& d : {left, left_empty, living}) std::filesystem::create_directories(d);
  test::Process start({"/bin/bash", test::SourceDir() + "/packaging/broker.sh", "start", left.string()});
  ASSERT_GT(std::atoi(start.WaitForLine("").c_str()), 0) << "mosquitto did not start";
  start.Wait();
  std::ifstream pid_file(left / "mosquitto.pid");
  pid_t broker = 0;
  ASSERT_TRUE(pid_file >> broker);
  ASSERT_EQ(kill(broker, 0), 0);

  // (A test process starting this moment may reap them first: the effect
  // is what counts, not who did it.)
  test::ReapLeftovers();
  EXPECT_TRUE(test::Eventually([&] { return kill(broker, 0) != 0; }, std::chrono::seconds(10)))
      << "the broker of a process that is gone still runs";
  EXPECT_FALSE(std::filesystem::exists(left));
  EXPECT_FALSE(std::filesystem::exists(left_empty));
  EXPECT_TRUE(std::filesystem::exists(living)) << "a living process's folder was removed";
  EXPECT_TRUE(std::filesystem::exists(mine.path())) << "this process's own folder was removed";
  std::filesystem::remove_all(living);
}

TEST(BrokerAdmin, TwoToolsAddingUsersAtOnceLoseNoneAndTheBrokerAcceptsThem) {
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  // Two simulators setting up their cities against one broker, batch by batch.
  auto add = [&](const std::string& prefix) {
    for (int batch = 0; batch < 5; ++batch) {
      std::vector<std::pair<std::string, std::string>> users;
      for (int i = 0; i < 8; ++i) {
        std::string name = prefix + "-" + std::to_string(batch) + "-" + std::to_string(i);
        users.push_back({name, name + "-pw"});
      }
      auto st = sync::AddNewBrokerUsers(broker.dir(), users);
      EXPECT_TRUE(st.ok()) << st.error().ToString();
    }
  };
  std::thread a(add, "sim-a"), b(add, "sim-b");
  a.join();
  b.join();
  std::set<std::string> names;
  std::ifstream in(broker.dir() + "/passwd");
  for (std::string line; std::getline(in, line);) {
    auto colon = line.find(':');
    ASSERT_NE(colon, std::string::npos) << line;
    EXPECT_EQ(line.compare(colon + 1, 1, "$"), 0) << "stored in the clear: " << line;
    names.insert(line.substr(0, colon));
  }
  for (const char* prefix : {"sim-a", "sim-b"})
    for (int batch = 0; batch < 5; ++batch)
      for (int i = 0; i < 8; ++i)
        EXPECT_TRUE(names.count(std::string(prefix) + "-" + std::to_string(batch) + "-" + std::to_string(i)));

  // The broker reloaded the file: the last user of each tool gets in.
  for (const char* user : {"sim-a-4-7", "sim-b-4-7"}) {
    sync::MqttClient c(sync::MqttClient::CleanSession(broker.uri(), user, user, std::string(user) + "-pw", {}, 10),
                       [](auto&, auto&, auto&) {});
    EXPECT_TRUE(test::Eventually([&] { return c.Connect(std::chrono::seconds(2)).ok(); }, std::chrono::seconds(10)))
        << user << "\n" << broker.Log();
  }
}

TEST(BrokerAdmin, NamesTakenOrMalformedAreRefusedAndNothingIsWritten) {
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  ASSERT_TRUE(sync::AddNewBrokerUsers(broker.dir(), {{"kiosk-1", "pw"}}).ok());
  auto before = test::ReadFile(broker.dir() + "/passwd");
  auto taken = sync::AddNewBrokerUsers(broker.dir(), {{"kiosk-2", "pw"}, {"kiosk-1", "again"}});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.error().code, Code::kAlreadyExists);
  EXPECT_NE(taken.error().message.find("kiosk-1"), std::string::npos);
  auto colon = sync::AddNewBrokerUsers(broker.dir(), {{"a:b", "pw"}});
  ASSERT_FALSE(colon.ok());
  EXPECT_EQ(colon.error().code, Code::kInvalidArgument);
  EXPECT_EQ(test::ReadFile(broker.dir() + "/passwd"), before);
  EXPECT_FALSE(std::filesystem::exists(broker.dir() + "/passwd.new")) << "no plain-text passwords left behind";
}

}  // namespace
}  // namespace pp
