#include "provenance/digest.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include "checkpoint/crypto.h"
#include "common/io.h"

namespace cairn::prov {
namespace {

constexpr std::string_view kCacheFileName = "input-digests.v1";
constexpr std::string_view kCacheHeader = "cairn input digest cache v1\n";
constexpr uint64_t kMaxCacheFileBytes = 512ull << 20;
constexpr int kHashAttempts = 3;

// What the cache compares: a file whose stat still shows all of these has not been
// written since it was hashed (see the header for the racy-timestamp rule).
struct FileKey {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t ino = 0;
  uint64_t dev = 0;
  bool operator==(const FileKey&) const = default;
};

int64_t Nanos(const struct timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

FileKey KeyOf(const struct stat& st) {
  return FileKey{static_cast<uint64_t>(st.st_size), Nanos(st.st_mtim), Nanos(st.st_ctim),
                 static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_dev)};
}

int64_t NowRealtimeNs() {
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return Nanos(ts);
}

std::string_view FileTypeName(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file or directory";
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

struct Hashed {
  Digest digest{};
  FileKey key;
  int64_t started_ns = 0;  // realtime clock when reading began
};

// Hashes one regular file, checking that it did not change while being read.
Result<Hashed> HashOne(const std::string& path, std::span<std::byte> buf, ckpt::Sha256& h) {
  for (int attempt = 0; attempt < kHashAttempts; ++attempt) {
    // O_NONBLOCK: a FIFO swapped in after the walk must not block us before the type check.
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (fd.get() < 0) {
      const int err = errno;
      if (err == ENOENT) return MakeError(Code::kNotFound, "{} does not exist", path);
      return ErrnoError(err, fmt::format("open {}", path));
    }
    struct stat before;
    if (::fstat(fd.get(), &before) != 0) return ErrnoError(errno, fmt::format("stat {}", path));
    if (!S_ISREG(before.st_mode)) {
      return MakeError(Code::kInvalidArgument, "{} is {}; inputs hash regular files only", path,
                       FileTypeName(before.st_mode));
    }
    ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    Hashed out;
    out.started_ns = NowRealtimeNs();
    uint64_t total = 0;
    while (true) {
      const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError(errno, fmt::format("read {}", path));
      }
      if (n == 0) break;
      h.Update(buf.first(static_cast<std::size_t>(n)));
      total += static_cast<uint64_t>(n);
    }
    out.digest = h.Finish();
    struct stat after;
    if (::fstat(fd.get(), &after) != 0) return ErrnoError(errno, fmt::format("stat {}", path));
    out.key = KeyOf(before);
    if (KeyOf(after) == out.key && total == out.key.size) return out;
  }
  return MakeError(Code::kUnavailable, "{} kept changing while it was hashed ({} tries)", path,
                   kHashAttempts);
}

// "<hex>  <name>\n" as sha256sum writes it, escaping '\\', '\n' and '\r'.
void AppendManifestLine(const FileDigest& f, std::string* out) {
  const bool escape = f.path.find_first_of("\\\n\r") != std::string::npos;
  if (escape) out->push_back('\\');
  out->append(ckpt::ToHex(f.sha256));
  out->append("  ");
  for (char c : f.path) {
    if (escape && c == '\\') {
      out->append("\\\\");
    } else if (escape && c == '\n') {
      out->append("\\n");
    } else if (escape && c == '\r') {
      out->append("\\r");
    } else {
      out->push_back(c);
    }
  }
  out->push_back('\n');
}

// --- the walk --------------------------------------------------------------------------

struct WalkEntry {
  std::string rel;  // relative to the root
  std::string abs;  // the path it is opened by (through links, if any)
  FileKey key;
};

struct DirId {
  uint64_t dev, ino;
  bool operator==(const DirId&) const = default;
};

class Walker {
 public:
  Walker(std::string root_real, std::vector<WalkEntry>* out)
      : root_(std::move(root_real)), out_(out) {}

