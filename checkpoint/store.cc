#include "checkpoint/store.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <map>
#include <thread>

#include "checkpoint/aead_stream.h"
#include "checkpoint/crypto.h"
#include "common/log.h"

namespace cairn::ckpt {
namespace {

constexpr std::string_view kStepPrefix = "step-";
constexpr std::string_view kTmpPrefix = ".tmp-";
constexpr uint64_t kMaxManifestBytes = 16ull << 20;

std::string Short(const Digest& d) { return ToHex(d).substr(0, 16); }

}  // namespace

std::string StepDirName(uint64_t step) { return fmt::format("step-{:012d}", step); }

std::optional<uint64_t> ParseStepDirName(std::string_view name) {
  if (!name.starts_with(kStepPrefix)) return std::nullopt;
  std::string_view digits = name.substr(kStepPrefix.size());
  if (digits.size() < 12 || digits.size() > 20) return std::nullopt;
  uint64_t step = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc() || p != digits.data() + digits.size()) return std::nullopt;
  if (StepDirName(step) != name) return std::nullopt;  // canonical spelling only
  return step;
}

std::string ShardFileName(uint32_t rank) { return fmt::format("rank-{:05d}.shard", rank); }

std::string_view StepStateName(StepState s) {
  switch (s) {
    case StepState::kComplete: return "complete";
    case StepState::kPruned: return "pruned";
    case StepState::kDamaged: return "damaged";
  }
  return "?";
}

Result<std::optional<HeadRecord>> ReadHead(io::FileSystem& fs, const std::string& dir) {
  const std::string path = io::JoinPath(dir, kHeadFile);
  auto data = io::ReadWholeFile(fs, path, 4096);
  if (!data) {
    if (data.error().code() == Code::kNotFound) return std::optional<HeadRecord>();
    return std::unexpected(std::move(data).error());
  }
  std::string_view s(*data);
  if (s.size() < 66 || s[64] != ' ' || s.back() != '\n') {
    return MakeError(Code::kDataLoss, "{}: malformed head file (expected '<64 hex> <step>')", path);
  }
  auto digest = DigestFromHex(s.substr(0, 64));
  if (!digest) return MakeError(Code::kDataLoss, "{}: {}", path, digest.error().message());
  std::string_view num = s.substr(65, s.size() - 66);
  uint64_t step = 0;
  auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), step);
  if (ec != std::errc() || p != num.data() + num.size()) {
    return MakeError(Code::kDataLoss, "{}: malformed step '{}'", path, num);
  }
  return std::optional<HeadRecord>(HeadRecord{*digest, step});
}

Status WriteHead(io::FileSystem& fs, const std::string& dir, const HeadRecord& head) {
  return io::WriteFileAtomic(fs, io::JoinPath(dir, kHeadFile),
                             fmt::format("{} {}\n", ToHex(head.digest), head.step), 0600);
}

namespace {

// Checks which shard files of a step exist and have the manifest's sizes.
Status ClassifyShards(io::FileSystem& fs, StepRecord* rec) {
  uint32_t present = 0;
  std::string problem;
  for (uint32_t r = 0; r < rec->manifest.world_size; ++r) {
    const std::string path = io::JoinPath(rec->path, ShardFileName(r));
    auto info = fs.Stat(path);
    if (!info) {
      if (info.error().code() != Code::kNotFound) return std::unexpected(std::move(info).error());
      if (problem.empty()) problem = fmt::format("shard of rank {} is missing", r);
      continue;
    }
    ++present;
    const uint64_t want = rec->manifest.shards[r].file_size;
    if (info->size != want && problem.empty()) {
      problem = fmt::format("shard of rank {} is {} bytes, manifest says {} ({})", r, info->size,
                            want, info->size < want ? "truncated" : "trailing bytes");
    }
  }
  if (present == 0) {
    rec->state = StepState::kPruned;
  } else if (!problem.empty()) {
    rec->state = StepState::kDamaged;
    rec->problem = problem;
  } else {
    rec->state = StepState::kComplete;
  }
  return OkStatus();
}

}  // namespace

