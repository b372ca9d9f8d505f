// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11) whose whole state is
// a few words, so that it goes into a checkpoint and a resumed run draws exactly the
// numbers the uninterrupted run would have drawn.
//
// Promise: Philox4x32::Block is the published Philox4x32-10 bijection (checked against
// the Random123 known-answer vectors). Philox is a stream over it: key = the 64-bit seed,
// counter = (block index, stream id); Serialize() captures the position exactly, and
// Deserialize() rejects anything that is not a state this class wrote. EpochPermutation
// is a pure function of (n, seed, epoch): the data order never depends on the number of
// ranks, on timing, or on how often the job was restarted.
//
// Threading: values; a Philox object is used by one thread at a time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"

namespace cairn::rt {

struct Philox4x32 {
  using Counter = std::array<uint32_t, 4>;
  using Key = std::array<uint32_t, 2>;
  static Counter Block(Counter ctr, Key key);  // 10 rounds
};

class Philox {
 public:
  static constexpr std::size_t kStateSize = 40;

  explicit Philox(uint64_t seed, uint64_t stream = 0);

  uint32_t NextU32();
  uint64_t NextU64();
  // Uniform in [0, 1) with 24 random bits (every value exactly representable).
  float NextUniform();
  // Uniform in [0, n) without modulo bias; n > 0.
  uint64_t Below(uint64_t n);

  std::array<std::byte, kStateSize> Serialize() const;
  static Result<Philox> Deserialize(std::span<const std::byte> state);

  bool operator==(const Philox& o) const {
    return key_ == o.key_ && counter_ == o.counter_ && used_ == o.used_;
  }

 private:
  Philox() = default;
  void Refill();

  Philox4x32::Key key_{};
  Philox4x32::Counter counter_{};  // counter of the next block to generate
  Philox4x32::Counter buffer_{};
  uint32_t used_ = 4;  // words of buffer_ already handed out
};

// A permutation of 0..n-1 (Fisher-Yates driven by Philox keyed with seed, stream = epoch).
std::vector<uint32_t> EpochPermutation(uint32_t n, uint64_t seed, uint64_t epoch);

}  // namespace cairn::rt
