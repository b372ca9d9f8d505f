#include "common/fault_fs.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace cairn::io {

std::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kCreate: return "create";
    case OpKind::kWrite: return "write";
    case OpKind::kSync: return "fsync";
    case OpKind::kClose: return "close";
    case OpKind::kRename: return "rename";
    case OpKind::kSyncDir: return "fsync-dir";
    case OpKind::kRemove: return "remove";
    case OpKind::kRead: return "read";
    case OpKind::kMkdir: return "mkdir";
  }
  return "?";
}

namespace {
bool IsMutating(OpKind k) { return k != OpKind::kRead; }
std::unexpected<Error> Injected(int err, OpKind kind, const std::string& path) {
  auto e = ErrnoError(err, fmt::format("{} {}", OpKindName(kind), path));
  e.error().With("injected fault");
  return e;
}
}  // namespace

class FaultWritableFile final : public WritableFile {
 public:
  FaultWritableFile(FaultInjectingFileSystem* fs, std::unique_ptr<WritableFile> base)
      : fs_(fs), base_(std::move(base)) {}

  Status Append(std::span<const std::byte> data) override {
    std::size_t partial = 0;
    if (int err = fs_->Check(OpKind::kWrite, path(), &partial)) {
      partial = std::min(partial, data.size());
      if (partial > 0 && !fs_->crashed()) {
        CAIRN_RETURN_IF_ERROR(base_->Append(data.first(partial)));
        fs_->NoteAppend(path(), partial);
      }
      return Injected(err, OpKind::kWrite, path());
    }
    CAIRN_RETURN_IF_ERROR(base_->Append(data));
    fs_->NoteAppend(path(), data.size());
    return OkStatus();
  }
  Status Sync() override {
    if (int err = fs_->Check(OpKind::kSync, path(), nullptr)) return Injected(err, OpKind::kSync, path());
    CAIRN_RETURN_IF_ERROR(base_->Sync());
    fs_->NoteSync(path());
    return OkStatus();
  }
  Status Close() override {
    if (int err = fs_->Check(OpKind::kClose, path(), nullptr)) {
      (void)base_->Close();
      return Injected(err, OpKind::kClose, path());
    }
    return base_->Close();
  }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectingFileSystem* fs_;
  std::unique_ptr<WritableFile> base_;
};

class FaultReadableFile final : public ReadableFile {
 public:
  FaultReadableFile(FaultInjectingFileSystem* fs, std::unique_ptr<ReadableFile> base)
      : fs_(fs), base_(std::move(base)) {}
  Result<std::size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    if (int err = fs_->Check(OpKind::kRead, path(), nullptr)) return Injected(err, OpKind::kRead, path());
    return base_->ReadAt(offset, out);
  }
  uint64_t size() const override { return base_->size(); }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectingFileSystem* fs_;
  std::unique_ptr<ReadableFile> base_;
};

void FaultInjectingFileSystem::FailNth(OpKind kind, int n, int err, std::size_t partial_bytes) {
  std::lock_guard lock(mu_);
  rules_.push_back({kind, n, err, partial_bytes});
}

void FaultInjectingFileSystem::FailAll(OpKind kind, int err) {
  std::lock_guard lock(mu_);
  rules_.push_back({kind, -1, err, 0});
}

void FaultInjectingFileSystem::CrashAtOp(int op) {
  std::lock_guard lock(mu_);
  crash_at_ = op;
}

bool FaultInjectingFileSystem::crashed() const {
  std::lock_guard lock(mu_);
  return crashed_;
}

int FaultInjectingFileSystem::mutating_ops() const {
  std::lock_guard lock(mu_);
  return mutating_ops_;
}

std::vector<std::string> FaultInjectingFileSystem::op_log() const {
  std::lock_guard lock(mu_);
  return log_;
}

