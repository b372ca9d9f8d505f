#include "checkpoint/writer.h"

#include <chrono>
#include <cstring>

#include "checkpoint/aead_stream.h"
#include "checkpoint/crypto.h"
#include "checkpoint/h5_image.h"
#include "common/log.h"

namespace cairn::ckpt {
namespace {

// Shard reports and commit results travel through Agreement::AllGather as small byte
// strings: 'E' + message on failure, 'K' + payload on success.
std::string EncodeError(const Error& e) { return "E" + e.ToString(); }

std::string EncodeShardReport(const ShardEntry& s, const std::vector<uint8_t>& wrapped) {
  std::string out = "K";
  out.append(reinterpret_cast<const char*>(&s.file_size), 8);
  out.append(reinterpret_cast<const char*>(&s.plaintext_size), 8);
  out.append(reinterpret_cast<const char*>(s.sha256.data()), 32);
  out.append(reinterpret_cast<const char*>(wrapped.data()), wrapped.size());
  return out;
}

Status DecodeShardReport(std::string_view in, uint32_t rank, ShardEntry* s,
                         std::vector<uint8_t>* wrapped) {
  if (!in.empty() && in[0] == 'E') {
    return MakeError(Code::kUnavailable, "rank {} failed to write its shard: {}", rank, in.substr(1));
  }
  if (in.size() != 1 + 8 + 8 + 32 + kWrappedKeySize || in[0] != 'K') {
    return MakeError(Code::kInternal, "rank {} sent a malformed shard report ({} bytes)", rank,
                     in.size());
  }
  std::memcpy(&s->file_size, in.data() + 1, 8);
  std::memcpy(&s->plaintext_size, in.data() + 9, 8);
  std::memcpy(s->sha256.data(), in.data() + 17, 32);
  wrapped->assign(in.begin() + 49, in.end());
  return OkStatus();
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// A writer-owned copy of one save's tensors and blobs (async mode). The buffer is reused
// by later saves so that copying into it touches warm pages.
struct CheckpointWriter::Snapshot {
  std::unique_ptr<std::byte[]> buffer;
  std::size_t capacity = 0;
  std::vector<TensorRef> tensors;
  std::vector<BlobRef> blobs;

  void Take(std::span<const TensorRef> ts, std::span<const BlobRef> bs) {
    auto aligned = [](std::size_t n) { return (n + 63) & ~std::size_t{63}; };
    std::size_t need = 0;
    for (const auto& t : ts) need += aligned(t.data.size());
    for (const auto& b : bs) need += aligned(b.data.size());
    if (need > capacity) {
      buffer.reset(new std::byte[need]);  // default-initialised: no zero fill
      capacity = need;
    }
    tensors.clear();
    blobs.clear();
    std::size_t off = 0;
    for (const auto& t : ts) {
      if (!t.data.empty()) std::memcpy(buffer.get() + off, t.data.data(), t.data.size());
      tensors.push_back({t.name, t.dtype, t.shape, {buffer.get() + off, t.data.size()}});
      off += aligned(t.data.size());
    }
    for (const auto& b : bs) {
      if (!b.data.empty()) std::memcpy(buffer.get() + off, b.data.data(), b.data.size());
      blobs.push_back({b.name, {buffer.get() + off, b.data.size()}});
      off += aligned(b.data.size());
    }
  }
};

struct CheckpointWriter::Job {
  enum class Kind { kSave, kPrune } kind = Kind::kSave;
  uint64_t step = 0;
  std::unique_ptr<Snapshot> snapshot;
  std::promise<Result<CommitInfo>> promise;
};

CheckpointWriter::CheckpointWriter(WriterOptions options)
    : options_(std::move(options)),
      fs_(options_.fs ? options_.fs : &io::DefaultFileSystem()),
      agreement_(options_.agreement ? options_.agreement : &local_agreement_) {}

CheckpointWriter::~CheckpointWriter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  if (background_.joinable()) background_.join();
}

Result<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Open(WriterOptions options) {
  if (options.run_id.empty() || options.run_id.size() > 256) {
    return MakeError(Code::kInvalidArgument, "run id must be 1..256 bytes");
  }
  if (!options.key) return MakeError(Code::kInvalidArgument, "no checkpoint master key given");
  if (options.dir.empty()) return MakeError(Code::kInvalidArgument, "no checkpoint directory given");
  if (options.chunk_size < 4096 || options.chunk_size > (64u << 20)) {
    return MakeError(Code::kInvalidArgument, "chunk size {} is outside 4KiB..64MiB",
                     options.chunk_size);
  }
  if (options.max_inflight < 1 || options.encrypt_threads < 1) {
    return MakeError(Code::kInvalidArgument, "max_inflight and encrypt_threads must be >= 1");
  }
  std::unique_ptr<CheckpointWriter> w(new CheckpointWriter(std::move(options)));
  CAIRN_RETURN_IF_ERROR_CTX(w->Init(), "open checkpoint writer for {}", w->options_.dir);
  return w;
}

Status CheckpointWriter::Init() {
  Status local = OkStatus();
  if (agreement_->rank() == 0) {
    local = [&]() -> Status {
      CAIRN_RETURN_IF_ERROR(io::CreateDirs(*fs_, options_.dir));
      CAIRN_RETURN_IF_ERROR(CleanupIncomplete(*fs_, options_.dir));
      CAIRN_ASSIGN_OR_RETURN(auto scan,
                             ScanChain(*fs_, options_.dir, {options_.expected_head}));
      if (!scan.ok()) {
        return MakeError(Code::kDataLoss, "refusing to extend a chain that does not verify: {}",
                         scan.problems.front());
      }
      if (!scan.steps.empty()) {
        if (scan.run_id != options_.run_id) {
          return MakeError(Code::kFailedPrecondition,
                           "directory holds checkpoints of run '{}', not '{}'", scan.run_id,
                           options_.run_id);
        }
        const auto& tip = scan.steps.back();
        head_ = HeadRecord{tip.digest, tip.step};
        last_step_ = tip.step;
      }
      return OkStatus();
    }();
  }
  // Nobody writes before rank 0 has cleaned up; everybody learns rank 0's verdict.
  CAIRN_ASSIGN_OR_RETURN(auto all, agreement_->AllGather(local ? "K" : EncodeError(local.error())));
  if (!local) return local;
  if (all[0] != "K") return MakeError(Code::kUnavailable, "rank 0: {}", all[0].substr(1));
  return OkStatus();
}

std::optional<HeadRecord> CheckpointWriter::head() const {
  std::lock_guard lock(mu_);
  return head_;
}

std::vector<HeadRecord> CheckpointWriter::CommittedAfter(uint64_t step) const {
  std::lock_guard lock(mu_);
  std::vector<HeadRecord> out;
  for (const HeadRecord& h : recent_commits_) {
    if (h.step > step) out.push_back(h);
  }
  return out;
}

Status CheckpointWriter::CheckStep(uint64_t step) {
  std::lock_guard lock(mu_);
  if (last_step_ && step <= *last_step_) {
    return MakeError(Code::kInvalidArgument,
                     "step {} is not after the last saved step {} (steps must increase)", step,
                     *last_step_);
  }
  last_step_ = step;
  return OkStatus();
}

Result<CommitInfo> CheckpointWriter::Commit(uint64_t step, std::span<const TensorRef> tensors,
                                            std::span<const BlobRef> blobs) {
  const uint32_t rank = agreement_->rank();
  const uint32_t world = agreement_->size();
  const std::string step_dir = io::JoinPath(options_.dir, StepDirName(step));
  const std::string final_path = io::JoinPath(step_dir, ShardFileName(rank));
  const std::string tmp_path =
      io::JoinPath(step_dir, fmt::format(".tmp-{}-{}", io::RandomSuffix(), ShardFileName(rank)));
  auto log = log::Logger("checkpoint");

  // 1-2. This rank's shard.
  ShardEntry entry;
  std::vector<uint8_t> wrapped;
  Status shard_status = [&]() -> Status {
    if (fs_->Stat(io::JoinPath(step_dir, kManifestFile))) {
      return MakeError(Code::kFailedPrecondition, "step {} is already committed in {}", step,
                       options_.dir);
    }
    const std::map<std::string, std::string> attrs = {
        {"run_id", options_.run_id},
        {"step", std::to_string(step)},
        {"rank", std::to_string(rank)},
        {"world_size", std::to_string(world)}};
    CAIRN_ASSIGN_OR_RETURN(auto image, BuildShardImage(tensors, blobs, attrs));
    CAIRN_ASSIGN_OR_RETURN(auto data_key, SecretKey::Random());
    ShardHeader header;
    header.chunk_size = options_.chunk_size;
    header.plaintext_size = image->size();
    header.step = step;
    header.rank = rank;
    header.world_size = world;
    header.run_tag = RunTag(options_.run_id);
    CAIRN_RETURN_IF_ERROR(fs_->CreateDir(step_dir, 0700));
    CAIRN_RETURN_IF_ERROR(fs_->SyncDir(options_.dir));
    CAIRN_ASSIGN_OR_RETURN(
        auto file,
        fs_->NewWritableFile(tmp_path, {.mode = 0600,
                                        .early_writeback_bytes = options_.early_writeback_bytes}));
    EncryptOptions eo;
    eo.threads = options_.encrypt_threads;
    CAIRN_ASSIGN_OR_RETURN(auto summary, EncryptShard(*image, header, data_key, *file, eo));
    CAIRN_RETURN_IF_ERROR(file->Sync());
    CAIRN_RETURN_IF_ERROR(file->Close());
    CAIRN_RETURN_IF_ERROR(fs_->Rename(tmp_path, final_path));
    CAIRN_RETURN_IF_ERROR(fs_->SyncDir(step_dir));
    entry.file_size = summary.file_size;
    entry.plaintext_size = image->size();
    entry.sha256 = summary.sha256;
    CAIRN_ASSIGN_OR_RETURN(
        wrapped, WrapKey(*options_.key, data_key,
                         WrapAad(options_.run_id, step, rank, world, entry.sha256)));
    return OkStatus();
  }();

  auto cleanup_own = [&] {
    (void)fs_->RemoveFile(tmp_path);
    if (!fs_->Stat(io::JoinPath(step_dir, kManifestFile))) {
      (void)fs_->RemoveFile(final_path);
      if (rank == 0) (void)fs_->RemoveDir(step_dir);  // succeeds once the dir is empty
    }
  };
  auto fail = [&](Error e) -> Result<CommitInfo> {
    cleanup_own();
    return std::unexpected(std::move(e).With(fmt::format("checkpoint step {} rank {}", step, rank)));
  };

  // 3. Shard reports to everyone (rank 0 is the one that needs them).
  auto reports = agreement_->AllGather(shard_status ? EncodeShardReport(entry, wrapped)
                                                    : EncodeError(shard_status.error()));
  if (!reports) return fail(std::move(reports).error());

  // 4. Rank 0 writes the manifest and HEAD.
  std::string verdict;
  CommitInfo info;
  info.step = step;
  info.bytes_written = entry.file_size;
  if (rank == 0) {
    Result<Digest> committed = [&]() -> Result<Digest> {
      if (!shard_status) return std::unexpected(shard_status.error());
      Manifest m;
      m.run_id = options_.run_id;
      m.step = step;
      m.world_size = world;
      m.chunk_size = options_.chunk_size;
      m.created_unix_ms = NowUnixMs();
      m.provenance_digest = options_.provenance_digest;
      {
        std::lock_guard lock(mu_);
        if (head_) m.previous_digest = head_->digest;
      }
      m.key_id = options_.key->id;
      m.shards.resize(world);
      m.wrapped_keys.resize(world);
      for (uint32_t r = 0; r < world; ++r) {
        CAIRN_RETURN_IF_ERROR(DecodeShardReport((*reports)[r], r, &m.shards[r], &m.wrapped_keys[r]));
      }
      const std::string mtmp = io::JoinPath(step_dir, fmt::format(".tmp-{}-MANIFEST", io::RandomSuffix()));
      const std::string bytes = m.Encode();
      auto write_manifest = [&]() -> Status {
        CAIRN_ASSIGN_OR_RETURN(auto f, fs_->NewWritableFile(mtmp, 0600));
        CAIRN_RETURN_IF_ERROR(f->Append(std::as_bytes(std::span(bytes.data(), bytes.size()))));
        CAIRN_RETURN_IF_ERROR(f->Sync());
        CAIRN_RETURN_IF_ERROR(f->Close());
        CAIRN_RETURN_IF_ERROR(fs_->Rename(mtmp, io::JoinPath(step_dir, kManifestFile)));
        return fs_->SyncDir(step_dir);
      };
      if (auto st = write_manifest(); !st) {
        (void)fs_->RemoveFile(mtmp);
        return std::unexpected(std::move(st).error().With("write manifest"));
      }
      const Digest digest = m.ComputeDigest();
      info.previous_digest = m.previous_digest;
      {
        std::lock_guard lock(mu_);
        head_ = HeadRecord{digest, step};
        recent_commits_.push_back(*head_);
        if (recent_commits_.size() > kRecentCommits) recent_commits_.pop_front();
      }
      // The manifest is durable: the step is committed even if HEAD cannot be updated
      // (readers accept a manifest that chains from HEAD; the next commit rewrites it).
      if (auto st = WriteHead(*fs_, options_.dir, {digest, step}); !st) {
        log->warn("step {} committed, but updating HEAD failed: {}", step, st.error().ToString());
      }
      return digest;
    }();
    if (committed) {
      verdict = "K" + std::string(reinterpret_cast<const char*>(committed->data()), 32) +
                std::string(reinterpret_cast<const char*>(info.previous_digest.data()), 32);
    } else {
      verdict = EncodeError(committed.error());
    }
  }

  // 5. Everyone learns the outcome.
  auto verdicts = agreement_->AllGather(verdict);
  if (!verdicts) return fail(std::move(verdicts).error());
  const std::string& v = (*verdicts)[0];
  if (v.size() != 65 || v[0] != 'K') {
    if (!shard_status) return fail(shard_status.error());
    return fail(Error(Code::kUnavailable, fmt::format("commit failed on rank 0: {}", v.substr(1))));
  }
  std::memcpy(info.manifest_digest.data(), v.data() + 1, 32);
  std::memcpy(info.previous_digest.data(), v.data() + 33, 32);
  if (rank != 0) {
    std::lock_guard lock(mu_);
    head_ = HeadRecord{info.manifest_digest, step};
    recent_commits_.push_back(*head_);
    if (recent_commits_.size() > kRecentCommits) recent_commits_.pop_front();
  }
  log->debug("committed step {} rank {} ({} bytes)", step, rank, info.bytes_written);
  // The step is durable on every rank; older shards go off the critical path.
  if (rank == 0) SchedulePrune();
  return info;
}

void CheckpointWriter::StartBackgroundLocked() {
  if (!background_.joinable()) background_ = std::thread([this] { BackgroundLoop(); });
}

void CheckpointWriter::SchedulePrune() {
  std::lock_guard lock(mu_);
  if (prune_queued_) return;  // the queued one has not started: it will see this commit too
  prune_queued_ = true;
  ++prunes_outstanding_;
  auto job = std::make_unique<Job>();
  job->kind = Job::Kind::kPrune;
  queue_.push_front(std::move(job));  // before queued saves: free the space soon
  StartBackgroundLocked();
  cv_.notify_all();
}

void CheckpointWriter::RunPrune() {
  {
    std::lock_guard lock(mu_);
    prune_queued_ = false;  // commits from now on queue another prune
  }
  // Never concurrent with a commit of this writer: async commits run on this thread, and
  // Save() waits (Flush) for queued prunes before it starts.
  auto pruned = Prune(*fs_, options_.dir, options_.retention);
  if (!pruned) {
    log::Logger("checkpoint")->warn("retention pruning of {} failed (committed steps are not "
                                    "affected; the next commit retries): {}",
                                    options_.dir, pruned.error().ToString());
  }
  std::lock_guard lock(mu_);
  ++prune_status_.runs;
  if (pruned) {
    prune_status_.pruned_steps.insert(prune_status_.pruned_steps.end(), pruned->begin(),
                                      pruned->end());
    prune_status_.last_error.reset();
  } else {
    prune_status_.last_error = pruned.error();
  }
  --prunes_outstanding_;
  cv_.notify_all();
}

PruneStatus CheckpointWriter::prune_status() const {
  std::lock_guard lock(mu_);
  return prune_status_;
}

Result<CommitInfo> CheckpointWriter::Save(uint64_t step, std::span<const TensorRef> tensors,
                                          std::span<const BlobRef> blobs) {
  // Keeps commits in step order; also waits for the previous commit's prune, which has
  // usually finished long before (it runs while the caller trains).
  CAIRN_RETURN_IF_ERROR(Flush());
  CAIRN_RETURN_IF_ERROR(CheckStep(step));
  return Commit(step, tensors, blobs);
}

Result<SaveHandle> CheckpointWriter::SaveAsync(uint64_t step, std::span<const TensorRef> tensors,
                                               std::span<const BlobRef> blobs) {
  CAIRN_RETURN_IF_ERROR(CheckStep(step));
  std::unique_ptr<Snapshot> snap;
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return inflight_ < options_.max_inflight; });
    ++inflight_;
    if (!free_snapshots_.empty()) {
      snap = std::move(free_snapshots_.back());
      free_snapshots_.pop_back();
    }
  }
  if (!snap) snap = std::make_unique<Snapshot>();
  snap->Take(tensors, blobs);

  auto job = std::make_unique<Job>();
  job->step = step;
  job->snapshot = std::move(snap);
  std::shared_future<Result<CommitInfo>> future = job->promise.get_future().share();
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
    pending_.push_back(future);
    StartBackgroundLocked();
    cv_.notify_all();
  }
  return SaveHandle(future);
}

void CheckpointWriter::BackgroundLoop() {
  for (;;) {
    std::unique_ptr<Job> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, nothing left
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    if (job->kind == Job::Kind::kPrune) {
      RunPrune();
      continue;
    }
    auto result = Commit(job->step, job->snapshot->tensors, job->snapshot->blobs);
    {
      std::lock_guard lock(mu_);
      free_snapshots_.push_back(std::move(job->snapshot));
      --inflight_;
      cv_.notify_all();
    }
    job->promise.set_value(std::move(result));
  }
}

Status CheckpointWriter::Flush() {
  std::vector<std::shared_future<Result<CommitInfo>>> pending;
  {
    std::lock_guard lock(mu_);
    pending.swap(pending_);
  }
  Status first = OkStatus();
  for (auto& f : pending) {
    auto r = f.get();
    if (!r && first) first = std::unexpected(r.error());
  }
  // Commits queue their prune before their result is published, so this sees them all.
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return prunes_outstanding_ == 0; });
  return first;
}

}  // namespace cairn::ckpt
