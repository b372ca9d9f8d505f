#include "collectives/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <sched.h>

#include <cstring>

#include "common/log.h"

namespace cairn::coll {
namespace {

ncclDataType_t ToNccl(DataType t) {
  switch (t) {
    case DataType::kF32: return ncclFloat32;
    case DataType::kF64: return ncclFloat64;
    case DataType::kI64: return ncclInt64;
  }
  return ncclFloat32;
}

std::unexpected<Error> CudaError(cudaError_t e, std::string_view what) {
  return MakeError(Code::kUnavailable, "{}: CUDA error {} ({})", what, cudaGetErrorName(e),
                   cudaGetErrorString(e));
}

}  // namespace

struct NcclCommunicator::Impl {
  Communicator* host = nullptr;
  int device = 0;
  int rank = 0;
  int size = 0;
  std::chrono::milliseconds timeout{0};
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  std::unique_ptr<Error> poisoned;

  std::unexpected<Error> Poison(Error e) {
    e.With(fmt::format("nccl rank {} of {} (device {})", rank, size, device));
    if (comm != nullptr) ncclCommAbort(comm);
    comm = nullptr;
    poisoned = std::make_unique<Error>(e);
    return std::unexpected(std::move(e));
  }

  Status CheckUsable() const {
    if (poisoned) {
      return MakeError(Code::kFailedPrecondition,
                       "communicator unusable after an earlier error: {}",
                       poisoned->ToString());
    }
    return OkStatus();
  }

  // Waits until the communicator has no operation being enqueued (non-blocking mode
  // returns ncclInProgress from calls that are still being set up).
  // `op()` names the operation; it is called only to word an error, so the hot path
  // formats nothing.
  template <typename Op>
  Status WaitReady(const Op& op, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      ncclResult_t state = ncclSuccess;
      ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
      if (rc != ncclSuccess) state = rc;
      if (state == ncclSuccess) return OkStatus();
      if (state != ncclInProgress) {
        return Poison(Error(Code::kUnavailable,
                            fmt::format("{}: NCCL error: {} ({})", op(), ncclGetErrorString(state),
                                        ncclGetLastError(comm))));
      }
      if (timeout.count() > 0 && std::chrono::steady_clock::now() >= deadline) {
        return Poison(Error(Code::kDeadlineExceeded,
                            fmt::format("{} did not start within {} ms", op(), timeout.count())));
      }
      sched_yield();
    }
  }

  // Completes everything enqueued on the stream, watching for NCCL errors and the deadline.
  template <typename Op>
  Status Complete(const Op& op, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      cudaError_t q = cudaStreamQuery(stream);
      if (q == cudaSuccess) return OkStatus();
      if (q != cudaErrorNotReady) return Poison(CudaError(q, op()).error());
      ncclResult_t state = ncclSuccess;
      ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
      if (rc != ncclSuccess) state = rc;
      if (state != ncclSuccess && state != ncclInProgress) {
        return Poison(Error(Code::kUnavailable,
                            fmt::format("{}: NCCL error: {} ({})", op(), ncclGetErrorString(state),
                                        ncclGetLastError(comm))));
      }
      if (timeout.count() > 0 && std::chrono::steady_clock::now() >= deadline) {
        return Poison(Error(
            Code::kDeadlineExceeded,
            fmt::format("{} did not complete within {} ms (a peer is dead or stuck)", op(),
                        timeout.count())));
      }
      sched_yield();
    }
  }

  std::chrono::steady_clock::time_point Deadline() const {
    return std::chrono::steady_clock::now() + timeout;
  }
};

int NcclCommunicator::VisibleDevices() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

