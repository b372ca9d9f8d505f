// The Open MPI backend of Communicator (host buffers).
//
// Promise: every operation is non-blocking MPI (MPI_Ibcast, MPI_Iallgather[v],
// MPI_Ibarrier; allreduce over MPI_Isend/MPI_Irecv: recursive doubling or a direct
// exchange for small buffers, Rabenseifner or a ring for larger ones) completed by a polling loop that gives up at the communicator's
// deadline, so a peer that died or stopped answering is an error after at most
// timeout(), not a hang; receives not yet matched are cancelled then. Allreduce results
// are bit-identical on every rank and depend only on the inputs and the rank count.
// Counts beyond MPI's int range are split into pieces. MPI errors are returned
// (MPI_ERRORS_RETURN), never abort the process.
//
// MpiSession owns MPI's lifetime: MPI_Init_thread(MPI_THREAD_MULTIPLE) on construction
// (or nothing if MPI is already initialised) and MPI_Finalize on destruction, unless a
// communicator was poisoned: then finalising could block on the dead peer, and the
// session leaves it to process exit.
//
// Threading: see Communicator. Duplicate() gives an independent communicator (its own
// MPI_Comm) for use from another thread, e.g. the checkpoint writer's background commit.
#pragma once

#include <atomic>
#include <memory>

#include "collectives/communicator.h"

namespace cairn::coll {

class MpiSession {
 public:
  static Result<std::unique_ptr<MpiSession>> Start();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  // Set by a communicator that gave up on a pending operation.
  static void MarkPoisoned();
  static bool poisoned();
  // Clears that mark; only for callers that know every abandoned operation has since
  // completed on all ranks (tests that provoke a timeout on purpose).
  static void ForgetAbandonedOperations();

 private:
  MpiSession(bool owns) : owns_(owns) {}
  bool owns_;
};

class MpiCommunicator final : public Communicator {
 public:
  // MPI_COMM_WORLD (duplicated, so cairn's traffic never mixes with the program's own).
  // Requires a live MpiSession.
  static Result<std::unique_ptr<MpiCommunicator>> World(
      std::chrono::milliseconds timeout = std::chrono::minutes(5));
  ~MpiCommunicator() override;

  Result<std::unique_ptr<MpiCommunicator>> Duplicate() const;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MemorySpace memory_space() const override { return MemorySpace::kHost; }
  std::string_view backend() const override { return "mpi"; }
  void set_timeout(std::chrono::milliseconds t) override { timeout_ = t; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  Status AllReduceSum(void* data, std::size_t count, DataType type) override;
  Status Broadcast(void* data, std::size_t bytes, int root) override;
  Result<std::vector<std::string>> AllGather(std::string_view mine) override;
  Status Barrier() override;
  using Communicator::AllReduceSum;

  // Allreduce algorithm choice. small_bytes: up to this many bytes sent per rank
  // ((p-1) x buffer), recursive doubling or the direct exchange; above it Rabenseifner or
  // the ring. Results do not depend on it. World() reads it from
  // CAIRN_ALLREDUCE_SMALL_BYTES when set (for tuning with bench/allreduce_bench.cc; every
  // rank must see the same value); Duplicate() keeps it.
  struct AllReduceTuning {
    std::size_t small_bytes = 64 << 10;
  };
  void set_allreduce_tuning(AllReduceTuning t) { tuning_ = t; }
  AllReduceTuning allreduce_tuning() const { return tuning_; }

  // Operations on more elements than this run in pieces (default 2^30, MPI's int
  // counts); tests lower it to exercise the splitting.
  void set_piece_elements(std::size_t n) {
    piece_elements_ = n == 0 ? 1 : (n > (std::size_t{1} << 30) ? std::size_t{1} << 30 : n);
  }

 private:
  MpiCommunicator(void* comm, int rank, int size, std::chrono::milliseconds timeout)
      : comm_(comm), rank_(rank), size_(size), timeout_(timeout) {}
  Status CheckUsable() const;
  // Completes *request within the deadline; on failure poisons the communicator.
  Status Complete(void* request, std::string_view op);
  Status CompleteAll(void* requests, int n, std::string_view op);
  Status AllReducePiece(std::byte* data, std::size_t count, DataType type, const std::string& op);
  std::unexpected<Error> Poison(Error error);

  void* comm_;  // MPI_Comm* (heap), kept opaque so that users need not include mpi.h
  int rank_;
  int size_;
  std::chrono::milliseconds timeout_;
  std::size_t piece_elements_ = std::size_t{1} << 30;
  AllReduceTuning tuning_;
  std::unique_ptr<Error> poisoned_;
  std::unique_ptr<std::byte[]> scratch_;  // allreduce results land here first
  std::size_t scratch_size_ = 0;
};

}  // namespace cairn::coll
