// cairn-agent: one per node; registers the node's resources with cairnd, heartbeats,
// and starts, supervises and stops the ranks cairnd orders (worker/agent.h).
//
//   cairn-agent [--config FILE] --state-dir DIR [--node-id ID] [--address A] [--cpus N]
//               [--gpus N]
//
// Settings come from the flags, else the config file (state_dir, log_level, agent.cpus,
// agent.memory; docs/config.md), else their defaults.
// Registers (cores and memory detected, or declared; GPUs with model, memory and UUID
// from the driver through NVML, limited to the agent's own CUDA_VISIBLE_DEVICES when set,
// else counted from /dev/nvidiaN, or declared). Two threads talk to cairnd: the poller sends heartbeats that cairnd holds
// until the node's orders change (at most one heartbeat interval), so orders arrive at
// once; the supervisor thread reaps processes, reads progress and, when a process exits,
// reports at once on its own connection. When cairnd is gone or has forgotten the node
// (restart), the agent reconnects and registers again with backoff (0.2 s doubling to
// 5 s); cut off for nearly cairnd's node timeout (less a margin of up to 1 s), it stops
// its runs (fencing: cairnd is about to declare the node lost and restart them elsewhere). SIGTERM/SIGINT stop every run
// (SIGTERM, 5 s, SIGKILL) and end the agent.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <thread>

#include <linux/limits.h>

#include "common/app.h"
#include "common/io.h"
#include "common/log.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"
#include "worker/agent.h"
#include "worker/gpus.h"

