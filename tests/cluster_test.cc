// End to end on a local cluster (`cairn up`: cairnd + 2 agents on this machine): the
// Fashion-MNIST job with 4 ranks over both agents (launcher mpi) survives a SIGKILLed
// rank, a hung (SIGSTOPped) rank and a kill -9 of cairnd, each time finishing with the
// weights of an uninterrupted run; a cancel leaves no process behind; a job whose rank
// fails the same way twice is not retried forever. After every test (also a failed one)
// the cluster is taken down and no process of it may be left.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "checkpoint/crypto.h"
#include "checkpoint/types.h"
#include "provenance/attestation.h"
#include "provenance/digest.h"
#include "provenance/dsse.h"
#include "tests/process_util.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using testing::CommandResult;
using testing::JobProcesses;
using testing::ProcessesMentioning;
using testing::RankPid;
using testing::ReadFile;
using testing::RunCommand;

constexpr int kSteps = 240;

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_cluster_{}_{}", ::getpid(), counter_++);
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    key_ = (dir_ / "key").string();
    testing::WriteKeyFile(key_);
    auto up = Cli({"up", "--agents", "2", "--cpus-per-agent", "2", "--node-timeout", "3s"});
    ASSERT_EQ(up.exit_code, 0) << up.output;
  }

  void TearDown() override {
    auto down = Cli({"down"});
    EXPECT_EQ(down.exit_code, 0) << down.output;
    // Nothing of the cluster or its jobs may be left, also after a failed test.
    auto left = testing::WaitUntilNone([&] { return ProcessesMentioning(dir_.string()); },
                                       std::chrono::seconds(5));
    EXPECT_TRUE(left.empty()) << left.size() << " process(es) left, first "
                              << testing::DescribeProcess(left[0]);
    for (pid_t p : left) ::kill(p, SIGKILL);
    if (!HasFailure()) fs::remove_all(dir_);
  }

  CommandResult Cli(std::vector<std::string> args,
                    std::chrono::seconds timeout = std::chrono::seconds(120)) {
    return testing::RunCairn(dir_.string(), std::move(args),
                             {{"PATH", testing::BinDir() + ":" + std::getenv("PATH")}}, timeout);
  }

  // Submits the Fashion-MNIST job, checkpointing into dir_/name; returns the job id.
  std::string SubmitFmnist(const std::string& name, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"submit", "--ranks", "4", "--launcher", "mpi", "--name",
                                     name, "--max-restarts", "3", "--grace-period", "5s"};
    args.insert(args.end(), extra.begin(), extra.end());
    const std::vector<std::string> command = {
        "--",           "cairn-fmnist", "--epochs",   "1",  "--steps", std::to_string(kSteps),
        "--ckpt-every", "20",           "--key-file", key_, "--ckpt-dir", (dir_ / name).string()};
    args.insert(args.end(), command.begin(), command.end());
    return testing::JobIdOf(Cli(args));
  }

  nlohmann::json Job(const std::string& id) { return testing::JobStatus(dir_.string(), id); }

  static uint64_t StepOf(const nlohmann::json& j) {
    if (!j.contains("step")) return 0;
    return j["step"].is_string() ? std::stoull(j["step"].get<std::string>())
                                 : j["step"].get<uint64_t>();
  }

  // Polls until the job's live step reaches `step` (bounded).
  bool WaitForStep(const std::string& id, uint64_t step) {
    for (int i = 0; i < 600; ++i) {
      if (StepOf(Job(id)) >= step) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  std::string WeightsOf(const std::string& id) { return testing::JobWeights(dir_.string(), id); }

  // The weights of the job run without interruption (computed once per test binary).
  std::string Reference() {
    static std::string sha;
    if (sha.empty()) {
      const std::string id = SubmitFmnist("reference");
      auto w = Cli({"wait", id, "--timeout", "180s"});
      EXPECT_EQ(w.exit_code, 0) << w.output;
      sha = WeightsOf(id);
    }
    return sha;
  }

  // `cairn lineage JOB --json`: the job and its ancestors.
  nlohmann::json Lineage(const std::string& id) {
    auto r = Cli({"lineage", id, "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto j = nlohmann::json::parse(r.output, nullptr, false);
    return j.is_discarded() ? nlohmann::json::array({nlohmann::json::object()}) : j;
  }

  // proto JSON writes bytes as base64: as hex.
  static std::string Base64Hex(const std::string& b64) {
    auto raw = prov::Base64Decode(b64);
    return raw ? ckpt::ToHex(std::span(reinterpret_cast<const uint8_t*>(raw->data()), raw->size()))
               : std::string("(bad base64)");
  }

  fs::path dir_;
  std::string key_;
  static inline int counter_ = 0;
};

std::string Git(const fs::path& repo, std::vector<std::string> args) {
  std::vector<std::string> argv = {"/usr/bin/git", "-C", repo.string(), "-c", "user.name=t",
                                   "-c", "user.email=t@example.com"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = RunCommand(argv);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return r.output;
}

std::string Sha256Hex(const std::string& path) {
  auto d = prov::Sha256File(path);
  return d ? ckpt::ToHex(*d) : std::string();
}

// The in-toto statement inside a DSSE envelope file, and a way to write one back.
nlohmann::json StatementOf(const std::string& envelope_path) {
  auto env = nlohmann::json::parse(ReadFile(envelope_path));
  return nlohmann::json::parse(*prov::Base64Decode(env["payload"].get<std::string>()));
}
void WriteEnvelopeWithPayload(const std::string& path, const nlohmann::json& statement) {
  auto env = nlohmann::json::parse(ReadFile(path));
  env["payload"] = prov::Base64Encode(statement.dump());
  std::ofstream(path, std::ios::trunc) << env.dump();
}

const nlohmann::json* CodeDependency(const nlohmann::json& statement) {
  for (const auto& d : statement["predicate"]["buildDefinition"]["resolvedDependencies"]) {
    if (d.value("name", "") == "code") return &d;
  }
  return nullptr;
}

TEST_F(ClusterTest, KilledRankIsRestartedFromTheCheckpointWithIdenticalWeights) {
  const std::string reference = Reference();
  const std::string id = SubmitFmnist("killed");
  ASSERT_TRUE(WaitForStep(id, 70));
  const pid_t victim = RankPid((dir_ / "killed").string(), 3);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  auto w = Cli({"wait", id, "--timeout", "180s"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
  EXPECT_NE(w.output.find("attempt-failed"), std::string::npos) << w.output;
  auto j = Job(id);
  EXPECT_EQ(j["state"], "JOB_SUCCEEDED") << j.dump(1);
  EXPECT_GE(j.value("restarts", 0), 1) << j.dump(1);
  EXPECT_EQ(j["runs"].size(), 2u) << j.dump(1);
  EXPECT_GT(j["runs"][1].value("resumed_from_step", std::string("0")), std::string("0"))
      << j.dump(1);
  EXPECT_EQ(WeightsOf(id), reference);
  EXPECT_TRUE(JobProcesses(dir_.string(), id).empty());
  // Provenance: attempt 2 records the checkpoint it loaded, which is the one its rank 0
  // logged, and which attempt 1 reported as its head.
  auto lineage = Lineage(id);
  ASSERT_EQ(lineage[0]["attempts"].size(), 2u) << lineage.dump(1);
  const std::string loaded = lineage[0]["attempts"][1].value("resumed_loaded", std::string());
  auto logs = Cli({"logs", id, "--attempt", "2"});
  std::smatch m;
  ASSERT_TRUE(std::regex_search(logs.output, m,
                                std::regex("resumed from step \\d+ .*: manifest ([0-9a-f]{64})")))
      << logs.output;
  EXPECT_EQ(loaded, m[1].str()) << lineage.dump(1);
  EXPECT_EQ(Base64Hex(lineage[0]["attempts"][1]["record"].value("resumed_from_manifest", "")),
            m[1].str());
  auto verify = Cli({"lineage", "verify", id});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
}

// Regression: an attempt that succeeds without writing a checkpoint of its own (attempt 1
// trained to the last step and checkpointed it, then failed; attempt 2 resumes at the last
// step, has nothing left to train or save, and exits 0) used to get a "final" attestation
// of attempt 1's checkpoint signed with attempt 2's record, which `cairn lineage verify`
// rejects (the manifest binds attempt 1's record). Now every attestation names the
// attempt whose record the checkpoint binds, and verify passes.
TEST_F(ClusterTest, SuccessWithoutACheckpointOfItsOwnAttestsNoOtherAttemptsCheckpoint) {
  const std::string ckpt = (dir_ / "resumed-at-end").string();
  const std::string id = testing::JobIdOf(Cli(
      {"submit", "--ranks", "1", "--launcher", "mpi", "--name", "resumed-at-end",
       "--max-restarts", "1", "--checkpoint-dir", ckpt, "--", "/bin/sh", "-c",
       "cairn-fmnist \"$@\" || exit; [ \"$CAIRN_ATTEMPT\" != 1 ] || exit 3", "sh", "--steps",
       "40", "--ckpt-every", "20", "--key-file", key_, "--ckpt-dir", ckpt}));
  auto w = Cli({"wait", id, "--timeout", "180s"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
  auto j = Job(id);
  EXPECT_EQ(j["state"], "JOB_SUCCEEDED") << j.dump(1);
  ASSERT_EQ(j["runs"].size(), 2u) << j.dump(1);
  EXPECT_EQ(j["runs"][0]["state"], "RUN_FAILED") << j.dump(1);
  EXPECT_EQ(j["runs"][1].value("resumed_from_step", std::string()), "40") << j.dump(1);
  EXPECT_NE(j.value("message", "").find("wrote no checkpoint of its own"), std::string::npos)
      << j.dump(1);
  // Attempt 1's checkpoints are attested under attempt 1; attempt 2 attests nothing.
  auto l = Lineage(id)[0];
  std::set<std::string> attested;
  for (const auto& a : l["attestations"]) {
    EXPECT_EQ(a.value("attempt", 0u), 1u) << a.dump();
    attested.insert(a.value("name", std::string()));
  }
  EXPECT_TRUE(attested.contains("checkpoint step 40")) << l.dump(1);
  auto verify = Cli({"lineage", "verify", id});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find(", 0 failed"), std::string::npos) << verify.output;
}

// Provenance end to end: code versions (clean and dirty tree), inputs with pins, signed
// attestations that `cairn lineage verify` checks (and catches when tampered with), a
// pinned input changed by one byte refusing the job, and a job started from another's
// export linked to it.
TEST_F(ClusterTest, ProvenanceRecordsCodeAndInputsSignsCheckpointsAndRefusesChangedPins) {
  // A git working tree for the job, and a private copy of the data set.
  const fs::path repo = dir_ / "repo";
  fs::create_directories(repo);
  std::ofstream(repo / "train.cfg") << "lr: 0.001\n";
  Git(repo, {"init", "-q"});
  Git(repo, {"add", "train.cfg"});
  Git(repo, {"commit", "-q", "-m", "first"});
  const std::string commit = Git(repo, {"rev-parse", "HEAD"}).substr(0, 40);
  const fs::path data = dir_ / "data";
  fs::create_directories(data);
  for (const auto& e : fs::directory_iterator("/usr/share/datasets/fashion-mnist")) {
    fs::copy_file(e.path(), data / e.path().filename());
  }
  const std::string labels = (data / "t10k-labels-idx1-ubyte.gz").string();
  const std::string pin = Sha256Hex(labels);
  auto submit = [&](const std::string& name, const std::string& pinned_file) {
    auto r = Cli({"submit", "--ranks", "2", "--launcher", "mpi", "--name", name, "--workdir",
                  repo.string(), "--max-restarts", "0", "--input", "data:" + data.string(),
                  "--input", "data:" + pinned_file + "@" + pin, "--", "cairn-fmnist",
                  "--data-dir", data.string(), "--steps", "40", "--ckpt-every", "4",
                  "--key-file", key_, "--ckpt-dir", (dir_ / name).string()});
    return testing::JobIdOf(r);
  };

  // 1. A clean tree.
  const std::string clean = submit("clean", labels);
  auto w = Cli({"wait", clean, "--timeout", "180s"});
  ASSERT_EQ(w.exit_code, 0) << w.output;
  auto l = Lineage(clean)[0];
  EXPECT_EQ(l["code"]["git_commit"], commit) << l.dump(1);
  EXPECT_EQ(l["code"]["dirty"], false) << l.dump(1);
  ASSERT_EQ(l["attempts"].size(), 1u) << l.dump(1);
  const auto& rec = l["attempts"][0]["record"];
  ASSERT_EQ(rec["inputs"].size(), 2u) << rec.dump(1);
  EXPECT_EQ(rec["inputs"][0]["pinned"], false);
  EXPECT_EQ(rec["inputs"][1]["pinned"], true);
  EXPECT_EQ(Base64Hex(rec["inputs"][1]["sha256"]), pin);
  std::string final_envelope;
  for (const auto& a : l["attestations"]) {
    if (a["name"] == "final") final_envelope = a["path"];
  }
  ASSERT_FALSE(final_envelope.empty()) << l.dump(1);
  // Every checkpoint (steps 4, 8, ..., 40: several commit between two heartbeats) is
  // attested.
  std::set<std::string> attested;
  for (const auto& a : l["attestations"]) attested.insert(a.value("name", std::string()));
  for (int step = 4; step <= 40; step += 4) {
    EXPECT_TRUE(attested.contains(fmt::format("checkpoint step {}", step)))
        << "step " << step << " not attested: " << l.dump(1);
  }
  const auto statement = StatementOf(final_envelope);
  ASSERT_NE(CodeDependency(statement), nullptr) << statement.dump(1);
  EXPECT_EQ((*CodeDependency(statement))["annotations"]["dirty"], false);
  EXPECT_EQ((*CodeDependency(statement))["digest"]["gitCommit"], commit);
  auto verify = Cli({"lineage", "verify", clean});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find(", 0 failed"), std::string::npos) << verify.output;

  // 2. A dirty tree: the diff is kept, its digest recorded and attested.
  std::ofstream(repo / "train.cfg", std::ios::app) << "momentum: 0.9\n";
  const std::string dirty = submit("dirty", labels);
  w = Cli({"wait", dirty, "--timeout", "180s"});
  ASSERT_EQ(w.exit_code, 0) << w.output;
  l = Lineage(dirty)[0];
  EXPECT_EQ(l["code"]["dirty"], true) << l.dump(1);
  auto diff = prov::Base64Decode(l["code"].value("diff", ""));
  ASSERT_TRUE(diff);
  EXPECT_NE(diff->find("+momentum: 0.9"), std::string::npos) << *diff;
  const std::string diff_hex = Base64Hex(l["code"]["diff_sha256"]);
  EXPECT_EQ(diff_hex, ckpt::ToHex(ckpt::Sha256Of(std::as_bytes(std::span(*diff)))));
  for (const auto& a : l["attestations"]) {
    const auto st = StatementOf(a["path"]);
    ASSERT_NE(CodeDependency(st), nullptr);
    EXPECT_EQ((*CodeDependency(st))["annotations"]["dirty"], true);
    EXPECT_EQ((*CodeDependency(st))["annotations"]["diffSha256"], diff_hex);
  }

  // 3. Tampered attestations fail verify, each naming the problem; the original passes.
  const std::string original = ReadFile(final_envelope);
  auto tampered = statement;
  tampered["subject"][0]["digest"]["sha256"] = std::string(64, 'a');
  WriteEnvelopeWithPayload(final_envelope, tampered);
  verify = Cli({"lineage", "verify", clean});
  EXPECT_NE(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find("FAIL  final (attempt 1)"), std::string::npos) << verify.output;
  std::ofstream(final_envelope, std::ios::trunc) << original;
  tampered = statement;
  tampered["predicate"]["buildDefinition"]["externalParameters"]["jobSpec"]["ranks"] = 64;
  WriteEnvelopeWithPayload(final_envelope, tampered);
  verify = Cli({"lineage", "verify", clean});
  EXPECT_NE(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find("FAIL  final (attempt 1)"), std::string::npos) << verify.output;
  // Signed properly, but by another key.
  auto other = prov::SigningKey::Generate();
  ASSERT_TRUE(other);
  auto resigned = prov::SignStatement(statement.dump(), *other);
  ASSERT_TRUE(resigned) << resigned.error().ToString();
  std::ofstream(final_envelope, std::ios::trunc) << *resigned;
  verify = Cli({"lineage", "verify", clean});
  EXPECT_NE(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find(other->keyid().substr(0, 16)), std::string::npos) << verify.output;
  std::ofstream(final_envelope, std::ios::trunc) << original;
  verify = Cli({"lineage", "verify", clean});
  EXPECT_EQ(verify.exit_code, 0) << verify.output;

  // 4. A job started from the clean job's export links to it.
  auto exported = RunCommand({testing::BinDir() + "/cairn", "ckpt", "export",
                              (dir_ / "clean").string(), "--step", "40", "--out",
                              (dir_ / "clean.h5").string(), "--key-file", key_});
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  auto child = Cli({"submit", "--ranks", "1", "--name", "child", "--input",
                    "model:" + (dir_ / "clean.h5").string(), "--", "/bin/true"});
  ASSERT_EQ(child.exit_code, 0) << child.output;
  const std::string child_id = child.output.substr(0, child.output.find('\n'));
  w = Cli({"wait", child_id, "--timeout", "60s"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
  auto tree = Lineage(child_id);
  ASSERT_EQ(tree.size(), 2u) << tree.dump(1);
  ASSERT_EQ(tree[0]["parents"].size(), 1u) << tree.dump(1);
  EXPECT_EQ(tree[0]["parents"][0]["parent_job"], clean);
  EXPECT_EQ(tree[1]["job"]["job_id"], clean);

  // 5. The pinned file changed by one byte: the job does not start, and says why.
  {
    std::fstream f(labels, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(100);
    const char c = static_cast<char>(f.get());
    f.seekp(100);
    f.put(static_cast<char>(c ^ 1));
  }
  const std::string actual = Sha256Hex(labels);
  const std::string refused = submit("refused", labels);
  w = Cli({"wait", refused, "--timeout", "60s"});
  EXPECT_NE(w.exit_code, 0) << w.output;
  auto j = Job(refused);
  EXPECT_EQ(j["state"], "JOB_FAILED") << j.dump(1);
  const std::string msg = j.value("message", std::string());
  EXPECT_NE(msg.find(labels), std::string::npos) << msg;
  EXPECT_NE(msg.find(pin), std::string::npos) << msg;
  EXPECT_NE(msg.find(actual), std::string::npos) << msg;
  EXPECT_EQ(j.value("restarts", 0), 0);
  EXPECT_FALSE(fs::exists(dir_ / "refused")) << "the job ran";
  EXPECT_TRUE(JobProcesses(dir_.string(), refused).empty());
  // ... and the finished job's lineage now says its data changed.
  verify = Cli({"lineage", "verify", clean});
  EXPECT_NE(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find(labels + " changed since the run"), std::string::npos)
      << verify.output;
}

TEST_F(ClusterTest, HungRankIsDetectedWithinTheHangTimeoutAndTheJobResumes) {
  const std::string reference = Reference();
  const std::string id = SubmitFmnist("hung", {"--hang-timeout", "3s"});
  ASSERT_TRUE(WaitForStep(id, 70));
  const pid_t victim = RankPid((dir_ / "hung").string(), 2);
  ASSERT_GT(victim, 0);
  const auto stopped_at = std::chrono::steady_clock::now();
  ASSERT_EQ(::kill(victim, SIGSTOP), 0);
  // Detected and torn down (the stopped rank included) within the hang timeout + slack.
  bool restarted = false;
  while (std::chrono::steady_clock::now() - stopped_at < std::chrono::seconds(15)) {
    auto j = Job(id);
    if (j.value("restarts", 0) >= 1) {
      restarted = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(restarted);
  auto w = Cli({"wait", id, "--timeout", "180s"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
  auto j = Job(id);
  EXPECT_NE(j["runs"][0].value("failure", std::string()).find("no progress"), std::string::npos)
      << j.dump(1);
  EXPECT_EQ(WeightsOf(id), reference);
}

TEST_F(ClusterTest, CairndKilledMidRunAndRestartedLosesNothing) {
  const std::string reference = Reference();
  const std::string id = SubmitFmnist("coordinator");
  ASSERT_TRUE(WaitForStep(id, 70));
  std::ifstream pids(dir_ / "cluster.pids");
  pid_t cairnd = 0;
  pids >> cairnd;
  ASSERT_GT(cairnd, 0);
  ASSERT_EQ(::kill(cairnd, SIGKILL), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto up = Cli({"up"});  // restarts what died: cairnd
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_NE(up.output.find("restarted cairnd"), std::string::npos) << up.output;
  auto w = Cli({"wait", id, "--timeout", "180s"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
  auto j = Job(id);
  EXPECT_EQ(j["state"], "JOB_SUCCEEDED") << j.dump(1);
  EXPECT_EQ(j.value("restarts", 0), 0) << "the attempt should have survived: " << j.dump(1);
  EXPECT_EQ(WeightsOf(id), reference);
}

TEST_F(ClusterTest, CancelStopsEveryProcessOfTheJob) {
  const std::string id = SubmitFmnist("cancelled");
  ASSERT_TRUE(WaitForStep(id, 30));
  auto c = Cli({"cancel", id});
  EXPECT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(c.output, id + " CANCELLED\n");
  // mpirun, the Open MPI daemons and the ranks all carry the job id in their environment.
  EXPECT_TRUE(JobProcesses(dir_.string(), id).empty());
  EXPECT_TRUE(ProcessesMentioning((dir_ / "cancelled").string()).empty());
  auto j = Job(id);
  EXPECT_EQ(j["state"], "JOB_CANCELLED");
  EXPECT_EQ(j["runs"][0]["state"], "RUN_CANCELLED") << j.dump(1);
  // Resume brings it back; it continues from its checkpoint and finishes.
  auto r = Cli({"resume", id});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto w = Cli({"wait", id, "--timeout", "180s"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
  EXPECT_GT(Job(id)["runs"][1].value("resumed_from_step", std::string("0")), std::string("0"));
}

TEST_F(ClusterTest, TheSameFailureTwiceIsNotRetriedForever) {
  // env launcher: rank 1 always fails at once with exit code 3.
  auto s = Cli({"submit", "--ranks", "2", "--max-restarts", "10", "--", "/bin/sh", "-c",
                "if [ \"$RANK\" = 1 ]; then echo broken >&2; exit 3; fi; sleep 30"});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const std::string id = s.output.substr(0, s.output.find('\n'));
  auto w = Cli({"wait", id, "--timeout", "60s"});
  EXPECT_EQ(w.exit_code, 1) << w.output;
  auto j = Job(id);
  EXPECT_EQ(j["state"], "JOB_FAILED") << j.dump(1);
  EXPECT_EQ(j["runs"].size(), 2u) << j.dump(1);
  EXPECT_NE(j.value("message", std::string()).find("same error"), std::string::npos) << j.dump(1);
  auto logs = Cli({"logs", id, "--rank", "1"});
  EXPECT_NE(logs.output.find("broken"), std::string::npos) << logs.output;
  auto events = Cli({"events", id});
  EXPECT_NE(events.output.find("exited with code 3"), std::string::npos) << events.output;
  // (By the job's environment: a "sleep 30" elsewhere on the machine is not ours.)
  EXPECT_TRUE(JobProcesses(dir_.string(), id).empty());
}

// GPUs from the driver (label gpu; skips without one): each agent registers the GPUs NVML
// reports (model, memory, UUID), the local cluster's simulated nodes split them, and a
// job asking for a GPU per rank gets a concrete one in CUDA_VISIBLE_DEVICES and trains
// on it with cuBLAS and NCCL.
TEST_F(ClusterTest, GpuJobGetsARegisteredGpuAndTrainsOnIt) {
  auto nodes = Cli({"nodes", "--json"});
  ASSERT_EQ(nodes.exit_code, 0) << nodes.output;
  auto n = nlohmann::json::parse(nodes.output, nullptr, false);
  ASSERT_FALSE(n.is_discarded()) << nodes.output;
  std::map<std::string, std::vector<std::string>> indices;  // node -> its GPUs' indices
  std::size_t total = 0;
  std::set<std::string> uuids;
  for (const auto& node : n.value("nodes", nlohmann::json::array())) {
    const auto& res = node.value("resources", nlohmann::json::object());
    for (const auto& g : res.value("gpus", nlohmann::json::array())) {
      ++total;
      EXPECT_FALSE(g.value("model", std::string()).empty()) << g.dump();
      EXPECT_TRUE(g.value("uuid", std::string()).starts_with("GPU-")) << g.dump();
      EXPECT_TRUE(uuids.insert(g.value("uuid", std::string())).second)
          << "one GPU registered by two simulated nodes: " << n.dump(1);
      indices[node.value("node_id", std::string())].push_back(
          std::to_string(g.value("index", 0)));
    }
  }
  if (total == 0) GTEST_SKIP() << "no GPU registered (the driver reports none): " << nodes.output;
  auto s = Cli({"submit", "--ranks", "1", "--gpus-per-rank", "1", "--name", "gpu",
                "--max-restarts", "1", "--", "/bin/sh", "-c",
                "echo \"visible=$CUDA_VISIBLE_DEVICES order=$CUDA_DEVICE_ORDER\"; exec "
                "cairn-fmnist --device cuda --epochs 1 --steps 300 --ckpt-every 100 --key-file " +
                    key_ + " --ckpt-dir " + (dir_ / "gpu").string()});
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const std::string id = s.output.substr(0, s.output.find('\n'));
  auto w = Cli({"wait", id, "--timeout", "300s"}, std::chrono::seconds(320));
  EXPECT_EQ(w.exit_code, 0) << w.output;
  auto logs = Cli({"logs", id});
  EXPECT_NE(logs.output.find("training on CUDA device"), std::string::npos) << logs.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(logs.output, m, std::regex("visible=(\\d+) order=PCI_BUS_ID")))
      << logs.output;
  auto j = Job(id);
  ASSERT_FALSE(j["runs"].empty()) << j.dump(1);
  // A finished attempt still says where it ran.
  ASSERT_EQ(j["runs"].back().value("nodes", nlohmann::json::array()).size(), 1u) << j.dump(1);
  const std::string node = j["runs"].back()["nodes"][0];
  const auto& mine = indices[node];
  EXPECT_NE(std::find(mine.begin(), mine.end(), m[1].str()), mine.end())
      << "GPU " << m[1] << " is not one node " << node << " registered: " << n.dump(1);
  EXPECT_NE(logs.output.find("weights_sha256="), std::string::npos) << logs.output;
}

}  // namespace
}  // namespace cairn
