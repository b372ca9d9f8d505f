#include "checkpoint/aead_stream.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>

#include "common/fault_fs.h"
#include "common/io.h"

namespace cairn::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr uint32_t kCs = 4096;

// An in-memory WritableFile.
class MemWritable final : public io::WritableFile {
 public:
  explicit MemWritable(bool keep = true) : keep_(keep) {}
  Status Append(std::span<const std::byte> data) override {
    if (keep_) bytes_.insert(bytes_.end(), data.begin(), data.end());
    appended_ += data.size();
    return OkStatus();
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  const std::string& path() const override { return path_; }
  std::vector<std::byte>& bytes() { return bytes_; }
  uint64_t appended() const { return appended_; }

 private:
  bool keep_;
  std::string path_ = "/mem/shard";
  std::vector<std::byte> bytes_;
  uint64_t appended_ = 0;
};

// An in-memory ReadableFile.
class MemReadable final : public io::ReadableFile {
 public:
  explicit MemReadable(std::vector<std::byte> bytes) : bytes_(std::move(bytes)) {}
  Result<std::size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    if (offset >= bytes_.size()) return std::size_t{0};
    const std::size_t n = std::min<std::size_t>(out.size(), bytes_.size() - offset);
    if (n > 0) std::memcpy(out.data(), bytes_.data() + offset, n);
    return n;
  }
  uint64_t size() const override { return bytes_.size(); }
  const std::string& path() const override { return path_; }

 private:
  std::vector<std::byte> bytes_;
  std::string path_ = "/mem/shard";
};

SecretKey KeyOf(uint8_t fill) {
  std::array<uint8_t, 32> b;
  b.fill(fill);
  return SecretKey::FromBytes(b);
}

// A plaintext of n bytes and a multi-segment source over it: [0, n/4) real,
// [n/4, n/2) zeros given as a null segment, an empty segment, then [n/2, n) in two
// real segments.
struct Plain {
  std::vector<std::byte> bytes;
  std::unique_ptr<SpanListSource> src;

  explicit Plain(uint64_t n, uint64_t seed = 1) : bytes(n) {
    std::mt19937_64 rng(seed);
    for (auto& b : bytes) b = static_cast<std::byte>(rng());
    const uint64_t q = n / 4, h = n / 2, t = 3 * n / 4;
    std::fill(bytes.begin() + static_cast<std::ptrdiff_t>(q),
              bytes.begin() + static_cast<std::ptrdiff_t>(h), std::byte{0});
    const std::span<const std::byte> all(bytes);
    src = std::make_unique<SpanListSource>(std::vector<std::span<const std::byte>>{
        all.subspan(0, q),
        std::span<const std::byte>(static_cast<const std::byte*>(nullptr), h - q),
        std::span<const std::byte>(), all.subspan(h, t - h), all.subspan(t)});
  }
};

ShardHeader MakeHeader(uint64_t n, uint32_t cs = kCs) {
  ShardHeader h;
  h.chunk_size = cs;
  h.plaintext_size = n;
  h.step = 40;
  h.rank = 3;
  h.world_size = 8;
  h.run_tag = RunTag("run-1");
  return h;
}

ShardExpectation ExpectFor(const ShardHeader& h, uint64_t file_size) {
  return {.step = h.step,
          .rank = h.rank,
          .world_size = h.world_size,
          .run_tag = h.run_tag,
          .file_size = file_size};
}

struct Encrypted {
  ShardHeader header;
  std::vector<std::byte> file;
  ShardSummary summary;
};

Encrypted Encrypt(const Plain& p, uint32_t cs = kCs, const SecretKey& key = KeyOf(9),
                  EncryptOptions opts = {.threads = 2, .batch_chunks = 2}) {
  Encrypted e;
  e.header = MakeHeader(p.bytes.size(), cs);
  MemWritable out;
  auto s = EncryptShard(*p.src, e.header, key, out, opts);
  EXPECT_TRUE(s.has_value()) << s.error().ToString();
  if (s) e.summary = *s;
  e.file = std::move(out.bytes());
  return e;
}

Result<std::unique_ptr<ShardDecryptor>> OpenMem(std::vector<std::byte> file,
                                                const ShardExpectation& expect,
                                                const SecretKey& key = KeyOf(9)) {
  return ShardDecryptor::Open(std::make_shared<MemReadable>(std::move(file)), key, expect);
}

