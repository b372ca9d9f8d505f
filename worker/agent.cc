#include "worker/agent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/log.h"
#include "worker/mpirun_command.h"

extern char** environ;

namespace cairn::worker {
namespace {

namespace fs = std::filesystem;
auto Log() { return log::Logger("agent"); }

// Variables of an enclosing launcher that must not leak into the ranks we start.
bool Inherited(std::string_view kv) {
  static constexpr std::string_view kDrop[] = {
      "OMPI_COMM_WORLD_", "OMPI_UNIVERSE_SIZE", "PMIX_", "CAIRN_RANK=", "CAIRN_WORLD_SIZE=",
      "CAIRN_LOCAL_RANK=", "CAIRN_RUN_ID=", "CAIRN_JOB_ID=", "CAIRN_ATTEMPT=",
      "CAIRN_PROGRESS_SOCKET=", "CAIRN_EXPECTED_HEAD=", "CAIRN_PROVENANCE_DIGEST=", "RANK=", "LOCAL_RANK=", "WORLD_SIZE=",
      "LOCAL_WORLD_SIZE=", "GROUP_RANK=", "MASTER_ADDR=", "MASTER_PORT=", "CUDA_VISIBLE_DEVICES="};
  for (auto d : kDrop) {
    if (kv.starts_with(d)) return false;
  }
  return true;
}

void Set(std::vector<std::string>& env, const std::string& k, const std::string& v) {
  const std::string prefix = k + "=";
  auto it = std::find_if(env.begin(), env.end(),
                         [&](const std::string& e) { return e.starts_with(prefix); });
  if (it != env.end()) {
    *it = prefix + v;
  } else {
    env.push_back(prefix + v);
  }
}

bool Has(const std::vector<std::string>& env, const std::string& k) {
  const std::string prefix = k + "=";
  return std::any_of(env.begin(), env.end(),
                     [&](const std::string& e) { return e.starts_with(prefix); });
}

// Nodes of the gang that share a kernel (one host in several network namespaces, or
// several agents on one machine) look like different hosts to Open MPI but are not.
bool SharedHost(const proto::LaunchOrder& o) {
  std::set<std::string> hostnames, addresses;
  for (const auto& h : o.hosts()) {
    hostnames.insert(h.hostname());
    addresses.insert(h.address());
  }
  const auto n = static_cast<std::size_t>(o.hosts_size());
  return hostnames.size() < n || addresses.size() < n;
}

// The TMPDIR this agent's processes would have had.
std::string RankTmpdir() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

// Open MPI settings for the daemon or mpirun of one node; `who` names its session dir.
// mpirun copies its own OMPI_MCA_* variables onto every daemon's command line (where
// they beat the daemon's environment), so mpirun gets its session dir base through
// TMPDIR, which it does not forward: each daemon keeps the base its agent gave it
// (daemons of one job sharing a session tree delete each other's directories).
void SetOpenMpiEnv(std::vector<std::string>& env, const proto::LaunchOrder& o,
                   const std::string& state_dir, const std::string& who, bool mpirun) {
  const std::string tmp = fmt::format("{}/agents/{}/tmp", state_dir, who);
  std::error_code ec;
  fs::create_directories(tmp, ec);
  Set(env, mpirun ? "TMPDIR" : "OMPI_MCA_orte_tmpdir_base", tmp);
  // Unless the job chose a PML: ob1 where the node has no fabric (mpirun_command.h).
  static const bool fabric = NodeHasFabric();
  if (!fabric && !Has(env, "OMPI_MCA_pml")) Set(env, "OMPI_MCA_pml", "ob1");
  if (SharedHost(o)) {
    // Daemons of "different nodes" on one kernel collide in shared memory: the hwloc
    // topology segment, PMIx's shared-memory store, and the vader transport.
    Set(env, "OMPI_MCA_rtc", "^hwloc");
    Set(env, "PMIX_MCA_gds", "hash");
    Set(env, "OMPI_MCA_btl", "self,tcp");
  }
}

}  // namespace

namespace {
int g_wake_fd = -1;  // write end of the wake pipe, for the SIGCHLD handler
extern "C" void OnChild(int) {
  const int saved = errno;
  const char c = 'c';
  [[maybe_unused]] ssize_t n = ::write(g_wake_fd, &c, 1);
  errno = saved;
}
}  // namespace

Result<std::unique_ptr<Agent>> Agent::Create(AgentConfig config) {
  CAIRN_ASSIGN_OR_RETURN(auto sup, Supervisor::Create());
  if (sup->cgroup_dir().empty()) {
    Log()->info("runs are tracked through /proc only (no cgroups: {})", sup->cgroup_note());
  } else {
    Log()->info("each run gets a cgroup under {}", sup->cgroup_dir());
  }
  std::error_code ec;
  fs::create_directories(fs::path(config.progress_path).parent_path(), ec);
  fs::remove(config.progress_path, ec);
  if (config.progress_path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return MakeError(Code::kInvalidArgument, "progress socket path too long: {}",
                     config.progress_path);
  }
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return MakeError(Code::kInternal, "progress socket: {}", std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, config.progress_path.data(), config.progress_path.size());
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int e = errno;
    ::close(fd);
    return MakeError(Code::kUnavailable, "bind {}: {}", config.progress_path, std::strerror(e));
  }
  std::unique_ptr<Agent> agent(new Agent(std::move(config), std::move(sup), fd));
  if (::pipe2(agent->wake_, O_NONBLOCK | O_CLOEXEC) != 0) {
    return MakeError(Code::kInternal, "wake pipe: {}", std::strerror(errno));
  }
  return agent;
}

