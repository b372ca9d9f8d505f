// The code version of a job: which commit of which repository, and what was changed on
// top of it, for the job's working directory.
//
// Promise: DescribeCode runs git (argv, never a shell; LC_ALL=C, GIT_OPTIONAL_LOCKS=0 so
// that it never takes the index lock of a repository in use) and records
//   git_commit  `git rev-parse --verify HEAD` (empty in a repository without commits)
//   branch      `git symbolic-ref --short HEAD` (empty when HEAD is detached)
//   remote      `git config --get remote.origin.url` (empty without an origin)
//   diff        `git diff HEAD --binary` (staged and unstaged changes to tracked files,
//               against the empty tree when there is no commit yet), with options fixed so
//               that the bytes do not depend on the user's git configuration: no colour,
//               no external diff or textconv, no rename detection, a/ and b/ prefixes,
//               paths from the top of the work tree even when workdir is below it
//   diff_size, diff_sha256  over the whole diff, always
//   diff_too_large  the diff exceeded max_diff_bytes: `diff` is left empty, size and
//               digest are still those of the whole diff
//   untracked   `git ls-files --others --exclude-standard` over the whole work tree:
//               paths from its top (not contents), C-quoted by git when they hold
//               unusual bytes (core.quotePath)
//   dirty       a non-empty diff or any untracked file
// A directory that is not in a git work tree, or a machine without git, yields a record
// with is_git_repo = false and a note saying why: not an error. (The note also says when
// the untracked list was cut at max_untracked_bytes.) Errors: a missing or
// non-directory workdir (kNotFound / kInvalidArgument); git failing inside a repository
// (for example "dubious ownership") is kFailedPrecondition with git's message; git
// hanging past the timeout is kDeadlineExceeded.
//
// Threading: thread-safe (each call runs its own git processes).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/status.h"
#include "proto/cairn.pb.h"

namespace cairn::prov {

struct CodeOptions {
  uint64_t max_diff_bytes = 64ull << 20;
  uint64_t max_untracked_bytes = 16ull << 20;  // of NUL-separated untracked paths
  std::chrono::milliseconds timeout = std::chrono::seconds(120);  // per git command
  std::string git = "git";                                        // looked up in PATH
};

Result<proto::CodeVersion> DescribeCode(const std::string& workdir,
                                        const CodeOptions& options = {});

}  // namespace cairn::prov
