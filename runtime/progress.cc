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
  Report(last_step_, 0.0, 0.0);
}

void ProgressReporter::Report(uint64_t step, double loss, double samples_per_second) {
  last_step_ = step;
  if (fd_ < 0) return;
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
  if (n == static_cast<ssize_t>(bytes.size())) {
    ++sent_;
  } else {
    ++dropped_;
  }
}

}  // namespace cairn::rt
