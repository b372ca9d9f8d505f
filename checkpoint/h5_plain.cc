#include "checkpoint/h5_plain.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <new>

#include "checkpoint/h5_common.h"
#include "common/io.h"

namespace cairn::ckpt {
namespace {

using h5internal::H5Failure;
using h5internal::H5Handle;
using h5internal::H5Lock;
using h5internal::Plugins;

// deflate expands at most ~1032:1; chunked data claiming more than that relative to the
// file (or 64 MiB, for small sparse files) is refused rather than allocated.
constexpr uint64_t kMaxExpansion = 1032;
constexpr uint64_t kMinSparseLimit = 64ull << 20;

// Creates (or truncates) `path` with mode 0600 regardless of the umask.
Status CreatePrivateFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoError(errno, fmt::format("create {}", path));
  Status st = OkStatus();
  if (::fchmod(fd, 0600) != 0) st = ErrnoError(errno, fmt::format("chmod 0600 {}", path));
  ::close(fd);
  return st;
}

Status SyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, fmt::format("open {} to sync it", path));
  Status st = OkStatus();
  if (::fsync(fd) != 0) st = ErrnoError(errno, fmt::format("fsync {}", path));
  ::close(fd);
  return st;
}

Status WriteHdf5(const std::string& path, std::span<const TensorRef> tensors,
                 std::span<const BlobRef> blobs, const std::map<std::string, std::string>& attrs) {
  H5Lock lock;
  H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  if (!fapl.valid() || H5Pset_fapl_sec2(fapl.get()) < 0 ||
      H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) < 0 ||
      H5Pset_meta_block_size(fapl.get(), h5internal::MetadataBlockSize(tensors, blobs, attrs)) <
          0) {
    return H5Failure(Code::kInternal, "make the file access property list");
  }
  H5Handle file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()));
  if (!file.valid()) return H5Failure(Code::kUnavailable, fmt::format("create HDF5 file {}", path));
  CAIRN_RETURN_IF_ERROR(h5internal::PopulateFile(file.get(), tensors, blobs, attrs,
                                                 h5internal::DataMode::kWrite, nullptr, nullptr));
  if (H5Fclose(file.release()) < 0) {
    return H5Failure(Code::kUnavailable, fmt::format("close (flush) HDF5 file {}", path));
  }
  return OkStatus();
}

}  // namespace

Status WritePlainH5(const std::string& path, std::span<const TensorRef> tensors,
                    std::span<const BlobRef> blobs,
                    const std::map<std::string, std::string>& attrs) {
  const std::string frame = fmt::format("write plaintext HDF5 {}", path);
  CAIRN_RETURN_IF_ERROR_CTX(h5internal::ValidateContent(tensors, blobs, attrs), "{}", frame);
  const std::string tmp = path + ".tmp";
  CAIRN_RETURN_IF_ERROR_CTX(CreatePrivateFile(tmp), "{}", frame);
  Status st = WriteHdf5(tmp, tensors, blobs, attrs);
  if (st) st = SyncFile(tmp);
  io::FileSystem& fs = io::DefaultFileSystem();
  if (st) st = fs.Rename(tmp, path);
  if (!st) {
    ::unlink(tmp.c_str());
    return std::unexpected(std::move(st).error().With(frame));
  }
  CAIRN_RETURN_IF_ERROR_CTX(fs.SyncDir(io::DirName(path)), "{}", frame);
  return OkStatus();
}

Result<PlainH5Contents> ReadPlainH5(const std::string& path) {
  const std::string frame = fmt::format("read plaintext HDF5 {}", path);
  // Open it ourselves first so that a missing or unreadable file gets its errno code.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::unexpected(ErrnoError(errno, "open").error().With(frame));
  struct stat st {};
  const int rc = ::fstat(fd, &st);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return std::unexpected(ErrnoError(err, "stat").error().With(frame));
  if (!S_ISREG(st.st_mode)) {
    return MakeError(Code::kInvalidArgument, "{}: not a regular file", frame);
  }
  h5internal::CatalogLimits limits;
  limits.file_size = static_cast<uint64_t>(st.st_size);
  limits.sparse_max = std::max(kMinSparseLimit, limits.file_size > UINT64_MAX / kMaxExpansion
                                                    ? UINT64_MAX
                                                    : limits.file_size * kMaxExpansion);
  limits.corrupt = Code::kInvalidArgument;

  PlainH5Contents out;
  H5Lock lock(Plugins::kDefault);
  H5Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  if (!fapl.valid() || H5Pset_fapl_sec2(fapl.get()) < 0 ||
      H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG) < 0) {
    return std::unexpected(
        H5Failure(Code::kInternal, "make the file access property list").error().With(frame));
  }
  H5Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()));
  if (!file.valid()) {
    return std::unexpected(
        H5Failure(Code::kInvalidArgument, "not a readable HDF5 file").error().With(frame));
  }
  auto catalog = h5internal::ReadCatalog(file.get(), limits);
  if (!catalog) return std::unexpected(std::move(catalog).error().With(frame));
  try {
    for (const h5internal::DatasetEntry& e : catalog->tensors) {
      PlainTensor t{e.info, std::vector<std::byte>(e.info.size_bytes)};
      CAIRN_RETURN_IF_ERROR_CTX(h5internal::ReadEntry(file.get(), e, limits, t.data), "{}", frame);
      out.tensors.push_back(std::move(t));
    }
    for (const h5internal::DatasetEntry& e : catalog->blobs) {
      std::vector<std::byte> data(e.info.size_bytes);
      CAIRN_RETURN_IF_ERROR_CTX(h5internal::ReadEntry(file.get(), e, limits, data), "{}", frame);
      out.blobs.emplace_back(e.info.name, std::move(data));
    }
  } catch (const std::bad_alloc&) {
    return MakeError(Code::kResourceExhausted, "{}: out of memory", frame);
  }
  out.attrs = std::move(catalog->attrs);
  if (H5Fclose(file.release()) < 0) {
    return std::unexpected(H5Failure(Code::kInternal, "close").error().With(frame));
  }
  return out;
}

}  // namespace cairn::ckpt
