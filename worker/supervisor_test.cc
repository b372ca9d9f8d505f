#include "worker/supervisor.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

namespace cairn::worker {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

struct Stat {
  pid_t ppid = 0, sid = 0;
  char state = '?';
};
std::optional<Stat> ReadStat(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(f, line)) return std::nullopt;
  std::istringstream in(line.substr(line.rfind(')') + 1));
  Stat s;
  pid_t pgid;
  in >> s.state >> s.ppid >> pgid >> s.sid;
  return s;
}

// Polls `done` every 5 ms for up to `limit`.
bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds limit = 5s) {
  for (auto end = Clock::now() + limit; Clock::now() < end;) {
    if (done()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return done();
}

// Watches a process by pidfd, immune to pid reuse: Dead() once it has exited.
class Watch {
 public:
  explicit Watch(pid_t pid) : pid_(pid), fd_(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))) {}
  Watch(Watch&& o) noexcept : pid_(o.pid_), fd_(std::exchange(o.fd_, -1)) {}
  ~Watch() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool Dead() const {  // exited (a zombie included) or already gone when watched
    if (fd_ < 0) return true;
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, 0) == 1;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
  int fd_;
};

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_sup_test_{}", std::random_device{}());
    fs::create_directories(dir_);
    auto s = Supervisor::Create();
    ASSERT_TRUE(s.has_value()) << s.error().ToString();
    sup_ = std::move(*s);
  }
  void TearDown() override {
    if (sup_) {
      for (const auto& g : sup_->Groups()) EXPECT_TRUE(sup_->Kill(g, 5s).has_value()) << g;
      sup_.reset();
    }
    fs::remove_all(dir_);
  }

  ProcessSpec Sh(const std::string& script, const std::string& group) {
    return ProcessSpec{
        {"sh", "-c", script}, {"PATH=/usr/bin:/bin"}, dir_.string(), Log(group), group};
  }
  std::string Log(const std::string& group) const {
    return (dir_ / "logs" / (group + ".log")).string();
  }
  static std::string Contents(const std::string& path) {
    std::ifstream f(path);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }
  pid_t MustSpawn(const ProcessSpec& spec) {
    auto pid = sup_->Spawn(spec);
    EXPECT_TRUE(pid.has_value()) << pid.error().ToString();
    return pid.value_or(-1);
  }
  // Reaps until `pid` is reported (bounded); keeps the other exits.
  std::optional<ExitInfo> WaitExit(pid_t pid, std::chrono::milliseconds limit = 5s) {
    std::optional<ExitInfo> found;
    WaitFor(
        [&] {
          for (auto& e : sup_->Reap()) exits_.push_back(e);
          auto it =
              std::find_if(exits_.begin(), exits_.end(), [&](auto& e) { return e.pid == pid; });
          if (it != exits_.end()) found = *it;
          return found.has_value();
        },
        limit);
    return found;
  }
  // Waits until the log of `group` contains `text`.
  bool WaitLog(const std::string& group, const std::string& text) {
    return WaitFor([&] { return Contents(Log(group)).find(text) != std::string::npos; });
  }
  // Kills the group and checks that every watched process is dead.
  void KillAndCheck(const std::string& group, const std::vector<Watch>& watched) {
    auto t0 = Clock::now();
    auto st = sup_->Kill(group, 5s);
    EXPECT_TRUE(st.has_value()) << st.error().ToString();
    EXPECT_LT(Clock::now() - t0, 2s);
    for (const auto& w : watched) EXPECT_TRUE(w.Dead()) << "pid " << w.pid() << " survived";
    EXPECT_THAT(sup_->Members(group), IsEmpty());
    EXPECT_FALSE(sup_->Alive(group));
  }

  fs::path dir_;
  std::unique_ptr<Supervisor> sup_;
  std::vector<ExitInfo> exits_;
};

TEST_F(SupervisorTest, ReportsExitCodeAndAppendsToLog) {
  pid_t pid = MustSpawn(Sh("echo hello; exit 3", "g"));
  auto e = WaitExit(pid);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->group, "g");
  EXPECT_EQ(e->exit_code, 3);
  EXPECT_EQ(e->signal, 0);
  pid = MustSpawn(Sh("echo again >&2", "g"));
  ASSERT_TRUE(WaitExit(pid).has_value());
  EXPECT_EQ(Contents(Log("g")), "hello\nagain\n");
  struct stat st;
  ASSERT_EQ(::stat(Log("g").c_str(), &st), 0);
  EXPECT_EQ(
      st.st_mode & 0777, 0644 & ~[] {
        mode_t m = ::umask(0);
        ::umask(m);
        return m;
      }());
  EXPECT_THAT(sup_->Groups(), IsEmpty());
}

