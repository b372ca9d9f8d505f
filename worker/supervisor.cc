#include "worker/supervisor.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <thread>
#include <unordered_set>

#include <fmt/ranges.h>

namespace cairn::worker {
namespace {

using Clock = std::chrono::steady_clock;

struct Fd {  // closes on scope exit
  explicit Fd(int f = -1) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { Reset(); }
  void Reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int fd;
};

// Moves a descriptor above 2, so that the child's dup2 onto 0-2 cannot clobber it (the
// agent may run with stdio closed).
int AboveStdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  ::close(fd);
  return moved;
}

bool IsAlive(char state) { return state != 'Z' && state != 'X' && state != 'x'; }

// Stages of the child's setup, reported through the exec-error pipe.
enum Stage : int { kStageIo = 1, kStageChdir = 2, kStageExec = 3, kStageCgroup = 4 };

struct ChildArgs {
  std::vector<char*> argv, envp;        // null-terminated
  std::vector<std::string> candidates;  // paths to try, in PATH order
  const char* workdir = nullptr;
  const char* cgroup_procs = nullptr;   // the group's cgroup.procs, joined before exec
  int in = -1, out = -1, err_pipe = -1;
  pid_t parent = 0;
};

[[noreturn]] void ChildFail(int pipe, int stage, int err) {
  int msg[2] = {stage, err};
  [[maybe_unused]] ssize_t n = ::write(pipe, msg, sizeof msg);
  ::_exit(127);
}

// Runs in the forked child: async-signal-safe calls only (no allocation).
// Writes the calling process's pid into a cgroup.procs file (async-signal-safe).
bool JoinCgroup(const char* procs) {
  char digits[24];
  int n = 0;
  for (pid_t pid = ::getpid(); pid > 0 && n < 23; pid /= 10) digits[n++] = static_cast<char>('0' + pid % 10);
  char text[24];
  for (int i = 0; i < n; ++i) text[i] = digits[n - 1 - i];
  int fd = ::open(procs, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, text, static_cast<size_t>(n)) == n;
  ::close(fd);
  return ok;
}

[[noreturn]] void RunChild(const ChildArgs& a) {
  ::setsid();
  if (a.cgroup_procs != nullptr && !JoinCgroup(a.cgroup_procs)) {
    ChildFail(a.err_pipe, kStageCgroup, errno);
  }
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != a.parent) ::_exit(127);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) ::sigaction(s, &dfl, nullptr);
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (::dup2(a.in, 0) < 0 || ::dup2(a.out, 1) < 0 || ::dup2(a.out, 2) < 0)
    ChildFail(a.err_pipe, kStageIo, errno);
  if (a.workdir != nullptr && ::chdir(a.workdir) != 0) ChildFail(a.err_pipe, kStageChdir, errno);
  ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);  // leak no descriptor of ours
  int err = ENOENT;
  bool denied = false;
  for (const std::string& path : a.candidates) {  // execvp's search, with env's PATH
    ::execve(path.c_str(), a.argv.data(), a.envp.data());
    err = errno;
    if (err == EACCES) {
      denied = true;
    } else if (err != ENOENT && err != ENOTDIR) {
      break;
    }
  }
  ChildFail(a.err_pipe, kStageExec, denied && (err == ENOENT || err == ENOTDIR) ? EACCES : err);
}

