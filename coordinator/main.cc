// cairnd: the cairn coordinator.
//
//   cairnd [--config FILE] --state-dir DIR [--listen HOST:PORT] [--node-timeout 5s]
//          [--quarantine-time 10m]
//
// Each setting comes from its flag, else the config file (state_dir, log_level,
// coordinator.*; docs/config.md), else its default.
// Creates DIR (0700) if needed, takes its lock (one cairnd per state directory), creates
// the cluster token (0600) on first start, opens the state database, listens (port 0: any
// free port), and then writes DIR/cairnd.addr so that clients can find it. SIGTERM or
// SIGINT stops it cleanly; kill -9 loses nothing that was acknowledged.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <utility>  // before Asio

#include <boost/asio.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>

#include "checkpoint/crypto.h"
#include "checkpoint/types.h"
#include "common/app.h"
#include "common/io.h"
#include "common/log.h"
#include "common/yaml.h"
#include "coordinator/client.h"
#include "coordinator/server.h"
#include "coordinator/service.h"
#include "coordinator/state_store.h"

namespace cairn::coord {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Result<std::string> EnsureToken(const StateDirPaths& p) {
  std::error_code ec;
  if (!std::filesystem::exists(p.token, ec)) {
    CAIRN_ASSIGN_OR_RETURN(auto key, ckpt::SecretKey::Random());
    std::string token = ckpt::ToHex(key.bytes());
    CAIRN_RETURN_IF_ERROR(io::WriteFileAtomic(io::DefaultFileSystem(), p.token, token + "\n", 0600));
  }
  return ReadToken(p.token);
}

Result<int> Run(const Config& config, bool slurm) {
  ServiceOptions options;
  options.node_timeout_ms = config.coordinator.heartbeat_timeout.count();
  options.jobs.quarantine_ms = config.coordinator.quarantine_time.count();
  CAIRN_ASSIGN_OR_RETURN(const HostPort listen, ParseHostPort(config.coordinator.listen));
  StateDirPaths p(config.state_dir);
  options.jobs.state_dir = p.dir;
  CAIRN_RETURN_IF_ERROR(io::CreateDirs(io::DefaultFileSystem(), p.dir, 0700));
  int lock = ::open(p.lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock < 0) return ErrnoError(errno, p.lock);
  if (::flock(lock, LOCK_EX | LOCK_NB) != 0) {
    return MakeError(Code::kFailedPrecondition, "another cairnd is running on {} (lock {})",
                     p.dir, p.lock);
  }
  CAIRN_ASSIGN_OR_RETURN(std::string token, EnsureToken(p));
  CAIRN_ASSIGN_OR_RETURN(auto store, StateStore::Open(p.db));

  boost::asio::io_context io;
  Service service(store.get(), token, NowMs, options);
  // Provenance: records prepared on the keeper's thread, finished on the io_context.
  char hostname[256] = {};
  ::gethostname(hostname, sizeof hostname - 1);
  CAIRN_ASSIGN_OR_RETURN(
      auto keeper,
      ProvenanceKeeper::Open(p.dir, fmt::format("cairnd://{}{}", hostname, p.dir),
                             [&io](std::function<void()> fn) {
                               boost::asio::post(io, std::move(fn));
                             }));
  service.jobs().set_provenance(keeper.get());
  // The slurm executor's blocking calls run on their own thread.
  std::unique_ptr<SlurmExecutor> slurm_executor;
  std::unique_ptr<BlockingWorker> slurm_worker;
  if (slurm) {
    slurm_executor = std::make_unique<SlurmExecutor>();
    slurm_worker = std::make_unique<BlockingWorker>(
        [&io](std::function<void()> fn) { boost::asio::post(io, std::move(fn)); });
    service.jobs().set_slurm(slurm_executor.get(), slurm_worker.get());
  }
  CAIRN_RETURN_IF_ERROR_CTX(service.Recover(), "recover the state in {}", p.db);
  // Periodic work: node liveness.
  boost::asio::steady_timer tick(io);
  std::function<void()> arm = [&] {
    tick.expires_after(std::chrono::milliseconds(250));
    tick.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      service.Tick();
      arm();
    });
  };
  arm();
  CAIRN_ASSIGN_OR_RETURN(auto server, Server::Listen(io, listen.host, listen.port, &service));
  CAIRN_RETURN_IF_ERROR(io::WriteFileAtomic(io::DefaultFileSystem(), p.addr,
                                            fmt::format("{}:{}\n", listen.host, server->port()),
                                            0644));
  log::Logger("coordinator")
      ->info("cairnd {} listening on {}:{}, state in {}, node timeout {} ms", Version(),
             listen.host, server->port(), p.dir, options.node_timeout_ms);
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    log::Logger("coordinator")->info("signal {}: stopping", sig);
    server->Stop();
    tick.cancel();
    io.stop();
  });
  io.run();
  std::error_code ec;
  std::filesystem::remove(p.addr, ec);
  return 0;
}

