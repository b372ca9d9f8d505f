#include "common/io.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cerrno>
#include <filesystem>

#include "common/fault_fs.h"

namespace cairn::io {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class IoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_io_test_{}", RandomSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(std::string_view name) const { return (dir_ / name).string(); }
  std::string Contents(std::string_view name) const {
    auto r = ReadWholeFile(DefaultFileSystem(), Path(name));
    return r ? *r : "<" + r.error().ToString() + ">";
  }
  static std::span<const std::byte> Bytes(std::string_view s) {
    return std::as_bytes(std::span(s.data(), s.size()));
  }

  fs::path dir_;
};

TEST_F(IoTest, PosixWriteReadRenameList) {
  auto& fsys = DefaultFileSystem();
  auto f = fsys.NewWritableFile(Path("a"), 0600);
  ASSERT_TRUE(f.has_value());
  ASSERT_TRUE((*f)->Append(Bytes("hello ")).has_value());
  ASSERT_TRUE((*f)->Append(Bytes("world")).has_value());
  ASSERT_TRUE((*f)->Sync().has_value());
  ASSERT_TRUE((*f)->Close().has_value());
  ASSERT_TRUE(fsys.Rename(Path("a"), Path("b")).has_value());
  ASSERT_TRUE(fsys.SyncDir(dir_.string()).has_value());
  auto data = ReadWholeFile(fsys, Path("b"));
  ASSERT_TRUE(data.has_value());
  EXPECT_EQ(*data, "hello world");
  auto info = fsys.Stat(Path("b"));
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->mode, 0600u);
  EXPECT_EQ(info->size, 11u);
  auto names = fsys.ListDir(dir_.string());
  ASSERT_TRUE(names.has_value());
  EXPECT_EQ(*names, std::vector<std::string>{"b"});
  auto r = fsys.OpenReadable(Path("b"));
  ASSERT_TRUE(r.has_value());
  std::array<std::byte, 5> buf{};
  auto n = (*r)->ReadAt(6, buf);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), 5), "world");
}

TEST_F(IoTest, ErrorsNamePathAndCause) {
  auto r = DefaultFileSystem().OpenReadable(Path("missing"));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kNotFound);
  EXPECT_THAT(r.error().ToString(), HasSubstr(Path("missing")));
  EXPECT_THAT(r.error().ToString(), HasSubstr("No such file or directory"));
  auto big = WriteFileAtomic(DefaultFileSystem(), Path("big"), std::string(100, 'x'));
  ASSERT_TRUE(big.has_value());
  auto limited = ReadWholeFile(DefaultFileSystem(), Path("big"), 10);
  ASSERT_FALSE(limited.has_value());
  EXPECT_EQ(limited.error().code(), Code::kInvalidArgument);
}

TEST_F(IoTest, ShortWriteThenEnospcIsReportedAndLeavesOldFile) {
  ASSERT_TRUE(WriteFileAtomic(DefaultFileSystem(), Path("state"), "old").has_value());
  FaultInjectingFileSystem ffs;
  ffs.FailNth(OpKind::kWrite, 1, ENOSPC, /*partial_bytes=*/3);
  auto st = WriteFileAtomic(ffs, Path("state"), "new contents");
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), Code::kResourceExhausted);
  EXPECT_THAT(st.error().ToString(), HasSubstr("No space left on device"));
  EXPECT_EQ(Contents("state"), "old");
  // The temp file was cleaned up.
  EXPECT_EQ(*DefaultFileSystem().ListDir(dir_.string()), std::vector<std::string>{"state"});
}

TEST_F(IoTest, EnospcOnCreateAndFsyncFailureAreReported) {
  FaultInjectingFileSystem ffs;
  ffs.FailNth(OpKind::kCreate, 1, ENOSPC);
  auto st = WriteFileAtomic(ffs, Path("x"), "data");
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), Code::kResourceExhausted);
  ffs.FailNth(OpKind::kSync, 1, EIO);
  auto st2 = WriteFileAtomic(ffs, Path("x"), "data");
  ASSERT_FALSE(st2.has_value());
  EXPECT_EQ(st2.error().code(), Code::kDataLoss);
  EXPECT_FALSE(DefaultFileSystem().Stat(Path("x")).has_value());
}

