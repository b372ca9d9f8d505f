// SlurmExecutor against a real one-node SLURM cluster (scripts/slurm/local-cluster,
// started for the suite in a fresh directory on free ports (tests/slurm_cluster.h), stopped
// and removed at its end also when a test fails), plus the parts that need no cluster
// (state mapping, script, bad input).
// The cluster tests skip without root or without the SLURM packages.
#include "coordinator/slurm_executor.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "common/io.h"
#include "tests/process_util.h"
#include "tests/slurm_cluster.h"

namespace cairn::coord {
namespace {

namespace fs = std::filesystem;
using cairn::testing::RunCommand;

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// ---- No cluster needed -------------------------------------------------------------

TEST(SlurmJobState, MapsEverySlurmStateAsDocumented) {
  using S = SlurmJobState;
  const std::vector<std::pair<std::string, S>> cases = {
      {"PENDING", S::kPending},
      {"CONFIGURING", S::kPending},
      {"REQUEUED", S::kPending},
      {"REQUEUE_HOLD", S::kPending},
      {"REQUEUE_FED", S::kPending},
      {"RUNNING", S::kRunning},
      {"COMPLETING", S::kRunning},
      {"SUSPENDED", S::kRunning},
      {"STOPPED", S::kRunning},
      {"SIGNALING", S::kRunning},
      {"STAGE_OUT", S::kRunning},
      {"RESIZING", S::kRunning},
      {"COMPLETED", S::kCompleted},
      {"FAILED", S::kFailed},
      {"OUT_OF_MEMORY", S::kFailed},
      {"SPECIAL_EXIT", S::kFailed},
      {"CANCELLED", S::kCancelled},
      {"CANCELLED+", S::kCancelled},
      {"REVOKED", S::kCancelled},
      {"TIMEOUT", S::kTimeout},
      {"DEADLINE", S::kTimeout},
      {"NODE_FAIL", S::kNodeFail},
      {"BOOT_FAIL", S::kNodeFail},
      {"PREEMPTED", S::kPreempted},
      {"", S::kUnknown},
      {"SOMETHING_NEW", S::kUnknown},
  };
  for (const auto& [slurm, want] : cases) {
    EXPECT_EQ(SlurmJobStateFromSlurm(slurm), want) << slurm;
  }
  EXPECT_TRUE(IsFinal(S::kCompleted));
  EXPECT_TRUE(IsFinal(S::kPreempted));
  EXPECT_FALSE(IsFinal(S::kRunning));
  EXPECT_FALSE(IsFinal(S::kUnknown));
  EXPECT_EQ(SlurmJobStateName(S::kNodeFail), "NODE_FAIL");
}

TEST(ShellQuote, QuotesForTheShell) {
  EXPECT_EQ(ShellQuote("a"), "'a'");
  EXPECT_EQ(ShellQuote(""), "''");
  EXPECT_EQ(ShellQuote("it's"), "'it'\\''s'");
  // What sh makes of it is the string itself.
  const std::string nasty = "a b'c\"d $HOME `id` \\ \n;|&*";
  auto r = RunCommand({"/bin/sh", "-c", "printf %s " + ShellQuote(nasty)});
  EXPECT_EQ(r.output, nasty);
}

SlurmJobRequest Request(std::vector<std::string> command) {
  SlurmJobRequest r;
  r.command = std::move(command);
  r.script_dir = "/tmp/cairn-slurm-executor-unused";
  return r;
}

TEST(SlurmExecutorScript, RefusesBadRequestsNamingTheProblem) {
  SlurmExecutor exec;
  auto expect_invalid = [&](SlurmJobRequest r, const std::string& words) {
    auto s = exec.BatchScript(r);
    ASSERT_FALSE(s.has_value()) << words;
    EXPECT_EQ(s.error().code(), Code::kInvalidArgument) << s.error().ToString();
    EXPECT_NE(s.error().ToString().find(words), std::string::npos) << s.error().ToString();
    auto sub = exec.Submit(r);  // nothing reaches SLURM
    ASSERT_FALSE(sub.has_value());
    EXPECT_EQ(sub.error().code(), Code::kInvalidArgument);
  };
  expect_invalid(Request({}), "the command is empty");
  expect_invalid(Request({"--help"}), "starts with '-'");
  auto r = Request({"/bin/true"});
  r.launcher = "torchrun";
  expect_invalid(r, "launcher 'torchrun': expected mpi or env");
  r = Request({"/bin/true"});
  r.ranks = 0;
  expect_invalid(r, "ranks 0");
  r = Request({"/bin/true"});
  r.name = "my job";
  expect_invalid(r, "job name 'my job'");
  r = Request({"/bin/true"});
  r.env["1BAD"] = "x";
  expect_invalid(r, "environment variable name '1BAD'");
  r = Request({"/bin/true"});
  r.env["A=B"] = "x";
  expect_invalid(r, "environment variable name 'A=B'");
  r = Request({"/bin/true"});
  r.script_dir = "relative/dir";
  expect_invalid(r, "script_dir 'relative/dir' must be an absolute path");
  r = Request({"/bin/true"});
  r.nodes = 3;
  expect_invalid(r, "3 nodes for 1 ranks");
  r = Request({"/bin/true"});
  r.partition = "a;b";
  expect_invalid(r, "partition 'a;b'");
}

TEST(SlurmExecutorScript, LaunchersAndEnvironment) {
  SlurmExecutor exec;
  auto r = Request({"/opt/train", "--lr", "0.1", "it's"});
  r.env["CAIRN_JOB_ID"] = "job-000001";
  r.launcher = "mpi";
  auto s = exec.BatchScript(r);
  ASSERT_TRUE(s.has_value()) << s.error().ToString();
  EXPECT_NE(s->find("export CAIRN_JOB_ID='job-000001'\n"), std::string::npos) << *s;
  EXPECT_NE(s->find("exec srun --kill-on-bad-exit=1 --mpi=pmix '/opt/train' '--lr' '0.1' "
                    "'it'\\''s'\n"),
            std::string::npos)
      << *s;
  EXPECT_NE(s->find("'--no-requeue'"), std::string::npos) << *s;
  r.launcher = "env";
  r.master_port = 29500;
  s = exec.BatchScript(r);
  ASSERT_TRUE(s.has_value());
  EXPECT_NE(s->find("MASTER_PORT=29500\n"), std::string::npos) << *s;
  EXPECT_NE(s->find("RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID"),
            std::string::npos)
      << *s;
}

TEST(SlurmExecutorClients, MissingClientIsAFailedPrecondition) {
  SlurmExecutorOptions o;
  o.bin_dir = "/nonexistent-slurm-bin";
  SlurmExecutor exec(o);
  auto q = exec.Query({"1"});
  ASSERT_FALSE(q.has_value());
  EXPECT_EQ(q.error().code(), Code::kFailedPrecondition) << q.error().ToString();
  EXPECT_NE(q.error().ToString().find("squeue not found in /nonexistent-slurm-bin"),
            std::string::npos)
      << q.error().ToString();
}

// ---- Against the cluster -----------------------------------------------------------

class SlurmExecutorTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    skip_ = cairn::testing::LocalSlurmCluster::Unavailable();
    if (!skip_.empty()) return;
    cluster_ = std::make_unique<cairn::testing::LocalSlurmCluster>();
    start_ = cluster_->Start();
    conf_ = cluster_->conf();
  }
  // Stops the cluster and removes its directory, however the tests ended.
  static void TearDownTestSuite() { cluster_.reset(); }

  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << skip_;
    ASSERT_EQ(start_.exit_code, 0) << start_.output;
    dir_ = fs::temp_directory_path() / ("cairn_slurm_exec_" + io::RandomSuffix());
    fs::create_directories(dir_);
    SlurmExecutorOptions o;
    o.slurm_conf = conf_;
    exec_ = std::make_unique<SlurmExecutor>(o);
  }
  void TearDown() override {
    if (!skip_.empty()) return;
    // Whatever a failed test left running.
    auto q = RunCommand({"/usr/bin/squeue", "-h", "-o", "%A"}, {{"SLURM_CONF", conf_}});
    std::istringstream in(q.output);
    std::string id;
    while (in >> id) (void)exec_->Cancel(id);
    std::error_code ec;
    if (!HasFailure()) fs::remove_all(dir_, ec);
  }

  SlurmJobRequest Job(std::vector<std::string> command, const std::string& name) {
    SlurmJobRequest r;
    r.name = name;
    r.command = std::move(command);
    r.script_dir = (dir_ / name).string();
    r.output_path = (dir_ / (name + ".out")).string();
    return r;
  }

  SlurmJobStatus StatusOf(const std::string& id) {
    auto q = exec_->Query({id});
    EXPECT_TRUE(q.has_value()) << q.error().ToString();
    if (!q || q->size() != 1) return {};
    return (*q)[0];
  }

  // Polls until the job is final (bounded).
  SlurmJobStatus WaitFinal(const std::string& id,
                           std::chrono::seconds limit = std::chrono::seconds(60)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    SlurmJobStatus s;
    while (std::chrono::steady_clock::now() < deadline) {
      s = StatusOf(id);
      if (IsFinal(s.state)) return s;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    ADD_FAILURE() << "job " << id << " still " << s.slurm_state << " after " << limit.count()
                  << " s";
    return s;
  }

  // Polls until the file holds `text` (bounded).
  bool WaitForText(const fs::path& p, const std::string& text, int count = 1) {
    for (int i = 0; i < 240; ++i) {
      const std::string s = ReadFile(p);
      int n = 0;
      for (std::size_t pos = 0; (pos = s.find(text, pos)) != std::string::npos; pos += text.size())
        ++n;
      if (n >= count) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return false;
  }

  static inline std::string skip_;
  static inline cairn::testing::CommandResult start_;
  static inline std::unique_ptr<cairn::testing::LocalSlurmCluster> cluster_;
  static inline std::string conf_;
  fs::path dir_;
  std::unique_ptr<SlurmExecutor> exec_;
};

TEST_F(SlurmExecutorTest, TrivialJobCompletesWithExitCodeZero) {
  auto id = exec_->Submit(Job({"/bin/true"}, "trivial"));
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  EXPECT_TRUE(fs::exists(dir_ / "trivial" / "job.sbatch"));
  const auto s = WaitFinal(*id);
  EXPECT_EQ(s.state, SlurmJobState::kCompleted) << s.slurm_state << " " << s.reason;
  EXPECT_EQ(s.exit_code, 0);
  EXPECT_EQ(s.signal, 0);
  EXPECT_EQ(s.id, *id);
}

TEST_F(SlurmExecutorTest, FailingJobIsFailedWithItsExitCode) {
  auto id = exec_->Submit(Job({"/bin/sh", "-c", "exit 3"}, "failing"));
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  const auto s = WaitFinal(*id);
  EXPECT_EQ(s.state, SlurmJobState::kFailed) << s.slurm_state;
  EXPECT_EQ(s.exit_code, 3);
  EXPECT_EQ(s.reason, "NonZeroExitCode");
}

TEST_F(SlurmExecutorTest, EnvLauncherGivesEveryRankItsVariablesExactly) {
  auto r =
      Job({"/bin/sh", "-c",
           "echo \"rank=$RANK/$WORLD_SIZE local=$LOCAL_RANK cairn=$CAIRN_RANK/$CAIRN_WORLD_SIZE "
           "master=$MASTER_ADDR:$MASTER_PORT x=[$X]\"",
           "ignored"},
          "envjob");
  r.ranks = 2;
  r.env["X"] = "a b'c \"d\" $HOME `id`";
  r.master_port = 29555;
  auto id = exec_->Submit(r);
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  const auto s = WaitFinal(*id);
  const std::string out = ReadFile(dir_ / "envjob.out");
  ASSERT_EQ(s.state, SlurmJobState::kCompleted) << s.slurm_state << out;
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string tail = " master=" + std::string(host) + ":29555 x=[a b'c \"d\" $HOME `id`]";
  EXPECT_NE(out.find("rank=0/2 local=0 cairn=0/2" + tail), std::string::npos) << out;
  EXPECT_NE(out.find("rank=1/2 local=1 cairn=1/2" + tail), std::string::npos) << out;
}

TEST_F(SlurmExecutorTest, MpiLauncherStartsTheRanksWithPmix) {
  auto r = Job({"/bin/sh", "-c", "echo pmix_rank=$PMIX_RANK"}, "mpijob");
  r.ranks = 2;
  r.launcher = "mpi";
  auto id = exec_->Submit(r);
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  const auto s = WaitFinal(*id);
  const std::string out = ReadFile(dir_ / "mpijob.out");
  ASSERT_EQ(s.state, SlurmJobState::kCompleted) << s.slurm_state << out;
  EXPECT_NE(out.find("pmix_rank=0"), std::string::npos) << out;
  EXPECT_NE(out.find("pmix_rank=1"), std::string::npos) << out;
}

TEST_F(SlurmExecutorTest, CancelledJobIsCancelledAndCancelIsIdempotent) {
  auto id = exec_->Submit(Job({"/bin/sh", "-c", "echo started; exec sleep 300"}, "sleeper"));
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  ASSERT_TRUE(WaitForText(dir_ / "sleeper.out", "started"));
  EXPECT_EQ(StatusOf(*id).state, SlurmJobState::kRunning);
  auto c = exec_->Cancel(*id);
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  const auto s = WaitFinal(*id);
  EXPECT_EQ(s.state, SlurmJobState::kCancelled) << s.slurm_state;
  auto again = exec_->Cancel(*id);
  EXPECT_TRUE(again.has_value()) << again.error().ToString();
}

TEST_F(SlurmExecutorTest, JobCancelledByHandIsSeenAsCancelled) {
  auto id = exec_->Submit(Job({"/bin/sh", "-c", "echo started; exec sleep 300"}, "byhand"));
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  ASSERT_TRUE(WaitForText(dir_ / "byhand.out", "started"));
  auto r = RunCommand({"/usr/bin/scancel", *id}, {{"SLURM_CONF", conf_}});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto s = WaitFinal(*id);
  EXPECT_EQ(s.state, SlurmJobState::kCancelled) << s.slurm_state;
}

TEST_F(SlurmExecutorTest, SignalReachesEveryRank) {
  // Each rank exits 75 on SIGUSR1 (as a cairn rank does after checkpointing).
  auto r = Job({"/bin/sh", "-c",
                "trap 'echo got-usr1; exit 75' USR1; echo ready; while :; do sleep 0.1; done"},
               "signalled");
  r.ranks = 2;
  auto id = exec_->Submit(r);
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  ASSERT_TRUE(WaitForText(dir_ / "signalled.out", "ready", 2)) << ReadFile(dir_ / "signalled.out");
  auto c = exec_->Cancel(*id, SIGUSR1);
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  const auto s = WaitFinal(*id);
  const std::string out = ReadFile(dir_ / "signalled.out");
  EXPECT_EQ(s.state, SlurmJobState::kFailed) << s.slurm_state << out;
  EXPECT_EQ(s.exit_code, 75) << out;
  EXPECT_TRUE(WaitForText(dir_ / "signalled.out", "got-usr1", 2)) << out;
  // A finished job has nothing to signal.
  auto late = exec_->Cancel(*id, SIGUSR1);
  ASSERT_FALSE(late.has_value());
  EXPECT_EQ(late.error().code(), Code::kFailedPrecondition) << late.error().ToString();
}

// Finding a submission again after the submitter died: by job name (any state), and the
// processes still submitting a script.
TEST_F(SlurmExecutorTest, FindsJobsByNameAndSubmittersOfAScript) {
  const std::string name = "findme-" + io::RandomSuffix();
  auto none = exec_->FindByName(name);
  ASSERT_TRUE(none.has_value()) << none.error().ToString();
  EXPECT_TRUE(none->empty());
  auto first = exec_->Submit(Job({"/bin/true"}, name));
  ASSERT_TRUE(first.has_value()) << first.error().ToString();
  WaitFinal(*first);
  auto second = exec_->Submit(Job({"/bin/sh", "-c", "exec sleep 300"}, name));
  ASSERT_TRUE(second.has_value()) << second.error().ToString();
  auto both = exec_->FindByName(name);
  ASSERT_TRUE(both.has_value()) << both.error().ToString();
  ASSERT_EQ(both->size(), 2u);
  EXPECT_EQ((*both)[0].id, *first);  // ascending by id, finished ones too
  EXPECT_EQ((*both)[0].state, SlurmJobState::kCompleted);
  EXPECT_EQ((*both)[1].id, *second);
  ASSERT_TRUE(exec_->Cancel(*second).has_value());
  auto bad = exec_->FindByName("a b");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);

  // A process whose arguments name the script is a submitter until it ends.
  const std::string script = (dir_ / name / "job.sbatch").string();
  EXPECT_TRUE(SlurmExecutor::SubmittersOf(script).empty());
  auto child = cairn::testing::SpawnWithOutput({"/bin/sh", "-c", "sleep 30; :", "sh", script},
                                               {}, /*own_group=*/true);
  ASSERT_GT(child.pid, 0);
  // The shell forks for `sleep`; until that child has exec'd, it carries the same
  // arguments and counts too. Wait until only the shell is left.
  std::vector<int> found;
  for (int i = 0; i < 100 && found != std::vector<int>{child.pid}; ++i) {
    found = SlurmExecutor::SubmittersOf(script);
    if (found != std::vector<int>{child.pid}) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  EXPECT_EQ(found, std::vector<int>{child.pid});
  EXPECT_TRUE(SlurmExecutor::SubmittersOf(script + ".other").empty());
  ::kill(-child.pid, SIGKILL);  // the shell and its sleep
  ::waitpid(child.pid, nullptr, 0);
  ::close(child.output);
  EXPECT_TRUE(SlurmExecutor::SubmittersOf(script).empty());
}

TEST_F(SlurmExecutorTest, UnknownAndMalformedIds) {
  auto q = exec_->Query({"999999"});
  ASSERT_TRUE(q.has_value()) << q.error().ToString();
  ASSERT_EQ(q->size(), 1u);
  EXPECT_EQ((*q)[0].state, SlurmJobState::kUnknown);
  EXPECT_NE((*q)[0].reason.find("does not know"), std::string::npos) << (*q)[0].reason;
  auto c = exec_->Cancel("999999");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), Code::kNotFound) << c.error().ToString();
  auto bad = exec_->Query({"12", "1;rm -rf /"});
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);
  EXPECT_NE(bad.error().ToString().find("'1;rm -rf /' is not a SLURM job id"), std::string::npos);
  auto bad_signal = exec_->Cancel("12", 0);
  ASSERT_FALSE(bad_signal.has_value());
  EXPECT_EQ(bad_signal.error().code(), Code::kInvalidArgument);
  // Several ids at once, known and unknown, in the order asked.
  auto id = exec_->Submit(Job({"/bin/true"}, "known"));
  ASSERT_TRUE(id.has_value()) << id.error().ToString();
  WaitFinal(*id);
  auto both = exec_->Query({"999999", *id});
  ASSERT_TRUE(both.has_value()) << both.error().ToString();
  ASSERT_EQ(both->size(), 2u);
  EXPECT_EQ((*both)[0].state, SlurmJobState::kUnknown);
  EXPECT_EQ((*both)[1].state, SlurmJobState::kCompleted);
  auto none = exec_->Query({});
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
}

