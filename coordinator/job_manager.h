// Runs jobs: queue -> gang placement -> launch orders for the agents -> supervision ->
// success, or failure handling and an automatic restart from the latest checkpoint.
//
// Promise: a job's attempts never overlap: a new attempt is placed only after every
// process of the previous one is reported gone (or its node is lost and fences itself),
// so two attempts never write the same checkpoint directory. An attempt ends at the
// first of: a process exiting non-zero or by a signal (exit 75 of every rank = preempted),
// a launch error, a node of its gang lost, no progress report within the job's
// hang_timeout (before its first report, at least kStartupAllowanceMs: starting ranks
// load data and checkpoints), a cancel; on failure its processes are killed at once, on cancel or
// preemption they get the job's grace period (SIGTERM first, so ranks can checkpoint).
// Then the job restarts (failures count against max_restarts, with exponential backoff
// after the first; preemptions do not count), unless the attempt failed with the same
// failure at the same step as the one before it: that is the job's own bug and the job
// FAILS rather than looping. A node on which attempts failed `quarantine_after` times in
// a row for reasons that point at the node (lost, could not launch, hung), without a
// success between, is quarantined: no new placements for `quarantine_ms` (0: no limit)
// or until its agent registers again, whichever comes first; then its failure count starts
// over. The quarantine's end is stored, so a coordinator restart keeps the time left.
// A process exiting non-zero or killed is the job's failure, not the node's. Each attempt is handed the checkpoint head the job reported last
// (CAIRN_EXPECTED_HEAD), so a rolled-back checkpoint directory is refused.
//
// Orders are level-triggered: OrdersFor(node) is the whole set of runs the node must
// have, with a version that changes whenever the set does. Agents start what is new and
// stop what is gone, so a lost reply or a restart of either side loses nothing.
//
// Run state machine (one attempt; RUN_* in proto/cairn.proto):
//
//   STARTING ──first report of a live process──▶ RUNNING ──all primaries exit 0──▶ SUCCEEDED
//       │                                          │
//       └──────────────┬───────────────────────────┤
//                      ▼                           ▼
//   FAILED (exit!=0, signal, launch error,   PREEMPTED (every primary exited 0 or 75,
//           node lost, hang)                            some 75) / CANCELLED
//   An ending run is "stopping" until every node reports its processes gone.
//
// Threading: single-threaded; owned by the coordinator's io_context.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "coordinator/blocking_worker.h"
#include "coordinator/provenance_keeper.h"
#include "coordinator/scheduler.h"
#include "coordinator/slurm_executor.h"
#include "coordinator/state_store.h"
#include "proto/cairn.pb.h"

namespace cairn::coord {

struct JobManagerOptions {
  int64_t restart_backoff_ms = 1000;   // before the 2nd restart; doubles after each
  int64_t max_backoff_ms = 60'000;
  uint32_t quarantine_after = 3;       // failed attempts in a row on one node
  int64_t quarantine_ms = 600'000;     // how long a quarantine lasts (0: until the agent
                                       // registers again)
  std::string state_dir;               // slurm executor: batch scripts and output under it
  int64_t slurm_poll_ms = 1000;        // how often SLURM is asked about its jobs
  // The cluster's secret (its token): SLURM job names carry an id derived from it, so
  // that the attempts of several cairnd on one SLURM cluster never share a name.
  std::string cluster_secret;
};

// What the manager needs to know of a node it does not own.
struct NodeView {
  std::string address;
  std::string hostname;
  bool alive = false;         // not known to be lost (after a coordinator restart: not yet)
  bool heartbeating = false;  // heartbeats now: may take new placements
};

JobRequest RequestOf(const std::string& job_id, const proto::JobSpec& spec);

// The least time an attempt gets before its first progress report.
inline constexpr int64_t kStartupAllowanceMs = 60'000;

class JobManager {
 public:
  using Clock = std::function<int64_t()>;
  using NodeLookup = std::function<NodeView(const std::string& node_id)>;

  JobManager(StateStore* store, Scheduler* scheduler, Clock clock, NodeLookup nodes,
             JobManagerOptions options = {});

  // Provenance (optional): each attempt's record is prepared before its orders go out
  // (inputs hashed and pins checked; a pin that does not match fails the job without a
  // restart), and every checkpoint head an attempt reports is attested, and at success the
  // final head if the succeeding attempt wrote it (one that resumed from the job's last
  // checkpoint and wrote none attests nothing: that manifest binds an earlier attempt).
  void set_provenance(ProvenanceKeeper* keeper) { keeper_ = keeper; }
  const ProvenanceKeeper* provenance() const { return keeper_; }

