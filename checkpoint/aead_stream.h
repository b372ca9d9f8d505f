// The encrypted shard file: a chunked AES-256-GCM stream with random-access decryption.
//
// On-disk format (version 1; all integers little-endian):
//
//   Header, 64 bytes:
//     offset  size  field
//          0     8  magic "CAIRNSH1"
//          8     4  u32 version = 1
//         12     4  u32 chunk_size, in [4096, 64 MiB]
//         16     8  u64 plaintext_size
//         24     8  u64 step
//         32     4  u32 rank (< world_size)
//         36     4  u32 world_size (>= 1)
//         40    16  run_tag = first 16 bytes of SHA-256("cairn.run.v1" || run_id)
//         56     8  reserved, zero
//
//   Body: the plaintext split into n = max(1, ceil(plaintext_size / chunk_size)) chunks
//   of chunk_size bytes, the last one shorter (an empty plaintext is one empty chunk).
//   Chunk i (0-based) is stored at offset 64 + i * (chunk_size + 16) as
//       AES-256-GCM ciphertext (same length as the chunk) || 16-byte tag
//   with nonce (12 bytes) = u64 i || u32 flags, flags bit 0 set on the final chunk and
//   all other bits zero, and AAD = the 64 header bytes.
//
//   File size = 64 + plaintext_size + 16 * n = CiphertextSize(plaintext_size, chunk_size).
//
// Every shard file is encrypted under its own fresh random data key (the caller's
// duty), so (key, nonce) pairs never repeat. Binding the chunk index and the final flag
// into the nonce and the header into the AAD makes reordering, truncation at a chunk
// boundary, appending, and header edits all fail authentication.
//
// Promise: EncryptShard streams a PlaintextSource into a WritableFile at disk speed
// (worker threads seal batches of chunks straight from the source's segments while the
// calling thread writes them in order and a hashing thread hashes the same batches, in
// order, concurrently with the writes). ShardDecryptor hands out
// only authenticated plaintext: any byte that cannot be authenticated makes the read
// fail with kDataLoss naming the shard and chunk. HashShardFile checks structure and
// hashes without a key.
//
// Threading: free functions are thread-safe for distinct arguments; ShardDecryptor is
// safe for concurrent ReadAt/VerifyAll calls (see there).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "checkpoint/crypto.h"
#include "checkpoint/types.h"
#include "common/io.h"
#include "common/status.h"

namespace cairn::ckpt {

inline constexpr uint32_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunkSize = 64u << 20;
inline constexpr uint32_t kDefaultChunkSize = 1u << 20;

// The 64-byte header of a shard file (layout above).
struct ShardHeader {
  static constexpr std::size_t kSize = 64;
  static constexpr uint32_t kVersion = 1;

  uint32_t version = kVersion;
  uint32_t chunk_size = kDefaultChunkSize;
  uint64_t plaintext_size = 0;
  uint64_t step = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::array<uint8_t, 16> run_tag{};

  std::array<uint8_t, kSize> Encode() const;
  // Checks magic, version, reserved bytes, chunk_size range, rank < world_size and that
  // the ciphertext size fits in 64 bits; errors are kDataLoss naming the field.
  static Result<ShardHeader> Decode(std::span<const uint8_t> bytes);

