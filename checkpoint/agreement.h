// The agreement step of a sharded commit, abstracted from the transport.
//
// Promise: AllGather gives every rank every rank's contribution, in rank order, or
// fails on every rank (kUnavailable / kDeadlineExceeded) when a peer is gone; it never
// hangs past its deadline. The checkpoint writer uses it twice per commit: to collect the
// shard reports on rank 0, and to tell every rank the manifest digest (or the failure).
// Implementations: LocalAgreement (one process, world size 1), ThreadGroupAgreement
// (ranks as threads of one process, for tests and single-node multi-threaded use), and
// the collectives/ Communicator (MPI/NCCL jobs).
//
// Threading: one call at a time per rank object; ThreadGroupAgreement objects of the same
// group are used from different threads.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::ckpt {

class Agreement {
 public:
  virtual ~Agreement() = default;
  virtual uint32_t rank() const = 0;
  virtual uint32_t size() const = 0;
  virtual Result<std::vector<std::string>> AllGather(std::string_view mine) = 0;
};

class LocalAgreement final : public Agreement {
 public:
  uint32_t rank() const override { return 0; }
  uint32_t size() const override { return 1; }
  Result<std::vector<std::string>> AllGather(std::string_view mine) override {
    return std::vector<std::string>{std::string(mine)};
  }
};

// N ranks as threads. Create the group once, then give each thread its Rank(i).
class ThreadGroupAgreement {
 public:
  ThreadGroupAgreement(uint32_t size, std::chrono::milliseconds timeout);
  std::unique_ptr<Agreement> Rank(uint32_t rank);
  // Makes every pending and future AllGather fail (a peer "died").
  void Abort();

 private:
  class Member;
  Result<std::vector<std::string>> Gather(uint32_t rank, std::string_view mine);

  const uint32_t size_;
  const std::chrono::milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  // State below is protected by mu_.
  uint64_t generation_ = 0;
  uint32_t arrived_ = 0;
  bool aborted_ = false;
  std::vector<std::string> slots_;
  std::vector<std::string> result_;
};

}  // namespace cairn::ckpt
