// The config file end to end, through the built binaries (docs/config.md): every key
// cairnd, cairn-agent and `cairn up` read takes effect, a flag beats the file and the
// file beats the default, and bad values fail naming the file, line and key (or the flag).
// The cluster test starts a local cluster from nothing but a config file (its state
// directory, listen port, heartbeat timeout, log level and agent resources) and checks
// each through the cluster; after it (also after a failure) the cluster is taken down
// and its temporary directory removed.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/io.h"
#include "tests/process_util.h"

namespace cairn::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// The environment of every command here: no state directory or config file from the
// environment the test runs in (empty counts as unset), unless a test sets one.
std::map<std::string, std::string> CleanEnv(std::map<std::string, std::string> extra = {}) {
  std::map<std::string, std::string> env = {{"CAIRN_STATE_DIR", ""}, {"CAIRN_CONFIG", ""}};
  for (auto& [k, v] : extra) env[k] = v;
  return env;
}

CommandResult Bin(const std::string& name, std::vector<std::string> args,
                  std::map<std::string, std::string> env = {}) {
  args.insert(args.begin(), BinDir() + "/" + name);
  return RunCommand(args, CleanEnv(std::move(env)), std::chrono::seconds(60));
}

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  ::inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
  socklen_t len = sizeof(sin);
  int port = -1;
  if (fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0) {
    port = ntohs(sin.sin_port);
  }
  if (fd >= 0) ::close(fd);
  return port;
}

class ConfigE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("cairn_config_e2e_" + io::RandomSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (cluster_up_) {
      // A stopped agent would not see SIGTERM before down's SIGKILL: let it go on first.
      if (agent_pid_ > 0) ::kill(agent_pid_, SIGCONT);
      auto down = Bin("cairn", {"--config", config_, "down"});
      EXPECT_EQ(down.exit_code, 0) << down.output;
      auto left = WaitUntilNone([&] { return ProcessesMentioning(dir_.string()); },
                                std::chrono::seconds(5));
      EXPECT_TRUE(left.empty()) << left.size() << " process(es) left, first "
                                << DescribeProcess(left[0]);
      for (pid_t p : left) ::kill(p, SIGKILL);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& text) {
    const fs::path path = dir_ / name;
    std::ofstream(path) << text;
    return path.string();
  }

  fs::path dir_;
  std::string config_;  // the cluster's config file
  bool cluster_up_ = false;
  pid_t agent_pid_ = -1;
};

