// Administration of the project's own mosquitto (a folder made by
// packaging/broker.sh): adding a device's broker user.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace pp::sync {

// Adds (or updates) `user` in BROKER_DIR/passwd with mosquitto_passwd and
// makes the running broker reload it (SIGHUP to the pid in mosquitto.pid).
Status AddBrokerUser(const std::string& broker_dir, const std::string& user,
                     const std::string& password);

// Both hold an exclusive lock (BROKER_DIR/passwd.lock) while they change the
// file, so that several tools may add users to one broker at once.
//
// Adds many new users at once (a simulated city's devices): one
// mosquitto_passwd run hashes them all, one SIGHUP reloads the broker.
// A name already in the file is refused (use AddBrokerUser to change a
// password). Returns once the file is written; the broker reloads it
// asynchronously, so a client's first connect may still be refused.
Status AddNewBrokerUsers(const std::string& broker_dir,
                         const std::vector<std::pair<std::string, std::string>>& users);

}  // namespace pp::sync
