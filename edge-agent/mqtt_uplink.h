// The agent's Uplink over the project's MQTT client (Paho C++): what
// pp-agent, pp-agent-bench and pp-sim connect an Agent with.
#pragma once

#include "edge-agent/agent.h"
#include "sync/mqtt_client.h"

namespace pp::agent {

class MqttUplink final : public Uplink {
 public:
  explicit MqttUplink(sync::MqttClient& client) : client_(client) {}
  bool Connected() const override { return client_.connected(); }
  bool SessionKept() const override { return client_.session_kept(); }
  Result<AckWait> Publish(const std::string& topic, const std::string& payload,
                          const std::string& traceparent) override {
    PP_ASSIGN_OR_RETURN(auto ack, client_.Publish(topic, payload, traceparent));
    return AckWait([ack](std::chrono::milliseconds t) { return ack.Wait(t); });
  }

 private:
  sync::MqttClient& client_;
};

}  // namespace pp::agent
