// Runs a training job (directly or under mpirun) the way the orchestrator would: with a
// progress socket in its environment, watching the ranks' progress reports, and able to
// send a signal to one rank once it has reported a given step. Every process the run
// started is killed when the run ends, also when a test assertion fails midway.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/io.h"
#include "proto/cairn.pb.h"
#include "tests/process_util.h"

namespace cairn::testing {

struct Interruption {
  int rank = 0;          // which rank gets the signal
  uint64_t at_step = 0;  // once it has reported this step (or a later one)
  int signal = SIGKILL;
};

struct RunResult {
  int exit_code = -1;           // -1: killed by a signal or timed out
  std::string output;           // stdout and stderr
  bool interrupted = false;     // the interruption was delivered
  uint64_t interrupted_at = 0;  // the step the rank had reported when signalled
  uint64_t max_step = 0;        // highest step any rank reported
  bool timed_out = false;
};

class TrainingRun {
 public:
  // ranks == 0: run argv directly (one process); else under mpirun -np ranks.
  static RunResult Run(std::vector<std::string> argv, int ranks,
                       std::optional<Interruption> interruption,
                       std::map<std::string, std::string> env = {},
                       std::chrono::seconds timeout = std::chrono::seconds(180)) {
    TrainingRun run;
    return run.Go(std::move(argv), ranks, interruption, std::move(env), timeout);
  }

 private:
  ~TrainingRun() { Cleanup(); }

  RunResult Go(std::vector<std::string> argv, int ranks, std::optional<Interruption> intr,
               std::map<std::string, std::string> env, std::chrono::seconds timeout) {
    RunResult res;
    sock_path_ = (std::filesystem::temp_directory_path() /
                  ("cairn_progress_" + io::RandomSuffix() + ".sock"))
                     .string();
    sock_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, sock_path_.c_str(), sizeof(addr.sun_path) - 1);
    if (sock_ < 0 || ::bind(sock_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      res.output = "cannot bind progress socket";
      return res;
    }
    env["CAIRN_PROGRESS_SOCKET"] = sock_path_;
    std::vector<std::string> full;
    if (ranks > 0) {
      full = {CAIRN_TEST_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
              "--mca", "btl", "self,vader", "-np", std::to_string(ranks)};
      // mpirun passes only the variables it is told to (-x) to the ranks.
      for (const auto& [k, v] : env) {
        full.push_back("-x");
        full.push_back(k);
      }
    }
    full.insert(full.end(), argv.begin(), argv.end());

    // In a process group of its own: Cleanup() kills the group.
    const SpawnedProcess child = SpawnWithOutput(full, env, /*own_group=*/true,
                                                 /*search_path=*/true);
    if (child.pid < 0) {
      res.output = "spawn failed: " + full[0];
      return res;
    }
    pid_ = child.pid;
    out_fd_ = child.output;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    char buf[8192];
    bool out_open = true;
    while (out_open) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        res.timed_out = true;
        res.output += "\n[timed out]";
        break;
      }
      pollfd p[2] = {{out_fd_, POLLIN, 0}, {sock_, POLLIN, 0}};
      if (::poll(p, 2, static_cast<int>(std::min<int64_t>(left.count(), 500))) <= 0) continue;
      if (p[1].revents & POLLIN) {
        ssize_t n;
        while ((n = ::recv(sock_, buf, sizeof buf, 0)) > 0) {
          cairn::proto::RankProgress msg;
          if (!msg.ParseFromArray(buf, static_cast<int>(n))) continue;
          rank_pids_[static_cast<int>(msg.rank())] = static_cast<pid_t>(msg.pid());
          res.max_step = std::max<uint64_t>(res.max_step, msg.step());
          if (intr && !res.interrupted && static_cast<int>(msg.rank()) == intr->rank &&
              msg.step() >= intr->at_step) {
            ::kill(static_cast<pid_t>(msg.pid()), intr->signal);
            res.interrupted = true;
            res.interrupted_at = msg.step();
          }
        }
      }
      if (p[0].revents & (POLLIN | POLLHUP)) {
        ssize_t n = ::read(out_fd_, buf, sizeof buf);
        if (n <= 0) {
          out_open = false;
        } else {
          res.output.append(buf, static_cast<std::size_t>(n));
        }
      }
    }
    if (res.timed_out) Cleanup();
    int status = 0;
    if (pid_ > 0 && ::waitpid(pid_, &status, 0) == pid_) {
      res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      pid_ = -1;
      if (!res.timed_out) rank_pids_.clear();  // mpirun reaped its ranks
    }
    return res;
  }

  void Cleanup() {
    if (pid_ > 0) {
      ::kill(-pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    // Ranks that left mpirun's process group (only after a timeout or failed assertion).
    for (auto [rank, pid] : rank_pids_) ::kill(pid, SIGKILL);
    rank_pids_.clear();
    if (out_fd_ >= 0) ::close(out_fd_);
    out_fd_ = -1;
    if (sock_ >= 0) ::close(sock_);
    sock_ = -1;
    if (!sock_path_.empty()) ::unlink(sock_path_.c_str());
    sock_path_.clear();
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int sock_ = -1;
  std::string sock_path_;
  std::map<int, pid_t> rank_pids_;
};

}  // namespace cairn::testing
