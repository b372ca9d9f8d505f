#include "worker/mpirun_command.h"

#include <fmt/format.h>

namespace cairn::worker {

std::vector<std::string> MpirunArgv(const proto::LaunchOrder& o, const std::string& rsh_path,
                                    const std::string& log_dir, bool as_root) {
  std::vector<std::string> argv = {"mpirun", "-np", std::to_string(o.world_size()),
                                   "--oversubscribe", "--bind-to", "none"};
  if (as_root) argv.push_back("--allow-run-as-root");
  std::string hosts;
  for (const auto& h : o.hosts()) {
    hosts += fmt::format("{}{}:{}", hosts.empty() ? "" : ",", h.node_id(), h.slots());
  }
  argv.insert(argv.end(), {"--host", hosts, "--mca", "plm", "rsh", "--mca", "ras", "^slurm",
                           "--mca", "plm_rsh_agent", rsh_path, "--mca", "plm_rsh_no_tree_spawn",
                           "1", "--mca", "routed", "direct", "--output-filename", log_dir,
                           "--merge-stderr-to-stdout"});
  std::vector<std::string> forward = {"CAIRN_RUN_ID", "CAIRN_JOB_ID", "CAIRN_ATTEMPT"};
  if (!o.expected_head().empty()) forward.push_back("CAIRN_EXPECTED_HEAD");
  if (!o.provenance_digest().empty()) forward.push_back("CAIRN_PROVENANCE_DIGEST");
  if (!o.spec().checkpoint_dir().empty()) forward.push_back("CAIRN_CKPT_DIR");
  for (const auto& [k, v] : o.spec().env()) forward.push_back(k);
  for (const auto& k : forward) argv.insert(argv.end(), {"-x", k});
  argv.insert(argv.end(), o.spec().command().begin(), o.spec().command().end());
  return argv;
}

}  // namespace cairn::worker