  Status Walk(const std::string& dir, const std::string& rel_prefix, const struct stat& dir_st) {
    ancestors_.push_back(
        {static_cast<uint64_t>(dir_st.st_dev), static_cast<uint64_t>(dir_st.st_ino)});
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoError(errno, fmt::format("open directory {}", dir));
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* e = ::readdir(d)) {
      const std::string_view name(e->d_name);
      if (name != "." && name != "..") names.emplace_back(name);
    }
    const int read_err = errno;
    ::closedir(d);
    if (read_err != 0) return ErrnoError(read_err, fmt::format("read directory {}", dir));
    for (const std::string& name : names) {
      const std::string abs = dir == "/" ? "/" + name : dir + "/" + name;
      const std::string rel = rel_prefix.empty() ? name : rel_prefix + "/" + name;
      CAIRN_RETURN_IF_ERROR(Visit(abs, rel));
    }
    ancestors_.pop_back();
    return OkStatus();
  }

 private:
  Status Visit(const std::string& abs, const std::string& rel) {
    struct stat st;
    if (::lstat(abs.c_str(), &st) != 0) return ErrnoError(errno, fmt::format("stat {}", abs));
    if (S_ISLNK(st.st_mode)) {
      char resolved[PATH_MAX];
      if (::realpath(abs.c_str(), resolved) == nullptr) {
        const int err = errno;
        if (err == ENOENT) {
          return MakeError(Code::kInvalidArgument, "symbolic link {} dangles", abs);
        }
        if (err == ELOOP) {
          return MakeError(Code::kInvalidArgument, "symbolic link {} loops", abs);
        }
        return ErrnoError(err, fmt::format("resolve symbolic link {}", abs));
      }
      const std::string_view target(resolved);
      const bool inside = root_ == "/" || target == root_ ||
                          (target.starts_with(root_) && target[root_.size()] == '/');
      if (!inside) {
        return MakeError(Code::kInvalidArgument,
                         "symbolic link {} points to {}, outside the input {}; inputs must not "
                         "depend on files outside them (copy the target in or name it as an "
                         "input of its own)",
                         abs, target, root_);
      }
      if (::stat(abs.c_str(), &st) != 0) return ErrnoError(errno, fmt::format("stat {}", abs));
    }
    if (S_ISDIR(st.st_mode)) {
      const DirId id{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
      if (std::find(ancestors_.begin(), ancestors_.end(), id) != ancestors_.end()) {
        return MakeError(Code::kInvalidArgument,
                         "symbolic link {} leads back to a directory above it (a cycle)", abs);
      }
      return Walk(abs, rel, st);
    }
    if (S_ISREG(st.st_mode)) {
      out_->push_back(WalkEntry{rel, abs, KeyOf(st)});
      return OkStatus();
    }
    return MakeError(Code::kInvalidArgument, "{} is {}; inputs hash regular files only", abs,
                     FileTypeName(st.st_mode));
  }

  std::string root_;
  std::vector<WalkEntry>* out_;
  std::vector<DirId> ancestors_;
};

// The files of one input: a directory walked, or a single file.
struct Input {
  std::string path;
  bool is_dir = false;
  std::vector<WalkEntry> entries;  // sorted by rel
  std::vector<std::size_t> task;   // per entry: index into the hash tasks, or npos
  std::vector<Digest> digests;     // per entry
};

Status Collect(const std::string& path, Input* in) {
  in->path = path;
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) {
    const int err = errno;
    if (err == ENOENT) return MakeError(Code::kNotFound, "input {} does not exist", path);
    return ErrnoError(err, fmt::format("resolve input {}", path));
  }
  const std::string root(resolved);
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) return ErrnoError(errno, fmt::format("stat {}", root));
  if (S_ISREG(st.st_mode)) {
    const std::size_t slash = root.rfind('/');
    in->entries.push_back(WalkEntry{root.substr(slash + 1), root, KeyOf(st)});
    return OkStatus();
  }
  if (!S_ISDIR(st.st_mode)) {
    return MakeError(Code::kInvalidArgument, "input {} is {}; an input is a file or a directory",
                     path, FileTypeName(st.st_mode));
  }
  in->is_dir = true;
  Walker walker(root, &in->entries);
  CAIRN_RETURN_IF_ERROR(walker.Walk(root, "", st));
  std::sort(in->entries.begin(), in->entries.end(),
            [](const WalkEntry& a, const WalkEntry& b) { return a.rel < b.rel; });
  return OkStatus();
}