// Every key of the three binaries: from the file, over it from a flag, and the default
// without either, as each binary's --check-config (or `cairn config show`) prints it.
TEST_F(ConfigE2eTest, FlagOverConfigFileOverDefault) {
  const std::string file = Write("cairn.yaml", R"(state_dir: /srv/from-file
log_level: warn
coordinator:
  listen: 127.0.0.1:7171
  heartbeat_timeout: 2s
  quarantine_time: 1m
agent:
  cpus: 3
  memory: 1GiB
)");
  auto from_file = Bin("cairnd", {"--config", file, "--check-config"});
  ASSERT_EQ(from_file.exit_code, 0) << from_file.output;
  for (const char* line : {"state_dir: \"/srv/from-file\"", "log_level: warn",
                           "listen: \"127.0.0.1:7171\"", "heartbeat_timeout: 2000ms",
                           "quarantine_time: 60000ms"}) {
    EXPECT_THAT(from_file.output, HasSubstr(line));
  }
  auto flags = Bin("cairnd", {"--config", file, "--check-config", "--state-dir", "/srv/from-flag",
                              "--log-level", "error", "--listen", "127.0.0.1:0",
                              "--node-timeout", "3s", "--quarantine-time", "0"});
  ASSERT_EQ(flags.exit_code, 0) << flags.output;
  for (const char* line : {"state_dir: \"/srv/from-flag\"", "log_level: error",
                           "listen: \"127.0.0.1:0\"", "heartbeat_timeout: 3000ms",
                           "quarantine_time: 0ms"}) {
    EXPECT_THAT(flags.output, HasSubstr(line));
  }
  auto defaults = Bin("cairnd", {"--check-config"}, {{"HOME", "/home/nobody"}});
  ASSERT_EQ(defaults.exit_code, 0) << defaults.output;
  for (const char* line : {"state_dir: \"/home/nobody/.cairn\"", "log_level: info",
                           "listen: \"127.0.0.1:0\"", "heartbeat_timeout: 5000ms",
                           "quarantine_time: 600000ms"}) {
    EXPECT_THAT(defaults.output, HasSubstr(line));
  }

  // CAIRN_CONFIG names the file when --config does not; --config wins over it.
  const std::string other = Write("other.yaml", "coordinator:\n  heartbeat_timeout: 4s\n");
  auto env = Bin("cairnd", {"--check-config"}, {{"CAIRN_CONFIG", file}});
  ASSERT_EQ(env.exit_code, 0) << env.output;
  EXPECT_THAT(env.output, HasSubstr("heartbeat_timeout: 2000ms"));
  auto both = Bin("cairnd", {"--config", other, "--check-config"}, {{"CAIRN_CONFIG", file}});
  ASSERT_EQ(both.exit_code, 0) << both.output;
  EXPECT_THAT(both.output, HasSubstr("heartbeat_timeout: 4000ms"));

  // The state directory: --state-dir, else CAIRN_STATE_DIR, else the file, else ~/.cairn;
  // `cairn config show` resolves it the way every cairn command does.
  auto state_env = Bin("cairn", {"--config", file, "config", "show"},
                       {{"CAIRN_STATE_DIR", "/srv/from-env"}});
  ASSERT_EQ(state_env.exit_code, 0) << state_env.output;
  EXPECT_THAT(state_env.output, HasSubstr("state_dir: \"/srv/from-env\""));
  EXPECT_THAT(state_env.output, HasSubstr("# config file: " + file));
  auto state_file = Bin("cairn", {"config", "show"}, {{"CAIRN_CONFIG", file}});
  ASSERT_EQ(state_file.exit_code, 0) << state_file.output;
  EXPECT_THAT(state_file.output, HasSubstr("state_dir: \"/srv/from-file\""));

  // The agent: --cpus over agent.cpus; agent.memory is what it offers.
  auto agent = Bin("cairn-agent", {"--config", file, "--check-config"});
  ASSERT_EQ(agent.exit_code, 0) << agent.output;
  EXPECT_THAT(agent.output, HasSubstr("# detected: cpus=3 memory_bytes=1073741824 "));
  auto agent_flag = Bin("cairn-agent", {"--config", file, "--check-config", "--cpus", "5"});
  ASSERT_EQ(agent_flag.exit_code, 0) << agent_flag.output;
  EXPECT_THAT(agent_flag.output, HasSubstr("# detected: cpus=5 memory_bytes=1073741824 "));
}

// A bad value fails every binary that reads the file, naming file, line and key; a bad
// flag value fails by the same rule, naming the flag; nothing starts.
TEST_F(ConfigE2eTest, BadValuesNameFileLineAndKeyOrTheFlag) {
  const std::string file = Write("bad.yaml", "log_level: warn\ncoordinator:\n  heartbeat_timeout: 200ms\n");
  const fs::path state = dir_ / "never";
  for (std::vector<std::string> args :
       {std::vector<std::string>{"cairnd", "--config", file, "--state-dir", state.string()},
        {"cairn-agent", "--config", file, "--state-dir", state.string()},
        {"cairn", "--config", file, "up", "--state-dir", state.string()},
        {"cairn", "--config", file, "nodes", "--state-dir", state.string()}}) {
    const std::string bin = args[0];
    args.erase(args.begin());
    auto r = Bin(bin, args);
    EXPECT_EQ(r.exit_code, 2) << bin << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr(file + ":3:22: key 'coordinator.heartbeat_timeout': 200 ms "
                                           "is below 1 s"))
        << bin;
  }
  auto flag = Bin("cairnd", {"--node-timeout", "200ms", "--state-dir", state.string()});
  EXPECT_EQ(flag.exit_code, 2) << flag.output;
  EXPECT_THAT(flag.output, HasSubstr("--node-timeout: 200 ms is below 1 s"));
  auto up = Bin("cairn", {"up", "--node-timeout", "200ms", "--state-dir", state.string()});
  EXPECT_EQ(up.exit_code, 2) << up.output;
  EXPECT_THAT(up.output, HasSubstr("--node-timeout: 200 ms is below 1 s"));
  auto listen = Bin("cairnd", {"--listen", "localhost:7070", "--state-dir", state.string()});
  EXPECT_EQ(listen.exit_code, 2) << listen.output;
  EXPECT_THAT(listen.output, HasSubstr("--listen: 'localhost:7070': host 'localhost' is not an IP"));
  auto cpus = Bin("cairn-agent", {"--cpus", "-2", "--state-dir", state.string()});
  EXPECT_EQ(cpus.exit_code, 2) << cpus.output;
  EXPECT_THAT(cpus.output, HasSubstr("--cpus: -2 is outside 0..1048576"));
  EXPECT_FALSE(fs::exists(state));
}

