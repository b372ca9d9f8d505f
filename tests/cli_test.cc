// The binaries' shared surface: --version, --help, config validation and bad usage.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

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

}  // namespace
}  // namespace cairn
