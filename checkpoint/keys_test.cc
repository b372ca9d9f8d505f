#include "checkpoint/keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "common/io.h"

namespace cairn::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr std::string_view kHex =
    "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";

class KeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("cairn_keys_test_{}", io::RandomSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(std::string_view name) const { return (dir_ / name).string(); }
  std::string Write(std::string_view name, std::string_view content, mode_t mode = 0600) {
    const std::string p = Path(name);
    std::ofstream(p, std::ios::binary) << content;
    ::chmod(p.c_str(), mode);
    return p;
  }

  fs::path dir_;
};

std::string ErrorText(const Error& e) { return e.ToString(); }

TEST_F(KeysTest, KeyIdIsSixteenHexOfDomainSeparatedHash) {
  auto key = ParseHexKey(kHex, "test");
  ASSERT_TRUE(key.has_value());
  Sha256 h;
  h.Update(std::string_view("cairn.keyid.v1"));
  h.Update(key->bytes());
  const Digest d = h.Finish();
  const std::string id = KeyId(*key);
  EXPECT_EQ(id, ToHex(std::span(d).first(8)));
  EXPECT_THAT(id, ::testing::MatchesRegex("[0-9a-f]{16}"));
}

TEST_F(KeysTest, LoadsGoodFileWithAndWithoutNewline) {
  for (std::string content : {std::string(kHex) + "\n", std::string(kHex)}) {
    const std::string p = Write("key", content);
    auto mk = LoadKeyFile(p);
    ASSERT_TRUE(mk.has_value()) << mk.error().ToString();
    EXPECT_EQ(ToHex(mk->key.bytes()), kHex);
    EXPECT_EQ(mk->id, KeyId(mk->key));
    EXPECT_EQ(mk->id.size(), 16u);
    EXPECT_EQ(mk->source, "file " + p);
    fs::remove(p);
  }
  // Upper-case hex is the same key.
  std::string upper(kHex);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto mk = LoadKeyFile(Write("upper", upper + "\n"));
  ASSERT_TRUE(mk.has_value());
  EXPECT_EQ(ToHex(mk->key.bytes()), kHex);
}

TEST_F(KeysTest, RefusesFileReadableByOthers) {
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    const std::string p = Write("key", std::string(kHex) + "\n", mode);
    auto mk = LoadKeyFile(p);
    ASSERT_FALSE(mk.has_value());
    EXPECT_EQ(mk.error().code(), Code::kFailedPrecondition);
    EXPECT_THAT(ErrorText(mk.error()), HasSubstr(fmt::format("has mode {:04o}", mode)));
    EXPECT_THAT(ErrorText(mk.error()), HasSubstr("must not be readable by group or others"));
    EXPECT_THAT(ErrorText(mk.error()), HasSubstr("chmod 600 " + p));
    fs::remove(p);
  }
  // 0400 is fine.
  auto ok = LoadKeyFile(Write("ro", kHex, 0400));
  EXPECT_TRUE(ok.has_value());
}

TEST_F(KeysTest, MalformedContentIsInvalidArgumentWithoutEchoingIt) {
  const std::string hex(kHex);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"short", hex.substr(1) + "\n"},
      {"long", hex + "0\n"},
      {"nonhex", hex.substr(0, 63) + "g\n"},
      {"extra_line", hex + "\n" + hex + "\n"},
      {"crlf", hex + "\r\n"},
      {"two_newlines", hex + "\n\n"},
      {"leading_space", " " + hex.substr(1) + "\n"},
      {"empty", ""},
  };
  for (const auto& [name, content] : cases) {
    SCOPED_TRACE(name);
    const std::string p = Write(name, content);
    auto mk = LoadKeyFile(p);
    ASSERT_FALSE(mk.has_value());
    EXPECT_EQ(mk.error().code(), Code::kInvalidArgument);
    EXPECT_THAT(ErrorText(mk.error()), HasSubstr("key file " + p));
    EXPECT_THAT(ErrorText(mk.error()), Not(HasSubstr(hex.substr(2, 40))));
  }
}

TEST_F(KeysTest, MissingFileAndNonRegularFile) {
  auto missing = LoadKeyFile(Path("nope"));
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().code(), Code::kNotFound);
  EXPECT_THAT(ErrorText(missing.error()), HasSubstr(Path("nope")));

  fs::create_directory(Path("subdir"));
  ::chmod(Path("subdir").c_str(), 0700);
  auto dir = LoadKeyFile(Path("subdir"));
  ASSERT_FALSE(dir.has_value());
  EXPECT_EQ(dir.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(ErrorText(dir.error()), HasSubstr("not a regular file"));
}

