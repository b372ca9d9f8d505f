#include "coordinator/job_manager.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "checkpoint/crypto.h"
#include "checkpoint/store.h"
#include "common/io.h"
#include "common/log.h"
#include "runtime/progress.h"

namespace cairn::coord {
namespace {

auto Log() { return log::Logger("coordinator"); }

// The checkpoints in `dir` that the attempt with record `record_hex` committed (their
// manifests bind that record), ascending by step, in a chain anchored at `anchor_hex` (the
// head the attempt was handed; empty: the HEAD file); empty when the directory has none
// of them. Blocks.
Result<std::vector<ckpt::HeadRecord>> AttemptCheckpoints(const std::string& dir,
                                                         const std::string& anchor_hex,
                                                         const std::string& record_hex) {
  CAIRN_ASSIGN_OR_RETURN(const ckpt::Digest record, ckpt::DigestFromHex(record_hex));
  ckpt::ScanOptions so;
  if (!anchor_hex.empty()) {
    CAIRN_ASSIGN_OR_RETURN(so.expected_head, ckpt::DigestFromHex(anchor_hex));
  }
  std::vector<ckpt::HeadRecord> out;
  auto scan = ckpt::ScanChain(io::DefaultFileSystem(), dir, so);
  if (!scan && scan.error().code() == Code::kNotFound) return out;  // none yet
  if (!scan) return std::unexpected(std::move(scan).error());
  if (!scan->ok()) {
    return MakeError(Code::kDataLoss, "checkpoint directory {}: {}", dir, scan->problems.front());
  }
  for (const auto& step : scan->steps) {
    if (step.manifest.provenance_digest == record) {
      out.push_back(ckpt::HeadRecord{.digest = step.digest, .step = step.step});
    }
  }
  return out;
}

bool FinalJob(proto::JobState s) {
  return s == proto::JOB_SUCCEEDED || s == proto::JOB_FAILED || s == proto::JOB_CANCELLED;
}

// "job-000001.3" -> "job-000001"
std::string JobOfRun(const std::string& run_id) {
  const auto dot = run_id.rfind('.');
  return dot == std::string::npos ? std::string() : run_id.substr(0, dot);
}

std::string PlacementBytes(const Placement& p) {
  proto::PlacementRecord rec;
  for (const auto& r : p.ranks) {
    auto* out = rec.add_ranks();
    out->set_rank(static_cast<uint32_t>(r.rank));
    out->set_node_id(r.node_id);
    for (int g : r.gpus) out->add_gpus(static_cast<uint32_t>(g));
  }
  return rec.SerializeAsString();
}

Result<Placement> PlacementFrom(const std::string& job_id, const std::string& bytes) {
  proto::PlacementRecord rec;
  if (!rec.ParseFromString(bytes)) {
    return MakeError(Code::kDataLoss, "job {}: stored placement does not parse", job_id);
  }
  Placement p;
  p.job_id = job_id;
  for (const auto& r : rec.ranks()) {
    RankPlacement rp;
    rp.rank = static_cast<int>(r.rank());
    rp.node_id = r.node_id();
    for (uint32_t g : r.gpus()) rp.gpus.push_back(static_cast<int>(g));
    p.ranks.push_back(std::move(rp));
  }
  return p;
}

std::vector<std::string> DistinctNodes(const Placement& p) {
  std::vector<std::string> out;
  for (const auto& r : p.ranks) {
    if (std::find(out.begin(), out.end(), r.node_id) == out.end()) out.push_back(r.node_id);
  }
  return out;
}

// A port for the rendezvous of the ranks (MASTER_PORT), fixed per run.
uint32_t MasterPort(const std::string& run_id) {
  return 20000 + static_cast<uint32_t>(std::hash<std::string>{}(run_id) % 20000);
}

// A duration the way the flags take it: "10m", "90s", "1500ms".
std::string DurationText(int64_t ms) {
  if (ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
  if (ms % 60'000 == 0) return fmt::format("{}m", ms / 60'000);
  if (ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
  return fmt::format("{}ms", ms);
}

std::string Describe(const proto::ProcessStatus& p, const std::string& node) {
  if (!p.how().empty()) return fmt::format("{} (pid {}) on {} {}", p.name(), p.pid(), node, p.how());
  if (p.signal() != 0) {
    return fmt::format("{} (pid {}) on {} was killed by signal {}", p.name(), p.pid(), node,
                       p.signal());
  }
  return fmt::format("{} (pid {}) on {} exited with code {}", p.name(), p.pid(), node,
                     p.exit_code());
}

}  // namespace

JobRequest RequestOf(const std::string& job_id, const proto::JobSpec& spec) {
  JobRequest jr;
  jr.job_id = job_id;
  jr.user = spec.user();
  jr.priority = spec.priority();
  jr.ranks = static_cast<int>(spec.ranks());
  jr.cpus_per_rank = static_cast<int>(spec.cpus_per_rank());
  jr.gpus_per_rank = static_cast<int>(spec.gpus_per_rank());
  jr.nodes = static_cast<int>(spec.nodes());
  jr.ranks_per_node = static_cast<int>(spec.ranks_per_node());
  return jr;
}

JobManager::JobManager(StateStore* store, Scheduler* scheduler, Clock clock, NodeLookup nodes,
                       JobManagerOptions options)
    : store_(store),
      scheduler_(scheduler),
      clock_(std::move(clock)),
      node_view_(std::move(nodes)),
      options_(options) {
  const std::string seed = "cairn.cluster-id.v1\n" + options_.cluster_secret;
  cluster_id_ = ckpt::ToHex(ckpt::Sha256Of(std::as_bytes(std::span(seed)))).substr(0, 8);
}

void JobManager::Event(const std::string& job_id, const std::string& kind,
                       const std::string& message) {
  if (auto s = store_->AppendEvent(job_id, kind, message, clock_()); !s) {
    Log()->error("event {} of {}: {}", kind, job_id, s.error().ToString());
  }
}

void JobManager::Changed(const Run& run) {
  ++version_seq_;
  for (const auto& n : run.nodes) {
    node_version_[n] = version_seq_;
    if (orders_changed_) orders_changed_(n);
  }
}

uint64_t JobManager::OrdersVersion(const std::string& node_id) const {
  auto it = node_version_.find(node_id);
  return it == node_version_.end() ? 0 : it->second;
}

Status JobManager::Queue(const std::string& job_id, const proto::JobSpec& spec) {
  if (spec.executor() == "slurm") {
    if (slurm_ == nullptr) {
      return MakeError(Code::kFailedPrecondition,
                       "executor slurm: this cairnd has no SLURM executor (start cairnd with "
                       "--slurm, or submit with --executor local)");
    }
    if (std::find(slurm_queue_.begin(), slurm_queue_.end(), job_id) == slurm_queue_.end()) {
      slurm_queue_.push_back(job_id);
    }
    return OkStatus();
  }
  return scheduler_->Submit(RequestOf(job_id, spec));
}

// The in-memory run of a live attempt after a coordinator restart (its processes, or its
// SLURM job, kept running).
JobManager::Run JobManager::Restored(const proto::JobStatus& js, const proto::RunStatus& last,
                                     int64_t now) const {
  Run r;
  r.job_id = js.job_id();
  r.attempt = last.attempt();
  r.run_id = last.run_id();
  r.spec = js.spec();
  r.expected_head = last.resumed_from_manifest();
  r.head_step = js.checkpoint_step();
  r.master_port = MasterPort(r.run_id);
  r.started_ms = now;
  r.last_progress_ms = now;
  r.running = last.state() == proto::RUN_RUNNING;
  return r;
}

bool JobManager::LoadRecord(Run& run) {
  if (keeper_ == nullptr) return false;
  auto rows = store_->Provenance(run.job_id);
  if (!rows) return false;
  for (const auto& row : *rows) {
    if (row.attempt != run.attempt || !run.record.ParseFromString(row.record)) continue;
    run.provenance_digest = row.digest_hex;
    run.resumed_recorded = !row.resumed_loaded.empty();
    return true;
  }
  return false;
}

Status JobManager::Recover() {
  CAIRN_ASSIGN_OR_RETURN(auto jobs, store_->ListJobs(/*include_finished=*/true));
  const int64_t now = clock_();
  for (auto& js : jobs) {
    const proto::RunStatus* last = js.runs().empty() ? nullptr : &js.runs(js.runs_size() - 1);
    const bool live = last != nullptr && (last->state() == proto::RUN_STARTING ||
                                          last->state() == proto::RUN_RUNNING);
    if (live && js.spec().executor() == "slurm" && last->executor_job_id().empty() &&
        slurm_ != nullptr) {
      // Stopped after the attempt began, before sbatch answered (or before its answer was
      // stored): SLURM may or may not have its job. Find it before anything else.
      Run r = Restored(js, *last, now);
      r.slurm = true;
      r.slurm_adopting = true;
      auto& run = runs_[r.job_id] = std::move(r);
      LoadRecord(run);
      if (js.state() == proto::JOB_CANCELLED) {
        Stop(run, proto::RUN_CANCELLED, "cancelled", "", 0);
      }
      Log()->info("job {}: attempt {} began but sbatch never answered: looking for SLURM job {}",
                  run.job_id, run.attempt, SlurmJobName(run));
      AdoptSlurm(run);
      continue;
    }
    if (live && js.spec().executor() == "slurm" && !last->executor_job_id().empty()) {
      // A SLURM job keeps running without cairnd: follow it again.
      Run r = Restored(js, *last, now);
      r.slurm = true;
      r.slurm_id = last->executor_job_id();
      auto& run = runs_[r.job_id] = std::move(r);
      LoadRecord(run);
      if (js.state() == proto::JOB_CANCELLED) {
        Stop(run, proto::RUN_CANCELLED, "cancelled", "", 0);
      }
      Log()->info("job {}: following SLURM job {} again", run.job_id, run.slurm_id);
      continue;
    }
    if (live) {
      auto bytes = store_->RunPlacement(js.job_id(), last->attempt());
      Result<Placement> placement =
          bytes ? PlacementFrom(js.job_id(), *bytes) : std::unexpected(bytes.error());
      Status restored = placement ? scheduler_->Restore(RequestOf(js.job_id(), js.spec()),
                                                        *placement)
                                  : Status(std::unexpected(placement.error()));
      if (restored) {
        Run r = Restored(js, *last, now);
        r.placement = *placement;
        r.nodes = DistinctNodes(r.placement);
        if (js.state() == proto::JOB_CANCELLED) {
          r.stopping = true;
          r.outcome = proto::RUN_CANCELLED;
          r.failure = "cancelled";
          r.stop_grace_ms = static_cast<int64_t>(js.spec().grace_period_ms());
        }
        auto& run = runs_[r.job_id] = std::move(r);
        // Its record, or (a restart while its inputs were being checked) prepare it again.
        if (keeper_ != nullptr && !LoadRecord(run) && !run.stopping) BeginPrepare(run, now);
        Changed(run);
        Log()->info("job {}: took back attempt {} on {} node(s)", run.job_id, run.attempt,
                    run.nodes.size());
        continue;
      }
      Log()->error("job {}: attempt {}: {}", js.job_id(), last->attempt(),
                   restored.error().ToString());
      CAIRN_RETURN_IF_ERROR(store_->FinishRun(js.job_id(), last->attempt(), proto::RUN_FAILED,
                                              "lost in a coordinator restart: " +
                                                  restored.error().ToString(),
                                              /*last_step=*/0, now));
    }
    if (FinalJob(js.state())) continue;
    if (js.state() != proto::JOB_PENDING) {
      CAIRN_RETURN_IF_ERROR(store_->SetJobState(js.job_id(), proto::JOB_PENDING,
                                                "requeued after a coordinator restart", now));
    }
    if (auto q = Queue(js.job_id(), js.spec()); !q) {
      CAIRN_RETURN_IF_ERROR(store_->SetJobState(js.job_id(), proto::JOB_FAILED,
                                                q.error().ToString(), now));
    }
  }
  return OkStatus();
}

void JobManager::Schedule() {
  const int64_t now = clock_();
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (it->second.not_before_ms > now) {
      ++it;
      continue;
    }
    const std::string job_id = it->first;
    it = waiting_.erase(it);
    auto js = store_->GetJob(job_id);
    if (!js) continue;
    if (auto q = Queue(job_id, js->spec()); !q) {
      (void)store_->SetJobState(job_id, proto::JOB_FAILED, q.error().ToString(), now);
      Event(job_id, "failed", q.error().ToString());
    }
  }
  for (const Placement& p : scheduler_->Schedule()) {
    if (auto s = StartRun(p); !s) {
      Log()->error("job {}: cannot start: {}", p.job_id, s.error().ToString());
      scheduler_->Release(p.job_id);
      (void)store_->SetJobState(p.job_id, proto::JOB_FAILED, s.error().ToString(), now);
      Event(p.job_id, "failed", s.error().ToString());
    }
  }
  // SLURM does its own queueing: every waiting slurm job is submitted at once.
  auto slurm_jobs = std::move(slurm_queue_);
  slurm_queue_.clear();
  for (const auto& job_id : slurm_jobs) {
    if (runs_.contains(job_id)) continue;
    if (auto s = StartSlurmRun(job_id); !s) {
      Log()->error("job {}: cannot start: {}", job_id, s.error().ToString());
      (void)store_->SetJobState(job_id, proto::JOB_FAILED, s.error().ToString(), now);
      Event(job_id, "failed", s.error().ToString());
    }
  }
}

Status JobManager::StartRun(const Placement& p) {
  CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(p.job_id));
  const int64_t now = clock_();
  Run r;
  r.job_id = p.job_id;
  r.spec = js.spec();
  r.placement = p;
  r.nodes = DistinctNodes(p);
  r.expected_head = js.checkpoint_head();
  r.head_step = js.checkpoint_step();
  std::string where;
  for (const auto& n : r.nodes) {
    const auto count = std::count_if(p.ranks.begin(), p.ranks.end(),
                                     [&](const RankPlacement& rp) { return rp.node_id == n; });
    where += fmt::format("{}{}({})", where.empty() ? "" : ", ", n, count);
  }
  CAIRN_RETURN_IF_ERROR(store_->InTransaction([&]() -> Status {
    CAIRN_ASSIGN_OR_RETURN(r.attempt, store_->BeginRun(p.job_id, PlacementBytes(p), r.expected_head,
                                                       js.checkpoint_step(), now));
    CAIRN_RETURN_IF_ERROR(store_->SetJobState(
        p.job_id, proto::JOB_RUNNING, fmt::format("attempt {} on {}", r.attempt, where), now));
    return store_->AppendEvent(
        p.job_id, "placed",
        fmt::format("attempt {}: {} rank(s) on {}; {}", r.attempt, p.ranks.size(), where,
                    js.checkpoint_step() > 0
                        ? fmt::format("resumes from the checkpoint of step {}", js.checkpoint_step())
                        : std::string("fresh start unless the job finds a checkpoint")),
        now);
  }));
  r.run_id = fmt::format("{}.{}", p.job_id, r.attempt);
  r.master_port = MasterPort(r.run_id);
  r.started_ms = now;
  r.last_progress_ms = now;
  Log()->info("job {}: attempt {} placed on {}", p.job_id, r.attempt, where);
  auto& run = runs_[p.job_id] = std::move(r);
  if (keeper_ != nullptr) {
    BeginPrepare(run, now);
    return OkStatus();
  }
  Changed(run);
  return OkStatus();
}

void JobManager::BeginPrepare(Run& run, int64_t now) {
  run.preparing = true;
  PrepareRequest req;
  req.job_id = run.job_id;
  req.attempt = run.attempt;
  req.run_id = run.run_id;
  req.spec = run.spec;
  if (auto code = store_->JobCode(run.job_id); code && code->has_value()) {
    proto::CodeVersion cv;
    if (cv.ParseFromString(**code)) req.code = std::move(cv);
  }
  for (const auto& n : run.nodes) {
    const NodeView v = node_view_(n);
    req.hosts.push_back(v.hostname.empty() ? n : fmt::format("{} ({})", v.hostname, n));
  }
  req.resumed_from_hex = run.expected_head;
  req.started_unix_ms = now;
  keeper_->Prepare(std::move(req), [this, job_id = run.job_id, attempt = run.attempt](
                                       Result<PreparedRecord> prepared) {
    OnPrepared(job_id, attempt, std::move(prepared));
  });
}

void JobManager::OnPrepared(const std::string& job_id, uint32_t attempt,
                            Result<PreparedRecord> prepared) {
  auto it = runs_.find(job_id);
  if (it == runs_.end() || it->second.attempt != attempt || !it->second.preparing) return;
  Run& run = it->second;
  run.preparing = false;
  if (run.stopping) return;  // cancelled meanwhile: the stop order is out already
  if (!prepared) {
    const Code c = prepared.error().code();
    // Inputs that are missing or not what the job pinned will not fix themselves.
    run.user_error = c == Code::kFailedPrecondition || c == Code::kNotFound ||
                     c == Code::kInvalidArgument || c == Code::kPermissionDenied ||
                     c == Code::kDataLoss;
    Stop(run, proto::RUN_FAILED, "inputs: " + prepared.error().ToString(), "", 0);
    return;
  }
  run.record = std::move(prepared->record);
  run.provenance_digest = prepared->digest_hex;
  if (auto s = store_->SaveProvenance(job_id, attempt, run.provenance_digest,
                                      run.record.SerializeAsString());
      !s) {
    Log()->error("job {}: provenance: {}", job_id, s.error().ToString());
  }
  int pinned = 0;
  for (const auto& in : run.record.inputs()) pinned += in.pinned() ? 1 : 0;
  Event(job_id, "provenance",
        fmt::format("attempt {}: record {}; {} input(s), {} pinned{}", attempt,
                    run.provenance_digest.substr(0, 16), run.record.inputs_size(), pinned,
                    run.record.code().dirty() ? "; code: dirty working tree" : ""));
  LinkInputs(run);
  run.started_ms = clock_();
  run.last_progress_ms = run.started_ms;
  if (run.slurm) {
    SubmitSlurm(run);
    return;
  }
  Changed(run);
}

// A model input inside another job's checkpoint directory, or whose digest another job
// attested (a checkpoint manifest), or an export of another job's checkpoint: the job
// descends from it.
void JobManager::LinkInputs(const Run& run) {
  // Every other job's checkpoint directories: the ones its ranks reported, and the spec's.
  std::vector<std::pair<std::string, std::string>> dirs;
  if (auto reported = store_->CheckpointDirs(); reported) dirs = std::move(*reported);
  if (auto jobs = store_->ListJobs(true); jobs) {
    for (const auto& j : *jobs) {
      if (!j.spec().checkpoint_dir().empty()) dirs.emplace_back(j.job_id(), j.spec().checkpoint_dir());
    }
  }
  for (const auto& in : run.record.inputs()) {
    if (in.kind() != "model") continue;
    std::error_code ec;
    const auto path = std::filesystem::weakly_canonical(in.path(), ec);
    std::set<std::string> linked;
    for (const auto& [job, d] : dirs) {
      if (job == run.job_id || linked.contains(job)) continue;
      const auto dir = std::filesystem::weakly_canonical(d, ec);
      auto rel = path.lexically_relative(dir);
      if (!rel.empty() && *rel.begin() != "..") {
        linked.insert(job);
        (void)store_->AddLink(run.job_id, job,
                              fmt::format("model input {} is its checkpoint", in.path()));
      }
    }
    std::string hex;
    for (unsigned char c : in.sha256()) hex += fmt::format("{:02x}", c);
    // An export (`cairn ckpt export`) carries a note of its source next to it; the note
    // counts only if it names these exact bytes.
    if (auto note = io::ReadWholeFile(io::DefaultFileSystem(), in.path() + ".lineage.json", 1 << 20);
        note) {
      auto j = nlohmann::json::parse(*note, nullptr, false);
      if (j.is_object() && j.value("file_sha256", "") == hex) {
        const std::string manifest = j.value("manifest_sha256", "");
        const std::string source = j.value("source_dir", "");
        const std::string via = fmt::format("model input {} is an export of its checkpoint {}",
                                            in.path(), manifest.substr(0, 16));
        std::set<std::string> parents;
        if (auto by_subject = store_->JobsWithSubject(manifest); by_subject) {
          parents.insert(by_subject->begin(), by_subject->end());
        }
        for (const auto& [job, d] : dirs) {
          if (!source.empty() && std::filesystem::weakly_canonical(d, ec) ==
                                     std::filesystem::weakly_canonical(source, ec)) {
            parents.insert(job);
          }
        }
        for (const auto& parent : parents) {
          if (parent != run.job_id) (void)store_->AddLink(run.job_id, parent, via);
        }
      }
    }
    if (auto parents = store_->JobsWithSubject(hex); parents) {
      for (const auto& parent : *parents) {
        if (parent == run.job_id) continue;
        (void)store_->AddLink(run.job_id, parent,
                              fmt::format("model input {} is its attested output", in.path()));
      }
    }
  }
}

void JobManager::Attest(const Run& run, uint64_t step, const std::string& manifest_hex,
                        bool final) {
  if (keeper_ == nullptr || run.provenance_digest.empty() || manifest_hex.empty()) return;
  const std::string dir = run.ckpt_dir.empty() ? run.spec.checkpoint_dir() : run.ckpt_dir;
  const std::string name = final ? "final" : fmt::format("checkpoint step {}", step);
  const std::string file = final ? fmt::format("final-step-{:012d}.intoto.json", step)
                                 : fmt::format("attempt-{}-step-{:012d}.intoto.json", run.attempt,
                                               step);
  const int64_t now = clock_();
  const std::string subject =
      fmt::format("{}/step-{:012d}/manifest", dir.empty() ? run.job_id : dir, step);
  ProvenanceKeeper::Executor executor;
  if (run.slurm) executor = {.name = "slurm", .job_id = run.slurm_id};
  auto path = keeper_->Attest(run.record, run.spec, subject, manifest_hex, file, final ? now : 0,
                              executor);
  if (!path) {
    Log()->error("job {}: attest {}: {}", run.job_id, name, path.error().ToString());
    return;
  }
  AttestationRow a{.job_id = run.job_id, .attempt = run.attempt, .step = step,
                   .subject_hex = manifest_hex, .name = name, .path = *path, .at_ms = now,
                   .ckpt_dir = dir};
  if (auto s = store_->AddAttestation(a); !s) {
    Log()->error("job {}: attestation: {}", run.job_id, s.error().ToString());
  }
}

proto::HeartbeatReply JobManager::OrdersFor(const std::string& node_id) const {
  proto::HeartbeatReply out;
  out.set_orders_version(OrdersVersion(node_id));
  for (const auto& [job_id, run] : runs_) {
    if (std::find(run.nodes.begin(), run.nodes.end(), node_id) == run.nodes.end()) continue;
    if (run.preparing && !run.stopping) continue;  // inputs not checked yet
    auto* o = out.add_runs();
    o->set_run_id(run.run_id);
    o->set_job_id(run.job_id);
    o->set_attempt(run.attempt);
    *o->mutable_spec() = run.spec;
    o->set_world_size(static_cast<uint32_t>(run.placement.ranks.size()));
    for (const auto& rp : run.placement.ranks) {
      if (rp.node_id != node_id) continue;
      o->add_ranks(static_cast<uint32_t>(rp.rank));
      std::string gpus;
      for (int g : rp.gpus) gpus += fmt::format("{}{}", gpus.empty() ? "" : ",", g);
      o->add_gpus(gpus);
    }
    const NodeView head = node_view_(run.nodes.front());
    o->set_master_addr(head.address);
    o->set_master_port(run.master_port);
    o->set_head(run.nodes.front() == node_id);
    for (const auto& n : run.nodes) {
      const NodeView v = node_view_(n);
      auto* h = o->add_hosts();
      h->set_node_id(n);
      h->set_address(v.address);
      h->set_hostname(v.hostname);
      h->set_slots(static_cast<uint32_t>(
          std::count_if(run.placement.ranks.begin(), run.placement.ranks.end(),
                        [&](const RankPlacement& rp) { return rp.node_id == n; })));
    }
    o->set_expected_head(run.expected_head);
    o->set_provenance_digest(run.provenance_digest);
    if (auto e = run.execs.find(node_id); e != run.execs.end()) {
      for (const auto& c : e->second) o->add_execs(c);
    }
    o->set_stop(run.stopping);
    o->set_stop_grace_ms(static_cast<uint64_t>(run.stop_grace_ms));
  }
  return out;
}

void JobManager::OnReport(const proto::HeartbeatRequest& hb) {
  const int64_t now = clock_();
  const std::string& node = hb.node_id();
  std::set<std::string> mentioned;
  for (const auto& rr : hb.runs()) {
    auto it = runs_.find(JobOfRun(rr.run_id()));
    if (it == runs_.end() || it->second.run_id != rr.run_id()) continue;  // an old attempt
    Run& run = it->second;
    mentioned.insert(run.job_id);
    run.reports[node] = rr;
    for (const auto& p : rr.progress()) {
      auto& known = run.progress[p.rank()];
      if (p.unix_ms() > known.unix_ms()) {
        known = p;
        run.last_progress_ms = now;
      }
      if (!p.ckpt_dir().empty()) run.ckpt_dir = p.ckpt_dir();
      if (p.ckpt_step() > run.head_step && !p.ckpt_head().empty()) {
        if (auto s = store_->SetCheckpointHead(run.job_id, p.ckpt_step(), p.ckpt_head()); !s) {
          Log()->error("job {}: checkpoint head: {}", run.job_id, s.error().ToString());
        } else {
          // Heads committed since the last one seen here (several can commit between two
          // heartbeats) are attested too, oldest first; the newest is the job's head.
          // The checkpoint the attempt loaded is not its output (it can be newer than
          // the head it was handed when the last commit of the attempt before raced its
          // end): that attempt's record is the one it binds.
          for (const auto& h : p.recent_heads()) {
            if (h.step() > run.head_step && h.step() < p.ckpt_step() && !h.head().empty() &&
                h.head() != p.resumed_from()) {
              Attest(run, h.step(), h.head(), false);
            }
          }
          run.head_step = p.ckpt_step();
          if (p.ckpt_head() != p.resumed_from()) Attest(run, p.ckpt_step(), p.ckpt_head(), false);
        }
      }
      if (!run.resumed_recorded && !p.resumed_from().empty()) {
        run.resumed_recorded = true;
        if (auto s = store_->SetResumedLoaded(run.job_id, run.attempt, p.resumed_from()); !s) {
          Log()->error("job {}: {}", run.job_id, s.error().ToString());
        }
      }
    }
  }
  // A node that no longer mentions a run has nothing of it left. If it had reported
  // the run before and the run is not ending, its agent lost it (restarted): failed.
  std::vector<std::string> touched(mentioned.begin(), mentioned.end());
  std::vector<std::string> forgotten;
  for (auto& [job_id, run] : runs_) {
    if (mentioned.contains(job_id)) continue;
    if (std::find(run.nodes.begin(), run.nodes.end(), node) == run.nodes.end()) continue;
    const bool had = run.reports.erase(node) > 0;
    if (had && !run.stopping) {
      forgotten.push_back(job_id);
    } else if (had || run.stopping) {
      touched.push_back(job_id);
    }
  }
  for (const auto& job_id : forgotten) {
    if (auto it = runs_.find(job_id); it != runs_.end()) {
      Stop(it->second, proto::RUN_FAILED,
           fmt::format("{}: its agent no longer has the attempt (the agent restarted?)", node),
           node, 0);
    }
  }
  for (const auto& job_id : touched) {
    if (auto it = runs_.find(job_id); it != runs_.end()) Evaluate(it->second);
  }
}

void JobManager::Evaluate(Run& run) {
  if (run.stopping) {
    MaybeFinish(run);
    return;
  }
  const bool mpi = run.spec.launcher() == "mpi";
  const int expected_primaries = mpi ? 1 : static_cast<int>(run.placement.ranks.size());
  int done = 0;
  bool preempted = false, any_running = false;
  for (const auto& [node, rr] : run.reports) {
    if (!rr.launch_error().empty()) {
      Stop(run, proto::RUN_FAILED, fmt::format("{}: cannot launch: {}", node, rr.launch_error()),
           node, 0);
      return;
    }
    for (const auto& p : rr.processes()) {
      if (p.running()) {
        any_running = true;
        continue;
      }
      if (p.signal() != 0 || (p.exit_code() != 0 && p.exit_code() != 75)) {
        // Any process failing ends the attempt (a crashed Open MPI daemon too: mpirun
        // may wait for it forever).
        // A process that failed is the job's business (its bug, its memory use), not
        // evidence against the node: no blame, no quarantine.
        Stop(run, proto::RUN_FAILED, Describe(p, node), "", 0);
        return;
      }
      if (!p.primary()) continue;
      ++done;
      preempted = preempted || p.exit_code() == 75;
    }
  }
  if (any_running && !run.running) {
    run.running = true;
    if (auto s = store_->SetRunState(run.job_id, run.attempt, proto::RUN_RUNNING); !s) {
      Log()->error("job {}: {}", run.job_id, s.error().ToString());
    }
  }
  if (done >= expected_primaries) {
    const int64_t grace = static_cast<int64_t>(run.spec.grace_period_ms());
    if (preempted) {
      Stop(run, proto::RUN_PREEMPTED, fmt::format("preempted at step {}", StepOf(run)), "", grace);
    } else {
      Stop(run, proto::RUN_SUCCEEDED, "", "", grace);
    }
  }
}

uint64_t JobManager::StepOf(const Run& run) const {
  uint64_t step = 0;
  for (const auto& [rank, p] : run.progress) step = std::max(step, p.step());
  return step;
}

void JobManager::Stop(Run& run, proto::RunState outcome, std::string why, std::string blame,
                      int64_t grace_ms) {
  run.stopping = true;
  run.outcome = outcome;
  run.failure = std::move(why);
  run.blame_node = std::move(blame);
  run.stop_grace_ms = grace_ms;
  run.failed_step = StepOf(run);
  if (run.slurm) CancelSlurm(run);
  if (outcome == proto::RUN_FAILED) {
    Log()->warn("job {}: attempt {} failed at step {}: {}", run.job_id, run.attempt,
                run.failed_step, run.failure);
    Event(run.job_id, "attempt-failed",
          fmt::format("attempt {} at step {}: {}", run.attempt, run.failed_step, run.failure));
  }
  Changed(run);
  MaybeFinish(run);
}

void JobManager::MaybeFinish(Run& run) {
  // A SLURM job is over when SLURM says so (or when it never got one).
  if (run.slurm && (run.slurm_submitting || run.slurm_adopting ||
                    (!run.slurm_id.empty() && !run.slurm_final))) {
    return;
  }
  for (const auto& n : run.nodes) {
    if (!node_view_(n).alive) continue;  // lost: its agent stops the run by itself
    auto r = run.reports.find(n);
    if (r != run.reports.end() && r->second.active()) return;
  }
  const std::string job_id = run.job_id;
  if (auto s = Finish(run); !s) Log()->error("job {}: {}", job_id, s.error().ToString());
}

int64_t JobManager::Backoff(uint32_t restarts) const {
  if (restarts <= 1) return 0;  // the first restart at once
  int64_t d = options_.restart_backoff_ms;
  for (uint32_t i = 2; i < restarts && d < options_.max_backoff_ms; ++i) d *= 2;
  return std::min(d, options_.max_backoff_ms);
}

Status JobManager::Finish(Run& run) {
  const int64_t now = clock_();
  const std::string job_id = run.job_id;
  const uint64_t step = run.failed_step;
  // How a failure looks, for "the same failure at the same step again".
  std::string signature;
  if (run.outcome == proto::RUN_FAILED) {
    signature = fmt::format("step {}: {}", step, run.failure);
    // Names pids and nodes; keep what identifies the error itself.
    if (auto pos = signature.find(" (pid "); pos != std::string::npos) {
      auto end = signature.find(')', pos);
      auto on = signature.find(" on ", end);
      auto rest = on == std::string::npos ? std::string() : signature.substr(on + 4);
      auto space = rest.find(' ');
      signature = signature.substr(0, pos) + (space == std::string::npos ? "" : rest.substr(space));
    }
  }
  std::string final_message;
  // Free its resources first: a preempted job is queued again below.
  scheduler_->Release(job_id);
  CAIRN_RETURN_IF_ERROR(store_->InTransaction([&]() -> Status {
    CAIRN_RETURN_IF_ERROR(
        store_->FinishRun(job_id, run.attempt, run.outcome, run.failure, StepOf(run), now));
    CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(job_id));
    switch (run.outcome) {
      case proto::RUN_SUCCEEDED:
        final_message = fmt::format("succeeded at step {} after {} restart(s)", step, js.restarts());
        if (!js.checkpoint_head().empty() && js.checkpoint_head() != run.expected_head) {
          Attest(run, js.checkpoint_step(), js.checkpoint_head(), true);
        } else if (!js.checkpoint_head().empty()) {
          // The head is still the one the attempt was handed: an earlier attempt wrote it
          // (its manifest binds that attempt's record, and that attempt attested it). This
          // attempt produced no checkpoint, so it attests none: its record names the
          // checkpoint as what it resumed from, its input.
          final_message += fmt::format(
              "; it wrote no checkpoint of its own: the job's last checkpoint is step {}, "
              "written by an earlier attempt",
              js.checkpoint_step());
        }
        CAIRN_RETURN_IF_ERROR(store_->SetJobState(job_id, proto::JOB_SUCCEEDED, final_message, now));
        return store_->AppendEvent(job_id, "succeeded", final_message, now);
      case proto::RUN_PREEMPTED:
        if (js.state() == proto::JOB_CANCELLED) return OkStatus();
        CAIRN_RETURN_IF_ERROR(store_->SetJobState(
            job_id, proto::JOB_PENDING, fmt::format("preempted at step {}; requeued", step), now));
        CAIRN_RETURN_IF_ERROR(store_->AppendEvent(
            job_id, "preempted", fmt::format("attempt {} at step {}: requeued", run.attempt, step),
            now));
        return Queue(job_id, js.spec());
      case proto::RUN_CANCELLED:
        return store_->AppendEvent(job_id, "stopped",
                                   fmt::format("attempt {}: every process is gone", run.attempt),
                                   now);
      default:
        break;
    }
    if (js.state() == proto::JOB_CANCELLED) return OkStatus();
    std::string why;
    if (run.user_error) {
      why = fmt::format("{}: not retrying (fix the job's inputs, then `cairn resume {}`)",
                        run.failure, job_id);
    } else if (auto prev = last_failure_.find(job_id);
        prev != last_failure_.end() && prev->second == signature) {
      why = fmt::format("failed twice in a row at step {} with the same error ({}): not retrying "
                        "(fix the job, then `cairn resume {}`)",
                        step, run.failure, job_id);
    } else if (js.restarts() >= js.spec().max_restarts()) {
      why = fmt::format("{} (no restarts left: max_restarts {})", run.failure,
                        js.spec().max_restarts());
    }
    if (!why.empty()) {
      final_message = why;
      CAIRN_RETURN_IF_ERROR(store_->SetJobState(job_id, proto::JOB_FAILED, why, now));
      return store_->AppendEvent(job_id, "failed", why, now);
    }
    CAIRN_RETURN_IF_ERROR(store_->AddRestart(job_id));
    const int64_t delay = Backoff(js.restarts() + 1);
    CAIRN_RETURN_IF_ERROR(store_->SetJobState(
        job_id, proto::JOB_RESTARTING,
        fmt::format("restart {} of {} in {} ms: {}", js.restarts() + 1, js.spec().max_restarts(),
                    delay, run.failure),
        now));
    CAIRN_RETURN_IF_ERROR(store_->AppendEvent(
        job_id, "restarting",
        fmt::format("restart {} of {} in {} ms, from the checkpoint of step {}", js.restarts() + 1,
                    js.spec().max_restarts(), delay, js.checkpoint_step()),
        now));
    waiting_[job_id] = Waiting{now + delay};
    return OkStatus();
  }));
  if (run.outcome == proto::RUN_FAILED) {
    last_failure_[job_id] = signature;
    if (!run.blame_node.empty() &&
        ++node_failures_[run.blame_node] >= options_.quarantine_after &&
        !quarantined_.contains(run.blame_node)) {
      Quarantine(run.blame_node);
    }
  } else if (run.outcome == proto::RUN_SUCCEEDED) {
    last_failure_.erase(job_id);
    for (const auto& n : run.nodes) node_failures_.erase(n);
  }
  if (!final_message.empty()) Log()->info("job {}: {}", job_id, final_message);
  Run ended = std::move(run);
  runs_.erase(job_id);
  Changed(ended);  // the run leaves the nodes' orders
  Schedule();
  return OkStatus();
}

