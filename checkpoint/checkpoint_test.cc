// Writer/reader round trips, sharded and async commits, retention, rekey, and the
// no-plaintext-on-disk guarantee.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <future>
#include <mutex>
#include <thread>

#include "checkpoint/reader.h"
#include "checkpoint/store.h"
#include "checkpoint/test_util.h"
#include "checkpoint/writer.h"
#include "common/fault_fs.h"

namespace cairn::ckpt {
namespace {

using ::testing::HasSubstr;
using testing::MakeTensor;
using testing::NewKey;
using testing::OwnedTensor;
using testing::Refs;
using testing::TempDir;

WriterOptions Options(const TempDir& dir, std::shared_ptr<const MasterKey> key) {
  WriterOptions o;
  o.dir = dir.Sub("run");
  o.run_id = "run-test";
  o.key = std::move(key);
  o.chunk_size = 64 << 10;
  o.retention.keep_last = 100;
  return o;
}

std::vector<std::byte> ReadAll(const H5ShardReader& shard, const std::string& name) {
  auto info = shard.Info(name);
  EXPECT_TRUE(info.has_value()) << name;
  if (!info) return {};
  std::vector<std::byte> out(info->size_bytes);
  auto st = shard.ReadTensor(name, out);
  EXPECT_TRUE(st.has_value()) << st.error().ToString();
  return out;
}

std::vector<OwnedTensor> EveryDTypeAndShape(uint64_t seed) {
  std::vector<OwnedTensor> ts;
  ts.push_back(MakeTensor("f32/matrix", DType::kF32, {17, 33}, seed + 1));
  ts.push_back(MakeTensor("f64/vector", DType::kF64, {1000}, seed + 2));
  ts.push_back(MakeTensor("f16/cube", DType::kF16, {4, 5, 6}, seed + 3));
  ts.push_back(MakeTensor("bf16/w", DType::kBF16, {128, 3}, seed + 4));
  ts.push_back(MakeTensor("i32/scalar", DType::kI32, {}, seed + 5));
  ts.push_back(MakeTensor("i64/ids", DType::kI64, {9}, seed + 6));
  ts.push_back(MakeTensor("u8/bytes", DType::kU8, {3, 7, 1, 2}, seed + 7));
  ts.push_back(MakeTensor("empty/zero_dim", DType::kF32, {0}, seed + 8));
  ts.push_back(MakeTensor("empty/zero_mid", DType::kI64, {3, 0, 2}, seed + 9));
  ts.push_back(MakeTensor("big", DType::kF32, {300000}, seed + 10));  // spans many chunks
  return ts;
}

TEST(CheckpointTest, RoundTripsEveryDTypeAndShapeWithBlobs) {
  TempDir dir;
  auto key = NewKey();
  auto tensors = EveryDTypeAndShape(7);
  const std::string rng_state = "philox:key=12,counter=99";
  std::vector<BlobRef> blobs = {
      {"rng", std::as_bytes(std::span(rng_state.data(), rng_state.size()))}};
  {
    auto w = CheckpointWriter::Open(Options(dir, key));
    ASSERT_TRUE(w.has_value()) << w.error().ToString();
    auto refs = Refs(tensors);
    auto info = (*w)->Save(10, refs, blobs);
    ASSERT_TRUE(info.has_value()) << info.error().ToString();
    EXPECT_EQ(info->step, 10u);
    EXPECT_EQ((*w)->head()->digest, info->manifest_digest);
  }
  auto r = CheckpointReader::Open(dir.Sub("run"), {key});
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ((*r)->step(), 10u);
  auto shard = (*r)->Shard(0);
  ASSERT_TRUE(shard.has_value()) << shard.error().ToString();
  ASSERT_EQ((*shard)->tensors().size(), tensors.size());
  for (const auto& t : tensors) {
    auto info = (*shard)->Info(t.name);
    ASSERT_TRUE(info.has_value()) << t.name;
    EXPECT_EQ(info->dtype, t.dtype) << t.name;
    EXPECT_EQ(info->shape, t.shape) << t.name;
    EXPECT_EQ(ReadAll(**shard, t.name), t.bytes) << t.name;
  }
  auto blob = (*shard)->ReadBlob("rng");
  ASSERT_TRUE(blob.has_value());
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(blob->data()), blob->size()), rng_state);
}

