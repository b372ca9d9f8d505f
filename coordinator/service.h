// The coordinator's request handling, independent of the transport: one authenticated
// Envelope in, one reply Envelope out.
//
// Promise: every request is authenticated (cluster token) before anything else; every
// method that changes state is idempotent: its effect and its reply are stored in one
// SQLite transaction keyed by (client id, request id), and a retried request gets the
// stored reply without a second effect. Job specs are validated field by field, and an
// invalid one is an INVALID_ARGUMENT reply naming the field. A reply always carries the
// request's id and method.
//
// Methods: SubmitJob (SubmitJobRequest -> SubmitJobReply), GetJob (GetJobRequest ->
// JobStatus), ListJobs (ListJobsRequest -> ListJobsReply), CancelJob (CancelJobRequest
// -> CancelJobReply), ResumeJob (ResumeJobRequest -> ResumeJobReply), GetEvents
// (GetEventsRequest -> GetEventsReply), RegisterNode (RegisterNodeRequest ->
// RegisterNodeReply), Heartbeat (HeartbeatRequest -> HeartbeatReply: the node's orders),
// ListNodes (ListNodesRequest -> ListNodesReply), Exec (ExecRequest -> ExecReply),
// GetLineage (GetLineageRequest -> GetLineageReply: provenance records, attestations,
// parent jobs, the signing key's public half).
//
// Nodes: an agent registers (stored, and given to the scheduler), then heartbeats; each
// heartbeat carries the node's run reports and is answered with its orders (JobManager).
// A heartbeat may ask to be held until its orders change (long poll, see Server), so an
// order reaches an agent at once. Heartbeats are kept in memory only (one fsync per
// heartbeat per node would not scale); a node silent for node_timeout is marked lost by
// Tick() (unschedulable, its runs fail over, event logged) and comes back with its next
// heartbeat or registration. After a coordinator restart known nodes get node_timeout
// to reconnect before they count as lost. Once the cluster has nodes, a job that could
// never fit on them is rejected at submit, naming the unmet need. A node the job manager
// quarantined gets no new placements until its quarantine ends (ListNodes says when) or
// its agent registers again as a new process.
//
// Job state machine (owned here; runs and ranks follow with the agents):
//
//   PENDING ──placed──▶ RUNNING ──all ranks exit 0──▶ SUCCEEDED
//      │                  │  ▲
//      │                  │  └──restarted── RESTARTING ◀──failure, restarts left──┐
//      │                  └──────────────────────────────────────────────────────┘
//      │                  └──failure, no restarts left / user error──▶ FAILED
//      └──cancel (from any non-final state)──▶ CANCELLED
//
// Threading: single-threaded; called on the coordinator's io_context.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "coordinator/job_manager.h"
#include "coordinator/log_sink.h"
#include "coordinator/scheduler.h"
#include "coordinator/state_store.h"
#include "proto/cairn.pb.h"

namespace cairn::coord {

// Checks a job spec and fills defaults (launcher env, executor local, hang timeout
// 5 min, grace period 30 s, cpus_per_rank 1). Errors name the field.
Status ValidateJobSpec(proto::JobSpec* spec);

struct ServiceOptions {
  int64_t heartbeat_interval_ms = 1000;
  int64_t node_timeout_ms = 5000;
  JobManagerOptions jobs;
};

class Service {
 public:
  using Clock = std::function<int64_t()>;  // unix milliseconds
  Service(StateStore* store, std::string cluster_token, Clock clock,
          ServiceOptions options = {});

  // Loads the durable state: nodes, queued jobs, live attempts. Call once, before serving.
  Status Recover();
  proto::Envelope Handle(const proto::Envelope& request);
  // Periodic work (call every few hundred ms): marks silent nodes lost, detects hangs,
  // starts attempts whose backoff has passed.
  void Tick();

  // Long poll of heartbeats: how long to hold the reply to `request` (0: answer now), and
  // the reply to send when the hold ends (the node's orders then).
  int64_t HoldMs(const proto::Envelope& request) const;
  proto::Envelope OrdersReply(const proto::Envelope& request);
  // Called with a node id when its orders change.
  void set_orders_changed(std::function<void(const std::string&)> fn) {
    jobs_.set_orders_changed(std::move(fn));
  }
  JobManager& jobs() { return jobs_; }
  // Progress of ranks without an agent (the slurm executor's): the server's UDP socket
  // (where they send it) and each datagram received there (JobManager::OnNetworkProgress).
  void set_progress_endpoint(const std::string& host, uint16_t port) {
    jobs_.set_progress_endpoint(host, port);
  }
  void OnProgressDatagram(std::string_view datagram) { jobs_.OnNetworkProgress(datagram); }
  // Group commit (see StateStore::BeginGroup): the server opens a group before handling
  // requests and commits it before sending their replies.
  Status BeginGroup() { return store_->BeginGroup(); }
  Status CommitGroup() { return store_->CommitGroup(); }
  bool group_open() const { return store_->group_open(); }

 private:
  struct NodeLive {
    int64_t last_seen_ms = 0;
    bool alive = false;
    bool lost = false;  // reported lost (after a restart: not yet back)
    uint64_t last_sequence = 0;
    proto::RegisterNodeRequest registration;
  };
  Result<std::string> RegisterNode(const proto::Envelope& request);
  Result<std::string> Heartbeat(const proto::Envelope& request);
  Result<std::string> ListNodes();
  void LoadNodes();
  Result<std::string> Dispatch(const proto::Envelope& request);
  Result<std::string> SubmitJob(const proto::Envelope& request);
  Result<std::string> CancelJob(const proto::Envelope& request);
  Result<std::string> ResumeJob(const proto::Envelope& request);
  Result<std::string> GetEvents(const proto::Envelope& request);
  Result<std::string> GetLineage(const proto::Envelope& request);
  // Runs `effect` once per (client, request id); returns the stored reply on a retry.
  Result<std::string> Once(const proto::Envelope& request,
                           const std::function<Result<std::string>()>& effect);

  StateStore* store_;
  std::string token_;
  Clock clock_;
  ServiceOptions options_;
  Scheduler scheduler_;
  std::map<std::string, NodeLive> nodes_;
  JobManager jobs_;
  LogSink logs_;
};

}  // namespace cairn::coord