// ---- slurm executor --------------------------------------------------------------

Status JobManager::StartSlurmRun(const std::string& job_id) {
  CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(job_id));
  const int64_t now = clock_();
  Run r;
  r.job_id = job_id;
  r.spec = js.spec();
  r.slurm = true;
  r.expected_head = js.checkpoint_head();
  r.head_step = js.checkpoint_step();
  CAIRN_RETURN_IF_ERROR(store_->InTransaction([&]() -> Status {
    CAIRN_ASSIGN_OR_RETURN(r.attempt, store_->BeginRun(job_id, "slurm", r.expected_head,
                                                       js.checkpoint_step(), now));
    CAIRN_RETURN_IF_ERROR(store_->SetJobState(
        job_id, proto::JOB_RUNNING, fmt::format("attempt {} submitted to SLURM", r.attempt), now));
    return store_->AppendEvent(
        job_id, "placed",
        fmt::format("attempt {}: {} rank(s) through SLURM; {}", r.attempt, r.spec.ranks(),
                    js.checkpoint_step() > 0
                        ? fmt::format("resumes from the checkpoint of step {}", js.checkpoint_step())
                        : std::string("fresh start unless the job finds a checkpoint")),
        now);
  }));
  r.run_id = fmt::format("{}.{}", job_id, r.attempt);
  r.master_port = MasterPort(r.run_id);
  r.started_ms = now;
  r.last_progress_ms = now;
  auto& run = runs_[job_id] = std::move(r);
  if (keeper_ != nullptr) {
    BeginPrepare(run, now);
  } else {
    SubmitSlurm(run);
  }
  return OkStatus();
}

