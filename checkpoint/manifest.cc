#include "checkpoint/manifest.h"

#include <cstring>

#include "checkpoint/crypto.h"

namespace cairn::ckpt {
namespace {

constexpr std::string_view kMagic = "CAIRNMF1";
constexpr std::string_view kDigestDomain = "cairn.manifest.v1";
constexpr std::string_view kWrapDomain = "cairn.wrap.v1";
constexpr uint32_t kMaxWorldSize = 65536;

class ByteWriter {
 public:
  void U16(uint16_t v) { Int(v); }
  void U32(uint32_t v) { Int(v); }
  void U64(uint64_t v) { Int(v); }
  void I64(int64_t v) { Int(static_cast<uint64_t>(v)); }
  void Raw(std::span<const uint8_t> b) { out_.append(reinterpret_cast<const char*>(b.data()), b.size()); }
  void Raw(std::string_view s) { out_.append(s); }
  void Str(std::string_view s) {
    U16(static_cast<uint16_t>(s.size()));
    Raw(s);
  }
  std::string& out() { return out_; }

 private:
  template <typename T>
  void Int(T v) {
    for (std::size_t i = 0; i < sizeof(T); ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  std::string out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::string_view b) : b_(b) {}
  Status Need(std::size_t n, std::string_view what) {
    if (b_.size() - pos_ < n) {
      return MakeError(Code::kDataLoss, "manifest ends inside {} (at byte {}, {} bytes left)",
                       what, pos_, b_.size() - pos_);
    }
    return OkStatus();
  }
  template <typename T>
  Result<T> Int(std::string_view what) {
    CAIRN_RETURN_IF_ERROR(Need(sizeof(T), what));
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
      v |= static_cast<T>(static_cast<uint8_t>(b_[pos_ + i])) << (8 * i);
    }
    pos_ += sizeof(T);
    return v;
  }
  Result<std::string_view> Bytes(std::size_t n, std::string_view what) {
    CAIRN_RETURN_IF_ERROR(Need(n, what));
    auto s = b_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  Result<std::string> Str(std::string_view what, std::size_t min_len, std::size_t max_len) {
    CAIRN_ASSIGN_OR_RETURN(uint16_t n, Int<uint16_t>(what));
    if (n < min_len || n > max_len) {
      return MakeError(Code::kDataLoss, "manifest {} has length {} (allowed {}..{})", what, n,
                       min_len, max_len);
    }
    CAIRN_ASSIGN_OR_RETURN(auto s, Bytes(n, what));
    return std::string(s);
  }
  Result<Digest> Dig(std::string_view what) {
    CAIRN_ASSIGN_OR_RETURN(auto s, Bytes(32, what));
    Digest d;
    std::memcpy(d.data(), s.data(), 32);
    return d;
  }
  std::size_t pos() const { return pos_; }
  std::size_t left() const { return b_.size() - pos_; }

 private:
  std::string_view b_;
  std::size_t pos_ = 0;
};

std::string EncodeCore(const Manifest& m) {
  ByteWriter w;
  w.Str(m.run_id);
  w.U64(m.step);
  w.U32(m.world_size);
  w.U32(m.chunk_size);
  w.I64(m.created_unix_ms);
  w.Raw(m.provenance_digest);
  w.Raw(m.previous_digest);
  for (const auto& s : m.shards) {
    w.U64(s.file_size);
    w.U64(s.plaintext_size);
    w.Raw(s.sha256);
  }
  return std::move(w.out());
}

std::string CorePrefix(std::string_view core) {
  ByteWriter w;
  w.Raw(kMagic);
  w.U32(kManifestVersion);
  w.U32(static_cast<uint32_t>(core.size()));
  w.Raw(core);
  return std::move(w.out());
}

}  // namespace

bool Manifest::IsFirst() const {
  for (uint8_t b : previous_digest) {
    if (b != 0) return false;
  }
  return true;
}

std::string Manifest::Encode() const {
  std::string out = CorePrefix(EncodeCore(*this));
  ByteWriter keys;
  keys.Str(key_id);
  for (const auto& k : wrapped_keys) {
    keys.U16(static_cast<uint16_t>(k.size()));
    keys.Raw(k);
  }
  ByteWriter tail;
  tail.U32(static_cast<uint32_t>(keys.out().size()));
  out += tail.out();
  out += keys.out();
  return out;
}

Digest Manifest::ComputeDigest() const {
  Sha256 h;
  h.Update(std::as_bytes(std::span(kDigestDomain.data(), kDigestDomain.size())));
  const std::string prefix = CorePrefix(EncodeCore(*this));
  h.Update(std::as_bytes(std::span(prefix.data(), prefix.size())));
  return h.Finish();
}

Result<Manifest> Manifest::Decode(std::string_view bytes) {
  ByteReader r(bytes);
  CAIRN_ASSIGN_OR_RETURN(auto magic, r.Bytes(kMagic.size(), "magic"));
  if (magic != kMagic) return MakeError(Code::kDataLoss, "not a cairn manifest (bad magic)");
  CAIRN_ASSIGN_OR_RETURN(uint32_t version, r.Int<uint32_t>("format version"));
  if (version != kManifestVersion) {
    return MakeError(Code::kDataLoss, "manifest format version {} is not supported (expected {})",
                     version, kManifestVersion);
  }
  CAIRN_ASSIGN_OR_RETURN(uint32_t core_len, r.Int<uint32_t>("core length"));
  CAIRN_RETURN_IF_ERROR(r.Need(core_len, "core"));
  const std::size_t core_end = r.pos() + core_len;

  Manifest m;
  CAIRN_ASSIGN_OR_RETURN(m.run_id, r.Str("run id", 1, 256));
  CAIRN_ASSIGN_OR_RETURN(m.step, r.Int<uint64_t>("step"));
  CAIRN_ASSIGN_OR_RETURN(m.world_size, r.Int<uint32_t>("world size"));
  if (m.world_size == 0 || m.world_size > kMaxWorldSize) {
    return MakeError(Code::kDataLoss, "manifest world size {} is out of range 1..{}", m.world_size,
                     kMaxWorldSize);
  }
  CAIRN_ASSIGN_OR_RETURN(m.chunk_size, r.Int<uint32_t>("chunk size"));
  if (m.chunk_size < 4096 || m.chunk_size > (64u << 20)) {
    return MakeError(Code::kDataLoss, "manifest chunk size {} is out of range", m.chunk_size);
  }
  CAIRN_ASSIGN_OR_RETURN(m.created_unix_ms, r.Int<int64_t>("creation time"));
  CAIRN_ASSIGN_OR_RETURN(m.provenance_digest, r.Dig("provenance digest"));
  CAIRN_ASSIGN_OR_RETURN(m.previous_digest, r.Dig("previous digest"));
  if (core_end - r.pos() != static_cast<uint64_t>(m.world_size) * 48) {
    return MakeError(Code::kDataLoss,
                     "manifest core holds {} bytes of shard entries, expected {} for world size {}",
                     core_end - r.pos(), static_cast<uint64_t>(m.world_size) * 48, m.world_size);
  }
  m.shards.resize(m.world_size);
  for (auto& s : m.shards) {
    CAIRN_ASSIGN_OR_RETURN(s.file_size, r.Int<uint64_t>("shard file size"));
    CAIRN_ASSIGN_OR_RETURN(s.plaintext_size, r.Int<uint64_t>("shard plaintext size"));
    CAIRN_ASSIGN_OR_RETURN(s.sha256, r.Dig("shard digest"));
  }

  CAIRN_ASSIGN_OR_RETURN(uint32_t keys_len, r.Int<uint32_t>("key slots length"));
  if (keys_len != r.left()) {
    return MakeError(Code::kDataLoss, "manifest key slots are {} bytes but {} bytes follow",
                     keys_len, r.left());
  }
  CAIRN_ASSIGN_OR_RETURN(m.key_id, r.Str("key id", 1, 64));
  m.wrapped_keys.resize(m.world_size);
  for (uint32_t rank = 0; rank < m.world_size; ++rank) {
    CAIRN_ASSIGN_OR_RETURN(uint16_t n, r.Int<uint16_t>("wrapped key length"));
    if (n != kWrappedKeySize) {
      return MakeError(Code::kDataLoss, "wrapped key of rank {} is {} bytes, expected {}", rank, n,
                       kWrappedKeySize);
    }
    CAIRN_ASSIGN_OR_RETURN(auto k, r.Bytes(n, "wrapped key"));
    m.wrapped_keys[rank].assign(k.begin(), k.end());
  }
  if (r.left() != 0) {
    return MakeError(Code::kDataLoss, "manifest has {} trailing bytes", r.left());
  }
  return m;
}

std::vector<uint8_t> WrapAad(std::string_view run_id, uint64_t step, uint32_t rank,
                             uint32_t world_size, const Digest& shard_sha256) {
  ByteWriter w;
  w.Raw(kWrapDomain);
  w.Str(run_id);
  w.U64(step);
  w.U32(rank);
  w.U32(world_size);
  w.Raw(shard_sha256);
  const std::string& s = w.out();
  return std::vector<uint8_t>(s.begin(), s.end());
}

}  // namespace cairn::ckpt
