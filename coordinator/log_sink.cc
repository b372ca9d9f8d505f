#include "coordinator/log_sink.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/io.h"

namespace cairn::coord {
namespace {

constexpr std::size_t kMaxChunk = 1 << 20;
constexpr uint64_t kMaxOffset = uint64_t{64} << 30;

// Empty when `path` stays below its directory; else what is wrong with it.
std::string PathProblem(const std::string& path) {
  if (path.empty()) return "empty path";
  if (path.size() > 512) return "path longer than 512 bytes";
  if (path.front() == '/') return "absolute path";
  if (path.find('\0') != std::string::npos) return "NUL in path";
  std::size_t at = 0;
  for (int depth = 0;; ++depth) {
    if (depth >= 8) return "path deeper than 8 levels";
    const std::size_t slash = path.find('/', at);
    const std::string part = path.substr(at, slash == std::string::npos ? slash : slash - at);
    if (part.empty() || part == "." || part == "..") return "'" + part + "' component";
    if (slash == std::string::npos) return {};
    at = slash + 1;
  }
}

// A node id as one path component, or empty when it cannot be one.
bool SafeComponent(const std::string& s) {
  return !s.empty() && s.size() <= 128 && s != "." && s != ".." &&
         s.find('/') == std::string::npos && s.find('\0') == std::string::npos;
}

}  // namespace

bool LogSink::SharesStateDir(const std::string& node_id, const std::string& probe) const {
  if (probe.empty() || !SafeComponent(node_id)) return false;
  std::ifstream f(state_dir_ + "/agents/" + node_id + "/probe");
  std::string seen;
  std::getline(f, seen);
  return seen == probe;
}

Status LogSink::Write(const std::string& node_id, const proto::LogChunk& c) {
  auto refuse = [&](const std::string& why) {
    return MakeError(Code::kInvalidArgument, "log chunk from node {} for {} attempt {} '{}': {}",
                     node_id, c.job_id(), c.attempt(), c.path(), why);
  };
  if (const std::string p = PathProblem(c.path()); !p.empty()) return refuse(p);
  if (c.data().size() > kMaxChunk) return refuse("chunk over 1 MiB");
  if (c.offset() > kMaxOffset || c.offset() + c.data().size() > kMaxOffset) {
    return refuse("offset past 64 GiB");
  }
  const auto key = std::make_tuple(c.job_id(), c.attempt(), node_id);
  auto it = placed_.find(key);
  if (it == placed_.end()) {
    auto bytes = store_->RunPlacement(c.job_id(), c.attempt());
    if (!bytes) return refuse("no such attempt");
    proto::PlacementRecord placement;
    if (!placement.ParseFromString(*bytes)) return refuse("its placement does not parse");
    bool here = false;
    for (const auto& r : placement.ranks()) here = here || r.node_id() == node_id;
    it = placed_.emplace(key, here).first;
  }
  if (!it->second) return refuse("the attempt was not placed on this node");
  const std::string path =
      fmt::format("{}/logs/{}/attempt-{}/{}", state_dir_, c.job_id(), c.attempt(), c.path());
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  if (ec) return ErrnoError(ec.value(), fmt::format("log of node {}: create {}", node_id, path));
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return ErrnoError(errno, fmt::format("log of node {}: open {}", node_id, path));
  std::size_t done = 0;
  while (done < c.data().size()) {
    const ssize_t n = ::pwrite(fd, c.data().data() + done, c.data().size() - done,
                               static_cast<off_t>(c.offset() + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      return ErrnoError(err, fmt::format("log of node {}: write {}", node_id, path));
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return OkStatus();
}

}  // namespace cairn::coord