TEST_F(SlurmExecutorTest, JobSlurmRefusesIsAnInvalidArgument) {
  auto r = Job({"/bin/true"}, "refused");
  r.partition = "nosuchpartition";
  auto id = exec_->Submit(r);
  ASSERT_FALSE(id.has_value());
  EXPECT_EQ(id.error().code(), Code::kInvalidArgument) << id.error().ToString();
  EXPECT_NE(id.error().ToString().find("invalid partition specified: nosuchpartition"),
            std::string::npos)
      << id.error().ToString();
  auto big = Job({"/bin/true"}, "toobig");
  big.cpus_per_rank = 4096;
  id = exec_->Submit(big);  // refused: the local cluster sets EnforcePartLimits=ALL
  ASSERT_FALSE(id.has_value());
  EXPECT_EQ(id.error().code(), Code::kInvalidArgument) << id.error().ToString();
  EXPECT_NE(id.error().ToString().find("More processors requested than permitted"),
            std::string::npos)
      << id.error().ToString();
}

TEST_F(SlurmExecutorTest, UnreachableControllerIsUnavailable) {
  // The same cluster's configuration with a port nothing listens on: bound here (so no
  // one else takes it) but never listened on, so connections are refused.
  const int held = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(held, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(held, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::getsockname(held, reinterpret_cast<sockaddr*>(&a), &len), 0);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{held};
  std::string conf = ReadFile(conf_);
  const auto port = conf.find("SlurmctldPort=");
  ASSERT_NE(port, std::string::npos);
  conf.replace(port, conf.find('\n', port) - port,
               "SlurmctldPort=" + std::to_string(ntohs(a.sin_port)));
  const auto mt = conf.find("MessageTimeout=");
  ASSERT_NE(mt, std::string::npos);
  conf.replace(mt, conf.find('\n', mt) - mt, "MessageTimeout=2");
  const fs::path dead = dir_ / "dead.conf";
  std::ofstream(dead) << conf;
  SlurmExecutorOptions o;
  o.slurm_conf = dead.string();
  SlurmExecutor exec(o);
  auto q = exec.Query({"1"});
  ASSERT_FALSE(q.has_value());
  EXPECT_EQ(q.error().code(), Code::kUnavailable) << q.error().ToString();
  EXPECT_NE(q.error().ToString().find("slurmctld is not reachable"), std::string::npos)
      << q.error().ToString();
  auto id = exec.Submit(Job({"/bin/true"}, "nowhere"));
  ASSERT_FALSE(id.has_value());
  EXPECT_EQ(id.error().code(), Code::kUnavailable) << id.error().ToString();
  auto c = exec.Cancel("1");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), Code::kUnavailable) << c.error().ToString();
  // A client that does not answer in time is killed: also kUnavailable.
  o.timeout = std::chrono::milliseconds(200);
  o.slurm_conf = dead.string();
  auto slow = SlurmExecutor(o).Query({"1"});
  ASSERT_FALSE(slow.has_value());
  EXPECT_EQ(slow.error().code(), Code::kUnavailable) << slow.error().ToString();
}

}  // namespace
}  // namespace cairn::coord
