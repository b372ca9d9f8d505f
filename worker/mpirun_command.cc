#include "worker/mpirun_command.h"

#include <fmt/format.h>

#include <filesystem>
#include <string_view>

namespace cairn::worker {
namespace {
const std::string kLocalHost = "localhost";  // Open MPI's name for the node mpirun runs on
}  // namespace

std::vector<std::string> MpirunArgv(const proto::LaunchOrder& o, const MpirunContext& c) {
  std::vector<std::string> argv = {"mpirun", "-np", std::to_string(o.world_size()),
                                   "--oversubscribe", "--bind-to", "none"};
  if (c.as_root) argv.push_back("--allow-run-as-root");
  std::string hosts;
  for (const auto& h : o.hosts()) {
    // mpirun starts the ranks of its own node itself; only the others need a daemon.
    const std::string& name = h.node_id() == c.local_node ? kLocalHost : h.node_id();
    hosts += fmt::format("{}{}:{}", hosts.empty() ? "" : ",", name, h.slots());
  }
  argv.insert(argv.end(), {"--host", hosts, "--mca", "plm", "rsh", "--mca", "ras", "^slurm",
                           "--mca", "plm_rsh_agent", c.rsh_path, "--mca", "plm_rsh_no_tree_spawn",
                           "1", "--mca", "routed", "direct", "--output-filename", c.log_dir,
                           "--merge-stderr-to-stdout"});
  std::vector<std::string> forward = {"CAIRN_RUN_ID", "CAIRN_JOB_ID", "CAIRN_ATTEMPT"};
  if (!o.expected_head().empty()) forward.push_back("CAIRN_EXPECTED_HEAD");
  if (!o.provenance_digest().empty()) forward.push_back("CAIRN_PROVENANCE_DIGEST");
  if (!o.spec().checkpoint_dir().empty()) forward.push_back("CAIRN_CKPT_DIR");
  for (const auto& [k, v] : o.spec().env()) {
    if (k != "TMPDIR") forward.push_back(k);
  }
  // mpirun's own TMPDIR is its session directory (agent.cc); the ranks get theirs.
  const auto tmp = o.spec().env().find("TMPDIR");
  forward.push_back("TMPDIR=" + (tmp != o.spec().env().end() ? tmp->second : c.rank_tmpdir));
  for (const auto& k : forward) argv.insert(argv.end(), {"-x", k});
  argv.insert(argv.end(), o.spec().command().begin(), o.spec().command().end());
  return argv;
}

bool NodeHasFabric(const std::string& root) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (fs::directory_iterator it(fs::path(root) / "sys/class/infiniband", ec), end;
       !ec && it != end; it.increment(ec)) {
    return true;  // any RDMA device (InfiniBand, RoCE, iWARP)
  }
  ec.clear();
  for (fs::directory_iterator it(fs::path(root) / "dev", ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.starts_with("hfi1") || name.starts_with("ipath")) return true;  // Omni-Path, PSM
  }
  return false;
}

}  // namespace cairn::worker
