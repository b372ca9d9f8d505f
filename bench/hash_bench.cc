// Input hashing throughput: cairn's InputHasher hashing a data set for the first time
// (target: at least as fast as `sha256sum` over the same files) and re-running over
// unchanged files with its cache (target: under 1% of the first run's time).
//
//   build/bin/cairn-hash-bench [--gib G] [--files N] [--rounds R] [--read-kib K] [--dir D]
//
// The data set is two inputs: the Fashion-MNIST files under /usr/share/datasets (when
// present) and N generated files of pseudo-random bytes totalling G GiB in a temporary
// directory under D (default: the system temp dir), removed at the end. Every file is read
// once before timing, so every contender runs on a warm page cache. Per round, in this
// order: cairn first run (fresh cache directory, hash + write the cache), sha256sum (one
// process over all files), two sha256sum processes over halves of the files, cairn with
// one thread, cairn cached re-run (load the cache, stat every file, no hashing). Medians.
// The first round also checks that cairn's per-file digests equal sha256sum's.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "checkpoint/types.h"
#include "common/io.h"
#include "common/subprocess.h"
#include "provenance/digest.h"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "cairn-hash-bench: %s\n", what.c_str());
  std::exit(1);
}

// Writes `bytes` of xorshift output to `path`.
void Generate(const std::string& path, uint64_t bytes, uint64_t seed) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) Die("create " + path);
  std::vector<uint64_t> buf(1 << 17);  // 1 MiB
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  uint64_t left = bytes;
  while (left > 0) {
    for (auto& w : buf) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      w = x;
    }
    const std::size_t n = static_cast<std::size_t>(std::min<uint64_t>(left, buf.size() * 8));
    if (::write(fd, buf.data(), n) != static_cast<ssize_t>(n)) Die("write " + path);
    left -= n;
  }
  ::close(fd);
}

// Reads the file to the end (warms the page cache).
void ReadAll(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) Die("open " + path);
  std::vector<char> buf(1 << 20);
  while (::read(fd, buf.data(), buf.size()) > 0) {
  }
  ::close(fd);
}

// Seconds for `sha256sum files...`; its output in *out when given.
double Sha256sum(const std::vector<std::string>& files, std::string* out) {
  std::vector<std::string> argv = {"sha256sum"};
  argv.insert(argv.end(), files.begin(), files.end());
  cairn::subprocess::RunOptions opts;
  opts.max_stdout_bytes = 16 << 20;
  opts.timeout = std::chrono::minutes(10);
  const auto t0 = Clock::now();
  auto r = cairn::subprocess::RunProcess(argv, opts);
  const double s = Since(t0);
  if (!r || r->exit_code != 0) Die("sha256sum failed");
  if (out != nullptr) *out = r->out;
  return s;
}

// Seconds for two sha256sum processes, each over one half of the files (by size).
double Sha256sumPair(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  const auto t0 = Clock::now();
  std::thread other([&] { Sha256sum(b, nullptr); });
  Sha256sum(a, nullptr);
  other.join();
  return Since(t0);
}

struct HashRun {
  double seconds = 0;
  cairn::prov::HashStats stats;
  std::vector<cairn::prov::TreeDigest> digests;
};