// --- the cache file ----------------------------------------------------------------------

// '%', control characters and DEL as %XX; the path is the last field of its line.
std::string EscapePath(std::string_view p) {
  std::string out;
  out.reserve(p.size());
  for (unsigned char c : p) {
    if (c == '%' || c < 0x20 || c == 0x7f) {
      out += fmt::format("%{:02X}", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::optional<std::string> UnescapePath(std::string_view p) {
  std::string out;
  out.reserve(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] != '%') {
      out.push_back(p[i]);
      continue;
    }
    unsigned v = 0;
    if (i + 2 >= p.size()) return std::nullopt;
    const auto r = std::from_chars(p.data() + i + 1, p.data() + i + 3, v, 16);
    if (r.ec != std::errc() || r.ptr != p.data() + i + 3) return std::nullopt;
    out.push_back(static_cast<char>(v));
    i += 2;
  }
  return out;
}

template <typename T>
bool ParseField(std::string_view* line, T* v) {
  const std::size_t sp = line->find(' ');
  if (sp == std::string_view::npos) return false;
  const auto r = std::from_chars(line->data(), line->data() + sp, *v);
  if (r.ec != std::errc() || r.ptr != line->data() + sp) return false;
  line->remove_prefix(sp + 1);
  return true;
}

struct CacheEntry {
  FileKey key;
  Digest digest{};
  bool used = false;  // looked up or stored by this hasher
};

using CacheMap = std::unordered_map<std::string, CacheEntry>;

// Parses a cache file; an error message says why it cannot be used.
Result<CacheMap> ParseCache(std::string_view text) {
  if (!text.starts_with(kCacheHeader)) {
    return MakeError(Code::kDataLoss, "not a cache file of this version");
  }
  // The last line: "end <hex SHA-256 of everything before it>\n".
  if (text.size() < kCacheHeader.size() + 69 || text.back() != '\n') {
    return MakeError(Code::kDataLoss, "truncated");
  }
  const std::size_t end_at = text.size() - 69;
  const std::string_view trailer = text.substr(end_at);
  if (!trailer.starts_with("end ")) return MakeError(Code::kDataLoss, "truncated");
  const std::string_view body = text.substr(0, end_at);
  const Digest want = ckpt::Sha256Of(std::as_bytes(std::span(body.data(), body.size())));
  if (ckpt::ToHex(want) != trailer.substr(4, 64)) {
    return MakeError(Code::kDataLoss, "checksum mismatch");
  }
  CacheMap map;
  std::string_view rest = body.substr(kCacheHeader.size());
  std::size_t line_no = 1;
  while (!rest.empty()) {
    ++line_no;
    const std::size_t nl = rest.find('\n');
    if (nl == std::string_view::npos) return MakeError(Code::kDataLoss, "line {}: no end", line_no);
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl + 1);
    CacheEntry e;
    if (line.size() < 65 || line[64] != ' ') {
      return MakeError(Code::kDataLoss, "line {}: malformed", line_no);
    }
    auto digest = ckpt::DigestFromHex(line.substr(0, 64));
    if (!digest) return MakeError(Code::kDataLoss, "line {}: malformed digest", line_no);
    e.digest = *digest;
    line.remove_prefix(65);
    if (!ParseField(&line, &e.key.size) || !ParseField(&line, &e.key.mtime_ns) ||
        !ParseField(&line, &e.key.ctime_ns) || !ParseField(&line, &e.key.ino) ||
        !ParseField(&line, &e.key.dev)) {
      return MakeError(Code::kDataLoss, "line {}: malformed key", line_no);
    }
    auto path = UnescapePath(line);
    if (!path || path->empty() || path->front() != '/') {
      return MakeError(Code::kDataLoss, "line {}: malformed path", line_no);
    }
    map[std::move(*path)] = e;
  }
  return map;
}

std::string SerializeCache(const CacheMap& map) {
  std::vector<const CacheMap::value_type*> sorted;
  sorted.reserve(map.size());
  for (const auto& kv : map) sorted.push_back(&kv);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->first < b->first; });
  std::string out(kCacheHeader);
  for (const auto* kv : sorted) {
    const CacheEntry& e = kv->second;
    out += fmt::format("{} {} {} {} {} {} {}\n", ckpt::ToHex(e.digest), e.key.size, e.key.mtime_ns,
                       e.key.ctime_ns, e.key.ino, e.key.dev, EscapePath(kv->first));
  }
  const Digest sum = ckpt::Sha256Of(std::as_bytes(std::span(out.data(), out.size())));
  out += "end " + ckpt::ToHex(sum) + "\n";
  return out;
}

}  // namespace

