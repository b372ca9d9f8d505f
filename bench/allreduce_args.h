// What the allreduce benchmarks (allreduce_bench.cc, nccl_allreduce_bench.cc) share: their
// flags and the median of a round's timings.
#pragma once

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace cairn::bench {

struct AllReduceArgs {
  int rounds = 7;
  std::size_t min_bytes = 4 << 10;
  std::size_t max_bytes = 64 << 20;
};

// Parses --rounds N --min-bytes B --max-bytes B over `defaults`; on a bad flag prints why
// and exits 2.
inline AllReduceArgs ParseAllReduceArgs(int argc, char** argv, AllReduceArgs a) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", flag.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (flag == "--rounds") {
      a.rounds = std::atoi(next().c_str());
    } else if (flag == "--min-bytes") {
      a.min_bytes = std::strtoull(next().c_str(), nullptr, 10);
    } else if (flag == "--max-bytes") {
      a.max_bytes = std::strtoull(next().c_str(), nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown argument %s (use --rounds, --min-bytes, --max-bytes)\n",
                   flag.c_str());
      std::exit(2);
    }
  }
  if (a.rounds < 1 || a.min_bytes < 4 || a.max_bytes < a.min_bytes) {
    std::fprintf(stderr, "invalid --rounds/--min-bytes/--max-bytes\n");
    std::exit(2);
  }
  return a;
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace cairn::bench
