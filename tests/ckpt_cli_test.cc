// `cairn ckpt` end to end through the real binary: keys, import of an h5py-written file,
// ls/verify/inspect, export read back by h5py bit for bit, gc, rekey, and tampering.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/store.h"
#include "common/io.h"
#include "tests/process_util.h"

namespace cairn {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::BinDir;
using testing::RunCommand;

constexpr const char* kPython = "/usr/bin/python3";

class CkptCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RunCommand({kPython, "-c", "import h5py, numpy"}).exit_code != 0) {
      GTEST_SKIP() << "python3-h5py / python3-numpy not installed (scripts/setup installs them)";
    }
    dir_ = fs::temp_directory_path() / ("cairn_ckpt_cli_" + io::RandomSuffix());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string P(std::string_view name) const { return (dir_ / name).string(); }
  testing::CommandResult Cairn(std::vector<std::string> args,
                               std::map<std::string, std::string> env = {}) {
    args.insert(args.begin(), BinDir() + "/cairn");
    return RunCommand(args, env);
  }
  testing::CommandResult Py(const std::string& code) { return RunCommand({kPython, "-c", code}); }

  fs::path dir_;
};

// Digest of every dataset's raw bytes, dtype and shape, as h5py sees them.
std::string DigestScript(const std::string& path, bool skip_cairn_group) {
  return "import h5py, hashlib, json\n"
         "out = {}\n"
         "def visit(name, obj):\n"
         "    if isinstance(obj, h5py.Dataset)" +
         std::string(skip_cairn_group ? " and not name.startswith('.cairn')" : "") +
         ":\n"
         "        a = obj[()]\n"
         "        out[name] = [str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]\n"
         "h5py.File('" + path + "', 'r').visititems(visit)\n"
         "print(json.dumps(out, sort_keys=True))\n";
}