HashRun Hash(const std::vector<std::string>& inputs, const std::string& cache_dir, unsigned threads,
             std::size_t read_bytes) {
  cairn::prov::HashOptions o;
  o.cache_dir = cache_dir;
  o.threads = threads;
  o.read_bytes = read_bytes;
  HashRun run;
  const auto t0 = Clock::now();
  cairn::prov::InputHasher hasher(o);
  auto digests = hasher.HashAll(inputs);
  if (!digests) Die(digests.error().ToString());
  if (auto s = hasher.SaveCache(); !s) Die(s.error().ToString());
  run.seconds = Since(t0);
  run.stats = hasher.stats();
  run.digests = std::move(*digests);
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1.5;
  int files = 12, rounds = 5, read_kib = 1024;
  std::string base = fs::temp_directory_path().string();
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--gib") {
      gib = std::atof(argv[i + 1]);
    } else if (a == "--files") {
      files = std::atoi(argv[i + 1]);
    } else if (a == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else if (a == "--read-kib") {
      read_kib = std::atoi(argv[i + 1]);
    } else if (a == "--dir") {
      base = argv[i + 1];
    } else {
      std::fprintf(stderr, "unknown argument %s (--gib, --files, --rounds, --read-kib, --dir)\n",
                   argv[i]);
      return 2;
    }
  }
  if (gib <= 0 || files < 1 || rounds < 1 || read_kib < 4) {
    std::fprintf(stderr, "--gib, --files, --rounds must be positive, --read-kib >= 4\n");
    return 2;
  }
  const std::string dir = base + "/cairn_hash_bench_" + cairn::io::RandomSuffix();
  const std::string data = dir + "/generated";
  fs::create_directories(data);

  // The data set.
  std::vector<std::string> inputs = {data};
  std::vector<std::pair<uint64_t, std::string>> all;  // size, path
  const uint64_t total = static_cast<uint64_t>(gib * (1ull << 30));
  for (int i = 0; i < files; ++i) {
    const std::string p = data + "/part-" + std::to_string(1000 + i).substr(1) + ".bin";
    const uint64_t size = total / files + (i < static_cast<int>(total % files) ? 1 : 0);
    Generate(p, size, static_cast<uint64_t>(i) + 1);
    all.emplace_back(size, p);
  }
  const auto gen_end = Clock::now();
  if (fs::is_directory(kFashionMnistDir)) {
    inputs.push_back(kFashionMnistDir);
    for (const auto& e : fs::directory_iterator(kFashionMnistDir)) {
      if (e.is_regular_file()) all.emplace_back(e.file_size(), e.path().string());
    }
  }
  std::sort(all.begin(), all.end(), [](auto& x, auto& y) { return x.second < y.second; });
  uint64_t bytes = 0;
  std::vector<std::string> paths, half_a, half_b;
  uint64_t size_a = 0, size_b = 0;
  std::vector<std::pair<uint64_t, std::string>> by_size = all;
  std::sort(by_size.begin(), by_size.end(), [](auto& x, auto& y) { return x.first > y.first; });
  for (const auto& [size, p] : by_size) {  // greedy split into two halves of equal bytes
    (size_a <= size_b ? half_a : half_b).push_back(p);
    (size_a <= size_b ? size_a : size_b) += size;
  }
  for (const auto& [size, p] : all) {
    bytes += size;
    paths.push_back(p);
    ReadAll(p);
  }
  // Let the generated files' timestamps age past the cache's racy window (2 s), so that
  // the first run may cache every file.
  std::this_thread::sleep_until(gen_end + std::chrono::milliseconds(2500));

  std::printf(
      "# %zu files, %.3f GB (%d generated files of pseudo-random bytes, %.2f GiB, + %zu "
      "Fashion-MNIST files)\n",
      paths.size(), bytes / 1e9, files, gib, paths.size() - files);
  std::printf(
      "# page cache warm for every contender (each file read once before timing); "
      "%u cores; read size %d KiB\n",
      std::thread::hardware_concurrency(), read_kib);
  std::printf("# %d interleaved rounds, medians\n", rounds);
  std::fflush(stdout);

  const std::size_t read_bytes = static_cast<std::size_t>(read_kib) << 10;
  std::vector<double> first, one_thread, sum1, sum2, cached;
  uint64_t cached_hashed = 0;
  for (int r = 0; r < rounds; ++r) {
    const std::string cache = dir + "/cache-" + std::to_string(r);
    HashRun a = Hash(inputs, cache, 0, read_bytes);
    if (a.stats.files_hashed != paths.size()) Die("first run did not hash every file");
    first.push_back(a.seconds);

    std::string out;
    sum1.push_back(Sha256sum(paths, r == 0 ? &out : nullptr));
    if (r == 0) {  // cairn's digests must be sha256sum's
      std::map<std::string, std::string> want;
      std::size_t pos = 0;
      while (pos < out.size()) {
        const std::size_t nl = out.find('\n', pos);
        const std::string line = out.substr(pos, nl - pos);
        want[line.substr(66)] = line.substr(0, 64);
        pos = nl + 1;
      }
      std::size_t checked = 0;
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        for (const auto& f : a.digests[i].files) {
          const std::string p = inputs[i] + "/" + f.path;
          if (want[p] != cairn::ckpt::ToHex(f.sha256)) Die("digest differs from sha256sum: " + p);
          ++checked;
        }
      }
      if (checked != paths.size()) Die("not every file was compared");
    }
    sum2.push_back(Sha256sumPair(half_a, half_b));
    one_thread.push_back(Hash(inputs, "", 1, read_bytes).seconds);

    HashRun c = Hash(inputs, cache, 0, read_bytes);
    cached_hashed += c.stats.files_hashed;
    if (c.digests.front().sha256 != a.digests.front().sha256) Die("cached digest differs");
    cached.push_back(c.seconds);
  }
  std::error_code ec;
  fs::remove_all(dir, ec);

  const double gb = bytes / 1e9;
  const double f = Median(first), s1 = Median(sum1), s2 = Median(sum2), t1 = Median(one_thread),
               c = Median(cached);
  std::printf("%-44s %10s %8s %14s\n", "", "median s", "GB/s", "sha256sum/this");
  std::printf("%-44s %10.3f %8.2f %14.3f\n", "cairn first run (all cores, + cache write)", f,
              gb / f, s1 / f);
  std::printf("%-44s %10.3f %8.2f %14.3f\n", "cairn, 1 thread, no cache", t1, gb / t1, s1 / t1);
  std::printf("%-44s %10.3f %8.2f %14.3f\n", "sha256sum, 1 process", s1, gb / s1, 1.0);
  std::printf("%-44s %10.3f %8.2f %14.3f\n", "sha256sum, 2 processes (halves by size)", s2, gb / s2,
              s1 / s2);
  std::printf("%-44s %10.5f %8s %14s\n", "cairn cached re-run (load, stat, no hash)", c, "-", "-");
  std::printf("cached re-run / first run: %.3f%% (files rehashed in cached runs: %llu)\n",
              100.0 * c / f, static_cast<unsigned long long>(cached_hashed));
  std::printf("first run vs sha256sum: %.2fx; vs 2 sha256sum processes: %.2fx\n", s1 / f, s2 / f);
  return 0;
}
