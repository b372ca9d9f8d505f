#include "runtime/rng.h"

#include <cstring>

namespace cairn::rt {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;
constexpr uint32_t kMagic = 0x31584850u;  // "PHX1" little-endian

void MulHiLo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

void PutU32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
uint32_t GetU32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

Philox4x32::Counter Philox4x32::Block(Counter c, Key k) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k[0] += kW0;
      k[1] += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    MulHiLo(kM0, c[0], &hi0, &lo0);
    MulHiLo(kM1, c[2], &hi1, &lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
  }
  return c;
}

Philox::Philox(uint64_t seed, uint64_t stream)
    : key_{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)},
      counter_{0, 0, static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32)} {}

void Philox::Refill() {
  buffer_ = Philox4x32::Block(counter_, key_);
  // 64-bit block index in the low two words; the stream id stays in the high two.
  if (++counter_[0] == 0) ++counter_[1];
  used_ = 0;
}

uint32_t Philox::NextU32() {
  if (used_ >= 4) Refill();
  return buffer_[used_++];
}

uint64_t Philox::NextU64() {
  uint64_t lo = NextU32();
  return lo | (static_cast<uint64_t>(NextU32()) << 32);
}

float Philox::NextUniform() { return static_cast<float>(NextU32() >> 8) * 0x1.0p-24f; }

uint64_t Philox::Below(uint64_t n) {
  // Values below 2^64 mod n are rejected, so each residue is equally likely.
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t v = NextU64();
    if (v >= threshold) return v % n;
  }
}

std::array<std::byte, Philox::kStateSize> Philox::Serialize() const {
  std::array<std::byte, kStateSize> out{};
  std::byte* p = out.data();
  PutU32(p, kMagic);
  PutU32(p + 4, key_[0]);
  PutU32(p + 8, key_[1]);
  for (int i = 0; i < 4; ++i) PutU32(p + 12 + 4 * i, counter_[static_cast<std::size_t>(i)]);
  PutU32(p + 28, used_);
  // The buffer is a function of (counter - 1, key); a checksum word guards the rest.
  uint32_t sum = kMagic;
  for (int i = 4; i < 32; i += 4) sum = sum * 0x01000193u ^ GetU32(p + i);
  PutU32(p + 32, sum);
  PutU32(p + 36, 0);
  return out;
}

Result<Philox> Philox::Deserialize(std::span<const std::byte> s) {
  if (s.size() != kStateSize) {
    return MakeError(Code::kInvalidArgument, "RNG state is {} bytes, expected {}", s.size(),
                     kStateSize);
  }
  const std::byte* p = s.data();
  if (GetU32(p) != kMagic) return MakeError(Code::kInvalidArgument, "RNG state: bad magic");
  uint32_t sum = kMagic;
  for (int i = 4; i < 32; i += 4) sum = sum * 0x01000193u ^ GetU32(p + i);
  if (GetU32(p + 32) != sum || GetU32(p + 36) != 0) {
    return MakeError(Code::kDataLoss, "RNG state: checksum mismatch");
  }
  Philox r;
  r.key_ = {GetU32(p + 4), GetU32(p + 8)};
  for (int i = 0; i < 4; ++i) r.counter_[static_cast<std::size_t>(i)] = GetU32(p + 12 + 4 * i);
  r.used_ = GetU32(p + 28);
  if (r.used_ > 4) return MakeError(Code::kInvalidArgument, "RNG state: bad buffer index");
  if (r.used_ < 4) {
    if (r.counter_[0] == 0 && r.counter_[1] == 0) {
      return MakeError(Code::kInvalidArgument, "RNG state: partial block before the first");
    }
    Philox4x32::Counter prev = r.counter_;
    if (prev[0]-- == 0) --prev[1];
    r.buffer_ = Philox4x32::Block(prev, r.key_);
  }
  return r;
}

std::vector<uint32_t> EpochPermutation(uint32_t n, uint64_t seed, uint64_t epoch) {
  std::vector<uint32_t> p(n);
  for (uint32_t i = 0; i < n; ++i) p[i] = i;
  Philox rng(seed, epoch);
  for (uint32_t i = n; i > 1; --i) {
    uint32_t j = static_cast<uint32_t>(rng.Below(i));
    std::swap(p[i - 1], p[j]);
  }
  return p;
}

}  // namespace cairn::rt
