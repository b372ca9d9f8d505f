#include "common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <vector>

#include "common/app.h"
#include "common/io.h"
#include "common/log.h"
#include "common/yaml.h"

namespace cairn {
namespace {

using ::testing::HasSubstr;

TEST(ConfigTest, EmptyDocumentGivesDefaults) {
  auto c = ParseConfig("", "empty.yaml");
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  EXPECT_EQ(c->state_dir, "");  // CAIRN_STATE_DIR, else ~/.cairn
  EXPECT_EQ(c->log_level, "info");
  EXPECT_EQ(c->coordinator.listen, "127.0.0.1:0");
  EXPECT_EQ(c->coordinator.heartbeat_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c->coordinator.quarantine_time, std::chrono::minutes(10));
  EXPECT_EQ(c->agent.cpus, 0);
  EXPECT_EQ(c->agent.memory_bytes, 0u);
}

TEST(ConfigTest, ReadsEveryKey) {
  auto c = ParseConfig(R"(
state_dir: /var/lib/cairn
log_level: debug
coordinator:
  listen: 0.0.0.0:9000
  heartbeat_timeout: 2500ms
  quarantine_time: 0
agent:
  cpus: 16
  memory: 64GiB
)",
                       "full.yaml");
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  EXPECT_EQ(c->state_dir, "/var/lib/cairn");
  EXPECT_EQ(c->log_level, "debug");
  EXPECT_EQ(c->coordinator.listen, "0.0.0.0:9000");
  EXPECT_EQ(c->coordinator.heartbeat_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(c->coordinator.quarantine_time, std::chrono::milliseconds(0));
  EXPECT_EQ(c->agent.cpus, 16);
  EXPECT_EQ(c->agent.memory_bytes, 64ull << 30);
}

TEST(ConfigTest, RoundTripsThroughItsYaml) {
  Config c;
  c.state_dir = "/srv/cairn state";
  c.coordinator.listen = "[::1]:7070";
  c.coordinator.heartbeat_timeout = std::chrono::milliseconds(1500);
  c.coordinator.quarantine_time = std::chrono::hours(1);
  c.agent.cpus = 7;
  c.agent.memory_bytes = 3ull << 30;
  auto back = ParseConfig(ConfigToYaml(c), "dump.yaml");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(ConfigToYaml(*back), ConfigToYaml(c));
  EXPECT_EQ(back->coordinator.heartbeat_timeout, std::chrono::milliseconds(1500));
}

TEST(ConfigTest, UnknownKeyNamesFileLineAndKey) {
  auto c = ParseConfig("agent:\n  cpus: 3\n  cpu: 4\n", "c.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(c.error().ToString(),
            "c.yaml:3:3: unknown key 'agent.cpu' (known keys here: cpus, memory)");
}

// A document ParseConfig refuses, and what its error must say.
struct Refused {
  const char* yaml;
  const char* error;  // a substring of Error::ToString(), from "file:line:col:" on
};

void ExpectRefused(const std::vector<Refused>& cases, const char* file) {
  for (const auto& k : cases) {
    auto c = ParseConfig(k.yaml, file);
    ASSERT_FALSE(c.has_value()) << k.yaml;
    EXPECT_EQ(c.error().code(), Code::kInvalidArgument) << k.yaml;
    EXPECT_THAT(c.error().ToString(), HasSubstr(k.error));
  }
}

// Keys no binary read are gone: a file that still has one fails, naming it, instead of
// being silently half applied.
TEST(ConfigTest, RemovedKeysAreUnknown) {
  ExpectRefused(
      {
          {"checkpoint:\n  keep_last: 3\n", "r.yaml:1:1: unknown key 'checkpoint'"},
          {"coordinator:\n  max_frame_size: 4MiB\n",
           "r.yaml:2:3: unknown key 'coordinator.max_frame_size'"},
          {"agent:\n  coordinator: 10.0.0.1:7070\n", "r.yaml:2:3: unknown key 'agent.coordinator'"},
          {"agent:\n  heartbeat_interval: 1s\n",
           "r.yaml:2:3: unknown key 'agent.heartbeat_interval'"},
          {"agent:\n  grace_period: 30s\n", "r.yaml:2:3: unknown key 'agent.grace_period'"},
      },
      "r.yaml");
}

TEST(ConfigTest, WrongTypeNamesFileLineKeyAndValue) {
  ExpectRefused(
      {
          {"agent:\n  cpus: many\n", "t.yaml:2:9: key 'agent.cpus': expected an integer, got 'many'"},
          {"coordinator:\n  heartbeat_timeout: 5 parsecs\n",
           "t.yaml:2:22: key 'coordinator.heartbeat_timeout'"},
          {"agent: [1, 2]\n", "t.yaml:1:8: key 'agent': expected a map"},
          {"agent:\n  memory: lots\n", "t.yaml:2:11: key 'agent.memory'"},
      },
      "t.yaml");
}

// Values of the right type that break a rule: the same file:line:col and key.
TEST(ConfigTest, OutOfRangeValuesNameFileLineAndKey) {
  ExpectRefused(
      {
          {"coordinator:\n  heartbeat_timeout: 500ms\n",
           "v.yaml:2:22: key 'coordinator.heartbeat_timeout': 500 ms is below 1 s"},
          {"coordinator:\n  listen: localhost:7070\n",
           "v.yaml:2:11: key 'coordinator.listen': 'localhost:7070': host 'localhost' is not an "
           "IP address"},
          {"coordinator:\n  listen: 127.0.0.1:70000\n",
           "v.yaml:2:11: key 'coordinator.listen': '127.0.0.1:70000': port '70000' is not a "
           "number 0..65535"},
          {"coordinator:\n  listen: 7070\n",
           "v.yaml:2:11: key 'coordinator.listen': '7070' is not HOST:PORT"},
          {"agent:\n  cpus: -1\n", "v.yaml:2:9: key 'agent.cpus': -1 is outside 0..1048576"},
          {"agent:\n  cpus: 99999999999\n",
           "v.yaml:2:9: key 'agent.cpus': 99999999999 is out of range"},
          {"state_dir: var/lib/cairn\n",
           "v.yaml:1:12: key 'state_dir': 'var/lib/cairn' is not an absolute path"},
          {"log_level: loud\n", "v.yaml:1:12: key 'log_level': unknown log level 'loud'"},
      },
      "v.yaml");
}

TEST(ConfigTest, HostPort) {
  auto v4 = ParseHostPort("10.1.2.3:7070");
  ASSERT_TRUE(v4.has_value()) << v4.error().ToString();
  EXPECT_EQ(v4->host, "10.1.2.3");
  EXPECT_EQ(v4->port, 7070);
  auto v6 = ParseHostPort("[::1]:0");
  ASSERT_TRUE(v6.has_value()) << v6.error().ToString();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);
  auto bare6 = ParseHostPort("::1:65535");
  ASSERT_TRUE(bare6.has_value()) << bare6.error().ToString();
  EXPECT_EQ(bare6->host, "::1");
  EXPECT_EQ(bare6->port, 65535);
  for (const char* bad : {"", ":7070", "127.0.0.1:", "127.0.0.1:-1", "127.0.0.1:7070x",
                          "127.0.0.1:65536", "host.example:80", "1.2.3:80"}) {
    auto r = ParseHostPort(bad);
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument) << bad;
  }
}