Agent::~Agent() {
  StopAll(std::chrono::milliseconds(0));
  ::close(progress_fd_);
  if (g_wake_fd == wake_[1]) {
    ::signal(SIGCHLD, SIG_DFL);
    g_wake_fd = -1;
  }
  ::close(wake_[0]);
  ::close(wake_[1]);
  for (const auto& [pid, fd] : rank_pidfds_) ::close(fd);
  std::error_code ec;
  fs::remove(config_.progress_path, ec);
}

proto::HeartbeatRequest Agent::Report(uint32_t wait_ms) {
  std::lock_guard lock(mu_);
  proto::HeartbeatRequest hb;
  hb.set_node_id(config_.node_id);
  hb.set_sequence(++sequence_);
  hb.set_sent_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count());
  hb.set_orders_version(orders_version_);
  hb.set_wait_ms(wait_ms);
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [id, run] : runs_) {
    auto* r = hb.add_runs();
    r->set_run_id(id);
    r->set_launch_error(run.launch_error);
    bool active = !run.started && run.launch_error.empty() && !run.stopping;
    // Logs before exits: while output of an exited process is still on its way to
    // cairnd (shipped logs), its exit waits, up to kHoldExitForLogs, so that whoever
    // sees the job end also finds its last lines.
    bool hold = false;
    const bool exited = std::any_of(run.procs.begin(), run.procs.end(),
                                    [](const Proc& p) { return !p.running; });
    if (exited && shipper_.Pending(run.order.job_id(), run.order.attempt())) {
      auto [since, fresh] = exit_held_since_.try_emplace(id, now);
      hold = now - since->second < kHoldExitForLogs;
    } else {
      exit_held_since_.erase(id);
    }
    for (const auto& p : run.procs) {
      auto* ps = r->add_processes();
      ps->set_name(p.name);
      ps->set_pid(p.pid);
      const bool held = hold && !p.running;
      ps->set_running(p.running || held);
      ps->set_exit_code(held ? 0 : p.exit_code);
      ps->set_signal(held ? 0 : p.signal);
      ps->set_primary(p.primary);
      ps->set_rank(p.rank);
      ps->set_how(held ? std::string() : p.how);
      active = active || p.running || held;
    }
    // Descendants (Open MPI ranks under an orted, strays) count too: Step() keeps
    // `killed` false until the whole tree is gone.
    if (run.stopping && !run.killed) active = true;
    r->set_active(active);
    for (const auto& [rank, p] : run.progress) *r->add_progress() = p;
  }
  // Runs this agent stopped on its own (fenced) that cairnd still thinks are running.
  for (const auto& [id, o] : orders_) {
    if (o.stop() || runs_.contains(id) || !finished_.contains(id)) continue;
    auto* r = hb.add_runs();
    r->set_run_id(id);
    r->set_launch_error("stopped by the agent: no contact with cairnd for longer than the "
                        "node timeout");
  }
  shipper_.Collect(&hb);
  return hb;
}

