#include "examples/fmnist/idx.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>

#include "checkpoint/crypto.h"
#include "common/io.h"

namespace cairn::fmnist {
namespace {

// Reads the whole (possibly gzip-compressed) file.
Result<std::vector<uint8_t>> ReadMaybeGzip(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return MakeError(Code::kNotFound, "{}: no such file", path);
  }
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return ErrnoError(errno, path);
  gzbuffer(f, 1 << 20);
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int zerr = 0;
      std::string msg = gzerror(f, &zerr);
      gzclose(f);
      return MakeError(Code::kInvalidArgument, "{}: corrupt gzip data: {}", path, msg);
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
    if (out.size() > (uint64_t{1} << 31)) {
      gzclose(f);
      return MakeError(Code::kInvalidArgument, "{}: larger than 2 GiB, not a Fashion-MNIST file",
                       path);
    }
  }
  int zerr = 0;
  const char* msg = gzerror(f, &zerr);
  if (zerr != Z_OK && zerr != Z_STREAM_END) {
    std::string m = msg;
    gzclose(f);
    return MakeError(Code::kInvalidArgument, "{}: corrupt or truncated gzip data: {}", path, m);
  }
  gzclose(f);
  return out;
}

// Cache entry: header then the decompressed bytes.
struct CacheHeader {
  char magic[8];  // "CRNRAW01"
  uint64_t source_size;
  int64_t source_mtime_ns;
  uint64_t source_dev;
  uint64_t source_ino;
  uint64_t payload_size;
  uint8_t payload_sha256[32];
};
constexpr char kCacheMagic[8] = {'C', 'R', 'N', 'R', 'A', 'W', '0', '1'};

struct SourceId {
  std::string abs_path;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t dev = 0;
  uint64_t ino = 0;
};

std::optional<SourceId> Identify(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
  std::error_code ec;
  SourceId id;
  id.abs_path = std::filesystem::absolute(path, ec).lexically_normal().string();
  id.size = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  id.dev = st.st_dev;
  id.ino = st.st_ino;
  return id;
}

std::string CachePath(const std::string& dir, const SourceId& id) {
  auto digest = ckpt::Sha256Of(std::as_bytes(std::span(id.abs_path)));
  const std::string name = std::filesystem::path(id.abs_path).filename().string();
  return dir + "/" + name + "." + ckpt::ToHex(std::span(digest).first(8)) + ".raw";
}

bool ReadFull(int fd, void* buf, std::size_t n) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// The cached bytes of `id`, if the entry is present, matches the source and hashes right.
std::optional<std::vector<uint8_t>> CacheGet(const std::string& entry, const SourceId& id) {
  int fd = ::open(entry.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  CacheHeader h{};
  std::optional<std::vector<uint8_t>> out;
  if (ReadFull(fd, &h, sizeof h) && std::memcmp(h.magic, kCacheMagic, 8) == 0 &&
      h.source_size == id.size && h.source_mtime_ns == id.mtime_ns && h.source_dev == id.dev &&
      h.source_ino == id.ino && h.payload_size <= (uint64_t{1} << 31)) {
    std::vector<uint8_t> bytes(h.payload_size);
    uint8_t extra = 0;
    if (ReadFull(fd, bytes.data(), bytes.size()) && ::read(fd, &extra, 1) == 0) {
      auto digest = ckpt::Sha256Of(std::as_bytes(std::span(bytes)));
      if (std::memcmp(digest.data(), h.payload_sha256, 32) == 0) out = std::move(bytes);
    }
  }
  ::close(fd);
  return out;
}

// Best effort: a cache that cannot be written only costs speed.
void CachePut(const std::string& dir, const std::string& entry, const SourceId& id,
              const std::vector<uint8_t>& bytes) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  CacheHeader h{};
  std::memcpy(h.magic, kCacheMagic, 8);
  h.source_size = id.size;
  h.source_mtime_ns = id.mtime_ns;
  h.source_dev = id.dev;
  h.source_ino = id.ino;
  h.payload_size = bytes.size();
  auto digest = ckpt::Sha256Of(std::as_bytes(std::span(bytes)));
  std::memcpy(h.payload_sha256, digest.data(), 32);
  const std::string tmp = entry + ".tmp-" + io::RandomSuffix();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return;
  auto write_all = [&](const void* p, std::size_t n) {
    const auto* c = static_cast<const char*>(p);
    while (n > 0) {
      ssize_t w = ::write(fd, c, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      c += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  };
  const bool ok = write_all(&h, sizeof h) && write_all(bytes.data(), bytes.size());
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), entry.c_str()) != 0) ::unlink(tmp.c_str());
}

