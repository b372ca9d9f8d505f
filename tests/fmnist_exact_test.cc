// Exact resume of the reference job: a run interrupted (SIGKILL of one rank, SIGTERM of
// one rank, or both, one after the other) and started again with the same checkpoint
// directory ends with the same weights_sha256 as an uninterrupted run, for 1, 2 and 4
// ranks; and with --reduce exact, the weights do not depend on the number of ranks, so a
// run may resume on a different number of ranks.
//
// Interruption steps and ranks are drawn at random (printed, and reproducible with
// CAIRN_TEST_SEED); the signal is sent by this test to the rank's pid when that rank's
// progress report for the step arrives, exactly as the orchestrator's agent would.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "tests/process_util.h"
#include "tests/training_run.h"

namespace cairn::testing {
namespace {

constexpr uint64_t kSteps = 240;
constexpr uint64_t kCkptEvery = 40;

class FmnistExact : public ::testing::Test {
 public:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cairn_fmnist_exact_" + io::RandomSuffix());
    std::filesystem::create_directories(dir_);
    key_ = (dir_ / "master.key").string();
    auto r = RunCommand({BinDir() + "/cairn", "ckpt", "keygen", "--out", key_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    uint64_t seed = std::random_device{}();
    if (const char* s = std::getenv("CAIRN_TEST_SEED")) seed = std::strtoull(s, nullptr, 10);
    rng_.seed(seed);
    std::printf("[ random  ] CAIRN_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  std::vector<std::string> Args(const std::string& ckpt, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a = {BinDir() + "/cairn-fmnist", "--steps", std::to_string(kSteps),
                                  "--ckpt-every", std::to_string(kCkptEvery),
                                  "--key-file", key_, "--ckpt-dir", (dir_ / ckpt).string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  // Runs to completion; returns weights_sha256.
  std::string Complete(const std::string& ckpt, int ranks, const std::vector<std::string>& extra = {}) {
    auto r = TrainingRun::Run(Args(ckpt, extra), ranks, std::nullopt);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string sha = OutputValue(r.output, "weights_sha256");
    EXPECT_EQ(sha.size(), 64u) << r.output;
    return sha;
  }

  // Runs until one random rank is signalled at a random step; expects the run to end by it.
  uint64_t Interrupt(const std::string& ckpt, int ranks, int signal, uint64_t after,
                     const std::vector<std::string>& extra = {}) {
    const int world = std::max(ranks, 1);
    Interruption intr;
    intr.rank = std::uniform_int_distribution<int>(0, world - 1)(rng_);
    intr.at_step = std::uniform_int_distribution<uint64_t>(after + 3, kSteps - 10)(rng_);
    intr.signal = signal;
    std::printf("[ drawn   ] %s rank %d of %d at step %llu\n", strsignal(signal), intr.rank, world,
                static_cast<unsigned long long>(intr.at_step));
    auto r = TrainingRun::Run(Args(ckpt, extra), ranks, intr);
    EXPECT_TRUE(r.interrupted) << r.output;
    if (signal == SIGTERM) {
      EXPECT_EQ(r.exit_code, 75) << r.output;  // preempted, after saving
      EXPECT_NE(r.output.find("preempted at step"), std::string::npos) << r.output;
    } else {
      EXPECT_NE(r.exit_code, 0) << r.output;
    }
    EXPECT_EQ(OutputValue(r.output, "weights_sha256"), "") << "the interrupted run finished";
    return r.interrupted_at;
  }

  std::filesystem::path dir_;
  std::string key_;
  std::mt19937_64 rng_;
};

void ExpectResumeMatches(FmnistExact* t, int ranks) {
  const std::string baseline = t->Complete("baseline", ranks);
  ASSERT_EQ(baseline.size(), 64u);

  t->Interrupt("killed", ranks, SIGKILL, 0);
  EXPECT_EQ(t->Complete("killed", ranks), baseline) << "SIGKILL then resume";

  t->Interrupt("preempted", ranks, SIGTERM, 0);
  EXPECT_EQ(t->Complete("preempted", ranks), baseline) << "SIGTERM then resume";

  uint64_t first = t->Interrupt("twice", ranks, SIGKILL, 0);
  // The second interruption comes after the point the first one reached.
  t->Interrupt("twice", ranks, SIGTERM, std::min<uint64_t>(first, kSteps - 20));
  EXPECT_EQ(t->Complete("twice", ranks), baseline) << "two interruptions then resume";
}

TEST_F(FmnistExact, OneRank) { ExpectResumeMatches(this, 0); }
TEST_F(FmnistExact, TwoRanks) { ExpectResumeMatches(this, 2); }
TEST_F(FmnistExact, FourRanks) { ExpectResumeMatches(this, 4); }

TEST_F(FmnistExact, ExactReductionResumesOnADifferentNumberOfRanks) {
  const std::vector<std::string> exact = {"--reduce", "exact", "--micro-batch", "8"};
  const std::string four = Complete("four", 4, exact);
  ASSERT_EQ(four.size(), 64u);
  // Independent of the rank count altogether.
  EXPECT_EQ(Complete("one", 0, exact), four) << "1 rank vs 4 ranks";

  Interrupt("4to2", 4, SIGKILL, 0, exact);
  EXPECT_EQ(Complete("4to2", 2, exact), four) << "4 ranks killed, resumed on 2";

  Interrupt("2to4", 2, SIGTERM, 0, exact);
  EXPECT_EQ(Complete("2to4", 4, exact), four) << "2 ranks preempted, resumed on 4";
}

TEST_F(FmnistExact, ResumeRefusesAChangedConfiguration) {
  Interrupt("cfg", 0, SIGTERM, 0);
  auto r = TrainingRun::Run(Args("cfg", {"--batch", "32"}), 0, std::nullopt);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("trained with --batch 64, this run asks for 32"), std::string::npos)
      << r.output;
}

// The job's accuracy promise: >= 85% test accuracy after 3 epochs (label slow).
TEST_F(FmnistExact, ReachesTargetAccuracyInThreeEpochs) {
  auto r = TrainingRun::Run({BinDir() + "/cairn-fmnist", "--epochs", "3"}, 0, std::nullopt);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string acc = OutputValue(r.output, "test_accuracy");
  ASSERT_FALSE(acc.empty()) << r.output;
  EXPECT_GE(std::stod(acc), 0.85) << r.output;
  // Per-epoch lines, then the two result lines last.
  EXPECT_NE(r.output.find("epoch 3 step 2811"), std::string::npos) << r.output;
  const auto tail = r.output.substr(r.output.rfind("test_accuracy="));
  EXPECT_EQ(tail.find("weights_sha256="), tail.find('\n') + 1) << tail;
}

// Bad data: a clear error naming the file, non-zero exit, nothing trained.
TEST_F(FmnistExact, BadDatasetIsNamed) {
  const std::string data = (dir_ / "data").string();
  std::filesystem::create_directories(data);
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(data + "/" + name, std::ios::binary) << bytes;
  };
  // Images with the labels' magic; labels fine.
  write("train-images-idx3-ubyte", std::string("\x00\x00\x08\x01\x00\x00\x00\x01"
                                               "\x00\x00\x00\x1c\x00\x00\x00\x1c", 16) +
                                       std::string(784, '\x01'));
  write("train-labels-idx1-ubyte", std::string("\x00\x00\x08\x01\x00\x00\x00\x01\x03", 9));
  auto r = RunCommand({BinDir() + "/cairn-fmnist", "--data-dir", data});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(data + "/train-images-idx3-ubyte: wrong magic 0x00000801"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("weights_sha256="), std::string::npos);

  auto missing = RunCommand({BinDir() + "/cairn-fmnist", "--data-dir", data + "/nowhere"});
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("nowhere/train-images-idx3-ubyte.gz: no such file"),
            std::string::npos)
      << missing.output;
}

// The cairn config file (--config, else $CAIRN_CONFIG) sets the job's log level like
// every cairn binary's; a broken one is an error naming file, line and key.
TEST_F(FmnistExact, ConfigFileSetsTheLogLevelAndABadOneIsNamed) {
  const std::string quiet = (dir_ / "quiet.yaml").string();
  std::ofstream(quiet) << "log_level: warn\n";
  auto r = RunCommand({BinDir() + "/cairn-fmnist", "--config", quiet, "--steps", "3"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find(" I [fmnist]"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("weights_sha256="), std::string::npos) << r.output;
  auto loud = RunCommand({BinDir() + "/cairn-fmnist", "--steps", "3"});
  EXPECT_NE(loud.output.find(" I [fmnist]"), std::string::npos) << loud.output;

  const std::string bad = (dir_ / "bad.yaml").string();
  std::ofstream(bad) << "log_levl: warn\n";
  auto b = RunCommand({BinDir() + "/cairn-fmnist", "--config", bad, "--steps", "3"});
  EXPECT_EQ(b.exit_code, 2) << b.output;
  EXPECT_NE(b.output.find(bad + ":1:1: unknown key 'log_levl'"), std::string::npos) << b.output;
  EXPECT_EQ(b.output.find("weights_sha256="), std::string::npos);
}

// --device cuda (label gpu): reaches the accuracy target in 3 epochs, and a preempted GPU
// run resumes bit-identically. Skips without a GPU.
TEST_F(FmnistExact, CudaDeviceTrainsAndResumesExactly) {
  auto probe = RunCommand({BinDir() + "/cairn-fmnist", "--device", "cuda", "--steps", "1"});
  if (probe.output.find("no CUDA device is visible") != std::string::npos ||
      probe.output.find("this build has no CUDA") != std::string::npos) {
    GTEST_SKIP() << "no usable GPU: " << probe.output.substr(0, probe.output.find('\n'));
  }
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  auto full = TrainingRun::Run({BinDir() + "/cairn-fmnist", "--device", "cuda"}, 0, std::nullopt);
  ASSERT_EQ(full.exit_code, 0) << full.output;
  EXPECT_GE(std::stod(OutputValue(full.output, "test_accuracy")), 0.85) << full.output;

  const std::vector<std::string> cuda = {"--device", "cuda"};
  const std::string baseline = Complete("gpu_base", 0, cuda);
  Interrupt("gpu_pre", 0, SIGTERM, 0, cuda);
  EXPECT_EQ(Complete("gpu_pre", 0, cuda), baseline);
  Interrupt("gpu_kill", 0, SIGKILL, 0, cuda);
  EXPECT_EQ(Complete("gpu_kill", 0, cuda), baseline);
}

}  // namespace
}  // namespace cairn::testing