TEST(CheckpointTest, ManyTensorsAndChainOfSteps) {
  TempDir dir;
  auto key = NewKey();
  std::vector<Digest> digests;
  {
    auto w = CheckpointWriter::Open(Options(dir, key));
    ASSERT_TRUE(w.has_value());
    for (uint64_t step : {100, 200, 300}) {
      std::vector<OwnedTensor> ts;
      for (int i = 0; i < 300; ++i) {
        ts.push_back(MakeTensor(fmt::format("layer{}/w", i), DType::kF32, {16}, step * 1000 + i));
      }
      auto refs = Refs(ts);
      auto info = (*w)->Save(step, refs);
      ASSERT_TRUE(info.has_value()) << info.error().ToString();
      if (!digests.empty()) {
        EXPECT_EQ(info->previous_digest, digests.back());
      }
      digests.push_back(info->manifest_digest);
    }
    EXPECT_FALSE((*w)->Save(300, {}).has_value());  // steps must increase
  }
  // A new writer continues the chain where the last one stopped.
  {
    auto w = CheckpointWriter::Open(Options(dir, key));
    ASSERT_TRUE(w.has_value());
    EXPECT_EQ((*w)->head()->digest, digests.back());
    auto t = MakeTensor("x", DType::kU8, {3}, 1);
    std::vector<TensorRef> refs{t.ref()};
    auto info = (*w)->Save(400, refs);
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->previous_digest, digests.back());
  }
  auto report = VerifyDirectory(io::DefaultFileSystem(), dir.Sub("run"), {{}, key.get()});
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->ok()) << report->failures.front().message;
  EXPECT_EQ(report->scan.steps.size(), 4u);

  ReaderOptions ro{key};
  ro.step = 200;
  auto r = CheckpointReader::Open(dir.Sub("run"), ro);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ((*r)->digest(), digests[1]);
  auto shard = (*r)->Shard(0);
  ASSERT_TRUE(shard.has_value());
  EXPECT_EQ((*shard)->tensors().size(), 300u);
  auto expect = MakeTensor("layer299/w", DType::kF32, {16}, 200 * 1000 + 299);
  EXPECT_EQ(ReadAll(**shard, "layer299/w"), expect.bytes);
}

// Four ranks as threads, each writing its own shard of one step.
TEST(CheckpointTest, ShardedCommitAcrossRanks) {
  TempDir dir;
  auto key = NewKey();
  constexpr uint32_t kWorld = 4;
  ThreadGroupAgreement group(kWorld, std::chrono::seconds(30));
  std::vector<std::thread> threads;
  std::vector<Result<CommitInfo>> results(kWorld, std::unexpected(Error(Code::kInternal, "unset")));
  for (uint32_t r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      auto agreement = group.Rank(r);
      WriterOptions o = Options(dir, key);
      o.agreement = agreement.get();
      auto w = CheckpointWriter::Open(o);
      if (!w) {
        results[r] = std::unexpected(w.error());
        return;
      }
      for (uint64_t step : {1, 2}) {
        auto t = MakeTensor(fmt::format("rank{}/w", r), DType::kF32, {1000 + r}, step * 10 + r);
        std::vector<TensorRef> refs{t.ref()};
        results[r] = (*w)->Save(step, refs);
        if (!results[r]) return;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (uint32_t r = 0; r < kWorld; ++r) {
    ASSERT_TRUE(results[r].has_value()) << "rank " << r << ": " << results[r].error().ToString();
    EXPECT_EQ(results[r]->manifest_digest, results[0]->manifest_digest);
  }
  auto reader = CheckpointReader::Open(dir.Sub("run"), {key});
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  EXPECT_EQ((*reader)->world_size(), kWorld);
  EXPECT_EQ((*reader)->step(), 2u);
  for (uint32_t r = 0; r < kWorld; ++r) {
    auto shard = (*reader)->Shard(r);
    ASSERT_TRUE(shard.has_value()) << shard.error().ToString();
    auto expect = MakeTensor(fmt::format("rank{}/w", r), DType::kF32, {1000 + r}, 20 + r);
    EXPECT_EQ(ReadAll(**shard, fmt::format("rank{}/w", r)), expect.bytes);
  }
}

// A rank that fails to write makes the commit fail on every rank; nothing is committed
// and the previous checkpoint stays the latest.
TEST(CheckpointTest, OneRankFailingFailsTheCommitEverywhere) {
  TempDir dir;
  auto key = NewKey();
  constexpr uint32_t kWorld = 3;
  ThreadGroupAgreement group(kWorld, std::chrono::seconds(30));
  io::FaultInjectingFileSystem failing;
  std::vector<Status> second(kWorld);
  std::vector<std::thread> threads;
  for (uint32_t r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      auto agreement = group.Rank(r);
      WriterOptions o = Options(dir, key);
      o.agreement = agreement.get();
      if (r == 1) o.fs = &failing;
      auto w = CheckpointWriter::Open(o);
      ASSERT_TRUE(w.has_value()) << w.error().ToString();
      auto t = MakeTensor("w", DType::kF32, {100}, r);
      std::vector<TensorRef> refs{t.ref()};
      ASSERT_TRUE((*w)->Save(1, refs).has_value());
      if (r == 1) failing.FailAll(io::OpKind::kWrite, ENOSPC);
      auto res = (*w)->Save(2, refs);
      second[r] = res ? OkStatus() : Status(std::unexpected(res.error()));
    });
  }
  for (auto& t : threads) t.join();
  for (uint32_t r = 0; r < kWorld; ++r) {
    ASSERT_FALSE(second[r].has_value()) << "rank " << r << " committed";
    EXPECT_THAT(second[r].error().ToString(), HasSubstr("No space left on device"));
  }
  auto reader = CheckpointReader::Open(dir.Sub("run"), {key});
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  EXPECT_EQ((*reader)->step(), 1u);
  // No shard files or temp files of step 2 remain.
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("run/" + StepDirName(2))));
}

