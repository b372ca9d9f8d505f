// Checkpoint manifests: the canonical record of one committed step, and its digest.
//
// Promise: Encode() is canonical (one byte string per Manifest value) and Decode()
// accepts exactly the strings Encode() produces: wrong magic or version, a length that
// runs past the end, trailing bytes, shard lists that do not match the world size, or
// ranks out of order are kDataLoss errors naming the field. The manifest digest covers
// the "core" (everything but the key slots), so rekeying rewrites the key slots without
// changing the digest or breaking the chain.
//
// On-disk layout (little-endian; docs/architecture.md has the same table):
//   "CAIRNMF1"                        8 bytes  magic
//   u32 format_version                         = 1
//   u32 core_len                               bytes of core body that follow
//   core body:
//     u16 len, run_id bytes (UTF-8, 1..256)
//     u64 step
//     u32 world_size                           1..65536
//     u32 chunk_size                           AEAD chunk size of every shard
//     i64 created_unix_ms
//     32  provenance_digest                    SHA-256 of the provenance record (or 0s)
//     32  previous_digest                      digest of the previous manifest (0s: first)
//     world_size x { u64 file_size, u64 plaintext_size, 32 sha256 of the shard file }
//   u32 keys_len
//   keys body:
//     u16 len, key_id bytes (hex, 1..64)
//     world_size x { u16 len (= 60), wrapped data key }
//
// digest(manifest) = SHA-256("cairn.manifest.v1" || bytes[0 .. 16 + core_len))
//   i.e. magic, version, core_len and the core body; never the key slots.
// Wrapped data key of rank r: AES-256-GCM under HKDF(master, "cairn.wrap.v1") with
//   AAD = WrapAad(run_id, step, rank, world_size, shard sha256) (see below).
//
// Threading: values; no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/keys.h"
#include "checkpoint/types.h"

namespace cairn::ckpt {

inline constexpr uint32_t kManifestVersion = 1;

struct ShardEntry {
  uint64_t file_size = 0;       // bytes of the encrypted shard file
  uint64_t plaintext_size = 0;  // bytes of the HDF5 image inside
  Digest sha256{};              // SHA-256 of the whole shard file
};

struct Manifest {
  std::string run_id;
  uint64_t step = 0;
  uint32_t world_size = 0;
  uint32_t chunk_size = 0;
  int64_t created_unix_ms = 0;
  Digest provenance_digest{};
  Digest previous_digest{};  // all zero for the first checkpoint of a run
  std::vector<ShardEntry> shards;  // index = rank
  // Key slots (not covered by the digest; replaced by rekey):
  std::string key_id;
  std::vector<std::vector<uint8_t>> wrapped_keys;  // index = rank

  std::string Encode() const;
  static Result<Manifest> Decode(std::string_view bytes);
  // SHA-256 over the core (see file comment).
  Digest ComputeDigest() const;
  bool IsFirst() const;  // previous_digest is all zero
};

// The AAD a rank's wrapped data key is bound to:
//   "cairn.wrap.v1" || u16 len || run_id || u64 step || u32 rank || u32 world_size ||
//   shard sha256 (32)
std::vector<uint8_t> WrapAad(std::string_view run_id, uint64_t step, uint32_t rank,
                             uint32_t world_size, const Digest& shard_sha256);

}  // namespace cairn::ckpt