TEST_F(SupervisorTest, SpawnErrorsNameTheProgram) {
  ProcessSpec spec{{"cairn-no-such-program"}, {"PATH=/usr/bin:/bin"}, "", "", "g"};
  auto r = sup_->Spawn(spec);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kNotFound);
  EXPECT_THAT(r.error().ToString(), HasSubstr("cairn-no-such-program"));
  EXPECT_THAT(r.error().ToString(), HasSubstr("No such file or directory"));

  std::ofstream((dir_ / "notexec").string()) << "#!/bin/sh\n";
  spec.argv = {(dir_ / "notexec").string()};
  r = sup_->Spawn(spec);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kPermissionDenied);
  EXPECT_THAT(r.error().ToString(), HasSubstr("notexec: exec: Permission denied"));

  spec = Sh("true", "g");
  spec.workdir = (dir_ / "missing").string();
  r = sup_->Spawn(spec);
  ASSERT_FALSE(r.has_value());
  EXPECT_THAT(r.error().ToString(), HasSubstr("spawn sh: chdir " + spec.workdir));

  EXPECT_FALSE(sup_->Spawn(ProcessSpec{}).has_value());
  EXPECT_THAT(sup_->Reap(), IsEmpty());  // failed children are reaped, not reported
  EXPECT_THAT(sup_->Groups(), IsEmpty());
}

TEST_F(SupervisorTest, EnvironmentIsExactlyTheSpecs) {
  ::setenv("CAIRN_SUP_TEST_OURS", "leak", 1);
  // The program is found through the spec's PATH, not ours.
  fs::create_directories(dir_ / "bin");
  std::ofstream((dir_ / "bin" / "cairn-sup-prog").string())
      << "#!/bin/sh\necho \"FOO=$FOO OURS=${CAIRN_SUP_TEST_OURS:-unset}\"; pwd\n";
  fs::permissions(dir_ / "bin" / "cairn-sup-prog", fs::perms::owner_all);
  fs::create_directories(dir_ / "work");
  ProcessSpec spec{{"cairn-sup-prog"},
                   {"FOO=bar", "PATH=/nonexistent:" + (dir_ / "bin").string() + ":/usr/bin:/bin"},
                   (dir_ / "work").string(),
                   Log("env"),
                   "env"};
  pid_t pid = MustSpawn(spec);
  auto e = WaitExit(pid);
  ::unsetenv("CAIRN_SUP_TEST_OURS");
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, 0);
  EXPECT_EQ(Contents(Log("env")), "FOO=bar OURS=unset\n" + (dir_ / "work").string() + "\n");
}

TEST_F(SupervisorTest, StdinIsDevNullEvenWhenOursIsClosed) {
  int saved = ::dup(0);
  ASSERT_GE(saved, 0);
  ::close(0);
  auto pid = sup_->Spawn(Sh("readlink /proc/$$/fd/0", "g"));
  ::dup2(saved, 0);
  ::close(saved);
  ASSERT_TRUE(pid.has_value()) << pid.error().ToString();
  ASSERT_TRUE(WaitExit(*pid).has_value());
  EXPECT_EQ(Contents(Log("g")), "/dev/null\n");
}

TEST_F(SupervisorTest, StopLetsAProcessThatHandlesTermExit) {
  pid_t pid = MustSpawn(Sh("trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done", "g"));
  ASSERT_TRUE(WaitLog("g", "ready"));
  auto t0 = Clock::now();
  auto st = sup_->Stop("g", 5s);
  EXPECT_TRUE(st.has_value()) << st.error().ToString();
  EXPECT_LT(Clock::now() - t0, 2s);
  auto e = WaitExit(pid, 1s);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, 0);
  EXPECT_EQ(e->signal, 0);
  EXPECT_FALSE(sup_->Alive("g"));
}

