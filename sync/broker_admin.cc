#include "sync/broker_admin.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <fstream>
#include <vector>

extern char** environ;

namespace pp::sync {

Status AddBrokerUser(const std::string& dir, const std::string& user, const std::string& password) {
  std::vector<std::string> argv{"mosquitto_passwd", "-b", dir + "/passwd", user, password};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0)
    return Error::Unavailable("cannot run mosquitto_passwd (is mosquitto installed?)");
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return Error::Internal("mosquitto_passwd failed for " + dir + "/passwd");
  // mosquitto reloads its password file on SIGHUP.
  std::ifstream in(dir + "/mosquitto.pid");
  pid_t broker = 0;
  if (!(in >> broker) || broker <= 0 || ::kill(broker, SIGHUP) != 0)
    return Error::Unavailable("broker in " + dir + " is not running; the user takes effect at its next start");
  return OkStatus();
}

}  // namespace pp::sync
