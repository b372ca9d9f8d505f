// Allreduce on GPU buffers: cairn's Communicator (NCCL backend) vs raw ncclAllReduce of
// the same device buffer on a communicator of its own, interleaved A/B per round,
// medians over rounds. Built when CUDA and NCCL are found.
//
//   mpirun -np G build/bin/cairn-nccl-allreduce-bench [--rounds N] [--min-bytes B]
//          [--max-bytes B]            (G = number of GPUs; one rank per GPU)
//
// Both paths complete every operation before the next starts: cairn's AllReduceSum
// returns only when the stream has drained (it polls for asynchronous NCCL errors while
// it waits), so the raw path synchronizes its stream after each call too. Bus bandwidth
// = 2 (n-1)/n * bytes / time (NCCL-tests); with one rank (one GPU) the algorithm
// bandwidth bytes / time is printed instead. Rank 0 prints one row per size; the last
// column is cairn / raw (target >= 0.95).
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/allreduce_args.h"
#include "collectives/mpi_communicator.h"
#include "collectives/nccl_communicator.h"

namespace {

int Iterations(std::size_t bytes) {
  if (bytes <= (1u << 20)) return 200;
  if (bytes <= (16u << 20)) return 50;
  return 20;
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "cairn-nccl-allreduce-bench: %s\n", what.c_str());
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::exit(1);
}

void CheckCuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) Die(std::string(what) + ": " + cudaGetErrorString(e));
}

void CheckNccl(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) Die(std::string(what) + ": " + ncclGetErrorString(r));
}

}  // namespace

using cairn::bench::Median;

int main(int argc, char** argv) {
  cairn::bench::AllReduceArgs defaults;
  defaults.max_bytes = std::size_t{256} << 20;
  const auto args = cairn::bench::ParseAllReduceArgs(argc, argv, defaults);
  const int rounds = args.rounds;
  const std::size_t min_bytes = args.min_bytes, max_bytes = args.max_bytes;
  auto session = cairn::coll::MpiSession::Start();
  if (!session) Die(session.error().ToString());
  auto host = cairn::coll::MpiCommunicator::World(std::chrono::minutes(2));
  if (!host) Die(host.error().ToString());
  const int n = (*host)->size();
  const int rank = (*host)->rank();
  const int devices = cairn::coll::NcclCommunicator::VisibleDevices();
  if (devices < 1) Die("no CUDA device is visible");
  const int device = rank % devices;
  auto comm = cairn::coll::NcclCommunicator::Create(host->get(), device, std::chrono::minutes(2));
  if (!comm) Die(comm.error().ToString());

  // The raw baseline: a blocking communicator and a stream of its own on the same GPU.
  CheckCuda(cudaSetDevice(device), "cudaSetDevice");
  ncclUniqueId id;
  if (rank == 0) CheckNccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
  ncclComm_t raw = nullptr;
  CheckNccl(ncclCommInitRank(&raw, n, id, rank), "ncclCommInitRank");
  cudaStream_t stream = nullptr;
  CheckCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  if (rank == 0) {
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, device);
    int nccl_version = 0;
    ncclGetVersion(&nccl_version);
    std::printf("# allreduce f32 sum on %s, %d rank(s), NCCL %d, %d interleaved rounds, "
                "medians; %s\n",
                prop.name, n, nccl_version, rounds,
                n > 1 ? "bus bandwidth" : "one rank: algorithm bandwidth (bytes / time)");
    std::printf("%12s %12s %12s %14s %14s %8s\n", "bytes", "raw_us", "cairn_us", "raw_GB/s",
                "cairn_GB/s", "ratio");
  }
  for (std::size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
    const std::size_t count = bytes / 4;
    void* buf = nullptr;
    CheckCuda(cudaMalloc(&buf, bytes), "cudaMalloc");
    CheckCuda(cudaMemset(buf, 0, bytes), "cudaMemset");
    CheckCuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    const int iters = Iterations(bytes);
    auto raw_op = [&] {
      CheckNccl(ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, raw, stream),
                "ncclAllReduce");
      CheckCuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    };
    auto cairn_op = [&] {
      if (auto s = (*comm)->AllReduceSum(buf, count, cairn::coll::DataType::kF32); !s) {
        Die(s.error().ToString());
      }
    };
    auto time_it = [&](auto&& op) {
      MPI_Barrier(MPI_COMM_WORLD);
      auto t0 = std::chrono::steady_clock::now();
      for (int it = 0; it < iters; ++it) op();
      double local = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double worst = 0;
      MPI_Allreduce(&local, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      return worst / iters;
    };
    for (int w = 0; w < 5; ++w) {  // warm-up of both paths
      raw_op();
      cairn_op();
    }
    std::vector<double> raw_t, cairn_t;
    for (int r = 0; r < rounds; ++r) {
      raw_t.push_back(time_it(raw_op));
      cairn_t.push_back(time_it(cairn_op));
    }
    CheckCuda(cudaFree(buf), "cudaFree");
    const double gb = static_cast<double>(bytes) / 1e9;
    const double factor = n > 1 ? 2.0 * (n - 1) / n * gb : gb;
    const double raw_s = Median(raw_t), cairn_s = Median(cairn_t);
    if (rank == 0) {
      std::printf("%12zu %12.2f %12.2f %14.2f %14.2f %8.3f\n", bytes, raw_s * 1e6, cairn_s * 1e6,
                  factor / raw_s, factor / cairn_s, raw_s / cairn_s);
      std::fflush(stdout);
    }
  }
  ncclCommDestroy(raw);
  cudaStreamDestroy(stream);
  return 0;
}