TEST_F(SupervisorTest, StopKillsAProcessThatIgnoresTermAfterTheGrace) {
  pid_t pid = MustSpawn(Sh("trap '' TERM; echo ready; sleep 60", "g"));
  ASSERT_TRUE(WaitLog("g", "ready"));
  std::vector<Watch> watched;
  ASSERT_TRUE(WaitFor([&] { return sup_->Members("g").size() == 2; }));  // sh and sleep
  for (pid_t p : sup_->Members("g")) watched.emplace_back(p);
  auto t0 = Clock::now();
  auto st = sup_->Stop("g", 300ms);
  auto took = Clock::now() - t0;
  EXPECT_TRUE(st.has_value()) << st.error().ToString();
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 2s);
  for (const auto& w : watched) EXPECT_TRUE(w.Dead()) << w.pid();
  auto e = WaitExit(pid, 1s);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, -1);
  EXPECT_EQ(e->signal, SIGKILL);
  EXPECT_THAT(sup_->Groups(), IsEmpty());
}

TEST_F(SupervisorTest, KillsADescendantThatLeftTheSession) {
  pid_t pid = MustSpawn(Sh("setsid sleep 60 & sleep 60", "g"));
  std::vector<pid_t> members;
  pid_t escaped = 0;
  ASSERT_TRUE(WaitFor([&] {
    members = sup_->Members("g");
    for (pid_t p : members) {
      auto s = ReadStat(p);
      if (s && s->sid == p && p != pid) escaped = p;
    }
    return members.size() == 3 && escaped != 0;
  })) << fmt::format("members {}", members.size());
  EXPECT_THAT(members, Contains(pid));
  std::vector<Watch> watched(members.begin(), members.end());
  KillAndCheck("g", watched);
}

TEST_F(SupervisorTest, KillsADescendantReparentedToUs) {
  // The subshell starts a setsid'd sleep, then exits once `go` exists: the sleep is
  // reparented to us, outside the leader's session.
  pid_t pid =
      MustSpawn(Sh("(setsid sleep 60 & while [ ! -e go ]; do sleep 0.01; done); sleep 60", "g"));
  pid_t escaped = 0;
  ASSERT_TRUE(WaitFor([&] {
    for (pid_t p : sup_->Members("g")) {
      auto s = ReadStat(p);
      if (s && s->sid == p && p != pid) escaped = p;
    }
    return escaped != 0;
  }));
  std::ofstream((dir_ / "go").string()) << "";
  ASSERT_TRUE(WaitFor([&] {
    sup_->Reap();
    auto s = ReadStat(escaped);
    return s && s->ppid == ::getpid();
  }));
  auto members = sup_->Members("g");
  EXPECT_THAT(members, Contains(escaped));
  EXPECT_THAT(members, Contains(pid));
  std::vector<Watch> watched(members.begin(), members.end());
  KillAndCheck("g", watched);
}

TEST_F(SupervisorTest, TracksChildrenOfAnExitedLeaderBySession) {
  // The leader exits at once; its background child is reparented to us before any scan.
  pid_t pid = MustSpawn(Sh("sleep 60 & exit 0", "g"));
  auto e = WaitExit(pid);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, 0);
  std::vector<pid_t> members;
  ASSERT_TRUE(WaitFor([&] { return !(members = sup_->Members("g")).empty(); }));
  ASSERT_EQ(members.size(), 1u);
  auto s = ReadStat(members[0]);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->ppid, ::getpid());
  EXPECT_THAT(sup_->Groups(), ElementsAre("g"));
  std::vector<Watch> watched(members.begin(), members.end());
  auto st = sup_->Stop("g", 1s);
  EXPECT_TRUE(st.has_value()) << st.error().ToString();
  EXPECT_TRUE(watched[0].Dead());
  EXPECT_THAT(sup_->Groups(), IsEmpty());
}

TEST_F(SupervisorTest, ReportsAKillFromOutside) {
  pid_t pid = MustSpawn(ProcessSpec{{"sleep", "60"}, {"PATH=/usr/bin:/bin"}, "", "", "g"});
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto e = WaitExit(pid);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->exit_code, -1);
  EXPECT_EQ(e->signal, SIGKILL);
  EXPECT_FALSE(sup_->Alive("g"));
}

TEST_F(SupervisorTest, StoppingOneGroupLeavesTheOther) {
  pid_t a = MustSpawn(Sh("sleep 60", "a"));
  pid_t b = MustSpawn(Sh("sleep 60 & sleep 60", "b"));
  ASSERT_TRUE(WaitFor([&] { return sup_->Members("b").size() == 3; }));
  auto before = sup_->Members("b");
  EXPECT_THAT(sup_->Groups(), ElementsAre("a", "b"));
  auto st = sup_->Stop("a", 1s);
  EXPECT_TRUE(st.has_value()) << st.error().ToString();
  ASSERT_TRUE(WaitExit(a, 1s).has_value());
  EXPECT_FALSE(sup_->Alive("a"));
  EXPECT_EQ(sup_->Members("b"), before);
  EXPECT_THAT(sup_->Members("b"), Contains(b));
  EXPECT_THAT(sup_->Groups(), ElementsAre("b"));
  EXPECT_THAT(sup_->Reap(), IsEmpty());
}