TEST(ConfigTest, HeartbeatTimeoutCpusAndStateDirRules) {
  EXPECT_TRUE(CheckHeartbeatTimeout(std::chrono::seconds(1)).has_value());
  EXPECT_EQ(CheckHeartbeatTimeout(std::chrono::milliseconds(999)).error().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(CheckHeartbeatTimeout(std::chrono::milliseconds(0)).error().code(),
            Code::kInvalidArgument);
  EXPECT_TRUE(CheckCpus(0).has_value());
  EXPECT_TRUE(CheckCpus(1 << 20).has_value());
  EXPECT_EQ(CheckCpus((1 << 20) + 1).error().code(), Code::kInvalidArgument);
  EXPECT_TRUE(CheckStateDir("").has_value());
  EXPECT_TRUE(CheckStateDir("/x").has_value());
  EXPECT_EQ(CheckStateDir("~/x").error().code(), Code::kInvalidArgument);
}

TEST(ConfigTest, MissingRequiredKeyNamesTheMap) {
  auto root = yaml::ParseDocument("name: x\nresources:\n  cpus: 2\n", "job.yaml");
  ASSERT_TRUE(root.has_value());
  auto top = yaml::YamlMap::Of(*root, "job.yaml");
  ASSERT_TRUE(top.has_value());
  auto res = top->Child("resources");
  ASSERT_TRUE(res.has_value());
  int64_t gpus = 0;
  auto st = res->Required("gpus", &gpus);
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().ToString(), "job.yaml:3:3: missing required key 'resources.gpus'");
}

