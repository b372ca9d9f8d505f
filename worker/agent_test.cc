#include "worker/agent.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>

#include <fmt/format.h>

namespace cairn::worker {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / fmt::format("agent-test-{}", ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    auto a = Agent::Create(AgentConfig{.node_id = "n1",
                                       .state_dir = dir_.string(),
                                       .rsh_path = "/nonexistent/cairn-rsh",
                                       .progress_path = (dir_ / "progress.sock").string(),
                                       .gpus = {}});
    ASSERT_TRUE(a.has_value()) << a.error().ToString();
    agent_ = std::move(*a);
  }
  void TearDown() override {
    if (other_ > 0) {
      ::kill(other_, SIGKILL);
      ::waitpid(other_, nullptr, 0);
    }
    if (agent_) agent_->StopAll(std::chrono::milliseconds(0));
    agent_.reset();
    fs::remove_all(dir_);
  }

  // One env-mode rank of job-1's `attempt` on this node.
  static void AddRun(proto::HeartbeatReply& reply, uint32_t attempt, bool stop = false,
                     bool ignores_sigterm = false) {
    auto* o = reply.add_runs();
    o->set_run_id(fmt::format("job-1.{}", attempt));
    o->set_job_id("job-1");
    o->set_attempt(attempt);
    o->set_world_size(1);
    o->add_ranks(0);
    o->set_head(true);
    o->set_stop(stop);
    auto* h = o->add_hosts();
    h->set_node_id("n1");
    h->set_slots(1);
    o->mutable_spec()->set_launcher("env");
    if (ignores_sigterm) {
      for (const char* a : {"/bin/sh", "-c", "trap '' TERM; sleep 60 & wait; wait"}) {
        o->mutable_spec()->add_command(a);
      }
    } else {
      o->mutable_spec()->add_command("/bin/sleep");
      o->mutable_spec()->add_command("60");
    }
  }
  static proto::HeartbeatReply Orders() {
    proto::HeartbeatReply reply;
    reply.set_orders_version(1);
    AddRun(reply, 1);
    return reply;
  }
  // Whether the report shows a running process of `run_id`.
  bool Running(const std::string& run_id) {
    const proto::HeartbeatRequest hb = agent_->Report(0);
    for (const auto& r : hb.runs()) {
      if (r.run_id() != run_id) continue;
      for (const auto& p : r.processes()) {
        if (p.running()) return true;
      }
    }
    return false;
  }

  // Sends one progress datagram as a rank would (runtime/progress.h).
  void SendProgress(uint32_t rank, pid_t pid, bool exiting = false, uint64_t ckpt_step = 0) {
    proto::RankProgress p;
    p.set_run_id("job-1");
    p.set_rank(rank);
    p.set_pid(static_cast<uint32_t>(pid));
    p.set_step(1);
    p.set_exiting(exiting);
    if (ckpt_step > 0) {
      p.set_ckpt_step(ckpt_step);
      p.set_ckpt_head(std::string(64, 'c'));
    }
    const std::string bytes = p.SerializeAsString();
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = (dir_ / "progress.sock").string();
    std::memcpy(addr.sun_path, path.data(), path.size());
    const ssize_t n = ::sendto(fd, bytes.data(), bytes.size(), 0,
                               reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
    ::close(fd);
    ASSERT_EQ(n, static_cast<ssize_t>(bytes.size())) << std::strerror(errno);
  }

  // Starts job-1's run, then a "rank 1" the agent did not spawn (other_: like an
  // mpi-mode rank, no SIGCHLD of it reaches the agent), which reports progress once.
  void StartRunWithForeignRank() {
    agent_->ApplyOrders(Orders());
    agent_->Step();  // starts the run
    other_ = ::fork();
    ASSERT_GE(other_, 0);
    if (other_ == 0) {
      ::pause();
      ::_exit(0);
    }
    SendProgress(1, other_);
    agent_->WaitForWork(std::chrono::milliseconds(0));
    agent_->Step();  // reads the report, watches the rank
  }

  fs::path dir_;
  std::unique_ptr<Agent> agent_;
  pid_t other_ = -1;
};

// In mpi mode a rank is mpirun's or orted's child, not the agent's: no SIGCHLD reaches
// the agent when it is killed. The pidfd the agent opened on its first progress report
// wakes the agent at once, and the rank is reported as died.
TEST_F(AgentTest, KilledRankThatIsNotTheAgentsChildWakesTheAgentAndIsReportedDead) {
  StartRunWithForeignRank();
  const proto::HeartbeatRequest report1 = agent_->Report(0);
  for (const auto& r : report1.runs()) {
    for (const auto& p : r.processes()) {
      EXPECT_TRUE(p.running()) << p.name() << " " << p.how();
    }
  }

  ASSERT_EQ(::kill(other_, SIGKILL), 0);
  const auto t0 = Clock::now();
  agent_->WaitForWork(std::chrono::seconds(60));
  // Woken by the rank's end, not by the 60 s timeout (a generous bound for a loaded
  // machine: the wake itself takes microseconds).
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(30));
  EXPECT_TRUE(agent_->Step());
  bool reported = false;
  const proto::HeartbeatRequest report2 = agent_->Report(0);
  for (const auto& r : report2.runs()) {
    for (const auto& p : r.processes()) {
      if (p.rank() == 1) {
        reported = true;
        EXPECT_FALSE(p.running());
        EXPECT_EQ(p.how(), "died without reporting an exit (killed or crashed)");
      }
    }
  }
  EXPECT_TRUE(reported) << "the killed rank is not in the report";
}