TEST(CheckpointTest, AsyncSaveSnapshotsAndBoundsInflight) {
  TempDir dir;
  auto key = NewKey();
  WriterOptions o = Options(dir, key);
  o.max_inflight = 2;
  auto w = CheckpointWriter::Open(o);
  ASSERT_TRUE(w.has_value());
  auto t = MakeTensor("weights", DType::kF32, {1 << 18}, 5);
  std::vector<std::vector<std::byte>> saved;
  std::vector<SaveHandle> handles;
  for (uint64_t step = 1; step <= 6; ++step) {
    std::vector<TensorRef> refs{t.ref()};
    auto h = (*w)->SaveAsync(step, refs);
    ASSERT_TRUE(h.has_value()) << h.error().ToString();
    handles.push_back(*h);
    saved.push_back(t.bytes);
    // Training goes on and changes the weights right away.
    for (auto& b : t.bytes) b = static_cast<std::byte>(static_cast<uint8_t>(b) + 1);
  }
  ASSERT_TRUE((*w)->Flush().has_value());
  for (auto& h : handles) {
    auto r = h.Wait();
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
  }
  for (uint64_t step = 1; step <= 6; ++step) {
    ReaderOptions ro{key};
    ro.step = step;
    auto r = CheckpointReader::Open(dir.Sub("run"), ro);
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    auto shard = (*r)->Shard(0);
    ASSERT_TRUE(shard.has_value());
    EXPECT_EQ(ReadAll(**shard, "weights"), saved[step - 1]) << "step " << step;
  }
  // Every commit is listed, oldest first, with the digest its handle reported: a caller
  // that looked at head() only after the flush has missed steps 1-5.
  auto all = (*w)->CommittedAfter(0);
  ASSERT_EQ(all.size(), 6u);
  for (uint64_t step = 1; step <= 6; ++step) {
    EXPECT_EQ(all[step - 1].step, step);
    EXPECT_EQ(all[step - 1].digest, handles[step - 1].Wait()->manifest_digest);
  }
  auto later = (*w)->CommittedAfter(4);
  ASSERT_EQ(later.size(), 2u);
  EXPECT_EQ(later[0].step, 5u);
  EXPECT_TRUE((*w)->CommittedAfter(6).empty());
}