void Agent::ApplyOrders(const proto::HeartbeatReply& reply) {
  std::lock_guard lock(mu_);
  orders_version_ = reply.orders_version();
  orders_.clear();
  for (const auto& o : reply.runs()) orders_[o.run_id()] = o;
  orders_pending_ = true;
  fenced_ = false;
  Wake();
}

void Agent::Fence() {
  std::lock_guard lock(mu_);
  if (fenced_) return;
  fenced_ = true;
  orders_.clear();
  orders_pending_ = true;
  if (!runs_.empty()) {
    Log()->warn("cut off from cairnd: stopping {} run(s) on this node", runs_.size());
  }
  Wake();
}

void Agent::Wake() {
  const char c = 'o';
  [[maybe_unused]] ssize_t n = ::write(wake_[1], &c, 1);
}

void Agent::WakeOnChildExit() {
  g_wake_fd = wake_[1];
  struct sigaction sa {};
  sa.sa_handler = OnChild;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  ::sigaction(SIGCHLD, &sa, nullptr);
}

void Agent::WaitForWork(std::chrono::milliseconds d) {
  std::vector<pollfd> fds{{wake_[0], POLLIN, 0}};
  {
    std::lock_guard lock(mu_);
    for (const auto& [pid, fd] : rank_pidfds_) fds.push_back({fd, POLLIN, 0});
  }
  ::poll(fds.data(), fds.size(), static_cast<int>(d.count()));
  char buf[256];
  while (::read(wake_[0], buf, sizeof(buf)) > 0) {
  }
  std::lock_guard lock(mu_);
  orders_pending_ = false;
  // A watched rank ended: Step() sees it gone. Its pidfd has done its job.
  for (std::size_t i = 1; i < fds.size(); ++i) {
    if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) == 0) continue;
    for (auto it = rank_pidfds_.begin(); it != rank_pidfds_.end(); ++it) {
      if (it->second == fds[i].fd) {
        ::close(it->second);
        rank_pidfds_.erase(it);
        break;
      }
    }
  }
}

void Agent::WatchRank(pid_t pid) {
  if (pid <= 0 || rank_pidfds_.contains(pid) || rank_pidfds_.size() >= kMaxWatchedRanks) {
    return;
  }
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd >= 0) rank_pidfds_.emplace(pid, fd);
  // ESRCH: already gone, FindVanishedRanks sees it; ENOSYS (kernel < 5.3): the 100 ms
  // rounds find it.
}

std::size_t Agent::live_runs() {
  std::lock_guard lock(mu_);
  return runs_.size();
}

std::string Agent::LogDir(const proto::LaunchOrder& o) const {
  return fmt::format("{}/logs/{}/attempt-{}", config_.state_dir, o.job_id(), o.attempt());
}

std::vector<std::string> Agent::BaseEnv(const proto::LaunchOrder& o) const {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (Inherited(*e)) env.emplace_back(*e);
  }
  for (const auto& [k, v] : o.spec().env()) Set(env, k, v);
  Set(env, "CAIRN_RUN_ID", o.job_id());
  Set(env, "CAIRN_JOB_ID", o.job_id());
  Set(env, "CAIRN_ATTEMPT", std::to_string(o.attempt()));
  Set(env, "CAIRN_STATE_DIR", config_.state_dir);
  if (!o.expected_head().empty()) Set(env, "CAIRN_EXPECTED_HEAD", o.expected_head());
  if (!o.provenance_digest().empty()) {
    Set(env, "CAIRN_PROVENANCE_DIGEST", o.provenance_digest());
  }
  if (!o.spec().checkpoint_dir().empty()) Set(env, "CAIRN_CKPT_DIR", o.spec().checkpoint_dir());
  if (!Has(env, "OMP_NUM_THREADS")) {
    Set(env, "OMP_NUM_THREADS", std::to_string(std::max(1u, o.spec().cpus_per_rank())));
  }
  return env;
}

