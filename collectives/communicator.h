// Communicator: the one collective-communication API of cairn jobs.
//
// Promise: every operation either completes on every rank with the result defined below,
// or returns an error on the calling rank within the communicator's timeout: a dead or
// stuck peer becomes kDeadlineExceeded (or kUnavailable when the backend reports the
// failure), never a hang. After any error the communicator is poisoned: every later call
// fails with kFailedPrecondition naming the first error, and the caller should end the
// attempt (exit); the orchestrator restarts it from the latest checkpoint. A timed-out
// operation may still complete into its buffer later, so the buffer's contents are
// unspecified after an error.
//
// Operations (collective: every rank calls them in the same order):
//   AllReduceSum  in place, element-wise sum over ranks; f32, f64, i64; any count incl. 0
//   Broadcast     bytes from `root` to every rank, in place
//   AllGather     every rank's byte string (lengths may differ), in rank order
//   Barrier
// Buffers live in the backend's memory_space(): host memory for MPI, device memory on
// the communicator's CUDA stream for NCCL.
//
// Threading: one thread at a time per communicator object. Independent communicators
// (MpiCommunicator::Duplicate()) may be used concurrently from different threads (the
// MPI backend initialises MPI with MPI_THREAD_MULTIPLE for this).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::coll {

enum class DataType : uint8_t { kF32, kF64, kI64 };
enum class MemorySpace : uint8_t { kHost, kCuda };

std::size_t DataTypeSize(DataType t);
std::string_view DataTypeName(DataType t);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual MemorySpace memory_space() const = 0;
  virtual std::string_view backend() const = 0;  // "mpi", "nccl"

  // Applies to every later operation; zero means no timeout.
  virtual void set_timeout(std::chrono::milliseconds timeout) = 0;
  virtual std::chrono::milliseconds timeout() const = 0;

  virtual Status AllReduceSum(void* data, std::size_t count, DataType type) = 0;
  virtual Status Broadcast(void* data, std::size_t bytes, int root) = 0;
  virtual Result<std::vector<std::string>> AllGather(std::string_view mine) = 0;
  virtual Status Barrier() = 0;

  // Typed conveniences.
  Status AllReduceSum(std::span<float> data) {
    return AllReduceSum(data.data(), data.size(), DataType::kF32);
  }
  Status AllReduceSum(std::span<double> data) {
    return AllReduceSum(data.data(), data.size(), DataType::kF64);
  }
  Status AllReduceSum(std::span<int64_t> data) {
    return AllReduceSum(data.data(), data.size(), DataType::kI64);
  }
};

}  // namespace cairn::coll