TEST(CheckpointTest, AsyncErrorIsReportedThroughHandleAndFlush) {
  TempDir dir;
  auto key = NewKey();
  io::FaultInjectingFileSystem ffs;
  WriterOptions o = Options(dir, key);
  o.fs = &ffs;
  auto w = CheckpointWriter::Open(o);
  ASSERT_TRUE(w.has_value());
  auto t = MakeTensor("w", DType::kF64, {4096}, 1);
  std::vector<TensorRef> refs{t.ref()};
  ASSERT_TRUE((*w)->Save(1, refs).has_value());
  ffs.FailNth(io::OpKind::kSync, 1, EIO);
  auto h = (*w)->SaveAsync(2, refs);
  ASSERT_TRUE(h.has_value());
  auto r = h->Wait();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kDataLoss);
  auto f = (*w)->Flush();
  ASSERT_FALSE(f.has_value());
  EXPECT_THAT(f.error().ToString(), HasSubstr("checkpoint step 2"));
  // The writer recovers: the next step commits and links to step 1.
  auto next = (*w)->Save(3, refs);
  ASSERT_TRUE(next.has_value()) << next.error().ToString();
  auto reader = CheckpointReader::Open(dir.Sub("run"), {key});
  ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
  EXPECT_EQ((*reader)->step(), 3u);
}

TEST(CheckpointTest, EnospcAndShortWriteLeavePreviousCheckpointAndNoTempFiles) {
  for (std::size_t partial : {std::size_t{0}, std::size_t{1000}}) {
    TempDir dir;
    auto key = NewKey();
    io::FaultInjectingFileSystem ffs;
    WriterOptions o = Options(dir, key);
    o.fs = &ffs;
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value());
    auto t = MakeTensor("w", DType::kF32, {100000}, 3);
    std::vector<TensorRef> refs{t.ref()};
    ASSERT_TRUE((*w)->Save(1, refs).has_value());
    ffs.FailNth(io::OpKind::kWrite, 2, ENOSPC, partial);
    auto r = (*w)->Save(2, refs);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kResourceExhausted);
    EXPECT_THAT(r.error().ToString(), HasSubstr("No space left on device"));
    EXPECT_THAT(r.error().ToString(), HasSubstr("checkpoint step 2 rank 0"));
    for (const auto& f : testing::AllFiles(dir.path())) {
      EXPECT_EQ(f.find(".tmp-"), std::string::npos) << "temp file left: " << f;
    }
    auto reader = CheckpointReader::Open(dir.Sub("run"), {key});
    ASSERT_TRUE(reader.has_value()) << reader.error().ToString();
    EXPECT_EQ((*reader)->step(), 1u);
  }
}

// Counts the bytes read, and records the options every writable file was opened with.
class CountingFileSystem final : public io::FileSystem {
 public:
  explicit CountingFileSystem(io::FileSystem& base) : base_(base) {}
  std::atomic<uint64_t> bytes_read{0};
  std::mutex mu;
  std::vector<std::pair<std::string, io::WritableFileOptions>> opened;  // guarded by mu

  class File final : public io::ReadableFile {
   public:
    File(std::unique_ptr<io::ReadableFile> f, std::atomic<uint64_t>* n) : f_(std::move(f)), n_(n) {}
    Result<std::size_t> ReadAt(uint64_t off, std::span<std::byte> out) const override {
      auto r = f_->ReadAt(off, out);
      if (r) *n_ += *r;
      return r;
    }
    uint64_t size() const override { return f_->size(); }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<io::ReadableFile> f_;
    std::atomic<uint64_t>* n_;
  };

  using io::FileSystem::NewWritableFile;
  Result<std::unique_ptr<io::WritableFile>> NewWritableFile(
      const std::string& p, const io::WritableFileOptions& o) override {
    {
      std::lock_guard lock(mu);
      opened.emplace_back(p, o);
    }
    return base_.NewWritableFile(p, o);
  }
  Result<std::unique_ptr<io::ReadableFile>> OpenReadable(const std::string& p) override {
    CAIRN_ASSIGN_OR_RETURN(auto f, base_.OpenReadable(p));
    return std::make_unique<File>(std::move(f), &bytes_read);
  }
  Status Rename(const std::string& a, const std::string& b) override { return base_.Rename(a, b); }
  Status SyncDir(const std::string& d) override { return base_.SyncDir(d); }
  Status RemoveFile(const std::string& p) override { return base_.RemoveFile(p); }
  Status RemoveDir(const std::string& p) override { return base_.RemoveDir(p); }
  Status CreateDir(const std::string& p, uint32_t m) override { return base_.CreateDir(p, m); }
  Result<std::vector<std::string>> ListDir(const std::string& d) override { return base_.ListDir(d); }
  Result<io::FileInfo> Stat(const std::string& p) override { return base_.Stat(p); }

