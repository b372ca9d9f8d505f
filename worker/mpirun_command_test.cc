#include "worker/mpirun_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
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

// The values following each "--mca" name.
std::vector<std::pair<std::string, std::string>> McaOptions(const std::vector<std::string>& argv) {
  std::vector<std::pair<std::string, std::string>> out;
  for (std::size_t i = 0; i + 2 < argv.size(); ++i) {
    if (argv[i] == "--mca") out.emplace_back(argv[i + 1], argv[i + 2]);
  }
  return out;
}

TEST(MpirunArgvTest, GangHostsRemoteShellLogsAndCommand) {
  const auto argv = MpirunArgv(TwoNodeOrder(), "/usr/bin/cairn-rsh", "/state/logs/job-000007/attempt-2",
                               /*as_root=*/false);
  EXPECT_THAT(argv,
              ElementsAreArray(std::vector<std::string>{
                  "mpirun", "-np", "6", "--oversubscribe", "--bind-to", "none", "--host",
                  "agent-a:4,agent-b:2", "--mca", "plm", "rsh", "--mca", "ras", "^slurm", "--mca",
                  "plm_rsh_agent", "/usr/bin/cairn-rsh", "--mca", "plm_rsh_no_tree_spawn", "1",
                  "--mca", "routed", "direct", "--output-filename",
                  "/state/logs/job-000007/attempt-2", "--merge-stderr-to-stdout", "-x",
                  "CAIRN_RUN_ID", "-x", "CAIRN_JOB_ID", "-x", "CAIRN_ATTEMPT", "/opt/train",
                  "--epochs", "3"}));
}

// An agent inside a SLURM allocation: mpirun must launch its daemons through cairn-rsh
// (plm rsh, not slurm's srun) and take its hosts from the gang (no slurm allocator).
TEST(MpirunArgvTest, NeverLaunchesOrAllocatesThroughSlurm) {
  const auto mca = McaOptions(MpirunArgv(TwoNodeOrder(), "cairn-rsh", "/logs", false));
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
  for (const auto& [name, value] : McaOptions(MpirunArgv(TwoNodeOrder(), "cairn-rsh", "/logs",
                                                         false))) {
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
  const auto argv = MpirunArgv(o, "cairn-rsh", "/logs", /*as_root=*/true);
  EXPECT_THAT(std::vector<std::string>(argv.begin(), argv.begin() + 7),
              ElementsAre("mpirun", "-np", "6", "--oversubscribe", "--bind-to", "none",
                          "--allow-run-as-root"));
  std::vector<std::string> forwarded;
  for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
    if (argv[i] == "-x") forwarded.push_back(argv[i + 1]);
  }
  EXPECT_THAT(forwarded, ElementsAre("CAIRN_RUN_ID", "CAIRN_JOB_ID", "CAIRN_ATTEMPT",
                                     "CAIRN_EXPECTED_HEAD", "CAIRN_PROVENANCE_DIGEST",
                                     "CAIRN_CKPT_DIR", "NCCL_DEBUG"));
  EXPECT_THAT(std::vector<std::string>(argv.end() - 3, argv.end()),
              ElementsAre("/opt/train", "--epochs", "3"));
}

}  // namespace
}  // namespace cairn::worker
