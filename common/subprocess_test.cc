#include "common/subprocess.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace cairn::subprocess {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

Result<RunResult> Sh(const std::string& script, const RunOptions& options = {}) {
  const std::vector<std::string> argv = {"/bin/sh", "-c", script};
  return RunProcess(argv, options);
}

TEST(SubprocessTest, CapturesOutputExitStatusAndEveryByteBeyondTheLimit) {
  RunOptions opts;
  opts.max_stdout_bytes = 5;
  std::string streamed;
  opts.on_stdout = [&](std::string_view chunk) { streamed.append(chunk); };
  auto r = Sh("printf 'hello world'; echo oops >&2; exit 3", opts);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->term_signal, 0);
  EXPECT_EQ(r->out, "hello");
  EXPECT_EQ(r->out_size, 11u);
  EXPECT_TRUE(r->out_truncated);
  EXPECT_EQ(streamed, "hello world");
  EXPECT_EQ(r->err, "oops\n");
  EXPECT_FALSE(r->err_truncated);
  EXPECT_EQ(r->ErrFirstLine(), "oops");
  EXPECT_EQ(r->ErrSummary(), "oops");
}

TEST(SubprocessTest, LargeOutputOnBothStreamsNeverBlocks) {
  RunOptions opts;
  opts.max_stdout_bytes = 1 << 10;
  opts.max_stderr_bytes = 100;
  uint64_t streamed = 0;
  opts.on_stdout = [&](std::string_view chunk) { streamed += chunk.size(); };
  // 4 MiB on each stream, far more than a pipe holds.
  auto r = Sh("head -c 4194304 /dev/zero; head -c 4194304 /dev/zero >&2", opts);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->out.size(), 1024u);
  EXPECT_EQ(r->out_size, 4194304u);
  EXPECT_EQ(streamed, 4194304u);
  EXPECT_EQ(r->err.size(), 100u);
  EXPECT_TRUE(r->err_truncated);
}

TEST(SubprocessTest, SignalAndBlankStderrAreSummarised) {
  auto killed = Sh("kill -9 $$");
  ASSERT_TRUE(killed.has_value()) << killed.error().ToString();
  EXPECT_EQ(killed->exit_code, -1);
  EXPECT_EQ(killed->term_signal, SIGKILL);
  EXPECT_EQ(killed->ErrSummary(), "killed by signal 9");

  auto blank = Sh("printf '\\n  \\n  first line \\r\\nsecond\\n' >&2; exit 4");
  ASSERT_TRUE(blank.has_value());
  EXPECT_EQ(blank->ErrFirstLine(), "first line");
  auto quiet = Sh("exit 4");
  ASSERT_TRUE(quiet.has_value());
  EXPECT_EQ(quiet->ErrFirstLine(), "");
  EXPECT_EQ(quiet->ErrSummary(), "exit status 4");
}

TEST(SubprocessTest, EnvironmentOverridesReplaceInheritedValues) {
  ASSERT_EQ(::setenv("CAIRN_SUBPROCESS_TEST_A", "inherited", 1), 0);
  ASSERT_EQ(::setenv("CAIRN_SUBPROCESS_TEST_B", "kept", 1), 0);
  RunOptions opts;
  opts.env = {"CAIRN_SUBPROCESS_TEST_A=replaced", "CAIRN_SUBPROCESS_TEST_C=added"};
  auto r = Sh("env | grep '^CAIRN_SUBPROCESS_TEST_' | sort", opts);
  ::unsetenv("CAIRN_SUBPROCESS_TEST_A");
  ::unsetenv("CAIRN_SUBPROCESS_TEST_B");
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->out,
            "CAIRN_SUBPROCESS_TEST_A=replaced\nCAIRN_SUBPROCESS_TEST_B=kept\n"
            "CAIRN_SUBPROCESS_TEST_C=added\n");
}

