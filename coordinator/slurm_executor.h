// The SLURM executor: one attempt of a cairn job run as a SLURM batch job, through
// SLURM's own clients (sbatch, squeue, scontrol, scancel; tested with SLURM 22.05).
//
// Promise: Submit validates the request, writes a batch script `job.sbatch` into the
// request's script directory and submits it with sbatch (resources as sbatch arguments,
// never requeued by SLURM: cairnd decides about the next attempt). The script exports
// exactly the request's variables on top of the submitting process's environment and
// `exec`s one job step: launcher "mpi" runs `srun --mpi=pmix COMMAND`, launcher "env"
// runs `srun --mpi=none COMMAND` with RANK, WORLD_SIZE, LOCAL_RANK (and CAIRN_RANK,
// CAIRN_WORLD_SIZE, CAIRN_LOCAL_RANK) taken from SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID in each task, MASTER_ADDR the allocation's first node and MASTER_PORT;
// the job's exit status is the step's (an MPI program needs "mpi": Open MPI refuses to
// start under a plain srun). Every argument and value is shell-quoted: what the ranks get
// is byte for byte what the request holds. Query reports each job's state from squeue,
// and exit code and signal from `scontrol show job` once the job is final; a job
// slurmctld no longer knows (it forgets finished jobs MinJobAge after they end) is
// kUnknown. Cancel is idempotent: cancelling a finished job succeeds.
//
// State mapping (SLURM -> SlurmJobState):
//   PENDING CONFIGURING REQUEUED REQUEUE_HOLD REQUEUE_FED             -> kPending
//   RUNNING COMPLETING SUSPENDED STOPPED SIGNALING STAGE_OUT RESIZING -> kRunning
//     (COMPLETING: the script ended but processes remain; not final yet)
//   COMPLETED                                                        -> kCompleted
//   FAILED OUT_OF_MEMORY SPECIAL_EXIT                                -> kFailed
//   CANCELLED REVOKED                                                -> kCancelled
//   TIMEOUT DEADLINE                                                 -> kTimeout
//   NODE_FAIL BOOT_FAIL                                              -> kNodeFail
//   PREEMPTED                                                        -> kPreempted
//   anything else, or a job slurmctld does not know                  -> kUnknown
//
// Errors: kInvalidArgument for a bad request or id (nothing is submitted) and for a job
// SLURM refuses (an unknown partition; more CPUs than any node has, where the cluster
// sets EnforcePartLimits; without it such a job pends forever with Reason=PartitionConfig);
// kUnavailable when slurmctld cannot be reached or a client does not answer within the
// timeout (retry later); kFailedPrecondition when a SLURM client is not installed;
// kNotFound when cancelling a job slurmctld does not know.
//
// Finding a submission again (a submitter that died before sbatch answered): FindByName
// lists the jobs slurmctld knows under a job name (pending, running, and finished ones
// for MinJobAge), and SubmittersOf the processes on this host still submitting a given
// batch script (an sbatch, or a wrapper of it, whose arguments name the script). Once no
// such process is left, slurmctld's answer by name is final: the job exists or it never
// will.
//
// Threading: every call blocks until its SLURM client returns, at most `timeout` (the
// coordinator calls it from a worker thread, never from its io_context). The executor
// holds only its options: calls from several threads at once are safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::coord {

struct SlurmExecutorOptions {
  // Directory of sbatch, squeue, scontrol and scancel; empty: looked up in PATH.
  std::string bin_dir;
  // SLURM_CONF for the clients (which cluster); empty: the process's own environment.
  std::string slurm_conf;
  // Longest a client may take; it is killed after (kUnavailable).
  std::chrono::milliseconds timeout{30000};
};

struct SlurmJobRequest {
  std::string name = "cairn";              // --job-name: letters, digits, '.', '_', '-'
  std::vector<std::string> command;        // argv, program first (no shell)
  std::string launcher = "env";            // "mpi" or "env"
  uint32_t ranks = 1;                      // --ntasks
  uint32_t nodes = 0;                      // --nodes (0: SLURM chooses)
  uint32_t ranks_per_node = 0;             // --ntasks-per-node (0: SLURM chooses)
  uint32_t cpus_per_rank = 1;              // --cpus-per-task
  uint32_t gpus_per_rank = 0;              // --gpus-per-task (0: none)
  std::chrono::seconds time_limit{0};      // --time, rounded up to whole minutes (0: none)
  std::string partition;                   // --partition (empty: the default partition)
  std::string workdir;                     // --chdir, absolute (empty: this process's)
  std::map<std::string, std::string> env;  // exported to every rank
  uint16_t master_port = 0;                // env launcher (0: 20000 + job id % 20000)
  std::string script_dir;                  // absolute; created; the script is job.sbatch
  std::string output_path;                 // --output, absolute (empty: script_dir/slurm-%j.out)
};

enum class SlurmJobState {
  kPending,
  kRunning,
  kCompleted,
  kFailed,
  kCancelled,
  kTimeout,
  kNodeFail,
  kPreempted,
  kUnknown,
};

std::string_view SlurmJobStateName(SlurmJobState s);  // "PENDING", ..., "UNKNOWN"
// The mapping above, for a state as squeue (%T) or scontrol (JobState=) print it.
SlurmJobState SlurmJobStateFromSlurm(std::string_view slurm_state);
// True for the states a job never leaves (kUnknown is not one: the job may be lost).
bool IsFinal(SlurmJobState s);

struct SlurmJobStatus {
  std::string id;
  SlurmJobState state = SlurmJobState::kUnknown;
  std::string slurm_state;  // as SLURM says it ("" if unknown)
  std::string reason;       // SLURM's reason (Resources, NonZeroExitCode, ...), or why unknown
  int exit_code = -1;       // of the batch script once final (-1: not known)
  int signal = 0;           // the signal that ended it, once final (0: none)
};

// `s` in single quotes for sh/bash ('\'' for each quote): the shell passes it unchanged.
std::string ShellQuote(std::string_view s);

class SlurmExecutor {
 public:
  explicit SlurmExecutor(SlurmExecutorOptions options = {});

  // Writes and submits the batch script; returns SLURM's job id ("123").
  Result<std::string> Submit(const SlurmJobRequest& request) const;

  // The state of each job, in the order of `ids` (numeric job ids).
  Result<std::vector<SlurmJobStatus>> Query(const std::vector<std::string>& ids) const;

  // Cancels the job (SLURM: SIGTERM, then SIGKILL after KillWait), or, with a signal,
  // only sends it to every task of the job's steps (e.g. SIGUSR1: checkpoint and exit).
  Status Cancel(const std::string& id, std::optional<int> signal = std::nullopt) const;

  // The script Submit would write for `request` (validated as by Submit).
  Result<std::string> BatchScript(const SlurmJobRequest& request) const;

  // Every job slurmctld knows by this job name (any state), ascending by id.
  Result<std::vector<SlurmJobStatus>> FindByName(const std::string& name) const;

  // Processes of this host whose arguments include `script_path` (submitters of that
  // script still running), from /proc.
  static std::vector<int> SubmittersOf(const std::string& script_path);

 private:
  SlurmExecutorOptions options_;
};

}  // namespace cairn::coord
