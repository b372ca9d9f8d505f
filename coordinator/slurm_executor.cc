#include "coordinator/slurm_executor.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/io.h"
#include "common/subprocess.h"

namespace cairn::coord {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxClientOutput = 16u << 20;  // more is cut (and reported)
constexpr std::size_t kIdsPerSqueue = 500;

struct ClientOutput {
  int exit_code = -1;  // -1: ended by a signal
  std::string out, err;
};

// The first line of a client's stderr, for messages.
std::string FirstLine(const std::string& s) {
  std::string t = s.substr(0, s.find('\n'));
  return t.empty() ? "(no output)" : t;
}

// Messages of SLURM's clients that mean "slurmctld cannot be reached now".
bool ControllerUnreachable(const std::string& err) {
  static constexpr std::string_view kSigns[] = {
      "Unable to contact slurm controller",
      "Socket timed out",
      "Connection refused",
      "Communication connection failure",
      "Zero Bytes were transmitted or received",
      "Resource temporarily unavailable",
      "Slurm temporarily unable",
      "Slurmctld not responding",
  };
  return std::any_of(std::begin(kSigns), std::end(kSigns),
                     [&](std::string_view s) { return err.find(s) != std::string::npos; });
}

bool AllDigits(std::string_view s) {
  return !s.empty() && s.size() <= 18 &&
         std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool ValidToken(std::string_view s, std::size_t max) {
  return !s.empty() && s.size() <= max && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
  });
}

bool ValidEnvName(std::string_view s) {
  if (s.empty() || s.size() > 256 || (s[0] >= '0' && s[0] <= '9')) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// "KEY=value" of a `scontrol -o show job` line; the first occurrence (fields SLURM
// prints before JobState are fixed ones and the job name, which Submit restricts).
std::string Field(const std::string& line, const std::string& key) {
  const std::string needle = key + "=";
  std::size_t pos = 0;
  while ((pos = line.find(needle, pos)) != std::string::npos) {
    if (pos == 0 || line[pos - 1] == ' ') {
      const std::size_t start = pos + needle.size();
      return line.substr(start, line.find(' ', start) - start);
    }
    pos += needle.size();
  }
  return "";
}

}  // namespace

std::string_view SlurmJobStateName(SlurmJobState s) {
  switch (s) {
    case SlurmJobState::kPending:
      return "PENDING";
    case SlurmJobState::kRunning:
      return "RUNNING";
    case SlurmJobState::kCompleted:
      return "COMPLETED";
    case SlurmJobState::kFailed:
      return "FAILED";
    case SlurmJobState::kCancelled:
      return "CANCELLED";
    case SlurmJobState::kTimeout:
      return "TIMEOUT";
    case SlurmJobState::kNodeFail:
      return "NODE_FAIL";
    case SlurmJobState::kPreempted:
      return "PREEMPTED";
    case SlurmJobState::kUnknown:
      return "UNKNOWN";
  }
  return "UNKNOWN";
}

SlurmJobState SlurmJobStateFromSlurm(std::string_view s) {
  // scontrol may print "CANCELLED" or, for some states, a "+" suffix in other clients.
  s = s.substr(0, s.find_first_of("+ "));
  static const std::map<std::string_view, SlurmJobState, std::less<>> kMap = {
      {"PENDING", SlurmJobState::kPending},      {"CONFIGURING", SlurmJobState::kPending},
      {"REQUEUED", SlurmJobState::kPending},     {"REQUEUE_HOLD", SlurmJobState::kPending},
      {"REQUEUE_FED", SlurmJobState::kPending},  {"RUNNING", SlurmJobState::kRunning},
      {"COMPLETING", SlurmJobState::kRunning},   {"SUSPENDED", SlurmJobState::kRunning},
      {"STOPPED", SlurmJobState::kRunning},      {"SIGNALING", SlurmJobState::kRunning},
      {"STAGE_OUT", SlurmJobState::kRunning},    {"RESIZING", SlurmJobState::kRunning},
      {"COMPLETED", SlurmJobState::kCompleted},  {"FAILED", SlurmJobState::kFailed},
      {"OUT_OF_MEMORY", SlurmJobState::kFailed}, {"SPECIAL_EXIT", SlurmJobState::kFailed},
      {"CANCELLED", SlurmJobState::kCancelled},  {"REVOKED", SlurmJobState::kCancelled},
      {"TIMEOUT", SlurmJobState::kTimeout},      {"DEADLINE", SlurmJobState::kTimeout},
      {"NODE_FAIL", SlurmJobState::kNodeFail},   {"BOOT_FAIL", SlurmJobState::kNodeFail},
      {"PREEMPTED", SlurmJobState::kPreempted},
  };
  auto it = kMap.find(s);
  return it == kMap.end() ? SlurmJobState::kUnknown : it->second;
}

