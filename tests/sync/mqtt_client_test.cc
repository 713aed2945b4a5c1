// sync::MqttClient against a real mosquitto that goes away at awkward
// moments: the client must come back every time, however Paho's own session
// state was left.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <optional>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

#include "sync/mqtt_client.h"
#include "tests/support/test_support.h"

namespace pp {
namespace {

using std::chrono::seconds;

// A device's options as pp-agent sets them: its own down topic, and a
// session the broker keeps.
sync::MqttClient::Options DeviceOptions(const test::Broker& broker, const std::string& id,
                                        const std::string& password) {
  sync::MqttClient::Options o;
  o.uri = broker.uri();
  o.client_id = id;
  o.username = id;
  o.password = password;
  o.subscriptions = {"pp/v1/down/" + id};
  o.clean_start = false;
  return o;
}

TEST(SessionHealth, ThreeQuickEndingsInARowStartTheNextSessionCleanOnce) {
  sync::SessionHealth h;
  EXPECT_FALSE(h.StartClean());
  h.Ended(seconds(1));
  h.Ended(seconds(1));
  EXPECT_FALSE(h.StartClean()) << "two quick endings are a bad network, not a poisoned session";
  h.Ended(seconds(600));  // a long session in between: the count starts again
  h.Ended(seconds(1));
  h.Ended(seconds(1));
  EXPECT_FALSE(h.StartClean());
  h.Ended(std::chrono::milliseconds(4999));
  EXPECT_TRUE(h.StartClean());
  EXPECT_FALSE(h.StartClean()) << "once, then persistent sessions again";
  h.Ended(seconds(5));  // kQuick itself is not quick
  h.Ended(seconds(5));
  h.Ended(seconds(5));
  EXPECT_FALSE(h.StartClean());
}

// The moment agent_test hit about once in ten runs under load: the broker
// stopped within milliseconds of the client connecting, with its SUBSCRIBE
// and first publishes in flight, then started again. There Paho sometimes
// re-sent a packet mosquitto refused as a protocol error on every reconnect
// of the persistent session, or lost the connection without telling (see
// SessionHealth). This test has not reproduced that fault itself (it passed
// before the guards too); it holds the client to coming back after six such
// stops in a row, three of which end sessions quickly enough to make the
// next connect start clean.
//
// Not under ASan: there these stops make Paho C free a string on one of its
// threads that another then reads, with no frame of ours (upstream
// eclipse-paho/paho.mqtt.c#1483, a premature free while reconnecting). It
// aborted the ASan suite in one CI run of session 25 and one of session 35,
// and ASan can only silence it for the whole library, which would also hide
// a misuse of Paho by our code. The release build runs it every time.
TEST(MqttClient, ComesBackAfterTheBrokerStopsJustAsItConnects) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "Paho C's own use-after-free when the broker stops as it connects (see above)";
#endif
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  broker.AddUser("dev-1", "pw-1");
  std::atomic<int> connects{0};
  std::atomic<pid_t> kill_on_connect{0};  // the broker to stop the moment we are connected
  sync::MqttClient* self = nullptr;
  sync::MqttClient::Options o = DeviceOptions(broker, "dev-1", "pw-1");  // the broker keeps the session
  o.max_buffered = 1000;
  o.min_backoff = std::chrono::milliseconds(100);
  o.max_backoff = std::chrono::milliseconds(1000);
  o.on_connected = [&] {
    connects++;
    // As the agent does on every connect: a ping, before anything came back.
    (void)self->Publish("pp/v1/up/dev-1/ping", std::string(300, 'x'),
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    if (pid_t pid = kill_on_connect.exchange(0)) kill(pid, SIGTERM);
  };
  sync::MqttClient client(o, [](auto&, auto&, auto&) {});
  self = &client;
  auto acknowledged = [&] {
    if (!client.connected()) return false;
    auto ack = client.Publish("pp/v1/up/dev-1/ping", "x", "");
    return ack.ok() && ack->Wait(std::chrono::milliseconds(500)).ok();
  };
  for (int round = 0; round < 6; ++round) {
    const int before = connects;
    if (round > 0) broker.Start();
    std::ifstream pidf(broker.dir() + "/mosquitto.pid");
    pid_t pid = 0;
    ASSERT_TRUE(pidf >> pid);
    kill_on_connect = pid;  // stopped from the connected callback: within a millisecond of the CONNACK
    if (round == 0) client.Start();
    ASSERT_TRUE(test::Eventually([&] { return connects > before; }, seconds(30)))
        << "round " << round << ": never reconnected\nmosquitto's log:\n" << broker.Log();
    broker.Stop();  // waits until it is gone and its port is free
  }
  broker.Start();
  ASSERT_TRUE(test::Eventually(acknowledged, seconds(40)))
      << "no publish acknowledged after the last restart\nmosquitto's log:\n" << broker.Log();
}

// connected() says a connection is ready, not merely up: Paho's own flag
// turns true before the client has asked for its subscriptions and run
// on_connected, and a device agent that sent in that gap pinged before it
// had heard of the connection, then forgot the ping when it did, and
// dropped the answer as unasked for (pp-sim logged it for about one device
// in a hundred). Here on_connected looks: never ready from inside it, ready
// right after, not ready while the broker is away, and the same again on the
// reconnect.
TEST(MqttClient, IsConnectedOnlyOnceItsConnectionIsReady) {
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  broker.AddUser("dev-r", "pw-r");
  sync::MqttClient* self = nullptr;
  std::atomic<int> connects{0}, ready_inside{0};
  sync::MqttClient::Options o = DeviceOptions(broker, "dev-r", "pw-r");
  o.min_backoff = std::chrono::milliseconds(100);
  o.max_backoff = std::chrono::milliseconds(500);
  o.on_connected = [&] {
    if (self->connected()) ready_inside++;
    connects++;
  };
  sync::MqttClient client(o, [](auto&, auto&, auto&) {});
  self = &client;
  client.Start();  // the broker reloads its password file asynchronously: retried until it takes
  ASSERT_TRUE(test::Eventually([&] { return connects >= 1; }, seconds(20))) << broker.Log();
  EXPECT_TRUE(test::Eventually([&] { return client.connected(); }, seconds(5)));
  broker.Stop();
  EXPECT_TRUE(test::Eventually([&] { return !client.connected(); }, seconds(10)));
  broker.Start();
  ASSERT_TRUE(test::Eventually([&] { return connects >= 2; }, seconds(30))) << broker.Log();
  EXPECT_TRUE(test::Eventually([&] { return client.connected(); }, seconds(5)));
  EXPECT_EQ(ready_inside, 0) << "connected() was true before on_connected had returned";
}

// A device catches up with the hub when the broker no longer had its
// session (its queue of down messages is gone): the client reports the
// CONNACK's "session present". The second connect also proves that the
// session expiry reaches the broker: without it the broker ends the
// session on disconnect (as it did under ASan while the connect options
// carried a dangling pointer to it; see ConnectOnce).
TEST(MqttClient, SaysWhetherTheBrokerKeptItsSession) {
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  broker.AddUser("dev-s", "pw-s");
  // Drops the broker's session for dev-s, as when it expires: a clean start.
  auto drop_session = [&] {
    sync::MqttClient clean(sync::MqttClient::CleanSession(broker.uri(), "dev-s", "dev-s", "pw-s", {}, 100),
                           [](auto&, auto&, auto&) {});
    return clean.Connect(seconds(2)).ok();
  };
  // Also waits until the broker has reloaded its password file after
  // AddUser (asynchronous).
  ASSERT_TRUE(test::Eventually(drop_session, seconds(20))) << broker.Log();
  sync::MqttClient client(DeviceOptions(broker, "dev-s", "pw-s"), [](auto&, auto&, auto&) {});
  ASSERT_TRUE(client.Connect(seconds(10)).ok());
  EXPECT_FALSE(client.session_kept()) << "a first connect found a session";
  client.Disconnect();
  ASSERT_TRUE(client.Connect(seconds(10)).ok());
  EXPECT_TRUE(client.session_kept()) << "the broker's session was not reported\n" << broker.Log();
  client.Disconnect();
  ASSERT_TRUE(drop_session());
  ASSERT_TRUE(client.Connect(seconds(10)).ok());
  EXPECT_FALSE(client.session_kept()) << "reported a session the broker had dropped";
}

// Paho never sets TCP_NODELAY; without it a QoS 1 PUBACK can wait ~40 ms on
// Nagle and the peer's delayed ACK. The client finds its own socket among
// the process's others (here a second client's and an unrelated connection
// that must be left alone) and sets it.
TEST(MqttClient, ItsConnectionToTheBrokerHasNagleOff) {
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  // An unrelated TCP connection of this process, to a listener of its own.
  int listener = socket(AF_INET, SOCK_STREAM, 0), other = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ASSERT_EQ(connect(other, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);

  std::vector<std::unique_ptr<sync::MqttClient>> clients;
  std::atomic<int> connected{0};
  for (std::string id : {"dev-a", "dev-b"}) {
    broker.AddUser(id, id + "-pw");
    auto o = sync::MqttClient::CleanSession(broker.uri(), id, id, id + "-pw", {}, 100);
    o.on_connected = [&] { connected++; };
    clients.push_back(std::make_unique<sync::MqttClient>(o, [](auto&, auto&, auto&) {}));
    clients.back()->Start();
  }
  ASSERT_TRUE(test::Eventually([&] { return connected == 2; }, seconds(20))) << broker.Log();
  EXPECT_EQ(test::NoDelayOfSockets(0, broker.port()), (std::vector<int>{1, 1}));
  EXPECT_EQ(test::NoDelayOfSockets(0, ntohs(addr.sin_port)), std::vector<int>{0}) << "not ours to change";
  close(other);
  close(listener);
}

// Paho keeps what it allocated for a message (here the traceparent property
// of a publish, held by its Ack) in a record of its own; when the last client
// of a process goes, Paho tears down and, at the next client, starts a new
// record in which the message is no longer found: freeing it later frees
// nothing. The client keeps Paho set up for the process's lifetime
// (KeepPahoSetUp). Only LeakSanitizer sees the difference, so this runs in
// the ASan suite (packaging/test.sh); it failed there without the fix.
TEST(MqttClient, WhatPahoAllocatedForAPublishIsFreedAfterItsClientHasGone) {
#if !defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "needs LeakSanitizer: runs in the ASan build (packaging/test.sh)";
#else
  test::Broker broker;
  ASSERT_GT(broker.port(), 0);
  broker.AddUser("dev-l", "pw-l");
  std::optional<sync::MqttClient::Ack> ack;
  {
    sync::MqttClient first(sync::MqttClient::CleanSession(broker.uri(), "dev-l", "dev-l", "pw-l", {}, 100),
                           [](auto&, auto&, auto&) {});
    ASSERT_TRUE(test::Eventually([&] { return first.Connect(seconds(2)).ok(); }, seconds(20))) << broker.Log();
    auto published = first.Publish("pp/v1/up/dev-l/post", "{}", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    ASSERT_TRUE(published.ok());
    ack = *published;
    ASSERT_TRUE(ack->Wait(seconds(10)).ok());
  }
  sync::MqttClient second(sync::MqttClient::CleanSession(broker.uri(), "dev-m", "dev-m", "pw-m", {}, 100),
                          [](auto&, auto&, auto&) {});
  ack.reset();
  EXPECT_EQ(__lsan_do_recoverable_leak_check(), 0) << "LeakSanitizer's report is above";
#endif
}

}  // namespace
}  // namespace pp