std::string JobManager::ProgressKey(const std::string& run_id) const {
  std::string data = "cairn.progress-key.v1";
  data.push_back('\0');
  data += run_id;
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), options_.cluster_secret.data(), static_cast<int>(options_.cluster_secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

void JobManager::set_progress_endpoint(const std::string& host, uint16_t port) {
  std::string h = host;
  if (h.empty() || h == "0.0.0.0" || h == "::") {
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    h = name;
  } else if (h.find(':') != std::string::npos) {
    h = "[" + h + "]";  // an IPv6 address
  }
  progress_endpoint_ = fmt::format("{}:{}", h, port);
}

void JobManager::OnNetworkProgress(std::string_view bytes) {
  proto::ProgressDatagram d;
  proto::RankProgress p;
  auto it = runs_.end();
  bool ok = d.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  if (ok) {
    it = runs_.find(JobOfRun(d.key_id()));
    ok = it != runs_.end() && it->second.run_id == d.key_id() && it->second.slurm;
  }
  if (ok) {
    const std::string want = rt::ProgressTag(ProgressKey(d.key_id()), d.key_id(), d.progress());
    ok = want.size() == d.tag().size() && CRYPTO_memcmp(want.data(), d.tag().data(), want.size()) == 0;
  }
  ok = ok && p.ParseFromString(d.progress()) && p.rank() < it->second.spec.ranks();
  if (!ok) {
    // Not for a live attempt of ours, or not tagged with its key.
    if (++progress_rejected_ % 1000 == 1) {
      Log()->warn("progress datagrams dropped (not for a live SLURM attempt, or bad tag): {}",
                  progress_rejected_);
    }
    return;
  }
  Run& run = it->second;
  if (run.stopping) return;
  auto& known = run.progress[p.rank()];
  if (p.unix_ms() > known.unix_ms()) {
    known = p;
    run.last_progress_ms = clock_();
  }
  if (!run.resumed_recorded && !p.resumed_from().empty()) {
    run.resumed_recorded = true;
    if (auto s = store_->SetResumedLoaded(run.job_id, run.attempt, p.resumed_from()); !s) {
      Log()->error("job {}: {}", run.job_id, s.error().ToString());
    }
  }
}

std::string JobManager::SlurmJobName(const Run& run) const {
  return fmt::format("cairn-{}-{}", cluster_id_, run.run_id);
}

std::string JobManager::AttemptDir(const Run& run) const {
  return fmt::format("{}/logs/{}/attempt-{}", options_.state_dir, run.job_id, run.attempt);
}

void JobManager::AdoptSlurm(Run& run) {
  run.slurm_adopt_busy = true;
  slurm_worker_->Run([this, exec = slurm_, name = SlurmJobName(run),
                      script = AttemptDir(run) + "/job.sbatch", job_id = run.job_id,
                      attempt = run.attempt]() -> std::function<void()> {
    // An sbatch the old coordinator started may still be on its way to slurmctld: until
    // it is gone, slurmctld's answer could change.
    const std::vector<int> submitters = SlurmExecutor::SubmittersOf(script);
    Result<std::vector<SlurmJobStatus>> found =
        submitters.empty() ? exec->FindByName(name)
                           : Result<std::vector<SlurmJobStatus>>(std::unexpected(Error(
                                 Code::kUnavailable,
                                 fmt::format("{} process(es) still submitting {} (pid {})",
                                             submitters.size(), script, submitters.front()))));
    return [this, job_id, attempt, name, found = std::move(found)] {
      auto it = runs_.find(job_id);
      if (it == runs_.end() || it->second.attempt != attempt) return;
      Run& run = it->second;
      run.slurm_adopt_busy = false;
      if (!found) {
        // Ask again later (Tick): slurmctld away, or a submitter still running.
        run.slurm_adopt_at_ms = clock_() + options_.slurm_poll_ms;
        Log()->warn("job {}: attempt {}: looking for SLURM job {}: {}", job_id, attempt, name,
                    found.error().ToString());
        return;
      }
      run.slurm_adopting = false;
      if (found->empty()) {
        if (run.stopping) {
          MaybeFinish(run);  // cancelled, and SLURM never had it: nothing to stop
          return;
        }
        Event(job_id, "slurm-resubmitted",
              fmt::format("attempt {}: SLURM never got its job (cairnd stopped before sbatch "
                          "answered): submitting it now",
                          attempt));
        if (keeper_ != nullptr && run.provenance_digest.empty()) {
          BeginPrepare(run, clock_());  // its record was not stored yet: then sbatch
        } else {
          SubmitSlurm(run);
        }
        return;
      }
      const SlurmJobStatus& adopted = found->front();
      run.slurm_id = adopted.id;
      (void)store_->SetRunExecutorId(job_id, attempt, adopted.id);
      Event(job_id, "slurm-adopted",
            fmt::format("attempt {}: SLURM job {} ({}), submitted before cairnd stopped",
                        attempt, adopted.id, adopted.slurm_state));
      Log()->info("job {}: attempt {} is SLURM job {} (adopted)", job_id, attempt, adopted.id);
      for (std::size_t i = 1; i < found->size(); ++i) {
        // Never two jobs for one attempt: any other of that name goes.
        const std::string other = (*found)[i].id;
        Event(job_id, "slurm-duplicate",
              fmt::format("attempt {}: SLURM job {} has the same name: cancelled", attempt, other));
        slurm_worker_->Run([exec = slurm_, other]() -> std::function<void()> {
          auto st = exec->Cancel(other);
          return [st = std::move(st), other] {
            if (!st) Log()->warn("scancel {}: {}", other, st.error().ToString());
          };
        });
      }
      if (run.stopping) CancelSlurm(run);
      PollSlurm();
    };
  });
}

void JobManager::SubmitSlurm(Run& run) {
  SlurmJobRequest req;
  req.name = SlurmJobName(run);
  req.command.assign(run.spec.command().begin(), run.spec.command().end());
  req.launcher = run.spec.launcher();
  req.ranks = run.spec.ranks();
  req.nodes = run.spec.nodes();
  req.ranks_per_node = run.spec.ranks_per_node();
  req.cpus_per_rank = std::max(1u, run.spec.cpus_per_rank());
  req.gpus_per_rank = run.spec.gpus_per_rank();
  req.workdir = run.spec.workdir();
  for (const auto& [k, v] : run.spec.env()) req.env[k] = v;
  req.env["CAIRN_RUN_ID"] = run.job_id;
  req.env["CAIRN_JOB_ID"] = run.job_id;
  req.env["CAIRN_ATTEMPT"] = std::to_string(run.attempt);
  req.env["CAIRN_STATE_DIR"] = options_.state_dir;
  if (!run.expected_head.empty()) req.env["CAIRN_EXPECTED_HEAD"] = run.expected_head;
  if (!run.spec.checkpoint_dir().empty()) req.env["CAIRN_CKPT_DIR"] = run.spec.checkpoint_dir();
  if (!run.provenance_digest.empty()) req.env["CAIRN_PROVENANCE_DIGEST"] = run.provenance_digest;
  if (!progress_endpoint_.empty()) {
    const std::string key = ProgressKey(run.run_id);
    req.env["CAIRN_PROGRESS_SOCKET"] =
        fmt::format("udp://{}/{}?key={}", progress_endpoint_, run.run_id,
                    ckpt::ToHex(std::span(reinterpret_cast<const uint8_t*>(key.data()), key.size())));
  }
  req.master_port = static_cast<uint16_t>(run.master_port);
  const std::string attempt_dir = AttemptDir(run);
  req.script_dir = attempt_dir;
  req.output_path = attempt_dir + "/slurm.out";
  run.slurm_submitting = true;
  slurm_worker_->Run([this, exec = slurm_, req = std::move(req), job_id = run.job_id,
                      attempt = run.attempt]() -> std::function<void()> {
    auto id = exec->Submit(req);
    return [this, job_id, attempt, id = std::move(id)]() mutable {
      auto it = runs_.find(job_id);
      if (it == runs_.end() || it->second.attempt != attempt) {
        if (id) (void)slurm_->Cancel(*id);  // the attempt is gone: so must its job be
        return;
      }
      Run& run = it->second;
      run.slurm_submitting = false;
      if (!id) {
        run.user_error = id.error().code() == Code::kInvalidArgument;
        if (!run.stopping) {
          Stop(run, proto::RUN_FAILED, "sbatch: " + id.error().ToString(), "", 0);
        } else {
          MaybeFinish(run);
        }
        return;
      }
      run.slurm_id = *id;
      (void)store_->SetRunExecutorId(job_id, attempt, *id);
      Event(job_id, "slurm-submitted", fmt::format("attempt {}: SLURM job {}", attempt, *id));
      Log()->info("job {}: attempt {} is SLURM job {}", job_id, attempt, *id);
      if (run.stopping) CancelSlurm(run);  // cancelled while sbatch ran
    };
  });
}

void JobManager::CancelSlurm(Run& run) {
  if (run.slurm_id.empty() || run.slurm_final || run.slurm_cancel_sent) return;
  run.slurm_cancel_sent = true;
  slurm_worker_->Run([this, exec = slurm_, id = run.slurm_id,
                      job_id = run.job_id]() -> std::function<void()> {
    auto st = exec->Cancel(id);
    return [this, st = std::move(st), id, job_id] {
      if (!st) Log()->warn("job {}: scancel {}: {}", job_id, id, st.error().ToString());
      PollSlurm();  // see it end
    };
  });
}

void JobManager::PollSlurm() {
  if (slurm_polling_) return;
  std::vector<std::string> ids;
  for (const auto& [job_id, run] : runs_) {
    if (run.slurm && !run.slurm_id.empty() && !run.slurm_final) ids.push_back(run.slurm_id);
  }
  slurm_polled_ms_ = clock_();
  if (ids.empty()) return;
  slurm_polling_ = true;
  slurm_worker_->Run([this, exec = slurm_, ids = std::move(ids)]() -> std::function<void()> {
    auto statuses = exec->Query(ids);
    return [this, statuses = std::move(statuses)] {
      slurm_polling_ = false;
      if (!statuses) {
        Log()->warn("squeue: {}", statuses.error().ToString());
        return;
      }
      for (const auto& st : *statuses) OnSlurmStatus(st);
    };
  });
}

void JobManager::OnSlurmStatus(const SlurmJobStatus& st) {
  auto it = std::find_if(runs_.begin(), runs_.end(),
                         [&](const auto& kv) { return kv.second.slurm_id == st.id; });
  if (it == runs_.end()) return;
  Run& run = it->second;
  const std::string what = fmt::format("SLURM job {} {}{}", st.id, st.slurm_state,
                                       st.reason.empty() || st.reason == "None"
                                           ? std::string()
                                           : " (" + st.reason + ")");
  if (st.state == SlurmJobState::kUnknown) {
    if (++run.slurm_unknown < 3) return;
    run.slurm_final = true;  // slurmctld forgot it: nothing of it can be followed
    if (!run.stopping) {
      Stop(run, proto::RUN_FAILED, fmt::format("SLURM no longer knows job {}", st.id), "", 0);
    } else {
      MaybeFinish(run);
    }
    return;
  }
  run.slurm_unknown = 0;
  if (st.state == SlurmJobState::kPending) return;
  if (st.state == SlurmJobState::kRunning) {
    if (!run.running) {
      run.last_progress_ms = clock_();
      run.running = true;
      (void)store_->SetRunState(run.job_id, run.attempt, proto::RUN_RUNNING);
    }
    return;
  }
  // Final. First what the attempt checkpointed (its ranks report to no agent): read on
  // the worker thread, then this status is handled again.
  if (run.slurm_scanning) return;
  if (!run.slurm_scanned && BeginSlurmScan(run, st)) return;
  run.slurm_final = true;
  if (run.stopping) {
    MaybeFinish(run);
    return;
  }
  switch (st.state) {
    case SlurmJobState::kCompleted:
      if (st.exit_code == 0) {
        Stop(run, proto::RUN_SUCCEEDED, "", "", 0);
      } else {
        Stop(run, proto::RUN_FAILED, fmt::format("{}: exit code {}", what, st.exit_code), "", 0);
      }
      return;
    case SlurmJobState::kPreempted:
      Stop(run, proto::RUN_PREEMPTED, what, "", 0);
      return;
    case SlurmJobState::kCancelled:
      Stop(run, proto::RUN_FAILED, what + ": cancelled outside cairn", "", 0);
      return;
    default:
      Stop(run, proto::RUN_FAILED,
           st.exit_code > 0 ? fmt::format("{}: exit code {}", what, st.exit_code)
           : st.signal > 0  ? fmt::format("{}: signal {}", what, st.signal)
                            : what,
           "", 0);
      return;
  }
}

bool JobManager::BeginSlurmScan(Run& run, const SlurmJobStatus& final_status) {
  const std::string dir = run.spec.checkpoint_dir();
  if (keeper_ == nullptr || run.provenance_digest.empty() || dir.empty()) {
    run.slurm_scanned = true;
    return false;
  }
  run.slurm_scanning = true;
  slurm_worker_->Run([this, dir, anchor = run.expected_head, record = run.provenance_digest,
                      job_id = run.job_id, attempt = run.attempt,
                      st = final_status]() -> std::function<void()> {
    auto found = AttemptCheckpoints(dir, anchor, record);
    return [this, dir, job_id, attempt, st, found = std::move(found)] {
      auto it = runs_.find(job_id);
      if (it == runs_.end() || it->second.attempt != attempt) return;
      Run& run = it->second;
      run.slurm_scanning = false;
      run.slurm_scanned = true;
      if (!found) {
        Log()->warn("job {}: attempt {}: its checkpoints: {}", job_id, attempt,
                    found.error().ToString());
      } else if (!found->empty() && found->back().step > run.head_step) {
        // The newest is the job's head; each one the attempt committed is attested.
        const ckpt::HeadRecord& newest = found->back();
        if (auto s = store_->SetCheckpointHead(job_id, newest.step, ckpt::ToHex(newest.digest));
            !s) {
          Log()->error("job {}: checkpoint head: {}", job_id, s.error().ToString());
        } else {
          Event(job_id, "checkpoint",
                fmt::format("attempt {} (SLURM job {}) committed up to step {} in {}", attempt,
                            run.slurm_id, newest.step, dir));
          for (const auto& h : *found) {
            if (h.step > run.head_step) Attest(run, h.step, ckpt::ToHex(h.digest), false);
          }
          run.head_step = newest.step;
        }
      }
      OnSlurmStatus(st);
    };
  });
  return true;
}

void JobManager::OnNodeLost(const std::string& node_id) {
  std::vector<std::string> jobs;
  for (const auto& [job_id, run] : runs_) {
    if (std::find(run.nodes.begin(), run.nodes.end(), node_id) != run.nodes.end()) {
      jobs.push_back(job_id);
    }
  }
  for (const auto& job_id : jobs) {
    auto it = runs_.find(job_id);
    if (it == runs_.end()) continue;
    if (it->second.stopping) {
      MaybeFinish(it->second);
    } else {
      Stop(it->second, proto::RUN_FAILED, fmt::format("node {} lost (no heartbeat)", node_id),
           node_id, 0);
    }
  }
}

void JobManager::Quarantine(const std::string& node_id) {
  const int64_t now = clock_();
  const int64_t until = options_.quarantine_ms > 0 ? now + options_.quarantine_ms : 0;
  const uint32_t failures = node_failures_[node_id];
  quarantined_[node_id] = until;
  (void)scheduler_->SetSchedulable(node_id, false);
  if (auto s = store_->SetNodeHealth(node_id, true, failures, until); !s) {
    Log()->error("node {}: quarantine: {}", node_id, s.error().ToString());
  }
  Event("", "node-quarantined",
        until > 0 ? fmt::format("{}: {} failed attempts in a row; no new placements for {} "
                                "(or until its agent registers again)",
                                node_id, failures, DurationText(options_.quarantine_ms))
                  : fmt::format("{}: {} failed attempts in a row; no new placements until its "
                                "agent registers again",
                                node_id, failures));
  Log()->warn("node {} quarantined after {} failed attempts in a row{}", node_id, failures,
              until > 0 ? " for " + DurationText(options_.quarantine_ms) : std::string());
}

void JobManager::ReleaseQuarantines(int64_t now) {
  for (auto it = quarantined_.begin(); it != quarantined_.end();) {
    const auto [node_id, until] = *it;
    if (until == 0 || until > now) {
      ++it;
      continue;
    }
    it = quarantined_.erase(it);
    node_failures_.erase(node_id);
    if (auto s = store_->SetNodeHealth(node_id, false, 0, 0); !s) {
      Log()->error("node {}: release from quarantine: {}", node_id, s.error().ToString());
    }
    // A node that is not heartbeating now becomes schedulable when it is back.
    (void)scheduler_->SetSchedulable(node_id, node_view_(node_id).heartbeating);
    Event("", "node-released", node_id + ": quarantine over, back in service");
    Log()->info("node {}: quarantine over, back in service", node_id);
  }
}

int64_t JobManager::QuarantinedUntil(const std::string& node_id) const {
  auto it = quarantined_.find(node_id);
  return it == quarantined_.end() ? 0 : it->second;
}

void JobManager::RestoreQuarantine(const std::string& node_id, uint32_t failures,
                                   int64_t until_ms) {
  quarantined_[node_id] = until_ms;
  node_failures_[node_id] = failures;
  (void)scheduler_->SetSchedulable(node_id, false);
}

void JobManager::OnNodeRegistered(const std::string& node_id) {
  node_failures_.erase(node_id);
  if (quarantined_.erase(node_id) > 0) {
    (void)store_->SetNodeHealth(node_id, false, 0, 0);
    Event("", "node-released", node_id + ": registered again, out of quarantine");
    Log()->info("node {}: registered again, out of quarantine", node_id);
  }
}

Status JobManager::Exec(const proto::ExecRequest& req) {
  auto it = runs_.find(JobOfRun(req.run_id()));
  if (it == runs_.end() || it->second.run_id != req.run_id()) {
    return MakeError(Code::kNotFound, "run {} is not live", req.run_id());
  }
  Run& run = it->second;
  if (run.stopping) {
    return MakeError(Code::kFailedPrecondition, "run {} is stopping", req.run_id());
  }
  if (std::find(run.nodes.begin(), run.nodes.end(), req.node_id()) == run.nodes.end()) {
    return MakeError(Code::kInvalidArgument, "run {} has no rank on node {}", req.run_id(),
                     req.node_id());
  }
  if (req.command().empty()) return MakeError(Code::kInvalidArgument, "empty command");
  auto& cmds = run.execs[req.node_id()];
  if (std::find(cmds.begin(), cmds.end(), req.command()) != cmds.end()) return OkStatus();
  cmds.push_back(req.command());
  ++version_seq_;
  node_version_[req.node_id()] = version_seq_;
  if (orders_changed_) orders_changed_(req.node_id());
  return OkStatus();
}

Status JobManager::Cancel(const std::string& job_id, const std::string& who) {
  CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(job_id));
  if (FinalJob(js.state())) return OkStatus();
  const int64_t now = clock_();
  CAIRN_RETURN_IF_ERROR(store_->SetJobState(job_id, proto::JOB_CANCELLED, "cancelled by " + who, now));
  CAIRN_RETURN_IF_ERROR(store_->AppendEvent(job_id, "cancelled", "by " + who, now));
  scheduler_->Dequeue(job_id);
  waiting_.erase(job_id);
  std::erase(slurm_queue_, job_id);
  if (auto it = runs_.find(job_id); it != runs_.end()) {
    Run& run = it->second;
    if (!run.stopping) {
      Stop(run, proto::RUN_CANCELLED, "cancelled by " + who, "",
           static_cast<int64_t>(run.spec.grace_period_ms()));
    } else if (run.outcome == proto::RUN_FAILED) {
      run.outcome = proto::RUN_CANCELLED;  // do not restart it when it is gone
    }
  }
  return OkStatus();
}

