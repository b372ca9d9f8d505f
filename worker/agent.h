// The node agent's run handling: turns cairnd's orders into supervised processes and the
// processes' fate into run reports.
//
// Promise: each run (attempt) ordered for this node is started once: in `env` mode one
// process per local rank with the torchrun contract (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT) plus CAIRN_RANK,
// CAIRN_WORLD_SIZE, CAIRN_LOCAL_RANK, CAIRN_RUN_ID (the job id: stable across attempts),
// CAIRN_JOB_ID, CAIRN_ATTEMPT, CAIRN_PROGRESS_SOCKET, CAIRN_EXPECTED_HEAD, CAIRN_CKPT_DIR
// and CUDA_VISIBLE_DEVICES (the node's PCI-order indices of the GPUs cairnd assigned,
// with CUDA_DEVICE_ORDER=PCI_BUS_ID so CUDA numbers them alike); in `mpi` mode the gang's
// first node runs mpirun over every node of the gang: mpirun starts that node's ranks
// itself, and for every other node asks cairn-rsh, so that node's Open MPI daemon is
// started by that node's agent (Exec orders) and supervised like a rank; the PML is ob1
// where the node has no fabric and the job's env does not choose one; also
// when the agent itself runs inside a SLURM job, mpirun neither launches its daemons
// with srun nor takes its hosts from the allocation (worker/mpirun_command.h). A run
// that leaves the orders, or is ordered to stop, is stopped as a whole process tree:
// SIGTERM, the grace period, SIGKILL, and a check that nothing of it is left. A new
// attempt of a job waits until every process of its previous attempt on this node is
// gone. Rank progress datagrams (runtime/progress.h) are kept per rank and reported; a
// rank that reported progress is watched through a pidfd, so its death wakes the agent at
// once also when it is not the agent's child (mpi mode), and is reported as died unless
// it reported its own exit. Reports of a stopping run still count until nothing of it is
// left (read once more then): a checkpoint committed just before the end is the job's
// newest, and the next attempt must be handed it.
// Logs: <state dir>/logs/<job>/attempt-<n>/ rank-<r>.log (env), mpirun.log,
// orted-<node>.log (on the gang's other nodes) and rank.<r>/stdout (mpi, written by
// mpirun's output forwarding).
// When cairnd does not share the node's state directory, the new bytes of these files
// travel with the heartbeats (log_shipper.h), and an exit is reported once the output
// before it has been delivered (waiting at most 10 s), so the job's end never comes
// before its last lines.
//
// Threading: Report(), ApplyOrders() and Fence() may be called from any thread;
// Step() from the one thread that owns the Supervisor (it spawns and kills). A mutex
// guards the shared state.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "proto/cairn.pb.h"
#include "worker/gpus.h"
#include "worker/log_shipper.h"
#include "worker/supervisor.h"

namespace cairn::worker {

struct AgentConfig {
  std::string node_id;
  std::string state_dir;
  std::string rsh_path;       // cairn-rsh, mpirun's remote shell
  std::string progress_path;  // the Unix datagram socket ranks report to
  // The GPUs this node registered, in registration order: cairnd assigns positions in
  // this list, and a rank's CUDA_VISIBLE_DEVICES gets their concrete indices.
  std::vector<GpuDevice> gpus;
};

class Agent {
 public:
  static Result<std::unique_ptr<Agent>> Create(AgentConfig config);
  ~Agent();

  // The next heartbeat: every run this node knows, with a fresh sequence number.
  proto::HeartbeatRequest Report(uint32_t wait_ms);
  // The orders of a heartbeat reply (the whole set: runs missing from it are stopped).
  void ApplyOrders(const proto::HeartbeatReply& reply);
  // Cut off from cairnd for (nearly) the node timeout: stop every run at once (cairnd
  // restarts them elsewhere) and start nothing until orders arrive again.
  void Fence();

  // One round of supervision: reap, read progress, start and stop runs. Returns true
  // when something cairnd should hear about at once happened (an exit, a launch).
  bool Step();
  // Waits up to `d` for new orders or a child's exit (returns at once if one came).
  void WaitForWork(std::chrono::milliseconds d);
  // Wakes WaitForWork on SIGCHLD (installs the handler; call from the supervising
  // thread, with SIGCHLD blocked in every other thread).
  void WakeOnChildExit();
  // Stops every run (agent shutdown), each within its grace.
  void StopAll(std::chrono::milliseconds grace);
  std::size_t live_runs();
  // The runs' log files, for cairnd when it does not share this node's state directory
  // (Report adds their new bytes; the caller marks them Delivered once answered).
  LogShipper& log_shipper() { return shipper_; }

 private:
  struct Proc {
    pid_t pid = 0;
    std::string name;
    int rank = -1;
    bool primary = false;
    bool running = true;
    int exit_code = 0;
    int signal = 0;
    std::string how;  // set when the agent did not see an exit status
  };
  struct LocalRun {
    proto::LaunchOrder order;
    bool started = false;
    std::string launch_error;
    std::vector<Proc> procs;
    std::set<std::string> execs_started;
    std::map<uint32_t, proto::RankProgress> progress;
    bool stopping = false;
    std::chrono::steady_clock::time_point kill_at;
    bool killed = false;
    bool in_orders = true;
  };

  Agent(AgentConfig config, std::unique_ptr<Supervisor> sup, int progress_fd)
      : config_(std::move(config)),
        sup_(std::move(sup)),
        progress_fd_(progress_fd),
        shipper_(config_.state_dir + "/logs") {}
  std::vector<std::string> BaseEnv(const proto::LaunchOrder& o) const;
  std::string LogDir(const proto::LaunchOrder& o) const;
  bool Start(LocalRun& run);
  bool StartExecs(LocalRun& run);
  void BeginStop(LocalRun& run, int64_t grace_ms);
  void ReadProgress();
  bool FindVanishedRanks(LocalRun& run);
  // Wakes WaitForWork when `pid` (a rank that reported progress) ends, through a pidfd:
  // mpi-mode ranks are not the agent's children, so no SIGCHLD tells it.
  void WatchRank(pid_t pid);
  bool PreviousAttemptAlive(const LocalRun& run);

  AgentConfig config_;
  std::unique_ptr<Supervisor> sup_;
  int progress_fd_;

  std::mutex mu_;
  int wake_[2] = {-1, -1};  // pipe: orders or SIGCHLD wake the supervising thread
  void Wake();
  bool orders_pending_ = false;
  bool fenced_ = false;
  uint64_t orders_version_ = 0;
  uint64_t sequence_ = 0;
  std::map<std::string, proto::LaunchOrder> orders_;  // by run id
  std::map<std::string, LocalRun> runs_;              // by run id
  std::set<std::string> finished_;                    // run ids never to start again
  LogShipper shipper_;
  static constexpr std::chrono::seconds kHoldExitForLogs{10};
  std::map<std::string, std::chrono::steady_clock::time_point> exit_held_since_;  // by run id
  static constexpr std::size_t kMaxWatchedRanks = 4096;
  std::map<pid_t, int> rank_pidfds_;  // live ranks reporting progress -> their pidfd
};

}  // namespace cairn::worker