// Puts the flags given on the command line over the config file; a bad flag value fails
// by the key's rule, naming the flag.
Status ApplyFlags(const CLI::App& app, const std::string& state_dir, const std::string& listen,
                  const std::string& node_timeout, const std::string& quarantine_time,
                  Config* config) {
  config->state_dir = DefaultStateDir(state_dir, config->state_dir);
  if (app.count("--listen") > 0) {
    CAIRN_RETURN_IF_ERROR_CTX(ParseHostPort(listen), "--listen");
    config->coordinator.listen = listen;
  }
  if (app.count("--node-timeout") > 0) {
    CAIRN_ASSIGN_OR_RETURN(auto d, WithContext(yaml::ParseDuration(node_timeout), "--node-timeout"));
    CAIRN_RETURN_IF_ERROR_CTX(CheckHeartbeatTimeout(d), "--node-timeout");
    config->coordinator.heartbeat_timeout = d;
  }
  if (app.count("--quarantine-time") > 0) {
    CAIRN_ASSIGN_OR_RETURN(config->coordinator.quarantine_time,
                           WithContext(yaml::ParseDuration(quarantine_time), "--quarantine-time"));
  }
  return OkStatus();
}

}  // namespace
}  // namespace cairn::coord

int main(int argc, char** argv) {
  CLI::App app{"cairnd: the cairn coordinator (job queue, gang scheduler, failure handling)"};
  cairn::StandardFlags flags;
  cairn::AddStandardFlags(app, &flags, "cairnd");
  bool check_config = false;
  std::string state_dir, listen, node_timeout, quarantine_time;
  app.add_flag("--check-config", check_config,
               "Validate the config, print the effective settings (flags applied) and exit");
  app.add_option("--state-dir", state_dir,
                 "State directory (database, token, address); default CAIRN_STATE_DIR, else "
                 "the config's state_dir, else ~/.cairn");
  app.add_option("--listen", listen,
                 "HOST:PORT to listen on, HOST an IP address (port 0: any free port); default "
                 "coordinator.listen, else 127.0.0.1:0");
  app.add_option("--node-timeout", node_timeout,
                 "A node without heartbeats this long is lost (at least 1s); default "
                 "coordinator.heartbeat_timeout, else 5s");
  app.add_option("--quarantine-time", quarantine_time,
                 "How long a node with repeated failures gets no new placements (0: until its "
                 "agent registers again); default coordinator.quarantine_time, else 10m");
  bool slurm = false;
  app.add_flag("--slurm", slurm,
               "Run jobs submitted with --executor slurm as SLURM batch jobs (sbatch, squeue, "
               "scontrol and scancel from PATH; the cluster SLURM_CONF names)");
  CLI11_PARSE(app, argc, argv);

  auto config = cairn::LoadEffectiveConfig(flags);
  if (!config) return cairn::ReportError("cairnd", config.error());
  if (auto s = cairn::coord::ApplyFlags(app, state_dir, listen, node_timeout, quarantine_time,
                                        &*config);
      !s) {
    return cairn::ReportError("cairnd", s.error());
  }
  if (check_config) {
    std::fputs(cairn::ConfigToYaml(*config).c_str(), stdout);
    return 0;
  }
  auto rc = cairn::coord::Run(*config, slurm);
  if (!rc) return cairn::ReportError("cairnd", rc.error());
  return *rc;
}
