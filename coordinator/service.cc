#include "coordinator/service.h"

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

bool Final(proto::JobState s) {
  return s == proto::JOB_SUCCEEDED || s == proto::JOB_FAILED || s == proto::JOB_CANCELLED;
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
  }
  return OkStatus();
}

Service::Service(StateStore* store, std::string cluster_token, Clock clock,
                 ServiceOptions options)
    : store_(store), token_(std::move(cluster_token)), clock_(std::move(clock)), options_(options) {
  LoadNodes();
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
    live.last_seen_ms = n.last_seen_ms;
    nodes_[n.id] = live;
    if (scheduler_.AddNode(CapacityOf(n.id, n.resources))) {
      (void)scheduler_.SetSchedulable(n.id, false);
    }
  }
}

void Service::Tick() {
  const int64_t now = clock_();
  for (auto& [id, n] : nodes_) {
    if (n.alive && now - n.last_seen_ms > options_.node_timeout_ms) {
      n.alive = false;
      (void)scheduler_.SetSchedulable(id, false);
      const std::string why =
          fmt::format("no heartbeat for {} ms (timeout {} ms)", now - n.last_seen_ms,
                      options_.node_timeout_ms);
      log::Logger("coordinator")->warn("node {} lost: {}", id, why);
      (void)store_->TouchNode(id, n.last_seen_ms);
      (void)store_->AppendEvent("", "node-lost", id + ": " + why, now);
    }
  }
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
  (void)scheduler_.SetSchedulable(rec.id, true);
  NodeLive& live = nodes_[rec.id];
  live.registration = r;
  live.last_seen_ms = now;
  live.alive = true;
  log::Logger("coordinator")->info("node {} registered ({} CPUs, {} GPUs)", rec.id,
                                   rec.resources.cpus(), rec.resources.gpus_size());
  proto::RegisterNodeReply out;
  out.set_heartbeat_interval_ms(static_cast<uint64_t>(options_.heartbeat_interval_ms));
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
    (void)scheduler_.SetSchedulable(r.node_id(), true);
    (void)store_->AppendEvent("", "node-back", r.node_id(), n.last_seen_ms);
    log::Logger("coordinator")->info("node {} is back", r.node_id());
  }
  return proto::HeartbeatReply().SerializeAsString();
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
  if (m == "GetJob") {
    CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::GetJobRequest>(req));
    CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(r.job_id()));
    return js.SerializeAsString();
  }
  if (m == "ListJobs") {
    CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::ListJobsRequest>(req));
    CAIRN_ASSIGN_OR_RETURN(auto jobs, store_->ListJobs(r.include_finished()));
    proto::ListJobsReply out;
    for (auto& j : jobs) *out.add_jobs() = std::move(j);
    return out.SerializeAsString();
  }
  return MakeError(Code::kInvalidArgument,
                   "unknown method '{}' (SubmitJob, GetJob, ListJobs, CancelJob, RegisterNode, "
                   "Heartbeat, ListNodes)", m);
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
  if (scheduler_.node_count() > 0) {
    // Could it ever run here? (Without nodes yet, the cluster is still starting.)
    JobRequest jr;
    jr.job_id = fmt::format("'{}'", spec.name().empty() ? spec.command(0) : spec.name());
    jr.user = spec.user();
    jr.priority = spec.priority();
    jr.ranks = static_cast<int>(spec.ranks());
    jr.cpus_per_rank = static_cast<int>(spec.cpus_per_rank());
    jr.gpus_per_rank = static_cast<int>(spec.gpus_per_rank());
    jr.nodes = static_cast<int>(spec.nodes());
    jr.ranks_per_node = static_cast<int>(spec.ranks_per_node());
    CAIRN_RETURN_IF_ERROR(scheduler_.Check(jr));
  }
  return Once(req, [&]() -> Result<std::string> {
    const int64_t now = clock_();
    CAIRN_ASSIGN_OR_RETURN(auto id, store_->CreateJob(spec, now));
    CAIRN_RETURN_IF_ERROR(store_->AppendEvent(
        id, "submitted",
        fmt::format("{} ranks of '{}' by client {}", spec.ranks(), spec.command(0), req.client_id()),
        now));
    log::Logger("coordinator")->info("job {} submitted: {} ranks of {}", id, spec.ranks(),
                                     spec.command(0));
    proto::SubmitJobReply out;
    out.set_job_id(id);
    return out.SerializeAsString();
  });
}

Result<std::string> Service::CancelJob(const proto::Envelope& req) {
  CAIRN_ASSIGN_OR_RETURN(auto r, ParsePayload<proto::CancelJobRequest>(req));
  return Once(req, [&]() -> Result<std::string> {
    CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(r.job_id()));
    if (!Final(js.state())) {
      const int64_t now = clock_();
      CAIRN_RETURN_IF_ERROR(store_->SetJobState(r.job_id(), proto::JOB_CANCELLED,
                                                "cancelled by client " + req.client_id(), now));
      CAIRN_RETURN_IF_ERROR(
          store_->AppendEvent(r.job_id(), "cancelled", "by client " + req.client_id(), now));
      CAIRN_ASSIGN_OR_RETURN(js, store_->GetJob(r.job_id()));
    }
    proto::CancelJobReply out;
    *out.mutable_job() = std::move(js);
    return out.SerializeAsString();
  });
}

}  // namespace cairn::coord