TEST(SubprocessTest, ProgramStartsWithDefaultSignalsInItsOwnProcessGroup) {
  // The caller ignores SIGPIPE and blocks SIGUSR1; the program must not inherit either.
  struct sigaction ignore {}, old_pipe {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGPIPE, &ignore, &old_pipe), 0);
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &usr1, &old_mask), 0);
  // SigIgn and SigBlk of /proc/self/status are hex masks; bit 12 is SIGPIPE (13),
  // bit 9 is SIGUSR1 (10). And the process group is the program's own pid.
  auto r = Sh("grep -E '^(SigIgn|SigBlk):' /proc/self/status; "
              "echo pgid=$(ps -o pgid= -p $$ | tr -d ' ') pid=$$");
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  ::sigaction(SIGPIPE, &old_pipe, nullptr);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  ASSERT_EQ(r->exit_code, 0) << r->err;
  EXPECT_THAT(r->out, HasSubstr("SigBlk:\t0000000000000000\n")) << r->out;
  const auto ign = r->out.find("SigIgn:\t");
  ASSERT_NE(ign, std::string::npos) << r->out;
  const unsigned long long ignored = std::stoull(r->out.substr(ign + 8, 16), nullptr, 16);
  EXPECT_EQ(ignored & (1ull << 12), 0u) << r->out;
  const auto pgid = r->out.find("pgid=");
  ASSERT_NE(pgid, std::string::npos);
  const std::string ids = r->out.substr(pgid);
  const std::string group = ids.substr(5, ids.find(' ') - 5);
  EXPECT_EQ("pid=" + group + "\n", ids.substr(ids.find(' ') + 1)) << ids;
}

TEST(SubprocessTest, MissingProgramIsNotFoundAndErrorsUseTheGivenName) {
  const std::vector<std::string> missing = {"cairn-no-such-program-here"};
  auto r = RunProcess(missing);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kNotFound);
  EXPECT_THAT(r.error().ToString(), HasSubstr("cairn-no-such-program-here not found"));

  RunOptions opts;
  opts.timeout = std::chrono::milliseconds(200);
  opts.name = "helper `x`";
  auto named = Sh("sleep 30", opts);
  ASSERT_FALSE(named.has_value());
  EXPECT_THAT(named.error().ToString(), StartsWith("helper `x` did not finish within 200 ms"));
}

TEST(SubprocessTest, TimeoutKillsTheWholeProcessGroup) {
  RunOptions opts;
  opts.timeout = std::chrono::milliseconds(300);
  const auto t0 = std::chrono::steady_clock::now();
  // A background child keeps the pipes open after the shell itself would be gone.
  const std::string pid_file =
      fmt::format("{}/cairn-subprocess-test-{}.pid", ::testing::TempDir(), ::getpid());
  auto h = Sh(fmt::format("sleep 30 & echo $! > {}; sleep 30", pid_file), opts);
  ASSERT_FALSE(h.has_value());
  EXPECT_EQ(h.error().code(), Code::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  // The background sleep went with the group (gone, or a zombie until init reaps it).
  std::ifstream in(pid_file);
  pid_t background = 0;
  in >> background;
  std::remove(pid_file.c_str());
  ASSERT_GT(background, 0);
  bool gone = false;
  for (int i = 0; i < 200 && !gone; ++i) {
    std::ifstream stat(fmt::format("/proc/{}/stat", background));
    std::string line;
    std::getline(stat, line);
    const auto paren = line.rfind(')');
    gone = !stat.is_open() || line.empty() ||
           (paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z');
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(gone) << "pid " << background << " still runs";

  // A program that closes its output but keeps running is still bounded.
  const auto t1 = std::chrono::steady_clock::now();
  auto closed = Sh("exec >&- 2>&-; sleep 30", opts);
  ASSERT_FALSE(closed.has_value());
  EXPECT_EQ(closed.error().code(), Code::kDeadlineExceeded);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(5));
}

TEST(SubprocessTest, SecretOutputIsKeptWhole) {
  RunOptions opts;
  opts.secret_output = true;
  opts.max_stdout_bytes = 4096;
  auto r = Sh("printf 'secret text'", opts);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->out, "secret text");
  // One allocation for all that may be kept: appending never moved the bytes.
  EXPECT_GE(r->out.capacity(), 4096u);

  opts.max_stdout_bytes = 8;
  auto cut = Sh("printf 'more than eight bytes'", opts);
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ(cut->out, "more tha");
  EXPECT_TRUE(cut->out_truncated);
}

}  // namespace
}  // namespace cairn::subprocess