std::optional<std::string> ReadSmall(const std::string& path) {
  Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return std::nullopt;
  std::string out;
  char buf[4096];
  for (int i = 0; i < 256; ++i) {  // at most 1 MiB
    ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

bool WriteSmall(const std::string& path, std::string_view text) {
  Fd f(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  return f.fd >= 0 && ::write(f.fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
}

std::vector<pid_t> CgroupProcs(const std::string& dir) {
  std::vector<pid_t> out;
  auto text = ReadSmall(dir + "/cgroup.procs");
  if (!text) return out;
  std::size_t at = 0;
  while (at < text->size()) {
    std::size_t nl = text->find('\n', at);
    if (nl == std::string::npos) nl = text->size();
    if (nl > at) out.push_back(static_cast<pid_t>(std::atoi(text->c_str() + at)));
    at = nl + 1;
  }
  return out;
}

bool CgroupPopulated(const std::string& dir) {
  auto events = ReadSmall(dir + "/cgroup.events");
  return events && events->find("populated 1") != std::string::npos;
}

// Kills everything in a cgroup and its children, then removes them (bounded: 2 s).
void DestroyCgroupTree(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_directory(ec)) DestroyCgroupTree(e.path().string());
  }
  WriteSmall(dir + "/cgroup.kill", "1");
  for (int i = 0; i < 200 && CgroupPopulated(dir); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::rmdir(dir.c_str());
}

// A group label as a cgroup directory name.
std::string CgroupName(const std::string& group) {
  std::string out = group;
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '_';
  }
  return out.empty() || out[0] == '.' ? "g" + out : out;
}

}  // namespace

Result<std::unique_ptr<Supervisor>> Supervisor::Create() {
  if (::prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
    return ErrnoError(errno, "prctl(PR_SET_CHILD_SUBREAPER)");
  }
  std::unique_ptr<Supervisor> s(new Supervisor());
  s->SetUpCgroups();
  return s;
}

void Supervisor::SetUpCgroups() {
  // The cgroup2 mount (pure v2: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified).
  std::string mount;
  if (auto info = ReadSmall("/proc/self/mountinfo")) {
    std::size_t at = 0;
    while (at < info->size() && mount.empty()) {
      std::size_t nl = info->find('\n', at);
      if (nl == std::string::npos) nl = info->size();
      const std::string line = info->substr(at, nl - at);
      at = nl + 1;
      const std::size_t dash = line.find(" - cgroup2 ");
      if (dash == std::string::npos) continue;
      // Fields: id parent major:minor root mount-point ...
      std::size_t f = 0, field = 0;
      while (field < 4 && f != std::string::npos) {
        f = line.find(' ', f + 1);
        ++field;
      }
      if (f == std::string::npos) continue;
      const std::size_t end = line.find(' ', f + 1);
      mount = line.substr(f + 1, end - f - 1);
    }
  }
  if (mount.empty()) {
    cgroup_note_ = "no cgroup2 file system is mounted";
    return;
  }
  std::string own;
  if (auto self = ReadSmall("/proc/self/cgroup")) {
    const std::size_t p = self->find("0::");
    if (p != std::string::npos && (p == 0 || (*self)[p - 1] == '\n')) {
      own = self->substr(p + 3, self->find('\n', p) - p - 3);
    }
  }
  const std::string base = own.empty() || own == "/" ? mount : mount + own;
  // Cgroups of supervisors that are gone (an agent that crashed): kill what is left in
  // them and remove them.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(base, ec)) {
    const std::string name = e.path().filename().string();
    int pid = 0;
    unsigned long long start = 0;
    if (std::sscanf(name.c_str(), "cairn-%d-%llu", &pid, &start) != 2) continue;
    auto proc = ReadProc(pid);
    if (proc && proc->start == start) continue;  // its supervisor is alive
    DestroyCgroupTree(e.path().string());
  }
  auto me = ReadProc(::getpid());
  const std::string dir = fmt::format("{}/cairn-{}-{}", base, ::getpid(), me ? me->start : 0);
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    cgroup_note_ = fmt::format("cannot create a cgroup under {}: {}", base, std::strerror(errno));
    return;
  }
  cgroup_dir_ = dir;
}

std::string Supervisor::GroupCgroup(const std::string& group, bool create) {
  if (cgroup_dir_.empty()) return {};
  const std::string dir = cgroup_dir_ + "/" + CgroupName(group);
  if (cgroups_.contains(group)) return dir;
  if (!create) return {};
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return {};
  cgroups_.insert(group);
  return dir;
}

void Supervisor::KillCgroup(const std::string& group) {
  const std::string dir = GroupCgroup(group, false);
  if (!dir.empty()) WriteSmall(dir + "/cgroup.kill", "1");
}

