#include "coordinator/client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>

#include "common/io.h"
#include "coordinator/frame.h"
#include "proto/cairn.pb.h"

namespace cairn::coord {
namespace {

Code CodeFromName(const std::string& name) {
  for (Code c : {Code::kInvalidArgument, Code::kNotFound, Code::kFailedPrecondition,
                 Code::kPermissionDenied, Code::kUnavailable, Code::kResourceExhausted,
                 Code::kDeadlineExceeded, Code::kDataLoss, Code::kCancelled}) {
    if (CodeName(c) == name) return c;
  }
  return Code::kInternal;
}

int MillisLeft(std::chrono::steady_clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::max<int64_t>(0, left.count()));
}

// Waits for fd to become ready for `events` before the deadline.
Status WaitFd(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int left = MillisLeft(deadline);
    if (left == 0) return MakeError(Code::kDeadlineExceeded, "cairnd did not answer in time");
    int rc = ::poll(&p, 1, left);
    if (rc > 0) return OkStatus();
    if (rc < 0 && errno != EINTR) return ErrnoError(errno, "poll");
  }
}

// Set once by main() before any thread starts (SetConfiguredStateDir); read-only after.
std::string& ConfiguredStateDir() {
  static std::string dir;
  return dir;
}

}  // namespace

StateDirPaths::StateDirPaths(std::string d)
    : dir(std::move(d)),
      db(io::JoinPath(dir, "state.db")),
      token(io::JoinPath(dir, "token")),
      addr(io::JoinPath(dir, "cairnd.addr")),
      lock(io::JoinPath(dir, "cairnd.lock")),
      log(io::JoinPath(dir, "cairnd.log")) {}

void SetConfiguredStateDir(std::string dir) { ConfiguredStateDir() = std::move(dir); }

std::string DefaultStateDir(const std::string& flag, const std::string& configured) {
  if (!flag.empty()) return flag;
  if (const char* e = std::getenv("CAIRN_STATE_DIR"); e != nullptr && *e) return e;
  if (!configured.empty()) return configured;
  const char* home = std::getenv("HOME");
  return io::JoinPath(home != nullptr && *home ? home : "/tmp", ".cairn");
}

std::string DefaultStateDir(const std::string& flag) {
  return DefaultStateDir(flag, ConfiguredStateDir());
}

Result<std::string> ReadToken(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoError(errno, path);
  if ((st.st_mode & 077) != 0) {
    return MakeError(Code::kPermissionDenied,
                     "{}: the cluster token is readable by others (mode {:o}); chmod 600 it",
                     path, st.st_mode & 0777);
  }
  CAIRN_ASSIGN_OR_RETURN(std::string t, io::ReadWholeFile(io::DefaultFileSystem(), path, 4096));
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
  if (t.empty()) return MakeError(Code::kInvalidArgument, "{}: empty cluster token", path);
  return t;
}

Result<std::unique_ptr<Client>> Client::Connect(const std::string& state_dir,
                                                std::string client_id) {
  StateDirPaths paths(state_dir);
  auto token = ReadToken(paths.token);
  if (!token) {
    return std::unexpected(std::move(token).error().With(
        fmt::format("no cluster at {} (start one with cairnd --state-dir or `cairn up`)",
                    state_dir)));
  }
  if (client_id.empty()) {
    std::random_device rd;
    client_id = fmt::format("cli-{}-{:08x}", ::getpid(), rd());
  }
  return std::unique_ptr<Client>(new Client(std::move(paths), std::move(*token), std::move(client_id)));
}

Client::~Client() { Disconnect(); }