TEST_F(CkptCliTest, FullToolWorkflow) {
  // Keys.
  auto kg = Cairn({"ckpt", "keygen", "--out", P("key")});
  ASSERT_EQ(kg.exit_code, 0) << kg.output;
  EXPECT_THAT(kg.output, HasSubstr("key id"));
  struct stat st {};
  ASSERT_EQ(::stat(P("key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto again = Cairn({"ckpt", "keygen", "--out", P("key")});
  EXPECT_NE(again.exit_code, 0);
  EXPECT_THAT(again.output, HasSubstr("already exists"));
  ASSERT_EQ(Cairn({"ckpt", "keygen", "--out", P("key2")}).exit_code, 0);
  const std::map<std::string, std::string> env = {{"CAIRN_KEY_FILE", P("key")}};

  // A plain HDF5 file written by h5py: every dtype h5py shares with cairn, nested groups,
  // a chunked + gzip dataset.
  auto py = Py("import h5py, numpy as np\n"
               "rng = np.random.default_rng(3)\n"
               "with h5py.File('" + P("pretrained.h5") + "', 'w') as f:\n"
               "    f['enc/layer0/weight'] = rng.standard_normal((64, 32), dtype=np.float32)\n"
               "    f['enc/layer0/bias'] = rng.standard_normal(32)\n"
               "    f['half'] = rng.standard_normal(100).astype(np.float16)\n"
               "    f['ids'] = np.arange(-5, 5, dtype=np.int64)\n"
               "    f['counts'] = np.arange(7, dtype=np.int32)\n"
               "    f['mask'] = np.array([0, 1, 255], dtype=np.uint8)\n"
               "    f['scalar'] = np.float32(2.5)\n"
               "    f.create_dataset('zipped', data=rng.standard_normal((50, 40), dtype=np.float32),"
               " chunks=(10, 10), compression='gzip')\n");
  ASSERT_EQ(py.exit_code, 0) << py.output;

  auto imp = Cairn({"ckpt", "import", P("pretrained.h5"), "--into", P("run"), "--step", "1",
                    "--run-id", "cli-run"}, env);
  ASSERT_EQ(imp.exit_code, 0) << imp.output;
  EXPECT_THAT(imp.output, HasSubstr("imported 8 tensors"));
  ASSERT_EQ(Cairn({"ckpt", "import", P("pretrained.h5"), "--into", P("run"), "--step", "2"}, env)
                .exit_code, 0);

  // ls, verify (with and without key), inspect.
  auto ls = Cairn({"ckpt", "ls", P("run"), "--json"});
  ASSERT_EQ(ls.exit_code, 0) << ls.output;
  auto j = nlohmann::json::parse(ls.output);
  EXPECT_EQ(j["run_id"], "cli-run");
  EXPECT_TRUE(j["chain_ok"].get<bool>());
  ASSERT_EQ(j["steps"].size(), 2u);
  EXPECT_EQ(j["steps"][1]["previous"], j["steps"][0]["digest"]);
  const std::string head = j["head"];
  auto v0 = Cairn({"ckpt", "verify", P("run")});
  EXPECT_EQ(v0.exit_code, 0) << v0.output;
  EXPECT_THAT(v0.output, HasSubstr("no key given"));
  auto v1 = Cairn({"ckpt", "verify", P("run"), "--head", head}, env);
  EXPECT_EQ(v1.exit_code, 0) << v1.output;
  EXPECT_THAT(v1.output, HasSubstr("authenticated"));
  auto insp = Cairn({"ckpt", "inspect", P("run"), "--step", "2"}, env);
  ASSERT_EQ(insp.exit_code, 0) << insp.output;
  EXPECT_THAT(insp.output, HasSubstr("enc/layer0/weight"));
  EXPECT_THAT(insp.output, HasSubstr("[64, 32]"));
  EXPECT_THAT(insp.output, HasSubstr("f16"));
  auto nokey = Cairn({"ckpt", "inspect", P("run"), "--step", "2"});
  EXPECT_NE(nokey.exit_code, 0);
  EXPECT_THAT(nokey.output, HasSubstr("--key-file"));

  // export -> h5py reads the same values, bit for bit.
  auto ex = Cairn({"ckpt", "export", P("run"), "--step", "2", "--out", P("out.h5")}, env);
  ASSERT_EQ(ex.exit_code, 0) << ex.output;
  auto refuse = Cairn({"ckpt", "export", P("run"), "--step", "2", "--out", P("out.h5")}, env);
  EXPECT_NE(refuse.exit_code, 0);
  EXPECT_THAT(refuse.output, HasSubstr("refusing to overwrite"));
  auto a = Py(DigestScript(P("pretrained.h5"), false));
  auto b = Py(DigestScript(P("out.h5"), true));
  ASSERT_EQ(a.exit_code, 0) << a.output;
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_EQ(a.output, b.output);
  EXPECT_EQ(nlohmann::json::parse(a.output).size(), 8u);

  // gc keeps the chain verifiable.
  auto gc = Cairn({"ckpt", "gc", P("run"), "--keep-last", "1"});
  ASSERT_EQ(gc.exit_code, 0) << gc.output;
  EXPECT_THAT(gc.output, HasSubstr("pruned 1 step(s): 1"));
  auto ls2 = Cairn({"ckpt", "ls", P("run")});
  EXPECT_THAT(ls2.output, HasSubstr("pruned"));
  EXPECT_EQ(Cairn({"ckpt", "verify", P("run")}, env).exit_code, 0);

  // rekey: the old key stops working, the new one works, the head stays.
  auto rk = Cairn({"ckpt", "rekey", P("run"), "--old-key-file", P("key"), "--new-key-file", P("key2")});
  ASSERT_EQ(rk.exit_code, 0) << rk.output;
  auto old = Cairn({"ckpt", "verify", P("run")}, env);
  EXPECT_NE(old.exit_code, 0);
  EXPECT_THAT(old.output, HasSubstr("wrong key"));
  auto fresh = Cairn({"ckpt", "verify", P("run"), "--key-file", P("key2"), "--head", head});
  EXPECT_EQ(fresh.exit_code, 0) << fresh.output;

  // Tampering: the first failure names the step, the shard and what is wrong.
  const std::string shard = P("run") + "/" + ckpt::StepDirName(2) + "/" + ckpt::ShardFileName(0);
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(5000);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(5000);
    f.write(&c, 1);
  }
  auto bad = Cairn({"ckpt", "verify", P("run")});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.output, HasSubstr("FAILED: step 2: shard of rank 0:"));
  EXPECT_THAT(bad.output, HasSubstr("SHA-256"));
  auto wrong_head = Cairn({"ckpt", "verify", P("run"), "--head", std::string(64, 'a')});
  EXPECT_NE(wrong_head.exit_code, 0);
  EXPECT_THAT(wrong_head.output, HasSubstr("rolled back"));
  auto bad_head = Cairn({"ckpt", "verify", P("run"), "--head", "xyz"});
  EXPECT_EQ(bad_head.exit_code, 2);
  EXPECT_THAT(bad_head.output, HasSubstr("--head"));
}

TEST_F(CkptCliTest, KeyFileWithLooseModeIsRefused) {
  ASSERT_EQ(Cairn({"ckpt", "keygen", "--out", P("key")}).exit_code, 0);
  fs::permissions(P("key"), fs::perms::group_read | fs::perms::others_read, fs::perm_options::add);
  auto r = Cairn({"ckpt", "verify", P("nothing"), "--key-file", P("key")});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("chmod 600"));
}

}  // namespace
}  // namespace cairn
