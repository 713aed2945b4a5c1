#include "sync/broker_admin.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <vector>

extern char** environ;

namespace pp::sync {
namespace {

Status RunMosquittoPasswd(std::vector<std::string> argv, const std::string& file) {
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0)
    return Error::Unavailable("cannot run mosquitto_passwd (is mosquitto installed?)");
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return Error::Internal("mosquitto_passwd failed for " + file);
  return OkStatus();
}

// mosquitto reloads its password file on SIGHUP.
Status ReloadBroker(const std::string& dir) {
  std::ifstream in(dir + "/mosquitto.pid");
  pid_t broker = 0;
  if (!(in >> broker) || broker <= 0 || ::kill(broker, SIGHUP) != 0)
    return Error::Unavailable("broker in " + dir + " is not running; the user takes effect at its next start");
  return OkStatus();
}

// Several tools may add users to one broker at once (two simulators, the
// device CLI): each holds this lock from reading the password file to
// appending to it, or one's rewrite loses the other's users.
class PasswdLock {
 public:
  explicit PasswdLock(const std::string& dir) : fd_(::open((dir + "/passwd.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600)) {
    if (fd_ >= 0) ::flock(fd_, LOCK_EX);
  }
  ~PasswdLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }
  PasswdLock(const PasswdLock&) = delete;
  PasswdLock& operator=(const PasswdLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  int fd_;
};

}  // namespace

Status AddBrokerUser(const std::string& dir, const std::string& user, const std::string& password) {
  PasswdLock lock(dir);
  if (!lock.held()) return Error::Unavailable("cannot lock " + dir + "/passwd.lock");
  PP_RETURN_IF_ERROR(RunMosquittoPasswd({"mosquitto_passwd", "-b", dir + "/passwd", user, password}, dir + "/passwd"));
  return ReloadBroker(dir);
}

Status AddNewBrokerUsers(const std::string& dir, const std::vector<std::pair<std::string, std::string>>& users) {
  const std::string passwd = dir + "/passwd";
  PasswdLock lock(dir);
  if (!lock.held()) return Error::Unavailable("cannot lock " + dir + "/passwd.lock");
  std::set<std::string> taken;
  {
    std::ifstream in(passwd);
    for (std::string line; std::getline(in, line);) taken.insert(line.substr(0, line.find(':')));
  }
  for (const auto& [user, password] : users) {  // all checked before anything is written
    if (user.empty() || user.find_first_of(":\n") != std::string::npos ||
        password.find('\n') != std::string::npos)
      return Error::Invalid("broker user \"" + user + "\": names may not be empty or hold ':' or newlines");
    if (!taken.insert(user).second) return Error{Code::kAlreadyExists, "broker user " + user + " exists", {}, {}};
  }
  // mosquitto_passwd -U hashes a file of "user:password" lines in place.
  const std::string plain = passwd + ".new";
  {
    std::ofstream out(plain, std::ios::trunc);
    for (const auto& [user, password] : users) out << user << ':' << password << '\n';
    if (!out) return Error::Internal("cannot write " + plain);
  }
  Status hashed = RunMosquittoPasswd({"mosquitto_passwd", "-U", plain}, plain);
  if (hashed.ok()) {
    std::ifstream in(plain);
    std::ofstream out(passwd, std::ios::app);
    out << in.rdbuf();
    if (!out) hashed = Error::Internal("cannot append to " + passwd);
  }
  std::remove(plain.c_str());
  PP_RETURN_IF_ERROR(hashed);
  return ReloadBroker(dir);
}

}  // namespace pp::sync