void Client::Disconnect() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status Client::Reconnect(std::chrono::steady_clock::time_point deadline) {
  Disconnect();
  auto addr = io::ReadWholeFile(io::DefaultFileSystem(), paths_.addr, 256);
  if (!addr) {
    return MakeError(Code::kUnavailable, "cairnd is not running at {} ({})", paths_.dir,
                     addr.error().ToString());
  }
  std::string a = *addr;
  while (!a.empty() && (a.back() == '\n' || a.back() == '\r')) a.pop_back();
  const auto colon = a.rfind(':');
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  if (colon == std::string::npos || ::inet_pton(AF_INET, a.substr(0, colon).c_str(), &sin.sin_addr) != 1) {
    return MakeError(Code::kDataLoss, "{}: '{}' is not host:port", paths_.addr, a);
  }
  sin.sin_port = htons(static_cast<uint16_t>(std::atoi(a.c_str() + colon + 1)));
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoError(errno, "socket");
  int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
  if (rc != 0 && errno != EINPROGRESS) {
    int err = errno;
    ::close(fd);
    return MakeError(Code::kUnavailable, "connect to cairnd at {}: {}", a, std::strerror(err));
  }
  if (rc != 0) {
    if (auto w = WaitFd(fd, POLLOUT, deadline); !w) {
      ::close(fd);
      return w;
    }
    int err = 0;
    socklen_t len = sizeof(err);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      ::close(fd);
      return MakeError(Code::kUnavailable, "connect to cairnd at {}: {}", a, std::strerror(err));
    }
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  fd_ = fd;
  return OkStatus();
}

Result<std::string> Client::Call(const std::string& method, const std::string& payload,
                                 std::chrono::milliseconds deadline_in) {
  const auto deadline = std::chrono::steady_clock::now() + deadline_in;
  proto::Envelope req;
  req.set_protocol_version(kProtocolVersion);
  req.set_client_id(client_id_);
  req.set_request_id(next_request_id_++);
  req.set_method(method);
  req.set_payload(payload);
  req.set_auth_token(token_);
  CAIRN_ASSIGN_OR_RETURN(std::string frame, EncodeFrame(req));
  Error last(Code::kUnavailable, "not connected");
  for (int attempt = 0; std::chrono::steady_clock::now() < deadline; ++attempt) {
    if (attempt > 0) {  // back off briefly before resending the same request id
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(50 * attempt, 500)));
    }
    if (fd_ < 0) {
      if (auto c = Reconnect(deadline); !c) {
        last = c.error();
        continue;
      }
    }
    // Send the whole frame.
    std::size_t sent = 0;
    bool broken = false;
    while (sent < frame.size()) {
      ssize_t n = ::send(fd_, frame.data() + sent, frame.size() - sent, MSG_NOSIGNAL);
      if (n > 0) {
        sent += static_cast<std::size_t>(n);
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        if (auto w = WaitFd(fd_, POLLOUT, deadline); !w) return std::unexpected(w.error());
      } else {
        last = Error(Code::kUnavailable, fmt::format("send to cairnd: {}", std::strerror(errno)));
        broken = true;
        break;
      }
    }
    // Read the reply frame.
    FrameDecoder decoder;
    char buf[16384];
    while (!broken) {
      if (auto w = WaitFd(fd_, POLLIN, deadline); !w) return std::unexpected(w.error());
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n <= 0) {
        last = Error(Code::kUnavailable, "cairnd closed the connection");
        broken = true;
        break;
      }
      std::string_view chunk(buf, static_cast<std::size_t>(n));
      for (;;) {
        chunk.remove_prefix(decoder.Feed(chunk));
        CAIRN_ASSIGN_OR_RETURN(auto reply, WithContext(decoder.Next(), "reply from cairnd"));
        if (!reply) break;
        if (reply->request_id() != req.request_id()) continue;  // a stale reply
        if (reply->has_error()) {
          return std::unexpected(Error(CodeFromName(reply->error().code()), reply->error().message()));
        }
        return std::string(reply->payload());
      }
    }
    Disconnect();
  }
  return std::unexpected(std::move(last).With(fmt::format("{} to cairnd at {}", method, paths_.dir)));
}

}  // namespace cairn::coord
