#include "runtime/progress.h"

#include <fcntl.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "common/log.h"
#include "proto/cairn.pb.h"

namespace cairn::rt {
namespace {

// "0a1b..." (64 hex digits) -> 32 bytes; "" when it is not that.
std::string KeyFromHex(std::string_view hex) {
  if (hex.size() != 64) return "";
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return "";
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

}  // namespace

std::string ProgressTag(std::string_view key, std::string_view key_id, std::string_view progress) {
  std::string data = "cairn.progress.v1";
  data.push_back('\0');
  data.append(key_id);
  data.push_back('\0');
  data.append(progress);
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len) ==
      nullptr) {
    return "";
  }
  return std::string(reinterpret_cast<const char*>(out), len);
}

ProgressReporter::ProgressReporter(std::string destination, std::string run_id, int rank)
    : path_(std::move(destination)), run_id_(std::move(run_id)), rank_(rank) {
  if (path_.empty()) return;
  auto disable = [&](const std::string& why) {
    log::Logger("runtime")->warn("progress destination '{}': {}; reports disabled",
                                 path_.substr(0, path_.find("?key=")), why);
  };
  if (path_.starts_with("udp://")) {
    // udp://HOST:PORT/KEY_ID?key=HEX (HOST may be [v6 address])
    const std::string rest = path_.substr(6);
    const auto slash = rest.find('/');
    const auto q = rest.find("?key=", slash == std::string::npos ? 0 : slash);
    if (slash == std::string::npos || q == std::string::npos) {
      disable("expected udp://HOST:PORT/KEY_ID?key=HEX");
      return;
    }
    const std::string hostport = rest.substr(0, slash);
    key_id_ = rest.substr(slash + 1, q - slash - 1);
    key_ = KeyFromHex(rest.substr(q + 5));
    const auto colon = hostport.rfind(':');
    if (colon == std::string::npos || key_id_.empty() || key_.empty()) {
      disable("expected udp://HOST:PORT/KEY_ID?key=<64 hex digits>");
      return;
    }
    std::string host = hostport.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (const int rc = getaddrinfo(host.c_str(), hostport.substr(colon + 1).c_str(), &hints, &res);
        rc != 0 || res == nullptr) {
      disable(fmt::format("cannot resolve {}: {}", hostport, gai_strerror(rc)));
      return;
    }
    std::memcpy(&addr_, res->ai_addr, res->ai_addrlen);
    addr_len_ = res->ai_addrlen;
    const int family = res->ai_family;
    freeaddrinfo(res);
    udp_ = true;
    fd_ = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  } else {
    if (path_.size() >= sizeof(sockaddr_un{}.sun_path)) {
      disable("socket path too long");
      return;
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.data(), path_.size());
    std::memcpy(&addr_, &addr, sizeof addr);
    addr_len_ = sizeof addr;
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  }
  if (fd_ < 0) disable(std::strerror(errno));
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
  if (udp_) {
    cairn::proto::ProgressDatagram d;
    d.set_key_id(key_id_);
    d.set_tag(ProgressTag(key_, key_id_, bytes));
    d.set_progress(std::move(bytes));
    bytes = d.SerializeAsString();
  }
  ssize_t n = sendto(fd_, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                     reinterpret_cast<const sockaddr*>(&addr_), addr_len_);
  if (n != static_cast<ssize_t>(bytes.size())) return false;
  ++sent_;
  return true;
}

}  // namespace cairn::rt
