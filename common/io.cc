#include "common/io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <random>

namespace cairn::io {
namespace {

constexpr uint64_t kPageBytes = 4096;

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(int fd, std::string path, uint64_t writeback_interval)
      : fd_(fd), path_(std::move(path)), writeback_interval_(writeback_interval) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  Status Append(std::span<const std::byte> data) override {
    if (fd_ < 0) return MakeError(Code::kInternal, "write {}: file is closed", path_);
    const std::byte* p = data.data();
    std::size_t left = data.size();
    while (left > 0) {
      ssize_t n = ::write(fd_, p, std::min<std::size_t>(left, 1u << 30));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, fmt::format("write {}", path_));
      }
      if (n == 0) return MakeError(Code::kInternal, "write {}: wrote 0 bytes", path_);
      p += n;
      left -= static_cast<std::size_t>(n);
    }
    appended_ += data.size();
    if (auto range = NextWritebackRange(writeback_started_, appended_, writeback_interval_)) {
      return StartWriteback(*range);
    }
    return OkStatus();
  }

  Status Sync() override {
    if (fd_ < 0) return MakeError(Code::kInternal, "fsync {}: file is closed", path_);
    while (::fdatasync(fd_) != 0) {
      if (errno != EINTR) return ErrnoError(errno, fmt::format("fsync {}", path_));
    }
    return OkStatus();
  }

  Status Close() override {
    if (fd_ < 0) return OkStatus();
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0 && errno != EINTR) return ErrnoError(errno, fmt::format("close {}", path_));
    return OkStatus();
  }

  const std::string& path() const override { return path_; }

 private:
  // Starts writeback of `range` without waiting for it. Only an I/O error or a full disk
  // is reported; where the call is not supported (not Linux, not a regular file) early
  // writeback is switched off for this file and appends go on as plain buffered writes.
  Status StartWriteback(const ByteRange& range) {
    writeback_started_ = range.offset + range.length;
#ifdef __linux__
    if (::sync_file_range(fd_, static_cast<off64_t>(range.offset),
                          static_cast<off64_t>(range.length), SYNC_FILE_RANGE_WRITE) != 0) {
      const int err = errno;
      if (err == EIO || err == ENOSPC) {
        return ErrnoError(err, fmt::format("start writeback of {} at offset {}", path_,
                                           range.offset));
      }
      writeback_interval_ = 0;
    }
#else
    writeback_interval_ = 0;
#endif
    return OkStatus();
  }

  int fd_;
  std::string path_;
  uint64_t writeback_interval_;  // 0: early writeback off
  uint64_t appended_ = 0;
  uint64_t writeback_started_ = 0;  // bytes [0, this) were handed to writeback
};

class PosixReadableFile final : public ReadableFile {
 public:
  PosixReadableFile(int fd, std::string path, uint64_t size)
      : fd_(fd), path_(std::move(path)), size_(size) {}
  ~PosixReadableFile() override { ::close(fd_); }

  Result<std::size_t> ReadAt(uint64_t offset, std::span<std::byte> out) const override {
    std::size_t done = 0;
    while (done < out.size()) {
      ssize_t n = ::pread(fd_, out.data() + done, out.size() - done,
                          static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, fmt::format("read {} at offset {}", path_, offset + done));
      }
      if (n == 0) break;
      done += static_cast<std::size_t>(n);
    }
    return done;
  }
  uint64_t size() const override { return size_; }
  const std::string& path() const override { return path_; }

 private:
  int fd_;
  std::string path_;
  uint64_t size_;
};

class PosixFileSystem final : public FileSystem {
 public:
  Result<std::unique_ptr<WritableFile>> NewWritableFile(
      const std::string& path, const WritableFileOptions& options) override {
    const uint32_t mode = options.mode;
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return ErrnoError(errno, fmt::format("create {}", path));
    // O_CREAT does not change the mode of an existing file; make it exact.
    if (::fchmod(fd, mode) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoError(err, fmt::format("chmod {}", path));
    }
    const uint64_t want = std::min<uint64_t>(options.early_writeback_bytes, uint64_t{1} << 62);
    const uint64_t interval = (want + kPageBytes - 1) / kPageBytes * kPageBytes;
    return std::make_unique<PosixWritableFile>(fd, path, interval);
  }

