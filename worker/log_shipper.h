// The agent's side of remote logs: when cairnd does not share the agent's state
// directory (RegisterNodeReply.ship_logs), the new bytes of every log file of the runs
// this agent started travel with its heartbeats, and cairnd writes them where `cairn
// logs` reads.
//
// Promise: each file under a tracked attempt's log directory
// (<state>/logs/<job>/attempt-<n>/, subdirectories included) is sent from the offset
// cairnd last acknowledged, in chunks of at most kMaxChunkBytes and at most `budget`
// bytes per heartbeat, oldest files first; a chunk counts as delivered only once the
// heartbeat that carried it was answered, so a lost heartbeat is sent again (cairnd
// writes at the offset: a repeat is harmless). An attempt is forgotten once it has ended
// (Untrack) and everything of it was delivered.
//
// Threading: all methods may be called from any thread (one mutex).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "proto/cairn.pb.h"

namespace cairn::worker {

class LogShipper {
 public:
  static constexpr std::size_t kMaxChunkBytes = 256 << 10;
  static constexpr std::size_t kHeartbeatBudget = 1 << 20;

  explicit LogShipper(std::string logs_root) : root_(std::move(logs_root)) {}

  void set_enabled(bool on);
  bool enabled() const;

  void Track(const std::string& job_id, uint32_t attempt);
  // The attempt has ended: forget it once everything of it is delivered.
  void Untrack(const std::string& job_id, uint32_t attempt);

  // Adds the next chunks (at most `budget` bytes) to the heartbeat.
  void Collect(proto::HeartbeatRequest* hb, std::size_t budget = kHeartbeatBudget);
  // The heartbeat was answered: its chunks are delivered.
  void Delivered(const proto::HeartbeatRequest& hb);
  // Bytes written that are not delivered yet (a reason to heartbeat again at once).
  bool Backlog();
  // The same, for one attempt (while shipping is on).
  bool Pending(const std::string& job_id, uint32_t attempt);

 private:
  using Attempt = std::pair<std::string, uint32_t>;
  std::string Dir(const Attempt& a) const;

  std::string root_;
  mutable std::mutex mu_;
  bool enabled_ = false;
  std::set<Attempt> tracked_;
  std::set<Attempt> ended_;
  std::map<Attempt, std::map<std::string, uint64_t>> delivered_;  // path -> bytes delivered
};

}  // namespace cairn::worker