Result<ChainScan> ScanChain(io::FileSystem& fs, const std::string& dir,
                            const ScanOptions& options) {
  ChainScan scan;
  CAIRN_ASSIGN_OR_RETURN(auto names, WithContext(fs.ListDir(dir), "scan checkpoint directory"));
  CAIRN_ASSIGN_OR_RETURN(scan.head_file, ReadHead(fs, dir));
  scan.anchor = options.expected_head ? options.expected_head
                : scan.head_file       ? std::optional<Digest>(scan.head_file->digest)
                                       : std::nullopt;

  for (const auto& name : names) {
    auto step = ParseStepDirName(name);
    if (!step) continue;
    StepRecord rec;
    rec.step = *step;
    rec.path = io::JoinPath(dir, name);
    const std::string mpath = io::JoinPath(rec.path, kManifestFile);
    auto bytes = io::ReadWholeFile(fs, mpath, kMaxManifestBytes);
    if (!bytes) {
      if (bytes.error().code() == Code::kNotFound) {
        scan.incomplete.push_back(rec.path);
        continue;
      }
      if (bytes.error().code() == Code::kInvalidArgument) {
        scan.problems.push_back(fmt::format("step {}: {}", *step, bytes.error().ToString()));
        continue;
      }
      return std::unexpected(std::move(bytes).error());
    }
    auto m = Manifest::Decode(*bytes);
    if (!m) {
      scan.problems.push_back(fmt::format("step {}: {}: {}", *step, mpath, m.error().ToString()));
      continue;
    }
    rec.manifest = std::move(*m);
    rec.digest = rec.manifest.ComputeDigest();
    if (rec.manifest.step != rec.step) {
      scan.problems.push_back(fmt::format(
          "{}: manifest is for step {} but sits in the directory of step {} (steps moved or "
          "reordered)",
          mpath, rec.manifest.step, rec.step));
    }
    CAIRN_RETURN_IF_ERROR(ClassifyShards(fs, &rec));
    scan.steps.push_back(std::move(rec));
  }
  if (scan.steps.empty()) return scan;

  // Run identity: the first manifest decides; every other must agree.
  scan.run_id = scan.steps.front().manifest.run_id;
  for (const auto& s : scan.steps) {
    if (s.manifest.run_id != scan.run_id) {
      scan.problems.push_back(fmt::format(
          "step {}: manifest belongs to run '{}', not '{}' (copied in from another run)", s.step,
          s.manifest.run_id, scan.run_id));
    }
  }
  // Links.
  if (!scan.steps.front().manifest.IsFirst()) {
    scan.problems.push_back(fmt::format(
        "step {}: first manifest of the directory names a previous manifest {} that is missing "
        "(older steps deleted)",
        scan.steps.front().step, Short(scan.steps.front().manifest.previous_digest)));
  }
  for (std::size_t i = 1; i < scan.steps.size(); ++i) {
    const auto& prev = scan.steps[i - 1];
    const auto& cur = scan.steps[i];
    if (cur.manifest.previous_digest != prev.digest) {
      scan.problems.push_back(fmt::format(
          "step {}: chain broken: manifest names previous digest {}, but the previous step {} "
          "has digest {} (a step was deleted, replaced or reordered)",
          cur.step, Short(cur.manifest.previous_digest), prev.step, Short(prev.digest)));
    }
  }
  // Anchor (rollback / tail deletion).
  if (scan.anchor) {
    auto it = std::find_if(scan.steps.begin(), scan.steps.end(),
                           [&](const StepRecord& s) { return s.digest == *scan.anchor; });
    if (it == scan.steps.end()) {
      std::string where = options.expected_head ? "the expected head" : "HEAD";
      std::string step_hint =
          (!options.expected_head && scan.head_file)
              ? fmt::format(" (step {})", scan.head_file->step)
              : std::string();
      scan.problems.push_back(fmt::format(
          "{} names manifest {}{} which is not in the directory: the newest checkpoint(s) were "
          "deleted or the directory was rolled back (newest present: step {})",
          where, Short(*scan.anchor), step_hint, scan.steps.back().step));
    } else if (!options.expected_head && scan.head_file && it->step != scan.head_file->step) {
      scan.problems.push_back(fmt::format("HEAD says step {} but its digest is that of step {}",
                                          scan.head_file->step, it->step));
    }
  }
  return scan;
}