// --- Header --------------------------------------------------------------------------

TEST(ShardHeaderTest, LayoutIsAsDocumented) {
  ShardHeader h = MakeHeader(0x0102030405060708ull >> 8, 1u << 20);
  h.step = 0x1122334455667788ull;
  const auto b = h.Encode();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), 8), "CAIRNSH1");
  EXPECT_EQ(b[8], 1);
  EXPECT_EQ(b[9] | b[10] | b[11], 0);
  EXPECT_EQ(b[12], 0x00);
  EXPECT_EQ(b[14], 0x10);  // 1 MiB little-endian
  EXPECT_EQ(b[16], 0x07);
  EXPECT_EQ(b[22], 0x01);
  EXPECT_EQ(b[24], 0x88);
  EXPECT_EQ(b[31], 0x11);
  EXPECT_EQ(b[32], 3);
  EXPECT_EQ(b[36], 8);
  EXPECT_TRUE(std::equal(h.run_tag.begin(), h.run_tag.end(), b.begin() + 40));
  EXPECT_TRUE(std::all_of(b.begin() + 56, b.end(), [](uint8_t x) { return x == 0; }));
  auto d = ShardHeader::Decode(b);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(*d, h);

  Sha256 s;
  s.Update(std::string_view("cairn.run.v1"));
  s.Update(std::string_view("run-1"));
  const Digest full = s.Finish();
  EXPECT_TRUE(std::equal(h.run_tag.begin(), h.run_tag.end(), full.begin()));
  EXPECT_NE(RunTag("run-1"), RunTag("run-2"));
}

TEST(ShardHeaderTest, DecodeRejectsEachBadFieldAsDataLoss) {
  const auto good = MakeHeader(100).Encode();
  struct Case {
    std::string name;
    std::size_t offset;
    uint8_t value;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"magic", 0, 'X', "bad magic"},
      {"version", 8, 2, "version is 2"},
      {"chunk_size_small", 13, 0x00, "chunk_size"},  // 4096 -> 0
      {"chunk_size_large", 15, 0x10, "chunk_size"},  // + 256 MiB
      {"rank", 32, 9, "rank 9 is not below world_size 8"},
      {"reserved", 60, 1, "reserved"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto b = good;
    b[c.offset] = c.value;
    auto d = ShardHeader::Decode(b);
    ASSERT_FALSE(d.has_value());
    EXPECT_EQ(d.error().code(), Code::kDataLoss);
    EXPECT_THAT(d.error().ToString(), HasSubstr(c.message));
  }
  auto short_h = ShardHeader::Decode(std::span(good).first(63));
  ASSERT_FALSE(short_h.has_value());
  EXPECT_EQ(short_h.error().code(), Code::kDataLoss);
}

TEST(ShardHeaderTest, Sizes) {
  EXPECT_EQ(NumChunks(0, kCs), 1u);
  EXPECT_EQ(NumChunks(1, kCs), 1u);
  EXPECT_EQ(NumChunks(kCs, kCs), 1u);
  EXPECT_EQ(NumChunks(kCs + 1, kCs), 2u);
  EXPECT_EQ(CiphertextSize(0, kCs), 64u + 16u);
  EXPECT_EQ(CiphertextSize(5 * kCs + 7, kCs), 64u + 5 * kCs + 7 + 6 * 16);
}

// --- Round trips ---------------------------------------------------------------------

class RoundTripTest : public ::testing::TestWithParam<uint64_t> {};

