// Adding broker users to a running mosquitto, from several tools at once.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "sync/broker_admin.h"
#include "sync/mqtt_client.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

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