bool IsFinal(SlurmJobState s) {
  switch (s) {
    case SlurmJobState::kCompleted:
    case SlurmJobState::kFailed:
    case SlurmJobState::kCancelled:
    case SlurmJobState::kTimeout:
    case SlurmJobState::kNodeFail:
    case SlurmJobState::kPreempted:
      return true;
    default:
      return false;
  }
}

std::string ShellQuote(std::string_view s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q += "'\\''";
    } else {
      q += c;
    }
  }
  q += "'";
  return q;
}

namespace {

// Where a SLURM client lives: bin_dir, else PATH (then /usr/bin, /bin).
Result<std::string> FindClient(const SlurmExecutorOptions& o, const std::string& tool) {
  std::vector<std::string> dirs;
  if (!o.bin_dir.empty()) {
    dirs.push_back(o.bin_dir);
  } else {
    std::stringstream path(std::getenv("PATH") ? std::getenv("PATH") : "");
    std::string d;
    while (std::getline(path, d, ':')) {
      if (!d.empty()) dirs.push_back(d);
    }
    dirs.insert(dirs.end(), {"/usr/bin", "/bin"});
  }
  for (const auto& d : dirs) {
    const std::string p = io::JoinPath(d, tool);
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return MakeError(Code::kFailedPrecondition, "{} not found in {} (install slurm-client)", tool,
                   o.bin_dir.empty() ? std::string("PATH") : o.bin_dir);
}

// Runs a SLURM client (argv, no shell) in its own process group; stdout and stderr
// apart; killed with its group after the timeout.
Result<ClientOutput> RunClient(const SlurmExecutorOptions& o, const std::string& tool,
                               const std::vector<std::string>& args) {
  CAIRN_ASSIGN_OR_RETURN(const std::string path, FindClient(o, tool));
  std::vector<std::string> argv = {path};
  argv.insert(argv.end(), args.begin(), args.end());
  subprocess::RunOptions ro;
  if (!o.slurm_conf.empty()) ro.env.push_back("SLURM_CONF=" + o.slurm_conf);
  ro.max_stdout_bytes = kMaxClientOutput;
  ro.max_stderr_bytes = kMaxClientOutput;
  ro.timeout = o.timeout;
  ro.name = tool;
  auto r = subprocess::RunProcess(argv, ro);
  if (!r) {
    if (r.error().code() == Code::kDeadlineExceeded) {
      return MakeError(Code::kUnavailable,
                       "{} did not answer within {} ms (killed): slurmctld busy or unreachable",
                       tool, o.timeout.count());
    }
    return std::unexpected(std::move(r).error());
  }
  if (r->out_truncated || r->err_truncated) {
    return MakeError(Code::kInternal, "{} printed more than {} bytes", tool, kMaxClientOutput);
  }
  return ClientOutput{.exit_code = r->exit_code, .out = std::move(r->out),
                      .err = std::move(r->err)};
}

// An error for a client that failed: kUnavailable when slurmctld is out of reach.
std::unexpected<Error> ClientError(const std::string& tool, const ClientOutput& r, Code otherwise) {
  const std::string msg = FirstLine(r.err.empty() ? r.out : r.err);
  if (ControllerUnreachable(r.err)) {
    return MakeError(Code::kUnavailable, "slurmctld is not reachable: {}", msg);
  }
  return MakeError(otherwise, "{} failed (exit code {}): {}", tool, r.exit_code, msg);
}

Status Validate(const SlurmJobRequest& r) {
  auto bad = [](std::string m) -> Status {
    return std::unexpected(Error(Code::kInvalidArgument, std::move(m)));
  };
  if (r.command.empty() || r.command[0].empty()) return bad("the command is empty");
  if (r.command[0][0] == '-') {
    return bad(fmt::format("the program '{}' starts with '-'", r.command[0]));
  }
  for (const auto& a : r.command) {
    if (HasNul(a)) return bad("a command argument contains a NUL byte");
  }
  if (r.launcher != "mpi" && r.launcher != "env") {
    return bad(fmt::format("launcher '{}': expected mpi or env", r.launcher));
  }
  if (!ValidToken(r.name, 128)) {
    return bad(fmt::format("job name '{}': use 1 to 128 letters, digits, '.', '_', '-'", r.name));
  }
  if (r.ranks < 1 || r.ranks > 1000000) return bad(fmt::format("ranks {}: 1 to 1000000", r.ranks));
  if (r.cpus_per_rank < 1) return bad("cpus_per_rank must be at least 1");
  if (r.nodes > r.ranks) {
    return bad(fmt::format("{} nodes for {} ranks: a node without a rank", r.nodes, r.ranks));
  }
  if (r.time_limit.count() < 0) return bad("time_limit is negative");
  if (!r.partition.empty() && !ValidToken(r.partition, 128)) {
    return bad(fmt::format("partition '{}': letters, digits, '.', '_', '-'", r.partition));
  }
  for (const auto& [k, v] : r.env) {
    if (!ValidEnvName(k)) return bad(fmt::format("environment variable name '{}'", k));
    if (HasNul(v)) return bad(fmt::format("environment variable {} contains a NUL byte", k));
  }
  auto absolute = [&](const std::string& what, const std::string& p, bool required) -> Status {
    if (p.empty() && !required) return OkStatus();
    if (p.empty() || p[0] != '/' || HasNul(p) || p.find('\n') != std::string::npos) {
      return bad(fmt::format("{} '{}' must be an absolute path", what, p));
    }
    return OkStatus();
  };
  CAIRN_RETURN_IF_ERROR(absolute("script_dir", r.script_dir, true));
  CAIRN_RETURN_IF_ERROR(absolute("output_path", r.output_path, false));
  CAIRN_RETURN_IF_ERROR(absolute("workdir", r.workdir, false));
  return OkStatus();
}

// sbatch's arguments for the request (without the script).
std::vector<std::string> SbatchArgs(const SlurmJobRequest& r) {
  std::vector<std::string> a = {
      "--parsable",
      "--job-name=" + r.name,
      "--ntasks=" + std::to_string(r.ranks),
      "--cpus-per-task=" + std::to_string(r.cpus_per_rank),
      "--output=" +
          (r.output_path.empty() ? io::JoinPath(r.script_dir, "slurm-%j.out") : r.output_path),
      "--no-requeue",
      "--export=ALL",
  };
  if (r.nodes > 0) a.push_back("--nodes=" + std::to_string(r.nodes));
  if (r.ranks_per_node > 0) a.push_back("--ntasks-per-node=" + std::to_string(r.ranks_per_node));
  if (r.gpus_per_rank > 0) a.push_back("--gpus-per-task=" + std::to_string(r.gpus_per_rank));
  if (r.time_limit.count() > 0) {
    a.push_back("--time=" + std::to_string((r.time_limit.count() + 59) / 60));
  }
  if (!r.partition.empty()) a.push_back("--partition=" + r.partition);
  if (!r.workdir.empty()) a.push_back("--chdir=" + r.workdir);
  return a;
}

}  // namespace

SlurmExecutor::SlurmExecutor(SlurmExecutorOptions options) : options_(std::move(options)) {}

Result<std::string> SlurmExecutor::BatchScript(const SlurmJobRequest& r) const {
  CAIRN_RETURN_IF_ERROR(Validate(r));
  std::string s =
      "#!/bin/bash\n# One attempt of a cairn job, written by cairnd's SLURM executor.\n";
  s += "# Submitted as: sbatch";
  for (const auto& a : SbatchArgs(r)) s += " " + ShellQuote(a);
  s += " job.sbatch\n# The job's exit status is its step's.\n";
  for (const auto& [k, v] : r.env) s += "export " + k + "=" + ShellQuote(v) + "\n";
  std::string cmd;
  for (const auto& a : r.command) cmd += " " + ShellQuote(a);
  if (r.launcher == "mpi") {
    s += "exec srun --kill-on-bad-exit=1 --mpi=pmix" + cmd + "\n";
  } else {
    s += "MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\n";
    s += r.master_port > 0 ? fmt::format("MASTER_PORT={}\n", r.master_port)
                           : std::string("MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))\n");
    s += "export MASTER_ADDR MASTER_PORT\n";
    s += "exec srun --kill-on-bad-exit=1 --mpi=none /bin/sh -c "
         "'RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID; "
         "CAIRN_RANK=$RANK CAIRN_WORLD_SIZE=$WORLD_SIZE CAIRN_LOCAL_RANK=$LOCAL_RANK; "
         "export RANK WORLD_SIZE LOCAL_RANK CAIRN_RANK CAIRN_WORLD_SIZE CAIRN_LOCAL_RANK; "
         "exec \"$@\"' cairn-rank" +
         cmd + "\n";
  }
  return s;
}

Result<std::string> SlurmExecutor::Submit(const SlurmJobRequest& r) const {
  CAIRN_ASSIGN_OR_RETURN(const std::string script, BatchScript(r));
  std::error_code ec;
  fs::create_directories(r.script_dir, ec);
  if (ec) {
    return MakeError(CodeFromErrno(ec.value()), "create {}: {}", r.script_dir, ec.message());
  }
  const std::string path = io::JoinPath(r.script_dir, "job.sbatch");
  CAIRN_RETURN_IF_ERROR(io::WriteFileAtomic(io::DefaultFileSystem(), path, script, 0700));
  std::vector<std::string> args = SbatchArgs(r);
  args.push_back(path);
  CAIRN_ASSIGN_OR_RETURN(const ClientOutput out, RunClient(options_, "sbatch", args));
  if (out.exit_code != 0) {
    // slurmctld refused the job (bad partition, impossible resources, ...), or is away.
    return std::unexpected(ClientError("sbatch", out, Code::kInvalidArgument)
                               .error()
                               .With(fmt::format("submit {}", path)));
  }
  // --parsable: "ID" or "ID;CLUSTER".
  const std::string id = out.out.substr(0, out.out.find_first_of(";\n"));
  if (!AllDigits(id)) {
    return MakeError(Code::kInternal, "sbatch printed '{}', not a job id", FirstLine(out.out));
  }
  return id;
}

Result<std::vector<SlurmJobStatus>> SlurmExecutor::Query(
    const std::vector<std::string>& ids) const {
  for (const auto& id : ids) {
    if (!AllDigits(id)) return MakeError(Code::kInvalidArgument, "'{}' is not a SLURM job id", id);
  }
  std::map<std::string, SlurmJobStatus> seen;
  for (std::size_t i = 0; i < ids.size(); i += kIdsPerSqueue) {
    std::string list;
    for (std::size_t j = i; j < std::min(ids.size(), i + kIdsPerSqueue); ++j) {
      list += (list.empty() ? "" : ",") + ids[j];
    }
    CAIRN_ASSIGN_OR_RETURN(
        const ClientOutput out,
        RunClient(options_, "squeue",
                  {"--noheader", "--states=all", "--jobs=" + list, "--format=%i|%T|%r"}));
    if (out.exit_code != 0) {
      // With none of the ids known, squeue fails saying so: that is an answer.
      if (out.err.find("Invalid job id specified") == std::string::npos) {
        return ClientError("squeue", out, Code::kInternal);
      }
      continue;
    }
    std::istringstream lines(out.out);
    std::string line;
    while (std::getline(lines, line)) {
      const auto a = line.find('|'), b = line.find('|', a + 1);
      if (a == std::string::npos || b == std::string::npos) {
        return MakeError(Code::kInternal, "squeue printed an unexpected line: '{}'", line);
      }
      SlurmJobStatus s;
      s.id = line.substr(0, a);
      s.slurm_state = line.substr(a + 1, b - a - 1);
      s.reason = line.substr(b + 1);
      s.state = SlurmJobStateFromSlurm(s.slurm_state);
      seen[s.id] = s;
    }
  }
  std::vector<SlurmJobStatus> result;
  for (const auto& id : ids) {
    auto it = seen.find(id);
    if (it != seen.end() && !IsFinal(it->second.state)) {
      result.push_back(it->second);
      continue;
    }
    // Final or not in squeue: scontrol has the exit code (while slurmctld remembers).
    CAIRN_ASSIGN_OR_RETURN(const ClientOutput out,
                           RunClient(options_, "scontrol", {"-o", "show", "job", id}));
    SlurmJobStatus s;
    s.id = id;
    if (out.exit_code != 0) {
      if (out.err.find("Invalid job id specified") == std::string::npos) {
        return ClientError("scontrol", out, Code::kInternal);
      }
      s.reason =
          "slurmctld does not know this job (it ended more than MinJobAge ago, or "
          "was never submitted)";
      result.push_back(s);
      continue;
    }
    const std::string line = out.out.substr(0, out.out.find('\n'));
    s.slurm_state = Field(line, "JobState");
    s.reason = Field(line, "Reason");
    s.state = SlurmJobStateFromSlurm(s.slurm_state);
    if (s.slurm_state.empty()) {
      return MakeError(Code::kInternal, "scontrol show job {}: no JobState in '{}'", id, line);
    }
    if (IsFinal(s.state)) {
      const std::string code = Field(line, "ExitCode");
      const auto colon = code.find(':');
      if (colon == std::string::npos || !AllDigits(code.substr(0, colon)) ||
          !AllDigits(code.substr(colon + 1))) {
        return MakeError(Code::kInternal, "scontrol show job {}: ExitCode '{}'", id, code);
      }
      s.exit_code = std::stoi(code.substr(0, colon));
      s.signal = std::stoi(code.substr(colon + 1));
    }
    result.push_back(s);
  }
  return result;
}

Result<std::vector<SlurmJobStatus>> SlurmExecutor::FindByName(const std::string& name) const {
  if (!ValidToken(name, 128)) {
    return MakeError(Code::kInvalidArgument, "job name '{}': letters, digits, '.', '_', '-'", name);
  }
  CAIRN_ASSIGN_OR_RETURN(const ClientOutput out,
                         RunClient(options_, "squeue",
                                   {"--noheader", "--states=all", "--name=" + name,
                                    "--format=%i|%T|%r"}));
  if (out.exit_code != 0) return ClientError("squeue", out, Code::kInternal);
  std::vector<SlurmJobStatus> found;
  std::istringstream lines(out.out);
  std::string line;
  while (std::getline(lines, line)) {
    const auto a = line.find('|'), b = line.find('|', a + 1);
    if (a == std::string::npos || b == std::string::npos || !AllDigits(line.substr(0, a))) {
      return MakeError(Code::kInternal, "squeue printed an unexpected line: '{}'", line);
    }
    SlurmJobStatus st;
    st.id = line.substr(0, a);
    st.slurm_state = line.substr(a + 1, b - a - 1);
    st.reason = line.substr(b + 1);
    st.state = SlurmJobStateFromSlurm(st.slurm_state);
    found.push_back(std::move(st));
  }
  std::sort(found.begin(), found.end(), [](const SlurmJobStatus& x, const SlurmJobStatus& y) {
    return x.id.size() != y.id.size() ? x.id.size() < y.id.size() : x.id < y.id;
  });
  return found;
}

std::vector<int> SlurmExecutor::SubmittersOf(const std::string& script_path) {
  std::vector<int> pids;
  std::error_code ec;
  const int self = static_cast<int>(::getpid());
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (!AllDigits(name) || std::stoi(name) == self) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string arg;
    while (std::getline(in, arg, '\0')) {
      if (arg == script_path) {
        pids.push_back(std::stoi(name));
        break;
      }
    }
  }
  return pids;
}

