#include "checkpoint/reader.h"

#include "checkpoint/aead_stream.h"
#include <fmt/ranges.h>

#include "common/log.h"

namespace cairn::ckpt {

Result<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir,
                                                                 ReaderOptions options) {
  if (!options.key) {
    return MakeError(Code::kInvalidArgument,
                     "reading checkpoint tensors needs the master key (--key-file or "
                     "CAIRN_KEY_FILE)");
  }
  std::unique_ptr<CheckpointReader> r(new CheckpointReader(dir, std::move(options)));
  r->fs_ = r->options_.fs ? r->options_.fs : &io::DefaultFileSystem();
  CAIRN_ASSIGN_OR_RETURN(auto scan, ScanChain(*r->fs_, dir, {r->options_.expected_head}));
  if (!scan.ok()) {
    return MakeError(Code::kDataLoss, "checkpoint chain in {} does not verify: {}", dir,
                     scan.problems.front());
  }
  if (scan.steps.empty()) {
    return MakeError(Code::kNotFound, "no checkpoint in {}", dir);
  }
  auto log = log::Logger("checkpoint");
  for (auto it = scan.steps.rbegin(); it != scan.steps.rend(); ++it) {
    if (r->options_.step && it->step != *r->options_.step) continue;
    Status st = r->CheckCandidate(*it);
    if (st) {
      r->record_ = *it;
      return r;
    }
    if (st.error().code() == Code::kFailedPrecondition || r->options_.step) {
      return std::unexpected(std::move(st).error());  // wrong key, or the asked-for step
    }
    std::string why = fmt::format("step {}: {}", it->step, st.error().ToString());
    log->warn("skipping checkpoint {}", why);
    r->skipped_.push_back(std::move(why));
    r->sources_.clear();
  }
  if (r->options_.step) {
    return MakeError(Code::kNotFound, "{} has no checkpoint of step {}", dir, *r->options_.step);
  }
  return MakeError(Code::kDataLoss, "no valid checkpoint in {}: {}", dir,
                   fmt::join(r->skipped_, "; "));
}

Status CheckpointReader::CheckCandidate(const StepRecord& rec) {
  if (rec.state == StepState::kPruned) {
    return MakeError(Code::kNotFound, "pruned by retention (manifest only)");
  }
  if (rec.state == StepState::kDamaged) return MakeError(Code::kDataLoss, "{}", rec.problem);
  const MasterKey& key = *options_.key;
  if (rec.manifest.key_id != key.id) {
    return MakeError(Code::kFailedPrecondition,
                     "wrong key: step {} is wrapped for key id {}, the key given ({}) has id {}",
                     rec.step, rec.manifest.key_id, key.source, key.id);
  }
  for (uint32_t r = 0; r < rec.manifest.world_size; ++r) {
    CAIRN_ASSIGN_OR_RETURN(sources_[r],
                           WithContext(OpenSource(rec, r, options_.verify == VerifyMode::kFull),
                                       fmt::format("shard of rank {}", r)));
  }
  return OkStatus();
}

Result<std::shared_ptr<RandomAccessSource>> CheckpointReader::OpenSource(const StepRecord& rec,
                                                                         uint32_t rank,
                                                                         bool full) const {
  const Manifest& m = rec.manifest;
  const std::string path = io::JoinPath(rec.path, ShardFileName(rank));
  auto aad = WrapAad(m.run_id, m.step, rank, m.world_size, m.shards[rank].sha256);
  CAIRN_ASSIGN_OR_RETURN(auto data_key,
                         WithContext(UnwrapKey(*options_.key, m.wrapped_keys[rank], aad),
                                     fmt::format("key slot of rank {}", rank)));
  CAIRN_ASSIGN_OR_RETURN(auto file, fs_->OpenReadable(path));
  std::shared_ptr<io::ReadableFile> shared(std::move(file));
  ShardExpectation expect{m.step, rank, m.world_size, RunTag(m.run_id), m.shards[rank].file_size};
  CAIRN_ASSIGN_OR_RETURN(auto dec, ShardDecryptor::Open(shared, data_key, expect));
  if (full) CAIRN_RETURN_IF_ERROR(dec->VerifyAll(&m.shards[rank].sha256));
  return std::shared_ptr<RandomAccessSource>(std::move(dec));
}

Result<const H5ShardReader*> CheckpointReader::Shard(uint32_t rank) {
  if (rank >= world_size()) {
    return MakeError(Code::kInvalidArgument, "rank {} out of range: step {} has world size {}",
                     rank, step(), world_size());
  }
  if (auto it = shards_.find(rank); it != shards_.end()) return it->second.get();
  auto src = sources_[rank];
  if (!src) {
    CAIRN_ASSIGN_OR_RETURN(src, OpenSource(record_, rank, false));
  }
  CAIRN_ASSIGN_OR_RETURN(
      auto h5, H5ShardReader::Open(src, fmt::format("step {} rank {}", step(), rank)));
  const H5ShardReader* out = h5.get();
  shards_[rank] = std::move(h5);
  return out;
}

}  // namespace cairn::ckpt