// --- public ------------------------------------------------------------------------------

Result<Digest> Sha256File(const std::string& path, std::size_t read_bytes) {
  std::vector<std::byte> buf(std::max<std::size_t>(read_bytes, 4096));
  ckpt::Sha256 h;
  CAIRN_ASSIGN_OR_RETURN(Hashed out, HashOne(path, buf, h));
  return out.digest;
}

std::string FormatManifest(std::span<const FileDigest> files) {
  std::string out;
  out.reserve(files.size() * 96);
  for (const auto& f : files) AppendManifestLine(f, &out);
  return out;
}

struct InputHasher::State {
  HashOptions options;
  HashStats stats;
  CacheMap cache;
  bool dirty = false;
};

InputHasher::InputHasher(HashOptions options) : state_(std::make_unique<State>()) {
  state_->options = std::move(options);
  HashStats& stats = state_->stats;
  if (state_->options.cache_dir.empty()) {
    stats.cache_status = "no cache";
    return;
  }
  const std::string file = io::JoinPath(state_->options.cache_dir, kCacheFileName);
  auto text = io::ReadWholeFile(io::DefaultFileSystem(), file, kMaxCacheFileBytes);
  if (!text) {
    stats.cache_status = text.error().code() == Code::kNotFound
                             ? "no cache file yet"
                             : fmt::format("ignored {}: {}", file, text.error().ToString());
    return;
  }
  auto parsed = ParseCache(*text);
  if (!parsed) {
    stats.cache_status = fmt::format("ignored {}: {}", file, parsed.error().message());
    state_->dirty = true;  // replace the bad file even if nothing new is hashed
    return;
  }
  state_->cache = std::move(*parsed);
  stats.cache_entries_loaded = state_->cache.size();
  stats.cache_status = fmt::format("loaded {} entries", state_->cache.size());
}

InputHasher::~InputHasher() = default;
InputHasher::InputHasher(InputHasher&&) noexcept = default;
InputHasher& InputHasher::operator=(InputHasher&&) noexcept = default;

const HashStats& InputHasher::stats() const { return state_->stats; }

Result<TreeDigest> InputHasher::Hash(const std::string& path) {
  CAIRN_ASSIGN_OR_RETURN(std::vector<TreeDigest> all, HashAll(std::span(&path, 1)));
  return std::move(all.front());
}