  // The slurm executor (jobs with executor "slurm"): each attempt is a SLURM batch job,
  // submitted, followed (squeue/scontrol) and cancelled on `worker`'s thread. SLURM
  // allocates; cairn's scheduler and agents are not involved. A SLURM job that ends other
  // than COMPLETED with exit 0 (failed, timed out, node failure, cancelled by someone
  // else) is a failed attempt and the job restarts from its checkpoint like any other;
  // PREEMPTED requeues it. Ranks run without an agent: they report progress to cairnd
  // itself (see set_progress_endpoint), and once an attempt's first report has arrived, no
  // report within hang_timeout ends it as hung (scancel) like an agent's attempt; the
  // run's SLURM job id is kept with the attempt. With provenance and the
  // spec's checkpoint_dir, once SLURM says the job is over and before the attempt ends,
  // the checkpoints of that directory that the attempt committed (their manifests bind
  // the attempt's record) are attested and the newest becomes the job's checkpoint head.
  // Every attestation of a SLURM attempt carries its SLURM job id in the signed statement.
  // Each attempt's SLURM job is named cairn-<cluster id>-<run id>. When the coordinator
  // stopped (a crash) after an attempt began but before sbatch answered, Recover finds
  // the attempt again: once no submitter of its batch script is left on this host, it
  // asks slurmctld for jobs of that name, adopts the job it finds (and cancels any other),
  // or, when SLURM never got one, submits it now: one SLURM job per attempt. (A job that
  // ended longer ago than slurmctld remembers finished jobs, MinJobAge, cannot be found:
  // it is submitted again.)
  void set_slurm(SlurmExecutor* executor, BlockingWorker* worker) {
    slurm_ = executor;
    slurm_worker_ = worker;
  }

  // Where ranks without an agent (the slurm executor's) send progress: cairnd's UDP
  // socket at host:port (an unspecified host, 0.0.0.0 or ::, is named by this machine's
  // host name). Each attempt gets CAIRN_PROGRESS_SOCKET=udp://HOST:PORT/<run id>?key=<hex>
  // (runtime/progress.h) with a key of its own, HMAC-SHA256(cluster secret,
  // "cairn.progress-key.v1" NUL run id): a datagram counts only for the live attempt whose
  // key tagged it (and only for a rank the job has), so a rank cannot report for another
  // attempt and a replayed report is no newer than what was seen. Checkpoint heads in these
  // reports are not taken: a SLURM attempt's checkpoints are read from its directory at
  // its end. Without an endpoint (none set), the ranks get no destination.
  void set_progress_endpoint(const std::string& host, uint16_t port);
  // A datagram received on that socket; anything that does not verify is dropped.
  void OnNetworkProgress(std::string_view datagram);

  // Called with a node id whenever that node's orders change (wakes its long poll).
  void set_orders_changed(std::function<void(const std::string&)> fn) {
    orders_changed_ = std::move(fn);
  }

  // After a coordinator restart: queues pending jobs, takes back running attempts (their
  // processes keep running; the agents report them again).
  Status Recover();
  // A job just stored as PENDING.
  Status Queue(const std::string& job_id, const proto::JobSpec& spec);
  // Inside the caller's transaction: marks the job CANCELLED and stops its attempt.
  Status Cancel(const std::string& job_id, const std::string& who);
  // A FAILED or CANCELLED job back to PENDING (its restart count starts over).
  Status Resume(const std::string& job_id, const std::string& who);

  // An agent's report (any heartbeat).
  void OnReport(const proto::HeartbeatRequest& report);
  // A node missed its heartbeats.
  void OnNodeLost(const std::string& node_id);
  // A node registered afresh: it leaves quarantine.
  void OnNodeRegistered(const std::string& node_id);
  bool Quarantined(const std::string& node_id) const { return quarantined_.contains(node_id); }
  // When the node's quarantine ends (unix ms; 0: not quarantined, or no time limit).
  int64_t QuarantinedUntil(const std::string& node_id) const;
  // cairn-rsh: start `command` on `node` for a live run.
  Status Exec(const proto::ExecRequest& request);

  uint64_t OrdersVersion(const std::string& node_id) const;
  proto::HeartbeatReply OrdersFor(const std::string& node_id) const;

  // Backoff expiry, hang detection, quarantines that are over, placement.
  void Tick();
  // Places what fits now (after a submit, a node joining, a run ending).
  void Schedule();
  // A node quarantined before a coordinator restart, until `until_ms` (0: no time limit);
  // one whose time ran out meanwhile is released by the next Tick.
  void RestoreQuarantine(const std::string& node_id, uint32_t failures, int64_t until_ms);
  // Adds what only memory knows (progress, ranks, next attempt) to a stored status.
  void AddLive(proto::JobStatus* status) const;