TEST_F(IoTest, CrashBeforeFsyncDropsUnsyncedBytes) {
  FaultInjectingFileSystem ffs;
  auto f = ffs.NewWritableFile(Path("log"), 0600);
  ASSERT_TRUE(f.has_value());
  ASSERT_TRUE(ffs.SyncDir(dir_.string()).has_value());
  ASSERT_TRUE((*f)->Append(Bytes("durable|")).has_value());
  ASSERT_TRUE((*f)->Sync().has_value());
  ASSERT_TRUE((*f)->Append(Bytes("lost")).has_value());
  ffs.CrashAtOp(ffs.mutating_ops() + 1);
  EXPECT_FALSE((*f)->Sync().has_value());  // the crash happens here
  EXPECT_TRUE(ffs.crashed());
  EXPECT_FALSE((*f)->Append(Bytes("after")).has_value());
  ASSERT_TRUE(ffs.RecoverFromCrash().has_value());
  EXPECT_EQ(Contents("log"), "durable|");
}

TEST_F(IoTest, CrashBeforeDirectoryFsyncUndoesRename) {
  ASSERT_TRUE(WriteFileAtomic(DefaultFileSystem(), Path("head"), "v1").has_value());
  FaultInjectingFileSystem ffs;
  auto f = ffs.NewWritableFile(Path("head.tmp"), 0600);
  ASSERT_TRUE(f.has_value());
  ASSERT_TRUE((*f)->Append(Bytes("v2")).has_value());
  ASSERT_TRUE((*f)->Sync().has_value());
  ASSERT_TRUE((*f)->Close().has_value());
  ASSERT_TRUE(ffs.Rename(Path("head.tmp"), Path("head")).has_value());
  ffs.CrashAtOp(ffs.mutating_ops() + 1);
  EXPECT_FALSE(ffs.SyncDir(dir_.string()).has_value());
  ASSERT_TRUE(ffs.RecoverFromCrash().has_value());
  // The rename was never durable, and neither was the temp file's directory entry.
  EXPECT_EQ(Contents("head"), "v1");
  EXPECT_FALSE(DefaultFileSystem().Stat(Path("head.tmp")).has_value());
}

// A crash at every mutating operation of an atomic replace, in turn, leaves either the
// old or the new contents: never a mix, never nothing.
TEST_F(IoTest, AtomicReplaceSurvivesACrashAtEveryOperation) {
  int completed_at = 0;
  for (int op = 1; op <= 20 && completed_at == 0; ++op) {
    ASSERT_TRUE(WriteFileAtomic(DefaultFileSystem(), Path("f"), "old").has_value());
    FaultInjectingFileSystem ffs;
    ffs.CrashAtOp(op);
    auto st = WriteFileAtomic(ffs, Path("f"), "new-new-new");
    if (st.has_value()) {
      EXPECT_FALSE(ffs.crashed());
      completed_at = op;
    }
    ASSERT_TRUE(ffs.RecoverFromCrash().has_value());
    auto contents = ReadWholeFile(DefaultFileSystem(), Path("f"));
    ASSERT_TRUE(contents.has_value()) << "crash at op " << op;
    if (st.has_value()) {
      EXPECT_EQ(*contents, "new-new-new");
    } else {
      EXPECT_EQ(*contents, "old") << "crash at op " << op;
    }
    EXPECT_EQ(DefaultFileSystem().ListDir(dir_.string())->size(), 1u) << "temp file left";
  }
  // create, write, fsync, close, rename, fsync-dir: 6 operations, so op 7 completes.
  EXPECT_EQ(completed_at, 7);
}

