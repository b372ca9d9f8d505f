// Progress reports from a rank to its local agent (or, for the slurm executor's ranks,
// to cairnd itself): step, loss, throughput, pid.
//
// Promise: Report() never blocks and never fails the training: each report is one
// datagram sent non-blocking to the destination in CAIRN_PROGRESS_SOCKET, at most one
// per kMinIntervalMs (a new checkpoint head always goes out); when the variable is
// absent, the destination is gone or its queue is full, the report is dropped (and
// counted). ReportExit() waits up to 1 s for room. Destinations:
//   /path/to/socket                   a Unix datagram socket (the agent's); each datagram
//                                     is a serialised cairn.RankProgress
//   udp://HOST:PORT/KEY_ID?key=HEX    UDP (cairnd's, for ranks without an agent); each
//                                     datagram is a cairn.ProgressDatagram: KEY_ID, the
//                                     serialised RankProgress and its ProgressTag under
//                                     the 32-byte key HEX, so only holders of the key can
//                                     report for KEY_ID
// A destination that does not parse, or whose host does not resolve (looked up once, at
// construction), disables the reports with a warning. The receiver uses the reports for
// hang detection: a rank that stops reporting is stuck.
//
// Threading: one thread at a time.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <utility>

namespace cairn::rt {

// HMAC-SHA256(key, "cairn.progress.v1" NUL key_id NUL progress): the tag of a
// ProgressDatagram (32 raw bytes).
std::string ProgressTag(std::string_view key, std::string_view key_id, std::string_view progress);

class ProgressReporter {
 public:
  // Disabled (every Report is a no-op) when `destination` is empty (see above).
  ProgressReporter(std::string destination, std::string run_id, int rank);
  ~ProgressReporter();
  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  bool enabled() const { return fd_ >= 0; }
  void Report(uint64_t step, double loss, double samples_per_second);
  // Says the rank is about to exit on its own with `exit_code`: a rank that vanishes
  // without this report died (killed, crashed), and its agent ends the attempt at once
  // instead of waiting for the launcher to notice.
  void ReportExit(int exit_code);
  // The newest durable checkpoint (step, manifest digest in hex), carried by every later
  // report so the orchestrator can hand it to the next attempt (rollback detection);
  // the last kRecentHeads of them travel too, so that each one is attested even when
  // several commit between two of the agent's heartbeats.
  void SetCheckpoint(uint64_t step, std::string head_hex) {
    ckpt_step_ = step;
    ckpt_head_ = std::move(head_hex);
    if (!recent_.empty() && recent_.back().first == step) recent_.pop_back();
    recent_.emplace_back(step, ckpt_head_);
    if (recent_.size() > kRecentHeads) recent_.pop_front();
  }
  static constexpr std::size_t kRecentHeads = 16;
  // The checkpoint this attempt resumed from (manifest digest, hex), carried by every
  // later report: the orchestrator records it as the attempt's provenance.
  void SetResumedFrom(std::string manifest_hex) { resumed_from_ = std::move(manifest_hex); }
  // The checkpoint directory (absolute), so the orchestrator knows where the heads are.
  void SetCheckpointDir(std::string dir) { ckpt_dir_ = std::move(dir); }
  uint64_t sent() const { return sent_; }
  uint64_t dropped() const { return dropped_; }
  uint64_t coalesced() const { return coalesced_; }  // skipped: too soon after the last
  static constexpr int kMinIntervalMs = 50;

 private:
  std::string path_;  // the destination as given
  std::string run_id_;
  // Where datagrams go: a Unix socket address, or (udp) the resolved host and port.
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  bool udp_ = false;
  std::string key_id_;  // udp: the attempt the key is for
  std::string key_;     // udp: 32 raw bytes
  int rank_;
  int fd_ = -1;
  uint64_t sent_ = 0;
  uint64_t dropped_ = 0;
  bool Send(uint64_t step, double loss, double samples_per_second);

  uint64_t ckpt_step_ = 0;
  uint64_t sent_ckpt_step_ = 0;
  uint64_t coalesced_ = 0;
  std::chrono::steady_clock::time_point last_sent_{};
  uint64_t last_step_ = 0;
  bool exiting_ = false;
  int exit_code_ = 0;
  std::string ckpt_head_;
  std::deque<std::pair<uint64_t, std::string>> recent_;  // (step, head), oldest first
  std::string resumed_from_;
  std::string ckpt_dir_;
};

}  // namespace cairn::rt
