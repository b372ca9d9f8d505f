#include "coordinator/spec_digest.h"

#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>

#include "checkpoint/crypto.h"
#include "checkpoint/types.h"

namespace cairn::coord {

Result<std::string> SpecDigestHex(const proto::JobSpec& spec) {
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  if (auto st = google::protobuf::util::MessageToJsonString(spec, &json, o); !st.ok()) {
    return MakeError(Code::kInternal, "job spec as JSON: {}", st.ToString());
  }
  // nlohmann objects are ordered maps: dump() sorts the keys, map entries included.
  const std::string canonical = nlohmann::json::parse(json).dump();
  auto d = ckpt::Sha256Of(std::as_bytes(std::span(canonical)));
  return ckpt::ToHex(d);
}

std::map<std::string, std::string> HyperparametersOf(const proto::JobSpec& spec) {
  std::map<std::string, std::string> out;
  const auto& c = spec.command();
  for (int i = 1; i < c.size(); ++i) {
    const std::string& a = c[i];
    if (!a.starts_with("--") || a.size() == 2) continue;
    if (auto eq = a.find('='); eq != std::string::npos) {
      out[a.substr(2, eq - 2)] = a.substr(eq + 1);
    } else if (i + 1 < c.size() && !c[i + 1].starts_with("--")) {
      out[a.substr(2)] = c[i + 1];
      ++i;
    } else {
      out[a.substr(2)] = "true";
    }
  }
  return out;
}

}  // namespace cairn::coord
