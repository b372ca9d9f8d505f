// ckpt_bench: cairn checkpoint speed against same-process baselines.
//
// Every target is a ratio against a baseline measured in the same process, interleaved
// round by round (A/B/A/B...), medians over --rounds rounds; fsync is included on both
// sides of every write. Nothing here is a timed assertion: the program prints a markdown
// table (and the raw per-round numbers) and exits 0 unless something failed outright.
//
// State: 256 f32 tensors per size (1 GiB -> 4 MiB each, 64 MiB -> 256 KiB each), filled
// once from a xorshift PRNG before any timing.
//
// Cases (--only picks some, comma-separated):
//   write      CheckpointWriter::Save (AES-256-GCM, chained, chunk 1 MiB, 2 encrypt
//              threads, early writeback of shard files every 8 MiB, keep_last 2) vs raw
//              open(O_CREAT|O_TRUNC) + write() per tensor + fdatasync + close + fsync dir.
//              Every save queues a retention prune (unlink of the shard two steps back)
//              that runs after Save returns; the bench waits for it (Flush, untimed)
//              before timing anything else, so it never overlaps a baseline. Its time is
//              in the breakdown ("Save + wait for its prune").
//   async      time the caller is blocked in SaveAsync (steady state, snapshot buffers
//              reused; Flush between rounds, untimed) vs memcpy of the state into a
//              preallocated, touched buffer.
//   load       CheckpointReader::Open(kOnOpen) + read every tensor vs pread of the raw
//              file; also kFull as an extra row. Warm page cache unless --cold.
//   python     cairn Save vs h5py (contiguous, flush, fsync) and torch.save (+fsync), each
//              a fresh /usr/bin/python3 bench/py_baselines.py per write.
//   breakdown  where a Save's time goes: BuildShardImage, SHA-256 and AES-GCM alone,
//              EncryptShard into a null sink, write-to-page-cache vs fdatasync for both
//              cairn and raw, the background prune, and Save with early writeback off
//              (WriterOptions::early_writeback_bytes = 0) for comparison.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "checkpoint/aead_stream.h"
#include "checkpoint/crypto.h"
#include "checkpoint/h5_image.h"
#include "checkpoint/keys.h"
#include "checkpoint/reader.h"
#include "checkpoint/writer.h"
#include "common/io.h"

#ifndef CAIRN_SOURCE_DIR
#define CAIRN_SOURCE_DIR "."
#endif

