#include "coordinator/service.h"

#include <cctype>

#include "common/log.h"
#include "coordinator/frame.h"

namespace cairn::coord {
namespace {

template <typename M>
Result<M> ParsePayload(const proto::Envelope& req) {
  M m;
  if (!m.ParseFromString(req.payload())) {
    return MakeError(Code::kInvalidArgument, "{}: payload is not a {}", req.method(),
                     M::descriptor()->name());
  }
  return m;
}

}  // namespace

Status ValidateJobSpec(proto::JobSpec* s) {
  auto bad = [](std::string field, std::string why) {
    return MakeError(Code::kInvalidArgument, "job spec: {}: {}", field, why);
  };
  if (s->command_size() == 0 || s->command(0).empty()) {
    return bad("command", "must name a program (a list of strings, program first)");
  }
  if (s->name().size() > 200) return bad("name", "longer than 200 characters");
  if (s->ranks() < 1) return bad("ranks", "must be at least 1");
  if (s->ranks() > 1'000'000) return bad("ranks", "more than 1,000,000");
  if (s->nodes() > 0 && s->ranks() % s->nodes() != 0) {
    return bad("nodes", fmt::format("{} ranks cannot be spread evenly over {} nodes", s->ranks(),
                                    s->nodes()));
  }
  if (s->ranks_per_node() > 0 && s->ranks() % s->ranks_per_node() != 0) {
    return bad("ranks_per_node",
               fmt::format("{} ranks are not a multiple of {}", s->ranks(), s->ranks_per_node()));
  }
  if (s->gpus_per_rank() > 64) return bad("gpus_per_rank", "more than 64");
  if (s->launcher().empty()) s->set_launcher("env");
  if (s->launcher() != "env" && s->launcher() != "mpi") {
    return bad("launcher", fmt::format("'{}' is not mpi or env", s->launcher()));
  }
  if (s->executor().empty()) s->set_executor("local");
  if (s->executor() != "local" && s->executor() != "slurm") {
    return bad("executor", fmt::format("'{}' is not local or slurm", s->executor()));
  }
  if (s->max_restarts() > 10'000) return bad("max_restarts", "more than 10,000");
  if (s->cpus_per_rank() == 0) s->set_cpus_per_rank(1);
  if (s->hang_timeout_ms() == 0) s->set_hang_timeout_ms(5 * 60 * 1000);
  if (s->grace_period_ms() == 0) s->set_grace_period_ms(30 * 1000);
  if (const std::string& d = s->checkpoint_dir(); !d.empty()) {
    if (d.find('\0') != std::string::npos || d.find('\n') != std::string::npos) {
      return bad("checkpoint_dir", "contains a NUL or newline character");
    }
    if (d[0] != '/') {
      return bad("checkpoint_dir",
                 fmt::format("'{}' is not an absolute path (cairnd and the ranks must name the "
                             "same directory)",
                             d));
    }
  }
  for (const auto& [k, v] : s->env()) {
    if (k.empty() || k.find('=') != std::string::npos) {
      return bad("env", fmt::format("'{}' is not a variable name", k));
    }
  }
  for (int i = 0; i < s->inputs_size(); ++i) {
    const auto& in = s->inputs(i);
    if (in.path().empty()) return bad(fmt::format("inputs[{}].path", i), "is empty");
    if (in.kind() != "data" && in.kind() != "model") {
      return bad(fmt::format("inputs[{}].kind", i), fmt::format("'{}' is not data or model", in.kind()));
    }
    if (!in.sha256().empty() &&
        (in.sha256().size() != 64 ||
         in.sha256().find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)) {
      return bad(fmt::format("inputs[{}].sha256", i),
                 fmt::format("'{}' is not a SHA-256 (64 hex digits)", in.sha256()));
    }
    std::string pin = in.sha256();
    for (char& c : pin) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    s->mutable_inputs(i)->set_sha256(pin);
  }
  return OkStatus();
}

namespace {
JobManagerOptions WithSecret(JobManagerOptions o, const std::string& secret) {
  o.cluster_secret = secret;
  return o;
}
}  // namespace

Service::Service(StateStore* store, std::string cluster_token, Clock clock,
                 ServiceOptions options)
    : store_(store),
      token_(std::move(cluster_token)),
      clock_(std::move(clock)),
      options_(options),
      jobs_(store, &scheduler_, clock_,
            [this](const std::string& id) {
              NodeView v;
              if (auto it = nodes_.find(id); it != nodes_.end()) {
                v.address = it->second.registration.address();
                v.hostname = it->second.registration.hostname();
                v.alive = it->second.alive || !it->second.lost;
                v.heartbeating = it->second.alive;
              }
              return v;
            },
            WithSecret(options.jobs, token_)),
      logs_(options.jobs.state_dir, store) {}

Status Service::Recover() {
  LoadNodes();
  CAIRN_RETURN_IF_ERROR(jobs_.Recover());
  jobs_.Schedule();
  return OkStatus();
}

namespace {
NodeCapacity CapacityOf(const std::string& id, const proto::NodeResources& r) {
  return NodeCapacity{id, static_cast<int>(r.cpus()),
                      static_cast<int64_t>(r.memory_bytes() >> 20),
                      std::min(r.gpus_size(), 64)};
}
}  // namespace

// Known nodes come back from the database as not alive until they heartbeat again.
void Service::LoadNodes() {
  auto nodes = store_->ListNodes();
  if (!nodes) {
    log::Logger("coordinator")->error("loading nodes: {}", nodes.error().ToString());
    return;
  }
  for (const auto& n : *nodes) {
    NodeLive live;
    live.registration.set_node_id(n.id);
    live.registration.set_address(n.address);
    *live.registration.mutable_resources() = n.resources;
    // Not alive until it heartbeats; lost if it does not within the node timeout.
    live.last_seen_ms = clock_();
    nodes_[n.id] = live;
    if (scheduler_.AddNode(CapacityOf(n.id, n.resources))) {
      (void)scheduler_.SetSchedulable(n.id, false);
    }
    if (n.quarantined) jobs_.RestoreQuarantine(n.id, n.failures, n.quarantined_until_ms);
  }
}

void Service::Tick() {
  const int64_t now = clock_();
  for (auto& [id, n] : nodes_) {
    if (!n.lost && now - n.last_seen_ms > options_.node_timeout_ms) {
      n.alive = false;
      n.lost = true;
      (void)scheduler_.SetSchedulable(id, false);
      const std::string why =
          fmt::format("no heartbeat for {} ms (timeout {} ms)", now - n.last_seen_ms,
                      options_.node_timeout_ms);
      log::Logger("coordinator")->warn("node {} lost: {}", id, why);
      (void)store_->TouchNode(id, n.last_seen_ms);
      (void)store_->AppendEvent("", "node-lost", id + ": " + why, now);
      jobs_.OnNodeLost(id);
    }
  }
  jobs_.Tick();
}

Result<std::string> Service::RegisterNode(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::RegisterNodeRequest>(req));
  if (r.node_id().empty() || r.node_id().size() > 128) {
    return MakeError(Code::kInvalidArgument, "RegisterNode: node_id must be 1..128 bytes");
  }
  if (r.resources().gpus_size() > 64) {
    return MakeError(Code::kInvalidArgument, "RegisterNode {}: more than 64 GPUs", r.node_id());
  }
  const int64_t now = clock_();
  NodeRecord rec;
  rec.id = r.node_id();
  rec.resources = r.resources();
  rec.address = r.address();
  rec.last_seen_ms = now;
  CAIRN_RETURN_IF_ERROR(store_->InTransaction([&]() -> Status {
    CAIRN_RETURN_IF_ERROR(store_->UpsertNode(rec));
    return store_->AppendEvent("", "node-registered",
                               fmt::format("{} at {}: {} CPUs, {} MiB, {} GPUs", rec.id,
                                           rec.address, rec.resources.cpus(),
                                           rec.resources.memory_bytes() >> 20,
                                           rec.resources.gpus_size()),
                               now);
  }));
  // A node with ranks placed keeps its capacity; AddNode refuses to change it then.
  if (auto a = scheduler_.AddNode(CapacityOf(rec.id, rec.resources)); !a) {
    log::Logger("coordinator")->warn("node {}: {}", rec.id, a.error().ToString());
  }
  NodeLive& live = nodes_[rec.id];
  if (live.registration.incarnation() != 0 && live.registration.incarnation() != r.incarnation()) {
    jobs_.OnNodeRegistered(rec.id);  // a new agent process: out of quarantine
  }
  live.registration = r;
  live.last_seen_ms = now;
  live.alive = true;
  live.lost = false;
  live.last_sequence = 0;
  (void)scheduler_.SetSchedulable(rec.id, !jobs_.Quarantined(rec.id));
  log::Logger("coordinator")->info("node {} registered ({} CPUs, {} GPUs)", rec.id,
                                   rec.resources.cpus(), rec.resources.gpus_size());
  proto::RegisterNodeReply out;
  out.set_heartbeat_interval_ms(static_cast<uint64_t>(options_.heartbeat_interval_ms));
  out.set_node_timeout_ms(static_cast<uint64_t>(options_.node_timeout_ms));
  out.set_ship_logs(!logs_.SharesStateDir(rec.id, r.state_probe()));
  jobs_.Schedule();
  return out.SerializeAsString();
}

Result<std::string> Service::Heartbeat(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::HeartbeatRequest>(req));
  auto it = nodes_.find(r.node_id());
  if (it == nodes_.end()) {
    // cairnd lost its memory of the node (or never knew it): the agent must register.
    return MakeError(Code::kFailedPrecondition, "node {} is not registered", r.node_id());
  }
  NodeLive& n = it->second;
  n.last_seen_ms = clock_();
  if (!n.alive) {
    n.alive = true;
    n.lost = false;
    (void)scheduler_.SetSchedulable(r.node_id(), !jobs_.Quarantined(r.node_id()));
    (void)store_->AppendEvent("", "node-back", r.node_id(), n.last_seen_ms);
    log::Logger("coordinator")->info("node {} is back", r.node_id());
  }
  // Logs first: a report that ends the job must find its output already written.
  for (const auto& chunk : r.logs()) {
    if (auto w = logs_.Write(r.node_id(), chunk); !w) {
      log::Logger("coordinator")->warn("{}", w.error().ToString());
    }
  }
  // Reports travel on two connections; an older one arriving late is stale.
  if (r.sequence() == 0 || r.sequence() > n.last_sequence) {
    n.last_sequence = r.sequence();
    jobs_.OnReport(r);
  }
  return jobs_.OrdersFor(r.node_id()).SerializeAsString();
}