 private:
  io::FileSystem& base_;
};

// Shard files are written with early writeback (the option travels through the file
// system seam); small files (manifest, HEAD) are not.
TEST(CheckpointTest, ShardFilesUseEarlyWriteback) {
  TempDir dir;
  CountingFileSystem fsys(io::DefaultFileSystem());
  WriterOptions o = Options(dir, NewKey());
  o.fs = &fsys;
  o.early_writeback_bytes = 1u << 20;
  auto w = CheckpointWriter::Open(o);
  ASSERT_TRUE(w.has_value());
  auto t = MakeTensor("w", DType::kF32, {1 << 20}, 3);  // 4 MiB
  std::vector<TensorRef> refs{t.ref()};
  ASSERT_TRUE((*w)->Save(1, refs).has_value());
  std::lock_guard lock(fsys.mu);
  int shards = 0, small = 0;
  for (const auto& [path, opts] : fsys.opened) {
    EXPECT_EQ(opts.mode, 0600u) << path;
    if (path.ends_with(ShardFileName(0))) {
      ++shards;
      EXPECT_EQ(opts.early_writeback_bytes, 1u << 20) << path;
    } else {
      ++small;
      EXPECT_EQ(opts.early_writeback_bytes, 0u) << path;
    }
  }
  EXPECT_EQ(shards, 1);
  EXPECT_EQ(small, 2) << "MANIFEST and HEAD";
}

// Reading one tensor decrypts only the chunks that hold it.
TEST(CheckpointTest, PartialReadOfOneTensorReadsOnlyItsChunks) {
  TempDir dir;
  auto key = NewKey();
  std::vector<OwnedTensor> ts;
  for (int i = 0; i < 16; ++i) ts.push_back(MakeTensor(fmt::format("t{}", i), DType::kF32, {1 << 18}, i));
  auto refs = Refs(ts);  // 16 x 1 MiB
  {
    auto w = CheckpointWriter::Open(Options(dir, key));
    ASSERT_TRUE(w.has_value());
    ASSERT_TRUE((*w)->Save(1, refs).has_value());
  }
  CountingFileSystem counting(io::DefaultFileSystem());
  ReaderOptions ro{key};
  ro.fs = &counting;
  ro.verify = VerifyMode::kOnOpen;
  auto r = CheckpointReader::Open(dir.Sub("run"), ro);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  auto shard = (*r)->Shard(0);
  ASSERT_TRUE(shard.has_value());
  const uint64_t before = counting.bytes_read;
  EXPECT_EQ(ReadAll(**shard, "t9"), ts[9].bytes);
  const uint64_t tensor_read = counting.bytes_read - before;
  // 1 MiB tensor in 64 KiB chunks: at most two extra chunks at its ends, plus metadata.
  EXPECT_LT(tensor_read, (1u << 20) + 4 * (64u << 10));
  EXPECT_LT(counting.bytes_read.load(), 4u << 20) << "whole shard is 16 MiB";
}

TEST(CheckpointTest, RetentionPrunesShardsButKeepsTheChain) {
  TempDir dir;
  auto key = NewKey();
  WriterOptions o = Options(dir, key);
  o.retention = {2, 4};
  auto w = CheckpointWriter::Open(o);
  ASSERT_TRUE(w.has_value());
  auto t = MakeTensor("w", DType::kF32, {64}, 1);
  std::vector<TensorRef> refs{t.ref()};
  for (uint64_t step = 1; step <= 10; ++step) ASSERT_TRUE((*w)->Save(step, refs).has_value());
  ASSERT_TRUE((*w)->Flush().has_value());  // pruning runs after each commit, in the background
  EXPECT_EQ((*w)->prune_status().pruned_steps, (std::vector<uint64_t>{1, 2, 3, 5, 6, 7}));
  EXPECT_FALSE((*w)->prune_status().last_error.has_value());
  auto scan = ScanChain(io::DefaultFileSystem(), dir.Sub("run"));
  ASSERT_TRUE(scan.has_value());
  ASSERT_TRUE(scan->ok()) << scan->problems.front();
  std::vector<uint64_t> complete, pruned;
  for (const auto& s : scan->steps) {
    (s.state == StepState::kComplete ? complete : pruned).push_back(s.step);
  }
  EXPECT_EQ(complete, (std::vector<uint64_t>{4, 8, 9, 10}));
  EXPECT_EQ(pruned, (std::vector<uint64_t>{1, 2, 3, 5, 6, 7}));
  auto report = VerifyDirectory(io::DefaultFileSystem(), dir.Sub("run"), {{}, key.get()});
  ASSERT_TRUE(report.has_value());
  EXPECT_TRUE(report->ok()) << report->failures.front().message;
  EXPECT_EQ(report->shards_checked, 4u);
  // A pruned step cannot be opened, and says why.
  ReaderOptions ro{key};
  ro.step = 5;
  auto r = CheckpointReader::Open(dir.Sub("run"), ro);
  ASSERT_FALSE(r.has_value());
  EXPECT_THAT(r.error().ToString(), HasSubstr("pruned"));
}

