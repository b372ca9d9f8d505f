// The checkpoint commit's agreement step (ckpt::Agreement) over a Communicator, so that
// sharded checkpoints of an MPI job commit with the job's own ranks.
//
// Promise: AllGather is the communicator's AllGather, with its timeout: a dead peer fails
// the commit on every live rank instead of hanging it.
//
// Threading: as the communicator; give the checkpoint writer its own communicator
// (MpiCommunicator::Duplicate) when it commits on a background thread.
#pragma once

#include "checkpoint/agreement.h"
#include "collectives/communicator.h"

namespace cairn::coll {

class CommunicatorAgreement final : public ckpt::Agreement {
 public:
  explicit CommunicatorAgreement(Communicator* comm) : comm_(comm) {}
  uint32_t rank() const override { return static_cast<uint32_t>(comm_->rank()); }
  uint32_t size() const override { return static_cast<uint32_t>(comm_->size()); }
  Result<std::vector<std::string>> AllGather(std::string_view mine) override {
    return WithContext(comm_->AllGather(mine), "checkpoint agreement");
  }

 private:
  Communicator* comm_;
};

}  // namespace cairn::coll