  bool operator==(const ShardHeader&) const = default;
};

// First 16 bytes of SHA-256("cairn.run.v1" || run_id).
std::array<uint8_t, 16> RunTag(std::string_view run_id);

// Number of chunks: max(1, ceil(plaintext_size / chunk_size)).
uint64_t NumChunks(uint64_t plaintext_size, uint32_t chunk_size);
// Size of the shard file: 64 + plaintext_size + 16 * NumChunks(...).
uint64_t CiphertextSize(uint64_t plaintext_size, uint32_t chunk_size);

// What the writer records about a shard file.
struct ShardSummary {
  uint64_t file_size = 0;
  Digest sha256{};  // SHA-256 of every byte of the file, header included (= sha256sum)
};

struct EncryptOptions {
  int threads = 2;            // worker threads sealing chunks (at least 1 is used)
  uint32_t batch_chunks = 8;  // chunks per batch handed to a worker and written at once
};

// Encrypts `src` into `out` (header, then every chunk, through out.Append; no Sync or
// Close). header.plaintext_size must equal src.size(); the header must be valid. At most
// 2 * threads batches are in memory (a batch's buffer is reused once it is both written
// and hashed). On any failure the workers and the hashing thread are stopped and joined
// before the error is returned, with context "encrypt shard rank R step S".
Result<ShardSummary> EncryptShard(const PlaintextSource& src, const ShardHeader& header,
                                  const SecretKey& data_key, io::WritableFile& out,
                                  const EncryptOptions& opts = {});

// What the manifest says a shard file must be.
struct ShardExpectation {
  uint64_t step = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::array<uint8_t, 16> run_tag{};
  uint64_t file_size = 0;
};

// Authenticated random access to the plaintext of one shard file.
//
// Promise: Open proves the header and the file length (it checks them against the
// expectation and authenticates the final chunk, whose nonce marks it final). ReadAt
// decrypts only the chunks covering the range, authenticating each, and never hands out
// a byte that failed authentication. Whole chunks inside the range are decrypted
// straight into the caller's buffer (on two threads for large reads); a one-chunk cache
// serves partial-chunk reads.
// Threading: ReadAt and VerifyAll may be called from several threads at once (the file
// is read with pread; the cache and the cipher pool are guarded by mutexes).
class ShardDecryptor final : public RandomAccessSource {
 public:
  static Result<std::unique_ptr<ShardDecryptor>> Open(std::shared_ptr<io::ReadableFile> file,
                                                      const SecretKey& data_key,
                                                      const ShardExpectation& expect);
  ~ShardDecryptor() override;

  uint64_t size() const override { return header_.plaintext_size; }
  Status ReadAt(uint64_t offset, std::span<std::byte> out) const override;

  // Reads the whole file once, authenticating every chunk in order, and, if
  // `expected_sha256` is given, compares the SHA-256 of the whole file. kDataLoss names
  // the first failing chunk, or both digests.
  Status VerifyAll(const Digest* expected_sha256) const;

  const ShardHeader& header() const { return header_; }
  uint64_t num_chunks() const { return nchunks_; }
  const std::string& path() const { return file_->path(); }

 private:
  class CipherLease;  // an AesGcm borrowed from pool_ for the duration of one call
  struct Cache {
    uint64_t index = UINT64_MAX;  // chunk held in `data`, UINT64_MAX when empty
    std::unique_ptr<std::byte[]> data;
    std::unique_ptr<std::byte[]> spare;  // the previous buffer, reused for the next miss
  };

  ShardDecryptor(std::shared_ptr<io::ReadableFile> file, const SecretKey& data_key,
                 const ShardHeader& header);

  uint64_t ChunkLen(uint64_t i) const;
  uint64_t ChunkFileOffset(uint64_t i) const;
  Status AuthError(uint64_t i) const;
  // Decrypts chunks [first, last) into dest (ChunkLen bytes each, back to back).
  Status DecryptChunks(uint64_t first, uint64_t last, std::byte* dest) const;
  // Copies bytes [skip, skip + out.size()) of chunk i through the cache.
  Status ReadPartial(uint64_t i, uint64_t skip, std::span<std::byte> out) const;

  Result<std::unique_ptr<AesGcm>> AcquireCipher() const;
  void ReleaseCipher(std::unique_ptr<AesGcm> c) const;

  std::shared_ptr<io::ReadableFile> file_;
  SecretKey key_;
  ShardHeader header_;
  std::array<uint8_t, ShardHeader::kSize> header_bytes_;
  uint64_t nchunks_;

  mutable std::mutex pool_mu_;
  mutable std::vector<std::unique_ptr<AesGcm>> pool_;  // guarded by pool_mu_
  mutable std::mutex cache_mu_;
  mutable Cache cache_;  // guarded by cache_mu_
};

// Keyless structural check: decodes the header, checks that the file size equals
// CiphertextSize(header), and returns the size and SHA-256 of the whole file (read in
// 4 MiB pieces). kDataLoss on a malformed header or a wrong size.
Result<ShardSummary> HashShardFile(const io::ReadableFile& file);

// A PlaintextSource over a list of byte spans (a span with data() == nullptr stands for
// that many zero bytes). The spans must outlive the source.
// Threading: immutable after construction; safe for concurrent use.
class SpanListSource final : public PlaintextSource {
 public:
  explicit SpanListSource(std::vector<std::span<const std::byte>> spans);
  uint64_t size() const override { return size_; }
  void Segments(uint64_t offset, uint64_t len,
                std::vector<std::span<const std::byte>>* out) const override;

 private:
  std::vector<std::span<const std::byte>> spans_;
  std::vector<uint64_t> starts_;  // starts_[i] = offset of spans_[i]
  uint64_t size_ = 0;
};

}  // namespace cairn::ckpt
