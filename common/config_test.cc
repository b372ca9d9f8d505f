#include "common/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/yaml.h"

namespace cairn {
namespace {

using ::testing::HasSubstr;

TEST(ConfigTest, EmptyDocumentGivesDefaults) {
  auto c = ParseConfig("", "empty.yaml");
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  EXPECT_EQ(c->coordinator.heartbeat_timeout, std::chrono::seconds(5));
  EXPECT_EQ(c->checkpoint.chunk_size, 1u << 20);
}

TEST(ConfigTest, ReadsEveryTypedField) {
  auto c = ParseConfig(R"(
state_dir: /var/lib/cairn
log_level: debug
coordinator:
  listen: 0.0.0.0:9000
  heartbeat_timeout: 2500ms
  max_frame_size: 4MiB
agent:
  cpus: 16
  memory: 64GiB
  heartbeat_interval: 1s
  grace_period: 2m
checkpoint:
  key_file: /etc/cairn/key
  chunk_size: 256KiB
  max_inflight: 3
  keep_last: 5
  keep_every: 1000
)",
                       "full.yaml");
  ASSERT_TRUE(c.has_value()) << c.error().ToString();
  EXPECT_EQ(c->state_dir, "/var/lib/cairn");
  EXPECT_EQ(c->coordinator.listen, "0.0.0.0:9000");
  EXPECT_EQ(c->coordinator.heartbeat_timeout, std::chrono::milliseconds(2500));
  EXPECT_EQ(c->coordinator.max_frame_bytes, 4u << 20);
  EXPECT_EQ(c->agent.cpus, 16);
  EXPECT_EQ(c->agent.memory_bytes, 64ull << 30);
  EXPECT_EQ(c->agent.grace_period, std::chrono::minutes(2));
  EXPECT_EQ(c->checkpoint.chunk_size, 256u << 10);
  EXPECT_EQ(c->checkpoint.keep_every, 1000);
}

TEST(ConfigTest, RoundTripsThroughItsYaml) {
  Config c;
  c.agent.cpus = 7;
  c.checkpoint.keep_every = 50;
  auto back = ParseConfig(ConfigToYaml(c), "dump.yaml");
  ASSERT_TRUE(back.has_value()) << back.error().ToString();
  EXPECT_EQ(ConfigToYaml(*back), ConfigToYaml(c));
}

TEST(ConfigTest, UnknownKeyNamesFileLineAndKey) {
  auto c = ParseConfig("checkpoint:\n  keep_last: 3\n  keep_lats: 4\n", "c.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(c.error().ToString(), HasSubstr("c.yaml:3:3: unknown key 'checkpoint.keep_lats'"));
  EXPECT_THAT(c.error().ToString(), HasSubstr("keep_last"));  // lists the known keys
}

TEST(ConfigTest, WrongTypeNamesFileLineKeyAndValue) {
  auto c = ParseConfig("agent:\n  cpus: many\n", "c.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().ToString(),
            "c.yaml:2:9: key 'agent.cpus': expected an integer, got 'many'");
  auto d = ParseConfig("coordinator:\n  heartbeat_timeout: 5 parsecs\n", "d.yaml");
  ASSERT_FALSE(d.has_value());
  EXPECT_THAT(d.error().ToString(), HasSubstr("d.yaml:2:22: key 'coordinator.heartbeat_timeout'"));
  auto e = ParseConfig("checkpoint: [1, 2]\n", "e.yaml");
  ASSERT_FALSE(e.has_value());
  EXPECT_THAT(e.error().ToString(), HasSubstr("e.yaml:1:13: key 'checkpoint': expected a map"));
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

TEST(ConfigTest, OutOfRangeValuesAreRejected) {
  auto c = ParseConfig("checkpoint:\n  chunk_size: 1KiB\n", "c.yaml");
  ASSERT_FALSE(c.has_value());
  EXPECT_THAT(c.error().ToString(), HasSubstr("checkpoint.chunk_size"));
  auto d = ParseConfig("agent:\n  cpus: 99999999999\n", "d.yaml");
  ASSERT_FALSE(d.has_value());
  EXPECT_THAT(d.error().ToString(), HasSubstr("out of range"));
  auto e = ParseConfig("log_level: loud\n", "e.yaml");
  ASSERT_FALSE(e.has_value());
  EXPECT_THAT(e.error().ToString(), HasSubstr("unknown log level 'loud'"));
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

}  // namespace
}  // namespace cairn