// ReadMaybeGzip through the cache (only .gz sources are cached).
Result<std::vector<uint8_t>> ReadCached(const std::string& path, DataCache* cache) {
  if (cache == nullptr || cache->dir.empty() || !path.ends_with(".gz")) return ReadMaybeGzip(path);
  auto id = Identify(path);
  if (!id) return ReadMaybeGzip(path);  // names the problem
  const std::string entry = CachePath(cache->dir, *id);
  if (auto hit = CacheGet(entry, *id)) {
    ++cache->hits;
    return std::move(*hit);
  }
  ++cache->misses;
  CAIRN_ASSIGN_OR_RETURN(auto bytes, ReadMaybeGzip(path));
  if (cache->write) CachePut(cache->dir, entry, *id, bytes);
  return bytes;
}

uint32_t BigEndian32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

}  // namespace

Result<Split> LoadSplit(const std::string& images_path, const std::string& labels_path,
                        DataCache* cache) {
  CAIRN_ASSIGN_OR_RETURN(auto img, ReadCached(images_path, cache));
  CAIRN_ASSIGN_OR_RETURN(auto lab, ReadCached(labels_path, cache));
  if (img.size() < 16) {
    return MakeError(Code::kInvalidArgument, "{}: truncated IDX header ({} bytes, need 16)",
                     images_path, img.size());
  }
  if (uint32_t magic = BigEndian32(img.data()); magic != 0x00000803) {
    return MakeError(Code::kInvalidArgument,
                     "{}: wrong magic 0x{:08x} (IDX images of unsigned bytes have 0x00000803)",
                     images_path, magic);
  }
  const uint32_t count = BigEndian32(img.data() + 4);
  const uint32_t rows = BigEndian32(img.data() + 8);
  const uint32_t cols = BigEndian32(img.data() + 12);
  if (rows != kRows || cols != kCols) {
    return MakeError(Code::kInvalidArgument, "{}: images are {}x{}, expected {}x{}",
                     images_path, rows, cols, kRows, kCols);
  }
  const uint64_t want = 16 + uint64_t{count} * kPixels;
  if (img.size() != want) {
    return MakeError(Code::kInvalidArgument,
                     "{}: {} for {} images: {} bytes, expected {}", images_path,
                     img.size() < want ? "truncated" : "trailing bytes", count, img.size(), want);
  }
  if (lab.size() < 8) {
    return MakeError(Code::kInvalidArgument, "{}: truncated IDX header ({} bytes, need 8)",
                     labels_path, lab.size());
  }
  if (uint32_t magic = BigEndian32(lab.data()); magic != 0x00000801) {
    return MakeError(Code::kInvalidArgument,
                     "{}: wrong magic 0x{:08x} (IDX labels have 0x00000801)", labels_path,
                     magic);
  }
  const uint32_t nlabels = BigEndian32(lab.data() + 4);
  if (nlabels != count) {
    return MakeError(Code::kInvalidArgument, "{}: {} labels, but {} has {} images", labels_path,
                     nlabels, images_path, count);
  }
  if (lab.size() != 8 + uint64_t{count}) {
    return MakeError(Code::kInvalidArgument, "{}: {} for {} labels: {} bytes, expected {}",
                     labels_path, lab.size() < 8 + uint64_t{count} ? "truncated" : "trailing bytes",
                     count, lab.size(), 8 + uint64_t{count});
  }
  Split s;
  s.count = count;
  s.labels.assign(lab.begin() + 8, lab.end());
  for (uint32_t i = 0; i < count; ++i) {
    if (s.labels[i] >= kClasses) {
      return MakeError(Code::kInvalidArgument, "{}: label {} at index {} is out of range 0..{}",
                       labels_path, s.labels[i], i, kClasses - 1);
    }
  }
  img.erase(img.begin(), img.begin() + 16);
  s.pixels = std::move(img);
  return s;
}

std::string DefaultDataCacheDir() {
  if (const char* c = std::getenv("CAIRN_DATA_CACHE")) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != 0) {
    return std::string(x) + "/cairn/datasets";
  }
  if (const char* h = std::getenv("HOME"); h != nullptr && *h != 0) {
    return std::string(h) + "/.cache/cairn/datasets";
  }
  return "";
}

Result<Dataset> LoadDataset(const std::string& dir, DataCache* cache) {
  auto pick = [&](const std::string& stem) {
    std::string gz = dir + "/" + stem + ".gz";
    std::error_code ec;
    if (std::filesystem::exists(gz, ec)) return gz;
    std::string plain = dir + "/" + stem;
    return std::filesystem::exists(plain, ec) ? plain : gz;
  };
  Dataset d;
  CAIRN_ASSIGN_OR_RETURN(d.train,
                         LoadSplit(pick("train-images-idx3-ubyte"), pick("train-labels-idx1-ubyte"),
                                   cache));
  CAIRN_ASSIGN_OR_RETURN(d.test,
                         LoadSplit(pick("t10k-images-idx3-ubyte"), pick("t10k-labels-idx1-ubyte"),
                                   cache));
  if (d.train.count == 0 || d.test.count == 0) {
    return MakeError(Code::kInvalidArgument, "{}: the training or test set is empty", dir);
  }
  return d;
}

}  // namespace cairn::fmnist