TEST_P(RoundTripTest, EncryptThenReadEverything) {
  const uint64_t n = GetParam();
  const Plain p(n, n + 1);
  const Encrypted e = Encrypt(p);
  ASSERT_EQ(e.file.size(), CiphertextSize(n, kCs));
  EXPECT_EQ(e.summary.file_size, e.file.size());
  EXPECT_EQ(e.summary.sha256, Sha256Of(e.file));

  MemReadable raw(e.file);
  auto hashed = HashShardFile(raw);
  ASSERT_TRUE(hashed.has_value()) << hashed.error().ToString();
  EXPECT_EQ(hashed->file_size, e.summary.file_size);
  EXPECT_EQ(hashed->sha256, e.summary.sha256);

  auto d = OpenMem(e.file, ExpectFor(e.header, e.file.size()));
  ASSERT_TRUE(d.has_value()) << d.error().ToString();
  ASSERT_EQ((*d)->size(), n);
  EXPECT_EQ((*d)->num_chunks(), NumChunks(n, kCs));
  EXPECT_TRUE((*d)->VerifyAll(&e.summary.sha256).has_value());
  EXPECT_TRUE((*d)->VerifyAll(nullptr).has_value());

  std::vector<std::byte> all(n);
  ASSERT_TRUE((*d)->ReadAt(0, all).has_value());
  EXPECT_EQ(all, p.bytes);

  // Every (offset, length) over chunk-boundary-ish points.
  std::vector<uint64_t> points = {0,           1,       2,           kCs - 1, kCs,   kCs + 1,
                                  2 * kCs - 1, 2 * kCs, 3 * kCs + 5, n / 2,   n - 1, n};
  std::erase_if(points, [&](uint64_t x) { return x > n; });
  for (uint64_t a : points) {
    for (uint64_t b : points) {
      if (b < a) continue;
      std::vector<std::byte> buf(b - a, std::byte{0xEE});
      ASSERT_TRUE((*d)->ReadAt(a, buf).has_value()) << a << ".." << b;
      ASSERT_TRUE(std::equal(buf.begin(), buf.end(), p.bytes.begin() + static_cast<long>(a)))
          << a << ".." << b;
    }
  }
  std::mt19937_64 rng(n);
  for (int i = 0; i < 200 && n > 0; ++i) {
    const uint64_t a = rng() % n;
    const uint64_t len = rng() % (n - a + 1);
    std::vector<std::byte> buf(len);
    ASSERT_TRUE((*d)->ReadAt(a, buf).has_value());
    ASSERT_TRUE(std::equal(buf.begin(), buf.end(), p.bytes.begin() + static_cast<long>(a)));
  }
  std::array<std::byte, 1> one;
  auto past = (*d)->ReadAt(n, one);
  ASSERT_FALSE(past.has_value());
  EXPECT_EQ(past.error().code(), Code::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Sizes, RoundTripTest,
                         ::testing::Values(0, 1, kCs - 1, kCs, kCs + 1, 5 * kCs + 7));

TEST(AeadStreamTest, OutputIsIndependentOfThreadsAndBatching) {
  const Plain p(13 * kCs + 100);
  const Encrypted a = Encrypt(p, kCs, KeyOf(9), {.threads = 1, .batch_chunks = 1});
  const Encrypted b = Encrypt(p, kCs, KeyOf(9), {.threads = 3, .batch_chunks = 4});
  const Encrypted c = Encrypt(p, kCs, KeyOf(9), {.threads = 0, .batch_chunks = 0});
  EXPECT_EQ(a.file, b.file);
  EXPECT_EQ(a.file, c.file);
}

TEST(AeadStreamTest, ChunksFollowTheDocumentedNonceAndAad) {
  const Plain p(2 * kCs + 10);
  const Encrypted e = Encrypt(p);
  const auto* f = reinterpret_cast<const uint8_t*>(e.file.data());
  const std::span<const uint8_t> aad(f, 64);
  auto gcm = AesGcm::Create(KeyOf(9));
  ASSERT_TRUE(gcm.has_value());
  for (uint64_t i = 0; i < 3; ++i) {
    const std::size_t len = i < 2 ? kCs : 10;
    const std::size_t off = 64 + i * (kCs + 16);
    std::array<uint8_t, 12> nonce{};
    nonce[0] = static_cast<uint8_t>(i);
    nonce[8] = i == 2 ? 1 : 0;
    std::vector<std::byte> pt(len);
    ASSERT_TRUE(gcm->Open(nonce, aad, std::span(e.file).subspan(off, len), pt.data(),
                          std::span<const uint8_t, 16>(f + off + len, 16)))
        << "chunk " << i;
    EXPECT_TRUE(std::equal(pt.begin(), pt.end(), p.bytes.begin() + i * kCs));
  }
}

TEST(AeadStreamTest, RejectsSizeMismatchAndBadHeader) {
  const Plain p(100);
  MemWritable out;
  ShardHeader h = MakeHeader(99);
  auto r = EncryptShard(*p.src, h, KeyOf(9), out);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(r.error().ToString(), HasSubstr("encrypt shard rank 3 step 40"));
  h = MakeHeader(100, 1000);
  r = EncryptShard(*p.src, h, KeyOf(9), out);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(out.appended(), 0u);
}

// --- Tampering -----------------------------------------------------------------------

class TamperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    plain_ = std::make_unique<Plain>(5 * kCs + 7, 77);
    enc_ = Encrypt(*plain_);
    expect_ = ExpectFor(enc_.header, enc_.file.size());
  }
  static std::size_t ChunkOff(uint64_t i) { return 64 + i * (kCs + 16); }
  static std::size_t ChunkLen(uint64_t i) { return i < 5 ? kCs : 7; }

  // Expects Open to fail with kDataLoss whose text contains `what`.
  void ExpectOpenFails(std::vector<std::byte> file, const ShardExpectation& expect,
                       std::string_view what, const SecretKey& key = KeyOf(9)) {
    auto d = OpenMem(std::move(file), expect, key);
    ASSERT_FALSE(d.has_value());
    EXPECT_EQ(d.error().code(), Code::kDataLoss) << d.error().ToString();
    EXPECT_THAT(d.error().ToString(), HasSubstr(what));
  }
  // Expects Open to succeed but chunk i to fail in ReadAt and VerifyAll.
  void ExpectChunkFails(std::vector<std::byte> file, uint64_t i) {
    auto d = OpenMem(file, expect_);
    if (i == 5) {
      ASSERT_FALSE(d.has_value());
      EXPECT_EQ(d.error().code(), Code::kDataLoss);
      EXPECT_THAT(d.error().ToString(), HasSubstr("chunk 5 of 6 fails authentication"));
      return;
    }
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    const std::string msg = fmt::format("chunk {} of 6 fails authentication", i);
    std::vector<std::byte> all(plain_->bytes.size());
    auto r = (*d)->ReadAt(0, all);
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kDataLoss);
    EXPECT_THAT(r.error().ToString(), HasSubstr(msg));
    std::array<std::byte, 3> few;
    auto partial = (*d)->ReadAt(i * kCs + 1, few);
    ASSERT_FALSE(partial.has_value());
    EXPECT_EQ(partial.error().code(), Code::kDataLoss);
    auto v = (*d)->VerifyAll(nullptr);
    ASSERT_FALSE(v.has_value());
    EXPECT_EQ(v.error().code(), Code::kDataLoss);
    EXPECT_THAT(v.error().ToString(), HasSubstr(msg));
    // The other chunks still read.
    const uint64_t other = i == 0 ? 1 : 0;
    std::vector<std::byte> ok(kCs);
    EXPECT_TRUE((*d)->ReadAt(other * kCs, ok).has_value());
  }

  std::unique_ptr<Plain> plain_;
  Encrypted enc_;
  ShardExpectation expect_;
};

