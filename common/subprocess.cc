#include "common/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>
#include <utility>

extern char** environ;

namespace cairn::subprocess {
namespace {

// The read and write ends of the stdout and stderr pipes; what is still open is closed
// when the call returns.
struct Pipes {
  int out[2] = {-1, -1};
  int err[2] = {-1, -1};
  ~Pipes() {
    for (int* fd : {&out[0], &out[1], &err[0], &err[1]}) Close(*fd);
  }
  static void Close(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// Wipes the bytes of a string when it goes out of scope, if asked to (secret output).
// A string moved from by then is empty: its bytes live on in the string it moved to.
class Wiper {
 public:
  Wiper(std::string* s, bool wipe) : s_(s), wipe_(wipe) {}
  ~Wiper() {
    if (wipe_ && !s_->empty()) ::explicit_bzero(s_->data(), s_->size());
  }
  Wiper(const Wiper&) = delete;
  Wiper& operator=(const Wiper&) = delete;

 private:
  std::string* s_;
  bool wipe_;
};

bool IsBlank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v'; }

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

std::string RunResult::ErrFirstLine() const {
  std::string_view e(err);
  while (!e.empty() && IsBlank(e.front())) e.remove_prefix(1);
  std::string_view line = e.substr(0, e.find('\n'));
  while (!line.empty() && IsBlank(line.back())) line.remove_suffix(1);
  return std::string(line);
}

std::string RunResult::ErrSummary() const {
  std::string line = ErrFirstLine();
  if (!line.empty()) return line;
  if (term_signal != 0) return fmt::format("killed by signal {}", term_signal);
  return fmt::format("exit status {}", exit_code);
}

Result<RunResult> RunProcess(std::span<const std::string> argv, const RunOptions& options) {
  if (argv.empty()) return MakeError(Code::kInvalidArgument, "RunProcess: empty argv");
  const std::string what =
      options.name.empty() ? fmt::format("`{}`", Describe(argv)) : options.name;

  Pipes pipes;
  if (::pipe2(pipes.out, O_CLOEXEC) != 0 || ::pipe2(pipes.err, O_CLOEXEC) != 0) {
    return ErrnoError(errno, what + ": pipe");
  }

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
  posix_spawn_file_actions_adddup2(&actions, pipes.out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipes.err[1], 2);
  // Its own process group, so that a timeout kills whatever it started too.
  posix_spawnattr_setpgroup(&attr, 0);
  // What the caller ignores or blocks (SIGPIPE in a server, signals a thread keeps for
  // a signal thread) must not carry over into the program.
  sigset_t default_signals, no_signals;
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  sigaddset(&default_signals, SIGCHLD);
  sigemptyset(&no_signals);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  posix_spawnattr_setsigmask(&attr, &no_signals);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  const int spawn_err =
      ::posix_spawnp(&pid, c_argv[0], &actions, &attr, c_argv.data(), c_env.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (spawn_err == ENOENT) {
    return MakeError(Code::kNotFound, "{}: program {} not found", what, argv[0]);
  }
  if (spawn_err != 0) return ErrnoError(spawn_err, fmt::format("{}: spawn {}", what, argv[0]));
  Pipes::Close(pipes.out[1]);
  Pipes::Close(pipes.err[1]);

  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  auto left_ms = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               deadline - std::chrono::steady_clock::now())
        .count();
  };
  auto kill_and_reap = [&] {
    ::kill(-pid, SIGKILL);
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  };
  auto deadline_error = [&] {
    return MakeError(Code::kDeadlineExceeded, "{} did not finish within {} ms (killed)", what,
                     options.timeout.count());
  };

  RunResult result;
  std::string buf(64 << 10, '\0');
  const Wiper wipe_buf(&buf, options.secret_output);
  const Wiper wipe_out(&result.out, options.secret_output);
  if (options.secret_output) {
    // Room for all that is kept, beyond the in-object buffer: appends never reallocate
    // and a move hands over the one allocation.
    result.out.reserve(std::max<uint64_t>(options.max_stdout_bytes, 64));
  }
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    const int64_t left = left_ms();
    if (left <= 0) {
      kill_and_reap();
      return deadline_error();
    }
    pollfd fds[2];
    nfds_t nfds = 0;
    if (out_open) fds[nfds++] = {pipes.out[0], POLLIN, 0};
    if (err_open) fds[nfds++] = {pipes.err[0], POLLIN, 0};
    const int rc = ::poll(fds, nfds, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (rc < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      kill_and_reap();
      return ErrnoError(e, what + ": poll");
    }
    for (nfds_t i = 0; i < nfds; ++i) {
      if (fds[i].revents == 0) continue;
      const bool is_out = fds[i].fd == pipes.out[0];
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
      dst.append(chunk.substr(0, static_cast<std::size_t>(std::min<uint64_t>(room, chunk.size()))));
      if (is_out) {
        result.out_size += chunk.size();
        if (options.on_stdout) options.on_stdout(chunk);
      } else if (chunk.size() > room) {
        result.err_truncated = true;
      }
    }
  }

  // Both pipes are closed; wait for the exit, still bounded by the deadline (a program
  // may close its output and go on running).
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      kill_and_reap();
      return ErrnoError(e, what + ": waitpid");
    }
    if (left_ms() <= 0) {
      kill_and_reap();
      return deadline_error();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.term_signal = WTERMSIG(status);
  }
  result.out_truncated = result.out_size > result.out.size();
  return result;
}

}  // namespace cairn::subprocess
