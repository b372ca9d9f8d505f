// Running the built binaries from system tests: argv in, exit code and output out (inline,
// below); and, defined in tests/process_util.cc (library cairn_test_util), the cairn CLI
// as a test drives it and what /proc says about the processes a test started.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

extern char** environ;

namespace cairn::testing {

struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string output;  // stdout and stderr, interleaved
};

// The directory of the built binaries: $CAIRN_BIN_DIR (ctest sets it), else build/bin.
inline std::string BinDir() {
  const char* d = std::getenv("CAIRN_BIN_DIR");
  return d ? d : "build/bin";
}

// This process's environment with `extra` added (replacing variables of the same name),
// as "NAME=value" strings.
inline std::vector<std::string> MergedEnvironment(const std::map<std::string, std::string>& extra) {
  std::vector<std::string> out;
  for (char** e = environ; *e; ++e) {
    std::string s(*e);
    if (!extra.contains(s.substr(0, s.find('=')))) out.push_back(s);
  }
  for (const auto& [k, v] : extra) out.push_back(k + "=" + v);
  return out;
}

// Strings as posix_spawn wants an argv or envp: a NULL-terminated array of pointers into
// the strings, which it owns (so neither copied nor moved).
class SpawnArgs {
 public:
  explicit SpawnArgs(std::vector<std::string> strings) : strings_(std::move(strings)) {
    for (auto& s : strings_) ptrs_.push_back(s.data());
    ptrs_.push_back(nullptr);
  }
  SpawnArgs(const SpawnArgs&) = delete;
  SpawnArgs& operator=(const SpawnArgs&) = delete;
  char* const* get() const { return ptrs_.data(); }

 private:
  std::vector<std::string> strings_;
  std::vector<char*> ptrs_;
};

struct SpawnedProcess {
  pid_t pid = -1;   // -1: it did not start
  int output = -1;  // the read end of the pipe its stdout and stderr go to (close-on-exec)
};

// Starts argv (argv[0] looked up in PATH only with `search_path`) with `env` added to this
// process's environment, its stdout and stderr into one pipe, and in a process group of
// its own with `own_group`. The caller reads and closes `output` and reaps `pid`.
inline SpawnedProcess SpawnWithOutput(const std::vector<std::string>& argv,
                                      const std::map<std::string, std::string>& env,
                                      bool own_group = false, bool search_path = false) {
  SpawnedProcess p;
  int pipefd[2];
  if (argv.empty() || ::pipe2(pipefd, O_CLOEXEC) != 0) return p;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (own_group) {
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
  }
  const SpawnArgs args(argv), envp(MergedEnvironment(env));
  const int rc = search_path
                     ? posix_spawnp(&p.pid, args.get()[0], &fa, &attr, args.get(), envp.get())
                     : posix_spawn(&p.pid, args.get()[0], &fa, &attr, args.get(), envp.get());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    p.pid = -1;
    return p;
  }
  p.output = pipefd[0];
  return p;
}

// Runs argv (argv[0] a path: no PATH lookup) with `env` added to this process's
// environment until it closes its output; kills it (SIGKILL) once `timeout` has passed.
inline CommandResult RunCommand(const std::vector<std::string>& argv,
                                const std::map<std::string, std::string>& env = {},
                                std::chrono::seconds timeout = std::chrono::seconds(120)) {
  CommandResult res;
  const SpawnedProcess child = SpawnWithOutput(argv, env);
  if (child.pid < 0) {
    res.output = "spawn failed: " + (argv.empty() ? std::string("(no argv)") : argv[0]);
    return res;
  }
  const pid_t pid = child.pid;
  const int fd = child.output;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(pid, SIGKILL);
      res.output += "\n[timed out]";
      break;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000))) <= 0) continue;
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    res.output.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  int status = 0;
  ::waitpid(pid, &status, 0);
  res.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return res;
}

// ---- The cairn CLI and its jobs (tests/process_util.cc) ----

// Writes the tests' fixed master key (64 hex digits and a newline) to `path`, readable and
// writable by its owner only: the --key-file of the training jobs the tests submit.
void WriteKeyFile(const std::filesystem::path& path);

