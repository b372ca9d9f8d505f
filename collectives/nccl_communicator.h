// The NCCL backend of Communicator (device buffers on a CUDA stream). Built only when
// CUDA is found (CAIRN_WITH_CUDA), as cairn::collectives_nccl.
//
// Promise: the NCCL communicator is created non-blocking (ncclConfig_t.blocking = 0) from
// a unique id that rank 0 broadcasts over the host communicator (MPI). Every operation
// is enqueued on the communicator's stream and then completed by polling
// cudaStreamQuery and ncclCommGetAsyncError; on an asynchronous NCCL error or when the
// deadline passes, the communicator is aborted (ncclCommAbort) and the call returns the
// error, so a dead peer never hangs the rank. AllReduceSum and Broadcast take device
// pointers; AllGather (host strings) and Barrier go over the host communicator, which
// must outlive this one.
//
// Threading: one thread at a time; the CUDA device is selected with cudaSetDevice
// before every call that touches it.
#pragma once

#include <memory>

#include "collectives/communicator.h"

namespace cairn::coll {

class NcclCommunicator final : public Communicator {
 public:
  // Collective over `host` (every rank calls it). `device` is the CUDA device ordinal of
  // this rank (usually the local rank within CUDA_VISIBLE_DEVICES).
  static Result<std::unique_ptr<NcclCommunicator>> Create(Communicator* host, int device,
                                                          std::chrono::milliseconds timeout);
  ~NcclCommunicator() override;

  int rank() const override;
  int size() const override;
  MemorySpace memory_space() const override { return MemorySpace::kCuda; }
  std::string_view backend() const override { return "nccl"; }
  void set_timeout(std::chrono::milliseconds t) override;
  std::chrono::milliseconds timeout() const override;

  Status AllReduceSum(void* data, std::size_t count, DataType type) override;
  Status Broadcast(void* data, std::size_t bytes, int root) override;
  Result<std::vector<std::string>> AllGather(std::string_view mine) override;
  Status Barrier() override;
  using Communicator::AllReduceSum;

  // The cudaStream_t operations run on (opaque so that users need not include CUDA).
  void* stream() const;
  int device() const;

  // Number of CUDA devices visible to this process (0 when no driver or no GPU).
  static int VisibleDevices();

 private:
  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cairn::coll