 private:
  struct Run {
    std::string job_id;
    uint32_t attempt = 0;
    std::string run_id;
    proto::JobSpec spec;
    Placement placement;
    std::vector<std::string> nodes;  // distinct, in rank order
    std::map<std::string, std::vector<std::string>> execs;
    std::string expected_head;
    uint64_t head_step = 0;  // the job's stored checkpoint step (written when it grows)
    uint32_t master_port = 0;
    int64_t started_ms = 0;
    int64_t last_progress_ms = 0;
    bool running = false;  // RUN_RUNNING stored
    std::map<uint32_t, proto::RankProgress> progress;
    std::map<std::string, proto::RunReport> reports;  // newest per node
    // Ending: the outcome is decided, processes are being stopped.
    bool stopping = false;
    proto::RunState outcome = proto::RUN_STATE_UNSPECIFIED;
    std::string failure;
    std::string blame_node;
    int64_t stop_grace_ms = 0;
    uint64_t failed_step = 0;
    // Provenance: while preparing, no orders go out.
    bool preparing = false;
    bool user_error = false;  // the job's own inputs are wrong: fail, do not restart
    proto::ProvenanceRecord record;
    std::string provenance_digest;
    bool resumed_recorded = false;
    // slurm executor
    bool slurm = false;
    std::string slurm_id;        // SLURM's job id, once sbatch answered
    bool slurm_submitting = false;
    bool slurm_final = false;    // SLURM says the job is over
    bool slurm_cancel_sent = false;
    int slurm_unknown = 0;       // polls in a row that SLURM did not know the job
    bool slurm_scanning = false;  // its checkpoint directory is being read (SLURM is done)
    bool slurm_scanned = false;   // ... and was read: the attempt may end
    // After a coordinator restart, an attempt whose sbatch never answered: its SLURM job
    // is being looked for (by name), not yet adopted or submitted again.
    bool slurm_adopting = false;
    bool slurm_adopt_busy = false;  // a lookup is in flight
    int64_t slurm_adopt_at_ms = 0;  // the next lookup, not before
    std::string ckpt_dir;  // as rank 0 reported it
  };
  struct Waiting {  // a job between attempts
    int64_t not_before_ms = 0;
  };

  Status StartRun(const Placement& placement);
  Status StartSlurmRun(const std::string& job_id);
  void SubmitSlurm(Run& run);
  void PollSlurm();
  void OnSlurmStatus(const SlurmJobStatus& st);
  // Reads what a SLURM attempt checkpointed, on the worker thread; false when there is
  // nothing to read (no checkpoint_dir, no provenance record).
  bool BeginSlurmScan(Run& run, const SlurmJobStatus& final_status);
  void CancelSlurm(Run& run);
  // Looks for the SLURM job of an attempt whose sbatch never answered (see set_slurm).
  void AdoptSlurm(Run& run);
  std::string SlurmJobName(const Run& run) const;
  // The attempt's progress key (32 bytes), from the cluster secret and its run id.
  std::string ProgressKey(const std::string& run_id) const;
  std::string AttemptDir(const Run& run) const;
  Run Restored(const proto::JobStatus& js, const proto::RunStatus& last, int64_t now) const;
  // The attempt's stored provenance record into `run`; false if there is none.
  bool LoadRecord(Run& run);
  void BeginPrepare(Run& run, int64_t now);
  void OnPrepared(const std::string& job_id, uint32_t attempt, Result<PreparedRecord> prepared);
  void LinkInputs(const Run& run);
  void Attest(const Run& run, uint64_t step, const std::string& manifest_hex, bool final);
  void Evaluate(Run& run);
  void Stop(Run& run, proto::RunState outcome, std::string why, std::string blame,
            int64_t grace_ms);
  void MaybeFinish(Run& run);
  Status Finish(Run& run);
  void Changed(const Run& run);
  uint64_t StepOf(const Run& run) const;
  int64_t Backoff(uint32_t restarts) const;
  void Quarantine(const std::string& node_id);
  void ReleaseQuarantines(int64_t now);
  void Event(const std::string& job_id, const std::string& kind, const std::string& message);

  StateStore* store_;
  Scheduler* scheduler_;
  Clock clock_;
  NodeLookup node_view_;
  JobManagerOptions options_;
  std::function<void(const std::string&)> orders_changed_;
  ProvenanceKeeper* keeper_ = nullptr;
  SlurmExecutor* slurm_ = nullptr;
  BlockingWorker* slurm_worker_ = nullptr;
  std::vector<std::string> slurm_queue_;  // slurm-executor jobs waiting to be submitted
  std::string cluster_id_;                // from options_.cluster_secret: 8 hex digits
  std::string progress_endpoint_;         // "HOST:PORT" of cairnd's UDP socket, or empty
  uint64_t progress_rejected_ = 0;        // network datagrams that did not verify
  bool slurm_polling_ = false;
  int64_t slurm_polled_ms_ = 0;

  std::map<std::string, Run> runs_;             // by job id (one live attempt per job)
  std::map<std::string, Waiting> waiting_;      // RESTARTING jobs, by job id
  std::map<std::string, std::string> last_failure_;  // job -> signature of its last failure
  std::map<std::string, uint64_t> node_version_;
  std::map<std::string, uint32_t> node_failures_;
  std::map<std::string, int64_t> quarantined_;  // node -> when it ends (0: no time limit)
  uint64_t version_seq_ = 0;
};

}  // namespace cairn::coord