void Supervisor::RemoveCgroupIfEmpty(const std::string& group) {
  const std::string dir = GroupCgroup(group, false);
  if (!dir.empty() && ::rmdir(dir.c_str()) == 0) cgroups_.erase(group);
}

std::optional<Supervisor::Proc> Supervisor::ReadProc(pid_t pid) {
  char path[32];
  std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
  Fd f(::open(path, O_RDONLY | O_CLOEXEC));
  if (f.fd < 0) return std::nullopt;
  char buf[1024];
  ssize_t n = ::read(f.fd, buf, sizeof buf - 1);
  if (n <= 0) return std::nullopt;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // comm may contain spaces and parentheses
  Proc proc;
  unsigned long long start = 0;
  if (p == nullptr ||
      std::sscanf(p + 1,
                  " %c %d %d %d %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
                  "%*s %llu",
                  &proc.state, &proc.ppid, &proc.pgid, &proc.sid, &start) != 5) {
    return std::nullopt;
  }
  proc.start = start;
  return proc;
}

Supervisor::~Supervisor() {
  for (const std::string& g : Groups()) (void)Kill(g, std::chrono::seconds(2));
  ReapChildren();
  for (const std::string& g : std::set<std::string>(cgroups_)) RemoveCgroupIfEmpty(g);
  if (!cgroup_dir_.empty()) ::rmdir(cgroup_dir_.c_str());
}

Result<pid_t> Supervisor::Spawn(const ProcessSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty()) {
    return MakeError(Code::kInvalidArgument, "spawn: empty argv");
  }
  if (spec.group.empty()) {
    return MakeError(Code::kInvalidArgument, "spawn {}: empty group", spec.argv[0]);
  }
  const std::string& prog = spec.argv[0];
  Fd devnull(AboveStdio(::open("/dev/null", O_RDWR | O_CLOEXEC)));
  if (devnull.fd < 0) return ErrnoError(errno, "open /dev/null");
  Fd log;
  if (!spec.log_path.empty()) {
    std::error_code ec;
    auto parent = std::filesystem::path(spec.log_path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec)
      return ErrnoError(ec.value(), fmt::format("spawn {}: create {}", prog, parent.string()));
    log.fd =
        AboveStdio(::open(spec.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (log.fd < 0) return ErrnoError(errno, fmt::format("spawn {}: open {}", prog, spec.log_path));
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return ErrnoError(errno, "pipe2");
  Fd pipe_r(AboveStdio(fds[0])), pipe_w(AboveStdio(fds[1]));
  if (pipe_r.fd < 0 || pipe_w.fd < 0) return ErrnoError(errno, "pipe2");

  ChildArgs a;
  for (const auto& s : spec.argv) a.argv.push_back(const_cast<char*>(s.c_str()));
  for (const auto& s : spec.env) a.envp.push_back(const_cast<char*>(s.c_str()));
  a.argv.push_back(nullptr);
  a.envp.push_back(nullptr);
  std::string path_var = "/bin:/usr/bin";  // glibc's default when PATH is unset
  bool searched = prog.find('/') == std::string::npos;
  if (searched) {
    for (const auto& e : spec.env) {
      if (e.starts_with("PATH=")) path_var = e.substr(5);
    }
    for (size_t b = 0;;) {
      size_t c = path_var.find(':', b);
      std::string dir = path_var.substr(b, c == std::string::npos ? c : c - b);
      a.candidates.push_back((dir.empty() ? "." : dir) + "/" + prog);
      if (c == std::string::npos) break;
      b = c + 1;
    }
  } else {
    a.candidates.push_back(prog);
  }
  if (!spec.workdir.empty()) a.workdir = spec.workdir.c_str();
  const std::string cgroup = GroupCgroup(spec.group, true);
  const std::string cgroup_procs = cgroup.empty() ? std::string() : cgroup + "/cgroup.procs";
  if (!cgroup_procs.empty()) a.cgroup_procs = cgroup_procs.c_str();
  a.in = devnull.fd;
  a.out = log.fd >= 0 ? log.fd : devnull.fd;
  a.err_pipe = pipe_w.fd;
  a.parent = ::getpid();

  // Block signals so the child runs none of our handlers before it resets them.
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::fork();
  if (pid == 0) RunChild(a);
  int fork_err = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return ErrnoError(fork_err, fmt::format("spawn {}: fork", prog));
  pipe_w.Reset();

  int msg[2];
  ssize_t n;
  do n = ::read(pipe_r.fd, msg, sizeof msg);
  while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof msg)) {  // the child failed before or at exec
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    std::string what = msg[0] == kStageChdir  ? fmt::format("chdir {}", spec.workdir)
                       : msg[0] == kStageIo     ? std::string("redirect stdio")
                       : msg[0] == kStageCgroup ? fmt::format("join cgroup {}", cgroup)
                                                : std::string("exec");
    std::string where = searched && msg[0] == kStageExec ? fmt::format(" (PATH={})", path_var) : "";
    return std::unexpected(
        Error(CodeFromErrno(msg[1]),
              fmt::format("spawn {}: {}: {}{}", prog, what, std::strerror(msg[1]), where)));
  }
  auto proc = ReadProc(pid);
  tracked_[pid] = Tracked{spec.group, proc ? proc->start : 0, true};
  sessions_[pid] =
      spec.group;  // a reused pid's old session is empty: the kernel reuses no live sid
  return pid;
}