// A new attempt of a job starts only when the old one is gone from this node: stopped
// with nothing left (`killed`), even while cairnd's orders still mention it.
bool Agent::PreviousAttemptAlive(const LocalRun& run) {
  for (const auto& [id, other] : runs_) {
    if (&other == &run || other.order.job_id() != run.order.job_id()) continue;
    if (other.order.attempt() < run.order.attempt() && !other.killed) return true;
  }
  return false;
}

bool Agent::Start(LocalRun& run) {
  const auto& o = run.order;
  run.started = true;
  const std::string logs = LogDir(o);
  std::error_code ec;
  fs::create_directories(logs, ec);
  shipper_.Track(o.job_id(), o.attempt());
  std::vector<std::string> env = BaseEnv(o);
  auto fail = [&](const Error& e) {
    run.launch_error = e.ToString();
    Log()->error("run {}: {}", o.run_id(), run.launch_error);
    return true;
  };
  if (o.spec().launcher() == "mpi") {
    if (!o.head()) return false;  // its daemon comes through an Exec order
    // Also inside a SLURM allocation: cairn-rsh and the gang's hosts (mpirun_command.h).
    const std::vector<std::string> argv =
        MpirunArgv(o, MpirunContext{.rsh_path = config_.rsh_path,
                                    .log_dir = logs,
                                    .as_root = ::geteuid() == 0,
                                    .local_node = config_.node_id,
                                    .rank_tmpdir = RankTmpdir()});
    Set(env, "CAIRN_RSH_RUN", o.run_id());
    Set(env, "CAIRN_PROGRESS_SOCKET", config_.progress_path);  // this node's ranks
    SetOpenMpiEnv(env, o, config_.state_dir, config_.node_id + "/mpirun", /*mpirun=*/true);
    ProcessSpec spec{argv, env, o.spec().workdir(), logs + "/mpirun.log", o.run_id()};
    auto pid = sup_->Spawn(spec);
    if (!pid) return fail(pid.error());
    run.procs.push_back(Proc{*pid, "mpirun", -1, true});
    std::string hosts;
    for (const auto& h : o.hosts()) hosts += (hosts.empty() ? "" : ",") + h.node_id();
    Log()->info("run {}: mpirun (pid {}) for {} ranks on {}", o.run_id(), *pid, o.world_size(),
                hosts);
    return true;
  }
  int group_rank = 0;
  for (int i = 0; i < o.hosts_size(); ++i) {
    if (o.hosts(i).node_id() == config_.node_id) group_rank = i;
  }
  Set(env, "WORLD_SIZE", std::to_string(o.world_size()));
  Set(env, "CAIRN_WORLD_SIZE", std::to_string(o.world_size()));
  Set(env, "LOCAL_WORLD_SIZE", std::to_string(o.ranks_size()));
  Set(env, "GROUP_RANK", std::to_string(group_rank));
  Set(env, "MASTER_ADDR", o.master_addr());
  Set(env, "MASTER_PORT", std::to_string(o.master_port()));
  Set(env, "CAIRN_PROGRESS_SOCKET", config_.progress_path);
  for (int i = 0; i < o.ranks_size(); ++i) {
    std::vector<std::string> e = env;
    const std::string rank = std::to_string(o.ranks(i));
    Set(e, "RANK", rank);
    Set(e, "CAIRN_RANK", rank);
    Set(e, "LOCAL_RANK", std::to_string(i));
    Set(e, "CAIRN_LOCAL_RANK", std::to_string(i));
    if (i < o.gpus_size() && !o.gpus(i).empty()) {
      auto devices = RankGpuList(o.gpus(i), config_.gpus);
      if (!devices) {
        return fail(Error(Code::kFailedPrecondition,
                          fmt::format("rank {}: cairnd assigned GPUs '{}' but this node "
                                      "registered {} GPUs",
                                      rank, o.gpus(i), config_.gpus.size())));
      }
      Set(e, "CUDA_VISIBLE_DEVICES", *devices);
      Set(e, "CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    }
    std::vector<std::string> argv(o.spec().command().begin(), o.spec().command().end());
    ProcessSpec spec{argv, e, o.spec().workdir(), fmt::format("{}/rank-{}.log", logs, rank),
                     o.run_id()};
    auto pid = sup_->Spawn(spec);
    if (!pid) {
      // The ranks already started are stopped with the run.
      return fail(pid.error());
    }
    run.procs.push_back(Proc{*pid, "rank " + rank, static_cast<int>(o.ranks(i)), true});
  }
  Log()->info("run {}: started ranks {}..{} of {}", o.run_id(), o.ranks(0),
              o.ranks(o.ranks_size() - 1), o.world_size());
  return true;
}

bool Agent::StartExecs(LocalRun& run) {
  bool changed = false;
  const auto& o = run.order;
  for (const auto& cmd : o.execs()) {
    if (!run.execs_started.insert(cmd).second) continue;
    std::vector<std::string> env = BaseEnv(o);
    Set(env, "CAIRN_PROGRESS_SOCKET", config_.progress_path);
    SetOpenMpiEnv(env, o, config_.state_dir, config_.node_id, /*mpirun=*/false);
    ProcessSpec spec{{"/bin/sh", "-c", cmd}, env, "",
                     fmt::format("{}/orted-{}.log", LogDir(o), config_.node_id), o.run_id()};
    auto pid = sup_->Spawn(spec);
    if (!pid) {
      run.launch_error = pid.error().ToString();
      Log()->error("run {}: daemon: {}", o.run_id(), run.launch_error);
    } else {
      run.procs.push_back(Proc{*pid, "orted", -1, false});
      Log()->info("run {}: Open MPI daemon (pid {})", o.run_id(), *pid);
    }
    changed = true;
  }
  return changed;
}

void Agent::BeginStop(LocalRun& run, int64_t grace_ms) {
  if (run.stopping) return;
  run.stopping = true;
  run.kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(grace_ms);
  if (grace_ms > 0) sup_->Terminate(run.order.run_id());
  Log()->info("run {}: stopping ({} ms grace)", run.order.run_id(), grace_ms);
}

void Agent::ReadProgress() {
  char buf[2048];
  for (int i = 0; i < 10'000; ++i) {
    const ssize_t n = ::recv(progress_fd_, buf, sizeof(buf), MSG_DONTWAIT);
    if (n <= 0) break;
    proto::RankProgress p;
    if (!p.ParseFromArray(buf, static_cast<int>(n))) continue;
    // CAIRN_RUN_ID is the job id; the live attempt of that job takes the report, else
    // the one stopping: a checkpoint its rank 0 committed just before the end is still
    // the job's newest, to be handed to the next attempt (which starts only once this
    // one is gone from the node).
    LocalRun* to = nullptr;
    for (auto& [id, run] : runs_) {
      if (run.order.job_id() != p.run_id()) continue;
      if (!run.stopping) {
        to = &run;
        break;
      }
      if (!run.killed) to = &run;
    }
    if (to == nullptr) continue;
    if (!to->stopping && !p.exiting()) WatchRank(static_cast<pid_t>(p.pid()));
    to->progress[p.rank()] = p;
  }
}

namespace {
// True when `pid` is gone or a zombie (it ended; its parent has not reaped it yet).
bool Gone(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), {});
  const auto close = stat.rfind(')');
  if (close == std::string::npos || close + 2 >= stat.size()) return true;
  return stat[close + 2] == 'Z' || stat[close + 2] == 'X';
}
}  // namespace

