// Gang placement on a simulated 4,096-node, 32,768-GPU cluster (8 GPUs, 64 CPUs,
// 512 GiB per node), half of it busy with 1..8-GPU jobs. Each iteration submits one job,
// places it (Schedule) and releases it. Target: < 1 ms per placement.
// Baseline in the same process: one bare pass over the node table (the O(nodes) floor
// any placement that looks at every node pays), so results also read as a ratio.
#include <benchmark/benchmark.h>

#include <random>
#include <string>

#include "coordinator/scheduler.h"

namespace {

using cairn::coord::JobRequest;
using cairn::coord::Scheduler;

constexpr int kNodes = 4096;

void Fill(Scheduler* s) {
  for (int i = 0; i < kNodes; ++i) {
    if (!s->AddNode({"node" + std::to_string(i), 64, 512 * 1024, 8})) std::abort();
  }
  // Background load: about half the GPUs, in jobs of 1..8 GPUs.
  std::mt19937 rng(7);
  int used = 0;
  for (int j = 0; used < kNodes * 8 / 2; ++j) {
    JobRequest r;
    r.job_id = "bg" + std::to_string(j);
    r.user = "bg";
    r.ranks = 1;
    r.cpus_per_rank = 4;
    r.gpus_per_rank = 1 + static_cast<int>(rng() % 8);
    used += r.gpus_per_rank;
    if (!s->Submit(r)) std::abort();
    if (s->Schedule().size() != 1) std::abort();
  }
}

void Place(benchmark::State& state, JobRequest job) {
  Scheduler s;
  Fill(&s);
  uint64_t n = 0;
  for (auto _ : state) {
    job.job_id = "j" + std::to_string(n++);
    if (!s.Submit(job)) state.SkipWithError("submit failed");
    auto placed = s.Schedule();
    if (placed.size() != 1) state.SkipWithError("not placed");
    benchmark::DoNotOptimize(placed);
    s.Release(job.job_id);
  }
}

JobRequest Shape(int ranks, int gpus, int rpn) {
  JobRequest j;
  j.user = "u";
  j.ranks = ranks;
  j.cpus_per_rank = 4;
  j.memory_mb_per_rank = 16 * 1024;
  j.gpus_per_rank = gpus;
  j.ranks_per_node = rpn;
  return j;
}

void BM_Place_8ranks_1gpu(benchmark::State& st) { Place(st, Shape(8, 1, 0)); }
void BM_Place_256ranks_1gpu_anylayout(benchmark::State& st) { Place(st, Shape(256, 1, 0)); }
void BM_Place_512ranks_8gpu_1pernode(benchmark::State& st) { Place(st, Shape(512, 8, 1)); }
void BM_Place_1024ranks_1gpu_4pernode(benchmark::State& st) { Place(st, Shape(1024, 1, 4)); }

void BM_Baseline_ScanNodeTable(benchmark::State& state) {
  Scheduler s;
  Fill(&s);
  auto nodes = s.Nodes();
  for (auto _ : state) {
    int64_t free = 0;
    for (const auto& n : nodes) free += n.gpus_free + n.cpus_free;
    benchmark::DoNotOptimize(free);
  }
}

BENCHMARK(BM_Baseline_ScanNodeTable)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Place_8ranks_1gpu)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Place_256ranks_1gpu_anylayout)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Place_512ranks_8gpu_1pernode)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Place_1024ranks_1gpu_4pernode)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