void Supervisor::ReapChildren() {
  for (;;) {
    int ws = 0;
    pid_t pid = ::waitpid(-1, &ws, WNOHANG);
    if (pid < 0 && errno == EINTR) continue;
    if (pid <= 0) return;
    auto it = tracked_.find(pid);
    if (it == tracked_.end()) continue;  // an orphan nobody tracked
    if (it->second.leader) {
      exits_.push_back(ExitInfo{pid, it->second.group, WIFEXITED(ws) ? WEXITSTATUS(ws) : -1,
                                WIFSIGNALED(ws) ? WTERMSIG(ws) : 0});
    }
    tracked_.erase(it);
  }
}

std::vector<ExitInfo> Supervisor::Reap() {
  ReapChildren();
  if (!tracked_.empty() || !sessions_.empty() || !cgroups_.empty()) {
    Table table;
    Scan(table);
  }
  // The cgroups of groups with nothing left go (rmdir fails while one is populated).
  for (const std::string& g : std::set<std::string>(cgroups_)) {
    bool tracked = false;
    for (const auto& [pid, t] : tracked_) tracked = tracked || t.group == g;
    if (!tracked) RemoveCgroupIfEmpty(g);
  }
  return std::exchange(exits_, {});
}

std::unordered_map<pid_t, std::string> Supervisor::Scan(Table& table) {
  table.clear();
  if (DIR* dir = ::opendir("/proc")) {
    while (dirent* e = ::readdir(dir)) {
      if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
      pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
      if (auto p = ReadProc(pid)) table.emplace(pid, *p);
    }
    ::closedir(dir);
  }
  // Forget descendants that are gone or whose pid now names another process.
  std::erase_if(tracked_, [&](const auto& kv) {
    if (kv.second.leader) return false;
    auto it = table.find(kv.first);
    return it == table.end() || it->second.start != kv.second.start;
  });
  const pid_t self = ::getpid();
  std::unordered_map<pid_t, std::vector<pid_t>> children;
  std::unordered_set<pid_t> sids;
  std::vector<std::pair<pid_t, const std::string*>> todo;
  for (const auto& [pid, p] : table) {
    children[p.ppid].push_back(pid);
    sids.insert(p.sid);
    // An orphan reparented to us from a leader's session.
    auto s = sessions_.find(p.sid);
    if (p.ppid == self && s != sessions_.end() && !tracked_.contains(pid)) {
      todo.emplace_back(pid, &s->second);
    }
  }
  for (const auto& [pid, t] : tracked_) {
    if (table.contains(pid)) todo.emplace_back(pid, &t.group);
  }
  // Everything in a group's cgroup is the group's, however it got away from its parents.
  for (const std::string& g : cgroups_) {
    for (pid_t pid : CgroupProcs(cgroup_dir_ + "/" + CgroupName(g))) {
      if (table.contains(pid)) todo.emplace_back(pid, &g);
    }
  }
  std::unordered_map<pid_t, std::string> members;
  while (!todo.empty()) {  // descendants of members are members
    auto [pid, group] = todo.back();
    todo.pop_back();
    if (!members.emplace(pid, *group).second) continue;
    for (pid_t c : children[pid]) todo.emplace_back(c, group);
  }
  for (const auto& [pid, group] : members) {
    if (!tracked_.contains(pid)) tracked_[pid] = Tracked{group, table[pid].start, false};
  }
  std::erase_if(sessions_, [&](const auto& kv) {
    auto t = tracked_.find(kv.first);
    return (t == tracked_.end() || !t->second.leader) && !sids.contains(kv.first);
  });
  return members;
}