TEST_F(TamperTest, UntouchedFileOpens) {
  auto d = OpenMem(enc_.file, expect_);
  ASSERT_TRUE(d.has_value()) << d.error().ToString();
  EXPECT_TRUE((*d)->VerifyAll(&enc_.summary.sha256).has_value());
  Digest wrong = enc_.summary.sha256;
  wrong[0] ^= 1;
  auto v = (*d)->VerifyAll(&wrong);
  ASSERT_FALSE(v.has_value());
  EXPECT_EQ(v.error().code(), Code::kDataLoss);
  EXPECT_THAT(v.error().ToString(), HasSubstr("SHA-256"));
}

TEST_F(TamperTest, EveryHeaderBitFlipIsDetected) {
  for (std::size_t i = 0; i < 64; ++i) {
    for (uint8_t bit : {0x01, 0x80}) {
      SCOPED_TRACE(fmt::format("byte {} bit {:#x}", i, bit));
      auto f = enc_.file;
      f[i] ^= std::byte{bit};
      auto d = OpenMem(f, expect_);
      ASSERT_FALSE(d.has_value());
      EXPECT_EQ(d.error().code(), Code::kDataLoss);
    }
  }
}

TEST_F(TamperTest, EveryChunkCiphertextAndTagFlipIsDetected) {
  for (uint64_t i = 0; i < 6; ++i) {
    SCOPED_TRACE(fmt::format("chunk {}", i));
    auto f = enc_.file;
    f[ChunkOff(i) + ChunkLen(i) / 2] ^= std::byte{0x04};
    ExpectChunkFails(f, i);
    auto g = enc_.file;
    g[ChunkOff(i) + ChunkLen(i) + 15] ^= std::byte{0x01};  // last tag byte
    ExpectChunkFails(g, i);
  }
}

