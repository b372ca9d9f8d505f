// SLURM integration on a real one-node cluster (scripts/slurm/local-cluster: munged,
// slurmctld, slurmd on this machine):
//   - the sbatch template runs the reference job; SIGUSR1 to the batch shell (as SLURM
//     sends before a time limit or an admin with `scancel --signal=USR1 --batch`) makes
//     every rank checkpoint and exit 75, the job requeues itself, resumes and finishes
//     with the weights of an uninterrupted run;
//   - a job with a one-minute time limit whose training outlasts SLURM's warning before
//     the limit finishes through requeues, each start resuming at the exact step the
//     previous one saved at (no step lost), with the same weights;
//   - cairn-agents.sbatch runs cairnd and an agent inside the allocation and a cairn job
//     to success (the template sets nothing for Open MPI: the agent's mpirun keeps to
//     cairn-rsh and the agent's hosts by itself);
//   - cairnd's slurm executor runs each attempt of a job as a SLURM job, resumes after a
//     scancel by hand, and attests each attempt's checkpoints with its SLURM job id;
//   - a cairnd killed while sbatch runs (fault injection) adopts or resubmits the attempt
//     when restarted, leaving exactly one SLURM job for it;
//   - a SIGSTOPped rank of a slurm-executor job is found hung from its missing progress
//     reports, its SLURM job cancelled, and the job resumes and finishes;
//   - stopping the cluster leaves no daemon and no job process (checked in /proc).
// Skips without root or without the SLURM packages. The cluster is started once for the
// suite, in a directory and on ports of its own (tests/slurm_cluster.h: runs from other
// build directories may run at the same time), and stopped and removed at its end, also
// when a test fails; clusters that killed earlier runs left are stopped first.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "common/io.h"
#include "provenance/attestation.h"
#include "provenance/dsse.h"
#include "tests/process_util.h"
#include "tests/slurm_cluster.h"

namespace cairn::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

std::string SourceDir() {
  const char* d = std::getenv("CAIRN_SOURCE_DIR");
  return d ? d : ".";
}

std::string AbsBinDir() { return fs::absolute(BinDir()).lexically_normal().string(); }