namespace {

namespace ck = cairn::ckpt;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kNumTensors = 256;

// ---- scratch directory, errors ----------------------------------------------------

std::string g_scratch;  // removed at exit

void RemoveScratch() {
  if (g_scratch.empty()) return;
  std::error_code ec;
  fs::remove_all(g_scratch, ec);
  g_scratch.clear();
}

[[noreturn]] void Die(const std::string& msg) {
  std::fflush(stdout);
  std::fprintf(stderr, "ckpt_bench: error: %s\n", msg.c_str());
  RemoveScratch();
  std::exit(1);
}

extern "C" void OnSignal(int sig) {
  // Not async-signal-safe, but this is a benchmark: clean the scratch dir and go.
  RemoveScratch();
  std::_Exit(128 + sig);
}

template <class T>
auto Must(cairn::Result<T> r, std::string_view what) {
  if (!r) Die(fmt::format("{}: {}", what, r.error().ToString()));
  if constexpr (!std::is_void_v<T>) return std::move(*r);
}

void Check(bool ok, std::string_view what) {
  if (!ok) Die(fmt::format("{}: {}", what, std::strerror(errno)));
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

template <class F>
double Time(F&& f) {
  auto t0 = Clock::now();
  f();
  return Seconds(t0, Clock::now());
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string HumanSize(uint64_t b) {
  if (b >= (1ull << 30) && b % (1ull << 30) == 0) return fmt::format("{} GiB", b >> 30);
  if (b >= (1ull << 20) && b % (1ull << 20) == 0) return fmt::format("{} MiB", b >> 20);
  if (b >= (1ull << 10) && b % (1ull << 10) == 0) return fmt::format("{} KiB", b >> 10);
  return fmt::format("{} B", b);
}

uint64_t ParseSize(std::string s) {
  s.erase(std::remove_if(s.begin(), s.end(), ::isspace), s.end());
  std::size_t pos = 0;
  uint64_t n = 0;
  try {
    n = std::stoull(s, &pos);
  } catch (...) {
    Die(fmt::format("bad size '{}'", s));
  }
  std::string unit = s.substr(pos);
  std::transform(unit.begin(), unit.end(), unit.begin(), ::tolower);
  static const std::map<std::string, uint64_t> units = {{"", 1},           {"b", 1},
                                                        {"k", 1ull << 10}, {"kib", 1ull << 10},
                                                        {"m", 1ull << 20}, {"mib", 1ull << 20},
                                                        {"g", 1ull << 30}, {"gib", 1ull << 30}};
  auto it = units.find(unit);
  if (it == units.end()) Die(fmt::format("bad size unit in '{}'", s));
  const uint64_t bytes = n * it->second;
  if (bytes == 0 || bytes % (kNumTensors * 4) != 0) {
    Die(fmt::format("size '{}' is not {} f32 tensors", s, kNumTensors));
  }
  return bytes;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

// ---- raw POSIX helpers (the baselines) ---------------------------------------------

void WriteAll(int fd, const std::byte* p, std::size_t n, std::string_view path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<std::size_t>(n, 1u << 30));
    if (w < 0 && errno == EINTR) continue;
    Check(w > 0, fmt::format("write {}", path));
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

void FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  Check(fd >= 0, fmt::format("open dir {}", dir));
  Check(::fsync(fd) == 0, fmt::format("fsync dir {}", dir));
  ::close(fd);
}

void PreadAll(int fd, std::byte* p, std::size_t n, std::string_view path) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r =
        ::pread(fd, p + done, std::min<std::size_t>(n - done, 1u << 30), static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    Check(r > 0, fmt::format("pread {}", path));
    done += static_cast<std::size_t>(r);
  }
}

// ---- the state -----------------------------------------------------------------------

struct State {
  uint64_t total = 0;
  uint64_t per = 0;
  std::vector<std::unique_ptr<std::byte[]>> bufs;
  std::vector<ck::TensorRef> refs;

  explicit State(uint64_t bytes) : total(bytes), per(bytes / kNumTensors) {
    uint64_t x = 0x9E3779B97F4A7C15ull ^ bytes;
    for (int i = 0; i < kNumTensors; ++i) {
      bufs.emplace_back(new std::byte[per]);
      auto* w = reinterpret_cast<uint64_t*>(bufs.back().get());
      // xorshift64*: cheap, incompressible-looking bytes.
      for (uint64_t j = 0; j < per / 8; ++j) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        w[j] = x * 0x2545F4914F6CDD1Dull;
      }
      refs.push_back(
          {fmt::format("layer{:03d}/w", i), ck::DType::kF32, {per / 4}, {bufs.back().get(), per}});
    }
  }
};

// One preallocated, touched destination for the whole state.
struct Arena {
  std::unique_ptr<std::byte[]> buf;
  uint64_t size = 0;
  explicit Arena(uint64_t n) : buf(new std::byte[n]), size(n) { std::memset(buf.get(), 1, n); }
  std::byte* at(uint64_t off) const { return buf.get() + off; }
};

double RawWrite(const State& s, const std::string& path) {
  return Time([&] {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    Check(fd >= 0, fmt::format("create {}", path));
    for (const auto& t : s.refs) WriteAll(fd, t.data.data(), t.data.size(), path);
    Check(::fdatasync(fd) == 0, "fdatasync");
    Check(::close(fd) == 0, "close");
    FsyncDir(cairn::io::DirName(path));
  });
}

double RawRead(const std::string& path, Arena& dst) {
  return Time([&] {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    Check(fd >= 0, fmt::format("open {}", path));
    struct stat st {};
    Check(::fstat(fd, &st) == 0, "fstat");
    if (static_cast<uint64_t>(st.st_size) > dst.size) Die("raw file larger than buffer");
    PreadAll(fd, dst.at(0), static_cast<std::size_t>(st.st_size), path);
    ::close(fd);
  });
}

bool CanDropCaches() { return ::access("/proc/sys/vm/drop_caches", W_OK) == 0; }

void DropCaches() {
  ::sync();
  std::ofstream f("/proc/sys/vm/drop_caches");
  f << "3\n";
  f.flush();
  if (!f) Die("writing /proc/sys/vm/drop_caches failed");
}

// ---- cairn helpers -----------------------------------------------------------------

std::shared_ptr<const ck::MasterKey> NewKey() {
  auto k = Must(ck::SecretKey::Random(), "random key");
  return std::make_shared<const ck::MasterKey>(ck::MasterKey{k, ck::KeyId(k), "bench"});
}

struct Run {
  std::string dir;
  std::unique_ptr<ck::CheckpointWriter> writer;
  uint64_t next_step = 1;
};

Run OpenRun(const std::string& dir, std::shared_ptr<const ck::MasterKey> key,
            cairn::io::FileSystem* fsys = nullptr, uint64_t early_writeback = 8u << 20) {
  ck::WriterOptions o;
  o.dir = dir;
  o.run_id = "bench-" + fs::path(dir).filename().string();
  o.key = std::move(key);
  o.fs = fsys;
  o.chunk_size = 1u << 20;
  o.encrypt_threads = 2;
  o.max_inflight = 2;
  o.retention.keep_last = 2;
  o.early_writeback_bytes = early_writeback;
  Run r;
  r.dir = dir;
  r.writer = Must(ck::CheckpointWriter::Open(std::move(o)), "open writer " + dir);
  return r;
}

// Times one Save (what the caller is blocked for). Then waits, untimed, for the prune
// the commit queued, so that it does not run during the next timed operation; its time
// goes to *prune_s if given.
double CairnSave(Run& run, const State& s, double* prune_s = nullptr) {
  const uint64_t step = run.next_step++;
  const double t =
      Time([&] { Must(run.writer->Save(step, s.refs), fmt::format("save step {}", step)); });
  const double p = Time([&] { Must(run.writer->Flush(), "flush (background prune)"); });
  if (prune_s) *prune_s = p;
  return t;
}

// Opens the latest checkpoint of dir and reads every tensor into dst (tensor i at
// i * per). With check, compares the bytes against the state (untimed use only).
double CairnLoad(const std::string& dir, std::shared_ptr<const ck::MasterKey> key,
                 ck::VerifyMode mode, const State& s, Arena& dst, bool check = false) {
  return Time([&] {
    ck::ReaderOptions o;
    o.key = key;
    o.verify = mode;
    auto reader = Must(ck::CheckpointReader::Open(dir, std::move(o)), "open reader " + dir);
    const ck::H5ShardReader* shard = Must(reader->Shard(0), "open shard 0");
    if (shard->tensors().size() != s.refs.size()) Die("tensor count mismatch on load");
    for (std::size_t i = 0; i < s.refs.size(); ++i) {
      std::span<std::byte> out(dst.at(i * s.per), s.per);
      Must(shard->ReadTensor(s.refs[i].name, out), "read " + s.refs[i].name);
      if (check && std::memcmp(out.data(), s.refs[i].data.data(), s.per) != 0) {
        Die("loaded bytes differ from the saved state: " + s.refs[i].name);
      }
    }
  });
}

// A WritableFile that drops everything (EncryptShard's CPU cost without the disk).
class NullFile final : public cairn::io::WritableFile {
 public:
  cairn::Status Append(std::span<const std::byte>) override { return cairn::OkStatus(); }
  cairn::Status Sync() override { return cairn::OkStatus(); }
  cairn::Status Close() override { return cairn::OkStatus(); }
  const std::string& path() const override { return path_; }