Status JobManager::Resume(const std::string& job_id, const std::string& who) {
  CAIRN_ASSIGN_OR_RETURN(auto js, store_->GetJob(job_id));
  if (js.state() != proto::JOB_FAILED && js.state() != proto::JOB_CANCELLED) {
    return MakeError(Code::kFailedPrecondition, "job {} is {}, not FAILED or CANCELLED", job_id,
                     proto::JobState_Name(js.state()));
  }
  if (runs_.contains(job_id)) {
    return MakeError(Code::kUnavailable, "job {}: its last attempt is still stopping; retry",
                     job_id);
  }
  const int64_t now = clock_();
  CAIRN_RETURN_IF_ERROR(store_->SetRestarts(job_id, 0));
  CAIRN_RETURN_IF_ERROR(store_->SetJobState(
      job_id, proto::JOB_PENDING,
      fmt::format("resumed by {} from the checkpoint of step {}", who, js.checkpoint_step()), now));
  CAIRN_RETURN_IF_ERROR(store_->AppendEvent(job_id, "resumed", "by " + who, now));
  last_failure_.erase(job_id);
  return Queue(job_id, js.spec());
}

void JobManager::Tick() {
  const int64_t now = clock_();
  std::vector<std::string> jobs;
  for (const auto& [job_id, run] : runs_) jobs.push_back(job_id);
  for (const auto& job_id : jobs) {
    auto it = runs_.find(job_id);
    if (it == runs_.end()) continue;
    Run& run = it->second;
    if (run.slurm_adopting && !run.slurm_adopt_busy && now >= run.slurm_adopt_at_ms) {
      AdoptSlurm(run);
    }
    if (run.stopping) {
      MaybeFinish(run);
      continue;
    }
    if (run.preparing) continue;  // hashing inputs
    if (run.slurm) {
      // Its ranks report to cairnd directly, when they can reach it: hang detection starts
      // with the first report, and ends once SLURM says the job is over or every rank
      // that reported said it exits.
      const bool exiting = std::all_of(run.progress.begin(), run.progress.end(),
                                       [](const auto& kv) { return kv.second.exiting(); });
      if (run.progress.empty() || exiting || run.slurm_scanning || run.slurm_final) continue;
    }
    const int64_t silent = now - run.last_progress_ms;
    // Until its first report an attempt is starting (launch, data, checkpoint load):
    // it gets at least kStartupAllowanceMs.
    const int64_t limit = run.progress.empty()
                              ? std::max<int64_t>(static_cast<int64_t>(run.spec.hang_timeout_ms()),
                                                  kStartupAllowanceMs)
                              : static_cast<int64_t>(run.spec.hang_timeout_ms());
    if (silent > limit) {
      // Blame the node of the rank that reported least recently.
      std::string blame;
      int64_t oldest = INT64_MAX;
      for (const auto& rp : run.placement.ranks) {
        auto p = run.progress.find(static_cast<uint32_t>(rp.rank));
        const int64_t at = p == run.progress.end() ? 0 : p->second.unix_ms();
        if (at < oldest) {
          oldest = at;
          blame = rp.node_id;
        }
      }
      Stop(run, proto::RUN_FAILED,
           run.progress.empty()
               ? fmt::format("no progress report {:.1f} s after the start (hang_timeout {:.1f} s, "
                             "at least {} s for the start)",
                             silent / 1000.0, run.spec.hang_timeout_ms() / 1000.0,
                             kStartupAllowanceMs / 1000)
               : fmt::format("no progress for {:.1f} s (hang_timeout {:.1f} s)", silent / 1000.0,
                             run.spec.hang_timeout_ms() / 1000.0),
           blame, 0);
    }
  }
  if (slurm_ != nullptr && now - slurm_polled_ms_ >= options_.slurm_poll_ms) PollSlurm();
  ReleaseQuarantines(now);
  Schedule();
}

