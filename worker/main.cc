// cairn-agent: one per node; registers the node's resources with cairnd and heartbeats.
//
//   cairn-agent --state-dir DIR [--node-id ID] [--address A] [--cpus N] [--gpus N]
//
// Registers (cores and memory detected, or declared; GPUs counted from /dev/nvidiaN, or
// declared), then heartbeats at the interval cairnd asks for. When cairnd is gone or has
// forgotten the node (restart), it reconnects and registers again with backoff (0.2 s
// doubling to 5 s). SIGTERM/SIGINT end it. Launching and supervising ranks is the next
// step of this component.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "common/app.h"
#include "common/log.h"
#include "coordinator/client.h"
#include "proto/cairn.pb.h"

namespace {

std::atomic<bool> g_stop{false};
extern "C" void OnStop(int) { g_stop.store(true); }

int CountNvidiaDevices() {
  int n = 0;
  for (int i = 0; i < 64; ++i) {
    std::error_code ec;
    if (std::filesystem::exists("/dev/nvidia" + std::to_string(i), ec)) ++n;
  }
  return n;
}

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
  app.add_flag("--check-config", check_config,
               "Validate the config, print the effective settings and detected resources, exit");
  app.add_option("--state-dir", state_dir, "Cluster state directory (default CAIRN_STATE_DIR or "
                                           "~/.cairn)");
  app.add_option("--node-id", node_id, "Node id (default: the host name)");
  app.add_option("--address", address, "Address ranks on this node are reachable at")
      ->capture_default_str();
  app.add_option("--cpus", cpus, "Declared CPUs (default: detected)");
  app.add_option("--gpus", gpus, "Declared GPUs (default: /dev/nvidiaN devices)");
  CLI11_PARSE(app, argc, argv);

  auto config = LoadEffectiveConfig(flags);
  if (!config) return ReportError("cairn-agent", config.error());
  if (cpus <= 0) cpus = config->agent.cpus > 0 ? config->agent.cpus
                                               : static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  const unsigned long long mem =
      config->agent.memory_bytes > 0
          ? config->agent.memory_bytes
          : static_cast<unsigned long long>(::sysconf(_SC_PHYS_PAGES)) *
                static_cast<unsigned long long>(::sysconf(_SC_PAGESIZE));
  if (gpus < 0) gpus = CountNvidiaDevices();
  if (gpus > 64) return ReportError("cairn-agent", Error(Code::kInvalidArgument, "--gpus above 64"));
  if (check_config) {
    std::fputs(ConfigToYaml(*config).c_str(), stdout);
    std::printf("# detected: cpus=%d memory_bytes=%llu gpus=%d\n", cpus, mem, gpus);
    return 0;
  }
  if (node_id.empty()) node_id = Hostname();
  state_dir = coord::DefaultStateDir(state_dir);

  struct sigaction sa {};
  sa.sa_handler = OnStop;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  proto::RegisterNodeRequest reg;
  reg.set_node_id(node_id);
  reg.set_hostname(Hostname());
  reg.set_address(address);
  reg.set_agent_version(std::string(Version()));
  reg.mutable_resources()->set_cpus(static_cast<uint32_t>(cpus));
  reg.mutable_resources()->set_memory_bytes(mem);
  for (int i = 0; i < gpus; ++i) reg.mutable_resources()->add_gpus()->set_index(static_cast<uint32_t>(i));

  auto log = log::Logger("agent");
  std::unique_ptr<coord::Client> client;
  auto backoff = std::chrono::milliseconds(200);
  uint64_t seq = 0;
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
      registered = true;
      backoff = std::chrono::milliseconds(200);
      log->info("node {} registered: {} CPUs, {} MiB, {} GPUs; heartbeat every {} ms", node_id,
                cpus, mem >> 20, gpus, interval.count());
    }
    proto::HeartbeatRequest hb;
    hb.set_node_id(node_id);
    hb.set_sequence(++seq);
    hb.set_sent_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count());
    auto r = client->Call("Heartbeat", hb.SerializeAsString(), interval * 3);
    if (!r) {
      log->warn("heartbeat: {}", r.error().ToString());
      registered = false;
      if (r.error().code() != Code::kFailedPrecondition) client.reset();
      continue;
    }
    SleepFor(interval);
  }
  log->info("node {}: stopping", node_id);
  return 0;
}