// `cairn --config FILE up` with nothing else: the cluster lives where the file says,
// cairnd listens on its port and logs at its level, the agent offers its CPUs and memory,
// and a stopped agent is declared lost after its heartbeat_timeout (1.5 s, not the
// default 5 s).
TEST_F(ConfigE2eTest, LocalClusterFromAConfigFile) {
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const fs::path state = dir_ / "state";
  config_ = Write("cluster.yaml", fmt::format(R"(state_dir: {}
log_level: warn
coordinator:
  listen: 127.0.0.1:{}
  heartbeat_timeout: 1500ms
agent:
  cpus: 3
  memory: 1GiB
)",
                                              state.string(), port));
  auto up = Bin("cairn", {"--config", config_, "up", "--agents", "1"});
  cluster_up_ = true;
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_THAT(up.output, HasSubstr("cluster up at " + state.string()));

  // listen: the port cairnd told its clients.
  EXPECT_EQ(ReadFile(state / "cairnd.addr"), fmt::format("127.0.0.1:{}\n", port));

  // agent.cpus and agent.memory: what the node offers (state_dir: no --state-dir here).
  auto nodes_of = [&]() -> nlohmann::json {
    auto r = Bin("cairn", {"--config", config_, "nodes", "--json"});
    if (r.exit_code != 0) return nlohmann::json();
    auto j = nlohmann::json::parse(r.output, nullptr, /*allow_exceptions=*/false);
    return j.is_object() && j.contains("nodes") && j["nodes"].size() == 1 ? j["nodes"][0]
                                                                         : nlohmann::json();
  };
  const nlohmann::json node = nodes_of();
  ASSERT_TRUE(node.is_object()) << Bin("cairn", {"--config", config_, "nodes", "--json"}).output;
  EXPECT_EQ(node["alive"], true);
  EXPECT_EQ(node["resources"]["cpus"], 3);
  EXPECT_EQ(node["resources"]["memory_bytes"], "1073741824");  // proto JSON: uint64 as text

  // heartbeat_timeout: stop the agent; the node is lost 1.5 s after its last heartbeat
  // (cairnd answers a held heartbeat within 1 s, and checks every 250 ms).
  std::ifstream pids(state / "cluster.pids");
  pid_t cairnd_pid = -1;
  pids >> cairnd_pid >> agent_pid_;
  ASSERT_GT(agent_pid_, 0);
  ASSERT_EQ(::kill(agent_pid_, SIGSTOP), 0);
  const auto stopped = std::chrono::steady_clock::now();
  bool lost = false;
  for (int i = 0; i < 150 && !lost; ++i) {
    const nlohmann::json n = nodes_of();
    lost = n.is_object() && n["alive"] == false;
    if (!lost) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (std::chrono::steady_clock::now() - stopped > std::chrono::seconds(15)) break;
  }
  const auto after = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - stopped);
  ::kill(agent_pid_, SIGCONT);
  ASSERT_TRUE(lost) << "node still alive " << after.count() << " ms after its agent stopped";
  EXPECT_GE(after, std::chrono::milliseconds(1000));
  EXPECT_LT(after, std::chrono::milliseconds(4500)) << "the default 5 s timeout, not 1.5 s";
  auto events = Bin("cairn", {"--config", config_, "events"});
  EXPECT_THAT(events.output, HasSubstr("(timeout 1500 ms)")) << events.output;

  // log_level warn: cairnd wrote its warning about the lost node, but none of its info
  // lines (nor the agent its own).
  const std::string cairnd_log = ReadFile(state / "cairnd.log");
  EXPECT_THAT(cairnd_log, HasSubstr("lost: no heartbeat for")) << cairnd_log;
  EXPECT_THAT(cairnd_log, Not(HasSubstr("listening on"))) << cairnd_log;
  EXPECT_THAT(ReadFile(state / "agent-0.log"), Not(HasSubstr("registered")));
}

}  // namespace
}  // namespace cairn::testing