void JobManager::AddLive(proto::JobStatus* js) const {
  if (auto w = waiting_.find(js->job_id()); w != waiting_.end()) {
    js->set_next_attempt_unix_ms(w->second.not_before_ms);
  }
  auto it = runs_.find(js->job_id());
  if (it == runs_.end()) return;
  const Run& run = it->second;
  double sps = 0;
  for (const auto& [rank, p] : run.progress) sps += p.samples_per_second();
  js->set_step(StepOf(run));
  js->set_samples_per_second(sps);
  if (auto p0 = run.progress.find(0); p0 != run.progress.end()) js->set_loss(p0->second.loss());
  for (auto& rs : *js->mutable_runs()) {
    if (rs.attempt() != run.attempt) continue;
    rs.set_last_step(StepOf(run));
    rs.clear_nodes();
    for (const auto& n : run.nodes) rs.add_nodes(n);
    for (const auto& rp : run.placement.ranks) {
      auto* r = rs.add_ranks();
      r->set_rank(static_cast<uint32_t>(rp.rank));
      r->set_node_id(rp.node_id);
      r->set_state(proto::RANK_LAUNCHING);
      if (auto p = run.progress.find(static_cast<uint32_t>(rp.rank)); p != run.progress.end()) {
        r->set_last_step(p->second.step());
        r->set_last_progress_unix_ms(p->second.unix_ms());
      }
      if (auto rep = run.reports.find(rp.node_id); rep != run.reports.end()) {
        for (const auto& proc : rep->second.processes()) {
          if (proc.rank() != rp.rank) continue;
          r->set_state(proc.running() ? proto::RANK_RUNNING : proto::RANK_EXITED);
          r->set_exit_code(proc.exit_code());
          r->set_signal(proc.signal());
        }
        if (run.spec.launcher() == "mpi" && rep->second.active() &&
            r->state() == proto::RANK_LAUNCHING) {
          r->set_state(proto::RANK_RUNNING);  // mpi: ranks are orted's children
        }
      }
    }
  }
}

}  // namespace cairn::coord