TEST(ConfigTest, MalformedYamlNamesFileAndLine) {
  auto c = ParseConfig("coordinator:\n  listen: [unclosed\nagent: {}\n", "bad.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(c.error().ToString(), HasSubstr("bad.yaml:"));
  EXPECT_THAT(c.error().ToString(), HasSubstr("malformed YAML"));
}

TEST(ConfigTest, LoadFileReportsMissingFileAndPath) {
  auto c = LoadConfig("/nonexistent/cairn.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), Code::kNotFound);
  EXPECT_THAT(c.error().ToString(), HasSubstr("/nonexistent/cairn.yaml"));

  auto dir = std::filesystem::temp_directory_path() / "cairn_config_test.yaml";
  std::ofstream(dir) << "agent:\n  cpus: x\n";
  auto d = LoadConfig(dir.string());
  std::filesystem::remove(dir);
  ASSERT_FALSE(d.has_value());
  EXPECT_THAT(d.error().ToString(), HasSubstr(dir.string() + ":2:9: key 'agent.cpus'"));
}

TEST(ConfigTest, DurationsAndSizes) {
  EXPECT_EQ(*yaml::ParseDuration("250ms"), std::chrono::milliseconds(250));
  EXPECT_EQ(*yaml::ParseDuration("3"), std::chrono::seconds(3));
  EXPECT_EQ(*yaml::ParseDuration("1h"), std::chrono::hours(1));
  EXPECT_FALSE(yaml::ParseDuration("-1s").has_value());
  EXPECT_FALSE(yaml::ParseDuration("5 s").has_value());
  EXPECT_EQ(*yaml::ParseByteSize("2GiB"), 2ull << 30);
  EXPECT_EQ(*yaml::ParseByteSize("10MB"), 10'000'000u);
  EXPECT_FALSE(yaml::ParseByteSize("99999999999999999999").has_value());
  EXPECT_FALSE(yaml::ParseByteSize("1ZiB").has_value());
}


// Sets (or, with nullopt, unsets) an environment variable for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, std::optional<std::string> value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value->c_str(), 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// Config files in a temporary directory, removed at the end of the test.
class EffectiveConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("cairn_config_test_" + io::RandomSuffix());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& text) {
    const auto path = dir_ / name;
    std::ofstream(path) << text;
    return path.string();
  }
  std::filesystem::path dir_;
};

// --config FILE, else $CAIRN_CONFIG, else built-in defaults; --log-level over the file.
TEST_F(EffectiveConfigTest, ConfigFlagOverEnvironmentOverDefaults) {
  const std::string a = Write("a.yaml", "log_level: warn\ncoordinator:\n  heartbeat_timeout: 2s\n");
  const std::string b = Write("b.yaml", "coordinator:\n  heartbeat_timeout: 3s\n");
  {
    ScopedEnv env("CAIRN_CONFIG", std::nullopt);
    auto c = LoadEffectiveConfig(StandardFlags{});
    ASSERT_TRUE(c.has_value()) << c.error().ToString();
    EXPECT_EQ(c->coordinator.heartbeat_timeout, std::chrono::seconds(5));
    EXPECT_EQ(ConfigFilePath(StandardFlags{}), "");
  }
  {
    ScopedEnv env("CAIRN_CONFIG", "");  // empty: as if unset
    auto c = LoadEffectiveConfig(StandardFlags{});
    ASSERT_TRUE(c.has_value()) << c.error().ToString();
    EXPECT_EQ(c->coordinator.heartbeat_timeout, std::chrono::seconds(5));
  }
  ScopedEnv env("CAIRN_CONFIG", a);
  auto from_env = LoadEffectiveConfig(StandardFlags{});
  ASSERT_TRUE(from_env.has_value()) << from_env.error().ToString();
  EXPECT_EQ(from_env->coordinator.heartbeat_timeout, std::chrono::seconds(2));
  EXPECT_EQ(from_env->log_level, "warn");

  StandardFlags flags;
  flags.config_path = b;
  EXPECT_EQ(ConfigFilePath(flags), b);
  auto from_flag = LoadEffectiveConfig(flags);
  ASSERT_TRUE(from_flag.has_value()) << from_flag.error().ToString();
  EXPECT_EQ(from_flag->coordinator.heartbeat_timeout, std::chrono::seconds(3));
  EXPECT_EQ(from_flag->log_level, "info");  // b.yaml does not set it; a.yaml is not read

  StandardFlags level;
  level.log_level = "debug";
  auto over = LoadEffectiveConfig(level);
  ASSERT_TRUE(over.has_value()) << over.error().ToString();
  EXPECT_EQ(over->log_level, "debug");  // --log-level over a.yaml's warn
  EXPECT_EQ(over->coordinator.heartbeat_timeout, std::chrono::seconds(2));
  ASSERT_TRUE(log::SetLevel("info").has_value());
}

// A config file that is named but missing or bad is an error, never the defaults.
TEST_F(EffectiveConfigTest, NamedFileThatIsMissingOrBadFails) {
  ScopedEnv env("CAIRN_CONFIG", (dir_ / "missing.yaml").string());
  auto missing = LoadEffectiveConfig(StandardFlags{});
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_THAT(missing.error().ToString(), HasSubstr((dir_ / "missing.yaml").string()));

  StandardFlags flags;
  flags.config_path = Write("bad.yaml", "coordinator:\n  heartbeat_timeout: 100ms\n");
  auto bad = LoadEffectiveConfig(flags);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(bad.error().ToString(),
              HasSubstr(flags.config_path + ":2:22: key 'coordinator.heartbeat_timeout'"));
}

}  // namespace
}  // namespace cairn
