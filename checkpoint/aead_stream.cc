#include "checkpoint/aead_stream.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <future>
#include <optional>
#include <thread>
#include <utility>

namespace cairn::ckpt {
namespace {

constexpr std::array<uint8_t, 8> kMagic = {'C', 'A', 'I', 'R', 'N', 'S', 'H', '1'};
constexpr std::size_t kTag = AesGcm::kTagSize;
// Reads at least this many bytes at a time when streaming a whole file.
constexpr std::size_t kStreamBytes = 4u << 20;
// ReadAt splits the whole chunks of a read over two threads from this size on.
constexpr uint64_t kParallelReadBytes = 4u << 20;
constexpr std::size_t kMaxPooledCiphers = 8;

template <typename T>
void PutLE(uint8_t* p, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

template <typename T>
T GetLE(const uint8_t* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}

std::array<uint8_t, AesGcm::kNonceSize> ChunkNonce(uint64_t index, bool final) {
  std::array<uint8_t, AesGcm::kNonceSize> n;
  PutLE<uint64_t>(n.data(), index);
  PutLE<uint32_t>(n.data() + 8, final ? 1u : 0u);
  return n;
}

// A segment of `len` bytes starting `skip` bytes into `seg`, keeping the null-data
// convention for zero segments.
std::span<const std::byte> SubSegment(std::span<const std::byte> seg, uint64_t skip, uint64_t len) {
  if (seg.data() == nullptr) return {static_cast<const std::byte*>(nullptr), len};
  return seg.subspan(skip, len);
}

std::unique_ptr<std::byte[]> Uninitialized(std::size_t n) {
  return std::make_unique_for_overwrite<std::byte[]>(n);
}

// Reads exactly out.size() bytes at offset; kDataLoss naming `what` on a short read.
Status ReadExactly(const io::ReadableFile& file, uint64_t offset, std::span<std::byte> out,
                   std::string_view what) {
  CAIRN_ASSIGN_OR_RETURN(std::size_t n, file.ReadAt(offset, out));
  if (n != out.size()) {
    return MakeError(Code::kDataLoss, "{}: {} is cut short: read {} of {} bytes at offset {}",
                     file.path(), what, n, out.size(), offset);
  }
  return OkStatus();
}

// Pipeline state shared by EncryptShard's writer (the calling thread) and its workers.
struct EncryptPipeline {
  struct Slot {
    std::unique_ptr<std::byte[]> buf;
    std::size_t capacity = 0;
    std::size_t len = 0;
    uint64_t batch = 0;
    bool ready = false;  // holds sealed batch `batch`, not yet both written and hashed
  };

  const PlaintextSource& src;
  const ShardHeader& header;
  const std::array<uint8_t, ShardHeader::kSize>& header_bytes;
  uint64_t nchunks;
  uint64_t batch_chunks;
  uint64_t nbatches;

  std::mutex mu;
  std::condition_variable work_cv;  // a slot became free, or abort
  std::condition_variable done_cv;  // a batch became ready, or abort
  // Guarded by mu:
  std::vector<Slot> slots;
  uint64_t next_claim = 0;  // next batch a worker takes
  uint64_t written = 0;     // batches appended so far (by the writer, in order)
  uint64_t hashed = 0;      // batches hashed so far (by the hasher, in order)
  bool abort = false;
  std::optional<Error> worker_error;

  void Abort() {
    std::lock_guard lock(mu);
    abort = true;
    work_cv.notify_all();
    done_cv.notify_all();
  }

  // Seals batch b into slot s (which this worker owns until it is marked ready).
  Status SealBatch(AesGcm& gcm, uint64_t b, Slot& s,
                   std::vector<std::span<const std::byte>>& segs) {
    const uint64_t cs = header.chunk_size;
    const uint64_t first = b * batch_chunks;
    const uint64_t last = std::min(nchunks, first + batch_chunks);
    const uint64_t pt_begin = first * cs;
    const uint64_t pt_end = std::min(header.plaintext_size, last * cs);
    const std::size_t need = static_cast<std::size_t>(pt_end - pt_begin + (last - first) * kTag);
    if (s.capacity < need) {
      s.buf.reset();
      s.buf = Uninitialized(need);
      s.capacity = need;
    }
    std::byte* dst = s.buf.get();
    for (uint64_t i = first; i < last; ++i) {
      const uint64_t off = i * cs;
      const uint64_t len = std::min(cs, header.plaintext_size - off);
      segs.clear();
      if (len > 0) src.Segments(off, len, &segs);
      uint64_t got = 0;
      for (const auto& seg : segs) got += seg.size();
      if (got != len) {
        return MakeError(Code::kInternal,
                         "plaintext source gave {} bytes for [{}, {}), expected {}", got, off,
                         off + len, len);
      }
      const auto nonce = ChunkNonce(i, i + 1 == nchunks);
      std::span<uint8_t, kTag> tag(reinterpret_cast<uint8_t*>(dst + len), kTag);
      CAIRN_RETURN_IF_ERROR_CTX(gcm.Seal(nonce, header_bytes, segs, dst, tag), "seal chunk {}", i);
      dst += len + kTag;
    }
    s.len = need;
    return OkStatus();
  }

  void Worker(const SecretKey& key) {
    auto gcm = AesGcm::Create(key);
    std::vector<std::span<const std::byte>> segs;
    std::unique_lock lock(mu);
    const uint64_t nslots = slots.size();
    for (;;) {
      // Slot of batch b is free once batch b - nslots is both written and hashed.
      work_cv.wait(lock, [&] {
        return abort || next_claim >= nbatches || next_claim < std::min(written, hashed) + nslots;
      });
      if (abort || next_claim >= nbatches) return;
      const uint64_t b = next_claim++;
      Slot& s = slots[b % nslots];
      lock.unlock();
      Status st = gcm ? SealBatch(*gcm, b, s, segs) : Status(std::unexpected(gcm.error()));
      lock.lock();
      if (!st) {
        if (!worker_error) worker_error = std::move(st).error();
        abort = true;
        work_cv.notify_all();
        done_cv.notify_all();
        return;
      }
      s.batch = b;
      s.ready = true;
      done_cv.notify_all();
    }
  }

  // Blocks until batch b is sealed; nullptr if the pipeline was aborted first.
  Slot* WaitSealed(uint64_t b) {
    Slot* s = &slots[b % slots.size()];
    std::unique_lock lock(mu);
    done_cv.wait(lock, [&] { return abort || (s->ready && s->batch == b); });
    return s->ready && s->batch == b ? s : nullptr;
  }

  // Marks batch b (in slot s) written or hashed; frees the slot once it is both.
  void Consumed(Slot* s, uint64_t b, bool by_writer) {
    std::lock_guard lock(mu);
    ++(by_writer ? written : hashed);
    if (written > b && hashed > b) {
      s->ready = false;
      work_cv.notify_all();
    }
  }

  // The hashing thread: SHA-256 of every batch, in order, while the writer appends them.
  void Hasher(Sha256& sha) {
    for (uint64_t b = 0; b < nbatches; ++b) {
      Slot* s = WaitSealed(b);
      if (s == nullptr) return;  // aborted
      sha.Update(std::span<const std::byte>(s->buf.get(), s->len));
      Consumed(s, b, /*by_writer=*/false);
    }
  }
};

Result<ShardSummary> EncryptShardImpl(const PlaintextSource& src, const ShardHeader& header,
                                      const SecretKey& data_key, io::WritableFile& out,
                                      const EncryptOptions& opts) {
  if (header.plaintext_size != src.size()) {
    return MakeError(Code::kInvalidArgument, "header says {} plaintext bytes but the source has {}",
                     header.plaintext_size, src.size());
  }
  const auto header_bytes = header.Encode();
  if (auto h = ShardHeader::Decode(header_bytes); !h) {
    return MakeError(Code::kInvalidArgument, "invalid shard header: {}", h.error().message());
  }
  Sha256 sha;
  CAIRN_RETURN_IF_ERROR(out.Append(std::as_bytes(std::span(header_bytes))));
  sha.Update(header_bytes);

  EncryptPipeline p{.src = src,
                    .header = header,
                    .header_bytes = header_bytes,
                    .nchunks = NumChunks(header.plaintext_size, header.chunk_size),
                    .batch_chunks = std::max<uint64_t>(1, opts.batch_chunks),
                    .nbatches = 0};
  p.nbatches = (p.nchunks + p.batch_chunks - 1) / p.batch_chunks;
  const uint64_t nworkers =
      std::min<uint64_t>(p.nbatches, static_cast<uint64_t>(std::clamp(opts.threads, 1, 64)));
  p.slots.resize(2 * nworkers);

  // Threads: `nworkers` seal batches into a ring of 2 * nworkers slots; this thread
  // appends them in order while one hashing thread hashes them in order; a slot is
  // reused once its batch is both written and hashed. The digest is the same as hashing
  // the file front to back (header first, then every batch in order).
  std::vector<std::thread> threads;
  struct Joiner {
    EncryptPipeline& p;
    std::vector<std::thread>& threads;
    void JoinAll() {
      for (auto& t : threads) {
        if (t.joinable()) t.join();
      }
    }
    ~Joiner() {
      p.Abort();
      JoinAll();
    }
  } joiner{p, threads};
  threads.emplace_back([&p, &sha] { p.Hasher(sha); });
  for (uint64_t i = 0; i < nworkers; ++i) {
    threads.emplace_back([&p, &data_key] { p.Worker(data_key); });
  }

  uint64_t file_size = ShardHeader::kSize;
  for (uint64_t b = 0; b < p.nbatches; ++b) {
    EncryptPipeline::Slot* s = p.WaitSealed(b);
    if (s == nullptr) {
      std::lock_guard lock(p.mu);
      if (p.worker_error) return std::unexpected(*p.worker_error);
      return MakeError(Code::kInternal, "encryption pipeline stopped unexpectedly");
    }
    const std::span<const std::byte> data(s->buf.get(), s->len);
    if (Status st = out.Append(data); !st) {
      p.Abort();
      return std::unexpected(std::move(st).error());
    }
    file_size += data.size();
    p.Consumed(s, b, /*by_writer=*/true);
  }
  // Every batch is written; the hasher and the workers finish on their own.
  joiner.JoinAll();
  {
    std::lock_guard lock(p.mu);
    if (p.hashed != p.nbatches) {
      return MakeError(Code::kInternal, "shard hashing stopped after {} of {} batches", p.hashed,
                       p.nbatches);
    }
  }
  return ShardSummary{.file_size = file_size, .sha256 = sha.Finish()};
}

}  // namespace

// --- Header ----------------------------------------------------------------------------

std::array<uint8_t, ShardHeader::kSize> ShardHeader::Encode() const {
  std::array<uint8_t, kSize> b{};
  std::copy(kMagic.begin(), kMagic.end(), b.begin());
  PutLE<uint32_t>(&b[8], version);
  PutLE<uint32_t>(&b[12], chunk_size);
  PutLE<uint64_t>(&b[16], plaintext_size);
  PutLE<uint64_t>(&b[24], step);
  PutLE<uint32_t>(&b[32], rank);
  PutLE<uint32_t>(&b[36], world_size);
  std::copy(run_tag.begin(), run_tag.end(), b.begin() + 40);
  return b;
}

Result<ShardHeader> ShardHeader::Decode(std::span<const uint8_t> b) {
  if (b.size() != kSize) {
    return MakeError(Code::kDataLoss, "shard header is {} bytes, expected {}", b.size(), kSize);
  }
  if (!std::equal(kMagic.begin(), kMagic.end(), b.begin())) {
    return MakeError(Code::kDataLoss, "not a cairn shard file (bad magic)");
  }
  ShardHeader h;
  h.version = GetLE<uint32_t>(&b[8]);
  h.chunk_size = GetLE<uint32_t>(&b[12]);
  h.plaintext_size = GetLE<uint64_t>(&b[16]);
  h.step = GetLE<uint64_t>(&b[24]);
  h.rank = GetLE<uint32_t>(&b[32]);
  h.world_size = GetLE<uint32_t>(&b[36]);
  std::copy(b.begin() + 40, b.begin() + 56, h.run_tag.begin());
  if (h.version != kVersion) {
    return MakeError(Code::kDataLoss, "shard header version is {}, this build reads version {}",
                     h.version, kVersion);
  }
  if (h.chunk_size < kMinChunkSize || h.chunk_size > kMaxChunkSize) {
    return MakeError(Code::kDataLoss, "shard header chunk_size {} is outside [{}, {}]",
                     h.chunk_size, kMinChunkSize, kMaxChunkSize);
  }
  if (h.world_size == 0 || h.rank >= h.world_size) {
    return MakeError(Code::kDataLoss, "shard header rank {} is not below world_size {}", h.rank,
                     h.world_size);
  }
  // Keeps CiphertextSize() free of overflow (64 + p + 16 * ceil(p / 4096) < 2^64).
  if (h.plaintext_size > (uint64_t{1} << 62)) {
    return MakeError(Code::kDataLoss, "shard header plaintext_size {} is implausibly large",
                     h.plaintext_size);
  }
  if (std::any_of(b.begin() + 56, b.end(), [](uint8_t x) { return x != 0; })) {
    return MakeError(Code::kDataLoss, "shard header reserved bytes are not zero");
  }
  return h;
}

std::array<uint8_t, 16> RunTag(std::string_view run_id) {
  Sha256 h;
  h.Update(std::string_view("cairn.run.v1"));
  h.Update(run_id);
  const Digest d = h.Finish();
  std::array<uint8_t, 16> tag;
  std::copy_n(d.begin(), tag.size(), tag.begin());
  return tag;
}

uint64_t NumChunks(uint64_t plaintext_size, uint32_t chunk_size) {
  if (plaintext_size == 0) return 1;
  return (plaintext_size + chunk_size - 1) / chunk_size;
}

uint64_t CiphertextSize(uint64_t plaintext_size, uint32_t chunk_size) {
  return ShardHeader::kSize + plaintext_size + kTag * NumChunks(plaintext_size, chunk_size);
}

// --- Encryption ------------------------------------------------------------------------

Result<ShardSummary> EncryptShard(const PlaintextSource& src, const ShardHeader& header,
                                  const SecretKey& data_key, io::WritableFile& out,
                                  const EncryptOptions& opts) {
  return WithContext(EncryptShardImpl(src, header, data_key, out, opts),
                     fmt::format("encrypt shard rank {} step {}", header.rank, header.step));
}

// --- Decryption ------------------------------------------------------------------------

class ShardDecryptor::CipherLease {
 public:
  explicit CipherLease(const ShardDecryptor& d) : d_(d) {}
  ~CipherLease() {
    if (gcm_) d_.ReleaseCipher(std::move(gcm_));
  }
  CipherLease(const CipherLease&) = delete;
  CipherLease& operator=(const CipherLease&) = delete;