Result<std::string> Service::ListNodes() {
  proto::ListNodesReply out;
  std::map<std::string, NodeUsage> usage;
  for (auto& u : scheduler_.Nodes()) usage[u.id] = u;
  for (const auto& [id, n] : nodes_) {
    auto* info = out.add_nodes();
    info->set_node_id(id);
    info->set_hostname(n.registration.hostname());
    info->set_address(n.registration.address());
    *info->mutable_resources() = n.registration.resources();
    info->set_alive(n.alive);
    info->set_last_seen_unix_ms(n.last_seen_ms);
    info->set_agent_version(n.registration.agent_version());
    info->set_quarantined(jobs_.Quarantined(id));
    info->set_quarantined_until_unix_ms(jobs_.QuarantinedUntil(id));
    if (auto u = usage.find(id); u != usage.end()) {
      info->set_cpus_free(static_cast<uint32_t>(u->second.cpus_free));
      info->set_gpus_free(static_cast<uint32_t>(u->second.gpus_free));
    }
  }
  return out.SerializeAsString();
}

proto::Envelope Service::Handle(const proto::Envelope& request) {
  if (auto auth = CheckAuth(request, token_); !auth) {
    log::Logger("coordinator")->warn("{}", auth.error().ToString());
    return MakeErrorReply(request, auth.error());
  }
  auto reply = Dispatch(request);
  if (!reply) return MakeErrorReply(request, reply.error());
  return MakeReply(request, std::move(*reply));
}

