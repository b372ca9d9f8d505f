// Running a helper program (git, nvidia-smi, a SLURM client, a key management command)
// and capturing what it prints: cairn's one child-process runner.
//
// Promise: RunProcess starts argv[0] (looked up in PATH unless it contains a '/') with
// exactly the given argv (no shell), stdin from /dev/null, in its own process group,
// with SIGPIPE and SIGCHLD at their defaults and no signal blocked, and with the caller's
// environment plus the given overrides. It reads standard output and standard error to
// the end while the program runs, so a chatty program never blocks on a full pipe: the
// first max_stdout_bytes of stdout (max_stderr_bytes of stderr) are kept, all of stdout
// is counted and, when on_stdout is set, handed to it chunk by chunk in order (to hash an
// output too large to keep). The whole call is bounded by the timeout, the wait for the
// exit after the program closed its output included: a program still running then is
// killed with its whole process group (kDeadlineExceeded). A program that does not exist
// is kNotFound; a non-zero exit or a signal is not an error here (the caller reads
// exit_code and term_signal). Errors name the program by RunOptions::name, else by its
// argv.
//
// Secret output (RunOptions::secret_output, for key material): every buffer that held
// standard output is wiped before it is freed, on every path, and RunResult::out is
// allocated once (it never reallocates, so no unwiped copy is left in freed memory); the
// caller wipes RunResult::out once it is done with it.
//
// Threading: thread-safe; each call spawns its own child and blocks until it is reaped.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::subprocess {

struct RunOptions {
  // "NAME=value" entries added to (or replacing those of) the inherited environment.
  std::vector<std::string> env;
  uint64_t max_stdout_bytes = 1 << 20;  // kept in RunResult::out; the rest is only counted
  uint64_t max_stderr_bytes = 16 << 10;
  std::chrono::milliseconds timeout = std::chrono::seconds(60);
  // Called on the calling thread with every chunk of standard output, all of it.
  std::function<void(std::string_view)> on_stdout;
  // Standard output is secret: see above.
  bool secret_output = false;
  // Names the program in errors ("key command `...`"); empty: "`argv...`".
  std::string name;
};

struct RunResult {
  int exit_code = -1;          // the exit status; -1 when a signal ended the program
  int term_signal = 0;         // the signal that ended it, or 0
  std::string out;             // the first max_stdout_bytes bytes of standard output
  uint64_t out_size = 0;       // all bytes written to standard output
  bool out_truncated = false;  // out_size > out.size()
  std::string err;             // the first max_stderr_bytes bytes of standard error
  bool err_truncated = false;  // standard error had more than max_stderr_bytes bytes

  // The first line of stderr that is not blank, trimmed; "" when there is none.
  std::string ErrFirstLine() const;
  // ErrFirstLine(), or "killed by signal N" / "exit status N" when stderr is blank.
  std::string ErrSummary() const;
};

Result<RunResult> RunProcess(std::span<const std::string> argv, const RunOptions& options = {});

}  // namespace cairn::subprocess
