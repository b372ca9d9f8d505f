// `cairn up|down`: an embedded local cluster (cairnd + N agents on this machine, in the
// background), for development, tests and the demo.
//
// up: starts cairnd and the agents as daemons of their own sessions (logs in the state
// directory), records their pids in STATE/cluster.pids, and returns once every agent's
// node is alive. The daemons get the config file (`cairn --config FILE up`, or
// CAIRN_CONFIG) and `--log-level`; `up`'s own flags (--node-timeout, --quarantine-time,
// --cpus-per-agent) are passed on only when given, so the config file decides otherwise
// (docs/config.md). On a cluster that is up, restarts whichever of its daemons died (e.g.
// cairnd after a crash: running jobs continue). down: SIGTERM to each recorded process that is still the one recorded
// (its command line names the state directory), SIGKILL after 5 s, then checks that none
// is left.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "common/io.h"
#include "common/yaml.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"

namespace cairn::cli {
namespace {

std::string SelfDir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

// Starts argv as a daemon (own session, stdin from /dev/null, output to log).
Result<pid_t> Daemon(const std::vector<std::string>& argv, const std::string& log) {
  int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (out < 0) return ErrnoError(errno, log);
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out);
    return ErrnoError(errno, "fork");
  }
  if (pid == 0) {
    ::setsid();
    int in = ::open("/dev/null", O_RDONLY);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(out, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    _exit(127);
  }
  ::close(out);
  return pid;
}

// True if pid is alive and its command line mentions `needle` (not a reused pid).
bool IsOurs(pid_t pid, const std::string& needle) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::string cmd((std::istreambuf_iterator<char>(in)), {});
  if (cmd.empty()) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto close_paren = line.rfind(')');
  if (close_paren != std::string::npos && close_paren + 2 < line.size() &&
      line[close_paren + 2] == 'Z') {
    return false;  // a zombie waiting for its parent
  }
  for (char& c : cmd) {
    if (c == '\0') c = ' ';
  }
  return cmd.find(needle) != std::string::npos;
}

std::vector<pid_t> ReadPids(const std::string& path) {
  std::ifstream in(path);
  std::vector<pid_t> pids;
  pid_t p;
  while (in >> p) pids.push_back(p);
  return pids;
}

