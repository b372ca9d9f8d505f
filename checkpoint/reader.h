// CheckpointReader: opens the latest valid checkpoint of a run (or a given step) and
// reads tensors from it, decrypting only the chunks a read touches.
//
// Promise: nothing from a shard reaches libhdf5 before its chunk is authenticated.
// Open() first checks the chain (ScanChain): a broken link, a foreign manifest, or a
// missing head (rollback) is a kDataLoss error naming the step, not a silent fallback.
// Then it tries steps from newest to oldest and takes the first whose shards all pass
// (kFull: SHA-256 of every shard file and every chunk's tag; kOnOpen: sizes, headers,
// key slots and final chunks, with the remaining chunks authenticated as they are read).
// Steps it passes over are reported in skipped() and logged. A wrong key (key id
// mismatch) is a kFailedPrecondition error naming both key ids.
//
// Threading: Open and Shard() from one thread; a ShardView's reads are serialised
// internally (HDF5 is not thread-safe) and may come from any thread.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/h5_reader.h"
#include "checkpoint/keys.h"
#include "checkpoint/store.h"
#include "common/io.h"

namespace cairn::ckpt {

enum class VerifyMode { kFull, kOnOpen };

struct ReaderOptions {
  std::shared_ptr<const MasterKey> key;
  io::FileSystem* fs = nullptr;           // nullptr: the real file system
  std::optional<Digest> expected_head;    // held by the coordinator (rollback detection)
  std::optional<uint64_t> step;           // open exactly this step instead of the latest
  VerifyMode verify = VerifyMode::kFull;
};

class CheckpointReader {
 public:
  static Result<std::unique_ptr<CheckpointReader>> Open(const std::string& dir,
                                                        ReaderOptions options);

  uint64_t step() const { return record_.step; }
  const Manifest& manifest() const { return record_.manifest; }
  const Digest& digest() const { return record_.digest; }
  uint32_t world_size() const { return record_.manifest.world_size; }
  // Newer steps passed over, each with the reason.
  const std::vector<std::string>& skipped() const { return skipped_; }

  // The shard of one rank, opened on first use.
  Result<const H5ShardReader*> Shard(uint32_t rank);

 private:
  CheckpointReader(std::string dir, ReaderOptions options)
      : dir_(std::move(dir)), options_(std::move(options)) {}
  Result<std::shared_ptr<RandomAccessSource>> OpenSource(const StepRecord& rec, uint32_t rank,
                                                         bool full) const;
  Status CheckCandidate(const StepRecord& rec);

  std::string dir_;
  ReaderOptions options_;
  io::FileSystem* fs_ = nullptr;
  StepRecord record_;
  std::vector<std::string> skipped_;
  std::map<uint32_t, std::shared_ptr<RandomAccessSource>> sources_;
  std::map<uint32_t, std::unique_ptr<H5ShardReader>> shards_;
};

}  // namespace cairn::ckpt