 private:
  std::string path_ = "/dev/null";
};

// Diagnostics: a file system that forwards to another and adds up the wall time spent
// in each kind of operation (for the breakdown of one Save).
class TimingFs final : public cairn::io::FileSystem {
 public:
  using Totals = std::map<std::string, std::pair<int, double>>;  // op -> (count, seconds)

  explicit TimingFs(cairn::io::FileSystem& base) : base_(base) {}
  Totals& totals() { return totals_; }

  class File final : public cairn::io::WritableFile {
   public:
    File(std::unique_ptr<cairn::io::WritableFile> f, TimingFs& owner)
        : f_(std::move(f)), owner_(owner) {}
    cairn::Status Append(std::span<const std::byte> d) override {
      return owner_.Timed("file Append (write())", [&] { return f_->Append(d); });
    }
    cairn::Status Sync() override {
      return owner_.Timed("file Sync (fdatasync)", [&] { return f_->Sync(); });
    }
    cairn::Status Close() override {
      return owner_.Timed("file Close", [&] { return f_->Close(); });
    }
    const std::string& path() const override { return f_->path(); }

   private:
    std::unique_ptr<cairn::io::WritableFile> f_;
    TimingFs& owner_;
  };

  template <class F>
  std::invoke_result_t<F> Timed(const std::string& op, F&& f) {
    auto t0 = Clock::now();
    auto r = f();
    std::lock_guard lock(mu_);  // the background prune reports from the writer's thread
    auto& slot = totals_[op];
    slot.first++;
    slot.second += Seconds(t0, Clock::now());
    return r;
  }

  using cairn::io::FileSystem::NewWritableFile;
  cairn::Result<std::unique_ptr<cairn::io::WritableFile>> NewWritableFile(
      const std::string& path, const cairn::io::WritableFileOptions& options) override {
    auto f = Timed("NewWritableFile (open O_TRUNC)",
                   [&] { return base_.NewWritableFile(path, options); });
    if (!f) return f;
    return std::unique_ptr<cairn::io::WritableFile>(new File(std::move(*f), *this));
  }
  cairn::Result<std::unique_ptr<cairn::io::ReadableFile>> OpenReadable(
      const std::string& path) override {
    return Timed("OpenReadable", [&] { return base_.OpenReadable(path); });
  }
  cairn::Status Rename(const std::string& a, const std::string& b) override {
    return Timed("Rename", [&] { return base_.Rename(a, b); });
  }
  cairn::Status SyncDir(const std::string& d) override {
    return Timed("SyncDir (fsync dir)", [&] { return base_.SyncDir(d); });
  }
  cairn::Status RemoveFile(const std::string& p) override {
    return Timed("RemoveFile (prune: unlink)", [&] { return base_.RemoveFile(p); });
  }
  cairn::Status RemoveDir(const std::string& p) override {
    return Timed("RemoveDir", [&] { return base_.RemoveDir(p); });
  }
  cairn::Status CreateDir(const std::string& p, uint32_t m) override {
    return Timed("CreateDir", [&] { return base_.CreateDir(p, m); });
  }
  cairn::Result<std::vector<std::string>> ListDir(const std::string& d) override {
    return Timed("ListDir", [&] { return base_.ListDir(d); });
  }
  cairn::Result<cairn::io::FileInfo> Stat(const std::string& p) override {
    return Timed("Stat", [&] { return base_.Stat(p); });
  }

 private:
  cairn::io::FileSystem& base_;
  std::mutex mu_;
  Totals totals_;
};

// ---- python ------------------------------------------------------------------------

struct Python {
  std::string exe;
  std::string script;
  bool h5py = false;
  bool torch = false;
  std::string versions;
};

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::pair<int, std::string> RunCommand(const std::string& cmd) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  Check(p != nullptr, "popen " + cmd);
  std::string out;
  std::array<char, 4096> buf;
  for (std::size_t n; (n = std::fread(buf.data(), 1, buf.size(), p)) > 0;)
    out.append(buf.data(), n);
  int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : 128, out};
}

