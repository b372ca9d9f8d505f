// Every tamper class is caught by `verify` (with and without the key) and by the reader,
// with an error that names the step, the shard and what is wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "checkpoint/reader.h"
#include "checkpoint/store.h"
#include "checkpoint/test_util.h"
#include "checkpoint/writer.h"

namespace cairn::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::MakeTensor;
using testing::NewKey;
using testing::TempDir;

constexpr uint32_t kWorld = 2;

// Writes steps 1..3 of a 2-rank run (equal-sized shards) and returns the head digest.
Digest WriteRun(const std::string& dir, const std::string& run_id,
                std::shared_ptr<const MasterKey> key, uint64_t first_step = 1) {
  ThreadGroupAgreement group(kWorld, std::chrono::seconds(30));
  Digest head{};
  std::vector<std::thread> threads;
  for (uint32_t r = 0; r < kWorld; ++r) {
    threads.emplace_back([&, r] {
      auto a = group.Rank(r);
      WriterOptions o;
      o.dir = dir;
      o.run_id = run_id;
      o.key = key;
      o.agreement = a.get();
      o.chunk_size = 16 << 10;
      auto w = CheckpointWriter::Open(o);
      ASSERT_TRUE(w.has_value()) << w.error().ToString();
      for (uint64_t step = first_step; step < first_step + 3; ++step) {
        auto t = MakeTensor("w", DType::kF32, {20000}, step * 10 + r);
        std::vector<TensorRef> refs{t.ref()};
        auto info = (*w)->Save(step, refs);
        ASSERT_TRUE(info.has_value()) << info.error().ToString();
        if (r == 0) head = info->manifest_digest;
      }
    });
  }
  for (auto& t : threads) t.join();
  return head;
}

class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = NewKey();
    run_ = tmp_.Sub("run");
    head_ = WriteRun(run_, "run-A", key_);
  }
  std::string StepDir(uint64_t step) const { return run_ + "/" + StepDirName(step); }
  std::string Shard(uint64_t step, uint32_t rank) const {
    return StepDir(step) + "/" + ShardFileName(rank);
  }
  void FlipByte(const std::string& path, std::size_t offset) {
    std::string data = testing::ReadFileBytes(path);
    ASSERT_LT(offset, data.size());
    data[offset] ^= 0x04;
    testing::WriteFileBytes(path, data);
  }
  VerifyReport Verify(const MasterKey* key, std::optional<Digest> head = std::nullopt) {
    VerifyOptions o;
    o.key = key;
    o.scan.expected_head = head;
    auto r = VerifyDirectory(io::DefaultFileSystem(), run_, o);
    EXPECT_TRUE(r.has_value()) << r.error().ToString();
    return r ? *r : VerifyReport{};
  }
  Result<std::unique_ptr<CheckpointReader>> Open(std::optional<Digest> head = std::nullopt,
                                                 std::shared_ptr<const MasterKey> key = nullptr) {
    ReaderOptions o{key ? key : key_};
    o.expected_head = head;
    return CheckpointReader::Open(run_, o);
  }
  // verify fails without and with the key, and the first failure names `step`, `rank`
  // and contains `what`.
  void ExpectVerifyFails(std::optional<uint64_t> step, std::optional<uint32_t> rank,
                         std::string_view what, bool keyless_detects = true) {
    for (const MasterKey* key : {static_cast<const MasterKey*>(nullptr), key_.get()}) {
      if (!key && !keyless_detects) continue;
      VerifyReport rep = Verify(key);
      ASSERT_FALSE(rep.ok()) << (key ? "with" : "without") << " key";
      const auto& f = rep.failures.front();
      EXPECT_THAT(f.message, HasSubstr(what)) << (key ? "with" : "without") << " key";
      if (step) {
        EXPECT_EQ(f.step, step) << f.message;
      }
      if (rank) {
        EXPECT_EQ(f.rank, rank) << f.message;
      }
    }
  }
  // The reader passes over the damaged newest step and opens step 2, saying why.
  void ExpectReaderSkipsNewest(std::string_view what) {
    auto r = Open();
    ASSERT_TRUE(r.has_value()) << r.error().ToString();
    EXPECT_EQ((*r)->step(), 2u);
    ASSERT_EQ((*r)->skipped().size(), 1u);
    EXPECT_THAT((*r)->skipped()[0], HasSubstr("step 3"));
    EXPECT_THAT((*r)->skipped()[0], HasSubstr(what));
  }
  void ExpectReaderRefuses(std::string_view what, std::optional<Digest> head = std::nullopt) {
    auto r = Open(head);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kDataLoss);
    EXPECT_THAT(r.error().ToString(), HasSubstr(what));
  }

  TempDir tmp_;
  std::shared_ptr<const MasterKey> key_;
  std::string run_;
  Digest head_{};
};

