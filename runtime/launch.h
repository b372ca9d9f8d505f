// The launch contract: which rank this process is, of how many, and what cairn's
// orchestrator told it, read from the environment of any launcher cairn supports.
//
// Promise: the first launcher whose rank variable is set wins, in this order:
//   cairn     CAIRN_RANK, CAIRN_WORLD_SIZE, CAIRN_LOCAL_RANK (cairn-agent, env mode)
//   openmpi   OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK
//   slurm     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID
//   torchrun  RANK, WORLD_SIZE, LOCAL_RANK
// and with none set the process is rank 0 of 1 ("single"). Within the chosen launcher
// a missing size variable, a non-numeric value or a rank outside [0, size) is a
// kInvalidArgument error naming the variable and its value. Independently of the
// launcher: CAIRN_RUN_ID, CAIRN_PROGRESS_SOCKET (where progress reports go) and
// CAIRN_CKPT_DIR.
//
// Threading: pure function of the environment passed in.
#pragma once

#include <functional>
#include <string>

#include "common/status.h"

namespace cairn::rt {

// Exit code of a rank that stopped on request (SIGTERM/SIGUSR1) after saving a
// checkpoint: the orchestrator requeues it without counting a failure (EX_TEMPFAIL).
inline constexpr int kExitPreempted = 75;

struct LaunchInfo {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string launcher = "single";  // cairn, openmpi, slurm, torchrun, single
  std::string run_id;
  std::string progress_socket;
  std::string ckpt_dir;
  std::string provenance_digest;  // CAIRN_PROVENANCE_DIGEST (hex), bound into manifests
};

using EnvLookup = std::function<const char*(const char*)>;

Result<LaunchInfo> ReadLaunchContract(const EnvLookup& env);
Result<LaunchInfo> ReadLaunchContract();  // the process environment

}  // namespace cairn::rt
