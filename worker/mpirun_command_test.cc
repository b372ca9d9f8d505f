#include "worker/mpirun_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <chrono>
#include <string>
#include <vector>

#include "common/subprocess.h"

namespace cairn::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;

proto::LaunchOrder TwoNodeOrder() {
  proto::LaunchOrder o;
  o.set_run_id("job-000007.2");
  o.set_job_id("job-000007");
  o.set_attempt(2);
  o.set_world_size(6);
  o.set_head(true);
  auto* a = o.add_hosts();
  a->set_node_id("agent-a");
  a->set_slots(4);
  auto* b = o.add_hosts();
  b->set_node_id("agent-b");
  b->set_slots(2);
  o.mutable_spec()->add_command("/opt/train");
  o.mutable_spec()->add_command("--epochs");
  o.mutable_spec()->add_command("3");
  return o;
}

MpirunContext Context(bool as_root = false) {
  return MpirunContext{.rsh_path = "/usr/bin/cairn-rsh",
                       .log_dir = "/state/logs/job-000007/attempt-2",
                       .as_root = as_root,
                       .local_node = "agent-a",
                       .rank_tmpdir = "/scratch"};
}

// The values following each "--mca" name.
std::vector<std::pair<std::string, std::string>> McaOptions(const std::vector<std::string>& argv) {
  std::vector<std::pair<std::string, std::string>> out;
  for (std::size_t i = 0; i + 2 < argv.size(); ++i) {
    if (argv[i] == "--mca") out.emplace_back(argv[i + 1], argv[i + 2]);
  }
  return out;
}

TEST(MpirunArgvTest, GangHostsRemoteShellLogsAndCommand) {
  const auto argv = MpirunArgv(TwoNodeOrder(), Context());
  EXPECT_THAT(argv,
              ElementsAreArray(std::vector<std::string>{
                  "mpirun", "-np", "6", "--oversubscribe", "--bind-to", "none", "--host",
                  "localhost:4,agent-b:2", "--mca", "plm", "rsh", "--mca", "ras", "^slurm", "--mca",
                  "plm_rsh_agent", "/usr/bin/cairn-rsh", "--mca", "plm_rsh_no_tree_spawn", "1",
                  "--mca", "routed", "direct", "--output-filename",
                  "/state/logs/job-000007/attempt-2", "--merge-stderr-to-stdout", "-x",
                  "CAIRN_RUN_ID", "-x", "CAIRN_JOB_ID", "-x", "CAIRN_ATTEMPT", "-x",
                  "TMPDIR=/scratch", "/opt/train",
                  "--epochs", "3"}));
}

// An agent inside a SLURM allocation: mpirun must launch its daemons through cairn-rsh
// (plm rsh, not slurm's srun) and take its hosts from the gang (no slurm allocator).
TEST(MpirunArgvTest, NeverLaunchesOrAllocatesThroughSlurm) {
  const auto mca = McaOptions(MpirunArgv(TwoNodeOrder(), Context()));
  EXPECT_NE(std::find(mca.begin(), mca.end(), std::pair<std::string, std::string>("plm", "rsh")),
            mca.end());
  EXPECT_NE(std::find(mca.begin(), mca.end(),
                      std::pair<std::string, std::string>("ras", "^slurm")),
            mca.end());
  // Nothing else chooses a launcher or an allocator.
  for (const auto& [name, value] : mca) {
    if (name == "plm" || name == "ras") {
      EXPECT_TRUE((name == "plm" && value == "rsh") || (name == "ras" && value == "^slurm"))
          << name << " " << value;
    }
  }
}

// The same with the real mpirun: inside a (fake) SLURM allocation of a node that is not
// this one, a plain mpirun refuses the gang's hosts; with the options MpirunArgv adds it
// runs on them.
TEST(MpirunArgvTest, MpirunInsideASlurmAllocationRunsOnTheGivenHosts) {
  subprocess::RunOptions ro;
  ro.env = {"SLURM_JOB_ID=4711",          "SLURM_JOBID=4711",
            "SLURM_JOB_NODELIST=elsewhere", "SLURM_NODELIST=elsewhere",
            "SLURM_JOB_NUM_NODES=1",        "SLURM_NNODES=1",
            "SLURM_TASKS_PER_NODE=1",       "SLURM_JOB_CPUS_PER_NODE=1"};
  ro.timeout = std::chrono::seconds(60);
  std::vector<std::string> plain = {"mpirun", "-np", "1", "--host", "localhost:1"};
  if (::geteuid() == 0) plain.push_back("--allow-run-as-root");
  std::vector<std::string> ours = plain;
  for (const auto& [name, value] : McaOptions(MpirunArgv(TwoNodeOrder(), Context()))) {
    if (name == "plm" || name == "ras") ours.insert(ours.end(), {"--mca", name, value});
  }
  plain.insert(plain.end(), {"/bin/echo", "ran"});
  ours.insert(ours.end(), {"/bin/echo", "ran"});

  auto control = subprocess::RunProcess(plain, ro);
  if (!control && control.error().code() == Code::kNotFound) GTEST_SKIP() << "no mpirun";
  ASSERT_TRUE(control.has_value()) << control.error().ToString();
  if (control->exit_code == 0) {
    GTEST_SKIP() << "this Open MPI ignores the SLURM allocation in its environment: "
                 << control->out;
  }
  auto r = subprocess::RunProcess(ours, ro);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->exit_code, 0) << r->out << r->err;
  EXPECT_EQ(r->out, "ran\n") << r->err;
}

