// The file I/O seam.
//
// Promise: all file I/O of the checkpoint path (open, write, fsync, rename, fsync of a
// directory, read, list, remove) goes through a FileSystem, so that tests can swap in
// FaultInjectingFileSystem (common/fault_fs.h) and fail or "crash" at any single
// operation. Errors name the path and the system error; codes follow errno (ENOSPC ->
// kResourceExhausted, ENOENT -> kNotFound, ...). WritableFile::Append writes all bytes or
// fails: short writes from the kernel are retried, EINTR is retried.
//
// Early writeback (WritableFileOptions::early_writeback_bytes): a file opened with it
// hands each completed region of that many bytes to the kernel for writeback as soon as
// appends complete it (Linux: sync_file_range(SYNC_FILE_RANGE_WRITE), which starts I/O
// and does not wait for it), so the disk works while later bytes are still being
// produced and the final Sync() has little left to flush. It changes when bytes reach
// the disk, never what is durable: only Sync() makes data durable.
//
// Threading: FileSystem implementations are thread-safe. A WritableFile or ReadableFile
// is used by one thread at a time (ReadableFile::ReadAt is safe concurrently: pread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::io {

struct WritableFileOptions {
  uint32_t mode = 0600;  // permission bits of the created file
  // 0: off. Otherwise the region size for early writeback (see above), rounded up to a
  // multiple of 4096. 8-32 MiB suits large sequential files.
  uint64_t early_writeback_bytes = 0;
};

// The byte range early writeback should start after an append: every whole region of
// `interval` bytes that ends at or before `appended` and after `started` (the end of
// what was handed over before), as one range; nullopt if there is none.
struct ByteRange {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const ByteRange&) const = default;
};
std::optional<ByteRange> NextWritebackRange(uint64_t started, uint64_t appended,
                                            uint64_t interval);

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
  // Creates (or truncates) path for writing. Implementations that wrap another
  // FileSystem pass the options through (add `using FileSystem::NewWritableFile;` so the
  // mode-only overload stays visible).
  virtual Result<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path, const WritableFileOptions& options) = 0;
  // Same, with default options and the given permission bits.
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path,
                                                        uint32_t mode = 0600) {
    return NewWritableFile(path, WritableFileOptions{.mode = mode});
  }
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
