// The mpirun command line of an `mpi`-mode run, as the agent on the gang's first node
// starts it.
//
// Promise: MpirunArgv is `mpirun -np <world size>` over every node of the gang (`--host
// node:slots,...`, no binding, oversubscription allowed; `--allow-run-as-root` when the
// agent runs as root), with cairn-rsh as the remote shell (no tree spawn, direct
// routing, so each other node's Open MPI daemon is started by that node's agent). The
// agent's own node (`local_node`) is named `localhost`, so mpirun starts that node's
// ranks itself, as its children under the agent, without a daemon of their own: a
// one-node gang needs no remote shell at all, which saves a daemon's start and its
// wire-up on every attempt (bench/RESULTS.md, restart latency). Each rank's
// output under `log_dir` (stderr merged), CAIRN_RUN_ID, CAIRN_JOB_ID, CAIRN_ATTEMPT, and
// when set CAIRN_EXPECTED_HEAD, CAIRN_PROVENANCE_DIGEST, CAIRN_CKPT_DIR and the spec's
// env forwarded to the ranks (`-x`), then the job's command. mpirun's own TMPDIR is its
// session directory, so the ranks' TMPDIR is set explicitly: the spec's, else the
// agent's (`rank_tmpdir`).
//
// It always selects Open MPI's rsh launcher and leaves SLURM's allocation out (`--mca plm
// rsh --mca ras ^slurm`): an agent may itself run inside a SLURM job (SLURM_JOB_ID in its
// environment: scripts/slurm/cairn-agents.sbatch starts the agents with srun), and there
// mpirun would otherwise detect SLURM, start its daemons with srun instead of cairn-rsh
// (outside the agents' supervision) and take its hosts from the allocation instead of
// the gang ("All nodes which are allocated for this job are already filled"). Outside
// SLURM these are what mpirun chooses anyway. Options on mpirun's command line beat
// OMPI_MCA_* variables of the environment, and mpirun passes them on to its daemons.
//
// NodeHasFabric says whether the node has a device that an Open MPI transport other than
// ob1's shared memory and TCP could use (RDMA under /sys/class/infiniband, Omni-Path or
// PSM under /dev). Without one the agents select the ob1 PML: otherwise every rank's
// MPI_Init opens the cm PML and its PSM/PSM2 MTLs only to find no hardware, about 0.2 s
// per attempt on these machines, and ob1 is what it ends up with anyway.
//
// Threading: pure functions (NodeHasFabric reads the file system under `root`).
#pragma once

#include <string>
#include <vector>

#include "proto/cairn.pb.h"

namespace cairn::worker {

struct MpirunContext {
  std::string rsh_path;    // cairn-rsh
  std::string log_dir;     // the attempt's log directory on this node
  bool as_root = false;    // the agent runs as root
  std::string local_node;  // the node id of the agent that runs mpirun
  std::string rank_tmpdir = "/tmp";  // the ranks' TMPDIR unless the spec's env sets one
};

std::vector<std::string> MpirunArgv(const proto::LaunchOrder& order, const MpirunContext& context);

bool NodeHasFabric(const std::string& root = "/");

}  // namespace cairn::worker