Status SlurmExecutor::Cancel(const std::string& id, std::optional<int> signal) const {
  if (!AllDigits(id)) return MakeError(Code::kInvalidArgument, "'{}' is not a SLURM job id", id);
  if (signal && (*signal <= 0 || *signal >= NSIG)) {
    return MakeError(Code::kInvalidArgument, "signal {} is not a signal number", *signal);
  }
  // -v: without it scancel says nothing about a job it could not cancel.
  std::vector<std::string> args = {"-v"};
  if (signal) args.push_back("--signal=" + std::to_string(*signal));
  args.push_back(id);
  CAIRN_ASSIGN_OR_RETURN(const ClientOutput out, RunClient(options_, "scancel", args));
  const std::string marker = "error: Kill job error on job id " + id + ": ";
  const auto pos = out.err.find(marker);
  if (pos == std::string::npos && out.exit_code == 0) return OkStatus();
  const std::string why =
      pos == std::string::npos
          ? FirstLine(out.err)
          : out.err.substr(pos + marker.size(), out.err.find('\n', pos) - pos - marker.size());
  if (ControllerUnreachable(why)) {
    return MakeError(Code::kUnavailable, "slurmctld is not reachable: scancel {}: {}", id, why);
  }
  if (why.find("already completing or completed") != std::string::npos) {
    if (!signal) return OkStatus();  // cancelling a finished job: done
    return MakeError(Code::kFailedPrecondition, "job {} has finished: no process to signal", id);
  }
  if (why.find("Invalid job id specified") != std::string::npos) {
    if (signal) {
      // scancel says this also of a job that has just finished.
      CAIRN_ASSIGN_OR_RETURN(auto st, Query({id}));
      if (!st.empty() && IsFinal(st[0].state)) {
        return MakeError(Code::kFailedPrecondition,
                         "job {} has finished ({}): no process to signal", id, st[0].slurm_state);
      }
    }
    return MakeError(Code::kNotFound, "slurmctld does not know job {}", id);
  }
  return MakeError(Code::kFailedPrecondition, "scancel {} failed: {}", id, why);
}

}  // namespace cairn::coord
