// `cairn submit|status|cancel|nodes`: jobs and nodes through cairnd.
#include <google/protobuf/util/json_util.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "common/yaml.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"
#include "provenance/code.h"

namespace cairn::cli {
namespace {

struct JobFlags {
  std::string state_dir;
  std::string file;
  std::string name;
  uint32_t ranks = 1, nodes = 0, ranks_per_node = 0, cpus_per_rank = 0, gpus_per_rank = 0;
  uint32_t max_restarts = 3;
  int32_t priority = 0;
  std::string launcher, workdir, hang_timeout, grace_period, executor, checkpoint_dir;
  std::vector<std::string> command;
  std::vector<std::string> inputs;
  std::string job_id;
  bool json = false;
  bool all = false;
  bool wait = true;
};

std::string_view StateName(proto::JobState s) {
  switch (s) {
    case proto::JOB_PENDING: return "PENDING";
    case proto::JOB_RUNNING: return "RUNNING";
    case proto::JOB_RESTARTING: return "RESTARTING";
    case proto::JOB_SUCCEEDED: return "SUCCEEDED";
    case proto::JOB_FAILED: return "FAILED";
    case proto::JOB_CANCELLED: return "CANCELLED";
    default: return "UNKNOWN";
  }
}

Result<std::chrono::milliseconds> Duration(const std::string& flag, const std::string& text) {
  return WithContext(yaml::ParseDuration(text), flag);
}

// Why `dir` cannot be a job's checkpoint_dir ("" when it can): cairnd and the ranks (in
// their own working directories, possibly on other hosts) must name the same directory.
std::string CheckpointDirProblem(const std::string& dir) {
  if (dir.find('\0') != std::string::npos || dir.find('\n') != std::string::npos) {
    return "contains a NUL or newline character";
  }
  if (!std::filesystem::path(dir).is_absolute()) {
    return "is not an absolute path (cairnd and the ranks must name the same directory)";
  }
  return "";
}

// The job spec from -f FILE (strict: unknown keys are errors naming file and line).
Result<proto::JobSpec> SpecFromYaml(const std::string& path) {
  CAIRN_ASSIGN_OR_RETURN(YAML::Node doc, yaml::LoadFile(path));
  CAIRN_ASSIGN_OR_RETURN(auto m, yaml::YamlMap::Of(doc, path));
  proto::JobSpec s;
  std::string name, workdir, launcher = "env", executor = "local", user, ckpt_dir;
  std::vector<std::string> command;
  std::map<std::string, std::string> env;
  uint32_t ranks = 1, nodes = 0, rpn = 0, cpr = 0, gpr = 0, max_restarts = 3;
  int32_t priority = 0;
  std::chrono::milliseconds hang{0}, grace{0};
  CAIRN_RETURN_IF_ERROR(m.Optional("name", &name));
  CAIRN_RETURN_IF_ERROR(m.Required("command", &command));
  CAIRN_RETURN_IF_ERROR(m.Optional("workdir", &workdir));
  CAIRN_RETURN_IF_ERROR(m.Optional("env", &env));
  CAIRN_RETURN_IF_ERROR(m.Optional("ranks", &ranks));
  CAIRN_RETURN_IF_ERROR(m.Optional("nodes", &nodes));
  CAIRN_RETURN_IF_ERROR(m.Optional("ranks_per_node", &rpn));
  CAIRN_RETURN_IF_ERROR(m.Optional("cpus_per_rank", &cpr));
  CAIRN_RETURN_IF_ERROR(m.Optional("gpus_per_rank", &gpr));
  CAIRN_RETURN_IF_ERROR(m.Optional("launcher", &launcher));
  CAIRN_RETURN_IF_ERROR(m.Optional("executor", &executor));
  CAIRN_RETURN_IF_ERROR(m.Optional("priority", &priority));
  CAIRN_RETURN_IF_ERROR(m.Optional("max_restarts", &max_restarts));
  CAIRN_RETURN_IF_ERROR(m.Optional("hang_timeout", &hang));
  CAIRN_RETURN_IF_ERROR(m.Optional("grace_period", &grace));
  CAIRN_RETURN_IF_ERROR(m.Optional("user", &user));
  CAIRN_RETURN_IF_ERROR(m.Optional("checkpoint_dir", &ckpt_dir));
  if (!ckpt_dir.empty()) {
    if (const std::string why = CheckpointDirProblem(ckpt_dir); !why.empty()) {
      return MakeError(Code::kInvalidArgument, "{}key '{}': '{}' {}", m.Where(m.Raw("checkpoint_dir")),
                       m.KeyPath("checkpoint_dir"), ckpt_dir, why);
    }
  }
  if (m.Has("inputs")) {
    const std::string where = m.KeyPath("inputs");
    YAML::Node list = m.Raw("inputs");
    if (!list.IsSequence()) {
      return MakeError(Code::kInvalidArgument, "{}: {} must be a list of {{path, kind, sha256}}",
                       path, where);
    }
    for (std::size_t i = 0; i < list.size(); ++i) {
      CAIRN_ASSIGN_OR_RETURN(auto im, yaml::YamlMap::Of(list[i], path,
                                                        fmt::format("{}[{}]", where, i)));
      std::string ipath, kind = "data", sha;
      CAIRN_RETURN_IF_ERROR(im.Required("path", &ipath));
      CAIRN_RETURN_IF_ERROR(im.Optional("kind", &kind));
      CAIRN_RETURN_IF_ERROR(im.Optional("sha256", &sha));
      CAIRN_RETURN_IF_ERROR(im.Finish());
      auto* in = s.add_inputs();
      in->set_path(ipath);
      in->set_kind(kind);
      in->set_sha256(sha);
    }
  }
  CAIRN_RETURN_IF_ERROR(m.Finish());
  s.set_name(name);
  for (auto& c : command) s.add_command(c);
  s.set_workdir(workdir);
  for (auto& [k, v] : env) (*s.mutable_env())[k] = v;
  s.set_ranks(ranks);
  s.set_nodes(nodes);
  s.set_ranks_per_node(rpn);
  s.set_cpus_per_rank(cpr);
  s.set_gpus_per_rank(gpr);
  s.set_launcher(launcher);
  s.set_executor(executor);
  s.set_priority(priority);
  s.set_max_restarts(max_restarts);
  s.set_hang_timeout_ms(static_cast<uint64_t>(hang.count()));
  s.set_grace_period_ms(static_cast<uint64_t>(grace.count()));
  s.set_user(user);
  s.set_checkpoint_dir(ckpt_dir);
  return s;
}

// --input [data:|model:]PATH[@SHA256]
Result<proto::InputSpec> ParseInputFlag(const std::string& text) {
  proto::InputSpec in;
  std::string rest = text;
  in.set_kind("data");
  for (const char* kind : {"data:", "model:"}) {
    if (rest.starts_with(kind)) {
      in.set_kind(std::string(kind, std::strlen(kind) - 1));
      rest = rest.substr(std::strlen(kind));
    }
  }
  if (auto at = rest.rfind('@'); at != std::string::npos && rest.size() - at - 1 == 64 &&
                                  rest.find_first_not_of("0123456789abcdefABCDEF", at + 1) ==
                                      std::string::npos) {
    in.set_sha256(rest.substr(at + 1));
    rest.resize(at);
  }
  if (rest.empty()) {
    return MakeError(Code::kInvalidArgument,
                     "--input '{}': no path (form: [data:|model:]PATH[@SHA256])", text);
  }
  in.set_path(rest);
  return in;
}

Result<proto::JobSpec> SpecFromFlags(const JobFlags& f) {
  proto::JobSpec s;
  if (f.command.empty()) {
    return MakeError(Code::kInvalidArgument,
                     "submit needs a command: cairn submit [flags] -- PROGRAM ARGS... (or -f "
                     "job.yaml)");
  }
  s.set_name(f.name);
  for (const auto& c : f.command) s.add_command(c);
  s.set_workdir(f.workdir);
  s.set_ranks(f.ranks);
  s.set_nodes(f.nodes);
  s.set_ranks_per_node(f.ranks_per_node);
  s.set_cpus_per_rank(f.cpus_per_rank);
  s.set_gpus_per_rank(f.gpus_per_rank);
  s.set_launcher(f.launcher);
  s.set_executor(f.executor);
  s.set_priority(f.priority);
  for (const auto& text : f.inputs) {
    CAIRN_ASSIGN_OR_RETURN(auto in, ParseInputFlag(text));
    *s.add_inputs() = std::move(in);
  }
  s.set_max_restarts(f.max_restarts);
  if (!f.checkpoint_dir.empty()) {
    if (const std::string why = CheckpointDirProblem(f.checkpoint_dir); !why.empty()) {
      return MakeError(Code::kInvalidArgument, "--checkpoint-dir '{}' {}", f.checkpoint_dir, why);
    }
  }
  s.set_checkpoint_dir(f.checkpoint_dir);
  if (!f.hang_timeout.empty()) {
    CAIRN_ASSIGN_OR_RETURN(auto d, Duration("--hang-timeout", f.hang_timeout));
    s.set_hang_timeout_ms(static_cast<uint64_t>(d.count()));
  }
  if (!f.grace_period.empty()) {
    CAIRN_ASSIGN_OR_RETURN(auto d, Duration("--grace-period", f.grace_period));
    s.set_grace_period_ms(static_cast<uint64_t>(d.count()));
  }
  return s;
}

void PrintJobs(const std::vector<proto::JobStatus>& jobs) {
  std::printf("%-12s %-11s %5s %8s %8s %10s  %s\n", "JOB", "STATE", "RANKS", "RESTARTS", "STEP",
              "CKPT_STEP", "NAME / COMMAND");
  for (const auto& j : jobs) {
    std::string what = j.spec().name().empty() ? j.spec().command(0) : j.spec().name();
    std::printf("%-12s %-11s %5u %8u %8llu %10llu  %s\n", j.job_id().c_str(),
                std::string(StateName(j.state())).c_str(), j.spec().ranks(), j.restarts(),
                static_cast<unsigned long long>(j.step()),
                static_cast<unsigned long long>(j.checkpoint_step()), what.c_str());
  }
  if (jobs.size() == 1) {
    const auto& j = jobs[0];
    if (!j.message().empty()) std::printf("  %s\n", j.message().c_str());
    for (const auto& r : j.runs()) {
      std::string nodes;
      for (const auto& n : r.nodes()) nodes += (nodes.empty() ? "" : ",") + n;
      std::printf("  attempt %u  %-14s%s%s%s%s\n", r.attempt(),
                  proto::RunState_Name(r.state()).substr(4).c_str(),
                  nodes.empty() ? "" : ("on " + nodes + "  ").c_str(),
                  r.last_step() > 0 ? fmt::format("step {}  ", r.last_step()).c_str() : "",
                  r.resumed_from_step() > 0
                      ? fmt::format("resumed from step {}  ", r.resumed_from_step()).c_str()
                      : "",
                  r.failure().c_str());
    }
  }
}

// Local date and time of a unix time in milliseconds.
std::string LocalTime(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

template <typename Fn>
void Run(Context* ctx, Fn&& fn) {
  Status st = fn();
  if (!st) ctx->exit_code = ReportError("cairn", st.error());
}

}  // namespace

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  o.always_print_primitive_fields = true;  // a stable shape: false and 0 are printed too
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

void RegisterJobCommands(CLI::App& app, Context* ctx) {
  auto f = std::make_shared<JobFlags>();
  auto state_dir = [&](CLI::App* c) {
    c->add_option("--state-dir", f->state_dir,
                  "Cluster state directory (default: CAIRN_STATE_DIR or ~/.cairn)");
  };

  auto* submit = app.add_subcommand("submit", "Submit a job: cairn submit [flags] -- PROGRAM ARGS... "
                                              "or cairn submit -f job.yaml; prints the job id");
  state_dir(submit);
  submit->add_option("-f,--file", f->file, "Job spec (YAML)");
  submit->add_option("--name", f->name, "Job name");
  submit->add_option("--ranks", f->ranks, "Number of ranks")->capture_default_str();
  submit->add_option("--nodes", f->nodes, "Nodes to spread the ranks over evenly (0: any)");
  submit->add_option("--ranks-per-node", f->ranks_per_node, "Ranks per node (0: any)");
  submit->add_option("--cpus-per-rank", f->cpus_per_rank, "CPUs per rank (default 1)");
  submit->add_option("--gpus-per-rank", f->gpus_per_rank, "GPUs per rank");
  submit->add_option("--max-restarts", f->max_restarts, "Restarts after failures")
      ->capture_default_str();
  submit->add_option("--priority", f->priority, "Higher runs first");
  submit->add_option("--launcher", f->launcher, "mpi or env (default env)");
  submit->add_option("--executor", f->executor, "local or slurm (default local)");
  submit->add_option("--input", f->inputs,
                     "An input to digest and record: [data:|model:]PATH[@SHA256] (with a digest: "
                     "pinned; the job does not start if the file differs). Repeatable")
      ->allow_extra_args(false);  // one value per --input; "--" still ends the options
  submit->add_option("--workdir", f->workdir, "Working directory of the ranks");
  submit->add_option("--checkpoint-dir", f->checkpoint_dir,
                     "Absolute path of the job's checkpoint directory: CAIRN_CKPT_DIR for the "
                     "ranks; with --executor slurm, where cairnd finds each attempt's "
                     "checkpoints (checkpoint head, attestations)");
  submit->add_option("--hang-timeout", f->hang_timeout, "No progress for this long = hung (5m)");
  submit->add_option("--grace-period", f->grace_period, "SIGTERM to SIGKILL on teardown (30s)");
  submit->add_option("command", f->command, "-- PROGRAM ARGS...");
  submit->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      proto::SubmitJobRequest req;
      if (!f->file.empty() && !f->command.empty()) {
        return MakeError(Code::kInvalidArgument, "give either -f FILE or -- PROGRAM ARGS, not both");
      }
      if (!f->file.empty()) {
        CAIRN_ASSIGN_OR_RETURN(*req.mutable_spec(), SpecFromYaml(f->file));
      } else {
        CAIRN_ASSIGN_OR_RETURN(*req.mutable_spec(), SpecFromFlags(*f));
      }
      // Provenance: inputs by absolute path (cairnd hashes them), and the code version of
      // the working tree the job runs from.
      std::error_code ec;
      if (!req.spec().workdir().empty()) {
        req.mutable_spec()->set_workdir(
            std::filesystem::absolute(req.spec().workdir(), ec).lexically_normal().string());
      }
      const std::string base = req.spec().workdir().empty()
                                   ? std::filesystem::current_path(ec).string()
                                   : req.spec().workdir();
      for (auto& in : *req.mutable_spec()->mutable_inputs()) {
        std::filesystem::path p(in.path());
        if (p.is_relative()) in.set_path((std::filesystem::path(base) / p).lexically_normal().string());
      }
      if (auto code = prov::DescribeCode(base); code) {
        *req.mutable_code() = std::move(*code);
      } else {
        std::fprintf(stderr, "cairn: warning: code version of %s not recorded: %s\n", base.c_str(),
                     code.error().ToString().c_str());
        req.mutable_code()->set_note("not recorded: " + code.error().ToString());
      }
      CAIRN_ASSIGN_OR_RETURN(auto client, coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      CAIRN_ASSIGN_OR_RETURN(auto bytes, client->Call("SubmitJob", req.SerializeAsString()));
      proto::SubmitJobReply reply;
      if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad SubmitJob reply");
      std::printf("%s\n", reply.job_id().c_str());
      return OkStatus();
    });
  });

  auto* status = app.add_subcommand("status", "Show jobs (active ones; --all for finished too) "
                                              "or one job");
  state_dir(status);
  status->add_option("job", f->job_id, "Job id");
  status->add_flag("--all", f->all, "Include finished jobs");
  status->add_flag("--json", f->json, "Machine-readable output");
  status->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      CAIRN_ASSIGN_OR_RETURN(auto client, coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      std::vector<proto::JobStatus> jobs;
      if (!f->job_id.empty()) {
        proto::GetJobRequest req;
        req.set_job_id(f->job_id);
        CAIRN_ASSIGN_OR_RETURN(auto bytes, client->Call("GetJob", req.SerializeAsString()));
        jobs.emplace_back();
        if (!jobs.back().ParseFromString(bytes)) return MakeError(Code::kInternal, "bad reply");
      } else {
        proto::ListJobsRequest req;
        req.set_include_finished(f->all);
        CAIRN_ASSIGN_OR_RETURN(auto bytes, client->Call("ListJobs", req.SerializeAsString()));
        proto::ListJobsReply reply;
        if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad reply");
        jobs.assign(reply.jobs().begin(), reply.jobs().end());
      }
      if (f->json) {
        proto::ListJobsReply out;
        for (auto& j : jobs) *out.add_jobs() = j;
        std::printf("%s\n", ToJson(out).c_str());
      } else {
        PrintJobs(jobs);
      }
      return OkStatus();
    });
  });

  auto* nodes = app.add_subcommand("nodes",
                                   "Show the cluster's nodes: resources, free, "
                                   "alive/lost/quarantined (and until when)");
  state_dir(nodes);
  nodes->add_flag("--json", f->json, "Machine-readable output");
  nodes->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      CAIRN_ASSIGN_OR_RETURN(auto client, coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      CAIRN_ASSIGN_OR_RETURN(auto bytes, client->Call("ListNodes", proto::ListNodesRequest().SerializeAsString()));
      proto::ListNodesReply reply;
      if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad ListNodes reply");
      if (f->json) {
        std::printf("%s\n", ToJson(reply).c_str());
        return OkStatus();
      }
      std::printf("%-20s %-11s %-16s %9s %9s %12s  %s\n", "NODE", "STATE", "ADDRESS", "CPUS",
                  "GPUS", "MEMORY_MIB", "QUARANTINED_UNTIL");
      for (const auto& n : reply.nodes()) {
        // A lost node is lost first; a quarantined one gets no new placements until the time
        // shown, or (no time limit) until its agent registers again.
        const char* state = !n.alive() ? "lost" : n.quarantined() ? "quarantined" : "alive";
        std::string until = "-";
        if (n.quarantined()) {
          until = n.quarantined_until_unix_ms() == 0 ? "its agent restarts"
                                                     : LocalTime(n.quarantined_until_unix_ms());
        }
        std::printf("%-20s %-11s %-16s %4u/%-4u %4u/%-4d %12llu  %s\n", n.node_id().c_str(), state,
                    n.address().c_str(), n.cpus_free(), n.resources().cpus(), n.gpus_free(),
                    n.resources().gpus_size(),
                    static_cast<unsigned long long>(n.resources().memory_bytes() >> 20),
                    until.c_str());
      }
      return OkStatus();
    });
  });

  auto* cancel = app.add_subcommand("cancel", "Cancel a job (its ranks are torn down)");
  state_dir(cancel);
  cancel->add_option("job", f->job_id, "Job id")->required();
  cancel->add_flag("!--no-wait", f->wait, "Return without waiting for the processes to stop");
  cancel->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      CAIRN_ASSIGN_OR_RETURN(auto client, coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      proto::CancelJobRequest req;
      req.set_job_id(f->job_id);
      CAIRN_ASSIGN_OR_RETURN(auto bytes, client->Call("CancelJob", req.SerializeAsString()));
      proto::CancelJobReply reply;
      if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad reply");
      proto::JobStatus js = reply.job();
      // Return once every process of the job is gone (its grace period, then SIGKILL).
      const auto deadline = std::chrono::steady_clock::now() +
                            std::chrono::milliseconds(js.spec().grace_period_ms()) +
                            std::chrono::seconds(30);
      while (f->wait && !js.runs().empty() &&
             (js.runs(js.runs_size() - 1).state() == proto::RUN_STARTING ||
              js.runs(js.runs_size() - 1).state() == proto::RUN_RUNNING)) {
        if (std::chrono::steady_clock::now() >= deadline) {
          return MakeError(Code::kDeadlineExceeded,
                           "job {} is cancelled but its processes are not all gone yet",
                           f->job_id);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        proto::GetJobRequest g;
        g.set_job_id(f->job_id);
        CAIRN_ASSIGN_OR_RETURN(auto b, client->Call("GetJob", g.SerializeAsString()));
        if (!js.ParseFromString(b)) return MakeError(Code::kInternal, "bad reply");
      }
      std::printf("%s %s\n", js.job_id().c_str(), std::string(StateName(js.state())).c_str());
      return OkStatus();
    });
  });
}

}  // namespace cairn::cli