Result<std::string> Service::Dispatch(const proto::Envelope& req) {
  const std::string& m = req.method();
  if (m == "SubmitJob") return SubmitJob(req);
  if (m == "RegisterNode") return RegisterNode(req);
  if (m == "Heartbeat") return Heartbeat(req);
  if (m == "ListNodes") return ListNodes();
  if (m == "CancelJob") return CancelJob(req);
  if (m == "ResumeJob") return ResumeJob(req);
  if (m == "GetEvents") return GetEvents(req);
  if (m == "GetLineage") return GetLineage(req);
  if (m == "Exec") {
    CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::ExecRequest>(req));
    CAIRN_RETURN_IF_ERROR(jobs_.Exec(r));
    return proto::ExecReply().SerializeAsString();
  }
  if (m == "GetJob") {
    CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::GetJobRequest>(req));
    CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(r.job_id()));
    jobs_.AddLive(&js);
    return js.SerializeAsString();
  }
  if (m == "ListJobs") {
    CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::ListJobsRequest>(req));
    CAIRN_ASSIGN_OR_RETURN(auto jobs, store_->ListJobs(r.include_finished()));
    proto::ListJobsReply out;
    for (auto& j : jobs) {
      jobs_.AddLive(&j);
      *out.add_jobs() = std::move(j);
    }
    return out.SerializeAsString();
  }
  return MakeError(Code::kInvalidArgument,
                   "unknown method '{}' (SubmitJob, GetJob, ListJobs, CancelJob, ResumeJob, "
                   "GetEvents, GetLineage, RegisterNode, Heartbeat, ListNodes, Exec)", m);
}