TEST(MpirunArgvTest, RootAndOptionalVariablesAreForwarded) {
  proto::LaunchOrder o = TwoNodeOrder();
  o.set_expected_head(std::string(64, 'a'));
  o.set_provenance_digest(std::string(64, 'b'));
  o.mutable_spec()->set_checkpoint_dir("/ckpt");
  (*o.mutable_spec()->mutable_env())["NCCL_DEBUG"] = "INFO";
  const auto argv = MpirunArgv(o, Context(/*as_root=*/true));
  EXPECT_THAT(std::vector<std::string>(argv.begin(), argv.begin() + 7),
              ElementsAre("mpirun", "-np", "6", "--oversubscribe", "--bind-to", "none",
                          "--allow-run-as-root"));
  std::vector<std::string> forwarded;
  for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "-x") forwarded.push_back(argv[i + 1]);
  }
  EXPECT_THAT(forwarded, ElementsAre("CAIRN_RUN_ID", "CAIRN_JOB_ID", "CAIRN_ATTEMPT",
                                     "CAIRN_EXPECTED_HEAD", "CAIRN_PROVENANCE_DIGEST",
                                     "CAIRN_CKPT_DIR", "NCCL_DEBUG", "TMPDIR=/scratch"));
  EXPECT_THAT(std::vector<std::string>(argv.end() - 3, argv.end()),
              ElementsAre("/opt/train", "--epochs", "3"));
}

// Only the agent's own node is local to mpirun: a gang whose first node is elsewhere
// names every node, and mpirun asks cairn-rsh for each daemon.
TEST(MpirunArgvTest, OnlyTheAgentsOwnNodeIsLocalhost) {
  MpirunContext c = Context();
  auto host_arg = [](const std::vector<std::string>& argv) {
    auto it = std::find(argv.begin(), argv.end(), "--host");
    return it == argv.end() ? std::string() : *(it + 1);
  };
  EXPECT_EQ(host_arg(MpirunArgv(TwoNodeOrder(), c)), "localhost:4,agent-b:2");
  c.local_node = "agent-b";
  EXPECT_EQ(host_arg(MpirunArgv(TwoNodeOrder(), c)), "agent-a:4,localhost:2");
  c.local_node = "agent-c";
  EXPECT_EQ(host_arg(MpirunArgv(TwoNodeOrder(), c)), "agent-a:4,agent-b:2");
}

// mpirun's TMPDIR is its session directory: the ranks get the spec's TMPDIR (not
// forwarded from mpirun's environment, where it is replaced) or the agent's.
TEST(MpirunArgvTest, RanksGetTheSpecsTmpdirNotMpirunsSessionDirectory) {
  proto::LaunchOrder o = TwoNodeOrder();
  (*o.mutable_spec()->mutable_env())["TMPDIR"] = "/fast/tmp";
  const auto argv = MpirunArgv(o, Context());
  std::vector<std::string> forwarded;
  for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "-x") forwarded.push_back(argv[i + 1]);
  }
  EXPECT_THAT(forwarded, ElementsAre("CAIRN_RUN_ID", "CAIRN_JOB_ID", "CAIRN_ATTEMPT",
                                     "TMPDIR=/fast/tmp"));
}

// A fabric is any RDMA device or an Omni-Path/PSM device node; a node with neither (or
// with no /sys, /dev at all under the root) has none.
TEST(NodeHasFabricTest, RdmaOrPsmDevicesOnly) {
  namespace fs = std::filesystem;
  const fs::path root = fs::path(::testing::TempDir()) / fmt::format("fabric-{}", ::getpid());
  fs::remove_all(root);
  EXPECT_FALSE(NodeHasFabric(root.string()));
  fs::create_directories(root / "sys/class/infiniband");
  fs::create_directories(root / "dev");
  std::ofstream(root / "dev/null");
  std::ofstream(root / "dev/nvidia0");
  EXPECT_FALSE(NodeHasFabric(root.string()));
  std::ofstream(root / "dev/hfi1_0");
  EXPECT_TRUE(NodeHasFabric(root.string()));
  fs::remove(root / "dev/hfi1_0");
  fs::create_directories(root / "sys/class/infiniband/mlx5_0");
  EXPECT_TRUE(NodeHasFabric(root.string()));
  fs::remove_all(root);
}

}  // namespace
}  // namespace cairn::worker
