#include "provenance/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <utility>

#include "checkpoint/crypto.h"

extern char** environ;

namespace cairn::prov {
namespace {

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Close(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// The inherited environment with `overrides` ("NAME=value") replacing same-named entries.
std::vector<std::string> MergedEnvironment(const std::vector<std::string>& overrides) {
  std::vector<std::string> env;
  auto name_of = [](std::string_view entry) { return entry.substr(0, entry.find('=')); };
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const bool replaced = std::any_of(overrides.begin(), overrides.end(),
                                      [&](const auto& o) { return name_of(o) == name_of(entry); });
    if (!replaced) env.emplace_back(entry);
  }
  env.insert(env.end(), overrides.begin(), overrides.end());
  return env;
}

std::string Describe(std::span<const std::string> argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    s += a;
  }
  return s;
}

}  // namespace

std::string RunResult::ErrSummary() const {
  std::string_view e(err);
  while (!e.empty() && (e.front() == '\n' || e.front() == ' ')) e.remove_prefix(1);
  const std::string_view line = e.substr(0, e.find('\n'));
  if (!line.empty()) return std::string(line);
  if (term_signal != 0) return fmt::format("killed by signal {}", term_signal);
  return fmt::format("exit status {}", exit_code);
}

Result<RunResult> RunProcess(std::span<const std::string> argv, const RunOptions& options) {
  if (argv.empty()) return MakeError(Code::kInvalidArgument, "RunProcess: empty argv");
  const std::string what = fmt::format("`{}`", Describe(argv));

  int out_pipe[2];
  int err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return ErrnoError(errno, what + ": pipe");
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return ErrnoError(errno, what + ": pipe");
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);

  std::vector<char*> c_argv;
  for (const auto& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);
  std::vector<std::string> env = MergedEnvironment(options.env);
  std::vector<char*> c_env;
  for (auto& e : env) c_env.push_back(e.data());
  c_env.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_w.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_w.get(), 2);
  // Its own process group, so that a timeout kills whatever it started too.
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t default_signals;
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  const int spawn_err =
      ::posix_spawnp(&pid, c_argv[0], &actions, &attr, c_argv.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (spawn_err == ENOENT) {
    return MakeError(Code::kNotFound, "{}: program {} not found", what, argv[0]);
  }
  if (spawn_err != 0) return ErrnoError(spawn_err, what + ": spawn");
  out_w.Close();
  err_w.Close();

  auto kill_and_reap = [&] {
    ::kill(-pid, SIGKILL);
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  };

  RunResult result;
  ckpt::Sha256 out_hash;
  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  bool out_open = true, err_open = true;
  std::string buf(64 << 10, '\0');
  while (out_open || err_open) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill_and_reap();
      return MakeError(Code::kDeadlineExceeded, "{} did not finish within {} ms (killed)", what,
                       options.timeout.count());
    }
    pollfd fds[2];
    nfds_t nfds = 0;
    if (out_open) fds[nfds++] = {out_r.get(), POLLIN, 0};
    if (err_open) fds[nfds++] = {err_r.get(), POLLIN, 0};
    const int rc = ::poll(fds, nfds, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (rc < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      kill_and_reap();
      return ErrnoError(e, what + ": poll");
    }
    for (nfds_t i = 0; i < nfds; ++i) {
      if (fds[i].revents == 0) continue;
      const bool is_out = fds[i].fd == out_r.get();
      const ssize_t n = ::read(fds[i].fd, buf.data(), buf.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        (is_out ? out_open : err_open) = false;
        continue;
      }
      const std::string_view chunk(buf.data(), static_cast<std::size_t>(n));
      std::string& dst = is_out ? result.out : result.err;
      const uint64_t cap = is_out ? options.max_stdout_bytes : options.max_stderr_bytes;
      const uint64_t room = cap - std::min<uint64_t>(cap, dst.size());
      dst.append(chunk.substr(0, static_cast<std::size_t>(std::min<uint64_t>(room, n))));
      if (is_out) {
        out_hash.Update(chunk);
        result.out_size += static_cast<uint64_t>(n);
      }
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return ErrnoError(errno, what + ": waitpid");
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.term_signal = WTERMSIG(status);
  }
  result.out_truncated = result.out_size > result.out.size();
  result.out_sha256 = out_hash.Finish();
  return result;
}

}  // namespace cairn::prov