Result<std::string> Service::Once(const proto::Envelope& req,
                                  const std::function<Result<std::string>()>& effect) {
  std::string reply;
  CAIRN_RETURN_IF_ERROR(store_->InTransaction([&]() -> Status {
    CAIRN_ASSIGN_OR_RETURN(auto prior, store_->FindReply(req.client_id(), req.request_id(),
                                                         req.method()));
    if (prior) {
      reply = std::move(*prior);
      return OkStatus();
    }
    CAIRN_ASSIGN_OR_RETURN(reply, effect());
    return store_->SaveReply(req.client_id(), req.request_id(), req.method(), reply, clock_());
  }));
  return reply;
}

Result<std::string> Service::SubmitJob(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::SubmitJobRequest>(req));
  proto::JobSpec spec = r.spec();
  CAIRN_RETURN_IF_ERROR(ValidateJobSpec(&spec));
  if (scheduler_.node_count() > 0 && spec.executor() != "slurm") {
    // Could it ever run here? (Without nodes yet, the cluster is still starting.)
    JobRequest jr = RequestOf(
        fmt::format("'{}'", spec.name().empty() ? spec.command(0) : spec.name()), spec);
    CAIRN_RETURN_IF_ERROR(scheduler_.Check(jr));
  }
  auto reply = Once(req, [&]() -> Result<std::string> {
    const int64_t now = clock_();
    CAIRN_ASSIGN_OR_RETURN(auto id, store_->CreateJob(spec, now));
    if (r.has_code()) CAIRN_RETURN_IF_ERROR(store_->SaveJobCode(id, r.code().SerializeAsString()));
    CAIRN_RETURN_IF_ERROR(store_->AppendEvent(
        id, "submitted",
        fmt::format("{} ranks of '{}' by client {}", spec.ranks(), spec.command(0), req.client_id()),
        now));
    CAIRN_RETURN_IF_ERROR(jobs_.Queue(id, spec));
    log::Logger("coordinator")->info("job {} submitted: {} ranks of {}", id, spec.ranks(),
                                     spec.command(0));
    proto::SubmitJobReply out;
    out.set_job_id(id);
    return out.SerializeAsString();
  });
  if (reply) jobs_.Schedule();
  return reply;
}