int FaultInjectingFileSystem::Check(OpKind kind, const std::string& path, std::size_t* partial) {
  std::lock_guard lock(mu_);
  if (crashed_) return EIO;
  if (IsMutating(kind)) {
    ++mutating_ops_;
    log_.push_back(fmt::format("{} {} {}", mutating_ops_, OpKindName(kind), path));
    if (crash_at_ && mutating_ops_ >= *crash_at_) {
      crashed_ = true;
      return EIO;
    }
  }
  for (auto it = rules_.begin(); it != rules_.end(); ++it) {
    if (it->kind != kind) continue;
    if (it->countdown < 0) return it->err;
    if (--it->countdown == 0) {
      int err = it->err;
      if (partial) *partial = it->partial_bytes;
      rules_.erase(it);
      return err;
    }
  }
  return 0;
}

void FaultInjectingFileSystem::NoteAppend(const std::string& path, uint64_t bytes) {
  std::lock_guard lock(mu_);
  written_[path] += bytes;
}

void FaultInjectingFileSystem::NoteSync(const std::string& path) {
  std::lock_guard lock(mu_);
  synced_[path] = written_[path];
}

void FaultInjectingFileSystem::ResetTracking() {
  std::lock_guard lock(mu_);
  for (const auto& p : pending_) {
    if (!p.backup.empty()) ::unlink(p.backup.c_str());
  }
  written_.clear();
  synced_.clear();
  pending_.clear();
  log_.clear();
  mutating_ops_ = 0;
}

Status FaultInjectingFileSystem::RecoverFromCrash() {
  std::lock_guard lock(mu_);
  // Newest first: undo directory entries that were never made durable.
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    switch (it->kind) {
      case Pending::kCreated:
        if (base_.Stat(it->path)) CAIRN_RETURN_IF_ERROR(base_.RemoveFile(it->path));
        written_.erase(it->path);
        synced_.erase(it->path);
        break;
      case Pending::kRenamed:
        if (base_.Stat(it->path)) {
          CAIRN_RETURN_IF_ERROR(base_.Rename(it->path, it->from));
          if (!it->backup.empty()) CAIRN_RETURN_IF_ERROR(base_.Rename(it->backup, it->path));
          if (auto w = written_.extract(it->path)) {
            w.key() = it->from;
            written_.insert(std::move(w));
          }
          if (auto s = synced_.extract(it->path)) {
            s.key() = it->from;
            synced_.insert(std::move(s));
          }
        }
        break;
      case Pending::kMkdir:
        if (auto entries = base_.ListDir(it->path); entries && entries->empty()) {
          CAIRN_RETURN_IF_ERROR(base_.RemoveDir(it->path));
        }
        break;
    }
  }
  // Cut unsynced tails off the files that remain.
  for (const auto& [path, bytes] : written_) {
    uint64_t durable = synced_.contains(path) ? synced_[path] : 0;
    if (durable < bytes && base_.Stat(path)) {
      if (::truncate(path.c_str(), static_cast<off_t>(durable)) != 0) {
        return ErrnoError(errno, fmt::format("truncate {}", path));
      }
    }
  }
  rules_.clear();
  crash_at_.reset();
  crashed_ = false;
  written_.clear();
  synced_.clear();
  pending_.clear();
  mutating_ops_ = 0;
  return OkStatus();
}

Result<std::unique_ptr<WritableFile>> FaultInjectingFileSystem::NewWritableFile(
    const std::string& path, const WritableFileOptions& options) {
  if (int err = Check(OpKind::kCreate, path, nullptr)) return Injected(err, OpKind::kCreate, path);
  bool existed = static_cast<bool>(base_.Stat(path));
  CAIRN_ASSIGN_OR_RETURN(auto f, base_.NewWritableFile(path, options));
  {
    std::lock_guard lock(mu_);
    if (!existed) pending_.push_back({Pending::kCreated, path, ""});
    written_[path] = 0;
    synced_[path] = 0;
  }
  return std::make_unique<FaultWritableFile>(this, std::move(f));
}