Result<std::vector<TreeDigest>> InputHasher::HashAll(std::span<const std::string> paths) {
  State& s = *state_;
  const bool use_cache = !s.options.cache_dir.empty();
  std::vector<Input> inputs(paths.size());
  for (std::size_t i = 0; i < paths.size(); ++i) {
    CAIRN_RETURN_IF_ERROR(Collect(paths[i], &inputs[i]));
  }

  // Cache lookups; the rest become tasks (one per distinct file).
  struct Task {
    const WalkEntry* entry;
    std::optional<Result<Hashed>> result;
  };
  std::vector<Task> tasks;
  std::unordered_map<std::string, std::size_t> task_of_path;
  constexpr std::size_t kNoTask = static_cast<std::size_t>(-1);
  for (Input& in : inputs) {
    in.task.assign(in.entries.size(), kNoTask);
    in.digests.resize(in.entries.size());
    for (std::size_t j = 0; j < in.entries.size(); ++j) {
      const WalkEntry& e = in.entries[j];
      ++s.stats.files;
      if (use_cache) {
        auto it = s.cache.find(e.abs);
        if (it != s.cache.end() && it->second.key == e.key) {
          it->second.used = true;
          in.digests[j] = it->second.digest;
          ++s.stats.files_cached;
          s.stats.bytes_cached += e.key.size;
          continue;
        }
      }
      auto [it, fresh] = task_of_path.emplace(e.abs, tasks.size());
      if (fresh) tasks.push_back(Task{&e, std::nullopt});
      in.task[j] = it->second;
    }
  }

  // Largest files first, so that no worker is left with one big file at the end.
  std::vector<std::size_t> order(tasks.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return tasks[a].entry->key.size > tasks[b].entry->key.size;
  });
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  const std::size_t read_bytes = std::max<std::size_t>(s.options.read_bytes, 4096);
  auto work = [&] {
    std::vector<std::byte> buf(read_bytes);
    ckpt::Sha256 h;
    while (!failed.load(std::memory_order_relaxed)) {
      const std::size_t k = next.fetch_add(1);
      if (k >= order.size()) break;
      Task& t = tasks[order[k]];
      t.result = HashOne(t.entry->abs, buf, h);
      if (!*t.result) failed.store(true);
    }
  };
  unsigned threads = s.options.threads != 0 ? s.options.threads
                                            : std::max(1u, std::thread::hardware_concurrency());
  const std::size_t workers = std::min<std::size_t>(threads, tasks.size());
  if (workers == 1) {
    work();
  } else if (workers > 1) {
    std::vector<std::jthread> pool;
    pool.reserve(workers);
    for (std::size_t i = 0; i < workers; ++i) pool.emplace_back(work);
  }
  for (const Task& t : tasks) {  // in walk order: the first failing file by path
    if (t.result && !*t.result) return std::unexpected(t.result->error());
  }

  for (const Task& t : tasks) {
    const Hashed& h = **t.result;
    ++s.stats.files_hashed;
    s.stats.bytes_hashed += h.key.size;
    if (!use_cache) continue;
    const int64_t newest = std::max(h.key.mtime_ns, h.key.ctime_ns);
    const bool racy = newest > h.started_ns - s.options.racy_window.count();
    if (racy) {
      // A stale entry under the same path must not survive either.
      if (s.cache.erase(t.entry->abs) > 0) s.dirty = true;
      continue;
    }
    s.cache[t.entry->abs] = CacheEntry{h.key, h.digest, true};
    s.dirty = true;
  }

  std::vector<TreeDigest> out;
  out.reserve(inputs.size());
  for (Input& in : inputs) {
    TreeDigest td;
    td.path = in.path;
    td.is_dir = in.is_dir;
    td.files.reserve(in.entries.size());
    for (std::size_t j = 0; j < in.entries.size(); ++j) {
      uint64_t size = in.entries[j].key.size;
      if (in.task[j] != kNoTask) {  // what was read, should the file have changed since the walk
        const Hashed& h = **tasks[in.task[j]].result;
        in.digests[j] = h.digest;
        size = h.key.size;
      }
      td.files.push_back(FileDigest{in.entries[j].rel, size, in.digests[j]});
      td.size_bytes += size;
    }
    if (in.is_dir) {
      const std::string manifest = FormatManifest(td.files);
      td.sha256 = ckpt::Sha256Of(std::as_bytes(std::span(manifest.data(), manifest.size())));
    } else {
      td.sha256 = td.files.front().sha256;
    }
    out.push_back(std::move(td));
  }
  return out;
}

Status InputHasher::SaveCache() {
  State& s = *state_;
  if (s.options.cache_dir.empty() || !s.dirty) return OkStatus();
  if (s.cache.size() > s.options.max_cache_entries) {
    for (auto it = s.cache.begin();
         it != s.cache.end() && s.cache.size() > s.options.max_cache_entries;) {
      it = it->second.used ? std::next(it) : s.cache.erase(it);
    }
  }
  io::FileSystem& fs = io::DefaultFileSystem();
  CAIRN_RETURN_IF_ERROR_CTX(io::CreateDirs(fs, s.options.cache_dir), "create digest cache dir");
  const std::string file = io::JoinPath(s.options.cache_dir, kCacheFileName);
  CAIRN_RETURN_IF_ERROR_CTX(io::WriteFileAtomic(fs, file, SerializeCache(s.cache), 0600),
                            "write digest cache {}", file);
  s.dirty = false;
  return OkStatus();
}

}  // namespace cairn::prov
