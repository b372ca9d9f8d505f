// A FileSystem for tests that injects faults into a real (POSIX) one.
//
// Promise: wraps a base FileSystem rooted on a real directory and, by rule, makes a
// chosen operation fail with a chosen errno (optionally after writing part of the data:
// a short write that ends in ENOSPC), or simulates a crash: from the chosen operation on
// every call fails, and RecoverFromCrash() then rewinds the directory tree to what was
// durable at the crash, as a power cut would leave it:
//   - bytes appended to a file after its last Sync() are cut off;
//   - a file created, or a rename done, since the last SyncDir() of its directory is
//     undone (the file removed, the rename reversed and a file it replaced restored),
//     newest first.
// Removals are treated as durable at once. WritableFileOptions (early writeback) pass
// through to the base file system; they do not change what counts as durable. Operations are counted from 1 in the order
// they are issued, so a test can crash at op 1, 2, 3, ... until a whole commit passes.
//
// Threading: thread-safe (one mutex around the bookkeeping).
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/io.h"

namespace cairn::io {

enum class OpKind { kCreate, kWrite, kSync, kClose, kRename, kSyncDir, kRemove, kRead, kMkdir };
std::string_view OpKindName(OpKind kind);

class FaultInjectingFileSystem final : public FileSystem {
 public:
  explicit FaultInjectingFileSystem(FileSystem& base = DefaultFileSystem()) : base_(base) {}

  // The n-th (1-based, counted from now) operation of `kind` fails with errno `err`. For
  // kWrite, `partial_bytes` of the data are written first (a short write).
  void FailNth(OpKind kind, int n, int err, std::size_t partial_bytes = 0);
  // Every operation of `kind` from now on fails with `err`.
  void FailAll(OpKind kind, int err);
  // The mutating operation with global index `op` (1-based, counted over kCreate,
  // kWrite, kSync, kClose, kRename, kSyncDir, kRemove, kMkdir) and all later operations
  // fail with EIO: the process has "crashed" at that point.
  void CrashAtOp(int op);
  bool crashed() const;
  // Number of mutating operations issued so far.
  int mutating_ops() const;
  // Rewinds the tree to its durable state (see above) and clears all rules.
  Status RecoverFromCrash();
  // Forgets durability bookkeeping (call after a clean, fully synced phase).
  void ResetTracking();
  // Log of operations, "kind path", in order (for test diagnostics).
  std::vector<std::string> op_log() const;

  // FileSystem:
  using FileSystem::NewWritableFile;
  Result<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path, const WritableFileOptions& options) override;
  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) override;
  Status Rename(const std::string& from, const std::string& to) override;
  Status SyncDir(const std::string& dir) override;
  Status RemoveFile(const std::string& path) override;
  Status RemoveDir(const std::string& path) override;
  Status CreateDir(const std::string& path, uint32_t mode) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override;
  Result<FileInfo> Stat(const std::string& path) override;

 private:
  friend class FaultWritableFile;
  friend class FaultReadableFile;
  struct Rule {
    OpKind kind;
    int countdown;  // fires when it reaches 0; -1 = every time
    int err;
    std::size_t partial_bytes;
  };
  struct Pending {  // a directory-entry change not yet made durable by SyncDir
    enum Kind { kCreated, kRenamed, kMkdir } kind;
    std::string path;  // created path / rename target / new dir
    std::string from;  // rename source
    std::string backup;  // hard link to the file a rename replaced ("" if none)
  };

  // Returns the injected errno for this operation, or 0 to proceed. Counts the op.
  int Check(OpKind kind, const std::string& path, std::size_t* partial);
  void NoteAppend(const std::string& path, uint64_t bytes);
  void NoteSync(const std::string& path);

  FileSystem& base_;
  mutable std::mutex mu_;
  // State below is protected by mu_.
  std::vector<Rule> rules_;
  std::optional<int> crash_at_;
  bool crashed_ = false;
  int mutating_ops_ = 0;
  std::map<OpKind, int> counts_;
  std::vector<std::string> log_;
  std::map<std::string, uint64_t> written_;  // path -> bytes appended
  std::map<std::string, uint64_t> synced_;   // path -> bytes durable
  std::vector<Pending> pending_;
};

}  // namespace cairn::io
