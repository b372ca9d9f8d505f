// Crash consistency: a crash at every write/fsync/rename point of a commit (simulated
// with the fault-injecting file system), and SIGKILL of a real writer process at random
// instants, each leave the previous checkpoint (or the new one, complete) as the latest
// valid one, and the run continues from there.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "checkpoint/reader.h"
#include "checkpoint/store.h"
#include "checkpoint/test_util.h"
#include "checkpoint/writer.h"
#include "common/fault_fs.h"

extern char** environ;

namespace cairn::ckpt {
namespace {

using testing::MakeTensor;
using testing::NewKey;
using testing::TempDir;

std::vector<std::byte> ReadTensor(CheckpointReader& r, const std::string& name) {
  auto shard = r.Shard(0);
  EXPECT_TRUE(shard.has_value()) << shard.error().ToString();
  if (!shard) return {};
  auto info = (*shard)->Info(name);
  EXPECT_TRUE(info.has_value());
  std::vector<std::byte> out(info->size_bytes);
  EXPECT_TRUE((*shard)->ReadTensor(name, out).has_value());
  return out;
}

TEST(CrashTest, CrashAtEveryOperationOfACommit) {
  auto key = NewKey();
  int completed_at = 0;
  int crashes = 0;
  for (int op = 1; op <= 200 && completed_at == 0; ++op) {
    TempDir dir;
    WriterOptions o;
    o.dir = dir.Sub("run");
    o.run_id = "crash";
    o.key = key;
    o.chunk_size = 16 << 10;
    o.retention = {2, 0};  // and the prune queued after the commit
    auto t1 = MakeTensor("w", DType::kF32, {30000}, 1);
    auto t2 = MakeTensor("w", DType::kF32, {30000}, 2);
    {
      auto w = CheckpointWriter::Open(o);
      ASSERT_TRUE(w.has_value());
      std::vector<TensorRef> r0{t1.ref()};
      ASSERT_TRUE((*w)->Save(1, r0).has_value());
      ASSERT_TRUE((*w)->Save(2, r0).has_value());
    }
    io::FaultInjectingFileSystem ffs;
    o.fs = &ffs;
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value());
    ffs.ResetTracking();
    ffs.CrashAtOp(op);
    std::vector<TensorRef> refs{t2.ref()};
    auto saved = (*w)->Save(3, refs);
    w->reset();  // waits for the background prune, whose operations count too
    const bool crashed = ffs.crashed();
    ASSERT_TRUE(ffs.RecoverFromCrash().has_value());
    if (!crashed) completed_at = op;
    crashes += crashed;

    // After the "power cut": the latest valid checkpoint is step 2, or step 3 complete.
    auto r = CheckpointReader::Open(dir.Sub("run"), {key});
    ASSERT_TRUE(r.has_value()) << "crash at op " << op << ": " << r.error().ToString();
    if ((*r)->step() == 3) {
      EXPECT_EQ(ReadTensor(**r, "w"), t2.bytes) << "op " << op;
    } else {
      EXPECT_EQ((*r)->step(), 2u) << "op " << op;
      EXPECT_FALSE(saved.has_value()) << "op " << op << ": Save succeeded but step 3 is lost";
      EXPECT_EQ(ReadTensor(**r, "w"), t1.bytes) << "op " << op;
    }
    // And the run goes on: a fresh writer cleans up and commits the next step.
    o.fs = nullptr;
    auto w2 = CheckpointWriter::Open(o);
    ASSERT_TRUE(w2.has_value()) << "op " << op << ": " << w2.error().ToString();
    ASSERT_TRUE((*w2)->Save(4, refs).has_value()) << "op " << op;
    ASSERT_TRUE((*w2)->Flush().has_value());  // its prune runs in the background
    auto rep = VerifyDirectory(io::DefaultFileSystem(), dir.Sub("run"), {{}, key.get()});
    ASSERT_TRUE(rep.has_value());
    EXPECT_TRUE(rep->ok()) << "op " << op << ": " << rep->failures.front().message;
    for (const auto& f : testing::AllFiles(dir.path())) {
      EXPECT_EQ(f.find(".tmp-"), std::string::npos) << "op " << op << ": left " << f;
    }
  }
  EXPECT_GT(completed_at, 10) << "a commit has at least mkdir, write, fsync, rename, fsync-dir";
  EXPECT_EQ(crashes, completed_at - 1);
  std::printf("crash points tested: %d (commit completes at op %d)\n", crashes, completed_at);
}

// The retention prune runs after Save has returned. A crash after the commit but before
// (or during) the prune leaves a valid chain whose newest step is the new one, with the
// old shards still there; the next writer's first commit prunes them.
TEST(CrashTest, CrashBeforeThePruneKeepsTheNewStepAndPrunesLater) {
  auto key = NewKey();
  TempDir dir;
  WriterOptions o;
  o.dir = dir.Sub("run");
  o.run_id = "crash-prune";
  o.key = key;
  o.chunk_size = 16 << 10;
  o.retention = {1, 0};
  auto t1 = MakeTensor("w", DType::kF32, {30000}, 1);
  auto t2 = MakeTensor("w", DType::kF32, {30000}, 2);
  std::vector<TensorRef> r1{t1.ref()}, r2{t2.ref()};
  {
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value());
    ASSERT_TRUE((*w)->Save(1, r1).has_value());
  }
  io::FaultInjectingFileSystem ffs;
  o.fs = &ffs;
  {
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value());
    ffs.ResetTracking();
    // The power goes at the prune's first removal: everything before it (the whole
    // commit of step 2) went through.
    ffs.FailAll(io::OpKind::kRemove, EIO);
    auto saved = (*w)->Save(2, r2);
    ASSERT_TRUE(saved.has_value()) << saved.error().ToString();
    ASSERT_TRUE((*w)->Flush().has_value());
    ASSERT_TRUE((*w)->prune_status().last_error.has_value());
    ffs.CrashAtOp(ffs.mutating_ops() + 1);
  }
  ASSERT_TRUE(ffs.RecoverFromCrash().has_value());

  auto scan = ScanChain(io::DefaultFileSystem(), dir.Sub("run"));
  ASSERT_TRUE(scan.has_value());
  ASSERT_TRUE(scan->ok()) << scan->problems.front();
  ASSERT_EQ(scan->steps.size(), 2u);
  EXPECT_EQ(scan->steps[0].state, StepState::kComplete) << "not pruned before the crash";
  EXPECT_EQ(scan->steps[1].state, StepState::kComplete);
  {
    auto r = CheckpointReader::Open(dir.Sub("run"), {key});
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ((*r)->step(), 2u);
    EXPECT_EQ(ReadTensor(**r, "w"), t2.bytes);
  }
  o.fs = nullptr;
  {
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value()) << w.error().ToString();
    ASSERT_TRUE((*w)->Save(3, r2).has_value());
  }  // closing waits for the prune
  auto rep = VerifyDirectory(io::DefaultFileSystem(), dir.Sub("run"), {{}, key.get()});
  ASSERT_TRUE(rep.has_value());
  EXPECT_TRUE(rep->ok()) << rep->failures.front().message;
  ASSERT_EQ(rep->scan.steps.size(), 3u);
  EXPECT_EQ(rep->scan.steps[0].state, StepState::kPruned);
  EXPECT_EQ(rep->scan.steps[1].state, StepState::kPruned);
  EXPECT_EQ(rep->scan.steps[2].state, StepState::kComplete);
}

