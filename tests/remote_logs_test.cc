// Remote logs end to end: an agent whose state directory is not cairnd's (as on another
// host: only the token and cairnd's address copied over) runs a job; its output reaches
// `cairn logs` through the heartbeats, all of it (3 MB, several heartbeats' worth) and
// before the job is seen to end. Agents that share cairnd's state directory ship
// nothing.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "tests/process_util.h"

namespace cairn {
namespace {
namespace fs = std::filesystem;
using testing::BinDir;

std::string Slurp(const fs::path& p) {
  std::ifstream f(p);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

class RemoteLogsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_remote_logs_{}", ::getpid());
    fs::remove_all(dir_);
    remote_ = dir_ / "remote-host";
    fs::create_directories(remote_);
    auto up = Cli({"up", "--agents", "1", "--cpus-per-agent", "2"});
    ASSERT_EQ(up.exit_code, 0) << up.output;
  }

  void TearDown() override {
    if (agent_ > 0) {
      ::kill(agent_, SIGTERM);
      bool gone = false;
      for (int i = 0; i < 100 && !gone; ++i) {  // 10 s
        gone = ::waitpid(agent_, nullptr, WNOHANG) == agent_;
        if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (!gone) {
        ::kill(agent_, SIGKILL);
        ::waitpid(agent_, nullptr, 0);
      }
    }
    auto down = Cli({"down"});
    EXPECT_EQ(down.exit_code, 0) << down.output;
    auto left = testing::ProcessesMentioning(dir_.string());
    for (int i = 0; i < 50 && !left.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      left = testing::ProcessesMentioning(dir_.string());
    }
    EXPECT_TRUE(left.empty()) << left.size() << " process(es) left";
    for (pid_t p : left) ::kill(p, SIGKILL);
    if (!HasFailure()) fs::remove_all(dir_);
  }

  testing::CommandResult Cli(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"--state-dir", dir_.string()});
    args.insert(args.begin(), BinDir() + "/cairn");
    return testing::RunCommand(args, {}, std::chrono::seconds(120));
  }

  // Starts an agent on "another host": its own state directory, holding only copies of
  // the cluster token and cairnd's address.
  void StartRemoteAgent() {
    for (const char* f : {"token", "cairnd.addr"}) {
      fs::copy_file(dir_ / f, remote_ / f, fs::copy_options::overwrite_existing);
    }
    fs::permissions(remote_ / "token", fs::perms::owner_read | fs::perms::owner_write);
    const std::string agent = BinDir() + "/cairn-agent";
    const std::string state = remote_.string();
    const std::string log = (remote_ / "agent.log").string();
    agent_ = ::fork();
    if (agent_ == 0) {
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execl(agent.c_str(), agent.c_str(), "--state-dir", state.c_str(), "--node-id", "far-away",
              "--cpus", "2", "--gpus", "0", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ASSERT_GT(agent_, 0);
  }

  fs::path dir_, remote_;
  pid_t agent_ = -1;
};

TEST_F(RemoteLogsTest, OutputOfARemoteAgentsRunReachesCairnLogsBeforeTheJobEnds) {
  StartRemoteAgent();
  bool registered = false;
  for (int i = 0; i < 100 && !registered; ++i) {  // 10 s
    registered = Cli({"nodes"}).output.find("far-away") != std::string::npos;
    if (!registered) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(registered) << Slurp(remote_ / "agent.log");
  // Two ranks of 2 CPUs: one on each node. Each prints a marker and 3 MB (several
  // heartbeats' worth of shipping) and ends at once.
  auto s = Cli({"submit", "--ranks", "2", "--cpus-per-rank", "2", "--name", "remote", "--",
                "/bin/sh", "-c",
                "echo first-line-of-$RANK; head -c 3000000 /dev/zero | tr '\\0' x; echo; "
                "echo last-line-of-$RANK"});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const std::string id = s.output.substr(0, s.output.find('\n'));
  auto w = Cli({"wait", id, "--timeout", "60s"});
  ASSERT_EQ(w.exit_code, 0) << w.output << Slurp(remote_ / "agent.log");
  // One of the two ranks ran far away.
  auto status = Cli({"status", id, "--json"});
  ASSERT_NE(status.output.find("\"far-away\""), std::string::npos) << status.output;
  for (int rank : {0, 1}) {
    auto logs = Cli({"logs", id, "--rank", std::to_string(rank)});
    EXPECT_EQ(logs.exit_code, 0) << logs.output.substr(0, 300);
    EXPECT_NE(logs.output.find(fmt::format("first-line-of-{}", rank)), std::string::npos)
        << "rank " << rank;
    EXPECT_NE(logs.output.find(fmt::format("last-line-of-{}", rank)), std::string::npos)
        << "rank " << rank << ": the end of its output did not arrive with the job's end";
    EXPECT_GE(logs.output.size(), 3000000u) << "rank " << rank;
  }
  // The remote agent wrote its own copy in its own state directory, and said it ships.
  bool own_copy = false;
  for (const auto& e : fs::recursive_directory_iterator(remote_ / "logs")) {
    own_copy = own_copy || e.path().filename() == "rank-0.log" ||
               e.path().filename() == "rank-1.log";
  }
  EXPECT_TRUE(own_copy);
  EXPECT_NE(Slurp(remote_ / "agent.log").find("run logs travel with the heartbeats"),
            std::string::npos);
  EXPECT_EQ(Slurp(dir_ / "agent-0.log").find("run logs travel with the heartbeats"),
            std::string::npos)
      << "an agent sharing cairnd's state directory ships its logs";
}

}  // namespace
}  // namespace cairn