  Result<std::unique_ptr<ReadableFile>> OpenReadable(const std::string& path) override {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(errno, fmt::format("open {}", path));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return ErrnoError(err, fmt::format("stat {}", path));
    }
    if (S_ISDIR(st.st_mode)) {
      ::close(fd);
      return MakeError(Code::kInvalidArgument, "open {}: is a directory", path);
    }
    return std::make_unique<PosixReadableFile>(fd, path, static_cast<uint64_t>(st.st_size));
  }

  Status Rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return ErrnoError(errno, fmt::format("rename {} -> {}", from, to));
    }
    return OkStatus();
  }

  Status SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(errno, fmt::format("open directory {}", dir));
    int rc;
    while ((rc = ::fsync(fd)) != 0 && errno == EINTR) {
    }
    int err = errno;
    ::close(fd);
    if (rc != 0) return ErrnoError(err, fmt::format("fsync directory {}", dir));
    return OkStatus();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return ErrnoError(errno, fmt::format("remove {}", path));
    return OkStatus();
  }

  Status RemoveDir(const std::string& path) override {
    if (::rmdir(path.c_str()) != 0) return ErrnoError(errno, fmt::format("remove directory {}", path));
    return OkStatus();
  }

  Status CreateDir(const std::string& path, uint32_t mode) override {
    if (::mkdir(path.c_str(), mode) == 0) return OkStatus();
    int err = errno;
    struct stat st {};
    if (err == EEXIST && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return OkStatus();
    return ErrnoError(err, fmt::format("create directory {}", path));
  }

  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoError(errno, fmt::format("list directory {}", dir));
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
      std::string_view n(e->d_name);
      if (n != "." && n != "..") names.emplace_back(n);
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return ErrnoError(err, fmt::format("list directory {}", dir));
    std::sort(names.begin(), names.end());
    return names;
  }

  Result<FileInfo> Stat(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return ErrnoError(errno, fmt::format("stat {}", path));
    return FileInfo{static_cast<uint64_t>(st.st_size), static_cast<uint32_t>(st.st_mode & 07777),
                    S_ISDIR(st.st_mode)};
  }
};

}  // namespace

std::optional<ByteRange> NextWritebackRange(uint64_t started, uint64_t appended,
                                            uint64_t interval) {
  if (interval == 0) return std::nullopt;
  const uint64_t end = appended / interval * interval;  // end of the last whole region
  if (end <= started) return std::nullopt;
  return ByteRange{started, end - started};
}

FileSystem& DefaultFileSystem() {
  static PosixFileSystem* fs = new PosixFileSystem();
  return *fs;
}

std::string DirName(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  if (a.back() == '/') return fmt::format("{}{}", a, b);
  return fmt::format("{}/{}", a, b);
}

std::string RandomSuffix() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{:016x}", rng());
}

Status WriteFileAtomic(FileSystem& fs, const std::string& path, std::string_view data,
                       uint32_t mode) {
  const std::string tmp = fmt::format("{}.tmp-{}", path, RandomSuffix());
  auto write = [&]() -> Status {
    CAIRN_ASSIGN_OR_RETURN(auto f, fs.NewWritableFile(tmp, mode));
    CAIRN_RETURN_IF_ERROR(f->Append(std::as_bytes(std::span(data.data(), data.size()))));
    CAIRN_RETURN_IF_ERROR(f->Sync());
    CAIRN_RETURN_IF_ERROR(f->Close());
    return fs.Rename(tmp, path);
  };
  if (auto st = write(); !st) {
    (void)fs.RemoveFile(tmp);
    return st;
  }
  return fs.SyncDir(DirName(path));
}

Status CreateDirs(FileSystem& fs, const std::string& path, uint32_t mode) {
  if (path.empty() || path == "/" || path == ".") return OkStatus();
  if (auto info = fs.Stat(path)) {
    if (info->is_dir) return OkStatus();
    return MakeError(Code::kFailedPrecondition, "{} exists and is not a directory", path);
  }
  const std::string parent = DirName(path);
  if (parent != path) CAIRN_RETURN_IF_ERROR(CreateDirs(fs, parent, mode));
  CAIRN_RETURN_IF_ERROR(fs.CreateDir(path, mode));
  return fs.SyncDir(parent);
}

Result<std::string> ReadWholeFile(FileSystem& fs, const std::string& path, uint64_t max_bytes) {
  CAIRN_ASSIGN_OR_RETURN(auto f, fs.OpenReadable(path));
  if (f->size() > max_bytes) {
    return MakeError(Code::kInvalidArgument, "{}: file is {} bytes, more than the {} allowed",
                     path, f->size(), max_bytes);
  }
  std::string out(f->size(), '\0');
  CAIRN_ASSIGN_OR_RETURN(std::size_t n,
                         f->ReadAt(0, std::as_writable_bytes(std::span(out.data(), out.size()))));
  out.resize(n);
  return out;
}

}  // namespace cairn::io
