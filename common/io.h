// The file I/O seam.
//
// Promise: all file I/O of the checkpoint path (open, write, fsync, rename, fsync of a
// directory, read, list, remove) goes through a FileSystem, so that tests can swap in
// FaultInjectingFileSystem (common/fault_fs.h) and fail or "crash" at any single
// operation. Errors name the path and the system error; codes follow errno (ENOSPC ->
// kResourceExhausted, ENOENT -> kNotFound, ...). WritableFile::Append writes all bytes or
// fails: short writes from the kernel are retried, EINTR is retried.
//
// Threading: FileSystem implementations are thread-safe. A WritableFile or ReadableFile
// is used by one thread at a time (ReadableFile::ReadAt is safe concurrently: pread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::io {

class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all of `data`, or fails.
  virtual Status Append(std::span<const std::byte> data) = 0;
  // Makes everything appended so far durable (fdatasync).
  virtual Status Sync() = 0;
  // Closes the descriptor; further calls fail. The destructor closes silently.
  virtual Status Close() = 0;
  virtual const std::string& path() const = 0;
};

class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // Reads up to out.size() bytes at offset; fewer only at end of file.
  virtual Result<std::size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const = 0;
  virtual uint64_t size() const = 0;
  virtual const std::string& path() const = 0;
};

struct FileInfo {
  uint64_t size = 0;
  uint32_t mode = 0;  // permission bits (st_mode & 07777)
  bool is_dir = false;
};

class FileSystem {
 public:
  virtual ~FileSystem() = default;
  // Creates (or truncates) path for writing with the given permission bits.
  virtual Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                                uint32_t mode = 0600) = 0;
  virtual Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) = 0;
  // Atomically replaces `to` with `from` (rename(2)); durable only after SyncDir.
  virtual Status Rename(const std::string& from, const std::string& to) = 0;
  // fsync of a directory: makes creations, renames and removals in it durable.
  virtual Status SyncDir(const std::string& dir) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  virtual Status RemoveDir(const std::string& path) = 0;  // must be empty
  // Creates a directory; succeeds if it already exists as a directory.
  virtual Status CreateDir(const std::string& path, uint32_t mode = 0700) = 0;
  // Entry names (no "." or ".."), sorted.
  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  virtual Result<FileInfo> Stat(const std::string& path) = 0;
};

// The real POSIX file system. Lives for the whole process.
FileSystem& DefaultFileSystem();

// Crash-safe replace of a small file: write to "<path>.tmp-<random>", fsync, rename over
// path, fsync the directory. On failure the temp file is removed and `path` is untouched.
Status WriteFileAtomic(FileSystem& fs, const std::string& path, std::string_view data,
                       uint32_t mode = 0600);
// Reads a whole file; fails with kInvalidArgument if it is larger than max_bytes.
Result<std::string> ReadWholeFile(FileSystem& fs, const std::string& path,
                                  uint64_t max_bytes = 64ull << 20);
// Creates path and any missing parents (each new directory's parent is fsynced).
Status CreateDirs(FileSystem& fs, const std::string& path, uint32_t mode = 0700);
// Parent directory of a path ("." for a bare name).
std::string DirName(const std::string& path);
std::string JoinPath(std::string_view a, std::string_view b);
// A random suffix for temp names (hex, 16 chars).
std::string RandomSuffix();

}  // namespace cairn::io