TEST_F(TamperTest, SwappedChunksAreDetected) {
  auto f = enc_.file;
  std::swap_ranges(f.begin() + ChunkOff(1), f.begin() + ChunkOff(2), f.begin() + ChunkOff(2));
  ExpectChunkFails(f, 1);
}

TEST_F(TamperTest, TruncationAndTrailingBytesAreDetected) {
  auto cut1 = enc_.file;
  cut1.pop_back();
  ExpectOpenFails(cut1, expect_,
                  fmt::format("file is {} bytes, expected {} (truncated or trailing bytes)",
                              cut1.size(), enc_.file.size()));
  // Even when the manifest were to agree with the truncated size.
  ExpectOpenFails(cut1, ExpectFor(enc_.header, cut1.size()), "implies");

  // Drop the last whole chunk (chunk 5 of 6): the file now ends with a non-final chunk.
  std::vector<std::byte> cut_chunk(enc_.file.begin(), enc_.file.begin() + ChunkOff(5));
  ExpectOpenFails(cut_chunk, expect_, "truncated");
  ExpectOpenFails(cut_chunk, ExpectFor(enc_.header, cut_chunk.size()), "implies");
  // ... and with the header rewritten to match, the final flag and AAD give it away.
  ShardHeader h = enc_.header;
  h.plaintext_size = 5 * kCs;
  const auto hb = h.Encode();
  std::memcpy(cut_chunk.data(), hb.data(), hb.size());
  ExpectOpenFails(cut_chunk, ExpectFor(h, cut_chunk.size()), "chunk 4 of 5 fails");

  auto longer = enc_.file;
  longer.push_back(std::byte{0});
  ExpectOpenFails(longer, expect_, "truncated or trailing bytes");
  ExpectOpenFails(longer, ExpectFor(enc_.header, longer.size()), "implies");
  MemReadable raw(longer);
  auto hashed = HashShardFile(raw);
  ASSERT_FALSE(hashed.has_value());
  EXPECT_EQ(hashed.error().code(), Code::kDataLoss);
}

TEST_F(TamperTest, WrongKeyIsDetected) {
  ExpectOpenFails(enc_.file, expect_, "chunk 5 of 6 fails authentication", KeyOf(10));
}

TEST_F(TamperTest, ExpectationMismatchNamesTheField) {
  ShardExpectation e = expect_;
  e.step = 41;
  ExpectOpenFails(enc_.file, e, "header says step 40, manifest says step 41");
  e = expect_;
  e.rank = 2;
  ExpectOpenFails(enc_.file, e, "header says rank 3, manifest says rank 2");
  e = expect_;
  e.world_size = 16;
  ExpectOpenFails(enc_.file, e, "header says world_size 8, manifest says world_size 16");
  e = expect_;
  e.run_tag = RunTag("run-2");
  ExpectOpenFails(enc_.file, e, "run tag");
  e = expect_;
  e.file_size += 16;
  ExpectOpenFails(enc_.file, e, "expected");
}

// --- Failures and scale --------------------------------------------------------------

