#include "worker/log_shipper.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include <fmt/format.h>

namespace cairn::worker {
namespace fs = std::filesystem;

namespace {

// The regular files below `dir` (relative paths, sorted), at most 256 of them.
std::vector<std::pair<std::string, uint64_t>> Files(const std::string& dir) {
  std::vector<std::pair<std::string, uint64_t>> out;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
  for (; !ec && it != fs::recursive_directory_iterator() && out.size() < 256; it.increment(ec)) {
    std::error_code e2;
    if (!it->is_regular_file(e2)) continue;
    const uint64_t size = it->file_size(e2);
    if (e2) continue;
    out.emplace_back(fs::relative(it->path(), dir, e2).string(), size);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

void LogShipper::set_enabled(bool on) {
  std::lock_guard lock(mu_);
  enabled_ = on;
}

bool LogShipper::enabled() const {
  std::lock_guard lock(mu_);
  return enabled_;
}

std::string LogShipper::Dir(const Attempt& a) const {
  return fmt::format("{}/{}/attempt-{}", root_, a.first, a.second);
}

void LogShipper::Track(const std::string& job_id, uint32_t attempt) {
  std::lock_guard lock(mu_);
  tracked_.insert({job_id, attempt});
  ended_.erase({job_id, attempt});
}

void LogShipper::Untrack(const std::string& job_id, uint32_t attempt) {
  std::lock_guard lock(mu_);
  if (tracked_.contains({job_id, attempt})) ended_.insert({job_id, attempt});
}

void LogShipper::Collect(proto::HeartbeatRequest* hb, std::size_t budget) {
  std::lock_guard lock(mu_);
  if (!enabled_) return;
  for (const Attempt& a : tracked_) {
    const std::string dir = Dir(a);
    auto& done = delivered_[a];
    for (const auto& [path, size] : Files(dir)) {
      uint64_t offset = done[path];
      while (offset < size && budget > 0) {
        const std::size_t want =
            static_cast<std::size_t>(std::min<uint64_t>({size - offset, kMaxChunkBytes, budget}));
        std::string data(want, '\0');
        const int fd = ::open((dir + "/" + path).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) break;
        const ssize_t n = ::pread(fd, data.data(), want, static_cast<off_t>(offset));
        ::close(fd);
        if (n <= 0) break;
        data.resize(static_cast<std::size_t>(n));
        auto* c = hb->add_logs();
        c->set_job_id(a.first);
        c->set_attempt(a.second);
        c->set_path(path);
        c->set_offset(offset);
        c->set_data(std::move(data));
        offset += static_cast<uint64_t>(n);
        budget -= static_cast<std::size_t>(n);
      }
      if (budget == 0) return;
    }
  }
}

void LogShipper::Delivered(const proto::HeartbeatRequest& hb) {
  std::lock_guard lock(mu_);
  for (const auto& c : hb.logs()) {
    uint64_t& done = delivered_[{c.job_id(), c.attempt()}][c.path()];
    done = std::max<uint64_t>(done, c.offset() + c.data().size());
  }
  // Ended attempts with nothing left are forgotten.
  for (auto it = ended_.begin(); it != ended_.end();) {
    bool left = false;
    auto& done = delivered_[*it];
    for (const auto& [path, size] : Files(Dir(*it))) left = left || done[path] < size;
    if (left) {
      ++it;
      continue;
    }
    tracked_.erase(*it);
    delivered_.erase(*it);
    it = ended_.erase(it);
  }
}

bool LogShipper::Backlog() {
  std::lock_guard lock(mu_);
  if (!enabled_) return false;
  for (const Attempt& a : tracked_) {
    auto& done = delivered_[a];
    for (const auto& [path, size] : Files(Dir(a))) {
      if (done[path] < size) return true;
    }
  }
  return false;
}

bool LogShipper::Pending(const std::string& job_id, uint32_t attempt) {
  std::lock_guard lock(mu_);
  const Attempt a{job_id, attempt};
  if (!enabled_ || !tracked_.contains(a)) return false;
  auto& done = delivered_[a];
  for (const auto& [path, size] : Files(Dir(a))) {
    if (done[path] < size) return true;
  }
  return false;
}

}  // namespace cairn::worker