// PATH lookup (RunCommand wants a path).
std::string Which(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const fs::path p = fs::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  for (const char* d : {"/usr/sbin", "/sbin"}) {
    const fs::path p = fs::path(d) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return "";
}

// The suite's cluster (started in SetUpTestSuite, stopped and removed at the end).
std::unique_ptr<LocalSlurmCluster>& Cluster() {
  static std::unique_ptr<LocalSlurmCluster> cluster;
  return cluster;
}

std::map<std::string, std::string> ClusterEnv() { return Cluster()->Env(); }

CommandResult Slurm(const std::string& tool, std::vector<std::string> args,
                    std::map<std::string, std::string> env = {}, seconds timeout = seconds(30)) {
  args.insert(args.begin(), Which(tool));
  auto e = ClusterEnv();
  e.insert(env.begin(), env.end());
  return RunCommand(args, e, timeout);
}

CommandResult ClusterCtl(const std::string& verb) { return Cluster()->Ctl(verb); }

std::vector<uint64_t> AllNumbers(const std::string& out, const std::string& pattern) {
  std::vector<uint64_t> v;
  const std::regex re(pattern);
  for (auto it = std::sregex_iterator(out.begin(), out.end(), re); it != std::sregex_iterator();
       ++it) {
    v.push_back(std::stoull((*it)[1].str()));
  }
  return v;
}

struct JobInfo {
  std::string state;      // JobState=
  std::string exit_code;  // ExitCode= (code:signal)
  int restarts = -1;      // Restarts=
  std::string raw;
};

JobInfo ShowJob(const std::string& id) {
  JobInfo j;
  auto r = Slurm("scontrol", {"show", "job", id});
  j.raw = r.output;
  std::smatch m;
  if (std::regex_search(r.output, m, std::regex(R"(JobState=(\S+))"))) j.state = m[1];
  if (std::regex_search(r.output, m, std::regex(R"(ExitCode=(\S+))"))) j.exit_code = m[1];
  if (std::regex_search(r.output, m, std::regex(R"(Restarts=(\d+))"))) j.restarts = std::stoi(m[1]);
  return j;
}

bool Final(const std::string& state) {
  static const std::set<std::string> kFinal = {"COMPLETED", "FAILED",    "CANCELLED",
                                               "TIMEOUT",   "NODE_FAIL", "OUT_OF_MEMORY",
                                               "BOOT_FAIL", "DEADLINE",  "PREEMPTED"};
  return kFinal.contains(state);
}

// Polls until the job is in a final state (bounded).
JobInfo WaitForEnd(const std::string& id, seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  JobInfo j;
  while (std::chrono::steady_clock::now() < deadline) {
    j = ShowJob(id);
    if (Final(j.state)) return j;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  j.state = "WAIT_TIMED_OUT(" + j.state + ")";
  return j;
}

class SlurmTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    skip_reason_.clear();
    skip_reason_ = LocalSlurmCluster::Unavailable();
    if (!skip_reason_.empty()) return;
    // Clients and the jobs' environment: only this cluster's SLURM_CONF.
    LocalSlurmCluster::ClearSlurmEnvironment();
    Cluster() = std::make_unique<LocalSlurmCluster>();
    start_ = Cluster()->Start();
    ::setenv("SLURM_CONF", Cluster()->conf().c_str(), 1);
  }
  // Stops the cluster and removes its directory, however the tests ended.
  static void TearDownTestSuite() { Cluster().reset(); }

  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_EQ(start_.exit_code, 0) << "local-cluster start failed:\n" << start_.output;
    dir_ = fs::temp_directory_path() / ("cairn_slurm_test_" + io::RandomSuffix());
    fs::create_directories(dir_);
    key_ = (dir_ / "reference.key").string();
    auto r = RunCommand({BinDir() + "/cairn", "ckpt", "keygen", "--out", key_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  void TearDown() override {
    if (!skip_reason_.empty()) return;
    if (!stopped_) CancelAllJobs();
    std::error_code ec;
    if (HasFailure()) {
      std::fprintf(stderr, "kept %s for inspection\n", dir_.c_str());
    } else {
      fs::remove_all(dir_, ec);
    }
  }

  // Cancels every job of the cluster and waits (bounded) until the queue is empty.
  static void CancelAllJobs() {
    for (int i = 0; i < 60; ++i) {
      auto q = Slurm("squeue", {"-h", "-o", "%A"});
      std::vector<std::string> ids;
      std::istringstream in(q.output);
      std::string id;
      while (in >> id) ids.push_back(id);
      if (ids.empty() || q.exit_code != 0) return;
      Slurm("scancel", ids);
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }

  // sbatch; returns the job id ("" on failure, with the output in *out).
  std::string Submit(const std::string& script, const std::vector<std::string>& flags,
                     const std::map<std::string, std::string>& env, std::string* out,
                     const std::string& output = "job.out") {
    std::vector<std::string> args = {"--parsable", "--output=" + (dir_ / output).string()};
    args.insert(args.end(), flags.begin(), flags.end());
    args.push_back(SourceDir() + "/scripts/slurm/" + script);
    auto e = env;
    e["CAIRN_BIN_DIR"] = AbsBinDir();
    auto r = Slurm("sbatch", args, e);
    *out = r.output;
    if (r.exit_code != 0) return "";
    std::string id = r.output.substr(0, r.output.find_first_of(";\n"));
    return id;
  }

  // An uninterrupted run of the same configuration, outside SLURM: its weights_sha256.
  std::future<CommandResult> Reference(int ranks, const std::vector<std::string>& flags,
                                       const std::string& ckpt = "reference") {
    std::vector<std::string> argv;
    if (ranks > 1) {
      argv = {CAIRN_TEST_MPIEXEC, "-np", std::to_string(ranks), "--oversubscribe"};
      if (::geteuid() == 0) argv.push_back("--allow-run-as-root");
    }
    argv.push_back(BinDir() + "/cairn-fmnist");
    argv.insert(argv.end(), {"--ckpt-dir", (dir_ / ckpt).string(), "--key-file", key_});
    argv.insert(argv.end(), flags.begin(), flags.end());
    return std::async(std::launch::async,
                      [argv] { return RunCommand(argv, {}, std::chrono::seconds(600)); });
  }

  static std::string Join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
    return s;
  }

  static inline std::string skip_reason_;
  static inline CommandResult start_;
  static inline bool stopped_ = false;  // by the last test
  fs::path dir_;
  std::string key_;
};

// cairn with the slurm executor and no agents (`cairn up --agents 0 --slurm` in
// `state`), taken down when it goes out of scope, also when a test fails.
class SlurmCairn {
 public:
  explicit SlurmCairn(std::string state, std::map<std::string, std::string> env = {})
      : state_(std::move(state)), env_(std::move(env)) {}
  ~SlurmCairn() { Run({"down"}); }
  SlurmCairn(const SlurmCairn&) = delete;
  SlurmCairn& operator=(const SlurmCairn&) = delete;
  CommandResult Run(std::vector<std::string> args, seconds timeout = seconds(120)) const {
    return RunCairn(state_, std::move(args), env_, timeout);
  }

 private:
  std::string state_;
  std::map<std::string, std::string> env_;
};

TEST_F(SlurmTest, StartIsIdempotentAndStatusSaysUp) {
  auto again = ClusterCtl("start");
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("already running"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("export SLURM_CONF=" + Cluster()->conf()), std::string::npos)
      << again.output;
  auto status = ClusterCtl("status");
  EXPECT_EQ(status.exit_code, 0) << status.output;
  EXPECT_NE(status.output.find("slurmd: running"), std::string::npos) << status.output;
  auto pmix = Slurm("srun", {"--mpi=list"});
  EXPECT_NE(pmix.output.find("pmix"), std::string::npos) << pmix.output;
}

// (a) SIGUSR1 to the batch shell: checkpoint, requeue, resume, same weights.
TEST_F(SlurmTest, SignalledJobRequeuesAndResumesExactly) {
  const std::vector<std::string> train = {"--steps", "1200", "--ckpt-every", "50"};
  std::string out;
  const fs::path run = dir_ / "run";
  const std::string id =
      Submit("cairn-fmnist.sbatch", {"--ntasks=2"},
             {{"CAIRN_RUN_DIR", run.string()}, {"CAIRN_FMNIST_ARGS", Join(train)}}, &out);
  ASSERT_FALSE(id.empty()) << out;
  auto reference = Reference(2, train);

  // Once the job has saved a checkpoint, signal it as SLURM would before a time limit.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(run / "ckpt" / "HEAD") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(fs::exists(run / "ckpt" / "HEAD")) << ShowJob(id).raw << ReadFile(dir_ / "job.out");
  auto sig = Slurm("scancel", {"--signal=USR1", "--batch", id});
  ASSERT_EQ(sig.exit_code, 0) << sig.output;

  const JobInfo j = WaitForEnd(id, seconds(300));
  const std::string log = ReadFile(dir_ / "job.out");
  ASSERT_EQ(j.state, "COMPLETED") << j.raw << log;
  EXPECT_EQ(j.exit_code, "0:0") << j.raw;
  EXPECT_EQ(j.restarts, 1) << j.raw;
  EXPECT_NE(log.find("(SLURM_RESTART_COUNT=0)"), std::string::npos) << log;
  EXPECT_NE(log.find("(SLURM_RESTART_COUNT=1)"), std::string::npos) << log;
  EXPECT_NE(log.find("SIGUSR1: every rank checkpoints"), std::string::npos) << log;
  const auto preempted = AllNumbers(log, R"(preempted at step (\d+))");
  const auto resumed = AllNumbers(log, R"(resumed_from_step=(\d+))");
  ASSERT_EQ(preempted.size(), 1u) << log;
  ASSERT_EQ(resumed.size(), 2u) << log;  // one line per rank
  EXPECT_EQ(resumed[0], preempted[0]) << log;
  EXPECT_NE(log.find("finished after 1 requeue(s)"), std::string::npos) << log;

  const CommandResult ref = reference.get();
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const std::string want = OutputValue(ref.output, "weights_sha256");
  ASSERT_EQ(want.size(), 64u) << ref.output;
  EXPECT_EQ(OutputValue(log, "weights_sha256"), want) << log;
  // The key was created once, private.
  EXPECT_EQ(fs::status(run / "master.key").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
}

// (b) A one-minute time limit and training that outlasts it: SLURM's warning signal
// (--signal=B:USR1@25) each time, requeues, no step lost, same weights.
TEST_F(SlurmTest, TimeLimitedJobFinishesThroughRequeues) {
  // SLURM checks time limits every 30 s and sends the warning at the first check that is
  // less than 25 + 30 s before the limit: 5-35 s into a start. About 40 s of training (at
  // this machine's speed, measured now) therefore needs at least two starts. Should the
  // machine get much faster meanwhile and the job finish in its first start, it runs
  // once more with three times the steps.
  auto probe = RunCommand({BinDir() + "/cairn-fmnist", "--steps", "1500"}, {}, seconds(300));
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(probe.output, m, std::regex(R"(train_seconds=([0-9.]+))")))
      << probe.output;
  const double rate = 1500.0 / std::max(0.05, std::stod(m[1]));
  for (int round = 1; round <= 2; ++round) {
    const double factor = round == 1 ? 1.0 : 3.0;
    const auto steps = static_cast<uint64_t>(std::clamp(rate * 40.0 * factor, 8000.0, 180000.0));
    std::printf("[ steps   ] %.0f steps/s here: %llu steps\n", rate,
                static_cast<unsigned long long>(steps));
    const std::vector<std::string> train = {"--epochs",     "200", "--steps", std::to_string(steps),
                                            "--ckpt-every", "1000"};
    const std::string tag = std::to_string(round);
    std::string out;
    const fs::path run = dir_ / ("run" + tag);
    const auto t0 = std::chrono::steady_clock::now();
    const std::string id =
        Submit("cairn-fmnist.sbatch", {"--ntasks=1", "--time=1", "--signal=B:USR1@25"},
               {{"CAIRN_RUN_DIR", run.string()}, {"CAIRN_FMNIST_ARGS", Join(train)}}, &out,
               "job" + tag + ".out");
    ASSERT_FALSE(id.empty()) << out;
    auto reference = Reference(1, train, "reference" + tag);

    const JobInfo j = WaitForEnd(id, seconds(600));
    const std::string log = ReadFile(dir_ / ("job" + tag + ".out"));
    std::printf("[ timing  ] job %s took %lld s, %d requeue(s)\n", id.c_str(),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(
                                           std::chrono::steady_clock::now() - t0)
                                           .count()),
                j.restarts);
    ASSERT_EQ(j.state, "COMPLETED") << j.raw << log;
    EXPECT_EQ(j.exit_code, "0:0") << j.raw;
    const CommandResult ref = reference.get();
    if (j.restarts == 0 && round == 1) {
      std::printf("[ again   ] the job finished within its first start\n");
      continue;
    }
    EXPECT_GE(j.restarts, 1) << j.raw;
    EXPECT_NE(log.find("(SLURM_RESTART_COUNT=1)"), std::string::npos) << log;
    EXPECT_EQ(log.find("DUE TO TIME LIMIT"), std::string::npos) << "a start ran out of time\n"
                                                                << log;
    // Every start after the first resumes at exactly the step the one before saved at.
    const auto preempted = AllNumbers(log, R"(preempted at step (\d+))");
    const auto resumed = AllNumbers(log, R"(resumed_from_step=(\d+))");
    ASSERT_GE(preempted.size(), 1u) << log;
    EXPECT_EQ(resumed, preempted) << log;
    EXPECT_EQ(static_cast<int>(preempted.size()), j.restarts) << log;

    ASSERT_EQ(ref.exit_code, 0) << ref.output;
    const std::string want = OutputValue(ref.output, "weights_sha256");
    ASSERT_EQ(want.size(), 64u) << ref.output;
    EXPECT_EQ(OutputValue(log, "weights_sha256"), want) << log;
    break;
  }
}

// (c) cairnd + one agent per node inside the allocation; a cairn job to success.
TEST_F(SlurmTest, AgentsInsideAnAllocationRunAJob) {
  std::string out;
  const fs::path run = dir_ / "run";
  const std::string id = Submit("cairn-agents.sbatch", {}, {{"CAIRN_RUN_DIR", run.string()}}, &out);
  ASSERT_FALSE(id.empty()) << out;
  const JobInfo j = WaitForEnd(id, seconds(240));
  const std::string log = ReadFile(dir_ / "job.out");
  ASSERT_EQ(j.state, "COMPLETED") << j.raw << log << ReadFile(run / "agents.log")
                                  << ReadFile(run / "cairnd.log");
  EXPECT_EQ(j.exit_code, "0:0") << j.raw;
  EXPECT_NE(log.find("1 agent(s) alive"), std::string::npos) << log;
  EXPECT_NE(log.find("SUCCEEDED: succeeded at step 300"), std::string::npos) << log;
  EXPECT_EQ(OutputValue(log, "weights_sha256").size(), 64u) << log;
  // The agent and cairnd were stopped by the script (SLURM would kill them anyway).
  EXPECT_NE(log.find("stopping the agents"), std::string::npos) << log;
}

// The slurm executor of cairnd: `cairn submit --executor slurm` runs each attempt as a
// SLURM batch job; a job cancelled by hand in SLURM is a failed attempt that cairnd
// resumes (same weights as an uninterrupted run); each attempt's checkpoints are attested
// with its SLURM job id in the signed statement, which `cairn lineage verify` checks;
// `cairn cancel` cancels it in SLURM.
TEST_F(SlurmTest, CairndRunsJobsThroughSlurmAndResumesAfterAScancel) {
  const std::string state = (dir_ / "cairn").string();
  const SlurmCairn cluster(state);
  auto cairn = [&](std::vector<std::string> args, seconds timeout = seconds(120)) {
    return cluster.Run(std::move(args), timeout);
  };
  auto up = cairn({"up", "--agents", "0", "--slurm"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  auto job = [&](const std::string& id) { return JobStatus(state, id); };
  const std::vector<std::string> flags = {"--steps", "400", "--ckpt-every", "40"};
  auto reference = Reference(2, flags);
  // --checkpoint-dir tells cairnd where the attempts' checkpoints are.
  const std::string ckpt_dir = (dir_ / "slurm-ckpt").string();
  std::vector<std::string> args = {
      "submit", "--name", "through-slurm", "--executor", "slurm", "--ranks", "2",
      "--launcher", "mpi", "--checkpoint-dir", ckpt_dir, "--",
      AbsBinDir() + "/cairn-fmnist", "--ckpt-dir", ckpt_dir, "--key-file", key_};
  args.insert(args.end(), flags.begin(), flags.end());
  auto s = cairn(args);
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const std::string id = s.output.substr(0, s.output.find('\n'));

  // Once it has committed a checkpoint, cancel its SLURM job by hand.
  std::string first_slurm_id;
  for (int i = 0; i < 600 && first_slurm_id.empty(); ++i) {
    auto j = job(id);
    bool ckpt = false;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(ckpt_dir, ec)) {
      ckpt = ckpt || (e.path().filename().string().starts_with("step-") &&
                      fs::exists(e.path() / "MANIFEST", ec));
    }
    if (ckpt && j.contains("runs") && !j["runs"].empty()) {
      first_slurm_id = j["runs"][0].value("executor_job_id", std::string());
    }
    if (first_slurm_id.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(first_slurm_id.empty()) << job(id).dump(1);
  auto sc = Slurm("scancel", {first_slurm_id});
  ASSERT_EQ(sc.exit_code, 0) << sc.output;
  auto w = cairn({"wait", id, "--timeout", "300s"}, seconds(320));
  EXPECT_EQ(w.exit_code, 0) << w.output;
  auto j = job(id);
  EXPECT_EQ(j["state"], "JOB_SUCCEEDED") << j.dump(1);
  ASSERT_GE(j["runs"].size(), 2u) << j.dump(1);
  EXPECT_NE(j["runs"][0].value("failure", std::string()).find("cancelled outside cairn"),
            std::string::npos)
      << j.dump(1);
  EXPECT_NE(j["runs"][1].value("executor_job_id", std::string()), first_slurm_id);
  const std::string out = ReadFile(fs::path(state) / "logs" / id /
                                   fmt::format("attempt-{}", j["runs"].size()) / "slurm.out");
  // The ranks report to no agent under SLURM: the resume shows in their output.
  const std::string resumed = OutputValue(out, "resumed_from_step");
  EXPECT_FALSE(resumed.empty() || resumed == "0") << out;
  const CommandResult ref = reference.get();
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  EXPECT_EQ(OutputValue(out, "weights_sha256"), OutputValue(ref.output, "weights_sha256")) << out;
  // The provenance of each attempt is there too.
  auto lineage = cairn({"lineage", id});
  EXPECT_EQ(lineage.exit_code, 0) << lineage.output;
  EXPECT_NE(lineage.output.find("attempt 2"), std::string::npos) << lineage.output;
  EXPECT_NE(lineage.output.find("SLURM job " + first_slurm_id), std::string::npos)
      << lineage.output;
  // Each attempt's checkpoints are attested, signed with that attempt's SLURM job id.
  auto lineage_json = cairn({"lineage", id, "--json"});
  ASSERT_EQ(lineage_json.exit_code, 0) << lineage_json.output;
  const auto l = nlohmann::json::parse(lineage_json.output, nullptr, false);
  ASSERT_TRUE(l.is_array() && !l.empty()) << lineage_json.output;
  auto pub = prov::VerifyKey::LoadPem(state + "/signing.pub");
  ASSERT_TRUE(pub.has_value()) << pub.error().ToString();
  std::map<uint32_t, std::string> signed_ids;  // attempt -> SLURM job id in its attestations
  std::string first_envelope;                  // an attestation of attempt 1
  for (const auto& a : l[0]["attestations"]) {
    const std::string path = a.value("path", "");
    const uint32_t attempt = a.value("attempt", 0u);
    ASSERT_GE(attempt, 1u) << a.dump();
    ASSERT_LE(attempt, j["runs"].size()) << a.dump();
    auto st = prov::VerifyAttestation(ReadFile(path), *pub);
    ASSERT_TRUE(st.has_value()) << path << ": " << st.error().ToString();
    EXPECT_EQ(st->executor, "slurm") << path;
    EXPECT_EQ(st->executor_job_id, j["runs"][attempt - 1].value("executor_job_id", ""))
        << path;
    signed_ids[attempt] = st->executor_job_id;
    if (attempt == 1) first_envelope = path;
  }
  EXPECT_EQ(signed_ids.size(), j["runs"].size()) << l.dump(1);
  EXPECT_EQ(signed_ids[1], first_slurm_id) << l.dump(1);
  ASSERT_FALSE(first_envelope.empty()) << l.dump(1);
  auto verify = cairn({"lineage", "verify", id});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find("SLURM job " + first_slurm_id), std::string::npos)
      << verify.output;
  // Another SLURM job id in attempt 1's statement: with the old signature it no longer
  // verifies; re-signed with cairnd's own key it names a job the attempt did not run as.
  const std::string original = ReadFile(first_envelope);
  auto envelope = prov::EnvelopeFromJson(original);
  ASSERT_TRUE(envelope.has_value()) << envelope.error().ToString();
  auto statement = nlohmann::json::parse(envelope->payload);
  statement["predicate"]["buildDefinition"]["internalParameters"]["executor"]["jobId"] =
      "999999";
  auto forged = *envelope;
  forged.payload = statement.dump();
  std::ofstream(first_envelope, std::ios::trunc) << prov::EnvelopeToJson(forged);
  verify = cairn({"lineage", "verify", id});
  EXPECT_NE(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find("FAIL  checkpoint step"), std::string::npos) << verify.output;
  auto key = prov::SigningKey::LoadPem(state + "/signing.key");
  ASSERT_TRUE(key.has_value()) << key.error().ToString();
  auto resigned = prov::SignStatement(statement.dump(), *key);
  ASSERT_TRUE(resigned.has_value()) << resigned.error().ToString();
  std::ofstream(first_envelope, std::ios::trunc) << *resigned;
  verify = cairn({"lineage", "verify", id});
  EXPECT_NE(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find("signed for SLURM job 999999, but attempt 1 is recorded as "
                               "SLURM job " + first_slurm_id),
            std::string::npos)
      << verify.output;
  std::ofstream(first_envelope, std::ios::trunc) << original;
  verify = cairn({"lineage", "verify", id});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;

  // `cairn cancel` cancels the SLURM job.
  auto s2 = cairn({"submit", "--executor", "slurm", "--ranks", "1", "--", "/bin/sleep", "300"});
  ASSERT_EQ(s2.exit_code, 0) << s2.output;
  const std::string id2 = s2.output.substr(0, s2.output.find('\n'));
  std::string slurm_id;
  for (int i = 0; i < 300; ++i) {
    auto j2 = job(id2);
    if (j2.value("state", "") == "JOB_RUNNING" && !j2["runs"].empty() &&
        j2["runs"][0].value("state", "") == "RUN_RUNNING") {
      slurm_id = j2["runs"][0].value("executor_job_id", std::string());
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(slurm_id.empty()) << job(id2).dump(1);
  auto c = cairn({"cancel", id2});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  const JobInfo gone = WaitForEnd(slurm_id, seconds(60));
  EXPECT_EQ(gone.state, "CANCELLED") << gone.raw;
  EXPECT_EQ(job(id2)["state"], "JOB_CANCELLED");
}

// cairnd stops (kill -9) after an attempt began and before sbatch answered. Fault
// injection: a fake sbatch first in cairnd's PATH kills its parent, cairnd, at the first
// call; then either the real sbatch submits 3 s later (a submission still on its way while
// cairnd restarts) or nothing is ever submitted. Restarted (`cairn up`), cairnd waits for
// the old submitter to end, then finds the attempt's SLURM job by name and adopts it, or,
// SLURM never having had one, submits it: the attempt goes on without a failure, and
// SLURM has exactly one job for it.
TEST_F(SlurmTest, CairndStoppedDuringSbatchAdoptsOrResubmitsTheAttempt) {
  const std::string sbatch = Which("sbatch");
  for (const bool submitted : {true, false}) {
    SCOPED_TRACE(submitted ? "SLURM got the job" : "SLURM never got the job");
    const std::string name = submitted ? "adopt" : "resubmit";
    const std::string state = (dir_ / name).string();
    const fs::path fake = dir_ / ("fake-sbatch-" + name);
    fs::create_directories(fake);
    const std::string marker = (fake / "fired").string();
    std::ofstream(fake / "sbatch")
        << "#!/bin/sh\n"
        << "# Fault injection: the first call kills cairnd (its parent) before sbatch answers.\n"
        << "if [ ! -e '" << marker << "' ]; then\n"
        << "  : > '" << marker << "'\n"
        << "  kill -9 $PPID\n"
        << (submitted ? "  sleep 3\n  exec '" + sbatch + "' \"$@\"\n" : std::string("  exit 1\n"))
        << "fi\n"
        << "exec '" << sbatch << "' \"$@\"\n";
    fs::permissions(fake / "sbatch", fs::perms::owner_all);
    const std::map<std::string, std::string> env = {
        {"PATH", fake.string() + ":" + std::getenv("PATH")}};
    const SlurmCairn cluster(state, env);
    auto cairn = [&](std::vector<std::string> args, seconds timeout = seconds(120)) {
      return cluster.Run(std::move(args), timeout);
    };
    auto up = cairn({"up", "--agents", "0", "--slurm"});
    ASSERT_EQ(up.exit_code, 0) << up.output;
    std::ifstream pids(fs::path(state) / "cluster.pids");
    pid_t cairnd = -1;
    ASSERT_TRUE(pids >> cairnd) << "no cairnd pid in " << state << "/cluster.pids";
    auto s = cairn({"submit", "--executor", "slurm", "--ranks", "1", "--", "/bin/sh", "-c",
                    "sleep 3; echo attempt-ran"});
    const std::string id = JobIdOf(s);
    ASSERT_FALSE(id.empty());
    // cairnd is killed by its sbatch.
    const auto gone = WaitUntilNone(
        [&]() -> std::vector<pid_t> {
          const auto live = LivePids();
          return std::find(live.begin(), live.end(), cairnd) == live.end()
                     ? std::vector<pid_t>{}
                     : std::vector<pid_t>{cairnd};
        },
        std::chrono::seconds(60));
    ASSERT_TRUE(gone.empty()) << "cairnd was not killed by the fake sbatch\n"
                              << ReadFile(fs::path(state) / "cairnd.log");
    ASSERT_TRUE(fs::exists(marker));
    auto again = cairn({"up", "--agents", "0", "--slurm"});  // a new cairnd, same state
    ASSERT_EQ(again.exit_code, 0) << again.output;
    auto w = cairn({"wait", id, "--timeout", "120s"}, seconds(140));
    EXPECT_EQ(w.exit_code, 0) << w.output << ReadFile(fs::path(state) / "cairnd.log");
    EXPECT_NE(w.output.find(submitted ? "slurm-adopted" : "slurm-resubmitted"),
              std::string::npos)
        << w.output;
    auto j = JobStatus(state, id);
    EXPECT_EQ(j["state"], "JOB_SUCCEEDED") << j.dump(1);
    ASSERT_EQ(j["runs"].size(), 1u) << j.dump(1);  // the attempt went on: no failure
    const std::string slurm_id = j["runs"][0].value("executor_job_id", std::string());
    ASSERT_FALSE(slurm_id.empty()) << j.dump(1);
    EXPECT_NE(ReadFile(fs::path(state) / "logs" / id / "attempt-1" / "slurm.out")
                  .find("attempt-ran"),
              std::string::npos);
    // Exactly one SLURM job under the attempt's name.
    std::smatch m;
    const std::string shown = ShowJob(slurm_id).raw;
    ASSERT_TRUE(std::regex_search(shown, m, std::regex(R"(JobName=(\S+))"))) << shown;
    const std::string job_name = m[1];
    EXPECT_NE(job_name.find(id + ".1"), std::string::npos) << job_name;
    auto named = Slurm("squeue", {"--noheader", "--states=all", "--name=" + job_name, "-o", "%i"});
    EXPECT_EQ(named.output, slurm_id + "\n") << "SLURM jobs named " << job_name;
  }
}

// Hang detection for the slurm executor: the ranks report progress to cairnd itself (UDP,
// tagged with the attempt's key). A rank stopped with SIGSTOP reports nothing more; after
// hang_timeout cairnd ends the attempt and scancels its SLURM job, and the job resumes
// from its checkpoint and finishes.
TEST_F(SlurmTest, CairndEndsAHungSlurmAttemptAndTheJobResumes) {
  const std::string state = (dir_ / "hang").string();
  const SlurmCairn cluster(state);
  auto cairn = [&](std::vector<std::string> args, seconds timeout = seconds(120)) {
    return cluster.Run(std::move(args), timeout);
  };
  auto up = cairn({"up", "--agents", "0", "--slurm"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  const std::string ckpt = (dir_ / "hang-ckpt").string();
  constexpr int kHangS = 5;
  auto s = cairn({"submit", "--executor", "slurm", "--ranks", "1", "--launcher", "mpi",
                  "--hang-timeout", std::to_string(kHangS) + "s", "--checkpoint-dir", ckpt, "--",
                  AbsBinDir() + "/cairn-fmnist", "--epochs", "100", "--steps", "8000", "--ckpt-every", "100",
                  "--ckpt-dir", ckpt, "--key-file", key_});
  const std::string id = JobIdOf(s);
  ASSERT_FALSE(id.empty());
  // Its reports reach cairnd (the step shows), and it has a checkpoint to resume from.
  auto step_of = [](const nlohmann::json& j) -> uint64_t {
    if (!j.contains("step")) return 0;
    return j["step"].is_string() ? std::stoull(j["step"].get<std::string>())
                                 : j["step"].get<uint64_t>();
  };
  nlohmann::json j;
  for (int i = 0; i < 1200; ++i) {
    j = JobStatus(state, id);
    if (step_of(j) >= 200 && fs::exists(fs::path(ckpt) / "HEAD")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(fs::exists(fs::path(ckpt) / "HEAD")) << j.dump(1);
  ASSERT_GE(step_of(j), 200u) << "no progress report reached cairnd\n" << j.dump(1);
  ASSERT_EQ(j["runs"].size(), 1u) << j.dump(1);
  const std::string slurm_id = j["runs"][0].value("executor_job_id", std::string());
  ASSERT_FALSE(slurm_id.empty()) << j.dump(1);
  pid_t rank = -1;
  for (pid_t p : JobProcesses(state, id)) {
    if (ProcessName(p) == "cairn-fmnist") rank = p;
  }
  ASSERT_GT(rank, 0) << "no cairn-fmnist process of " << id;
  const int64_t stopped_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
  ASSERT_EQ(::kill(rank, SIGSTOP), 0);

  // The attempt is ended as hung within the hang timeout (plus cairnd's 250 ms tick and
  // the last report's age), and its SLURM job is cancelled.
  int64_t failed_ms = 0;
  std::string failure;
  for (int i = 0; i < 600 && failed_ms == 0; ++i) {
    auto ev = cairn({"events", id, "--json"});
    const auto events = nlohmann::json::parse(ev.output, nullptr, false);
    if (events.is_object() && events.contains("events")) {
      for (const auto& e : events["events"]) {
        if (e.value("kind", "") != "attempt-failed") continue;
        failed_ms = std::stoll(e["unix_ms"].is_string() ? e["unix_ms"].get<std::string>()
                                                        : e["unix_ms"].dump());
        failure = e.value("message", "");
      }
    }
    if (failed_ms == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(failed_ms, 0) << JobStatus(state, id).dump(1);
  EXPECT_NE(failure.find("no progress for"), std::string::npos) << failure;
  EXPECT_GE(failed_ms - stopped_ms, (kHangS - 1) * 1000) << failure;
  EXPECT_LE(failed_ms - stopped_ms, (kHangS + 3) * 1000) << failure;
  std::printf("[ timing  ] hung rank detected %.1f s after SIGSTOP (hang_timeout %d s)\n",
              (failed_ms - stopped_ms) / 1000.0, kHangS);
  const JobInfo cancelled = WaitForEnd(slurm_id, seconds(60));
  EXPECT_EQ(cancelled.state, "CANCELLED") << cancelled.raw;

  auto w = cairn({"wait", id, "--timeout", "300s"}, seconds(320));
  EXPECT_EQ(w.exit_code, 0) << w.output;
  j = JobStatus(state, id);
  EXPECT_EQ(j["state"], "JOB_SUCCEEDED") << j.dump(1);
  ASSERT_EQ(j["runs"].size(), 2u) << j.dump(1);
  EXPECT_NE(j["runs"][1].value("executor_job_id", std::string()), slurm_id);
  const std::string out =
      ReadFile(fs::path(state) / "logs" / id / "attempt-2" / "slurm.out");
  const std::string resumed = OutputValue(out, "resumed_from_step");
  EXPECT_FALSE(resumed.empty() || resumed == "0") << out;
  EXPECT_TRUE(JobProcesses(state, id).empty());
}

// (d) Last: stop leaves nothing running, and says so; status says down.
TEST_F(SlurmTest, StopLeavesNoDaemonAndNoJobProcess) {
  // A job that is still running when the cluster stops, with a process that left the
  // job's process tree.
  const fs::path script = dir_ / "sleeper.sh";
  std::ofstream(script) << "#!/bin/bash\nsetsid sleep 600 &\nsrun sleep 600\n";
  fs::permissions(script, fs::perms::owner_all);
  auto sb = Slurm("sbatch",
                  {"--parsable", "--output=" + (dir_ / "sleeper.out").string(), script.string()});
  ASSERT_EQ(sb.exit_code, 0) << sb.output;
  const std::string id = sb.output.substr(0, sb.output.find_first_of(";\n"));
  for (int i = 0; i < 100 && ShowJob(id).state != "RUNNING"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the step starts
  EXPECT_FALSE(ProcessesMentioning(Cluster()->dir()).empty());

  auto stop = ClusterCtl("stop");
  stopped_ = true;
  EXPECT_EQ(stop.exit_code, 0) << stop.output;
  auto status = ClusterCtl("status");
  EXPECT_EQ(status.exit_code, 3) << status.output;
  auto again = ClusterCtl("stop");
  EXPECT_EQ(again.exit_code, 0) << again.output;

  // Nothing of the cluster (daemons: their command lines; job processes: SLURM_CONF in
  // their environment), nothing any test started (paths under the test directories).
  std::string left;
  for (pid_t p : ProcessesMentioning(Cluster()->dir())) left += DescribeProcess(p) + "\n";
  for (pid_t p : ProcessesMentioning("cairn_slurm_test_")) left += DescribeProcess(p) + "\n";
  EXPECT_EQ(left, "") << "still running after local-cluster stop";
}

}  // namespace
}  // namespace cairn::testing
