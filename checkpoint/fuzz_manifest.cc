// libFuzzer target: manifest decoding, HEAD parsing and the chain scan must never crash,
// and whatever Decode accepts must re-encode to exactly the same bytes (canonical).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "checkpoint/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto m = cairn::ckpt::Manifest::Decode(bytes);
  if (m) {
    if (m->Encode() != bytes) std::abort();  // accepted bytes must be canonical
    (void)m->ComputeDigest();
  } else if (m.error().code() != cairn::Code::kDataLoss) {
    std::abort();  // malformed manifests are integrity failures, nothing else
  }
  return 0;
}
