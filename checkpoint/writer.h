// CheckpointWriter: one rank's side of saving encrypted, chained checkpoints.
//
// Promise: Save(step, tensors, blobs) returns only when the step is durable: every rank
// has written its shard (temp name, fsync, rename, fsync dir), then rank 0 has written the
// manifest the same way, and then the HEAD file. At any instant a crash leaves the
// previous checkpoint as the latest valid one, or the new one complete. No plaintext
// tensor byte or name is ever written to disk: shards are HDF5 images encrypted in
// AES-256-GCM chunks as they stream out (a fresh data key per shard, wrapped by the master
// key). On failure (ENOSPC, a dead peer) every rank gets an error naming the cause, the
// step's temp and shard files are removed, and the previous checkpoint stays the head.
//
// SaveAsync copies the tensors into host buffers owned by the writer (reused across
// saves, so the copy is a memcpy into warm pages), returns, and writes in the background;
// at most max_inflight saves are held: SaveAsync blocks while that many are pending.
// Completion or the error is reported through the returned SaveHandle and Flush().
//
// Retention pruning is not part of a commit: once a commit has returned (the new step is
// durable), rank 0 queues a prune on the writer's background thread. Pruning only
// removes shard files of older steps, so a crash or an error during it never touches the
// new checkpoint; errors are logged and kept in prune_status(), and the next commit's
// prune (or `cairn ckpt gc`) retries. Flush(), Save() (before it starts) and the
// destructor wait for queued prunes, so a prune never runs concurrently with a commit.
//
// Commit sequence of step S (rank r; rank 0 also writes the manifest):
//   1. mkdir DIR/step-S, fsync DIR
//   2. encrypt shard -> step-S/.tmp-<rand>-rank-r.shard, fsync, close,
//      rename -> rank-r.shard, fsync step-S
//   3. AllGather(shard report | error)                      [all ranks]
//   4. rank 0: manifest -> step-S/.tmp-<rand>-MANIFEST, fsync, rename MANIFEST,
//      fsync step-S; HEAD -> atomic replace
//   5. AllGather(manifest digest | error)                   [all ranks]
//   then, after Save returns: rank 0 queues a retention prune (background thread)
//
// The shard file is written with early writeback (io::WritableFileOptions): the disk
// starts on each completed region while later chunks are still being encrypted, so the
// fsync in step 2 has little left to do.
//
// Threading: Save/SaveAsync/Flush from one thread at a time; async work runs on one
// background thread owned by the writer.
#pragma once

#include <condition_variable>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/agreement.h"
#include "checkpoint/keys.h"
#include "checkpoint/manifest.h"
#include "checkpoint/store.h"
#include "checkpoint/types.h"
#include "common/io.h"

namespace cairn::ckpt {

struct WriterOptions {
  std::string dir;     // the run's checkpoint directory (created if missing)
  std::string run_id;  // 1..256 bytes; must match existing manifests in dir
  std::shared_ptr<const MasterKey> key;
  Agreement* agreement = nullptr;  // nullptr: single process (world size 1)
  io::FileSystem* fs = nullptr;    // nullptr: the real file system
  uint32_t chunk_size = 1u << 20;
  int encrypt_threads = 2;
  int max_inflight = 2;
  Retention retention;             // applied by rank 0 after each commit (in the background)
  // Early writeback region of shard files (io::WritableFileOptions); 0: off.
  uint64_t early_writeback_bytes = 8u << 20;
  Digest provenance_digest{};      // bound into every manifest written
  // The head digest the coordinator holds; Open fails if the directory was rolled back.
  std::optional<Digest> expected_head;
};

struct CommitInfo {
  uint64_t step = 0;
  Digest manifest_digest{};
  Digest previous_digest{};
  uint64_t bytes_written = 0;  // this rank's shard file
};

// What the background retention pruning has done since the writer was opened (rank 0).
struct PruneStatus {
  std::vector<uint64_t> pruned_steps;  // in the order pruned
  int runs = 0;                        // prunes finished (successfully or not)
  std::optional<Error> last_error;     // of the latest prune; cleared by one that succeeds
};

// Completion of one SaveAsync.
class SaveHandle {
 public:
  SaveHandle() = default;
  bool valid() const { return future_.valid(); }
  // Blocks until the save is durable (or failed).
  Result<CommitInfo> Wait() const { return future_.get(); }
  bool ready() const {
    return future_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  }

 private:
  friend class CheckpointWriter;
  explicit SaveHandle(std::shared_future<Result<CommitInfo>> f) : future_(std::move(f)) {}
  std::shared_future<Result<CommitInfo>> future_;
};

class CheckpointWriter {
 public:
  // Validates options, creates dir, removes leftovers of crashed commits (rank 0), and
  // finds the chain head to link the next manifest to.
  static Result<std::unique_ptr<CheckpointWriter>> Open(WriterOptions options);
  ~CheckpointWriter();  // waits for async saves in flight

  CheckpointWriter(const CheckpointWriter&) = delete;
  CheckpointWriter& operator=(const CheckpointWriter&) = delete;

  // Synchronous save of step (must be greater than every step saved before).
  Result<CommitInfo> Save(uint64_t step, std::span<const TensorRef> tensors,
                          std::span<const BlobRef> blobs = {});
  // Snapshot now, write in the background.
  Result<SaveHandle> SaveAsync(uint64_t step, std::span<const TensorRef> tensors,
                               std::span<const BlobRef> blobs = {});
  // Waits for every async save and every queued retention prune; returns the first
  // error among the saves, if any (prune errors are in prune_status()).
  Status Flush();

  PruneStatus prune_status() const;

  // Digest and step of the newest committed manifest (what the coordinator should hold).
  std::optional<HeadRecord> head() const;
  // The manifests this writer committed after `step`, oldest first (the last
  // kRecentCommits of them): what a caller that polls head() now and then has missed.
  std::vector<HeadRecord> CommittedAfter(uint64_t step) const;
  static constexpr std::size_t kRecentCommits = 64;
  uint32_t rank() const { return agreement_->rank(); }
  uint32_t world_size() const { return agreement_->size(); }

 private:
  struct Snapshot;
  struct Job;
  explicit CheckpointWriter(WriterOptions options);
  Status Init();
  Result<CommitInfo> Commit(uint64_t step, std::span<const TensorRef> tensors,
                            std::span<const BlobRef> blobs);
  Status CheckStep(uint64_t step);
  void SchedulePrune();
  void RunPrune();
  void StartBackgroundLocked();  // mu_ held
  void BackgroundLoop();

  WriterOptions options_;
  io::FileSystem* fs_;
  LocalAgreement local_agreement_;
  Agreement* agreement_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  // State below is protected by mu_.
  std::optional<HeadRecord> head_;
  std::deque<HeadRecord> recent_commits_;  // oldest first, at most kRecentCommits
  std::optional<uint64_t> last_step_;
  std::deque<std::unique_ptr<Job>> queue_;
  std::vector<std::unique_ptr<Snapshot>> free_snapshots_;
  int inflight_ = 0;
  bool stopping_ = false;
  std::vector<std::shared_future<Result<CommitInfo>>> pending_;
  bool prune_queued_ = false;   // a prune job is queued and not started yet
  int prunes_outstanding_ = 0;  // queued or running
  PruneStatus prune_status_;

  std::thread background_;  // started lazily by the first SaveAsync or prune
};

}  // namespace cairn::ckpt
