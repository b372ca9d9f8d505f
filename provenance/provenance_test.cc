#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "checkpoint/crypto.h"
#include "common/subprocess.h"
#include "provenance/attestation.h"
#include "provenance/code.h"
#include "provenance/digest.h"
#include "provenance/dsse.h"
#include "provenance/environment.h"
#include "provenance/record.h"

namespace cairn::prov {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "cairn-prov-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

void WriteFile(const std::string& path, std::string_view data) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(f.good()) << path;
}

struct timespec MtimeOf(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mtim;
}

// Sets the file's mtime (its ctime becomes now, as after any change).
void SetMtime(const std::string& path, struct timespec mtime) {
  const struct timespec times[2] = {{0, UTIME_OMIT}, mtime};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0) << path;
}

Digest Sha(std::string_view s) {
  return ckpt::Sha256Of(std::as_bytes(std::span(s.data(), s.size())));
}
std::string Hex(const Digest& d) { return ckpt::ToHex(d); }

std::string FromHex(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

subprocess::RunResult Sh(const std::string& script) {
  const std::vector<std::string> argv = {"/bin/sh", "-c", script};
  subprocess::RunOptions opts;
  opts.max_stdout_bytes = 64 << 20;
  auto r = subprocess::RunProcess(argv, opts);
  EXPECT_TRUE(r.has_value()) << r.error().ToString();
  EXPECT_EQ(r->exit_code, 0) << script << ": " << r->err;
  return *r;
}

// --- digest: files and manifests ---------------------------------------------------------

TEST(DigestTest, FileDigestIsSha256OfItsBytes) {
  TempDir tmp;
  WriteFile(tmp / "abc", "abc");
  WriteFile(tmp / "empty", "");
  auto abc = Sha256File(tmp / "abc");
  ASSERT_TRUE(abc.has_value()) << abc.error().ToString();
  EXPECT_EQ(Hex(*abc), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto empty = Sha256File(tmp / "empty");
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(Hex(*empty), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

  // Larger than several reads, not a multiple of the read size.
  std::string big((3 << 20) + 17, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 2654435761u >> 24);
  WriteFile(tmp / "big", big);
  auto b = Sha256File(tmp / "big", 1 << 20);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(*b, Sha(big));
}

TEST(DigestTest, ErrorsNameTheFile) {
  TempDir tmp;
  InputHasher hasher;
  auto missing = hasher.Hash(tmp / "nope");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_THAT(missing.error().ToString(), HasSubstr(tmp / "nope"));

  auto f = Sha256File(tmp / "nope");
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), Code::kNotFound);
  EXPECT_THAT(f.error().ToString(), HasSubstr(tmp / "nope"));

  ASSERT_EQ(::mkfifo((tmp / "fifo").c_str(), 0600), 0);
  auto fifo = hasher.Hash(tmp / "fifo");
  ASSERT_FALSE(fifo.has_value());
  EXPECT_EQ(fifo.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(fifo.error().ToString(), HasSubstr("FIFO"));

  // A FIFO inside a tree is named too.
  WriteFile(tmp / "tree/a", "a");
  ASSERT_EQ(::mkfifo((tmp / "tree/pipe").c_str(), 0600), 0);
  auto tree = hasher.Hash(tmp / "tree");
  ASSERT_FALSE(tree.has_value());
  EXPECT_EQ(tree.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(tree.error().ToString(), HasSubstr(tmp / "tree/pipe"));
}

TEST(DigestTest, DirectoryManifestIsSortedBytewiseAndMatchesSha256sum) {
  TempDir tmp;
  const std::string root = tmp / "data";
  WriteFile(root + "/b.txt", "bee\n");
  WriteFile(root + "/a/x.bin", std::string(1000, '\x07'));
  WriteFile(root + "/a.b", "dot");    // '.' (0x2e) sorts before '/' (0x2f): "a.b" < "a/x.bin"
  WriteFile(root + "/B", "capital");  // 'B' (0x42) before 'a' (0x61)
  WriteFile(root + "/with space", "s");
  WriteFile(root + "/back\\slash", "bs");
  WriteFile(root + "/new\nline", "nl");
  WriteFile(root + "/caf\xc3\xa9", "utf8");
  fs::create_directories(root + "/empty/dir");  // empty directories do not appear
  fs::create_symlink("a/x.bin", root + "/link-to-x");
  fs::create_directory_symlink("a", root + "/link-to-a");

  InputHasher hasher;
  auto td = hasher.Hash(root);
  ASSERT_TRUE(td.has_value()) << td.error().ToString();
  EXPECT_TRUE(td->is_dir);
  std::vector<std::string> paths;
  for (const auto& f : td->files) paths.push_back(f.path);
  EXPECT_THAT(paths, ElementsAre("B", "a.b", "a/x.bin", "b.txt", "back\\slash", "caf\xc3\xa9",
                                 "link-to-a/x.bin", "link-to-x", "new\nline", "with space"));
  EXPECT_EQ(td->files[2].sha256, Sha(std::string(1000, '\x07')));
  EXPECT_EQ(td->files[6].sha256, td->files[2].sha256);  // links count as their target
  EXPECT_EQ(td->files[7].sha256, td->files[2].sha256);
  EXPECT_EQ(td->size_bytes, 7u + 3 + 1000 + 4 + 2 + 4 + 1000 + 1000 + 2 + 1);

  const std::string manifest = FormatManifest(td->files);
  EXPECT_EQ(td->sha256, Sha(manifest));
  EXPECT_THAT(manifest, HasSubstr(Hex(Sha("dot")) + "  a.b\n"));
  EXPECT_THAT(manifest, HasSubstr("\\" + Hex(Sha("bs")) + "  back\\\\slash\n"));
  EXPECT_THAT(manifest, HasSubstr("\\" + Hex(Sha("nl")) + "  new\\nline\n"));

  // The documented shell pipeline gives the same manifest, byte for byte.
  const subprocess::RunResult r = Sh("cd '" + root +
                         "' && find -L . -type f -printf '%P\\0' | LC_ALL=C sort -z | "
                         "xargs -0 sha256sum");
  EXPECT_EQ(r.out, manifest);

  // An empty directory is the digest of an empty manifest.
  auto empty = hasher.Hash(root + "/empty");
  ASSERT_TRUE(empty.has_value());
  EXPECT_TRUE(empty->files.empty());
  EXPECT_EQ(empty->sha256, Sha(""));

  // A single file input: its own digest, listed under its name.
  auto file = hasher.Hash(root + "/b.txt");
  ASSERT_TRUE(file.has_value());
  EXPECT_FALSE(file->is_dir);
  EXPECT_EQ(file->sha256, Sha("bee\n"));
  ASSERT_EQ(file->files.size(), 1u);
  EXPECT_EQ(file->files[0].path, "b.txt");
}

TEST(DigestTest, SymlinksLeavingTheTreeDanglingOrCyclingAreRefused) {
  TempDir tmp;
  WriteFile(tmp / "outside", "secret");
  WriteFile(tmp / "t1/ok", "ok");
  fs::create_symlink(tmp / "outside", tmp / "t1/escape");
  InputHasher hasher;
  auto escape = hasher.Hash(tmp / "t1");
  ASSERT_FALSE(escape.has_value());
  EXPECT_EQ(escape.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(escape.error().ToString(), HasSubstr(tmp / "t1/escape"));
  EXPECT_THAT(escape.error().ToString(), HasSubstr("outside"));

  fs::create_directories(tmp / "t2");
  fs::create_symlink("missing", tmp / "t2/dangling");
  auto dangling = hasher.Hash(tmp / "t2");
  ASSERT_FALSE(dangling.has_value());
  EXPECT_EQ(dangling.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(dangling.error().ToString(), HasSubstr("dangles"));

  WriteFile(tmp / "t3/sub/f", "f");
  fs::create_directory_symlink("..", tmp / "t3/sub/up");
  auto cycle = hasher.Hash(tmp / "t3");
  ASSERT_FALSE(cycle.has_value());
  EXPECT_EQ(cycle.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(cycle.error().ToString(), HasSubstr("cycle"));

  // A root given as a link is resolved first.
  fs::create_directory_symlink(tmp / "t1", tmp / "root-link");
  fs::remove(tmp / "t1/escape");
  auto via_link = hasher.Hash(tmp / "root-link");
  ASSERT_TRUE(via_link.has_value()) << via_link.error().ToString();
  ASSERT_EQ(via_link->files.size(), 1u);
  EXPECT_EQ(via_link->files[0].path, "ok");
}

TEST(DigestTest, ParallelAndSerialHashingAgree) {
  TempDir tmp;
  for (int i = 0; i < 40; ++i) {
    WriteFile(tmp / fmt::format("d/f{:02}", i),
              std::string(static_cast<std::size_t>(i) * 5000, static_cast<char>('a' + i % 26)));
  }
  WriteFile(tmp / "single", "one");
  const std::vector<std::string> inputs = {tmp / "d", tmp / "single", tmp / "d"};
  InputHasher serial(HashOptions{.threads = 1});
  InputHasher parallel(HashOptions{.threads = 4, .read_bytes = 4096});
  auto a = serial.HashAll(inputs);
  auto b = parallel.HashAll(inputs);
  ASSERT_TRUE(a.has_value() && b.has_value());
  ASSERT_EQ(a->size(), 3u);
  for (std::size_t i = 0; i < a->size(); ++i) {
    EXPECT_EQ((*a)[i].sha256, (*b)[i].sha256);
    EXPECT_EQ((*a)[i].files.size(), (*b)[i].files.size());
  }
  EXPECT_EQ((*a)[0].sha256, (*a)[2].sha256);
  EXPECT_EQ((*a)[1].sha256, Sha("one"));
  // The same file named twice is hashed once.
  EXPECT_EQ(parallel.stats().files, 81u);
  EXPECT_EQ(parallel.stats().files_hashed, 41u);
}

// --- digest: the cache -------------------------------------------------------------------

HashOptions CacheOptions(const std::string& dir) {
  HashOptions o;
  o.cache_dir = dir;
  o.racy_window = std::chrono::nanoseconds(0);  // files written by the test are cacheable
  return o;
}

TEST(DigestCacheTest, RerunUsesCacheAndEveryKindOfChangeRehashes) {
  TempDir tmp;
  const std::string data = tmp / "data";
  const std::string cache = tmp / "cache";
  WriteFile(data + "/a", "alpha");
  WriteFile(data + "/b", "bravo");
  WriteFile(data + "/c", "charlie");

  Digest first;
  {
    InputHasher h(CacheOptions(cache));
    EXPECT_EQ(h.stats().cache_status, "no cache file yet");
    auto td = h.Hash(data);
    ASSERT_TRUE(td.has_value());
    first = td->sha256;
    EXPECT_EQ(h.stats().files_hashed, 3u);
    ASSERT_TRUE(h.SaveCache().has_value());
  }
  struct stat st;
  ASSERT_EQ(::stat((cache + "/input-digests.v1").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto rerun = [&](uint64_t want_hashed) {
    InputHasher h(CacheOptions(cache));
    auto td = h.Hash(data);
    EXPECT_TRUE(td.has_value());
    EXPECT_EQ(h.stats().files_hashed, want_hashed) << h.stats().cache_status;
    EXPECT_EQ(h.stats().files_cached, 3 - want_hashed);
    EXPECT_TRUE(h.SaveCache().has_value());
    return td->sha256;
  };
  EXPECT_EQ(rerun(0), first);

  // Same size, different bytes, a different mtime (as any write gives; in the past here,
  // since a file stamped in the future is never trusted to the cache).
  const struct timespec b_mtime = MtimeOf(data + "/b");
  WriteFile(data + "/b", "BRAVO");
  SetMtime(data + "/b", {b_mtime.tv_sec - 5, b_mtime.tv_nsec});
  const Digest changed = rerun(1);
  EXPECT_NE(changed, first);
  EXPECT_EQ(rerun(0), changed);

  // touch: new mtime, same bytes: rehashed, same digest.
  SetMtime(data + "/a", {MtimeOf(data + "/a").tv_sec - 7, 0});
  EXPECT_EQ(rerun(1), changed);

  // Same size, new bytes, mtime put back by hand: the ctime still moved.
  const struct timespec c_mtime = MtimeOf(data + "/c");
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  WriteFile(data + "/c", "CHARLIE");
  SetMtime(data + "/c", c_mtime);
  const Digest c_changed = rerun(1);
  EXPECT_NE(c_changed, changed);

  // Replaced by rename with identical size and mtime: another inode.
  const struct timespec a_mtime = MtimeOf(data + "/a");
  WriteFile(tmp / "a.new", "ALPHA");
  SetMtime(tmp / "a.new", a_mtime);
  fs::rename(tmp / "a.new", data + "/a");
  EXPECT_NE(rerun(1), c_changed);
}

TEST(DigestCacheTest, CorruptCacheIsIgnoredAndRebuilt) {
  TempDir tmp;
  const std::string data = tmp / "data";
  const std::string cache = tmp / "cache";
  const std::string file = cache + "/input-digests.v1";
  WriteFile(data + "/x", "x-ray");
  WriteFile(data + "/y", "yankee");
  Digest want;
  {
    InputHasher h(CacheOptions(cache));
    auto td = h.Hash(data);
    ASSERT_TRUE(td.has_value());
    want = td->sha256;
    ASSERT_TRUE(h.SaveCache().has_value());
  }
  std::string good;
  {
    std::ifstream f(file, std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(f), {});
  }
  ASSERT_THAT(good, HasSubstr(Hex(Sha("x-ray"))));

  // A cache entry with a forged digest but a valid-looking line: the checksum catches it.
  std::string forged = good;
  const std::size_t at = forged.find(Hex(Sha("x-ray")));
  forged.replace(at, 64, Hex(Sha("forged")));
  std::string truncated = good.substr(0, good.size() / 2);
  for (const std::string& bad : {forged, truncated, std::string("garbage\n"), std::string()}) {
    WriteFile(file, bad);
    InputHasher h(CacheOptions(cache));
    EXPECT_THAT(h.stats().cache_status, HasSubstr("ignored"));
    EXPECT_EQ(h.stats().cache_entries_loaded, 0u);
    auto td = h.Hash(data);
    ASSERT_TRUE(td.has_value());
    EXPECT_EQ(td->sha256, want);
    EXPECT_EQ(h.stats().files_hashed, 2u);
    ASSERT_TRUE(h.SaveCache().has_value());
    InputHasher again(CacheOptions(cache));
    EXPECT_EQ(again.stats().cache_status, "loaded 2 entries");
  }
}

TEST(DigestCacheTest, OverTheEntryLimitUnusedEntriesAreDropped) {
  TempDir tmp;
  const std::string cache = tmp / "cache";
  WriteFile(tmp / "old/1", "1");
  WriteFile(tmp / "old/2", "2");
  WriteFile(tmp / "new/3", "3");
  WriteFile(tmp / "new/4", "4");
  HashOptions o = CacheOptions(cache);
  o.max_cache_entries = 2;
  for (const char* dir : {"old", "new"}) {
    InputHasher h(o);
    ASSERT_TRUE(h.Hash(tmp / dir).has_value());
    ASSERT_TRUE(h.SaveCache().has_value());
  }
  InputHasher h(o);
  EXPECT_EQ(h.stats().cache_status, "loaded 2 entries");
  ASSERT_TRUE(h.Hash(tmp / "new").has_value());
  EXPECT_EQ(h.stats().files_cached, 2u);  // the entries kept are the ones last used
}

TEST(DigestCacheTest, RecentlyWrittenFilesAreNotCachedUntilTheirTimestampsSettle) {
  TempDir tmp;
  const std::string cache = tmp / "cache";
  WriteFile(tmp / "data/f", "fresh");
  HashOptions o;
  o.cache_dir = cache;
  o.racy_window = std::chrono::milliseconds(300);
  auto run = [&] {
    InputHasher h(o);
    EXPECT_TRUE(h.Hash(tmp / "data").has_value());
    EXPECT_TRUE(h.SaveCache().has_value());
    return h.stats().files_hashed;
  };
  EXPECT_EQ(run(), 1u);
  EXPECT_EQ(run(), 1u);  // still within the window: not trusted to the cache
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(run(), 1u);  // hashed and now cached
  EXPECT_EQ(run(), 0u);
}

// --- code ---------------------------------------------------------------------------------

// git with a throwaway identity and no user or system configuration.
void Git(const std::string& dir, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git",
                                   "-C",
                                   dir,
                                   "-c",
                                   "user.name=cairn test",
                                   "-c",
                                   "user.email=test@cairn.invalid",
                                   "-c",
                                   "commit.gpgsign=false"};
  argv.insert(argv.end(), args.begin(), args.end());
  subprocess::RunOptions opts;
  opts.env = {"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null"};
  auto r = subprocess::RunProcess(argv, opts);
  ASSERT_TRUE(r.has_value()) << r.error().ToString();
  ASSERT_EQ(r->exit_code, 0) << r->err;
}

std::string GitOut(const std::string& dir, std::vector<std::string> args) {
  std::vector<std::string> argv = {"git", "-C", dir};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = subprocess::RunProcess(argv);
  EXPECT_TRUE(r.has_value());
  std::string out = r->out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

TEST(CodeTest, NotAGitRepositoryIsARecordNotAnError) {
  TempDir tmp;
  auto cv = DescribeCode(tmp.path());
  ASSERT_TRUE(cv.has_value()) << cv.error().ToString();
  EXPECT_FALSE(cv->is_git_repo());
  EXPECT_EQ(cv->note(), "not a git repository");
  EXPECT_TRUE(cv->git_commit().empty());

  auto missing = DescribeCode(tmp / "nope");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);

  CodeOptions no_git;
  no_git.git = "cairn-no-such-git";
  auto without = DescribeCode(tmp.path(), no_git);
  ASSERT_TRUE(without.has_value());
  EXPECT_FALSE(without->is_git_repo());
  EXPECT_THAT(without->note(), HasSubstr("git not found"));
}

TEST(CodeTest, CleanAndDirtyRepository) {
  TempDir tmp;
  const std::string repo = tmp / "repo";
  fs::create_directories(repo);
  Git(repo, {"init", "-q", "-b", "main"});
  WriteFile(repo + "/train.py", "print('v1')\n");
  WriteFile(repo + "/.gitignore", "*.log\n");
  Git(repo, {"add", "."});
  Git(repo, {"commit", "-q", "-m", "v1"});
  Git(repo, {"remote", "add", "origin", "https://example.com/team/model.git"});
  const std::string head = GitOut(repo, {"rev-parse", "HEAD"});
  ASSERT_EQ(head.size(), 40u);

  auto clean = DescribeCode(repo);
  ASSERT_TRUE(clean.has_value()) << clean.error().ToString();
  EXPECT_TRUE(clean->is_git_repo());
  EXPECT_EQ(clean->git_commit(), head);
  EXPECT_EQ(clean->branch(), "main");
  EXPECT_EQ(clean->remote(), "https://example.com/team/model.git");
  EXPECT_FALSE(clean->dirty());
  EXPECT_EQ(clean->diff_size(), 0u);
  EXPECT_EQ(clean->diff_sha256(), std::string(reinterpret_cast<const char*>(Sha("").data()), 32));
  EXPECT_TRUE(clean->untracked().empty());

  // Ignored files do not make the tree dirty.
  WriteFile(repo + "/run.log", "noise");
  auto ignored = DescribeCode(repo);
  ASSERT_TRUE(ignored.has_value());
  EXPECT_FALSE(ignored->dirty());

  WriteFile(repo + "/train.py", "print('v2')\n");
  WriteFile(repo + "/weights.bin", std::string("\x00\x01\x02\xff", 4));
  Git(repo, {"add", "weights.bin"});
  WriteFile(repo + "/notes.txt", "untracked");
  auto dirty = DescribeCode(repo);
  ASSERT_TRUE(dirty.has_value()) << dirty.error().ToString();
  EXPECT_TRUE(dirty->dirty());
  EXPECT_THAT(dirty->diff(), HasSubstr("+print('v2')"));
  EXPECT_THAT(dirty->diff(), HasSubstr("GIT binary patch"));
  EXPECT_EQ(dirty->diff_size(), dirty->diff().size());
  EXPECT_EQ(dirty->diff_sha256(),
            std::string(reinterpret_cast<const char*>(Sha(dirty->diff()).data()), 32));
  EXPECT_THAT(dirty->untracked(), ElementsAre("notes.txt"));
  // The diff is the one `git diff HEAD --binary` prints.
  const subprocess::RunResult plain = Sh("cd '" + repo + "' && git diff HEAD --binary --no-color");
  EXPECT_EQ(dirty->diff(), plain.out);

  // From a subdirectory: the same diff and the whole tree's untracked files.
  fs::create_directories(repo + "/src");
  auto sub = DescribeCode(repo + "/src");
  ASSERT_TRUE(sub.has_value()) << sub.error().ToString();
  EXPECT_EQ(sub->diff(), dirty->diff());
  EXPECT_THAT(sub->untracked(), ElementsAre("notes.txt"));

  // Over the limit: no diff kept, size and digest still those of the whole diff.
  CodeOptions small;
  small.max_diff_bytes = 64;
  auto big = DescribeCode(repo, small);
  ASSERT_TRUE(big.has_value());
  EXPECT_TRUE(big->diff_too_large());
  EXPECT_TRUE(big->diff().empty());
  EXPECT_EQ(big->diff_size(), dirty->diff_size());
  EXPECT_EQ(big->diff_sha256(), dirty->diff_sha256());

  // Detached HEAD: no branch.
  Git(repo, {"checkout", "-q", "--detach"});
  auto detached = DescribeCode(repo);
  ASSERT_TRUE(detached.has_value());
  EXPECT_EQ(detached->branch(), "");
  EXPECT_EQ(detached->git_commit(), head);
}

TEST(CodeTest, RepositoryWithoutCommits) {
  TempDir tmp;
  Git(tmp.path(), {"init", "-q"});
  WriteFile(tmp / "a.txt", "first\n");
  auto fresh = DescribeCode(tmp.path());
  ASSERT_TRUE(fresh.has_value()) << fresh.error().ToString();
  EXPECT_TRUE(fresh->is_git_repo());
  EXPECT_EQ(fresh->git_commit(), "");
  EXPECT_TRUE(fresh->dirty());
  EXPECT_THAT(fresh->untracked(), ElementsAre("a.txt"));
  EXPECT_EQ(fresh->diff_size(), 0u);

  Git(tmp.path(), {"add", "a.txt"});
  auto staged = DescribeCode(tmp.path());
  ASSERT_TRUE(staged.has_value());
  EXPECT_THAT(staged->diff(), HasSubstr("+first"));
  EXPECT_TRUE(staged->untracked().empty());
}

// --- environment --------------------------------------------------------------------------

TEST(EnvironmentTest, DescribesThisMachine) {
  EnvironmentOptions opts;
  opts.nvidia_smi = "cairn-no-such-nvidia-smi";
  auto env = DescribeEnvironment(opts);
  ASSERT_TRUE(env.has_value());
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  EXPECT_THAT(env->hosts(), ElementsAre(std::string(host)));
  if (fs::exists("/etc/os-release")) {
    EXPECT_FALSE(env->os().empty());
  }
  EXPECT_THAT(env->kernel(), ::testing::StartsWith("Linux "));
  EXPECT_THAT(env->compiler(),
              ::testing::AnyOf(::testing::StartsWith("g++ "), ::testing::StartsWith("clang ")));
  const auto& libs = env->library_versions();
  ASSERT_TRUE(libs.contains("openssl"));
  EXPECT_THAT(libs.at("openssl"), ::testing::StartsWith("3."));
  EXPECT_TRUE(libs.contains("openmpi"));
  EXPECT_TRUE(libs.contains("hdf5"));
  EXPECT_TRUE(libs.contains("protobuf"));
  EXPECT_FALSE(env->cairn_version().empty());
  EXPECT_TRUE(env->gpus().empty());  // no nvidia-smi: no GPUs, nothing to note
  EXPECT_TRUE(env->notes().empty()) << env->notes(0);

  EnvironmentOptions hosts;
  hosts.hosts = {"node-1", "node-2"};
  hosts.query_gpus = false;
  auto many = DescribeEnvironment(hosts);
  ASSERT_TRUE(many.has_value());
  EXPECT_THAT(many->hosts(), ElementsAre("node-1", "node-2"));
}

TEST(EnvironmentTest, ReadsGpusFromNvidiaSmi) {
  TempDir tmp;
  const std::string fake = tmp / "nvidia-smi";
  WriteFile(fake,
            "#!/bin/sh\n"
            "echo '0, NVIDIA H100 80GB HBM3, 81559, GPU-aaaa, 550.54.15'\n"
            "echo '1, NVIDIA H100 80GB HBM3, 81559, GPU-bbbb, 550.54.15'\n");
  ASSERT_EQ(::chmod(fake.c_str(), 0755), 0);
  EnvironmentOptions opts;
  opts.nvidia_smi = fake;
  auto env = DescribeEnvironment(opts);
  ASSERT_TRUE(env.has_value());
  ASSERT_EQ(env->gpus_size(), 2);
  EXPECT_EQ(env->gpus(1).index(), 1u);
  EXPECT_EQ(env->gpus(1).model(), "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(env->gpus(1).memory_bytes(), 81559ull << 20);
  EXPECT_EQ(env->gpus(1).uuid(), "GPU-bbbb");
  EXPECT_EQ(env->driver_version(), "550.54.15");

  const std::string broken = tmp / "broken-smi";
  WriteFile(broken,
            "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the "
            "NVIDIA driver.'\nexit 9\n");
  ASSERT_EQ(::chmod(broken.c_str(), 0755), 0);
  opts.nvidia_smi = broken;
  auto failed = DescribeEnvironment(opts);
  ASSERT_TRUE(failed.has_value());
  EXPECT_TRUE(failed->gpus().empty());
  ASSERT_EQ(failed->notes_size(), 1);
  EXPECT_THAT(failed->notes(0), HasSubstr("could not communicate"));

  auto bad = ParseNvidiaSmiCsv("0, only two\n");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);
}

TEST(EnvironmentTest, OsPrettyName) {
  EXPECT_EQ(
      OsPrettyName("NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
      "Debian GNU/Linux 12 (bookworm)");
  EXPECT_EQ(OsPrettyName("PRETTY_NAME=Plain\n"), "Plain");
  EXPECT_EQ(OsPrettyName("PRETTY_NAME='Say \\\"hi\\\"'"), "Say \"hi\"");
  EXPECT_EQ(OsPrettyName("NAME=x\n"), "");
}

// --- DSSE ---------------------------------------------------------------------------------

TEST(DsseTest, PaeMatchesTheSpecExample) {
  // DSSE protocol.md: payloadType http://example.com/HelloWorld, payload "hello world".
  EXPECT_EQ(PreAuthEncoding("http://example.com/HelloWorld", "hello world"),
            "DSSEv1 29 http://example.com/HelloWorld 11 hello world");
  EXPECT_EQ(PreAuthEncoding("", ""), "DSSEv1 0  0 ");
  // Lengths count bytes.
  EXPECT_EQ(PreAuthEncoding("t", "\xc3\xa9"), "DSSEv1 1 t 2 \xc3\xa9");
}

TEST(DsseTest, Base64) {
  EXPECT_EQ(Base64Encode("hello world"), "aGVsbG8gd29ybGQ=");
  EXPECT_EQ(Base64Encode(""), "");
  EXPECT_EQ(Base64Encode("f"), "Zg==");
  EXPECT_EQ(Base64Encode("fo"), "Zm8=");
  EXPECT_EQ(Base64Encode("foo"), "Zm9v");
  std::string all;
  for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
  for (std::size_t n = 0; n <= all.size(); n += 37) {
    auto back = Base64Decode(Base64Encode(all.substr(0, n)));
    ASSERT_TRUE(back.has_value());
    EXPECT_EQ(*back, all.substr(0, n));
  }
  EXPECT_EQ(*Base64Decode("aGVsbG8gd29ybGQ"), "hello world");  // unpadded
  EXPECT_EQ(*Base64Decode("-_8="), "\xfb\xff");                // URL-safe
  EXPECT_FALSE(Base64Decode("aGVsbG8*").has_value());
  EXPECT_FALSE(Base64Decode("a").has_value());
  EXPECT_FALSE(Base64Decode("Zh==").has_value());  // non-zero trailing bits
}

TEST(DsseTest, Ed25519Rfc8032Vectors) {
  // RFC 8032 section 7.1, TEST 1 (empty message) and TEST 2 (one byte 0x72).
  struct Vector {
    const char* secret;
    const char* pub;
    std::string message;
    const char* sig;
  };
  const Vector vectors[] = {
      {"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
       "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
       "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
       "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"},
      {"4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
       "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "\x72",
       "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
       "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"},
  };
  for (const auto& v : vectors) {
    const std::string secret = FromHex(v.secret);
    auto key = SigningKey::FromRawPrivate(
        std::span(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()));
    ASSERT_TRUE(key.has_value()) << key.error().ToString();
    const auto& raw = key->public_key().raw();
    EXPECT_EQ(ckpt::ToHex(raw), v.pub);
    EXPECT_EQ(key->keyid(), Hex(Sha(FromHex(v.pub))));
    auto sig = key->Sign(v.message);
    ASSERT_TRUE(sig.has_value());
    EXPECT_EQ(ckpt::ToHex(std::span(reinterpret_cast<const uint8_t*>(sig->data()), sig->size())),
              v.sig);
    EXPECT_TRUE(key->public_key().Verify(v.message, *sig));
    EXPECT_FALSE(key->public_key().Verify(v.message + "x", *sig));
  }
}

TEST(DsseTest, EnvelopeRoundTripAndTampering) {
  auto key = SigningKey::Generate();
  auto other = SigningKey::Generate();
  ASSERT_TRUE(key.has_value() && other.has_value());
  const std::string type = "application/vnd.in-toto+json";
  auto env = SignEnvelope(type, "{\"a\":1}", *key);
  ASSERT_TRUE(env.has_value());
  const std::string json = EnvelopeToJson(*env);
  const Json parsed = Json::parse(json);
  EXPECT_EQ(parsed["payloadType"], type);
  EXPECT_EQ(parsed["payload"], Base64Encode("{\"a\":1}"));
  EXPECT_EQ(parsed["signatures"][0]["keyid"], key->keyid());

  auto payload = VerifyEnvelopeJson(json, type, key->public_key());
  ASSERT_TRUE(payload.has_value()) << payload.error().ToString();
  EXPECT_EQ(*payload, "{\"a\":1}");

  // Changed payload.
  Json t1 = parsed;
  t1["payload"] = Base64Encode("{\"a\":2}");
  auto r1 = VerifyEnvelopeJson(t1.dump(), type, key->public_key());
  ASSERT_FALSE(r1.has_value());
  EXPECT_EQ(r1.error().code(), Code::kDataLoss);
  EXPECT_THAT(r1.error().ToString(), HasSubstr("does not verify"));

  // Changed payloadType, verified as that type: the signature covers the type.
  Json t2 = parsed;
  t2["payloadType"] = "text/plain";
  auto r2 = VerifyEnvelopeJson(t2.dump(), "text/plain", key->public_key());
  ASSERT_FALSE(r2.has_value());
  EXPECT_EQ(r2.error().code(), Code::kDataLoss);
  // ... and verified as the expected type: refused before any signature.
  auto r2b = VerifyEnvelopeJson(t2.dump(), type, key->public_key());
  ASSERT_FALSE(r2b.has_value());
  EXPECT_THAT(r2b.error().ToString(), HasSubstr("payloadType"));

  // Wrong key: named by key id.
  auto r3 = VerifyEnvelopeJson(json, type, other->public_key());
  ASSERT_FALSE(r3.has_value());
  EXPECT_EQ(r3.error().code(), Code::kPermissionDenied);
  EXPECT_THAT(r3.error().ToString(), HasSubstr(key->keyid()));
  // Wrong key with the key id stripped: the signature does not verify.
  Json t3 = parsed;
  t3["signatures"][0].erase("keyid");
  auto r3b = VerifyEnvelopeJson(t3.dump(), type, other->public_key());
  ASSERT_FALSE(r3b.has_value());
  EXPECT_EQ(r3b.error().code(), Code::kDataLoss);

  // Bad base64 and a malformed envelope.
  Json t4 = parsed;
  t4["signatures"][0]["sig"] = "not*base64";
  auto r4 = VerifyEnvelopeJson(t4.dump(), type, key->public_key());
  ASSERT_FALSE(r4.has_value());
  EXPECT_EQ(r4.error().code(), Code::kDataLoss);
  EXPECT_THAT(r4.error().ToString(), HasSubstr("base64"));
  EXPECT_FALSE(VerifyEnvelopeJson("{\"payload\":\"\"}", type, key->public_key()).has_value());
  Json t5 = parsed;
  t5["signatures"] = Json::array();
  auto r5 = VerifyEnvelopeJson(t5.dump(), type, key->public_key());
  ASSERT_FALSE(r5.has_value());
  EXPECT_EQ(r5.error().code(), Code::kPermissionDenied);

  // A second signature by another key does not stop verification by either.
  auto signed_other = other->Sign(PreAuthEncoding(type, env->payload));
  ASSERT_TRUE(signed_other.has_value());
  Envelope both = *env;
  both.signatures.push_back(DsseSignature{other->keyid(), *signed_other});
  EXPECT_TRUE(VerifyEnvelope(both, type, key->public_key()).has_value());
  EXPECT_TRUE(VerifyEnvelope(both, type, other->public_key()).has_value());
}

TEST(DsseTest, KeyFiles) {
  TempDir tmp;
  const std::string priv = tmp / "signing.pem";
  const std::string pub = tmp / "signing.pub.pem";
  auto key = GenerateKeyFiles(priv, pub);
  ASSERT_TRUE(key.has_value()) << key.error().ToString();
  struct stat st;
  ASSERT_EQ(::stat(priv.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(pub.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);

  auto loaded = SigningKey::LoadPem(priv);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().ToString();
  EXPECT_EQ(loaded->keyid(), key->keyid());
  auto loaded_pub = VerifyKey::LoadPem(pub);
  ASSERT_TRUE(loaded_pub.has_value()) << loaded_pub.error().ToString();
  EXPECT_EQ(loaded_pub->keyid(), key->keyid());
  auto sig = loaded->Sign("m");
  ASSERT_TRUE(sig.has_value());
  EXPECT_TRUE(loaded_pub->Verify("m", *sig));

  // Never over an existing file.
  auto again = GenerateKeyFiles(priv, tmp / "other.pub.pem");
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Code::kFailedPrecondition);
  EXPECT_FALSE(fs::exists(tmp / "other.pub.pem"));

  // A private key readable by others is refused, with the fix named.
  ASSERT_EQ(::chmod(priv.c_str(), 0640), 0);
  auto open_key = SigningKey::LoadPem(priv);
  ASSERT_FALSE(open_key.has_value());
  EXPECT_EQ(open_key.error().code(), Code::kFailedPrecondition);
  EXPECT_THAT(open_key.error().ToString(), HasSubstr("chmod 600"));

  auto missing = SigningKey::LoadPem(tmp / "none.pem");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);

  // A public key is not a private key.
  auto wrong = SigningKey::FromPem(key->public_key().ToPem());
  ASSERT_FALSE(wrong.has_value());
  EXPECT_EQ(wrong.error().code(), Code::kInvalidArgument);
}

// --- record and attestation ---------------------------------------------------------------

proto::ProvenanceRecord SampleRecord() {
  proto::ProvenanceRecord r;
  r.set_job_id("j-42");
  r.set_run_id("j-42.1");
  r.set_attempt(1);
  auto* code = r.mutable_code();
  code->set_is_git_repo(true);
  code->set_git_commit("0123456789abcdef0123456789abcdef01234567");
  code->set_branch("main");
  code->set_remote("https://example.com/team/model.git");
  code->set_dirty(true);
  code->set_diff("diff --git a/x b/x\n");
  code->set_diff_size(code->diff().size());
  const Digest dd = Sha(code->diff());
  code->set_diff_sha256(std::string(dd.begin(), dd.end()));
  code->add_untracked("notes.txt");
  r.add_command("cairn-fmnist");
  r.add_command("--epochs=3");
  const Digest spec = Sha("spec");
  r.set_spec_sha256(std::string(spec.begin(), spec.end()));
  (*r.mutable_hyperparameters())["lr"] = "0.01";
  (*r.mutable_hyperparameters())["batch"] = "64";
  auto* in = r.add_inputs();
  in->set_path("/data/fashion-mnist");
  in->set_kind("data");
  const Digest data = Sha("data");
  in->set_sha256(std::string(data.begin(), data.end()));
  in->set_size_bytes(30000000);
  in->set_pinned(true);
  const Digest resumed = Sha("manifest");
  r.set_resumed_from_manifest(std::string(resumed.begin(), resumed.end()));
  auto* env = r.mutable_environment();
  env->add_hosts("node-1");
  env->set_os("Debian GNU/Linux 12 (bookworm)");
  env->set_compiler("g++ 12.2.0");
  (*env->mutable_library_versions())["openmpi"] = "4.1.4";
  env->set_cairn_version("0.1.0-g031c496");
  env->set_kernel("Linux 6.1.0 #1 SMP x86_64");
  r.set_started_unix_ms(1764117252345);
  return r;
}

TEST(RecordTest, CanonicalJsonCoversEveryFieldAndIsStable) {
  const proto::ProvenanceRecord r = SampleRecord();
  auto json = CanonicalRecordJson(r);
  ASSERT_TRUE(json.has_value()) << json.error().ToString();
  const Json j = Json::parse(*json);
  EXPECT_EQ(j.dump(), *json);  // sorted keys, no whitespace
  EXPECT_EQ(j["format"], "cairn-provenance-record/v1");
  EXPECT_EQ(j["code"]["diff_sha256"], Hex(Sha("diff --git a/x b/x\n")));
  EXPECT_FALSE(j["code"].contains("diff"));
  EXPECT_EQ(j["started_unix_ms"], 1764117252345);

  // A field added to the schema must be added to the canonical form (or this fails).
  EXPECT_EQ(j.size(),
            static_cast<std::size_t>(proto::ProvenanceRecord::descriptor()->field_count()) + 1);
  EXPECT_EQ(j["code"].size(),
            static_cast<std::size_t>(proto::CodeVersion::descriptor()->field_count()) - 1);
  EXPECT_EQ(j["inputs"][0].size(),
            static_cast<std::size_t>(proto::InputDigest::descriptor()->field_count()));
  EXPECT_EQ(j["environment"].size(),
            static_cast<std::size_t>(proto::EnvironmentInfo::descriptor()->field_count()));

  // Map insertion order does not matter; any field change does.
  proto::ProvenanceRecord reordered = r;
  reordered.mutable_hyperparameters()->clear();
  (*reordered.mutable_hyperparameters())["batch"] = "64";
  (*reordered.mutable_hyperparameters())["lr"] = "0.01";
  EXPECT_EQ(*RecordDigest(reordered), *RecordDigest(r));
  EXPECT_EQ(*RecordDigest(r), Sha(*json));
  proto::ProvenanceRecord changed = r;
  changed.mutable_inputs(0)->set_pinned(false);
  EXPECT_NE(*RecordDigest(changed), *RecordDigest(r));
  // The diff bytes are covered through diff_sha256, which CheckRecord ties to them.
  proto::ProvenanceRecord tampered = r;
  tampered.mutable_code()->set_diff("diff --git a/y b/y\n");
  EXPECT_EQ(*RecordDigest(tampered), *RecordDigest(r));
  EXPECT_TRUE(CheckRecord(r).has_value());
  auto check = CheckRecord(tampered);
  ASSERT_FALSE(check.has_value());
  EXPECT_EQ(check.error().code(), Code::kDataLoss);

  proto::ProvenanceRecord bad_utf8 = r;
  bad_utf8.add_command("\xff\xfe");
  auto bad = CanonicalRecordJson(bad_utf8);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);
}

TEST(RecordTest, DigestInputsChecksPins) {
  TempDir tmp;
  WriteFile(tmp / "data/a", "a");
  WriteFile(tmp / "model.bin", "weights");
  InputHasher hasher;
  std::vector<proto::InputSpec> specs(2);
  specs[0].set_path(tmp / "data");
  specs[0].set_kind("data");
  specs[1].set_path(tmp / "model.bin");
  specs[1].set_kind("model");
  specs[1].set_sha256(Hex(Sha("weights")));
  auto d = DigestInputs(specs, hasher);
  ASSERT_TRUE(d.has_value()) << d.error().ToString();
  ASSERT_EQ(d->size(), 2u);
  EXPECT_FALSE((*d)[0].pinned());
  EXPECT_EQ((*d)[0].size_bytes(), 1u);
  EXPECT_TRUE((*d)[1].pinned());
  EXPECT_EQ((*d)[1].kind(), "model");
  EXPECT_EQ((*d)[1].sha256(),
            std::string(reinterpret_cast<const char*>(Sha("weights").data()), 32));

  specs[1].set_sha256(Hex(Sha("other weights")));
  auto mismatch = DigestInputs(specs, hasher);
  ASSERT_FALSE(mismatch.has_value());
  EXPECT_EQ(mismatch.error().code(), Code::kFailedPrecondition);
  EXPECT_THAT(mismatch.error().ToString(), HasSubstr(tmp / "model.bin"));
  EXPECT_THAT(mismatch.error().ToString(), HasSubstr(Hex(Sha("weights"))));

  specs[1].set_sha256("");
  specs[1].set_kind("weights");
  auto kind = DigestInputs(specs, hasher);
  ASSERT_FALSE(kind.has_value());
  EXPECT_EQ(kind.error().code(), Code::kInvalidArgument);
}

AttestationInput SampleAttestation() {
  AttestationInput in;
  in.record = SampleRecord();
  in.spec.set_name("fmnist");
  in.spec.add_command("cairn-fmnist");
  in.spec.set_workdir("/work/model");
  in.spec.set_ranks(4);
  (*in.spec.mutable_env())["OMP_NUM_THREADS"] = "1";
  in.builder_id = "https://cairn.dev/cairnd/cluster-a";
  in.finished_unix_ms = 1764120000000;
  in.subjects.push_back(Subject{"checkpoint/step-000000000100/manifest", Sha("m100")});
  return in;
}

TEST(AttestationTest, StatementRoundTripAndDeterminism) {
  const AttestationInput in = SampleAttestation();
  auto statement = BuildStatement(in);
  ASSERT_TRUE(statement.has_value()) << statement.error().ToString();
  auto again = BuildStatement(SampleAttestation());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(*statement, *again);
  const Json j = Json::parse(*statement);
  EXPECT_EQ(j.dump(), *statement);
  EXPECT_EQ(j["_type"], "https://in-toto.io/Statement/v1");
  EXPECT_EQ(j["predicateType"], "https://slsa.dev/provenance/v1");
  const Json& build = j["predicate"]["buildDefinition"];
  EXPECT_EQ(build["externalParameters"]["jobSpec"]["name"], "fmnist");
  EXPECT_EQ(build["externalParameters"]["jobSpec"]["env"]["OMP_NUM_THREADS"], "1");
  EXPECT_EQ(build["externalParameters"]["hyperparameters"]["lr"], "0.01");
  EXPECT_EQ(build["internalParameters"]["provenanceRecordSha256"], Hex(*RecordDigest(in.record)));
  EXPECT_EQ(j["predicate"]["runDetails"]["metadata"]["startedOn"], "2025-11-26T00:34:12.345Z");

  auto parsed = ParseStatement(*statement);
  ASSERT_TRUE(parsed.has_value()) << parsed.error().ToString();
  ASSERT_EQ(parsed->subjects.size(), 1u);
  EXPECT_EQ(parsed->subjects[0].name, "checkpoint/step-000000000100/manifest");
  EXPECT_EQ(parsed->subjects[0].sha256, Sha("m100"));
  EXPECT_EQ(parsed->build_type, kCairnBuildType);
  EXPECT_EQ(parsed->builder_id, "https://cairn.dev/cairnd/cluster-a");
  EXPECT_EQ(parsed->invocation_id, "j-42.1");
  EXPECT_EQ(parsed->finished_on, "2025-11-26T01:20:00.000Z");
  EXPECT_EQ(parsed->spec_sha256, Hex(Sha("spec")));
  ASSERT_EQ(parsed->dependencies.size(), 3u);
  const Dependency& code = parsed->dependencies[0];
  EXPECT_EQ(code.name, "code");
  EXPECT_EQ(code.uri,
            "git+https://example.com/team/model.git@0123456789abcdef0123456789abcdef01234567");
  EXPECT_EQ(code.digest.at("gitCommit"), "0123456789abcdef0123456789abcdef01234567");
  const Json ann = Json::parse(code.annotations_json);
  EXPECT_EQ(ann["dirty"], true);
  EXPECT_EQ(ann["diffSha256"], Hex(Sha("diff --git a/x b/x\n")));
  const Dependency& data = parsed->dependencies[1];
  EXPECT_EQ(data.name, "/data/fashion-mnist");
  EXPECT_EQ(data.uri, "file:///data/fashion-mnist");
  EXPECT_EQ(data.digest.at("sha256"), Hex(Sha("data")));
  EXPECT_EQ(Json::parse(data.annotations_json)["pinned"], true);
  EXPECT_EQ(parsed->dependencies[2].name, "resumed-from");
  EXPECT_EQ(parsed->dependencies[2].digest.at("sha256"), Hex(Sha("manifest")));

  // Different subjects, different bytes; no subject at all is refused.
  AttestationInput other = SampleAttestation();
  other.subjects[0].sha256 = Sha("m200");
  EXPECT_NE(*BuildStatement(other), *statement);
  other.subjects.clear();
  EXPECT_FALSE(BuildStatement(other).has_value());

  // Outside git: an annotated code entry with the workdir.
  AttestationInput nogit = SampleAttestation();
  nogit.record.mutable_code()->Clear();
  nogit.record.mutable_code()->set_note("not a git repository");
  auto ng = ParseStatement(*BuildStatement(nogit));
  ASSERT_TRUE(ng.has_value()) << ng.error().ToString();
  EXPECT_EQ(ng->dependencies[0].uri, "file:///work/model");
  EXPECT_EQ(Json::parse(ng->dependencies[0].annotations_json)["gitRepository"], false);
}

TEST(AttestationTest, ParseRejectsForeignStatements) {
  const Json good = Json::parse(*BuildStatement(SampleAttestation()));
  auto expect_bad = [](Json j, std::string_view what) {
    auto r = ParseStatement(j.dump());
    ASSERT_FALSE(r.has_value()) << what;
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
    EXPECT_THAT(r.error().ToString(), HasSubstr(what));
  };
  Json j = good;
  j["_type"] = "https://in-toto.io/Statement/v0.1";
  expect_bad(j, "_type");
  j = good;
  j["subject"][0]["digest"].erase("sha256");
  expect_bad(j, "subject[0].digest.sha256");
  j = good;
  j["subject"] = Json::array();
  expect_bad(j, "subject");
  j = good;
  j["predicate"]["buildDefinition"]["buildType"] = "https://example.com/other";
  expect_bad(j, "buildType");
  EXPECT_FALSE(ParseStatement("[1,2]").has_value());
}

TEST(AttestationTest, SignedAttestationVerifiesAndTamperingIsCaught) {
  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.has_value());
  auto statement = BuildStatement(SampleAttestation());
  ASSERT_TRUE(statement.has_value());
  auto envelope = SignStatement(*statement, *key);
  ASSERT_TRUE(envelope.has_value());
  auto verified = VerifyAttestation(*envelope, key->public_key());
  ASSERT_TRUE(verified.has_value()) << verified.error().ToString();
  EXPECT_EQ(verified->subjects[0].sha256, Sha("m100"));

  // Swap the subject digest inside the signed payload.
  Json env = Json::parse(*envelope);
  std::string payload = *Base64Decode(env["payload"].get<std::string>());
  const std::size_t at = payload.find(Hex(Sha("m100")));
  ASSERT_NE(at, std::string::npos);
  payload.replace(at, 64, Hex(Sha("m999")));
  env["payload"] = Base64Encode(payload);
  auto tampered = VerifyAttestation(env.dump(), key->public_key());
  ASSERT_FALSE(tampered.has_value());
  EXPECT_EQ(tampered.error().code(), Code::kDataLoss);
}

TEST(AttestationTest, SlurmJobIdIsSignedWithoutChangingTheRecord) {
  // An attempt of cairn's own agents names no executor.
  const std::string local = *BuildStatement(SampleAttestation());
  EXPECT_FALSE(
      Json::parse(local)["predicate"]["buildDefinition"]["internalParameters"].contains("executor"));
  auto local_parsed = ParseStatement(local);
  ASSERT_TRUE(local_parsed.has_value());
  EXPECT_EQ(local_parsed->executor, "");
  EXPECT_EQ(local_parsed->executor_job_id, "");

  AttestationInput in = SampleAttestation();
  in.executor = "slurm";
  in.executor_job_id = "4711";
  auto statement = BuildStatement(in);
  ASSERT_TRUE(statement.has_value()) << statement.error().ToString();
  const Json j = Json::parse(*statement);
  const Json& internal_params = j["predicate"]["buildDefinition"]["internalParameters"];
  EXPECT_EQ(internal_params["executor"], (Json{{"name", "slurm"}, {"jobId", "4711"}}));
  // The id came after the record: the record and its digest (the manifests') are as before.
  EXPECT_EQ(internal_params["provenanceRecordSha256"], Hex(*RecordDigest(in.record)));

  auto key = SigningKey::Generate();
  ASSERT_TRUE(key.has_value());
  auto envelope = SignStatement(*statement, *key);
  ASSERT_TRUE(envelope.has_value());
  auto verified = VerifyAttestation(*envelope, key->public_key());
  ASSERT_TRUE(verified.has_value()) << verified.error().ToString();
  EXPECT_EQ(verified->executor, "slurm");
  EXPECT_EQ(verified->executor_job_id, "4711");

  // Another SLURM job id inside the signed payload: the signature no longer holds.
  Json env = Json::parse(*envelope);
  std::string payload = *Base64Decode(env["payload"].get<std::string>());
  const std::size_t at = payload.find(R"("jobId":"4711")");
  ASSERT_NE(at, std::string::npos) << payload;
  payload.replace(at, 14, R"("jobId":"4712")");
  env["payload"] = Base64Encode(payload);
  auto tampered = VerifyAttestation(env.dump(), key->public_key());
  ASSERT_FALSE(tampered.has_value());
  EXPECT_EQ(tampered.error().code(), Code::kDataLoss);

  // The name and the id go together; a malformed executor entry does not parse.
  AttestationInput half = in;
  half.executor_job_id.clear();
  auto refused = BuildStatement(half);
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code(), Code::kInvalidArgument);
  auto expect_bad = [&](const Json& executor, std::string_view what) {
    Json bad = j;
    bad["predicate"]["buildDefinition"]["internalParameters"]["executor"] = executor;
    auto r = ParseStatement(bad.dump());
    ASSERT_FALSE(r.has_value()) << executor.dump();
    EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
    EXPECT_THAT(r.error().ToString(), HasSubstr(what));
  };
  expect_bad("slurm", "internalParameters.executor");
  expect_bad(Json{{"name", "slurm"}, {"jobId", 4711}}, "internalParameters.executor.jobId");
  expect_bad(Json{{"name", "slurm"}}, "internalParameters.executor.jobId");
  expect_bad(Json{{"name", "slurm"}, {"jobId", ""}}, "empty name or jobId");
}

TEST(AttestationTest, Rfc3339) {
  EXPECT_EQ(Rfc3339Millis(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(Rfc3339Millis(1764117252345), "2025-11-26T00:34:12.345Z");
  EXPECT_EQ(Rfc3339Millis(-1), "1969-12-31T23:59:59.999Z");
}

}  // namespace
}  // namespace cairn::prov
