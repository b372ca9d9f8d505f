// The on-disk layout of a run's checkpoints, the hash chain over them, and the
// operations on a whole checkpoint directory (scan, verify, prune, rekey).
//
// Layout of a run directory:
//   DIR/HEAD                           "<hex digest> <step>\n" of the newest manifest
//   DIR/step-000000000100/MANIFEST     see manifest.h
//   DIR/step-000000000100/rank-00000.shard  encrypted HDF5 image, see aead_stream.h
//   DIR/step-.../.tmp-*                 in-flight temp files (removed on failure/open)
//
// The chain: each manifest names the digest of the previous one; the first names zero.
// ScanChain checks every link, that every manifest belongs to the same run and sits in
// the directory named after its step, and that the anchor (the digest the coordinator
// holds, else the HEAD file) is a manifest of the chain: a missing anchor means the
// directory was rolled back. Manifests newer than the anchor are accepted only if they
// chain from it (a crash between writing a manifest and updating HEAD).
//
// Step states:
//   complete    manifest + every shard file present
//   pruned      manifest, no shard files (removed by retention; the chain still verifies)
//   damaged     manifest, but some shard files missing or wrong size
//   incomplete  shard files but no manifest (a commit that never finished; ignored)
//
// Threading: free functions; safe to call concurrently on different directories. Only
// one writer may commit into a directory at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/keys.h"
#include "checkpoint/manifest.h"
#include "common/io.h"

namespace cairn::ckpt {

inline constexpr std::string_view kManifestFile = "MANIFEST";
inline constexpr std::string_view kHeadFile = "HEAD";

std::string StepDirName(uint64_t step);
std::optional<uint64_t> ParseStepDirName(std::string_view name);
std::string ShardFileName(uint32_t rank);

struct HeadRecord {
  Digest digest{};
  uint64_t step = 0;
};
// Absent file: nullopt. Malformed: kDataLoss.
Result<std::optional<HeadRecord>> ReadHead(io::FileSystem& fs, const std::string& dir);
Status WriteHead(io::FileSystem& fs, const std::string& dir, const HeadRecord& head);

enum class StepState { kComplete, kPruned, kDamaged };
std::string_view StepStateName(StepState s);

struct StepRecord {
  uint64_t step = 0;
  std::string path;  // the step directory
  Manifest manifest;
  Digest digest{};
  StepState state = StepState::kComplete;
  std::string problem;  // for kDamaged: what is wrong
};

struct ScanOptions {
  // The head digest held elsewhere (by cairnd); overrides the HEAD file as anchor.
  std::optional<Digest> expected_head;
};

struct ChainScan {
  std::string run_id;
  std::vector<StepRecord> steps;        // with a manifest, ascending by step
  std::vector<std::string> incomplete;  // step directories without a manifest
  std::optional<HeadRecord> head_file;
  std::optional<Digest> anchor;         // expected_head, else the HEAD file's digest
  // Chain-level problems (broken link, rollback, foreign run, misplaced manifest), in the
  // order found. Empty when the chain verifies.
  std::vector<std::string> problems;
  bool ok() const { return problems.empty(); }
};

// Reads every manifest and checks the chain (no shard contents are read). Errors only
// for I/O failures and a missing directory; tampering shows up in ChainScan::problems.
Result<ChainScan> ScanChain(io::FileSystem& fs, const std::string& dir,
                            const ScanOptions& options = {});

struct VerifyFailure {
  std::optional<uint64_t> step;
  std::optional<uint32_t> rank;
  std::string message;
};

struct VerifyReport {
  ChainScan scan;
  std::vector<VerifyFailure> failures;  // first = the first problem found
  uint64_t shards_checked = 0;
  uint64_t bytes_checked = 0;
  bool ok() const { return failures.empty(); }
};

struct VerifyOptions {
  ScanOptions scan;
  const MasterKey* key = nullptr;  // with a key: also unwrap keys, authenticate every chunk
  int threads = 2;
};

// Verifies the chain and every remaining shard: size, header, SHA-256 of the file, and
// with a key every chunk's authentication tag.
Result<VerifyReport> VerifyDirectory(io::FileSystem& fs, const std::string& dir,
                                     const VerifyOptions& options);

struct Retention {
  int keep_last = 3;   // newest N complete steps keep their shards (N >= 1)
  int keep_every = 0;  // and steps divisible by K (0: none)
};
// Removes the shard files of complete steps that the policy does not keep; manifests
// stay, so the chain still verifies and those steps show as pruned. Returns the steps
// pruned now.
Result<std::vector<uint64_t>> Prune(io::FileSystem& fs, const std::string& dir,
                                    const Retention& retention);

// Re-wraps every step's data keys from old_key to new_key, one manifest at a time with
// an atomic replace. Manifest digests (and so the chain) do not change. Steps already
// wrapped for new_key are left alone, so an interrupted rekey can simply be rerun.
// Returns the number of manifests rewritten.
Result<int> Rekey(io::FileSystem& fs, const std::string& dir, const MasterKey& old_key,
                  const MasterKey& new_key);

// Removes temp files and step directories without a manifest (left by crashed
// commits). Call only when no commit is in flight.
Status CleanupIncomplete(io::FileSystem& fs, const std::string& dir);

}  // namespace cairn::ckpt
