// Allreduce bus bandwidth: cairn's Communicator (MPI backend) vs raw MPI_Allreduce of
// the same buffer, interleaved A/B per round, medians over rounds.
//
//   mpirun -np 4 --oversubscribe build/bin/cairn-allreduce-bench [--rounds N]
//          [--min-bytes B] [--max-bytes B]
//
// Bus bandwidth = 2 (n-1)/n * bytes / time (the NCCL-tests convention), so numbers are
// comparable across rank counts. Rank 0 prints one table row per size; the last column
// is cairn / raw (target >= 0.95).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/allreduce_args.h"
#include "collectives/mpi_communicator.h"

namespace {

int Iterations(std::size_t bytes) {
  if (bytes <= (64u << 10)) return 200;
  if (bytes <= (1u << 20)) return 50;
  if (bytes <= (8u << 20)) return 10;
  return 4;
}

}  // namespace

using cairn::bench::Median;

int main(int argc, char** argv) {
  cairn::bench::AllReduceArgs defaults;
  const auto args = cairn::bench::ParseAllReduceArgs(argc, argv, defaults);
  const int rounds = args.rounds;
  const std::size_t min_bytes = args.min_bytes, max_bytes = args.max_bytes;
  auto session = cairn::coll::MpiSession::Start();
  if (!session) {
    std::fprintf(stderr, "%s\n", session.error().ToString().c_str());
    return 1;
  }
  auto comm = cairn::coll::MpiCommunicator::World(std::chrono::minutes(2));
  if (!comm) {
    std::fprintf(stderr, "%s\n", comm.error().ToString().c_str());
    return 1;
  }
  const int n = (*comm)->size();
  const int rank = (*comm)->rank();
  MPI_Comm raw = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);
  if (rank == 0) {
    std::printf("# allreduce f32 sum, %d ranks, %d interleaved rounds, medians\n", n, rounds);
    std::printf("%12s %14s %14s %8s\n", "bytes", "raw_MPI_GB/s", "cairn_GB/s", "ratio");
  }
  for (std::size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
    const std::size_t count = bytes / 4;
    std::vector<float> buf(count, 1.0f);
    const int iters = Iterations(bytes);
    std::vector<double> raw_t, cairn_t;
    auto time_it = [&](auto&& op) {
      MPI_Barrier(raw);
      auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; it < iters; ++it) op();
      double local = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double worst = 0;
      MPI_Allreduce(&local, &worst, 1, MPI_DOUBLE, MPI_MAX, raw);
      return worst / iters;
    };
    // Warm-up of both paths.
    MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, raw);
    (void)(*comm)->AllReduceSum(std::span<float>(buf));
    for (int r = 0; r < rounds; ++r) {
      raw_t.push_back(time_it([&] {
        MPI_Allreduce(MPI_IN_PLACE, buf.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, raw);
      }));
      cairn_t.push_back(time_it([&] {
        if (auto s = (*comm)->AllReduceSum(std::span<float>(buf)); !s) {
          std::fprintf(stderr, "%s\n", s.error().ToString().c_str());
          std::exit(1);
        }
      }));
    }
    const double factor = 2.0 * (n - 1) / std::max(n, 1) * static_cast<double>(bytes) / 1e9;
    const double raw_bw = n > 1 ? factor / Median(raw_t) : static_cast<double>(bytes) / 1e9 / Median(raw_t);
    const double cairn_bw =
        n > 1 ? factor / Median(cairn_t) : static_cast<double>(bytes) / 1e9 / Median(cairn_t);
    if (rank == 0) {
      std::printf("%12zu %14.3f %14.3f %8.3f\n", bytes, raw_bw, cairn_bw, cairn_bw / raw_bw);
      std::fflush(stdout);
    }
  }
  MPI_Comm_free(&raw);
  return 0;
}