// A rank that said it exits on its own is not watched: its end is no failure.
TEST_F(AgentTest, RankThatReportedItsExitIsNotReportedDead) {
  StartRunWithForeignRank();
  SendProgress(1, other_, /*exiting=*/true);
  agent_->Step();
  ASSERT_EQ(::kill(other_, SIGKILL), 0);
  ::waitpid(other_, nullptr, 0);
  other_ = -1;
  agent_->WaitForWork(std::chrono::milliseconds(200));
  agent_->Step();
  const proto::HeartbeatRequest report3 = agent_->Report(0);
  for (const auto& r : report3.runs()) {
    for (const auto& p : r.processes()) {
      EXPECT_NE(p.rank(), 1) << "reported: " << p.how();
    }
  }
}

// The next attempt starts as soon as nothing of the previous one is left on the node,
// in the same round, while cairnd's orders still list the stopped attempt (it drops it
// only after the agent's next report: waiting for that cost a round trip per restart).
TEST_F(AgentTest, NextAttemptStartsOnceThePreviousIsGoneWhileStillInTheOrders) {
  agent_->ApplyOrders(Orders());
  agent_->Step();
  ASSERT_TRUE(Running("job-1.1"));
  proto::HeartbeatReply stop;
  stop.set_orders_version(2);
  AddRun(stop, 1, /*stop=*/true);
  agent_->ApplyOrders(stop);
  agent_->Step();  // grace 0: killed, and checked gone, in this round
  ASSERT_FALSE(Running("job-1.1"));
  proto::HeartbeatReply next;
  next.set_orders_version(3);
  AddRun(next, 1, /*stop=*/true);
  AddRun(next, 2);
  agent_->ApplyOrders(next);
  agent_->Step();
  EXPECT_TRUE(Running("job-1.2"));
}

// While a process of the previous attempt is left, the next one waits.
TEST_F(AgentTest, NextAttemptWaitsWhileThePreviousIsStopping) {
  agent_->ApplyOrders(Orders());
  agent_->Step();
  ASSERT_TRUE(Running("job-1.1"));
  proto::HeartbeatReply next;
  next.set_orders_version(2);
  AddRun(next, 1, /*stop=*/true);
  next.mutable_runs(0)->set_stop_grace_ms(60'000);  // SIGTERM ends sleep well before
  AddRun(next, 2);
  // Same orders, both at once: attempt 1 gets SIGTERM this round and attempt 2 must not
  // start before attempt 1's process is seen gone.
  agent_->ApplyOrders(next);
  agent_->Step();
  EXPECT_FALSE(Running("job-1.2"));
  const auto t0 = Clock::now();
  for (int i = 0; i < 600 && !Running("job-1.2") && Clock::now() - t0 < std::chrono::seconds(60);
       ++i) {
    agent_->WaitForWork(std::chrono::milliseconds(100));
    agent_->Step();
  }
  EXPECT_TRUE(Running("job-1.2"));
  EXPECT_FALSE(Running("job-1.1"));
}

// A checkpoint rank 0 committed while its attempt was being stopped (another rank died
// first) still reaches cairnd: it is the job's newest, which the next attempt is handed.
TEST_F(AgentTest, StoppingRunStillTakesItsRanksCheckpointReports) {
  proto::HeartbeatReply start;
  start.set_orders_version(1);
  AddRun(start, 1, /*stop=*/false, /*ignores_sigterm=*/true);
  agent_->ApplyOrders(start);
  agent_->Step();
  ASSERT_TRUE(Running("job-1.1"));
  other_ = ::fork();
  ASSERT_GE(other_, 0);
  if (other_ == 0) {
    ::pause();
    ::_exit(0);
  }
  proto::HeartbeatReply stop;
  stop.set_orders_version(2);
  AddRun(stop, 1, /*stop=*/true, /*ignores_sigterm=*/true);
  stop.mutable_runs(0)->set_stop_grace_ms(60'000);
  agent_->ApplyOrders(stop);
  agent_->Step();  // stopping: SIGTERM sent, ignored: the grace runs
  ASSERT_TRUE(Running("job-1.1"));
  SendProgress(1, other_, /*exiting=*/false, /*ckpt_step=*/100);
  agent_->Step();
  uint64_t reported = 0;
  const proto::HeartbeatRequest hb = agent_->Report(0);
  for (const auto& r : hb.runs()) {
    for (const auto& p : r.progress()) {
      if (p.rank() == 1) reported = p.ckpt_step();
    }
  }
  EXPECT_EQ(reported, 100u) << "the stopping attempt's last checkpoint report was dropped";
}

}  // namespace
}  // namespace cairn::worker