std::vector<pid_t> Supervisor::Collect(const std::string& group, int sig) {
  Table table;
  std::vector<pid_t> alive;
  for (const auto& [pid, g] : Scan(table)) {
    if (g == group && IsAlive(table[pid].state)) alive.push_back(pid);
  }
  std::sort(alive.begin(), alive.end());
  if (sig == 0) return alive;
  std::set<pid_t> pgids;
  for (pid_t pid : alive) pgids.insert(table[pid].pgid);
  // A process group id is not reused while the group has a member (one was just seen).
  for (pid_t pg : pgids) {
    if (pg > 1 && pg != ::getpgrp()) ::kill(-pg, sig);
  }
  for (pid_t pid : alive) {
    const Tracked& t = tracked_.at(pid);
    if (t.leader) {
      ::kill(pid, sig);  // unreaped child of ours: the pid cannot have been reused
    } else {             // signal it only if the pid still names the process we scanned
      Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
      auto again = pidfd.fd >= 0 ? ReadProc(pid) : std::nullopt;
      if (again && again->start == t.start) {
        ::syscall(SYS_pidfd_send_signal, pidfd.fd, sig, nullptr, 0);
      }
    }
  }
  return alive;
}

std::vector<pid_t> Supervisor::Members(const std::string& group) { return Collect(group, 0); }

void Supervisor::Terminate(const std::string& group) { Collect(group, SIGTERM); }

Status Supervisor::Kill(const std::string& group, std::chrono::milliseconds within) {
  const auto deadline = Clock::now() + within;
  for (;;) {
    ReapChildren();
    KillCgroup(group);
    std::vector<pid_t> alive = Collect(group, SIGKILL);
    if (alive.empty()) {
      ReapChildren();
      RemoveCgroupIfEmpty(group);
      return OkStatus();
    }
    if (Clock::now() >= deadline) {
      return MakeError(Code::kDeadlineExceeded,
                       "group {}: {} process(es) still alive {} ms after SIGKILL: {}", group,
                       alive.size(), within.count(), fmt::join(alive, " "));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

Status Supervisor::Stop(const std::string& group, std::chrono::milliseconds grace,
                        std::chrono::milliseconds kill_within) {
  Terminate(group);
  const auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    ReapChildren();
    if (Members(group).empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Kill(group, kill_within);
}

bool Supervisor::Alive(const std::string& group) { return !Members(group).empty(); }

std::vector<std::string> Supervisor::Groups() {
  Table table;
  std::set<std::string> groups;
  for (const auto& [pid, g] : Scan(table)) {
    if (IsAlive(table[pid].state)) groups.insert(g);
  }
  for (const auto& [pid, t] : tracked_) {
    if (t.leader) groups.insert(t.group);
  }
  return {groups.begin(), groups.end()};
}

}  // namespace cairn::worker