nlohmann::json LastJsonLine(const std::string& out, const std::string& what) {
  auto lines = Split(out, '\n');
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (!it->empty() && (*it)[0] == '{') {
      try {
        return nlohmann::json::parse(*it);
      } catch (...) {
      }
    }
  }
  Die(fmt::format("{} printed no JSON; output:\n{}", what, out));
}

Python ProbePython(const std::string& exe, const std::string& script) {
  Python py{exe, script};
  auto [rc, out] = RunCommand(ShellQuote(exe) + " " + ShellQuote(script) + " --check");
  if (rc != 0) {
    py.versions = "python probe failed: " + out;
    return py;
  }
  auto j = LastJsonLine(out, "py_baselines.py --check");
  auto ver = [&](const char* k) -> std::string {
    return j.contains(k) && j[k].is_string() ? j[k].get<std::string>() : "";
  };
  py.h5py = !ver("h5py").empty() && !ver("numpy").empty();
  py.torch = !ver("torch").empty() && !ver("numpy").empty();
  py.versions = fmt::format("python {}, numpy {}, h5py {}, torch {}", ver("python"),
                            ver("numpy").empty() ? "-" : ver("numpy"),
                            ver("h5py").empty() ? "-" : ver("h5py"),
                            ver("torch").empty() ? "not installed" : ver("torch"));
  return py;
}

double RunPython(const Python& py, const std::string& mode, uint64_t size, const std::string& out) {
  const std::string cmd = fmt::format("{} {} --mode {} --size {} --out {}", ShellQuote(py.exe),
                                      ShellQuote(py.script), mode, size, ShellQuote(out));
  auto [rc, text] = RunCommand(cmd);
  if (rc != 0) Die(fmt::format("{} failed (exit {}):\n{}", cmd, rc, text));
  auto j = LastJsonLine(text, cmd);
  return j.at("seconds").get<double>();
}

// ---- reporting ---------------------------------------------------------------------

struct Row {
  std::string name;
  std::vector<double> cairn, base;
  uint64_t bytes = 0;                 // for GB/s, 0: none shown
  bool higher_is_base_slower = true;  // ratio = base / cairn (else cairn / base)
  std::string target;                 // "" : informational
  double target_value = 0;
  bool at_least = true;
  std::string base_name = "baseline";
};

std::string Cell(double secs, uint64_t bytes) {
  if (bytes == 0) return fmt::format("{:.4f}", secs);
  return fmt::format("{:.4f} ({:.2f} GB/s)", secs, secs > 0 ? bytes / secs / 1e9 : 0.0);
}

double RowRatio(const Row& r) {
  const double c = Median(r.cairn), b = Median(r.base);
  return r.higher_is_base_slower ? b / c : c / b;
}

std::string RoundList(const std::vector<double>& v) {
  std::string s;
  for (double x : v) s += fmt::format("{}{:.3f}", s.empty() ? "" : " ", x);
  return s;
}

void PrintTable(const std::vector<Row>& rows) {
  fmt::print("| case | cairn median s | baseline median s | ratio | target | met? |\n");
  fmt::print("|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    const double ratio = RowRatio(r);
    std::string met = "—";
    if (!r.target.empty()) {
      const bool ok = r.at_least ? ratio >= r.target_value : ratio <= r.target_value;
      met = ok ? "yes" : "**no**";
    }
    fmt::print("| {} | {} | {} | {:.3f} | {} | {} |\n", r.name, Cell(Median(r.cairn), r.bytes),
               Cell(Median(r.base), r.bytes), ratio, r.target.empty() ? "—" : r.target, met);
  }
  fmt::print("\nPer-round seconds (in run order):\n\n");
  for (const auto& r : rows) {
    std::string ratios;
    for (std::size_t i = 0; i < std::min(r.cairn.size(), r.base.size()); ++i) {
      const double q = r.higher_is_base_slower ? r.base[i] / r.cairn[i] : r.cairn[i] / r.base[i];
      ratios += fmt::format("{}{:.2f}", ratios.empty() ? "" : " ", q);
    }
    fmt::print("- {}: cairn [{}] | {} [{}] | ratio [{}]\n", r.name, RoundList(r.cairn), r.base_name,
               RoundList(r.base), ratios);
  }
  fmt::print("\n");
}

std::string ReadFirstMatch(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      auto c = line.find(':');
      if (c != std::string::npos) {
        auto v = line.substr(c + 1);
        v.erase(0, v.find_first_not_of(" \t"));
        return v;
      }
    }
  }
  return "?";
}

std::string FsType(const std::string& dir) {
  struct statfs s {};
  if (::statfs(dir.c_str(), &s) != 0) return "?";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794C7630:
      return "overlayfs";
    default:
      return fmt::format("0x{:x}", static_cast<unsigned long>(s.f_type));
  }
}

