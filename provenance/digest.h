// Input hashing: SHA-256 of data and model inputs (files and directory trees), spread over
// the cores, with a cache that spares a re-run from rehashing unchanged files.
//
// Promise:
//  - A file's digest is the SHA-256 of its bytes: what `sha256sum FILE` prints.
//  - A directory's digest is the SHA-256 of its manifest: one line per regular file under
//    it, "<hex sha256>  <path relative to the directory>\n", sorted by the relative path's
//    bytes. That is exactly what `sha256sum` prints for those files in that order, names
//    with '\\', '\n' or '\r' included (the line then starts with '\\' and those characters
//    are written "\\\\", "\\n", "\\r"), so
//      cd DIR && find -L . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum
//    prints the manifest. Empty directories do not appear in it (as in git).
//  - Symbolic links inside a tree are followed when their fully resolved target lies inside
//    the tree: a link to a file counts as that file's bytes under the link's own path, a
//    link to a directory is walked under the link's path. A link that leaves the tree,
//    dangles or closes a cycle is an error (kInvalidArgument) naming the link: an input
//    must not silently depend on files outside it. A root given as a link is resolved
//    first. FIFOs, sockets and devices are errors naming them, never opened.
//  - Errors name the file: a missing input is kNotFound, an unreadable one follows errno
//    (kPermissionDenied, ...), a file that changes while it is hashed (its size, mtime or
//    ctime differs after the read, three times in a row) is kUnavailable.
//  - Files are hashed in parallel, largest first, on `threads` worker threads (default:
//    the number of cores); SHA-256 itself is sequential, so one large file uses one core.
//  - The cache (when HashOptions::cache_dir is set) maps a file's absolute path to its
//    digest under a key of (size, mtime ns, ctime ns, inode, device). An entry is used only
//    when every part of the key matches the file's stat, so any write (which moves mtime
//    and ctime), a `touch`, a replacement by rename (another inode) or a copy elsewhere
//    means a rehash. A file whose mtime or ctime is less than `racy_window` older than the
//    moment it was hashed (or lies in the future) is not cached: a write landing in the
//    same timestamp tick could otherwise leave its key unchanged. The cache is one file,
//    <cache_dir>/input-digests.v1, ending with a SHA-256 of its contents, replaced
//    atomically (temp file, fsync, rename) and only when something changed. A missing, truncated,
//    corrupt or foreign cache file is ignored and rebuilt; HashStats::cache_status says what
//    happened.
//
// Threading: an InputHasher is used by one thread at a time; it runs its own worker threads
// inside Hash/HashAll and joins them before returning. Free functions are thread-safe.
// Two processes may share a cache directory: each replaces the file whole, so the last
// writer's entries win and the other's are recomputed next time; neither corrupts it.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/types.h"
#include "common/status.h"

namespace cairn::prov {

using ckpt::Digest;

// SHA-256 of a file's bytes, read sequentially in `read_bytes` pieces. Errors name the path.
Result<Digest> Sha256File(const std::string& path, std::size_t read_bytes = 1 << 20);

struct FileDigest {
  std::string path;  // relative to the tree's root; for a file input, its file name
  uint64_t size = 0;
  Digest sha256{};
};

struct TreeDigest {
  std::string path;  // the input as given
  bool is_dir = false;
  Digest sha256{};                // the file's digest, or the SHA-256 of the directory's manifest
  uint64_t size_bytes = 0;        // sum of the files' sizes
  std::vector<FileDigest> files;  // sorted by path bytes
};

// The manifest text of a directory (see above) for files sorted by path.
std::string FormatManifest(std::span<const FileDigest> files);

struct HashOptions {
  std::string cache_dir;  // empty: no cache
  unsigned threads = 0;   // 0: std::thread::hardware_concurrency()
  std::size_t read_bytes = 1 << 20;
  std::chrono::nanoseconds racy_window = std::chrono::seconds(2);
  std::size_t max_cache_entries = 1'000'000;  // beyond this, entries unused by this
                                              // hasher are dropped when saving
};

struct HashStats {
  uint64_t files = 0;         // regular files seen
  uint64_t files_hashed = 0;  // read and hashed
  uint64_t files_cached = 0;  // taken from the cache
  uint64_t bytes_hashed = 0;
  uint64_t bytes_cached = 0;
  uint64_t cache_entries_loaded = 0;
  // "no cache", "no cache file yet", "loaded N entries", or "ignored <file>: <why>".
  std::string cache_status;
};

class InputHasher {
 public:
  // Loads the cache file, if any; never fails (an unusable cache is ignored and noted).
  explicit InputHasher(HashOptions options = {});
  ~InputHasher();
  InputHasher(InputHasher&&) noexcept;
  InputHasher& operator=(InputHasher&&) noexcept;

  // Digest of one input (file or directory).
  Result<TreeDigest> Hash(const std::string& path);
  // Digests of several inputs, in the given order; all their files share the workers.
  Result<std::vector<TreeDigest>> HashAll(std::span<const std::string> paths);

  // Writes the cache file if anything changed since it was loaded; a no-op without a
  // cache_dir. Creates cache_dir (0700) if needed.
  Status SaveCache();

  const HashStats& stats() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace cairn::prov
