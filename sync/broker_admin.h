// Administration of the project's own mosquitto (a folder made by
// packaging/broker.sh): adding a device's broker user.
#pragma once

#include <string>

#include "common/error.h"

namespace pp::sync {

// Adds (or updates) `user` in BROKER_DIR/passwd with mosquitto_passwd and
// makes the running broker reload it (SIGHUP to the pid in mosquitto.pid).
Status AddBrokerUser(const std::string& broker_dir, const std::string& user,
                     const std::string& password);

}  // namespace pp::sync