// A WritableFile that is slow now and then, so that the writer and the hashing thread
// drift apart and the slot ring fills up on either side.
class StutteringWritable final : public io::WritableFile {
 public:
  Status Append(std::span<const std::byte> data) override {
    if (++calls_ % 3 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return mem_.Append(data);
  }
  Status Sync() override { return OkStatus(); }
  Status Close() override { return OkStatus(); }
  const std::string& path() const override { return mem_.path(); }
  std::vector<std::byte>& bytes() { return mem_.bytes(); }

 private:
  MemWritable mem_;
  int calls_ = 0;
};

// Writing and hashing run on different threads, yet the file and its digest depend on
// nothing but the key and the plaintext: the same for every thread count, batch size and
// writer speed, and the digest is SHA-256 of the file as written.
TEST(EncryptPipelineTest, FileAndDigestDoNotDependOnThePipelineShape) {
  const Plain p(41 * kCs + 77, 12);
  const ShardHeader h = MakeHeader(p.bytes.size());
  std::optional<std::vector<std::byte>> first_file;
  std::optional<Digest> first_digest;
  for (int threads : {1, 2, 4}) {
    for (uint32_t batch : {1u, 3u, 8u, 64u}) {
      for (bool slow : {false, true}) {
        SCOPED_TRACE(fmt::format("threads {} batch {} slow {}", threads, batch, slow));
        MemWritable fast;
        StutteringWritable stutter;
        io::WritableFile& out = slow ? static_cast<io::WritableFile&>(stutter) : fast;
        auto s = EncryptShard(*p.src, h, KeyOf(9), out, {.threads = threads, .batch_chunks = batch});
        ASSERT_TRUE(s.has_value()) << s.error().ToString();
        const auto& file = slow ? stutter.bytes() : fast.bytes();
        ASSERT_EQ(file.size(), CiphertextSize(p.bytes.size(), kCs));
        EXPECT_EQ(s->file_size, file.size());
        EXPECT_EQ(s->sha256, Sha256Of(file));
        if (!first_file) {
          first_file = file;
          first_digest = s->sha256;
        }
        EXPECT_TRUE(file == *first_file);
        EXPECT_EQ(s->sha256, *first_digest);
      }
    }
  }
}

class AeadStreamFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_aead_test_{}", io::RandomSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(std::string_view name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

TEST_F(AeadStreamFsTest, WriteFailureStopsWorkersAndReturnsError) {
  const Plain p(64 * kCs + 3);
  for (int nth : {1, 2, 5, 30}) {
    SCOPED_TRACE(fmt::format("write {}", nth));
    io::FaultInjectingFileSystem ffs;
    auto f = ffs.NewWritableFile(Path(fmt::format("shard{}", nth)), 0600);
    ASSERT_TRUE(f.has_value());
    ffs.FailNth(io::OpKind::kWrite, nth, ENOSPC);
    const auto start = std::chrono::steady_clock::now();
    auto r = EncryptShard(*p.src, MakeHeader(p.bytes.size()), KeyOf(9), **f,
                          {.threads = 2, .batch_chunks = 2});
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), Code::kResourceExhausted);
    EXPECT_THAT(r.error().ToString(), HasSubstr("encrypt shard rank 3 step 40"));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  }
}

TEST_F(AeadStreamFsTest, RealFileRoundTrip) {
  const Plain p(37 * kCs + 1234);
  const ShardHeader h = MakeHeader(p.bytes.size());
  auto& dfs = io::DefaultFileSystem();
  {
    auto f = dfs.NewWritableFile(Path("s"), 0600);
    ASSERT_TRUE(f.has_value());
    auto s = EncryptShard(*p.src, h, KeyOf(9), **f);
    ASSERT_TRUE(s.has_value()) << s.error().ToString();
    ASSERT_TRUE((*f)->Sync().has_value());
    ASSERT_TRUE((*f)->Close().has_value());
    auto r = dfs.OpenReadable(Path("s"));
    ASSERT_TRUE(r.has_value());
    auto hashed = HashShardFile(**r);
    ASSERT_TRUE(hashed.has_value());
    EXPECT_EQ(hashed->sha256, s->sha256);
    std::shared_ptr<io::ReadableFile> shared = std::move(*r);
    auto d = ShardDecryptor::Open(shared, KeyOf(9), ExpectFor(h, s->file_size));
    ASSERT_TRUE(d.has_value()) << d.error().ToString();
    EXPECT_TRUE((*d)->VerifyAll(&s->sha256).has_value());
    std::vector<std::byte> all(p.bytes.size());
    ASSERT_TRUE((*d)->ReadAt(0, all).has_value());
    EXPECT_EQ(all, p.bytes);
  }
}