Result<std::unique_ptr<ReadableFile>> FaultInjectingFileSystem::OpenReadable(
    const std::string& path) {
  if (int err = Check(OpKind::kRead, path, nullptr)) return Injected(err, OpKind::kRead, path);
  CAIRN_ASSIGN_OR_RETURN(auto f, base_.OpenReadable(path));
  return std::make_unique<FaultReadableFile>(this, std::move(f));
}

Status FaultInjectingFileSystem::Rename(const std::string& from, const std::string& to) {
  if (int err = Check(OpKind::kRename, from, nullptr)) return Injected(err, OpKind::kRename, from);
  // Keep what the rename replaces, so that a crash before SyncDir can bring it back.
  std::string backup;
  if (base_.Stat(to)) {
    backup = fmt::format("{}.fault-backup-{}", to, RandomSuffix());
    if (::link(to.c_str(), backup.c_str()) != 0) return ErrnoError(errno, fmt::format("link {}", to));
  }
  CAIRN_RETURN_IF_ERROR(base_.Rename(from, to));
  std::lock_guard lock(mu_);
  pending_.push_back({Pending::kRenamed, to, from, backup});
  if (auto w = written_.extract(from)) {
    w.key() = to;
    written_.insert_or_assign(to, w.mapped());
  }
  if (auto s = synced_.extract(from)) {
    synced_.insert_or_assign(to, s.mapped());
  }
  return OkStatus();
}

Status FaultInjectingFileSystem::SyncDir(const std::string& dir) {
  if (int err = Check(OpKind::kSyncDir, dir, nullptr)) return Injected(err, OpKind::kSyncDir, dir);
  CAIRN_RETURN_IF_ERROR(base_.SyncDir(dir));
  std::lock_guard lock(mu_);
  std::erase_if(pending_, [&](const Pending& p) {
    if (DirName(p.path) != dir) return false;
    if (!p.backup.empty()) ::unlink(p.backup.c_str());
    return true;
  });
  return OkStatus();
}

Status FaultInjectingFileSystem::RemoveFile(const std::string& path) {
  if (int err = Check(OpKind::kRemove, path, nullptr)) return Injected(err, OpKind::kRemove, path);
  CAIRN_RETURN_IF_ERROR(base_.RemoveFile(path));
  std::lock_guard lock(mu_);
  written_.erase(path);
  synced_.erase(path);
  std::erase_if(pending_, [&](const Pending& p) { return p.path == path; });
  return OkStatus();
}

Status FaultInjectingFileSystem::RemoveDir(const std::string& path) {
  if (int err = Check(OpKind::kRemove, path, nullptr)) return Injected(err, OpKind::kRemove, path);
  CAIRN_RETURN_IF_ERROR(base_.RemoveDir(path));
  std::lock_guard lock(mu_);
  std::erase_if(pending_, [&](const Pending& p) { return p.path == path; });
  return OkStatus();
}

Status FaultInjectingFileSystem::CreateDir(const std::string& path, uint32_t mode) {
  if (int err = Check(OpKind::kMkdir, path, nullptr)) return Injected(err, OpKind::kMkdir, path);
  bool existed = static_cast<bool>(base_.Stat(path));
  CAIRN_RETURN_IF_ERROR(base_.CreateDir(path, mode));
  if (!existed) {
    std::lock_guard lock(mu_);
    pending_.push_back({Pending::kMkdir, path, ""});
  }
  return OkStatus();
}

Result<std::vector<std::string>> FaultInjectingFileSystem::ListDir(const std::string& dir) {
  if (int err = Check(OpKind::kRead, dir, nullptr)) return Injected(err, OpKind::kRead, dir);
  CAIRN_ASSIGN_OR_RETURN(auto names, base_.ListDir(dir));
  std::erase_if(names, [](const std::string& n) { return n.find(".fault-backup-") != std::string::npos; });
  return names;
}

Result<FileInfo> FaultInjectingFileSystem::Stat(const std::string& path) {
  if (int err = Check(OpKind::kRead, path, nullptr)) return Injected(err, OpKind::kRead, path);
  return base_.Stat(path);
}

}  // namespace cairn::io
