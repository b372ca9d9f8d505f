// cairnd's side of remote logs: writes the log chunks that agents which do not share
// cairnd's state directory send with their heartbeats (worker/log_shipper.h), into
// <state>/logs/<job>/attempt-<n>/<path>, where `cairn logs` reads.
//
// Promise: a chunk is written only for an attempt that exists and was placed on the
// sending node, at its offset (a chunk sent twice writes the same bytes again), below
// the attempt's log directory: a path that is absolute, has an empty, "." or ".."
// component, or is longer than 512 bytes, a chunk over 1 MiB, or an offset past 64 GiB
// is refused with an error naming the node and what is wrong, and nothing is written.
//
// Threading: one thread (cairnd's io_context, from Service::Heartbeat).
#pragma once

#include <map>
#include <string>
#include <tuple>

#include "common/status.h"
#include "coordinator/state_store.h"
#include "proto/cairn.pb.h"

namespace cairn::coord {

class LogSink {
 public:
  LogSink(std::string state_dir, StateStore* store)
      : state_dir_(std::move(state_dir)), store_(store) {}

  Status Write(const std::string& node_id, const proto::LogChunk& chunk);

  // Whether an agent shares this state directory: it wrote `probe` into
  // <its state dir>/agents/<node>/probe just before registering.
  bool SharesStateDir(const std::string& node_id, const std::string& probe) const;

 private:
  std::string state_dir_;
  StateStore* store_;
  // (job, attempt, node) -> placed there (a cache of the stored placements).
  std::map<std::tuple<std::string, uint32_t, std::string>, bool> placed_;
};

}  // namespace cairn::coord