pid_t Spawn(const std::vector<std::string>& args, const std::string& out_path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

TEST(CrashTest, SigkillOfARealWriterAtRandomInstants) {
  const char* bin_dir = std::getenv("CAIRN_BIN_DIR");
  ASSERT_NE(bin_dir, nullptr) << "CAIRN_BIN_DIR must point at build/bin";
  const std::string writer = std::string(bin_dir) + "/../tests/ckpt_torture_writer";
  TempDir dir;
  const std::string key_file = dir.Sub("key");
  ASSERT_TRUE(WriteNewKeyFile(key_file).has_value());
  auto key = LoadKeyFile(key_file);
  ASSERT_TRUE(key.has_value());
  auto shared_key = std::make_shared<const MasterKey>(*key);

  std::mt19937 rng(std::random_device{}());
  const unsigned seed = rng();
  std::printf("kill-instant seed: %u\n", seed);
  std::mt19937 instants(seed);
  std::uniform_int_distribution<int> delay_ms(5, 400);
  uint64_t last_seen = 0;
  int kills_with_checkpoint = 0;
  for (int i = 0; i < 24; ++i) {
    pid_t pid = Spawn({writer, dir.Sub("run"), key_file}, dir.Sub("out.log"));
    ASSERT_GT(pid, 0);
    const int d = delay_ms(instants);
    std::this_thread::sleep_for(std::chrono::milliseconds(d));
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "writer exited early; see " << dir.Sub("out.log") << ": "
                                     << testing::ReadFileBytes(dir.Sub("out.log"));
    auto r = CheckpointReader::Open(dir.Sub("run"), {shared_key});
    if (!r) {
      // Killed before the very first commit finished.
      ASSERT_EQ(r.error().code(), Code::kNotFound) << "kill " << i << " after " << d
                                                  << " ms: " << r.error().ToString();
      ASSERT_EQ(last_seen, 0u);
      continue;
    }
    ++kills_with_checkpoint;
    EXPECT_TRUE((*r)->skipped().empty()) << (*r)->skipped().front();
    EXPECT_GE((*r)->step(), last_seen) << "kill " << i << ": a committed step was lost";
    last_seen = (*r)->step();
    auto expect = MakeTensor("w", DType::kU8, {4u << 20}, 0);  // layout only
    std::mt19937_64 g(last_seen);
    for (std::size_t k = 0; k < expect.bytes.size(); k += 8) {
      uint64_t v = g();
      std::memcpy(expect.bytes.data() + k, &v, 8);
    }
    EXPECT_EQ(ReadTensor(**r, "w"), expect.bytes) << "kill " << i << " step " << last_seen;
  }
  auto rep = VerifyDirectory(io::DefaultFileSystem(), dir.Sub("run"), {{}, shared_key.get()});
  ASSERT_TRUE(rep.has_value());
  EXPECT_TRUE(rep->ok()) << rep->failures.front().message;
  EXPECT_GE(kills_with_checkpoint, 20);
  std::printf("24 kills, last committed step %llu\n", static_cast<unsigned long long>(last_seen));
}

}  // namespace
}  // namespace cairn::ckpt