TEST_F(KeysTest, KeygenWritesPrivateFileAndRefusesOverwrite) {
  const std::string p = Path("new.key");
  ASSERT_TRUE(WriteNewKeyFile(p).has_value());
  struct stat st;
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, 65);
  auto mk = LoadKeyFile(p);
  ASSERT_TRUE(mk.has_value()) << mk.error().ToString();

  auto again = WriteNewKeyFile(p);
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), Code::kFailedPrecondition);
  EXPECT_THAT(ErrorText(again.error()), HasSubstr(p));
  // The existing key is untouched.
  auto same = LoadKeyFile(p);
  ASSERT_TRUE(same.has_value());
  EXPECT_TRUE(same->key == mk->key);

  ASSERT_TRUE(WriteNewKeyFile(Path("other.key")).has_value());
  auto other = LoadKeyFile(Path("other.key"));
  ASSERT_TRUE(other.has_value());
  EXPECT_FALSE(other->key == mk->key);
  EXPECT_NE(other->id, mk->id);

  auto no_dir = WriteNewKeyFile(Path("missing/dir/k"));
  ASSERT_FALSE(no_dir.has_value());
  EXPECT_EQ(no_dir.error().code(), Code::kNotFound);
}

TEST_F(KeysTest, EnvironmentVariable) {
  const char* var = "CAIRN_KEYS_TEST_KEY";
  ::unsetenv(var);
  auto unset = LoadKeyFromEnv(var);
  ASSERT_FALSE(unset.has_value());
  EXPECT_EQ(unset.error().code(), Code::kNotFound);
  EXPECT_THAT(ErrorText(unset.error()), HasSubstr(var));

  ::setenv(var, "", 1);
  auto empty = LoadKeyFromEnv(var);
  ASSERT_FALSE(empty.has_value());
  EXPECT_EQ(empty.error().code(), Code::kNotFound);

  ::setenv(var, (std::string(kHex) + "\n").c_str(), 1);
  auto mk = LoadKeyFromEnv(var);
  ASSERT_TRUE(mk.has_value()) << mk.error().ToString();
  EXPECT_EQ(ToHex(mk->key.bytes()), kHex);
  EXPECT_EQ(mk->source, std::string("env ") + var);

  ::setenv(var, "not a key", 1);
  auto bad = LoadKeyFromEnv(var);
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(ErrorText(bad.error()), Not(HasSubstr("not a key")));
  ::unsetenv(var);
}

TEST_F(KeysTest, CommandProvider) {
  const std::string cmd = fmt::format("printf '%s\\n' {}", kHex);
  auto mk = LoadKeyFromCommand(cmd);
  ASSERT_TRUE(mk.has_value()) << mk.error().ToString();
  EXPECT_EQ(ToHex(mk->key.bytes()), kHex);
  EXPECT_EQ(mk->source, "command " + cmd);

  auto failed = LoadKeyFromCommand("echo 'kms: access denied' >&2; echo second >&2; exit 3");
  ASSERT_FALSE(failed.has_value());
  EXPECT_EQ(failed.error().code(), Code::kUnavailable);
  EXPECT_THAT(ErrorText(failed.error()), HasSubstr("exited with status 3"));
  EXPECT_THAT(ErrorText(failed.error()), HasSubstr("kms: access denied"));
  EXPECT_THAT(ErrorText(failed.error()),
              ::testing::EndsWith("exited with status 3: kms: access denied"));

  auto plain_exit = LoadKeyFromCommand("exit 3");
  ASSERT_FALSE(plain_exit.has_value());
  EXPECT_EQ(plain_exit.error().code(), Code::kUnavailable);

  auto garbage = LoadKeyFromCommand("echo hello");
  ASSERT_FALSE(garbage.has_value());
  EXPECT_EQ(garbage.error().code(), Code::kInvalidArgument);

  auto flood = LoadKeyFromCommand("head -c 100000 /dev/zero | tr '\\0' a");
  ASSERT_FALSE(flood.has_value());
  EXPECT_EQ(flood.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(ErrorText(flood.error()), HasSubstr("more than 4096 bytes"));
}

TEST_F(KeysTest, CommandTimeoutKillsProcessGroup) {
  const auto start = std::chrono::steady_clock::now();
  // A background child keeps the pipes open after the shell itself would be gone.
  auto r = LoadKeyFromCommand("sleep 60 & sleep 60", std::chrono::seconds(1));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kDeadlineExceeded);
  EXPECT_LT(elapsed, std::chrono::seconds(10));

  // A command that closes its output but keeps running is still bounded.
  auto closed = LoadKeyFromCommand("exec >&- 2>&-; sleep 60", std::chrono::milliseconds(500));
  ASSERT_FALSE(closed.has_value());
  EXPECT_EQ(closed.error().code(), Code::kDeadlineExceeded);
}

