#include "runtime/progress.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "common/log.h"
#include "proto/cairn.pb.h"

namespace cairn::rt {

ProgressReporter::ProgressReporter(std::string socket_path, std::string run_id, int rank)
    : path_(std::move(socket_path)), run_id_(std::move(run_id)), rank_(rank) {
  if (path_.empty()) return;
  if (path_.size() >= sizeof(sockaddr_un{}.sun_path)) {
    log::Logger("runtime")->warn("progress socket path too long, reports disabled: {}", path_);
    return;
  }
  fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    log::Logger("runtime")->warn("progress socket: {}", std::strerror(errno));
  }
}

ProgressReporter::~ProgressReporter() {
  if (fd_ >= 0) close(fd_);
}

void ProgressReporter::ReportExit(int exit_code) {
  exiting_ = true;
  exit_code_ = exit_code;
  // This one must arrive (without it the agent takes the exit for a death): wait for
  // room in the agent's queue, up to 1 s.
  for (int i = 0; i < 1000 && fd_ >= 0; ++i) {
    if (Send(last_step_, 0.0, 0.0)) return;
    if (errno != EAGAIN && errno != EWOULDBLOCK) break;
    ::usleep(1000);
  }
  ++dropped_;
}

void ProgressReporter::Report(uint64_t step, double loss, double samples_per_second) {
  last_step_ = step;
  if (fd_ < 0) return;
  // At most one report per kMinIntervalMs (the agent drains its queue every 100 ms and
  // the queue is short), except a new checkpoint head.
  const auto now = std::chrono::steady_clock::now();
  if (now - last_sent_ < std::chrono::milliseconds(kMinIntervalMs) &&
      ckpt_step_ == sent_ckpt_step_) {
    ++coalesced_;
    return;
  }
  if (Send(step, loss, samples_per_second)) {
    last_sent_ = now;
    sent_ckpt_step_ = ckpt_step_;
  } else {
    ++dropped_;
  }
}

bool ProgressReporter::Send(uint64_t step, double loss, double samples_per_second) {
  cairn::proto::RankProgress msg;
  msg.set_run_id(run_id_);
  msg.set_rank(static_cast<uint32_t>(rank_));
  msg.set_step(step);
  msg.set_loss(loss);
  msg.set_samples_per_second(samples_per_second);
  msg.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count());
  msg.set_pid(static_cast<uint32_t>(getpid()));
  msg.set_exiting(exiting_);
  msg.set_exit_code(exit_code_);
  if (!resumed_from_.empty()) msg.set_resumed_from(resumed_from_);
  if (!ckpt_dir_.empty()) msg.set_ckpt_dir(ckpt_dir_);
  for (const auto& [step, head] : recent_) {
    auto* h = msg.add_recent_heads();
    h->set_step(step);
    h->set_head(head);
  }
  if (ckpt_step_ > 0) {
    msg.set_ckpt_step(ckpt_step_);
    msg.set_ckpt_head(ckpt_head_);
  }
  std::string bytes = msg.SerializeAsString();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path_.data(), path_.size());
  ssize_t n = sendto(fd_, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                     reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  if (n != static_cast<ssize_t>(bytes.size())) return false;
  ++sent_;
  return true;
}

}  // namespace cairn::rt