void PrintMachine(const std::string& dir, const Python* py) {
  std::time_t now = std::time(nullptr);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
  utsname u{};
  ::uname(&u);
  fmt::print("# ckpt_bench\n\n");
  fmt::print("- date: {}\n", date);
  fmt::print("- machine: nproc {}, CPU {}, kernel {} {}, RAM {}\n", ::sysconf(_SC_NPROCESSORS_ONLN),
             ReadFirstMatch("/proc/cpuinfo", "model name"), u.sysname, u.release,
             ReadFirstMatch("/proc/meminfo", "MemTotal"));
  fmt::print("- files under: {} ({})\n", dir, FsType(dir));
  if (py) fmt::print("- python baselines: {} ({})\n", py->exe, py->versions);
  fmt::print("- GB/s = 1e9 bytes of tensor data per second; ratio = ratio of the two medians\n\n");
}

// ---- the cases -----------------------------------------------------------------------

struct Config {
  int rounds = 5;
  bool cold = false;
  std::set<std::string> only;
  bool Want(const std::string& c) const { return only.empty() || only.count(c) > 0; }
};

struct Ctx {
  const Config& cfg;
  const State& s;
  std::string dir;  // this size's scratch dir
  std::shared_ptr<const ck::MasterKey> key;
  std::optional<Python> py;
  std::vector<Row> rows;
  std::vector<std::string> notes;
  // Left by the write case for the load case.
  std::string last_ckpt_dir;
  std::string raw_path;
};

void CaseWrite(Ctx& c) {
  Run run = OpenRun(cairn::io::JoinPath(c.dir, "write"), c.key);
  c.raw_path = cairn::io::JoinPath(c.dir, "raw.bin");
  // Warm-up (untimed): two steps so every timed save prunes one; one raw file so every
  // timed raw write truncates one.
  CairnSave(run, c.s);
  CairnSave(run, c.s);
  RawWrite(c.s, c.raw_path);
  Row r{.name = "write: Save (AES-GCM+chain, fsync) vs raw write+fdatasync",
        .bytes = c.s.total,
        .target = "raw/cairn >= 0.90",
        .target_value = 0.90,
        .base_name = "raw"};
  for (int i = 0; i < c.cfg.rounds; ++i) {
    r.cairn.push_back(CairnSave(run, c.s));
    r.base.push_back(RawWrite(c.s, c.raw_path));
  }
  c.rows.push_back(std::move(r));
  c.last_ckpt_dir = run.dir;
}

