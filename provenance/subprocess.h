// Running a helper program (git, nvidia-smi) and capturing what it prints.
//
// Promise: RunProcess starts argv[0] (looked up in PATH) with exactly the given argv (no
// shell), stdin from /dev/null, in its own process group, with the caller's environment
// plus the given overrides. It reads standard output and standard error to the end while
// the program runs, so a chatty program never blocks on a full pipe: the first
// max_stdout_bytes of stdout are kept and all of it is counted and hashed (SHA-256), so a
// caller can record the digest of an output too large to keep. A program that runs longer
// than the timeout is killed with its whole process group (kDeadlineExceeded). A program
// that does not exist is kNotFound; a non-zero exit is not an error here (the caller reads
// exit_code). checkpoint/keys.cc has a runner of its own for key commands (through
// /bin/sh, 4 KiB of output); this one is argv-based and streams large outputs.
//
// Threading: thread-safe; each call forks its own child.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "checkpoint/types.h"
#include "common/status.h"

namespace cairn::prov {

struct RunOptions {
  // "NAME=value" entries added to (or replacing those of) the inherited environment.
  std::vector<std::string> env;
  uint64_t max_stdout_bytes = 1 << 20;  // kept in RunResult::out; the rest is only hashed
  uint64_t max_stderr_bytes = 16 << 10;
  std::chrono::milliseconds timeout = std::chrono::seconds(60);
};

struct RunResult {
  int exit_code = -1;          // the exit status; -1 when a signal ended the program
  int term_signal = 0;         // the signal that ended it, or 0
  std::string out;             // the first max_stdout_bytes bytes of standard output
  uint64_t out_size = 0;       // all bytes written to standard output
  bool out_truncated = false;  // out_size > out.size()
  ckpt::Digest out_sha256{};   // SHA-256 of all of standard output
  std::string err;             // the first max_stderr_bytes bytes of standard error

  // The first line of stderr (for messages), or "exit status N" when stderr is empty.
  std::string ErrSummary() const;
};

Result<RunResult> RunProcess(std::span<const std::string> argv, const RunOptions& options = {});

}  // namespace cairn::prov