  Result<AesGcm*> Get() {
    if (!gcm_) {
      CAIRN_ASSIGN_OR_RETURN(gcm_, d_.AcquireCipher());
    }
    return gcm_.get();
  }

 private:
  const ShardDecryptor& d_;
  std::unique_ptr<AesGcm> gcm_;
};

ShardDecryptor::ShardDecryptor(std::shared_ptr<io::ReadableFile> file, const SecretKey& data_key,
                               const ShardHeader& header)
    : file_(std::move(file)),
      key_(data_key),
      header_(header),
      header_bytes_(header.Encode()),
      nchunks_(NumChunks(header.plaintext_size, header.chunk_size)) {}

ShardDecryptor::~ShardDecryptor() = default;

Result<std::unique_ptr<ShardDecryptor>> ShardDecryptor::Open(std::shared_ptr<io::ReadableFile> file,
                                                             const SecretKey& data_key,
                                                             const ShardExpectation& expect) {
  if (!file) return MakeError(Code::kInvalidArgument, "ShardDecryptor::Open: no file");
  const std::string& path = file->path();
  const uint64_t fsize = file->size();
  if (fsize != expect.file_size) {
    return MakeError(Code::kDataLoss,
                     "shard file {}: file is {} bytes, expected {} (truncated or trailing bytes)",
                     path, fsize, expect.file_size);
  }
  if (fsize < ShardHeader::kSize) {
    return MakeError(Code::kDataLoss, "shard file {}: file is {} bytes, shorter than the header",
                     path, fsize);
  }
  std::array<uint8_t, ShardHeader::kSize> hb;
  CAIRN_RETURN_IF_ERROR(ReadExactly(*file, 0, std::as_writable_bytes(std::span(hb)), "header"));
  auto decoded = ShardHeader::Decode(hb);
  if (!decoded) return std::unexpected(std::move(decoded).error().With("shard file " + path));
  const ShardHeader& h = *decoded;
  if (h.step != expect.step) {
    return MakeError(Code::kDataLoss, "shard file {}: header says step {}, manifest says step {}",
                     path, h.step, expect.step);
  }
  if (h.rank != expect.rank) {
    return MakeError(Code::kDataLoss, "shard file {}: header says rank {}, manifest says rank {}",
                     path, h.rank, expect.rank);
  }
  if (h.world_size != expect.world_size) {
    return MakeError(Code::kDataLoss,
                     "shard file {}: header says world_size {}, manifest says world_size {}", path,
                     h.world_size, expect.world_size);
  }
  if (h.run_tag != expect.run_tag) {
    return MakeError(Code::kDataLoss,
                     "shard file {}: header says run tag {}, manifest says run tag {} (a shard "
                     "of another run)",
                     path, ToHex(h.run_tag), ToHex(expect.run_tag));
  }
  const uint64_t want = CiphertextSize(h.plaintext_size, h.chunk_size);
  if (want != fsize) {
    return MakeError(Code::kDataLoss,
                     "shard file {}: file is {} bytes, but the header ({} plaintext bytes in "
                     "{}-byte chunks) implies {} (truncated or trailing bytes)",
                     path, fsize, h.plaintext_size, h.chunk_size, want);
  }
  std::unique_ptr<ShardDecryptor> d(new ShardDecryptor(std::move(file), data_key, h));
  // Authenticating the final chunk proves the header (AAD) and the length (final flag).
  CAIRN_RETURN_IF_ERROR(d->ReadPartial(d->nchunks_ - 1, 0, {}));
  return d;
}

uint64_t ShardDecryptor::ChunkLen(uint64_t i) const {
  const uint64_t off = i * header_.chunk_size;
  return std::min<uint64_t>(header_.chunk_size, header_.plaintext_size - off);
}

uint64_t ShardDecryptor::ChunkFileOffset(uint64_t i) const {
  return ShardHeader::kSize + i * (uint64_t{header_.chunk_size} + kTag);
}

Status ShardDecryptor::AuthError(uint64_t i) const {
  return MakeError(Code::kDataLoss,
                   "shard {}: chunk {} of {} fails authentication (tampered, truncated or wrong "
                   "key)",
                   file_->path(), i, nchunks_);
}

Result<std::unique_ptr<AesGcm>> ShardDecryptor::AcquireCipher() const {
  {
    std::lock_guard lock(pool_mu_);
    if (!pool_.empty()) {
      auto c = std::move(pool_.back());
      pool_.pop_back();
      return c;
    }
  }
  CAIRN_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(key_));
  return std::make_unique<AesGcm>(std::move(gcm));
}

void ShardDecryptor::ReleaseCipher(std::unique_ptr<AesGcm> c) const {
  std::lock_guard lock(pool_mu_);
  if (pool_.size() < kMaxPooledCiphers) pool_.push_back(std::move(c));
}

Status ShardDecryptor::DecryptChunks(uint64_t first, uint64_t last, std::byte* dest) const {
  CipherLease lease(*this);
  CAIRN_ASSIGN_OR_RETURN(AesGcm * gcm, lease.Get());
  for (uint64_t i = first; i < last; ++i) {
    const std::size_t len = static_cast<std::size_t>(ChunkLen(i));
    const uint64_t off = ChunkFileOffset(i);
    // Ciphertext straight into the destination, then decrypted in place.
    std::array<uint8_t, kTag> tag;
    CAIRN_RETURN_IF_ERROR(
        ReadExactly(*file_, off, {dest, len}, fmt::format("chunk {} of {}", i, nchunks_)));
    CAIRN_RETURN_IF_ERROR(ReadExactly(*file_, off + len, std::as_writable_bytes(std::span(tag)),
                                      fmt::format("tag of chunk {} of {}", i, nchunks_)));
    const auto nonce = ChunkNonce(i, i + 1 == nchunks_);
    if (!gcm->Open(nonce, header_bytes_, {dest, len}, dest, tag)) return AuthError(i);
    dest += len;
  }
  return OkStatus();
}

Status ShardDecryptor::ReadPartial(uint64_t i, uint64_t skip, std::span<std::byte> out) const {
  std::unique_ptr<std::byte[]> buf;
  {
    std::lock_guard lock(cache_mu_);
    if (cache_.index == i) {
      if (!out.empty()) std::memcpy(out.data(), cache_.data.get() + skip, out.size());
      return OkStatus();
    }
    buf = std::move(cache_.spare);
  }
  // Decrypt outside the lock so that concurrent readers of other chunks do not queue.
  if (!buf) buf = Uninitialized(header_.chunk_size);
  CAIRN_RETURN_IF_ERROR(DecryptChunks(i, i + 1, buf.get()));
  if (!out.empty()) std::memcpy(out.data(), buf.get() + skip, out.size());
  std::lock_guard lock(cache_mu_);
  cache_.spare = std::move(cache_.data);
  cache_.data = std::move(buf);
  cache_.index = i;
  return OkStatus();
}

Status ShardDecryptor::ReadAt(uint64_t offset, std::span<std::byte> out) const {
  const uint64_t size = header_.plaintext_size;
  if (offset > size || out.size() > size - offset) {
    return MakeError(Code::kInvalidArgument,
                     "shard {}: read of {} bytes at offset {} is past the end ({} bytes)",
                     file_->path(), out.size(), offset, size);
  }
  if (out.empty()) return OkStatus();
  const uint64_t cs = header_.chunk_size;
  const uint64_t end = offset + out.size();
  uint64_t first_full = (offset + cs - 1) / cs;        // first chunk starting inside the range
  uint64_t last_full = end / cs;                       // chunks [first_full, last_full) are whole
  if (end == size) last_full = nchunks_;               // the short final chunk ends at `end`
  if (first_full > last_full) last_full = first_full;  // the range lies inside one chunk

  // Head: the part of a chunk before the first whole one.
  const uint64_t head_end = std::min(end, first_full * cs);
  if (offset < head_end) {
    CAIRN_RETURN_IF_ERROR(ReadPartial(offset / cs, offset % cs,
                                      out.first(static_cast<std::size_t>(head_end - offset))));
  }
  // Tail: the part of a chunk after the last whole one.
  const uint64_t tail_begin = std::max(head_end, last_full * cs);
  if (tail_begin < end) {
    CAIRN_RETURN_IF_ERROR(ReadPartial(tail_begin / cs, tail_begin % cs,
                                      out.subspan(static_cast<std::size_t>(tail_begin - offset))));
  }
  if (first_full >= last_full) return OkStatus();

  std::byte* dest = out.data() + (first_full * cs - offset);
  const uint64_t nfull = last_full - first_full;
  if (nfull < 2 || nfull * cs < kParallelReadBytes) {
    return DecryptChunks(first_full, last_full, dest);
  }
  const uint64_t mid = first_full + nfull / 2;
  Status second;
  std::thread helper(
      [&] { second = DecryptChunks(mid, last_full, dest + (mid - first_full) * cs); });
  Status first = DecryptChunks(first_full, mid, dest);
  helper.join();
  if (!first) return first;  // the lower chunk index is reported first
  return second;
}

Status ShardDecryptor::VerifyAll(const Digest* expected_sha256) const {
  const std::string& path = file_->path();
  const uint64_t stride = uint64_t{header_.chunk_size} + kTag;
  const uint64_t per_batch = (kStreamBytes + stride - 1) / stride;
  const std::size_t buf_size = static_cast<std::size_t>(per_batch * stride);
  CipherLease lease(*this);
  CAIRN_ASSIGN_OR_RETURN(AesGcm * gcm, lease.Get());

  Sha256 sha;
  std::array<uint8_t, ShardHeader::kSize> hb;
  CAIRN_RETURN_IF_ERROR(ReadExactly(*file_, 0, std::as_writable_bytes(std::span(hb)), "header"));
  sha.Update(hb);
  if (hb != header_bytes_) {
    return MakeError(Code::kDataLoss, "shard {}: header changed since the file was opened", path);
  }

  // Double buffering: the calling thread reads and hashes batch k while a helper
  // authenticates batch k - 1 (in place: its bytes are hashed already).
  std::array<std::unique_ptr<std::byte[]>, 2> bufs = {Uninitialized(buf_size),
                                                      Uninitialized(buf_size)};
  auto authenticate = [&](uint64_t first, uint64_t last, std::byte* p) -> Status {
    for (uint64_t i = first; i < last; ++i) {
      const std::size_t len = static_cast<std::size_t>(ChunkLen(i));
      std::span<const uint8_t, kTag> tag(reinterpret_cast<const uint8_t*>(p + len), kTag);
      if (!gcm->Open(ChunkNonce(i, i + 1 == nchunks_), header_bytes_, {p, len}, p, tag)) {
        return AuthError(i);
      }
      p += len + kTag;
    }
    return OkStatus();
  };
  std::future<Status> pending;  // declared after bufs: destroyed (joined) before them
  uint64_t k = 0;
  for (uint64_t first = 0; first < nchunks_; first += per_batch, ++k) {
    const uint64_t last = std::min(nchunks_, first + per_batch);
    const uint64_t begin = ChunkFileOffset(first);
    const uint64_t bytes = (last == nchunks_ ? file_->size() : ChunkFileOffset(last)) - begin;
    std::byte* buf = bufs[k % 2].get();
    CAIRN_RETURN_IF_ERROR(
        ReadExactly(*file_, begin, {buf, static_cast<std::size_t>(bytes)},
                    fmt::format("chunks {}..{} of {}", first, last - 1, nchunks_)));
    sha.Update(std::span<const std::byte>(buf, static_cast<std::size_t>(bytes)));
    if (pending.valid()) CAIRN_RETURN_IF_ERROR(pending.get());
    pending = std::async(std::launch::async, authenticate, first, last, buf);
  }
  if (pending.valid()) CAIRN_RETURN_IF_ERROR(pending.get());

  if (expected_sha256 != nullptr) {
    const Digest got = sha.Finish();
    if (got != *expected_sha256) {
      return MakeError(Code::kDataLoss, "shard {}: SHA-256 is {}, manifest says {}", path,
                       ToHex(got), ToHex(*expected_sha256));
    }
  }
  return OkStatus();
}

// --- Keyless check ---------------------------------------------------------------------

Result<ShardSummary> HashShardFile(const io::ReadableFile& file) {
  const std::string& path = file.path();
  const uint64_t fsize = file.size();
  if (fsize < ShardHeader::kSize) {
    return MakeError(Code::kDataLoss, "shard file {}: file is {} bytes, shorter than the header",
                     path, fsize);
  }
  std::array<uint8_t, ShardHeader::kSize> hb;
  CAIRN_RETURN_IF_ERROR(ReadExactly(file, 0, std::as_writable_bytes(std::span(hb)), "header"));
  auto h = ShardHeader::Decode(hb);
  if (!h) return std::unexpected(std::move(h).error().With("shard file " + path));
  const uint64_t want = CiphertextSize(h->plaintext_size, h->chunk_size);
  if (want != fsize) {
    return MakeError(Code::kDataLoss,
                     "shard file {}: file is {} bytes, but the header ({} plaintext bytes in "
                     "{}-byte chunks) implies {} (truncated or trailing bytes)",
                     path, fsize, h->plaintext_size, h->chunk_size, want);
  }
  Sha256 sha;
  sha.Update(hb);
  auto buf = Uninitialized(kStreamBytes);
  for (uint64_t off = ShardHeader::kSize; off < fsize;) {
    const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(kStreamBytes, fsize - off));
    CAIRN_RETURN_IF_ERROR(ReadExactly(file, off, {buf.get(), n}, "shard body"));
    sha.Update(std::span<const std::byte>(buf.get(), n));
    off += n;
  }
  return ShardSummary{.file_size = fsize, .sha256 = sha.Finish()};
}

// --- SpanListSource --------------------------------------------------------------------

SpanListSource::SpanListSource(std::vector<std::span<const std::byte>> spans)
    : spans_(std::move(spans)) {
  starts_.reserve(spans_.size());
  for (const auto& s : spans_) {
    starts_.push_back(size_);
    size_ += s.size();
  }
}

void SpanListSource::Segments(uint64_t offset, uint64_t len,
                              std::vector<std::span<const std::byte>>* out) const {
  if (len == 0) return;
  // The last span starting at or before offset.
  auto it = std::upper_bound(starts_.begin(), starts_.end(), offset);
  std::size_t i = static_cast<std::size_t>(it - starts_.begin()) - 1;
  uint64_t skip = offset - starts_[i];
  while (len > 0 && i < spans_.size()) {
    const uint64_t n = std::min<uint64_t>(len, spans_[i].size() - skip);
    if (n > 0) out->push_back(SubSegment(spans_[i], skip, n));
    len -= n;
    skip = 0;
    ++i;
  }
}

}  // namespace cairn::ckpt
