// `cairn wait|logs|events|resume`: following a job through cairnd.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>

#include "cli/commands.h"
#include "common/yaml.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"

namespace cairn::cli {
namespace {

namespace fs = std::filesystem;

struct RunFlags {
  std::string state_dir;
  std::string job_id;
  std::string timeout;
  int rank = 0;
  uint32_t attempt = 0;
  bool follow = false;
  bool json = false;
  bool quiet = false;
};

bool Final(proto::JobState s) {
  return s == proto::JOB_SUCCEEDED || s == proto::JOB_FAILED || s == proto::JOB_CANCELLED;
}

// The last attempt still has processes (or is about to).
bool AttemptLive(const proto::JobStatus& js) {
  if (js.runs().empty()) return false;
  const auto s = js.runs(js.runs_size() - 1).state();
  return s == proto::RUN_STARTING || s == proto::RUN_RUNNING;
}

Result<proto::JobStatus> GetJob(coord::Client& c, const std::string& id) {
  proto::GetJobRequest req;
  req.set_job_id(id);
  CAIRN_ASSIGN_OR_RETURN(auto bytes, c.Call("GetJob", req.SerializeAsString()));
  proto::JobStatus js;
  if (!js.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad GetJob reply");
  return js;
}

Result<std::vector<proto::Event>> GetEvents(coord::Client& c, const std::string& id,
                                            int64_t after) {
  proto::GetEventsRequest req;
  req.set_job_id(id);
  req.set_after_id(after);
  CAIRN_ASSIGN_OR_RETURN(auto bytes, c.Call("GetEvents", req.SerializeAsString()));
  proto::GetEventsReply reply;
  if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad GetEvents reply");
  return std::vector<proto::Event>(reply.events().begin(), reply.events().end());
}

std::string Clock(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}", buf, static_cast<int>(unix_ms % 1000));
}

std::string EventLine(const proto::Event& e) {
  return fmt::format("{}  {:<16} {}", Clock(e.unix_ms()), e.kind(), e.message());
}

std::string_view StateName(proto::JobState s) {
  const std::string& n = proto::JobState_Name(s);
  return std::string_view(n).starts_with("JOB_") ? std::string_view(n).substr(4) : n;
}

template <typename Fn>
void Run(Context* ctx, Fn&& fn) {
  Status st = fn();
  if (!st) ctx->exit_code = ReportError("cairn", st.error());
}

// Where a rank's output of an attempt is (see worker/agent.h).
std::string RankLog(const std::string& state_dir, const proto::JobStatus& js, uint32_t attempt,
                    int rank) {
  const std::string dir = fmt::format("{}/logs/{}/attempt-{}", state_dir, js.job_id(), attempt);
  if (js.spec().launcher() == "mpi") {
    // mpirun --output-filename DIR writes DIR/1/rank.R/stdout
    return fmt::format("{}/1/rank.{}/stdout", dir, rank);
  }
  return fmt::format("{}/rank-{}.log", dir, rank);
}

}  // namespace

void RegisterRunCommands(CLI::App& app, Context* ctx) {
  auto f = std::make_shared<RunFlags>();
  auto state_dir = [&](CLI::App* c) {
    c->add_option("--state-dir", f->state_dir,
                  "Cluster state directory (default: CAIRN_STATE_DIR or ~/.cairn)");
  };

  auto* wait = app.add_subcommand(
      "wait", "Wait for a job to end, printing its events; exit 0 only if it succeeded");
  state_dir(wait);
  wait->add_option("job", f->job_id, "Job id")->required();
  wait->add_option("--timeout", f->timeout, "Give up after this long (e.g. 90s, 10m)");
  wait->add_flag("-q,--quiet", f->quiet, "Print only the outcome");
  wait->add_flag("--json", f->json, "Print the final status as JSON");
  wait->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      std::chrono::milliseconds limit = std::chrono::hours(24 * 365);
      if (!f->timeout.empty()) {
        CAIRN_ASSIGN_OR_RETURN(limit, WithContext(yaml::ParseDuration(f->timeout), "--timeout"));
      }
      CAIRN_ASSIGN_OR_RETURN(auto client,
                             coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      const bool tty = ::isatty(STDERR_FILENO) == 1 && !f->quiet;
      const auto deadline = std::chrono::steady_clock::now() + limit;
      int64_t last_event = 0;
      proto::JobStatus js;
      for (;;) {
        CAIRN_ASSIGN_OR_RETURN(js, GetJob(*client, f->job_id));
        if (!f->quiet) {
          CAIRN_ASSIGN_OR_RETURN(auto events, GetEvents(*client, f->job_id, last_event));
          for (const auto& e : events) {
            std::fprintf(stderr, "%s%s\n", tty ? "\r\033[K" : "", EventLine(e).c_str());
            last_event = e.id();
          }
        }
        if (Final(js.state()) && !AttemptLive(js)) break;
        if (tty && js.state() == proto::JOB_RUNNING) {
          std::fprintf(stderr, "\r\033[K%s RUNNING attempt %d  step %llu  loss %.4f  %.0f samples/s"
                               "  restarts %u",
                       js.job_id().c_str(), js.runs_size(),
                       static_cast<unsigned long long>(js.step()), js.loss(),
                       js.samples_per_second(), js.restarts());
          std::fflush(stderr);
        }
        if (std::chrono::steady_clock::now() >= deadline) {
          if (tty) std::fprintf(stderr, "\n");
          return MakeError(Code::kDeadlineExceeded, "job {} is still {} after {}", f->job_id,
                           StateName(js.state()), f->timeout);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(250));
      }
      if (tty) std::fprintf(stderr, "\r\033[K");
      if (f->json) {
        std::printf("%s\n", ToJson(js).c_str());
      } else {
        std::printf("%s %s: %s\n", js.job_id().c_str(), std::string(StateName(js.state())).c_str(),
                    js.message().c_str());
      }
      if (js.state() != proto::JOB_SUCCEEDED) ctx->exit_code = 1;
      return OkStatus();
    });
  });

  auto* logs = app.add_subcommand("logs", "Print a rank's output (-f: follow it across restarts "
                                          "until the job ends)");
  state_dir(logs);
  logs->add_option("job", f->job_id, "Job id")->required();
  logs->add_option("--rank", f->rank, "Rank (default 0)")->check(CLI::NonNegativeNumber);
  logs->add_option("--attempt", f->attempt, "Attempt (default: the latest)");
  logs->add_flag("-f,--follow", f->follow, "Keep printing new output until the job ends");
  logs->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      const std::string dir = coord::DefaultStateDir(f->state_dir);
      CAIRN_ASSIGN_OR_RETURN(auto client, coord::Client::Connect(dir));
      CAIRN_ASSIGN_OR_RETURN(auto js, GetJob(*client, f->job_id));
      if (f->rank >= static_cast<int>(js.spec().ranks())) {
        return MakeError(Code::kInvalidArgument, "--rank {}: job {} has ranks 0..{}", f->rank,
                         f->job_id, js.spec().ranks() - 1);
      }
      if (js.runs().empty()) {
        return MakeError(Code::kFailedPrecondition, "job {} has not started yet ({})", f->job_id,
                         StateName(js.state()));
      }
      if (f->attempt > static_cast<uint32_t>(js.runs_size())) {
        return MakeError(Code::kInvalidArgument, "--attempt {}: job {} has attempts 1..{}",
                         f->attempt, f->job_id, js.runs_size());
      }
      uint32_t attempt = f->attempt > 0 ? f->attempt : static_cast<uint32_t>(js.runs_size());
      std::string path = RankLog(dir, js, attempt, f->rank);
      if (!f->follow) {
        std::ifstream in(path, std::ios::binary);
        if (!in) {
          return MakeError(Code::kNotFound, "{}: no output of rank {} in attempt {} (on a "
                                            "multi-node cluster, run this on the rank's node)",
                           path, f->rank, attempt);
        }
        std::fputs(std::string(std::istreambuf_iterator<char>(in), {}).c_str(), stdout);
        return OkStatus();
      }
      std::uintmax_t offset = 0;
      auto next_poll = std::chrono::steady_clock::now();
      for (;;) {
        std::ifstream in(path, std::ios::binary);
        if (in) {
          in.seekg(static_cast<std::streamoff>(offset));
          std::string chunk((std::istreambuf_iterator<char>(in)), {});
          offset += chunk.size();
          std::fwrite(chunk.data(), 1, chunk.size(), stdout);
          std::fflush(stdout);
        }
        if (std::chrono::steady_clock::now() >= next_poll) {
          next_poll = std::chrono::steady_clock::now() + std::chrono::seconds(1);
          CAIRN_ASSIGN_OR_RETURN(js, GetJob(*client, f->job_id));
          if (f->attempt == 0 && static_cast<uint32_t>(js.runs_size()) > attempt) {
            attempt = static_cast<uint32_t>(js.runs_size());
            path = RankLog(dir, js, attempt, f->rank);
            offset = 0;
            std::printf("--- attempt %u ---\n", attempt);
            continue;
          }
          if (Final(js.state()) && !AttemptLive(js)) {
            // Drain what the last writes left.
            std::ifstream tail(path, std::ios::binary);
            if (tail) {
              tail.seekg(static_cast<std::streamoff>(offset));
              std::string rest((std::istreambuf_iterator<char>(tail)), {});
              std::fwrite(rest.data(), 1, rest.size(), stdout);
            }
            return OkStatus();
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    });
  });

  auto* events = app.add_subcommand("events", "A job's events (placements, failures, restarts); "
                                              "without a job, the cluster's (nodes)");
  state_dir(events);
  events->add_option("job", f->job_id, "Job id");
  events->add_flag("--json", f->json, "Machine-readable output");
  events->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      CAIRN_ASSIGN_OR_RETURN(auto client,
                             coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      CAIRN_ASSIGN_OR_RETURN(auto evs, GetEvents(*client, f->job_id, 0));
      if (f->json) {
        proto::GetEventsReply out;
        for (auto& e : evs) *out.add_events() = e;
        std::printf("%s\n", ToJson(out).c_str());
        return OkStatus();
      }
      for (const auto& e : evs) std::printf("%s\n", EventLine(e).c_str());
      return OkStatus();
    });
  });

  auto* resume = app.add_subcommand(
      "resume", "Put a FAILED or CANCELLED job back in the queue; it continues from its checkpoint");
  state_dir(resume);
  resume->add_option("job", f->job_id, "Job id")->required();
  resume->callback([ctx, f] {
    Run(ctx, [&]() -> Status {
      CAIRN_ASSIGN_OR_RETURN(auto client,
                             coord::Client::Connect(coord::DefaultStateDir(f->state_dir)));
      proto::ResumeJobRequest req;
      req.set_job_id(f->job_id);
      CAIRN_ASSIGN_OR_RETURN(auto bytes, client->Call("ResumeJob", req.SerializeAsString()));
      proto::ResumeJobReply reply;
      if (!reply.ParseFromString(bytes)) return MakeError(Code::kInternal, "bad ResumeJob reply");
      std::printf("%s %s: %s\n", reply.job().job_id().c_str(),
                  std::string(StateName(reply.job().state())).c_str(),
                  reply.job().message().c_str());
      return OkStatus();
    });
  });
}

}  // namespace cairn::cli