// A file system whose RemoveFile waits at a gate while `hold` is set (to catch the
// background prune in the act).
class GatedRemoveFileSystem final : public io::FileSystem {
 public:
  explicit GatedRemoveFileSystem(io::FileSystem& base) : base_(base) {}
  std::atomic<bool> hold{false};
  std::promise<void> entered;  // set when the first held RemoveFile arrives
  std::promise<void> open;     // set to let held removals through

  using io::FileSystem::NewWritableFile;
  Result<std::unique_ptr<io::WritableFile>> NewWritableFile(
      const std::string& p, const io::WritableFileOptions& o) override {
    return base_.NewWritableFile(p, o);
  }
  Result<std::unique_ptr<io::ReadableFile>> OpenReadable(const std::string& p) override {
    return base_.OpenReadable(p);
  }
  Status Rename(const std::string& a, const std::string& b) override { return base_.Rename(a, b); }
  Status SyncDir(const std::string& d) override { return base_.SyncDir(d); }
  Status RemoveFile(const std::string& p) override {
    if (hold) {
      std::call_once(once_, [&] { entered.set_value(); });
      gate_.wait();
    }
    return base_.RemoveFile(p);
  }
  Status RemoveDir(const std::string& p) override { return base_.RemoveDir(p); }
  Status CreateDir(const std::string& p, uint32_t m) override { return base_.CreateDir(p, m); }
  Result<std::vector<std::string>> ListDir(const std::string& d) override { return base_.ListDir(d); }
  Result<io::FileInfo> Stat(const std::string& p) override { return base_.Stat(p); }

 private:
  io::FileSystem& base_;
  std::once_flag once_;
  std::shared_future<void> gate_ = open.get_future().share();
};

// Save returns once the new step is durable; the retention prune of older shards runs
// afterwards on the writer's thread, and Flush (or closing the writer) waits for it.
TEST(CheckpointTest, PruningRunsAfterSaveReturns) {
  TempDir dir;
  auto key = NewKey();
  GatedRemoveFileSystem gated(io::DefaultFileSystem());
  WriterOptions o = Options(dir, key);
  o.fs = &gated;
  o.retention = {1, 0};
  auto w = CheckpointWriter::Open(o);
  ASSERT_TRUE(w.has_value());
  auto t = MakeTensor("w", DType::kF32, {1000}, 4);
  std::vector<TensorRef> refs{t.ref()};
  ASSERT_TRUE((*w)->Save(1, refs).has_value());
  ASSERT_TRUE((*w)->Flush().has_value());
  const std::string shard1 = dir.Sub("run/" + StepDirName(1) + "/" + ShardFileName(0));
  ASSERT_TRUE(io::DefaultFileSystem().Stat(shard1).has_value());

  gated.hold = true;
  auto saved = (*w)->Save(2, refs);  // its prune blocks in RemoveFile, Save does not
  ASSERT_TRUE(saved.has_value()) << saved.error().ToString();
  ASSERT_EQ(gated.entered.get_future().wait_for(std::chrono::seconds(30)),
            std::future_status::ready)
      << "the prune never started";
  EXPECT_TRUE(io::DefaultFileSystem().Stat(shard1).has_value()) << "pruned before the gate opened";
  EXPECT_EQ((*w)->prune_status().runs, 1) << "only step 1's own prune has finished";
  {
    // Meanwhile the new step is committed and readable.
    auto r = CheckpointReader::Open(dir.Sub("run"), {key});
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ((*r)->step(), 2u);
    EXPECT_EQ((*r)->digest(), saved->manifest_digest);
  }
  gated.open.set_value();
  ASSERT_TRUE((*w)->Flush().has_value());
  EXPECT_FALSE(io::DefaultFileSystem().Stat(shard1).has_value());
  EXPECT_EQ((*w)->prune_status().pruned_steps, (std::vector<uint64_t>{1}));
  EXPECT_EQ((*w)->prune_status().runs, 2);

  // Closing the writer also waits: step 2 is pruned once step 3 is saved and the writer
  // is gone.
  gated.hold = false;
  ASSERT_TRUE((*w)->Save(3, refs).has_value());
  w->reset();
  auto scan = ScanChain(io::DefaultFileSystem(), dir.Sub("run"));
  ASSERT_TRUE(scan.has_value());
  ASSERT_TRUE(scan->ok()) << scan->problems.front();
  ASSERT_EQ(scan->steps.size(), 3u);
  EXPECT_EQ(scan->steps[0].state, StepState::kPruned);
  EXPECT_EQ(scan->steps[1].state, StepState::kPruned);
  EXPECT_EQ(scan->steps[2].state, StepState::kComplete);
}