Result<VerifyReport> VerifyDirectory(io::FileSystem& fs, const std::string& dir,
                                     const VerifyOptions& options) {
  VerifyReport report;
  CAIRN_ASSIGN_OR_RETURN(report.scan, ScanChain(fs, dir, options.scan));
  for (const auto& p : report.scan.problems) report.failures.push_back({std::nullopt, std::nullopt, p});
  if (report.scan.steps.empty() && report.scan.problems.empty()) {
    report.failures.push_back({std::nullopt, std::nullopt,
                               fmt::format("{}: no checkpoints (no step directory has a manifest)", dir)});
  }
  for (const auto& rec : report.scan.steps) {
    if (rec.state == StepState::kPruned) continue;
    if (rec.state == StepState::kDamaged) {
      report.failures.push_back({rec.step, std::nullopt, rec.problem});
      continue;
    }
    const auto& m = rec.manifest;
    if (options.key != nullptr && m.key_id != options.key->id) {
      report.failures.push_back(
          {rec.step, std::nullopt,
           fmt::format("wrong key: step {} is wrapped for key id {}, the key given ({}) has id {}",
                       rec.step, m.key_id, options.key->source, options.key->id)});
      continue;
    }
    for (uint32_t r = 0; r < m.world_size; ++r) {
      const std::string path = io::JoinPath(rec.path, ShardFileName(r));
      auto fail = [&](const Error& e) {
        report.failures.push_back({rec.step, r, e.ToString()});
      };
      auto file = fs.OpenReadable(path);
      if (!file) {
        fail(file.error());
        continue;
      }
      std::shared_ptr<io::ReadableFile> shared(std::move(*file));
      auto summary = HashShardFile(*shared);
      if (!summary) {
        fail(summary.error());
        continue;
      }
      if (summary->sha256 != m.shards[r].sha256) {
        fail(Error(Code::kDataLoss,
                   fmt::format("{}: SHA-256 {} does not match the manifest's {}", path,
                               Short(summary->sha256), Short(m.shards[r].sha256))));
        continue;
      }
      ++report.shards_checked;
      report.bytes_checked += summary->file_size;
      if (options.key == nullptr) continue;
      auto aad = WrapAad(m.run_id, m.step, r, m.world_size, m.shards[r].sha256);
      auto data_key = UnwrapKey(*options.key, m.wrapped_keys[r], aad);
      if (!data_key) {
        fail(data_key.error().With(fmt::format("key slot of rank {}", r)));
        continue;
      }
      ShardExpectation expect{m.step, r, m.world_size, RunTag(m.run_id), m.shards[r].file_size};
      auto dec = ShardDecryptor::Open(shared, *data_key, expect);
      if (!dec) {
        fail(dec.error());
        continue;
      }
      if (auto st = (*dec)->VerifyAll(nullptr); !st) fail(st.error());
    }
  }
  return report;
}