Status Down(const std::string& dir) {
  const std::string pids_file = io::JoinPath(dir, "cluster.pids");
  auto pids = ReadPids(pids_file);
  if (pids.empty()) return MakeError(Code::kNotFound, "no cluster started by `cairn up` at {}", dir);
  // Agents first (they are the leaves), cairnd last.
  for (auto it = pids.rbegin(); it != pids.rend(); ++it) {
    if (IsOurs(*it, dir)) ::kill(*it, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  auto any_left = [&] {
    for (pid_t p : pids) {
      if (IsOurs(p, dir)) return true;
    }
    return false;
  };
  while (any_left() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (pid_t p : pids) {
    if (IsOurs(p, dir)) ::kill(p, SIGKILL);
  }
  for (int i = 0; i < 100 && any_left(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (any_left()) return MakeError(Code::kInternal, "processes of the cluster at {} survived SIGKILL", dir);
  std::error_code ec;
  std::filesystem::remove(pids_file, ec);
  return OkStatus();
}

// What `cairn up` passes on to the daemons it starts; an empty value is not passed (the
// daemon's config file or default decides).
struct UpOptions {
  int agents = 1;
  std::string cpus_per_agent;   // cairn-agent --cpus
  std::string node_timeout;     // cairnd --node-timeout
  std::string quarantine_time;  // cairnd --quarantine-time
  bool slurm = false;
  std::string config_file;  // both: --config (absolute)
  std::string log_level;    // both: --log-level
};

// Checks the values `up` passes on by the rules of the keys they override, before anything
// starts.
Status CheckUpOptions(const UpOptions& o) {
  if (o.agents < 0 || o.agents > 64) return MakeError(Code::kInvalidArgument, "--agents must be 0..64");
  if (!o.node_timeout.empty()) {
    CAIRN_ASSIGN_OR_RETURN(auto d, WithContext(yaml::ParseDuration(o.node_timeout), "--node-timeout"));
    CAIRN_RETURN_IF_ERROR_CTX(CheckHeartbeatTimeout(d), "--node-timeout");
  }
  if (!o.quarantine_time.empty()) {
    CAIRN_RETURN_IF_ERROR_CTX(yaml::ParseDuration(o.quarantine_time), "--quarantine-time");
  }
  return OkStatus();
}

Status Up(const std::string& dir, const UpOptions& o) {
  CAIRN_RETURN_IF_ERROR(CheckUpOptions(o));
  const int agents = o.agents;
  // Flags both daemons get.
  std::vector<std::string> common_argv = {"--state-dir", dir};
  if (!o.config_file.empty()) common_argv.insert(common_argv.end(), {"--config", o.config_file});
  if (!o.log_level.empty()) common_argv.insert(common_argv.end(), {"--log-level", o.log_level});
  std::vector<std::string> cairnd_argv = common_argv;
  if (!o.node_timeout.empty()) cairnd_argv.insert(cairnd_argv.end(), {"--node-timeout", o.node_timeout});
  if (!o.quarantine_time.empty()) {
    cairnd_argv.insert(cairnd_argv.end(), {"--quarantine-time", o.quarantine_time});
  }
  if (o.slurm) cairnd_argv.push_back("--slurm");
  CAIRN_RETURN_IF_ERROR(io::CreateDirs(io::DefaultFileSystem(), dir, 0700));
  const std::string pids_file = io::JoinPath(dir, "cluster.pids");
  const std::string bin = SelfDir();
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  auto agent_argv = [&](int i, int of) {
    // Simulated nodes on one machine split its GPUs between them.
    std::vector<std::string> argv = {bin + "/cairn-agent"};
    argv.insert(argv.end(), common_argv.begin(), common_argv.end());
    argv.insert(argv.end(), {"--node-id", fmt::format("{}-a{}", host, i), "--gpu-share",
                             fmt::format("{}/{}", i, std::max(of, 1))});
    if (!o.cpus_per_agent.empty()) argv.insert(argv.end(), {"--cpus", o.cpus_per_agent});
    return argv;
  };
  const std::vector<pid_t> old = ReadPids(pids_file);
  if (std::any_of(old.begin(), old.end(), [&](pid_t p) { return IsOurs(p, dir); })) {
    // Up already: restart what died (cairnd first: line 1; agent i: line i + 2). Jobs
    // keep running: the agents reconnect to the new cairnd.
    std::vector<pid_t> now = old;
    std::vector<std::string> restarted;
    for (std::size_t i = 0; i < now.size(); ++i) {
      if (IsOurs(now[i], dir)) continue;
      if (i == 0) {
        std::error_code rm;
        std::filesystem::remove(io::JoinPath(dir, "cairnd.addr"), rm);
      }
      std::vector<std::string> cairnd = {bin + "/cairnd"};
      cairnd.insert(cairnd.end(), cairnd_argv.begin(), cairnd_argv.end());
      auto pid = i == 0 ? Daemon(cairnd,
                                 io::JoinPath(dir, "cairnd.log"))
                        : Daemon(agent_argv(static_cast<int>(i - 1), static_cast<int>(now.size() - 1)),
                                 io::JoinPath(dir, fmt::format("agent-{}.log", i - 1)));
      if (!pid) return std::unexpected(pid.error());
      now[i] = *pid;
      restarted.push_back(i == 0 ? fmt::format("cairnd (pid {})", *pid)
                                 : fmt::format("agent {} (pid {})", i - 1, *pid));
    }
    if (restarted.empty()) {
      return MakeError(Code::kFailedPrecondition,
                       "a cluster is already up at {} (pid {}); `cairn down` first", dir, old[0]);
    }
    std::ostringstream s;
    for (pid_t p : now) s << p << "\n";
    CAIRN_RETURN_IF_ERROR(io::WriteFileAtomic(io::DefaultFileSystem(), pids_file, s.str(), 0600));
    for (int i = 0; i < 200 && !std::filesystem::exists(io::JoinPath(dir, "cairnd.addr")); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::string what;
    for (const auto& r : restarted) what += (what.empty() ? "" : ", ") + r;
    std::printf("cluster at %s: restarted %s\n", dir.c_str(), what.c_str());
    return OkStatus();
  }
  std::vector<pid_t> pids;
  auto record = [&] {
    std::ostringstream s;
    for (pid_t p : pids) s << p << "\n";
    return io::WriteFileAtomic(io::DefaultFileSystem(), pids_file, s.str(), 0600);
  };
  std::error_code ec;
  std::filesystem::remove(io::JoinPath(dir, "cairnd.addr"), ec);
  std::vector<std::string> cairnd_cmd = {bin + "/cairnd"};
  cairnd_cmd.insert(cairnd_cmd.end(), cairnd_argv.begin(), cairnd_argv.end());
  CAIRN_ASSIGN_OR_RETURN(pid_t cairnd, Daemon(cairnd_cmd,
                                              io::JoinPath(dir, "cairnd.log")));
  pids.push_back(cairnd);
  CAIRN_RETURN_IF_ERROR(record());
  // On failure, the processes started here are our children: kill and reap them.
  auto fail = [&](Error e) -> Status {
    for (pid_t p : pids) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
    std::error_code rm;
    std::filesystem::remove(pids_file, rm);
    return std::unexpected(std::move(e));
  };
  for (int i = 0; !std::filesystem::exists(io::JoinPath(dir, "cairnd.addr")); ++i) {
    if (i >= 200 || ::waitpid(cairnd, nullptr, WNOHANG) == cairnd) {
      return fail(Error(Code::kUnavailable,
                        fmt::format("cairnd did not start; see {}", io::JoinPath(dir, "cairnd.log"))));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (int i = 0; i < agents; ++i) {
    auto pid = Daemon(agent_argv(i, agents), io::JoinPath(dir, fmt::format("agent-{}.log", i)));
    if (!pid) return fail(pid.error());
    pids.push_back(*pid);
    if (auto r = record(); !r) return fail(r.error());
  }
  // Ready when every agent's node is alive.
  auto client = coord::Client::Connect(dir);
  if (!client) return fail(client.error());
  for (int i = 0;; ++i) {
    auto bytes = (*client)->Call("ListNodes", proto::ListNodesRequest().SerializeAsString());
    proto::ListNodesReply reply;
    int alive = 0;
    if (bytes && reply.ParseFromString(*bytes)) {
      for (const auto& n : reply.nodes()) alive += n.alive() ? 1 : 0;
    }
    if (alive >= agents) break;
    if (i >= 200) {
      return fail(Error(Code::kUnavailable,
                        fmt::format("only {} of {} agents registered; see the logs in {}", alive,
                                    agents, dir)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::printf("cluster up at %s: cairnd (pid %d) and %d agent(s); logs in %s\n", dir.c_str(),
              cairnd, agents, dir.c_str());
  return OkStatus();
}

}  // namespace

void RegisterClusterCommands(CLI::App& app, Context* ctx) {
  struct Flags {
    std::string state_dir;
    int cpus_per_agent = 0;
    UpOptions up;
  };
  auto f = std::make_shared<Flags>();
  auto* up = app.add_subcommand("up", "Start a local cluster (cairnd + agents) in the background");
  up->add_option("--state-dir", f->state_dir,
                 "State directory (default CAIRN_STATE_DIR, else the config's state_dir, else "
                 "~/.cairn)");
  up->add_option("--agents", f->up.agents, "Agents (simulated nodes) to start")->capture_default_str();
  up->add_option("--cpus-per-agent", f->cpus_per_agent,
                 "CPUs each agent declares (0: all cores; default: the config's agent.cpus, "
                 "else 0)");
  up->add_option("--node-timeout", f->up.node_timeout,
                 "Heartbeat timeout of a node (default: the config's "
                 "coordinator.heartbeat_timeout, else 5s)");
  up->add_option("--quarantine-time", f->up.quarantine_time,
                 "How long a node on which attempts failed repeatedly stays out of service "
                 "(default: the config's coordinator.quarantine_time, else 10m; 0 = until its "
                 "agent restarts)");
  up->add_flag("--slurm", f->up.slurm,
               "cairnd also runs jobs submitted with --executor slurm, through the SLURM "
               "cluster SLURM_CONF names");
  up->callback([ctx, f, up] {
    UpOptions o = f->up;
    if (up->count("--cpus-per-agent") > 0) {
      if (auto s = CheckCpus(f->cpus_per_agent); !s) {
        ctx->exit_code = ReportError("cairn", std::move(s).error().With("--cpus-per-agent"));
        return;
      }
      o.cpus_per_agent = std::to_string(f->cpus_per_agent);
    }
    if (const std::string path = ConfigFilePath(*ctx->flags); !path.empty()) {
      std::error_code ec;
      const auto abs = std::filesystem::absolute(path, ec);
      o.config_file = ec ? path : abs.string();
    }
    o.log_level = ctx->flags->log_level;
    if (auto s = Up(coord::DefaultStateDir(f->state_dir), o); !s) {
      ctx->exit_code = ReportError("cairn", s.error());
    }
  });
  auto* down = app.add_subcommand("down", "Stop the local cluster started by `cairn up`");
  down->add_option("--state-dir", f->state_dir,
                   "State directory (default CAIRN_STATE_DIR, else the config's state_dir, else "
                   "~/.cairn)");
  down->callback([ctx, f] {
    const std::string dir = coord::DefaultStateDir(f->state_dir);
    if (auto s = Down(dir); !s) {
      ctx->exit_code = ReportError("cairn", s.error());
      return;
    }
    std::printf("cluster at %s is down\n", dir.c_str());
  });
}

}  // namespace cairn::cli
