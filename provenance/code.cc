#include "provenance/code.h"

#include <sys/stat.h>

#include <cerrno>
#include <functional>
#include <string_view>
#include <vector>

#include "checkpoint/crypto.h"
#include "common/subprocess.h"

namespace cairn::prov {
namespace {

std::string_view TrimNewline(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

class Git {
 public:
  Git(const std::string& workdir, const CodeOptions& options)
      : workdir_(workdir), options_(options) {}

  // Runs `git -C workdir args...`; keeps up to max_stdout bytes of its output and hands
  // all of it to `on_stdout` when given.
  Result<subprocess::RunResult> Run(
      std::vector<std::string> args, uint64_t max_stdout = 1 << 20,
      std::function<void(std::string_view)> on_stdout = nullptr) const {
    std::vector<std::string> argv = {options_.git, "-C", workdir_};
    argv.insert(argv.end(), args.begin(), args.end());
    subprocess::RunOptions ro;
    ro.env = {"LC_ALL=C", "GIT_OPTIONAL_LOCKS=0", "GIT_TERMINAL_PROMPT=0", "GIT_PAGER=cat"};
    ro.max_stdout_bytes = max_stdout;
    ro.timeout = options_.timeout;
    ro.on_stdout = std::move(on_stdout);
    return subprocess::RunProcess(argv, ro);
  }

  // Runs a command that must succeed; returns its output without the final newline.
  Result<std::string> Output(std::vector<std::string> args) const {
    const std::string what = "git " + args.front();
    CAIRN_ASSIGN_OR_RETURN(subprocess::RunResult r, Run(std::move(args)));
    if (r.exit_code != 0) {
      return MakeError(Code::kFailedPrecondition, "{} in {} failed: {}", what, workdir_,
                       r.ErrSummary());
    }
    return std::string(TrimNewline(r.out));
  }

  // Runs a command whose exit status 1 means "none" (an empty result).
  Result<std::string> OptionalOutput(std::vector<std::string> args) const {
    const std::string what = "git " + args.front();
    CAIRN_ASSIGN_OR_RETURN(subprocess::RunResult r, Run(std::move(args)));
    if (r.exit_code == 1) return std::string();
    if (r.exit_code != 0) {
      return MakeError(Code::kFailedPrecondition, "{} in {} failed: {}", what, workdir_,
                       r.ErrSummary());
    }
    return std::string(TrimNewline(r.out));
  }

 private:
  const std::string& workdir_;
  const CodeOptions& options_;
};

}  // namespace

Result<proto::CodeVersion> DescribeCode(const std::string& workdir, const CodeOptions& options) {
  struct stat st;
  if (::stat(workdir.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT) return MakeError(Code::kNotFound, "workdir {} does not exist", workdir);
    return ErrnoError(err, fmt::format("stat workdir {}", workdir));
  }
  if (!S_ISDIR(st.st_mode)) {
    return MakeError(Code::kInvalidArgument, "workdir {} is not a directory", workdir);
  }
  proto::CodeVersion cv;
  const Git git(workdir, options);

  auto probe = git.Run({"rev-parse", "--is-inside-work-tree"});
  if (!probe) {
    if (probe.error().code() != Code::kNotFound) return std::unexpected(probe.error());
    cv.set_note(fmt::format("git not found ({})", options.git));
    return cv;
  }
  if (probe->exit_code != 0) {
    if (probe->err.find("not a git repository") != std::string::npos) {
      cv.set_note("not a git repository");
      return cv;
    }
    return MakeError(Code::kFailedPrecondition, "git rev-parse in {} failed: {}", workdir,
                     probe->ErrSummary());
  }
  if (TrimNewline(probe->out) != "true") {
    cv.set_note("inside a git directory, not a work tree");
    return cv;
  }
  cv.set_is_git_repo(true);

  CAIRN_ASSIGN_OR_RETURN(std::string commit,
                         git.OptionalOutput({"rev-parse", "-q", "--verify", "HEAD^{commit}"}));
  cv.set_git_commit(commit);
  CAIRN_ASSIGN_OR_RETURN(std::string branch,
                         git.OptionalOutput({"symbolic-ref", "-q", "--short", "HEAD"}));
  cv.set_branch(branch);
  CAIRN_ASSIGN_OR_RETURN(std::string remote,
                         git.OptionalOutput({"config", "--get", "remote.origin.url"}));
  cv.set_remote(remote);

  std::string base = commit;
  if (base.empty()) {  // no commit yet: everything staged is a change against nothing
    CAIRN_ASSIGN_OR_RETURN(base, git.Output({"hash-object", "-t", "tree", "/dev/null"}));
  }
  // The digest covers the whole diff, also one too large to keep.
  ckpt::Sha256 diff_hash;
  CAIRN_ASSIGN_OR_RETURN(
      subprocess::RunResult diff,
      git.Run({"-c", "core.quotePath=true", "diff", base, "--binary", "--no-color",
               "--no-ext-diff", "--no-textconv", "--no-renames", "--no-relative", "--src-prefix=a/",
               "--dst-prefix=b/", "--"},
              options.max_diff_bytes, [&](std::string_view chunk) { diff_hash.Update(chunk); }));
  if (diff.exit_code != 0) {
    return MakeError(Code::kFailedPrecondition, "git diff in {} failed: {}", workdir,
                     diff.ErrSummary());
  }
  cv.set_diff_size(diff.out_size);
  const ckpt::Digest diff_sha256 = diff_hash.Finish();
  cv.set_diff_sha256(std::string(diff_sha256.begin(), diff_sha256.end()));
  cv.set_diff_too_large(diff.out_truncated);
  if (!diff.out_truncated) cv.set_diff(std::move(diff.out));

  // Without -z and with core.quotePath on, git C-quotes names with unusual bytes, so
  // every listed path is ASCII (a proto string must be valid UTF-8). ":/" and
  // --full-name: the whole work tree, relative to its top, from any subdirectory.
  CAIRN_ASSIGN_OR_RETURN(subprocess::RunResult untracked,
                         git.Run({"-c", "core.quotePath=true", "ls-files", "--others",
                                  "--exclude-standard", "--full-name", "--", ":/"},
                                 options.max_untracked_bytes));
  if (untracked.exit_code != 0) {
    return MakeError(Code::kFailedPrecondition, "git ls-files in {} failed: {}", workdir,
                     untracked.ErrSummary());
  }
  std::string_view names(untracked.out);
  while (!names.empty()) {
    const std::size_t nl = names.find('\n');
    if (nl == std::string_view::npos) break;  // cut off by the size limit
    cv.add_untracked(std::string(names.substr(0, nl)));
    names.remove_prefix(nl + 1);
  }
  if (untracked.out_truncated) {
    cv.set_note(fmt::format("untracked list cut at {} bytes of {} ({} paths kept)",
                            untracked.out.size(), untracked.out_size, cv.untracked_size()));
  }
  cv.set_dirty(diff.out_size > 0 || untracked.out_size > 0);
  return cv;
}

}  // namespace cairn::prov
