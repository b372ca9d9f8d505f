// Test helper: commits checkpoints into DIR as fast as it can until killed.
//   ckpt_torture_writer DIR KEY_FILE
// Step k holds tensor "w" = TortureTensor(k) (see crash_test.cc); continues after the
// newest committed step. Prints "committed <step>" after each commit.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "checkpoint/writer.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR KEY_FILE\n", argv[0]);
    return 2;
  }
  auto key = cairn::ckpt::LoadKeyFile(argv[2]);
  if (!key) {
    std::fprintf(stderr, "%s\n", key.error().ToString().c_str());
    return 1;
  }
  cairn::ckpt::WriterOptions o;
  o.dir = argv[1];
  o.run_id = "torture";
  o.key = std::make_shared<const cairn::ckpt::MasterKey>(std::move(*key));
  o.chunk_size = 256 << 10;
  o.retention.keep_last = 3;
  auto w = cairn::ckpt::CheckpointWriter::Open(o);
  if (!w) {
    std::fprintf(stderr, "%s\n", w.error().ToString().c_str());
    return 1;
  }
  uint64_t step = (*w)->head() ? (*w)->head()->step + 1 : 1;
  std::vector<std::byte> data(4 << 20);
  for (;; ++step) {
    std::mt19937_64 rng(step);
    for (std::size_t i = 0; i < data.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(data.data() + i, &v, 8);
    }
    cairn::ckpt::TensorRef t{"w", cairn::ckpt::DType::kU8, {data.size()}, data};
    std::vector<cairn::ckpt::TensorRef> refs{t};
    auto r = (*w)->Save(step, refs);
    if (!r) {
      std::fprintf(stderr, "%s\n", r.error().ToString().c_str());
      return 1;
    }
    std::printf("committed %llu\n", static_cast<unsigned long long>(step));
    std::fflush(stdout);
  }
}