TEST_F(SupervisorTest, KillReportsNothingLeftForAnUnknownGroup) {
  EXPECT_TRUE(sup_->Kill("nobody", 0ms).has_value());
  EXPECT_THAT(sup_->Members("nobody"), IsEmpty());
}

// The process's command line, NULs as spaces ("" when gone).
std::string CmdlineOf(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/cmdline", pid));
  std::string s{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  std::replace(s.begin(), s.end(), '\0', ' ');
  return s;
}

// A process that leaves the session and loses its parent before any scan can see it:
// the /proc tracking alone cannot attribute it (the limit the header names), its cgroup
// can.
TEST_F(SupervisorTest, AnOrphanThatLeftTheSessionUnseenIsKilledThroughTheGroupsCgroup) {
  if (sup_->cgroup_dir().empty()) GTEST_SKIP() << "no cgroups here: " << sup_->cgroup_note();
  const std::string marker = fmt::format("{}", 3000 + ::getpid() % 997);
  pid_t pid = MustSpawn(Sh("setsid -f sleep " + marker + "; exit 0", "g"));
  ASSERT_TRUE(WaitExit(pid).has_value());
  pid_t escaped = 0;
  ASSERT_TRUE(WaitFor([&] {
    for (pid_t p : sup_->Members("g")) {
      if (CmdlineOf(p) == "sleep " + marker + " ") escaped = p;
    }
    return escaped != 0;
  })) << "the setsid'd sleep is not a member";
  auto s = ReadStat(escaped);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->sid, escaped);  // its own session: not the leader's
  EXPECT_TRUE(fs::exists(sup_->cgroup_dir() + "/g"));
  std::vector<Watch> watched;
  watched.emplace_back(escaped);
  KillAndCheck("g", watched);
  EXPECT_FALSE(fs::exists(sup_->cgroup_dir() + "/g")) << "the group's cgroup is left behind";
}

// A group whose processes all exited loses its cgroup at the next Reap.
TEST_F(SupervisorTest, AGroupsCgroupGoesWhenItsProcessesHaveExited) {
  if (sup_->cgroup_dir().empty()) GTEST_SKIP() << "no cgroups here: " << sup_->cgroup_note();
  pid_t pid = MustSpawn(Sh("exit 0", "short"));
  ASSERT_TRUE(WaitExit(pid).has_value());
  EXPECT_TRUE(WaitFor([&] {
    sup_->Reap();
    return !fs::exists(sup_->cgroup_dir() + "/short");
  }));
}

// The cgroup of a supervisor that died (an agent killed with SIGKILL) is found by the
// next one: what is still running in it is killed, and the cgroup removed.
TEST_F(SupervisorTest, CgroupsOfADeadSupervisorAreKilledAndRemoved) {
  if (sup_->cgroup_dir().empty()) GTEST_SKIP() << "no cgroups here: " << sup_->cgroup_note();
  const fs::path base = fs::path(sup_->cgroup_dir()).parent_path();
  sup_.reset();  // one supervisor per process: the next one below takes over
  // pid 1's start time is never 1 tick after boot for a live init: a dead supervisor.
  const fs::path stale = base / fmt::format("cairn-{}-1", ::getpid());
  fs::create_directories(stale / "job.1");
  pid_t child = ::fork();
  if (child == 0) {
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ASSERT_GT(child, 0);
  Watch w(child);
  {
    std::ofstream procs(stale / "job.1" / "cgroup.procs");
    procs << child;
  }
  auto next = Supervisor::Create();
  ASSERT_TRUE(next.has_value()) << next.error().ToString();
  EXPECT_TRUE(WaitFor([&] { return w.Dead(); })) << "pid " << child << " survived";
  EXPECT_FALSE(fs::exists(stale)) << stale;
  EXPECT_TRUE(fs::exists((*next)->cgroup_dir()));
  const std::string next_dir = (*next)->cgroup_dir();
  next->reset();
  EXPECT_FALSE(fs::exists(next_dir)) << "a supervisor's own cgroup stays after it is gone";
  ::waitpid(child, nullptr, 0);
}

}  // namespace
}  // namespace cairn::worker