// A prune that fails is reported, leaves the committed steps alone, and the next
// commit's prune catches up.
TEST(CheckpointTest, FailedPruneIsReportedAndRetried) {
  TempDir dir;
  auto key = NewKey();
  io::FaultInjectingFileSystem ffs;
  WriterOptions o = Options(dir, key);
  o.fs = &ffs;
  o.retention = {1, 0};
  auto w = CheckpointWriter::Open(o);
  ASSERT_TRUE(w.has_value());
  auto t = MakeTensor("w", DType::kF32, {1000}, 5);
  std::vector<TensorRef> refs{t.ref()};
  ASSERT_TRUE((*w)->Save(1, refs).has_value());
  ffs.FailAll(io::OpKind::kRemove, EACCES);
  auto saved = (*w)->Save(2, refs);
  ASSERT_TRUE(saved.has_value()) << "a prune failure must not fail the commit";
  ASSERT_TRUE((*w)->Flush().has_value());
  auto st = (*w)->prune_status();
  ASSERT_TRUE(st.last_error.has_value());
  EXPECT_EQ(st.last_error->code(), Code::kPermissionDenied);
  EXPECT_TRUE(st.pruned_steps.empty());
  ASSERT_TRUE(ffs.RecoverFromCrash().has_value());  // clears the rule
  ASSERT_TRUE((*w)->Save(3, refs).has_value());
  ASSERT_TRUE((*w)->Flush().has_value());
  st = (*w)->prune_status();
  EXPECT_FALSE(st.last_error.has_value());
  EXPECT_EQ(st.pruned_steps, (std::vector<uint64_t>{1, 2}));
  auto rep = VerifyDirectory(io::DefaultFileSystem(), dir.Sub("run"), {{}, key.get()});
  ASSERT_TRUE(rep.has_value());
  EXPECT_TRUE(rep->ok()) << rep->failures.front().message;
  EXPECT_EQ(rep->shards_checked, 1u);
}

TEST(CheckpointTest, RekeyRewrapsWithoutChangingDigests) {
  TempDir dir;
  auto old_key = NewKey("old");
  auto new_key = NewKey("new");
  auto t = MakeTensor("w", DType::kF32, {5000}, 9);
  std::vector<TensorRef> refs{t.ref()};
  Digest head{};
  {
    auto w = CheckpointWriter::Open(Options(dir, old_key));
    ASSERT_TRUE(w.has_value());
    for (uint64_t s = 1; s <= 3; ++s) head = (*w)->Save(s, refs)->manifest_digest;
  }
  std::string shard_before = testing::ReadFileBytes(dir.Sub("run/" + StepDirName(3) + "/rank-00000.shard"));
  auto n = Rekey(io::DefaultFileSystem(), dir.Sub("run"), *old_key, *new_key);
  ASSERT_TRUE(n.has_value()) << n.error().ToString();
  EXPECT_EQ(*n, 3);
  // Data untouched; chain and head unchanged.
  EXPECT_EQ(testing::ReadFileBytes(dir.Sub("run/" + StepDirName(3) + "/rank-00000.shard")), shard_before);
  ReaderOptions ro{new_key};
  ro.expected_head = head;
  auto r = CheckpointReader::Open(dir.Sub("run"), ro);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(ReadAll(**(*r)->Shard(0), "w"), t.bytes);
  // The old key no longer opens it, with a precise error.
  auto old = CheckpointReader::Open(dir.Sub("run"), {old_key});
  ASSERT_FALSE(old.has_value());
  EXPECT_EQ(old.error().code(), Code::kFailedPrecondition);
  EXPECT_THAT(old.error().ToString(), HasSubstr("wrong key"));
  EXPECT_THAT(old.error().ToString(), HasSubstr(new_key->id));
  // Rerunning is harmless (an interrupted rekey can be resumed).
  auto again = Rekey(io::DefaultFileSystem(), dir.Sub("run"), *old_key, *new_key);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*again, 0);
}