TEST_F(IoTest, FailAllAndReadFaults) {
  ASSERT_TRUE(WriteFileAtomic(DefaultFileSystem(), Path("r"), "abc").has_value());
  FaultInjectingFileSystem ffs;
  ffs.FailAll(OpKind::kRead, EIO);
  auto r = ReadWholeFile(ffs, Path("r"));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kDataLoss);
  EXPECT_THAT(r.error().ToString(), HasSubstr("injected fault"));
}

TEST(WritebackRangeTest, CoversEachWholeRegionOnce) {
  EXPECT_EQ(NextWritebackRange(0, 100, 0), std::nullopt) << "interval 0: off";
  EXPECT_EQ(NextWritebackRange(0, 4095, 4096), std::nullopt) << "no whole region yet";
  EXPECT_EQ(NextWritebackRange(0, 4096, 4096), (ByteRange{0, 4096}));
  EXPECT_EQ(NextWritebackRange(4096, 8191, 4096), std::nullopt) << "already handed over";
  // One append that completes several regions: one range up to the last whole one.
  EXPECT_EQ(NextWritebackRange(4096, 5 * 4096 + 7, 4096), (ByteRange{4096, 4 * 4096}));
  EXPECT_EQ(NextWritebackRange(8u << 20, (24u << 20) - 1, 8u << 20),
            (ByteRange{8u << 20, 8u << 20}));
}

// Appends of odd sizes that cross region boundaries in every way: the bytes on disk are
// exactly the bytes appended, through the POSIX file system and through the fault
// injector wrapped around it.
TEST_F(IoTest, EarlyWritebackKeepsTheBytesExact) {
  std::string data(3u << 20, '\0');
  uint64_t x = 88172645463325252ull;
  for (char& c : data) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  FaultInjectingFileSystem ffs;
  for (FileSystem* fsys : {static_cast<FileSystem*>(&DefaultFileSystem()),
                           static_cast<FileSystem*>(&ffs)}) {
    // 5000 is rounded up to 8192; 64 KiB regions are page-aligned already.
    for (uint64_t interval : {uint64_t{5000}, uint64_t{64} << 10}) {
      auto f = fsys->NewWritableFile(Path("wb"), {.mode = 0640, .early_writeback_bytes = interval});
      ASSERT_TRUE(f.has_value()) << f.error().ToString();
      const std::array<std::size_t, 7> sizes = {1, 4095, 4097, 70000, 1u << 20, 3, 200000};
      for (std::size_t off = 0, i = 0; off < data.size(); ++i) {
        const std::size_t n = std::min(sizes[i % sizes.size()], data.size() - off);
        ASSERT_TRUE((*f)->Append(Bytes(std::string_view(data).substr(off, n))).has_value());
        off += n;
      }
      ASSERT_TRUE((*f)->Sync().has_value());
      ASSERT_TRUE((*f)->Close().has_value());
      EXPECT_EQ(Contents("wb"), data) << "interval " << interval;
      EXPECT_EQ(DefaultFileSystem().Stat(Path("wb"))->mode, 0640u);
    }
  }
}

// Early writeback starts I/O but promises nothing: a crash still cuts everything after
// the last Sync().
TEST_F(IoTest, EarlyWritebackDoesNotMakeBytesDurable) {
  FaultInjectingFileSystem ffs;
  auto f = ffs.NewWritableFile(Path("log"), {.early_writeback_bytes = 4096});
  ASSERT_TRUE(f.has_value());
  ASSERT_TRUE(ffs.SyncDir(dir_.string()).has_value());
  const std::string synced(10000, 'a'), lost(50000, 'b');
  ASSERT_TRUE((*f)->Append(Bytes(synced)).has_value());
  ASSERT_TRUE((*f)->Sync().has_value());
  ASSERT_TRUE((*f)->Append(Bytes(lost)).has_value());  // several regions handed over
  ffs.CrashAtOp(ffs.mutating_ops() + 1);
  EXPECT_FALSE((*f)->Sync().has_value());
  ASSERT_TRUE(ffs.RecoverFromCrash().has_value());
  EXPECT_EQ(Contents("log"), synced);
}

}  // namespace
}  // namespace cairn::io