Result<std::string> Service::GetLineage(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::GetLineageRequest>(req));
  proto::GetLineageReply out;
  CAIRN_ASSIGN_OR_RETURN(*out.mutable_job(), store_->GetJob(r.job_id()));
  jobs_.AddLive(out.mutable_job());
  CAIRN_ASSIGN_OR_RETURN(auto code, store_->JobCode(r.job_id()));
  if (code && !out.mutable_code()->ParseFromString(*code)) {
    return MakeError(Code::kDataLoss, "job {}: stored code version does not parse", r.job_id());
  }
  CAIRN_ASSIGN_OR_RETURN(auto rows, store_->Provenance(r.job_id()));
  for (const auto& row : rows) {
    auto* a = out.add_attempts();
    a->set_attempt(row.attempt);
    a->set_digest(row.digest_hex);
    a->set_resumed_loaded(row.resumed_loaded);
    if (!a->mutable_record()->ParseFromString(row.record)) {
      return MakeError(Code::kDataLoss, "job {} attempt {}: stored provenance record does not parse",
                       r.job_id(), row.attempt);
    }
  }
  CAIRN_ASSIGN_OR_RETURN(auto atts, store_->Attestations(r.job_id()));
  for (const auto& at : atts) {
    auto* a = out.add_attestations();
    a->set_attempt(at.attempt);
    a->set_step(at.step);
    a->set_subject(at.subject_hex);
    a->set_name(at.name);
    a->set_path(at.path);
    a->set_at_unix_ms(at.at_ms);
    a->set_ckpt_dir(at.ckpt_dir);
  }
  CAIRN_ASSIGN_OR_RETURN(auto links, store_->Links(r.job_id()));
  for (const auto& [parent, via] : links) {
    auto* l = out.add_parents();
    l->set_parent_job(parent);
    l->set_via(via);
  }
  if (const auto* k = jobs_.provenance()) {
    out.set_signing_public_key(k->verify_key().ToPem());
    out.set_builder_id(k->builder_id());
  }
  return out.SerializeAsString();
}

Result<std::string> Service::CancelJob(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::CancelJobRequest>(req));
  return Once(req, [&]() -> Result<std::string> {
    CAIRN_RETURN_IF_ERROR(jobs_.Cancel(r.job_id(), "client " + req.client_id()));
    CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(r.job_id()));
    proto::CancelJobReply out;
    *out.mutable_job() = std::move(js);
    return out.SerializeAsString();
  });
}

Result<std::string> Service::ResumeJob(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::ResumeJobRequest>(req));
  auto reply = Once(req, [&]() -> Result<std::string> {
    CAIRN_RETURN_IF_ERROR(jobs_.Resume(r.job_id(), "client " + req.client_id()));
    CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(r.job_id()));
    proto::ResumeJobReply out;
    *out.mutable_job() = std::move(js);
    return out.SerializeAsString();
  });
  if (reply) jobs_.Schedule();
  return reply;
}

Result<std::string> Service::GetEvents(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::GetEventsRequest>(req));
  if (!r.job_id().empty()) CAIRN_RETURN_IF_ERROR(store_->GetJob(r.job_id()));  // NOT_FOUND
  CAIRN_ASSIGN_OR_RETURN(auto events, store_->Events(r.job_id(), r.after_id()));
  proto::GetEventsReply out;
  for (const auto& e : events) {
    auto* o = out.add_events();
    o->set_id(e.id);
    o->set_unix_ms(e.at_ms);
    o->set_kind(e.kind);
    o->set_message(e.message);
  }
  return out.SerializeAsString();
}

int64_t Service::HoldMs(const proto::Envelope& req) const {
  if (req.method() != "Heartbeat" || req.auth_token() != token_) return 0;
  proto::HeartbeatRequest r;
  if (!r.ParseFromString(req.payload()) || r.wait_ms() == 0) return 0;
  if (!nodes_.contains(r.node_id())) return 0;
  if (jobs_.OrdersVersion(r.node_id()) != r.orders_version()) return 0;
  return std::min<int64_t>(r.wait_ms(), 10'000);
}

proto::Envelope Service::OrdersReply(const proto::Envelope& req) {
  proto::HeartbeatRequest r;
  r.ParseFromString(req.payload());
  if (auto it = nodes_.find(r.node_id()); it != nodes_.end() && it->second.alive) {
    it->second.last_seen_ms = clock_();  // it waited on us all along
  }
  return MakeReply(req, jobs_.OrdersFor(r.node_id()).SerializeAsString());
}

}  // namespace cairn::coord
