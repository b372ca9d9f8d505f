// The node agent's process supervisor (Linux).
//
// Promise: the Supervisor launches processes (training ranks, Open MPI daemons), each in
// its own session and labelled with a group, and kills a group's whole process tree
// leaving nothing alive, including descendants that called setsid() or double-forked.
// It makes the agent a child subreaper, so orphaned descendants are reparented to it and
// reaped by it, and it tracks the group of every descendant by walking /proc (parent
// links, the leader's session id, start times), so that a reused pid is never taken for
// a member and a reaped leader is never signalled. Launched processes get SIGKILL when
// the thread that spawned them dies. Exec failures come back from Spawn as errors naming
// the program and the system error, not as exit codes.
//
// Where cgroup v2 is mounted and the agent may create cgroups below its own (root, or a
// delegated subtree), each group also gets a cgroup of its own
// (<agent's cgroup>/cairn-<pid>-<start>/<group>), which every process of the group joins
// before it executes and cannot leave: membership then includes everything in it, Kill
// uses cgroup.kill as well, and the cgroup is removed once empty. Cgroups left behind by
// an agent that died are killed and removed by the next Supervisor created below the same
// cgroup. Without cgroups (cgroup_dir() empty, cgroup_note() says why) the /proc tracking
// alone applies, with this limit: a descendant that both leaves the leader's session
// (setsid) and loses its parent before any Reap/Members/Terminate/Kill/Stop/Alive/Groups
// call has seen it cannot be attributed to a group (it is still reaped when it exits);
// call Reap regularly. The Supervisor reaps every child of the process (waitpid(-1)): do not mix
// it with other code that waits for children. Create at most one per process.
//
// Threading: not thread-safe; owned by one thread, which must outlive the processes it
// spawns (PR_SET_PDEATHSIG fires when the spawning thread exits).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace cairn::worker {

struct ProcessSpec {
  std::vector<std::string> argv;  // argv[0] without '/' is looked up in env's PATH
  std::vector<std::string> env;   // the full environment, "K=V" (not merged with ours)
  std::string workdir;            // empty: inherit ours
  std::string log_path;           // stdout+stderr appended here (created 0644 less umask, and its
                                  // parent dirs); empty: /dev/null. stdin is always /dev/null.
  std::string group;              // label (e.g. the run id); processes are stopped by group
};

struct ExitInfo {
  pid_t pid = 0;
  std::string group;
  int exit_code = 0;  // -1 if killed by a signal
  int signal = 0;     // 0 if it exited
};

class Supervisor {
 public:
  // Makes the calling process a child subreaper (PR_SET_CHILD_SUBREAPER).
  static Result<std::unique_ptr<Supervisor>> Create();
  // Kills every group still alive (up to 2 s each).
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts spec.argv in a new session (setsid), with PR_SET_PDEATHSIG SIGKILL, stdin from
  // /dev/null, stdout+stderr to the log, in workdir, with exactly spec.env. Returns the
  // pid once the program is executing; an error if it could not be started.
  Result<pid_t> Spawn(const ProcessSpec& spec);
  // Non-blocking. Reaps every exited child and returns the exits of spawned processes
  // not returned before (also those reaped inside Kill/Stop). Also refreshes the
  // descendant tracking (one pass over /proc).
  std::vector<ExitInfo> Reap();
  // The live pids of `group`, sorted: spawned leaders still alive plus all descendants.
  std::vector<pid_t> Members(const std::string& group);
  // SIGTERM to every member and to every member's process group; returns immediately.
  void Terminate(const std::string& group);
  // SIGKILLs every member (and process group), rescanning and reaping until none is
  // alive. OK when nothing of the group is left; kDeadlineExceeded naming the pids still
  // alive once `within` has passed.
  Status Kill(const std::string& group, std::chrono::milliseconds within);
  // Terminate, wait up to `grace` for the group to be empty, then Kill(group, kill_within).
  Status Stop(const std::string& group, std::chrono::milliseconds grace,
              std::chrono::milliseconds kill_within = std::chrono::seconds(5));
  bool Alive(const std::string& group);  // any member alive
  // Groups with a member alive or a spawned process not yet reaped, sorted.
  std::vector<std::string> Groups();

  // This supervisor's cgroup directory (its groups' cgroups are below it), or empty.
  const std::string& cgroup_dir() const { return cgroup_dir_; }
  // Why there is none (empty when there is one).
  const std::string& cgroup_note() const { return cgroup_note_; }

 private:
  struct Proc {  // fields of /proc/<pid>/stat
    char state = '?';
    pid_t ppid = 0, pgid = 0, sid = 0;
    uint64_t start = 0;  // start time in clock ticks after boot (field 22)
  };
  struct Tracked {
    std::string group;
    uint64_t start = 0;
    bool leader = false;  // spawned by us and not yet reaped: its pid is still ours
  };
  using Table = std::unordered_map<pid_t, Proc>;

  Supervisor() = default;
  static std::optional<Proc> ReadProc(pid_t pid);
  void SetUpCgroups();
  // The group's cgroup directory, created on first use (empty without cgroups).
  std::string GroupCgroup(const std::string& group, bool create);
  // cgroup.kill of the group's cgroup, and removal once it is empty.
  void KillCgroup(const std::string& group);
  void RemoveCgroupIfEmpty(const std::string& group);
  void ReapChildren();
  // One pass over /proc: fills `table`, updates tracked_/sessions_, returns pid -> group
  // of every member (zombies included).
  std::unordered_map<pid_t, std::string> Scan(Table& table);
  // The live members of `group`; when sig != 0, signals them and their process groups.
  std::vector<pid_t> Collect(const std::string& group, int sig);

  std::unordered_map<pid_t, Tracked> tracked_;       // leaders and known descendants
  std::unordered_map<pid_t, std::string> sessions_;  // session id (leader pid) -> group
  std::vector<ExitInfo> exits_;                      // not yet returned by Reap
  std::string cgroup_dir_;
  std::string cgroup_note_;
  std::set<std::string> cgroups_;  // groups whose cgroup exists
};

}  // namespace cairn::worker