namespace {

std::atomic<bool> g_stop{false};
extern "C" void OnStop(int) { g_stop.store(true); }

std::string Hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

// Sleeps up to `d`, waking early when asked to stop.
void SleepFor(std::chrono::milliseconds d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (!g_stop.load() && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace cairn;
  CLI::App app{"cairn-agent: the per-node cairn agent (registers the node, heartbeats)"};
  StandardFlags flags;
  AddStandardFlags(app, &flags, "cairn-agent");
  bool check_config = false;
  std::string state_dir, node_id, address = "127.0.0.1";
  int cpus = 0, gpus = -1;
  std::string gpu_share;
  app.add_flag("--check-config", check_config,
               "Validate the config, print the effective settings and detected resources, exit");
  app.add_option("--state-dir", state_dir,
                 "Cluster state directory (default CAIRN_STATE_DIR, else the config's "
                 "state_dir, else ~/.cairn)");
  app.add_option("--node-id", node_id, "Node id (default: the host name)");
  app.add_option("--address", address, "Address ranks on this node are reachable at")
      ->capture_default_str();
  app.add_option("--cpus", cpus,
                 "Declared CPUs (0: the cores online; default agent.cpus, else 0)");
  app.add_option("--gpus", gpus,
                 "Declared GPUs (default: the driver's, through NVML; else /dev/nvidiaN)");
  app.add_option("--gpu-share", gpu_share,
                 "I/N: this agent is simulated node I of N on this machine and offers the "
                 "I-th of N equal shares of its GPUs (cairn up --agents N)");
  CLI11_PARSE(app, argc, argv);

  auto config = LoadEffectiveConfig(flags);
  if (!config) return ReportError("cairn-agent", config.error());
  // Flags over the config file.
  config->state_dir = coord::DefaultStateDir(state_dir, config->state_dir);
  if (app.count("--cpus") > 0) {
    if (auto s = CheckCpus(cpus); !s) {
      return ReportError("cairn-agent", std::move(s).error().With("--cpus"));
    }
    config->agent.cpus = cpus;
  }
  cpus = config->agent.cpus > 0 ? config->agent.cpus
                                : static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  const unsigned long long mem =
      config->agent.memory_bytes > 0
          ? config->agent.memory_bytes
          : static_cast<unsigned long long>(::sysconf(_SC_PHYS_PAGES)) *
                static_cast<unsigned long long>(::sysconf(_SC_PAGESIZE));
  if (gpus > 64) return ReportError("cairn-agent", Error(Code::kInvalidArgument, "--gpus above 64"));
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  worker::GpuInventory inventory =
      worker::DiscoverGpus(visible != nullptr ? std::optional<std::string>(visible) : std::nullopt);
  if (!gpu_share.empty()) {
    int part = -1, parts = 0;
    char tail = 0;
    if (std::sscanf(gpu_share.c_str(), "%d/%d%c", &part, &parts, &tail) != 2 || parts < 1 ||
        parts > 64 || part < 0 || part >= parts) {
      return ReportError("cairn-agent", Error(Code::kInvalidArgument,
                                              fmt::format("--gpu-share '{}': expected I/N with "
                                                          "0 <= I < N <= 64", gpu_share)));
    }
    inventory.devices = worker::ShareOf(inventory.devices, part, parts);
  }
  if (gpus >= 0) {
    // Declared: the first N detected devices keep what the driver said of them; devices
    // beyond those detected are taken on trust, numbered on.
    inventory.devices.resize(std::min<std::size_t>(inventory.devices.size(), gpus));
    for (auto i = static_cast<uint32_t>(inventory.devices.size()); i < static_cast<uint32_t>(gpus);
         ++i) {
      inventory.devices.push_back(worker::GpuDevice{
          inventory.devices.empty() ? i : inventory.devices.back().index + 1, "", 0, ""});
    }
    inventory.source = "declared";
  }
  if (check_config) {
    std::fputs(ConfigToYaml(*config).c_str(), stdout);
    std::printf("# detected: cpus=%d memory_bytes=%llu gpus=%zu (source %s%s%s)\n", cpus, mem,
                inventory.devices.size(), inventory.source.c_str(),
                inventory.driver_version.empty() ? "" : ", driver ",
                inventory.driver_version.c_str());
    for (const auto& g : inventory.devices) {
      std::printf("# gpu %u: %s, %llu MiB, %s\n", g.index,
                  g.model.empty() ? "(model unknown)" : g.model.c_str(),
                  static_cast<unsigned long long>(g.memory_bytes >> 20),
                  g.uuid.empty() ? "(uuid unknown)" : g.uuid.c_str());
    }
    if (!inventory.note.empty()) std::printf("# gpu note: %s\n", inventory.note.c_str());
    return 0;
  }
  if (node_id.empty()) node_id = Hostname();
  state_dir = config->state_dir;

  struct sigaction sa {};
  sa.sa_handler = OnStop;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  std::string self(PATH_MAX, '\0');
  const ssize_t self_len = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
  self.resize(self_len > 0 ? static_cast<std::size_t>(self_len) : 0);
  worker::AgentConfig ac;
  ac.node_id = node_id;
  ac.state_dir = state_dir;
  ac.rsh_path = (std::filesystem::path(self).parent_path() / "cairn-rsh").string();
  ac.progress_path = fmt::format("{}/agents/{}/progress.sock", state_dir, node_id);
  ac.gpus = inventory.devices;
  auto agent_or = worker::Agent::Create(ac);
  if (!agent_or) return ReportError("cairn-agent", agent_or.error());
  worker::Agent& agent = **agent_or;

  proto::RegisterNodeRequest reg;
  reg.set_node_id(node_id);
  reg.set_hostname(Hostname());
  reg.set_address(address);
  reg.set_agent_version(std::string(Version()));
  reg.set_incarnation(std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count());
  reg.mutable_resources()->set_cpus(static_cast<uint32_t>(cpus));
  reg.mutable_resources()->set_memory_bytes(mem);
  for (const auto& g : inventory.devices) {
    auto* info = reg.mutable_resources()->add_gpus();
    info->set_index(g.index);
    info->set_model(g.model);
    info->set_memory_bytes(g.memory_bytes);
    info->set_uuid(g.uuid);
  }

  // Whether cairnd shares our state directory: it reads this probe back (logs are
  // shipped with the heartbeats when it does not).
  {
    std::random_device rd;
    const std::string probe = fmt::format("{:08x}{:08x}{:08x}{:08x}", rd(), rd(), rd(), rd());
    auto written = io::WriteFileAtomic(io::DefaultFileSystem(),
                                       fmt::format("{}/agents/{}/probe", state_dir, node_id),
                                       probe, 0644);
    if (written) reg.set_state_probe(probe);
  }

  auto log = log::Logger("agent");
  using Clock = std::chrono::steady_clock;
  std::atomic<int64_t> last_contact_ms{0};  // steady ms of the last answered heartbeat
  std::atomic<int64_t> node_timeout_ms{5000};
  std::atomic<bool> connected{false};
  auto steady_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
        .count();
  };
  last_contact_ms = steady_ms();

  // The poller: register, then long-poll heartbeats that bring the orders. It runs with
  // SIGCHLD blocked: child exits wake the supervisor (this thread) only.
  sigset_t chld, old_mask;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  pthread_sigmask(SIG_BLOCK, &chld, &old_mask);
  std::thread poller([&] {
    std::unique_ptr<coord::Client> client;
    auto backoff = std::chrono::milliseconds(200);
    bool registered = false;
    std::chrono::milliseconds interval(1000);
    while (!g_stop.load()) {
      if (!client) {
        auto c = coord::Client::Connect(state_dir, "agent-" + node_id);
        if (!c) {
          log->warn("waiting for cairnd: {}", c.error().ToString());
          SleepFor(backoff);
          backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
          continue;
        }
        client = std::move(*c);
      }
      if (!registered) {
        auto r = client->Call("RegisterNode", reg.SerializeAsString(), std::chrono::seconds(5));
        if (!r) {
          log->warn("register: {}", r.error().ToString());
          client.reset();  // re-read the token and address (cairnd may have restarted)
          SleepFor(backoff);
          backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
          continue;
        }
        proto::RegisterNodeReply reply;
        reply.ParseFromString(*r);
        if (reply.heartbeat_interval_ms() > 0) {
          interval = std::chrono::milliseconds(reply.heartbeat_interval_ms());
        }
        if (reply.node_timeout_ms() > 0) {
          node_timeout_ms = static_cast<int64_t>(reply.node_timeout_ms());
        }
        registered = true;
        backoff = std::chrono::milliseconds(200);
        agent.log_shipper().set_enabled(reply.ship_logs());
        if (reply.ship_logs()) {
          log->info("cairnd does not share {}: run logs travel with the heartbeats", state_dir);
        }
        log->info("node {} registered: {} CPUs, {} MiB, {} GPUs ({}); heartbeat every {} ms",
                  node_id, cpus, mem >> 20, inventory.devices.size(), inventory.source,
                  interval.count());
      }
      // Log bytes waiting: heartbeat again at once rather than after a held long poll.
      const bool backlog = agent.log_shipper().Backlog();
      auto hb = agent.Report(backlog ? 0 : static_cast<uint32_t>(interval.count()));
      auto r = client->Call("Heartbeat", hb.SerializeAsString(), interval * 3);
      if (!r) {
        connected = false;
        log->warn("heartbeat: {}", r.error().ToString());
        registered = false;
        if (r.error().code() != Code::kFailedPrecondition) client.reset();
        SleepFor(std::chrono::milliseconds(100));
        continue;
      }
      connected = true;
      last_contact_ms = steady_ms();
      agent.log_shipper().Delivered(hb);
      proto::HeartbeatReply reply;
      if (reply.ParseFromString(*r)) agent.ApplyOrders(reply);
    }
  });

  // The supervisor (this thread: it owns the processes).
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  agent.WakeOnChildExit();
  std::unique_ptr<coord::Client> reporter;
  while (!g_stop.load()) {
    if (agent.Step() && connected.load()) {
      // Tell cairnd at once (the poller's heartbeat may be held for a second).
      if (!reporter) {
        if (auto c = coord::Client::Connect(state_dir, "agent-" + node_id + "-events")) {
          reporter = std::move(*c);
        }
      }
      if (reporter) {
        auto hb = agent.Report(0);
        if (auto r = reporter->Call("Heartbeat", hb.SerializeAsString(),
                                    std::chrono::milliseconds(500));
            !r) {
          reporter.reset();
        } else {
          agent.log_shipper().Delivered(hb);
        }
      }
    }
    // Fence a little before cairnd declares the node lost (it restarts the runs then):
    // the two clocks start from about the same reply, so a margin keeps them ordered.
    const int64_t timeout = node_timeout_ms.load();
    if (steady_ms() - last_contact_ms.load() > timeout - std::min<int64_t>(1000, timeout / 3)) {
      agent.Fence();
    }
    // Woken at once by orders and child exits; every 100 ms anyway, for progress and
    // ranks that are not our children (mpi mode) vanishing.
    agent.WaitForWork(std::chrono::milliseconds(100));
  }
  log->info("node {}: stopping", node_id);
  poller.join();
  agent.StopAll(std::chrono::seconds(5));
  return 0;
}