Result<std::unique_ptr<NcclCommunicator>> NcclCommunicator::Create(
    Communicator* host, int device, std::chrono::milliseconds timeout) {
  if (host == nullptr || host->memory_space() != MemorySpace::kHost) {
    return MakeError(Code::kInvalidArgument, "the NCCL backend needs a host communicator");
  }
  auto impl = std::make_unique<Impl>();
  impl->host = host;
  impl->device = device;
  impl->rank = host->rank();
  impl->size = host->size();
  impl->timeout = timeout;
  // Every rank must take part in the id broadcast even if its own device is unusable,
  // so failures are collected first and reported after it.
  cudaError_t dev_err = cudaSetDevice(device);
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (impl->rank == 0) {
    if (ncclResult_t rc = ncclGetUniqueId(&id); rc != ncclSuccess) {
      return MakeError(Code::kUnavailable, "ncclGetUniqueId: {}", ncclGetErrorString(rc));
    }
  }
  CAIRN_RETURN_IF_ERROR_CTX(host->Broadcast(&id, sizeof(id), 0), "broadcast of the NCCL id");
  if (dev_err != cudaSuccess) return CudaError(dev_err, fmt::format("cudaSetDevice({})", device));
  if (cudaError_t e = cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return CudaError(e, "cudaStreamCreate");
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclResult_t rc =
      ncclCommInitRankConfig(&impl->comm, impl->size, id, impl->rank, &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return MakeError(Code::kUnavailable, "ncclCommInitRankConfig: {}", ncclGetErrorString(rc));
  }
  CAIRN_RETURN_IF_ERROR(
      impl->WaitReady([] { return std::string("ncclCommInitRankConfig"); }, impl->Deadline()));
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl)));
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() {
  if (impl_->comm != nullptr) {
    ncclCommFinalize(impl_->comm);
    (void)impl_->WaitReady([] { return std::string("ncclCommFinalize"); }, impl_->Deadline());
    if (impl_->comm != nullptr) ncclCommDestroy(impl_->comm);
  }
  if (impl_->stream != nullptr) cudaStreamDestroy(impl_->stream);
}

int NcclCommunicator::rank() const { return impl_->rank; }
int NcclCommunicator::size() const { return impl_->size; }
void NcclCommunicator::set_timeout(std::chrono::milliseconds t) { impl_->timeout = t; }
std::chrono::milliseconds NcclCommunicator::timeout() const { return impl_->timeout; }
void* NcclCommunicator::stream() const { return impl_->stream; }
int NcclCommunicator::device() const { return impl_->device; }

Status NcclCommunicator::AllReduceSum(void* data, std::size_t count, DataType type) {
  CAIRN_RETURN_IF_ERROR(impl_->CheckUsable());
  if (count == 0) return OkStatus();  // NCCL needs no rendezvous for an empty reduction
  cudaSetDevice(impl_->device);
  const auto deadline = impl_->Deadline();
  ncclResult_t rc = ncclAllReduce(data, data, count, ToNccl(type), ncclSum, impl_->comm,
                                  impl_->stream);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return impl_->Poison(
        Error(Code::kUnavailable, fmt::format("ncclAllReduce: {}", ncclGetErrorString(rc))));
  }
  auto op = [&] { return fmt::format("allreduce of {} {} elements", count, DataTypeName(type)); };
  if (rc == ncclInProgress) CAIRN_RETURN_IF_ERROR(impl_->WaitReady(op, deadline));
  return impl_->Complete(op, deadline);
}

Status NcclCommunicator::Broadcast(void* data, std::size_t bytes, int root) {
  CAIRN_RETURN_IF_ERROR(impl_->CheckUsable());
  if (root < 0 || root >= impl_->size) {
    return MakeError(Code::kInvalidArgument, "broadcast root {} out of range [0, {})", root,
                     impl_->size);
  }
  if (bytes == 0) return OkStatus();
  cudaSetDevice(impl_->device);
  const auto deadline = impl_->Deadline();
  ncclResult_t rc =
      ncclBroadcast(data, data, bytes, ncclUint8, root, impl_->comm, impl_->stream);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    return impl_->Poison(
        Error(Code::kUnavailable, fmt::format("ncclBroadcast: {}", ncclGetErrorString(rc))));
  }
  auto op = [&] { return fmt::format("broadcast of {} bytes", bytes); };
  if (rc == ncclInProgress) CAIRN_RETURN_IF_ERROR(impl_->WaitReady(op, deadline));
  return impl_->Complete(op, deadline);
}

Result<std::vector<std::string>> NcclCommunicator::AllGather(std::string_view mine) {
  CAIRN_RETURN_IF_ERROR(impl_->CheckUsable());
  return impl_->host->AllGather(mine);
}

Status NcclCommunicator::Barrier() {
  CAIRN_RETURN_IF_ERROR(impl_->CheckUsable());
  cudaSetDevice(impl_->device);
  CAIRN_RETURN_IF_ERROR(
      impl_->Complete([] { return std::string("barrier (drain stream)"); }, impl_->Deadline()));
  return impl_->host->Barrier();
}

}  // namespace cairn::coll