TEST(AeadStreamScaleTest, SixtyFourMiBWithOneMiBChunks) {
  constexpr uint32_t kMiB = 1u << 20;
  const Plain p(64ull * kMiB + 12345, 5);
  const Encrypted e = Encrypt(p, kMiB, KeyOf(9), {.threads = 2, .batch_chunks = 4});
  ASSERT_EQ(e.file.size(), CiphertextSize(p.bytes.size(), kMiB));
  EXPECT_EQ(e.summary.sha256, Sha256Of(e.file));
  auto d = OpenMem(e.file, ExpectFor(e.header, e.file.size()));
  ASSERT_TRUE(d.has_value()) << d.error().ToString();
  EXPECT_TRUE((*d)->VerifyAll(&e.summary.sha256).has_value());
  std::vector<std::byte> all(p.bytes.size());
  ASSERT_TRUE((*d)->ReadAt(0, all).has_value());  // parallel path
  EXPECT_TRUE(all == p.bytes);
  // A large unaligned read (partial head and tail around parallel whole chunks).
  std::vector<std::byte> mid(20ull * kMiB + 3);
  ASSERT_TRUE((*d)->ReadAt(kMiB / 2 + 1, mid).has_value());
  EXPECT_TRUE(std::equal(mid.begin(), mid.end(), p.bytes.begin() + kMiB / 2 + 1));

  // Concurrent small and large reads from several threads.
  std::vector<std::thread> readers;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (int i = 0; i < 50; ++i) {
        const uint64_t a = rng() % p.bytes.size();
        const uint64_t len =
            rng() % std::min<uint64_t>(p.bytes.size() - a + 1, i % 10 == 0 ? 8 * kMiB : 5000);
        std::vector<std::byte> buf(len);
        if (!(*d)->ReadAt(a, buf) ||
            !std::equal(buf.begin(), buf.end(), p.bytes.begin() + static_cast<long>(a))) {
          ++bad;
        }
      }
    });
  }
  for (auto& t : readers) t.join();
  EXPECT_EQ(bad.load(), 0);

  // A flipped bit deep inside: the parallel read names that chunk.
  auto f = e.file;
  f[64 + 40ull * (kMiB + 16) + 100] ^= std::byte{1};
  auto d2 = OpenMem(std::move(f), ExpectFor(e.header, e.file.size()));
  ASSERT_TRUE(d2.has_value());
  auto r = (*d2)->ReadAt(0, all);
  ASSERT_FALSE(r.has_value());
  EXPECT_THAT(r.error().ToString(), HasSubstr("chunk 40 of 65 fails authentication"));
  auto v = (*d2)->VerifyAll(nullptr);
  ASSERT_FALSE(v.has_value());
  EXPECT_THAT(v.error().ToString(), HasSubstr("chunk 40 of 65 fails authentication"));
}

// Run with --gtest_also_run_disabled_tests to measure EncryptShard into a memory sink.
TEST(AeadStreamScaleTest, DISABLED_Throughput256MiB) {
  constexpr uint64_t kSize = 256ull << 20;
  std::vector<std::byte> data(kSize);
  for (std::size_t i = 0; i < kSize; i += 8) {
    const uint64_t v = i * 0x9E3779B97F4A7C15ull;
    std::memcpy(data.data() + i, &v, 8);
  }
  SpanListSource src({std::span<const std::byte>(data)});
  for (int threads : {1, 2}) {
    MemWritable sink(/*keep=*/false);
    const auto start = std::chrono::steady_clock::now();
    auto s = EncryptShard(src, MakeHeader(kSize, 1u << 20), KeyOf(9), sink,
                          {.threads = threads, .batch_chunks = 8});
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(s.has_value());
    std::printf("EncryptShard 256 MiB, %d thread(s): %.3f s, %.0f MiB/s\n", threads, secs,
                256.0 / secs);
  }
  MemWritable out;
  auto s = EncryptShard(src, MakeHeader(kSize, 1u << 20), KeyOf(9), out);
  ASSERT_TRUE(s.has_value());
  auto d = OpenMem(std::move(out.bytes()), ExpectFor(MakeHeader(kSize, 1u << 20), s->file_size));
  ASSERT_TRUE(d.has_value());
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*d)->ReadAt(0, data).has_value());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("ReadAt 256 MiB: %.3f s, %.0f MiB/s\n", secs, 256.0 / secs);
  start = std::chrono::steady_clock::now();
  ASSERT_TRUE((*d)->VerifyAll(&s->sha256).has_value());
  secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("VerifyAll 256 MiB: %.3f s, %.0f MiB/s\n", secs, 256.0 / secs);
}

}  // namespace
}  // namespace cairn::ckpt
