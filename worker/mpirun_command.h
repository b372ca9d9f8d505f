// The mpirun command line of an `mpi`-mode run, as the agent on the gang's first node
// starts it.
//
// Promise: MpirunArgv is `mpirun -np <world size>` over every node of the gang (`--host
// node:slots,...`, no binding, oversubscription allowed; `--allow-run-as-root` when the
// agent runs as root), with cairn-rsh as the remote shell (no tree spawn, direct
// routing, so each node's Open MPI daemon is started by that node's agent), each rank's
// output under `log_dir` (stderr merged), CAIRN_RUN_ID, CAIRN_JOB_ID, CAIRN_ATTEMPT, and
// when set CAIRN_EXPECTED_HEAD, CAIRN_PROVENANCE_DIGEST, CAIRN_CKPT_DIR and the spec's
// env forwarded to the ranks (`-x`), then the job's command.
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
// Threading: a pure function.
#pragma once

#include <string>
#include <vector>

#include "proto/cairn.pb.h"

namespace cairn::worker {

std::vector<std::string> MpirunArgv(const proto::LaunchOrder& order, const std::string& rsh_path,
                                    const std::string& log_dir, bool as_root);

}  // namespace cairn::worker