TEST_F(TamperTest, UntouchedRunVerifies) {
  EXPECT_TRUE(Verify(nullptr).ok());
  auto rep = Verify(key_.get(), head_);
  EXPECT_TRUE(rep.ok()) << rep.failures.front().message;
  EXPECT_EQ(rep.shards_checked, 6u);
  auto r = Open(head_);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ((*r)->step(), 3u);
  EXPECT_TRUE((*r)->skipped().empty());
}

TEST_F(TamperTest, BitFlipInShard) {
  FlipByte(Shard(3, 1), 40000);
  ExpectVerifyFails(3, 1, "SHA-256");
  ExpectReaderSkipsNewest("chunk");
}

TEST_F(TamperTest, BitFlipInShardHeader) {
  FlipByte(Shard(3, 0), 20);  // plaintext_size: the header no longer matches the file
  ExpectVerifyFails(3, 0, "rank-00000.shard");
  ExpectReaderSkipsNewest("rank 0");
}

TEST_F(TamperTest, BitFlipInManifestCoreBreaksTheChain) {
  FlipByte(StepDir(2) + "/MANIFEST", 40);  // inside the core (step / world size area)
  VerifyReport rep = Verify(nullptr);
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.failures.front().message, HasSubstr("step 2"));
  ExpectReaderRefuses("step");
}

TEST_F(TamperTest, BitFlipInNewestManifestIsCaughtAgainstHead) {
  std::string data = testing::ReadFileBytes(StepDir(3) + "/MANIFEST");
  FlipByte(StepDir(3) + "/MANIFEST", 60);  // created_unix_ms
  VerifyReport rep = Verify(nullptr);
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.failures.front().message, HasSubstr("HEAD names manifest"));
  ExpectReaderRefuses("HEAD names manifest");
}

TEST_F(TamperTest, BitFlipInWrappedKey) {
  std::string data = testing::ReadFileBytes(StepDir(3) + "/MANIFEST");
  FlipByte(StepDir(3) + "/MANIFEST", data.size() - 10);  // last key slot (rank 1)
  // The key slots are outside the digest (so rekey keeps the chain): only the key sees it.
  EXPECT_TRUE(Verify(nullptr).ok());
  ExpectVerifyFails(3, 1, "key slot of rank 1", /*keyless_detects=*/false);
  ExpectReaderSkipsNewest("key slot of rank 1");
}

TEST_F(TamperTest, TruncatedShard) {
  fs::resize_file(Shard(3, 0), fs::file_size(Shard(3, 0)) - 1);
  ExpectVerifyFails(3, std::nullopt, "truncated");
  ExpectReaderSkipsNewest("truncated");
}

TEST_F(TamperTest, TrailingBytes) {
  std::string data = testing::ReadFileBytes(Shard(3, 1));
  testing::WriteFileBytes(Shard(3, 1), data + "extra");
  ExpectVerifyFails(3, std::nullopt, "trailing bytes");
  ExpectReaderSkipsNewest("trailing bytes");
}

TEST_F(TamperTest, ShardSwappedBetweenSteps) {
  ASSERT_EQ(fs::file_size(Shard(2, 0)), fs::file_size(Shard(3, 0)));
  fs::copy_file(Shard(2, 0), Shard(3, 0), fs::copy_options::overwrite_existing);
  ExpectVerifyFails(3, 0, "SHA-256");
  ExpectReaderSkipsNewest("header says step 2, manifest says step 3");
}