// Runs `cairn SUBCOMMAND --state-dir STATE_DIR REST...` (args: SUBCOMMAND REST...; the
// binary is BinDir()'s cairn). The state directory goes right after the subcommand, so
// that everything after a "--" stays the job's command.
CommandResult RunCairn(const std::string& state_dir, std::vector<std::string> args,
                       const std::map<std::string, std::string>& env = {},
                       std::chrono::seconds timeout = std::chrono::seconds(120));

// The job id a `cairn submit` printed (its first line); a test failure (with the output)
// when it failed or printed no job id.
std::string JobIdOf(const CommandResult& submit);

// Job `id`'s entry of `cairn status ID --json`: always an object, empty when the output
// names no job or is not JSON.
nlohmann::json JobStatus(const std::string& state_dir, const std::string& id);

// The weights_sha256 job `id` printed (`cairn logs ID`: rank 0's output); "" and a test
// failure (with the logs) when it printed none.
std::string JobWeights(const std::string& state_dir, const std::string& id);

// The last value of "key=" at the start of a line of `out` ("" if none), up to the end
// of that line.
std::string OutputValue(const std::string& out, const std::string& key);

// ---- Processes, from /proc (tests/process_util.cc) ----
// Every lookup reads /proc once, leaves out this process and zombies, and is a snapshot:
// a process may end (or start) right after. A process that ends while it is read has an
// empty command line and environment, so matches nothing.

// The whole file at `path` ("" if it cannot be read).
std::string ReadFile(const std::filesystem::path& path);

// Pids of the live processes (zombies and this process left out).
std::vector<pid_t> LivePids();

// `pid`'s arguments, argv[0] first (none once it has ended).
std::vector<std::string> Arguments(pid_t pid);

// `pid`'s command line, its arguments joined by spaces ("" once it has ended).
std::string CommandLine(pid_t pid);

// `pid`'s name as the kernel keeps it (/proc/PID/comm, at most 15 characters, without the
// newline).
std::string ProcessName(pid_t pid);

// The value of the first NAME=... entry of `pid`'s environment (nullopt if it has none,
// or has ended).
std::optional<std::string> EnvValue(pid_t pid, const std::string& name);

// Live processes whose command line (arguments joined by spaces) contains `needle`.
std::vector<pid_t> ProcessesRunning(const std::string& needle);

// Live processes whose command line (arguments joined by spaces) or environment contains
// `needle` anywhere. A broad match: for a path only this test uses (its state
// directory), never for a job's processes (see JobProcesses).
std::vector<pid_t> ProcessesMentioning(const std::string& needle);

// Live processes whose environment has every one of `entries` ("NAME=value") as a whole
// entry (not as part of another).
std::vector<pid_t> ProcessesWithEnv(const std::vector<std::string>& entries);

// Live processes of job `job_id` of the cluster whose state directory is `state_dir`, by
// their environment (CAIRN_JOB_ID and CAIRN_STATE_DIR, both exact; job ids repeat across
// clusters): mpirun, the Open MPI daemons and the ranks all carry both. Never by command
// line: an unrelated process on the machine may share one.
std::vector<pid_t> JobProcesses(const std::string& state_dir, const std::string& job_id);

// The live cairn-fmnist process with MPI rank `rank` (OMPI_COMM_WORLD_RANK in its
// environment) whose command line or environment mentions `needle`; -1 if none.
pid_t RankPid(const std::string& needle, int rank);

// "pid N (attempt A): COMMAND LINE" for failure messages (the attempt from CAIRN_ATTEMPT,
// left out without one; the command line cut at 160 characters).
std::string DescribeProcess(pid_t pid);

// Calls `find` until it returns no pid: at most 1 + within/100ms times, 100 ms apart, and
// for no longer than twice `within` in all (should the lookups themselves be slow).
// Returns what the last call returned (empty: all gone).
std::vector<pid_t> WaitUntilNone(const std::function<std::vector<pid_t>()>& find,
                                 std::chrono::milliseconds within);

}  // namespace cairn::testing