// Neither tensor names nor a planted plaintext pattern appear in any file the writer
// left, nor in the temp directory.
TEST(CheckpointTest, NoPlaintextNameOrByteReachesTheDisk) {
  TempDir dir;
  TempDir tmp;
  const char* old_tmp = std::getenv("TMPDIR");
  ::setenv("TMPDIR", tmp.path().c_str(), 1);
  auto key = NewKey();
  const std::string secret_name = "very_secret_layer_name_q7x";
  const std::string pattern = "PLANTED-PLAINTEXT-PATTERN-0123456789";
  std::vector<std::byte> bytes(1 << 20);
  for (std::size_t i = 0; i + pattern.size() <= bytes.size(); i += 4096) {
    std::memcpy(bytes.data() + i, pattern.data(), pattern.size());
  }
  TensorRef t{secret_name + "/weight", DType::kU8, {bytes.size()}, bytes};
  std::vector<TensorRef> refs{t};
  std::vector<BlobRef> blobs{{"cursor_" + secret_name, std::as_bytes(std::span(pattern.data(), pattern.size()))}};
  {
    WriterOptions o = Options(dir, key);
    auto w = CheckpointWriter::Open(o);
    ASSERT_TRUE(w.has_value());
    ASSERT_TRUE((*w)->Save(1, refs, blobs).has_value());
    ASSERT_TRUE((*w)->SaveAsync(2, refs, blobs).has_value());
    ASSERT_TRUE((*w)->Flush().has_value());
  }
  if (old_tmp) ::setenv("TMPDIR", old_tmp, 1); else ::unsetenv("TMPDIR");
  int scanned = 0;
  for (const std::string& root : {dir.path(), tmp.path()}) {
    for (const auto& f : testing::AllFiles(root)) {
      const std::string data = testing::ReadFileBytes(f);
      EXPECT_EQ(data.find(secret_name), std::string::npos) << f;
      EXPECT_EQ(data.find(pattern), std::string::npos) << f;
      EXPECT_EQ(data.find("weight"), std::string::npos) << f;
      ++scanned;
    }
  }
  EXPECT_GE(scanned, 5);  // 2 shards, 2 manifests, HEAD
}

TEST(CheckpointTest, RefusesBadOptionsAndForeignRuns) {
  TempDir dir;
  auto key = NewKey();
  WriterOptions o = Options(dir, key);
  o.run_id = "";
  EXPECT_EQ(CheckpointWriter::Open(o).error().code(), Code::kInvalidArgument);
  o = Options(dir, key);
  o.key = nullptr;
  EXPECT_EQ(CheckpointWriter::Open(o).error().code(), Code::kInvalidArgument);
  o = Options(dir, key);
  {
    auto w = CheckpointWriter::Open(o);
    auto t = MakeTensor("w", DType::kF32, {4}, 1);
    std::vector<TensorRef> refs{t.ref()};
    ASSERT_TRUE((*w)->Save(1, refs).has_value());
    TensorRef bad{"../escape", DType::kF32, {1}, t.bytes};
    std::vector<TensorRef> bad_refs{bad};
    auto r = (*w)->Save(2, bad_refs);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  }
  o.run_id = "another-run";
  auto w2 = CheckpointWriter::Open(o);
  ASSERT_FALSE(w2.has_value());
  EXPECT_EQ(w2.error().code(), Code::kFailedPrecondition);
  EXPECT_THAT(w2.error().ToString(), HasSubstr("run-test"));
}

}  // namespace
}  // namespace cairn::ckpt