TEST_F(TamperTest, ShardSwappedBetweenRanks) {
  ASSERT_EQ(fs::file_size(Shard(3, 0)), fs::file_size(Shard(3, 1)));
  fs::rename(Shard(3, 0), run_ + "/swap");
  fs::rename(Shard(3, 1), Shard(3, 0));
  fs::rename(run_ + "/swap", Shard(3, 1));
  ExpectVerifyFails(3, 0, "SHA-256");
  ExpectReaderSkipsNewest("rank 0");
}

TEST_F(TamperTest, StepsReordered) {
  fs::rename(StepDir(2), run_ + "/tmp");
  fs::rename(StepDir(3), StepDir(2));
  fs::rename(run_ + "/tmp", StepDir(3));
  VerifyReport rep = Verify(nullptr);
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.failures.front().message, HasSubstr("sits in the directory of step"));
  ExpectReaderRefuses("reordered");
}

TEST_F(TamperTest, MiddleStepDeleted) {
  fs::remove_all(StepDir(2));
  VerifyReport rep = Verify(nullptr);
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.failures.front().message, HasSubstr("step 3: chain broken"));
  ExpectReaderRefuses("chain broken");
}

TEST_F(TamperTest, NewestStepDeletedIsCaughtAgainstHead) {
  fs::remove_all(StepDir(3));
  ExpectVerifyFails(std::nullopt, std::nullopt, "rolled back");
  ExpectReaderRefuses("rolled back");
  // An attacker who also rewinds the local HEAD file is caught by the coordinator's copy.
  auto head2 = ScanChain(io::DefaultFileSystem(), run_)->steps.back().digest;
  ASSERT_TRUE(WriteHead(io::DefaultFileSystem(), run_, {head2, 2}).has_value());
  EXPECT_TRUE(Verify(nullptr).ok());
  VerifyReport rep = Verify(nullptr, head_);
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.failures.front().message, HasSubstr("the expected head names manifest"));
  ExpectReaderRefuses("rolled back", head_);
}

TEST_F(TamperTest, CheckpointCopiedInFromAnotherRun) {
  const std::string other = tmp_.Sub("other");
  WriteRun(other, "run-B", key_, /*first_step=*/2);
  fs::copy(other + "/" + StepDirName(4), StepDir(4), fs::copy_options::recursive);
  VerifyReport rep = Verify(nullptr);
  ASSERT_FALSE(rep.ok());
  bool named_run = false;
  for (const auto& f : rep.failures) named_run |= f.message.find("run 'run-B'") != std::string::npos;
  EXPECT_TRUE(named_run);
  ExpectReaderRefuses("run-B");
}

TEST_F(TamperTest, WrongKeyAndMissingKey) {
  auto wrong = NewKey("wrong key file");
  VerifyReport rep = Verify(wrong.get());
  ASSERT_FALSE(rep.ok());
  EXPECT_THAT(rep.failures.front().message, HasSubstr("wrong key"));
  EXPECT_THAT(rep.failures.front().message, HasSubstr(key_->id));
  EXPECT_THAT(rep.failures.front().message, HasSubstr(wrong->id));
  auto r = Open(std::nullopt, wrong);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kFailedPrecondition);
  EXPECT_THAT(r.error().ToString(), HasSubstr("wrong key"));
  auto missing = CheckpointReader::Open(run_, ReaderOptions{});
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(missing.error().ToString(), HasSubstr("needs the master key"));
}

// Damage every shard of every step: the reader reports each and gives up cleanly.
TEST_F(TamperTest, NoValidCheckpointLeft) {
  for (uint64_t s = 1; s <= 3; ++s) FlipByte(Shard(s, 0), 30000);
  auto r = Open();
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kDataLoss);
  EXPECT_THAT(r.error().ToString(), HasSubstr("no valid checkpoint"));
  EXPECT_THAT(r.error().ToString(), HasSubstr("step 1"));
}

}  // namespace
}  // namespace cairn::ckpt