Result<std::vector<uint64_t>> Prune(io::FileSystem& fs, const std::string& dir,
                                    const Retention& retention) {
  if (retention.keep_last < 1) {
    return MakeError(Code::kInvalidArgument, "retention must keep at least the last step");
  }
  if (retention.keep_every < 0) {
    return MakeError(Code::kInvalidArgument, "keep_every must be >= 0");
  }
  CAIRN_ASSIGN_OR_RETURN(auto scan, ScanChain(fs, dir));
  std::vector<const StepRecord*> complete;
  for (const auto& s : scan.steps) {
    if (s.state == StepState::kComplete) complete.push_back(&s);
  }
  std::vector<uint64_t> pruned;
  const std::size_t keep_from =
      complete.size() > static_cast<std::size_t>(retention.keep_last)
          ? complete.size() - static_cast<std::size_t>(retention.keep_last)
          : 0;
  for (std::size_t i = 0; i < keep_from; ++i) {
    const StepRecord& s = *complete[i];
    if (retention.keep_every > 0 && s.step % static_cast<uint64_t>(retention.keep_every) == 0) continue;
    for (uint32_t r = 0; r < s.manifest.world_size; ++r) {
      auto st = fs.RemoveFile(io::JoinPath(s.path, ShardFileName(r)));
      if (!st && st.error().code() != Code::kNotFound) {
        return std::unexpected(std::move(st).error().With(fmt::format("prune step {}", s.step)));
      }
    }
    CAIRN_RETURN_IF_ERROR_CTX(fs.SyncDir(s.path), "prune step {}", s.step);
    pruned.push_back(s.step);
  }
  return pruned;
}

Result<int> Rekey(io::FileSystem& fs, const std::string& dir, const MasterKey& old_key,
                  const MasterKey& new_key) {
  CAIRN_ASSIGN_OR_RETURN(auto scan, ScanChain(fs, dir));
  if (!scan.ok()) {
    return MakeError(Code::kDataLoss, "refusing to rekey a directory whose chain does not verify: {}",
                     scan.problems.front());
  }
  int rewritten = 0;
  for (auto& rec : scan.steps) {
    Manifest m = rec.manifest;
    if (m.key_id == new_key.id) continue;  // done by an earlier, interrupted run
    if (m.key_id != old_key.id) {
      return MakeError(Code::kFailedPrecondition,
                       "step {} is wrapped for key id {}, but the old key given ({}) has id {}",
                       m.step, m.key_id, old_key.source, old_key.id);
    }
    for (uint32_t r = 0; r < m.world_size; ++r) {
      auto aad = WrapAad(m.run_id, m.step, r, m.world_size, m.shards[r].sha256);
      CAIRN_ASSIGN_OR_RETURN(auto dk, WithContext(UnwrapKey(old_key, m.wrapped_keys[r], aad),
                                                  fmt::format("rekey step {} rank {}", m.step, r)));
      CAIRN_ASSIGN_OR_RETURN(m.wrapped_keys[r], WrapKey(new_key, dk, aad));
    }
    m.key_id = new_key.id;
    if (m.ComputeDigest() != rec.digest) {
      return MakeError(Code::kInternal, "rekey of step {} would change its digest", m.step);
    }
    CAIRN_RETURN_IF_ERROR_CTX(
        io::WriteFileAtomic(fs, io::JoinPath(rec.path, kManifestFile), m.Encode(), 0600),
        "rekey step {}", m.step);
    ++rewritten;
  }
  return rewritten;
}

Status CleanupIncomplete(io::FileSystem& fs, const std::string& dir) {
  CAIRN_ASSIGN_OR_RETURN(auto names, fs.ListDir(dir));
  for (const auto& name : names) {
    const std::string path = io::JoinPath(dir, name);
    if (name.starts_with(kTmpPrefix) || name.find(".tmp-") != std::string::npos) {
      (void)fs.RemoveFile(path);
      continue;
    }
    if (!ParseStepDirName(name)) continue;
    CAIRN_ASSIGN_OR_RETURN(auto entries, fs.ListDir(path));
    bool has_manifest = std::find(entries.begin(), entries.end(), kManifestFile) != entries.end();
    for (const auto& e : entries) {
      if (e.starts_with(kTmpPrefix) || !has_manifest) {
        CAIRN_RETURN_IF_ERROR(fs.RemoveFile(io::JoinPath(path, e)));
      }
    }
    if (has_manifest) {
      CAIRN_RETURN_IF_ERROR(fs.SyncDir(path));
    } else {
      CAIRN_RETURN_IF_ERROR(fs.RemoveDir(path));
    }
  }
  return fs.SyncDir(dir);
}

}  // namespace cairn::ckpt