void CaseAsync(Ctx& c) {
  const std::string dir = cairn::io::JoinPath(c.dir, "async");
  {
    Run run = OpenRun(dir, c.key);
    Arena dst(c.s.total + 64 * kNumTensors);
    auto save_async = [&] {
      const uint64_t step = run.next_step++;
      ck::SaveHandle h;
      double t = Time([&] { h = Must(run.writer->SaveAsync(step, c.s.refs), "SaveAsync"); });
      Must(run.writer->Flush(), "flush");  // untimed: the background commit
      Must(h.Wait(), "async save");
      return t;
    };
    auto copy = [&] {
      return Time([&] {
        uint64_t off = 0;
        for (const auto& t : c.s.refs) {
          std::memcpy(dst.at(off), t.data.data(), t.data.size());
          off += (t.data.size() + 63) & ~uint64_t{63};
        }
      });
    };
    save_async();  // warm-up: allocates and touches the snapshot buffer
    copy();
    Row r{.name = "async: SaveAsync blocked vs memcpy of the state",
          .bytes = c.s.total,
          .higher_is_base_slower = false,
          .target = "blocked/memcpy <= 1.5",
          .target_value = 1.5,
          .at_least = false,
          .base_name = "memcpy"};
    for (int i = 0; i < c.cfg.rounds; ++i) {
      r.cairn.push_back(save_async());
      r.base.push_back(copy());
    }
    c.rows.push_back(std::move(r));
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

void CaseLoad(Ctx& c) {
  if (c.last_ckpt_dir.empty()) {  // --only load: make the files (untimed)
    Run run = OpenRun(cairn::io::JoinPath(c.dir, "write"), c.key);
    CairnSave(run, c.s);
    c.last_ckpt_dir = run.dir;
    c.raw_path = cairn::io::JoinPath(c.dir, "raw.bin");
    RawWrite(c.s, c.raw_path);
  }
  bool cold = c.cfg.cold;
  if (cold && !CanDropCaches()) {
    c.notes.push_back(
        "--cold asked for, but /proc/sys/vm/drop_caches is not writable (needs "
        "root): load measured with a warm page cache");
    cold = false;
  }
  const std::string cache = cold ? "cold cache" : "warm cache";
  Arena dst(c.s.total + (1u << 20));
  // Warm-up: both files into the page cache; and a correctness check of the load path.
  CairnLoad(c.last_ckpt_dir, c.key, ck::VerifyMode::kOnOpen, c.s, dst, /*check=*/true);
  RawRead(c.raw_path, dst);
  Row on{.name = fmt::format("load ({}): Open kOnOpen + read all vs raw pread", cache),
         .bytes = c.s.total,
         .target = "raw/cairn >= 0.80",
         .target_value = 0.80,
         .base_name = "raw"};
  Row full{.name = fmt::format("load ({}): Open kFull + read all vs raw pread", cache),
           .bytes = c.s.total,
           .base_name = "raw"};
  auto maybe_drop = [&] {
    if (cold) DropCaches();
  };
  for (int i = 0; i < c.cfg.rounds; ++i) {
    maybe_drop();
    on.cairn.push_back(CairnLoad(c.last_ckpt_dir, c.key, ck::VerifyMode::kOnOpen, c.s, dst));
    maybe_drop();
    const double raw = RawRead(c.raw_path, dst);
    on.base.push_back(raw);
    full.base.push_back(raw);
    maybe_drop();
    full.cairn.push_back(CairnLoad(c.last_ckpt_dir, c.key, ck::VerifyMode::kFull, c.s, dst));
  }
  c.rows.push_back(std::move(on));
  c.rows.push_back(std::move(full));
}

void CasePython(Ctx& c) {
  if (!c.py || !c.py->h5py) {
    c.notes.push_back("python: h5py/numpy not importable by " + (c.py ? c.py->exe : "python") +
                      " (apt-get install python3-h5py python3-numpy): skipped");
    return;
  }
  if (!c.py->torch) {
    fmt::print("torch: not installed (apt-get install python3-torch)\n");
    c.notes.push_back("torch: not installed (apt-get install python3-torch): torch.save skipped");
  }
  const std::string dir = cairn::io::JoinPath(c.dir, "python");
  {
    Run run = OpenRun(cairn::io::JoinPath(dir, "cairn"), c.key);
    const std::string h5 = cairn::io::JoinPath(dir, "state.h5");
    const std::string pt = cairn::io::JoinPath(dir, "state.pt");
    // Warm-up as in the write case (and the first python start pays the imports' cold cache).
    CairnSave(run, c.s);
    CairnSave(run, c.s);
    RunPython(*c.py, "h5py", c.s.total, h5);
    if (c.py->torch) RunPython(*c.py, "torch", c.s.total, pt);
    Row rh{.name = "vs h5py: Save vs h5py create_dataset+flush+fsync",
           .bytes = c.s.total,
           .target = "h5py/cairn >= 1.0",
           .target_value = 1.0,
           .base_name = "h5py"};
    Row rt{.name = "vs torch: Save vs torch.save+fsync",
           .bytes = c.s.total,
           .target = "torch/cairn >= 1.0",
           .target_value = 1.0,
           .base_name = "torch"};
    for (int i = 0; i < c.cfg.rounds; ++i) {
      const double t = CairnSave(run, c.s);
      rh.cairn.push_back(t);
      rt.cairn.push_back(t);
      rh.base.push_back(RunPython(*c.py, "h5py", c.s.total, h5));
      if (c.py->torch) rt.base.push_back(RunPython(*c.py, "torch", c.s.total, pt));
    }
    c.rows.push_back(std::move(rh));
    if (c.py->torch) c.rows.push_back(std::move(rt));
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
}

// Where a Save's time goes. Each round runs every component once (interleaved).
void CaseBreakdown(Ctx& c) {
  const std::string dir = cairn::io::JoinPath(c.dir, "breakdown");
  std::error_code ec;
  fs::create_directories(dir);
  const std::map<std::string, std::string> attrs = {
      {"run_id", "bench"}, {"step", "1"}, {"rank", "0"}, {"world_size", "1"}};
  auto data_key = Must(ck::SecretKey::Random(), "data key");
  auto image = Must(ck::BuildShardImage(c.s.refs, {}, attrs), "BuildShardImage");
  ck::ShardHeader header;
  header.chunk_size = 1u << 20;
  header.plaintext_size = image->size();
  header.run_tag = ck::RunTag("bench");
  ck::EncryptOptions eo;
  eo.threads = 2;

  TimingFs tfs(cairn::io::DefaultFileSystem());
  Run plain = OpenRun(cairn::io::JoinPath(dir, "save"), c.key, &tfs);
  Run nowb = OpenRun(cairn::io::JoinPath(dir, "save-no-early-writeback"), c.key, nullptr, 0);
  const std::string raw = cairn::io::JoinPath(dir, "raw.bin");
  const std::string shard = cairn::io::JoinPath(dir, "shard.bin");
  std::vector<std::byte> sealbuf((1u << 20) + 16);
  Arena loadbuf(c.s.total + (1u << 20));

  std::map<std::string, std::vector<double>> t;
  std::vector<std::string> order;
  auto rec = [&](const std::string& k, double v) {
    if (!t.count(k)) order.push_back(k);
    t[k].push_back(v);
  };
  // Warm-up: steady state for the writers and files.
  for (int i = 0; i < 2; ++i) {
    CairnSave(plain, c.s);
    CairnSave(nowb, c.s);
  }
  RawWrite(c.s, raw);
  std::map<std::string, std::vector<double>> fsops;  // per timed Save, seconds per op kind
  std::vector<std::string> fsop_order;
  std::map<std::string, int> fsop_calls;

  for (int round = 0; round < c.cfg.rounds; ++round) {
    rec("BuildShardImage (metadata only)",
        Time([&] { Must(ck::BuildShardImage(c.s.refs, {}, attrs), "BuildShardImage"); }));
    rec("SHA-256 of the state, 1 thread", Time([&] {
          ck::Sha256 sha;
          for (const auto& r : c.s.refs) sha.Update(r.data);
          (void)sha.Finish();
        }));
    rec("AES-256-GCM seal of the state, 1 thread, 1 MiB chunks", Time([&] {
          auto gcm = Must(ck::AesGcm::Create(data_key), "gcm");
          std::array<uint8_t, 12> nonce{};
          std::array<uint8_t, 16> tag{};
          uint64_t n = 0;
          for (const auto& r : c.s.refs) {
            for (uint64_t off = 0; off < r.data.size(); off += 1u << 20) {
              const auto len = std::min<uint64_t>(1u << 20, r.data.size() - off);
              std::memcpy(nonce.data(), &n, 8);
              ++n;
              Must(gcm.Seal(nonce, header.Encode(), r.data.subspan(off, len), sealbuf.data(), tag),
                   "seal");
            }
          }
        }));
    rec("EncryptShard -> null sink (2 workers + hashing appender)", Time([&] {
          NullFile nf;
          Must(ck::EncryptShard(*image, header, data_key, nf, eo), "EncryptShard null");
        }));
    // cairn's shard: encrypt into the page cache, then fdatasync, timed separately.
    {
      std::unique_ptr<cairn::io::WritableFile> f;
      rec("cairn shard: create+EncryptShard into page cache", Time([&] {
            f = Must(cairn::io::DefaultFileSystem().NewWritableFile(shard, 0600), "create shard");
            Must(ck::EncryptShard(*image, header, data_key, *f, eo), "EncryptShard file");
          }));
      rec("cairn shard: fdatasync+close+fsync dir", Time([&] {
            Must(f->Sync(), "sync");
            Must(f->Close(), "close");
            FsyncDir(dir);
          }));
    }
    // raw: write into the page cache, then fdatasync.
    {
      int fd = -1;
      rec("raw: open(O_TRUNC)+write() into page cache", Time([&] {
            fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            Check(fd >= 0, "create raw");
            for (const auto& r : c.s.refs) WriteAll(fd, r.data.data(), r.data.size(), raw);
          }));
      rec("raw: fdatasync+close+fsync dir", Time([&] {
            Check(::fdatasync(fd) == 0, "fdatasync");
            ::close(fd);
            FsyncDir(dir);
          }));
    }
    rec("one small durable file (write+fdatasync+rename+fsync dir; Save does 2: MANIFEST, HEAD)",
        Time([&] {
          Must(cairn::io::WriteFileAtomic(cairn::io::DefaultFileSystem(),
                                          cairn::io::JoinPath(dir, "small"), std::string(200, 'x')),
               "small file");
        }));
    tfs.totals().clear();
    double prune_s = 0;
    const double save_s = CairnSave(plain, c.s, &prune_s);
    rec("Save total (as in the write case)", save_s);
    rec("background prune after Save (Flush wait: unlink of the shard 2 steps back)", prune_s);
    rec("Save + wait for its prune", save_s + prune_s);
    for (const auto& [op, v] : tfs.totals()) {
      if (v.second < 0.001 && !fsops.count(op)) continue;  // only what matters
      if (!fsops.count(op)) fsop_order.push_back(op);
      fsops[op].push_back(v.second);
      fsop_calls[op] = v.first;
    }
    rec("raw total (as in the write case)", RawWrite(c.s, raw));
    rec("Save with early writeback off (early_writeback_bytes = 0)", CairnSave(nowb, c.s));
    // The load side, warm cache: Open (chain scan, key unwrap, final-chunk check, HDF5
    // catalog) vs reading the tensors, and the decrypt rate alone.
    {
      std::unique_ptr<ck::CheckpointReader> reader;
      const ck::H5ShardReader* sh = nullptr;
      rec("load: CheckpointReader::Open(kOnOpen)+Shard(0)", Time([&] {
            ck::ReaderOptions o;
            o.key = c.key;
            o.verify = ck::VerifyMode::kOnOpen;
            reader = Must(ck::CheckpointReader::Open(plain.dir, std::move(o)), "open reader");
            sh = Must(reader->Shard(0), "shard 0");
          }));
      rec("load: ReadTensor x256 (decrypt+authenticate)", Time([&] {
            for (std::size_t i = 0; i < c.s.refs.size(); ++i) {
              Must(sh->ReadTensor(c.s.refs[i].name, {loadbuf.at(i * c.s.per), c.s.per}), "read");
            }
          }));
      rec("load: raw pread of the same bytes", RawRead(raw, loadbuf));
      rec("AES-256-GCM open of the state, 1 thread, 1 MiB chunks", Time([&] {
            auto gcm = Must(ck::AesGcm::Create(data_key), "gcm");
            std::array<uint8_t, 12> nonce{};
            std::array<uint8_t, 16> tag{};
            for (const auto& r : c.s.refs) {
              for (uint64_t off = 0; off < r.data.size(); off += 1u << 20) {
                const auto len = std::min<uint64_t>(1u << 20, r.data.size() - off);
                (void)gcm.Open(nonce, header.Encode(), r.data.subspan(off, len), sealbuf.data(),
                               tag);
              }
            }
          }));
    }
  }

  fmt::print("Breakdown ({} rounds, medians; GB/s over the {} of tensor data):\n\n", c.cfg.rounds,
             HumanSize(c.s.total));
  fmt::print("| component | median s | GB/s | rounds |\n|---|---|---|---|\n");
  for (const auto& k : order) {
    const double m = Median(t[k]);
    const bool per_byte = k.find("small durable") == std::string::npos &&
                          k.find("BuildShardImage") == std::string::npos &&
                          k.find("::Open") == std::string::npos;
    fmt::print("| {} | {:.4f} | {} | {} |\n", k, m,
               per_byte ? fmt::format("{:.2f}", c.s.total / m / 1e9) : "—", RoundList(t[k]));
  }
  fmt::print(
      "\nFile-system time of one Save and its background prune (medians; the rest is CPU: "
      "image build, waiting for sealed and hashed batches):\n\n");
  fmt::print(
      "| operation (ops >= 1 ms) | calls per Save+prune | median s | rounds |\n"
      "|---|---|---|---|\n");
  for (const auto& k : fsop_order) {
    fmt::print("| {} | {} | {:.4f} | {} |\n", k, fsop_calls[k], Median(fsops[k]),
               RoundList(fsops[k]));
  }
  const double raw_total = Median(t["raw total (as in the write case)"]);
  fmt::print(
      "\nraw/cairn: Save {:.3f}, Save + its prune {:.3f}, Save with early writeback off {:.3f} "
      "(ratios of medians, same rounds)\n\n",
      raw_total / Median(t["Save total (as in the write case)"]),
      raw_total / Median(t["Save + wait for its prune"]),
      raw_total / Median(t["Save with early writeback off (early_writeback_bytes = 0)"]));
  plain.writer.reset();
  nowb.writer.reset();
  fs::remove_all(dir, ec);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ckpt_bench: cairn checkpoint write/load speed vs same-process baselines"};
  int rounds = 5;
  std::string dir_flag;
  std::string sizes = "1GiB,64MiB";
  std::string only;
  bool cold = false;
  std::string python = "/usr/bin/python3";
  std::string script = std::string(CAIRN_SOURCE_DIR) + "/bench/py_baselines.py";
  app.add_option("--rounds", rounds, "interleaved rounds per case (medians reported)")
      ->check(CLI::Range(1, 1000));
  app.add_option("--dir", dir_flag,
                 "where to write (a fresh subdirectory is made and removed at exit; default "
                 "$TMPDIR or /tmp)");
  app.add_option("--sizes", sizes, "state sizes, comma-separated (each 256 f32 tensors)");
  app.add_option("--only", only,
                 "cases to run, comma-separated: write,async,load,python,breakdown");
  app.add_flag("--cold", cold,
               "load case: sync + drop caches (echo 3 > /proc/sys/vm/drop_caches) before each "
               "side (needs root)");
  app.add_option("--python", python, "python interpreter for the h5py/torch baselines");
  app.add_option("--py-script", script, "path of bench/py_baselines.py");
  CLI11_PARSE(app, argc, argv);

  Config cfg;
  cfg.rounds = rounds;
  cfg.cold = cold;
  static const std::set<std::string> kCases = {"write", "async", "load", "python", "breakdown"};
  for (const auto& c : Split(only, ',')) {
    if (!kCases.count(c))
      Die(fmt::format("unknown case '{}' (write,async,load,python,breakdown)", c));
    cfg.only.insert(c);
  }
  std::vector<uint64_t> size_list;
  for (const auto& s : Split(sizes, ',')) size_list.push_back(ParseSize(s));
  if (size_list.empty()) Die("no sizes given");

  std::string parent = dir_flag;
  if (parent.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp && *tmp ? tmp : "/tmp";
  }
  fs::create_directories(parent);
  std::string templ = cairn::io::JoinPath(parent, "ckpt_bench-XXXXXX");
  Check(::mkdtemp(templ.data()) != nullptr, "mkdtemp under " + parent);
  g_scratch = templ;
  std::atexit(RemoveScratch);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);

  std::optional<Python> py;
  if (cfg.Want("python")) py = ProbePython(python, script);
  PrintMachine(g_scratch, py ? &*py : nullptr);
  if (cold) {
    fmt::print("Load case: {}\n\n", CanDropCaches()
                                        ? "cold page cache (sync + drop_caches before each side)"
                                        : "--cold needs a writable /proc/sys/vm/drop_caches "
                                          "(root); falling back to a warm page cache");
  }

  auto key = NewKey();
  for (uint64_t size : size_list) {
    const std::string sdir = cairn::io::JoinPath(g_scratch, fmt::format("s{}", size));
    fs::create_directories(sdir);
    State state(size);  // filled before any timing
    Ctx c{.cfg = cfg, .s = state, .dir = sdir, .key = key, .py = py};
    fmt::print("## {} state: {} f32 tensors of {} ({} rounds, interleaved)\n\n", HumanSize(size),
               kNumTensors, HumanSize(state.per), cfg.rounds);
    std::fflush(stdout);
    if (cfg.Want("write")) CaseWrite(c);
    if (cfg.Want("async")) CaseAsync(c);
    if (cfg.Want("load")) CaseLoad(c);
    if (cfg.Want("python")) CasePython(c);
    if (!c.rows.empty()) PrintTable(c.rows);
    for (const auto& n : c.notes) fmt::print("Note: {}\n\n", n);
    std::fflush(stdout);
    if (cfg.Want("breakdown")) CaseBreakdown(c);
    std::error_code ec;
    fs::remove_all(sdir, ec);
    std::fflush(stdout);
  }
  return 0;
}