// Ranks that are not our children (mpi mode: orted's) and vanished without reporting an
// exit died: say so at once rather than wait for mpirun to notice (seconds).
bool Agent::FindVanishedRanks(LocalRun& run) {
  bool changed = false;
  for (const auto& [rank, p] : run.progress) {
    if (p.pid() == 0 || p.exiting()) continue;
    const pid_t pid = static_cast<pid_t>(p.pid());
    const bool known = std::any_of(run.procs.begin(), run.procs.end(),
                                   [&](const Proc& q) { return q.pid == pid; });
    if (known || !Gone(pid)) continue;
    Proc dead{pid, "rank " + std::to_string(rank), static_cast<int>(rank), false, false, -1, 0};
    dead.how = "died without reporting an exit (killed or crashed)";
    run.procs.push_back(dead);
    Log()->warn("run {}: rank {} (pid {}) {}", run.order.run_id(), rank, pid, dead.how);
    changed = true;
  }
  return changed;
}

bool Agent::Step() {
  std::lock_guard lock(mu_);
  bool changed = false;
  for (const ExitInfo& e : sup_->Reap()) {
    auto it = runs_.find(e.group);
    if (it == runs_.end()) continue;
    for (auto& p : it->second.procs) {
      if (p.pid == e.pid && p.running) {
        p.running = false;
        p.exit_code = e.exit_code;
        p.signal = e.signal;
        changed = true;
        Log()->info("run {}: {} (pid {}) {} {}", e.group, p.name, p.pid,
                    e.signal != 0 ? "killed by signal" : "exited with code",
                    e.signal != 0 ? e.signal : e.exit_code);
      }
    }
  }
  ReadProgress();
  for (auto& [id, run] : runs_) {
    if (!run.stopping && run.started) changed = FindVanishedRanks(run) || changed;
  }
  // New and changed orders.
  for (const auto& [id, o] : orders_) {
    if (finished_.contains(id)) continue;
    auto it = runs_.find(id);
    if (it == runs_.end()) {
      if (o.stop()) continue;  // ended before it started here
      LocalRun run;
      run.order = o;
      it = runs_.emplace(id, std::move(run)).first;
    }
    LocalRun& run = it->second;
    run.in_orders = true;
    run.order = o;
    if (o.stop()) {
      BeginStop(run, static_cast<int64_t>(o.stop_grace_ms()));
      continue;
    }
    if (!run.started && !run.stopping) {
      if (PreviousAttemptAlive(run)) continue;
      changed = Start(run) || changed;
    }
    if (run.started && run.launch_error.empty()) changed = StartExecs(run) || changed;
  }
  // Runs no longer ordered: stop at once.
  for (auto& [id, run] : runs_) {
    if (!orders_.contains(id)) {
      run.in_orders = false;
      BeginStop(run, 0);
    }
  }
  // Stopping runs: kill after the grace; forget once nothing is left and cairnd knows.
  const auto now = std::chrono::steady_clock::now();
  for (auto it = runs_.begin(); it != runs_.end();) {
    LocalRun& run = it->second;
    if (run.stopping && !run.killed) {
      const bool alive = sup_->Alive(run.order.run_id());
      if (!alive || now >= run.kill_at) {
        if (alive) {
          if (auto k = sup_->Kill(run.order.run_id(), std::chrono::seconds(5)); !k) {
            Log()->error("run {}: {}", run.order.run_id(), k.error().ToString());
          }
        }
        for (const ExitInfo& e : sup_->Reap()) {
          for (auto& p : run.procs) {
            if (p.pid == e.pid && p.running) {
              p.running = false;
              p.exit_code = e.exit_code;
              p.signal = e.signal;
            }
          }
        }
        if (!sup_->Alive(run.order.run_id())) {
          ReadProgress();  // whatever its processes sent before they went
          run.killed = true;
          for (auto& p : run.procs) p.running = false;
          changed = true;
          Log()->info("run {}: stopped, no process left", run.order.run_id());
        }
      }
    }
    if (run.killed && !run.in_orders) {
      shipper_.Untrack(run.order.job_id(), run.order.attempt());
      finished_.insert(it->first);
      it = runs_.erase(it);
      changed = true;
    } else {
      ++it;
    }
  }
  // Bound the memory of finished runs (a run id never comes back after minutes).
  while (finished_.size() > 4096) finished_.erase(finished_.begin());
  return changed;
}

void Agent::StopAll(std::chrono::milliseconds grace) {
  std::lock_guard lock(mu_);
  for (auto& [id, run] : runs_) {
    if (auto s = sup_->Stop(id, grace); !s) Log()->error("run {}: {}", id, s.error().ToString());
  }
  runs_.clear();
}

}  // namespace cairn::worker
