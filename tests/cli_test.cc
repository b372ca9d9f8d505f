// The binaries' shared surface: --version, --help, config validation and bad usage.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/io.h"

#include "tests/process_util.h"

namespace cairn {
namespace {

using ::testing::HasSubstr;
using testing::BinDir;
using testing::RunCommand;

TEST(CliTest, EveryBinaryPrintsItsVersionAndHelp) {
  for (std::string bin : {"cairn", "cairnd", "cairn-agent"}) {
    auto v = RunCommand({BinDir() + "/" + bin, "--version"});
    EXPECT_EQ(v.exit_code, 0) << bin << ": " << v.output;
    EXPECT_THAT(v.output, HasSubstr(bin + " "));
    EXPECT_THAT(v.output, ::testing::MatchesRegex(bin + " [0-9a-z.+-]+\n"));
    auto h = RunCommand({BinDir() + "/" + bin, "--help"});
    EXPECT_EQ(h.exit_code, 0) << bin;
    EXPECT_THAT(h.output, HasSubstr("--log-level"));
  }
  auto h = RunCommand({BinDir() + "/cairn", "--help"});
  EXPECT_THAT(h.output, HasSubstr("ckpt"));
  EXPECT_THAT(h.output, HasSubstr("config"));
  auto ck = RunCommand({BinDir() + "/cairn", "ckpt", "--help"});
  for (const char* sub : {"keygen", "ls", "verify", "inspect", "export", "import", "rekey", "gc"}) {
    EXPECT_THAT(ck.output, HasSubstr(sub));
  }
}

TEST(CliTest, BadUsageExitsNonZeroWithAMessage) {
  auto r = RunCommand({BinDir() + "/cairn", "no-such-command"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("no-such-command"));
  auto lvl = RunCommand({BinDir() + "/cairn", "--log-level", "loud", "config", "show"});
  EXPECT_EQ(lvl.exit_code, 2);
  EXPECT_THAT(lvl.output, HasSubstr("unknown log level 'loud'"));
  // `cairn up` checks its durations before it starts anything.
  auto up = RunCommand({BinDir() + "/cairn", "up", "--state-dir", "/nonexistent/cairn-cli-test",
                        "--quarantine-time", "5parsecs"});
  EXPECT_EQ(up.exit_code, 2);
  EXPECT_THAT(up.output, HasSubstr("--quarantine-time: '5parsecs' has unknown duration unit"));
  EXPECT_FALSE(std::filesystem::exists("/nonexistent/cairn-cli-test"));
}

TEST(CliTest, ConfigIsValidatedWithFileLineAndKey) {
  auto path = std::filesystem::temp_directory_path() / "cairn_cli_test_config.yaml";
  std::ofstream(path) << "coordinator:\n  heartbeat_timeout: 3s\nagent:\n  cpu: 4\n";
  for (std::string bin : {"cairn", "cairnd", "cairn-agent"}) {
    std::vector<std::string> args = {BinDir() + "/" + bin, "--config", path.string()};
    if (bin == "cairn") args.insert(args.end(), {"config", "show"});
    else args.push_back("--check-config");
    auto r = RunCommand(args);
    EXPECT_EQ(r.exit_code, 2) << bin << ": " << r.output;
    EXPECT_THAT(r.output, HasSubstr(path.string() + ":4:3: unknown key 'agent.cpu'")) << bin;
  }
  std::ofstream(path) << "coordinator:\n  heartbeat_timeout: 3s\n";
  auto ok = RunCommand({BinDir() + "/cairnd", "--config", path.string(), "--check-config"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_THAT(ok.output, HasSubstr("heartbeat_timeout: 3000ms"));
  auto agent = RunCommand({BinDir() + "/cairn-agent", "--check-config"});
  EXPECT_EQ(agent.exit_code, 0);
  EXPECT_THAT(agent.output, HasSubstr("# detected: cpus="));
  std::filesystem::remove(path);
}

// `cairn submit --checkpoint-dir DIR` and the YAML key `checkpoint_dir` set the same spec
// field; a relative path is refused before anything reaches cairnd, naming the flag or the
// file, line and key.
TEST(CliTest, SubmitTakesTheCheckpointDirFromTheFlagOrTheYamlKey) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("cairn_cli_ckpt_" + io::RandomSuffix());
  fs::create_directories(dir);
  const std::string state = (dir / "state").string();
  struct Cleanup {
    std::function<void()> fn;
    ~Cleanup() { fn(); }
  } cleanup{[&] {
    testing::RunCairn(state, {"down"});
    std::error_code ec;
    fs::remove_all(dir, ec);
  }};

  // Refused without a cairnd: the state directory is never created.
  auto rel = testing::RunCairn(state, {"submit", "--checkpoint-dir", "runs/ckpt", "--", "/bin/true"});
  EXPECT_EQ(rel.exit_code, 2) << rel.output;
  EXPECT_THAT(rel.output, HasSubstr("--checkpoint-dir 'runs/ckpt' is not an absolute path"));
  const fs::path bad_yaml = dir / "bad.yaml";
  std::ofstream(bad_yaml) << "command: [/bin/true]\ncheckpoint_dir: runs/ckpt\n";
  auto yrel = testing::RunCairn(state, {"submit", "-f", bad_yaml.string()});
  EXPECT_EQ(yrel.exit_code, 2) << yrel.output;
  EXPECT_THAT(yrel.output, HasSubstr(bad_yaml.string() +
                                     ":2:17: key 'checkpoint_dir': 'runs/ckpt' is not an "
                                     "absolute path"));
  EXPECT_FALSE(fs::exists(state));

  // Accepted: the job's spec holds the directory (no agents: the jobs stay pending).
  auto up = testing::RunCairn(state, {"up", "--agents", "0"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  const std::string from_flag = (dir / "flag-ckpt").string();
  auto s1 = testing::RunCairn(state, {"submit", "--checkpoint-dir", from_flag, "--", "/bin/true"});
  const std::string id1 = testing::JobIdOf(s1);
  EXPECT_EQ(testing::JobStatus(state, id1)["spec"].value("checkpoint_dir", ""), from_flag);
  const std::string from_yaml = (dir / "yaml-ckpt").string();
  const fs::path good_yaml = dir / "good.yaml";
  std::ofstream(good_yaml) << "command: [/bin/true]\ncheckpoint_dir: " << from_yaml << "\n";
  auto s2 = testing::RunCairn(state, {"submit", "-f", good_yaml.string()});
  const std::string id2 = testing::JobIdOf(s2);
  EXPECT_EQ(testing::JobStatus(state, id2)["spec"].value("checkpoint_dir", ""), from_yaml);
}

}  // namespace
}  // namespace cairn
