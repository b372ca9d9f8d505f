// The system tests' shared helpers that process_util.h declares: the cairn CLI as a test
// drives it, and what /proc says about processes.
#include "tests/process_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

namespace cairn::testing {

namespace fs = std::filesystem;

namespace {

std::string ProcFile(pid_t pid, const char* name) {
  return ReadFile(fs::path("/proc") / std::to_string(pid) / name);
}

// `pid`'s environment as "\0NAME=value\0NAME=value\0...": every entry between NULs.
std::string DelimitedEnvironment(pid_t pid) {
  return std::string(1, '\0') + ProcFile(pid, "environ");
}

}  // namespace

// ---- The cairn CLI and its jobs ----

void WriteKeyFile(const fs::path& path) {
  {
    std::ofstream k(path);
    k << "8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c2e4b6d8f0a1c3e5b7d9f2a\n";
  }
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
}

CommandResult RunCairn(const std::string& state_dir, std::vector<std::string> args,
                       const std::map<std::string, std::string>& env,
                       std::chrono::seconds timeout) {
  args.insert(args.begin() + (args.empty() ? 0 : 1), {"--state-dir", state_dir});
  args.insert(args.begin(), BinDir() + "/cairn");
  return RunCommand(args, env, timeout);
}

std::string JobIdOf(const CommandResult& submit) {
  EXPECT_EQ(submit.exit_code, 0) << submit.output;
  std::string id = submit.output.substr(0, submit.output.find('\n'));
  EXPECT_TRUE(id.starts_with("job-")) << submit.output;
  return id;
}

nlohmann::json JobStatus(const std::string& state_dir, const std::string& id) {
  auto r = RunCairn(state_dir, {"status", id, "--json"});
  auto j = nlohmann::json::parse(r.output, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("jobs") || !j["jobs"].is_array() ||
      j["jobs"].empty() || !j["jobs"][0].is_object()) {
    return nlohmann::json::object();
  }
  return j["jobs"][0];
}

std::string JobWeights(const std::string& state_dir, const std::string& id) {
  auto logs = RunCairn(state_dir, {"logs", id});
  std::smatch m;
  if (std::regex_search(logs.output, m, std::regex("weights_sha256=([0-9a-f]{64})"))) {
    return m[1];
  }
  ADD_FAILURE() << "no weights_sha256 in the output of " << id << " (rank 0's):\n" << logs.output;
  return "";
}

std::string OutputValue(const std::string& out, const std::string& key) {
  std::string found;
  std::size_t pos = 0;
  const std::string needle = key + "=";
  while ((pos = out.find(needle, pos)) != std::string::npos) {
    if (pos == 0 || out[pos - 1] == '\n') {
      std::size_t end = out.find('\n', pos);
      found = out.substr(pos + needle.size(),
                         end == std::string::npos ? std::string::npos : end - pos - needle.size());
    }
    pos += needle.size();
  }
  return found;
}

// ---- Processes, from /proc ----

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<pid_t> LivePids() {
  std::vector<pid_t> out;
  std::error_code ec;
  // One entry per process: the loop ends with the directory (or on a read error).
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == ::getpid()) continue;
    // "PID (COMM) STATE ...": COMM may hold anything, so the state follows the last ')'.
    const std::string stat = ProcFile(pid, "stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;  // gone meanwhile
    if (close + 2 < stat.size() && stat[close + 2] == 'Z') continue;
    out.push_back(pid);
  }
  return out;
}

std::vector<std::string> Arguments(pid_t pid) {
  std::vector<std::string> args;
  const std::string cmdline = ProcFile(pid, "cmdline");
  for (std::size_t start = 0; start < cmdline.size();) {
    std::size_t end = cmdline.find('\0', start);
    if (end == std::string::npos) end = cmdline.size();
    args.push_back(cmdline.substr(start, end - start));
    start = end + 1;
  }
  return args;
}

std::string CommandLine(pid_t pid) {
  std::string cmd = ProcFile(pid, "cmdline");
  if (!cmd.empty() && cmd.back() == '\0') cmd.pop_back();
  std::replace(cmd.begin(), cmd.end(), '\0', ' ');
  return cmd;
}

std::string ProcessName(pid_t pid) {
  std::string comm = ProcFile(pid, "comm");
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
}

std::optional<std::string> EnvValue(pid_t pid, const std::string& name) {
  const std::string env = DelimitedEnvironment(pid);
  const std::string key = std::string(1, '\0') + name + "=";
  const auto at = env.find(key);
  if (at == std::string::npos) return std::nullopt;
  const auto start = at + key.size();
  const auto end = env.find('\0', start);
  return env.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

std::vector<pid_t> ProcessesRunning(const std::string& needle) {
  std::vector<pid_t> out;
  for (pid_t pid : LivePids()) {
    if (CommandLine(pid).find(needle) != std::string::npos) out.push_back(pid);
  }
  return out;
}

std::vector<pid_t> ProcessesMentioning(const std::string& needle) {
  std::vector<pid_t> out;
  for (pid_t pid : LivePids()) {
    if (CommandLine(pid).find(needle) != std::string::npos ||
        ProcFile(pid, "environ").find(needle) != std::string::npos) {
      out.push_back(pid);
    }
  }
  return out;
}

std::vector<pid_t> ProcessesWithEnv(const std::vector<std::string>& entries) {
  std::vector<pid_t> out;
  for (pid_t pid : LivePids()) {
    const std::string env = DelimitedEnvironment(pid);
    if (std::all_of(entries.begin(), entries.end(), [&](const std::string& e) {
          return env.find(std::string(1, '\0') + e + std::string(1, '\0')) != std::string::npos;
        })) {
      out.push_back(pid);
    }
  }
  return out;
}

std::vector<pid_t> JobProcesses(const std::string& state_dir, const std::string& job_id) {
  return ProcessesWithEnv({"CAIRN_JOB_ID=" + job_id, "CAIRN_STATE_DIR=" + state_dir});
}

pid_t RankPid(const std::string& needle, int rank) {
  for (pid_t pid : ProcessesMentioning(needle)) {
    if (EnvValue(pid, "OMPI_COMM_WORLD_RANK") == std::to_string(rank) &&
        ProcessName(pid).starts_with("cairn-fmnist")) {
      return pid;
    }
  }
  return -1;
}

std::string DescribeProcess(pid_t pid) {
  std::string cmd = CommandLine(pid);
  if (cmd.size() > 160) cmd = cmd.substr(0, 160) + "...";
  const auto attempt = EnvValue(pid, "CAIRN_ATTEMPT");
  return "pid " + std::to_string(pid) + (attempt ? " (attempt " + *attempt + ")" : "") + ": " + cmd;
}

std::vector<pid_t> WaitUntilNone(const std::function<std::vector<pid_t>()>& find,
                                 std::chrono::milliseconds within) {
  constexpr auto kEvery = std::chrono::milliseconds(100);
  const auto deadline = std::chrono::steady_clock::now() + 2 * within;
  std::vector<pid_t> left = find();
  for (auto tries = within / kEvery;
       tries > 0 && !left.empty() && std::chrono::steady_clock::now() < deadline; --tries) {
    std::this_thread::sleep_for(kEvery);
    left = find();
  }
  return left;
}

}  // namespace cairn::testing