TEST_F(KeysTest, ResolveKeyNeedsExactlyOneSource) {
  auto none = ResolveKey({});
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(ErrorText(none.error()), HasSubstr("no checkpoint key given"));

  const std::string p = Write("key", kHex);
  auto two = ResolveKey({.file = p, .env_var = "X"});
  ASSERT_FALSE(two.has_value());
  EXPECT_EQ(two.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(ErrorText(two.error()), HasSubstr("more than one key source"));

  auto file = ResolveKey({.file = p});
  ASSERT_TRUE(file.has_value());
  EXPECT_EQ(ToHex(file->key.bytes()), kHex);
  auto cmd = ResolveKey({.command = fmt::format("echo {}", kHex)});
  ASSERT_TRUE(cmd.has_value());
  EXPECT_EQ(cmd->id, file->id);
}

class WrapTest : public ::testing::Test {
 protected:
  static MasterKey Master(uint8_t fill) {
    std::array<uint8_t, 32> b;
    b.fill(fill);
    SecretKey k = SecretKey::FromBytes(b);
    return MasterKey{k, KeyId(k), "test"};
  }
  static std::vector<uint8_t> Aad(std::string_view s) { return {s.begin(), s.end()}; }
};

TEST_F(WrapTest, RoundTripAndFreshNonces) {
  const MasterKey m = Master(1);
  auto dk = SecretKey::Random();
  ASSERT_TRUE(dk.has_value());
  const auto aad = Aad("run r1 step 40 rank 3");
  auto w1 = WrapKey(m, *dk, aad);
  auto w2 = WrapKey(m, *dk, aad);
  ASSERT_TRUE(w1 && w2);
  EXPECT_EQ(w1->size(), 60u);
  EXPECT_NE(*w1, *w2);  // random nonce
  auto u = UnwrapKey(m, *w1, aad);
  ASSERT_TRUE(u.has_value()) << u.error().ToString();
  EXPECT_TRUE(*u == *dk);
  auto u2 = UnwrapKey(m, *w2, aad);
  ASSERT_TRUE(u2.has_value());
  EXPECT_TRUE(*u2 == *dk);
}

TEST_F(WrapTest, EveryAlterationIsDataLoss) {
  const MasterKey m = Master(1);
  auto dk = SecretKey::Random();
  ASSERT_TRUE(dk.has_value());
  const auto aad = Aad("run r1 step 40 rank 3");
  auto w = WrapKey(m, *dk, aad);
  ASSERT_TRUE(w.has_value());

  auto wrong_master = UnwrapKey(Master(2), *w, aad);
  ASSERT_FALSE(wrong_master.has_value());
  EXPECT_EQ(wrong_master.error().code(), Code::kDataLoss);
  EXPECT_THAT(ErrorText(wrong_master.error()), HasSubstr("does not authenticate"));

  auto wrong_aad = UnwrapKey(m, *w, Aad("run r1 step 40 rank 4"));
  ASSERT_FALSE(wrong_aad.has_value());
  EXPECT_EQ(wrong_aad.error().code(), Code::kDataLoss);

  for (std::size_t i = 0; i < w->size(); ++i) {
    auto bad = *w;
    bad[i] ^= 0x01;
    auto r = UnwrapKey(m, bad, aad);
    ASSERT_FALSE(r.has_value()) << "byte " << i;
    EXPECT_EQ(r.error().code(), Code::kDataLoss);
  }
  auto short_w = *w;
  short_w.pop_back();
  auto r = UnwrapKey(m, short_w, aad);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kDataLoss);
  EXPECT_THAT(ErrorText(r.error()), HasSubstr("59 bytes, expected 60"));
}

}  // namespace
}  // namespace cairn::ckpt
