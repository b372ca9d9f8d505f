#include "provenance/record.h"

#include <algorithm>

#include "checkpoint/crypto.h"
#include "provenance/json_internal.h"

namespace cairn::prov {
namespace internal {

std::string Hex(std::string_view bytes) {
  return ckpt::ToHex(std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

namespace {

template <typename Repeated>
Json StringArray(const Repeated& r) {
  Json a = Json::array();
  for (const auto& s : r) a.push_back(s);
  return a;
}

template <typename Map>
Json StringMap(const Map& m) {
  Json o = Json::object();
  for (const auto& [k, v] : m) o[k] = v;
  return o;
}

}  // namespace

Json CodeJson(const proto::CodeVersion& c) {
  // `diff` is left out on purpose: diff_sha256 covers it (see record.h).
  return Json{{"git_commit", c.git_commit()},
              {"branch", c.branch()},
              {"remote", c.remote()},
              {"dirty", c.dirty()},
              {"diff_sha256", Hex(c.diff_sha256())},
              {"untracked", StringArray(c.untracked())},
              {"diff_size", c.diff_size()},
              {"diff_too_large", c.diff_too_large()},
              {"is_git_repo", c.is_git_repo()},
              {"note", c.note()}};
}

Json InputJson(const proto::InputDigest& in) {
  return Json{{"path", in.path()},
              {"kind", in.kind()},
              {"sha256", Hex(in.sha256())},
              {"size_bytes", in.size_bytes()},
              {"pinned", in.pinned()}};
}

Json EnvironmentJson(const proto::EnvironmentInfo& env) {
  Json gpus = Json::array();
  for (const auto& g : env.gpus()) {
    gpus.push_back(Json{{"index", g.index()},
                        {"model", g.model()},
                        {"memory_bytes", g.memory_bytes()},
                        {"uuid", g.uuid()}});
  }
  return Json{{"hosts", StringArray(env.hosts())},
              {"os", env.os()},
              {"compiler", env.compiler()},
              {"library_versions", StringMap(env.library_versions())},
              {"gpus", std::move(gpus)},
              {"driver_version", env.driver_version()},
              {"cairn_version", env.cairn_version()},
              {"kernel", env.kernel()},
              {"notes", StringArray(env.notes())}};
}

Json RecordJson(const proto::ProvenanceRecord& r) {
  Json inputs = Json::array();
  for (const auto& in : r.inputs()) inputs.push_back(InputJson(in));
  return Json{{"format", std::string(kRecordFormat)},
              {"job_id", r.job_id()},
              {"run_id", r.run_id()},
              {"attempt", r.attempt()},
              {"code", CodeJson(r.code())},
              {"command", StringArray(r.command())},
              {"spec_sha256", Hex(r.spec_sha256())},
              {"hyperparameters", StringMap(r.hyperparameters())},
              {"inputs", std::move(inputs)},
              {"resumed_from_manifest", Hex(r.resumed_from_manifest())},
              {"environment", EnvironmentJson(r.environment())},
              {"started_unix_ms", r.started_unix_ms()}};
}

Result<std::string> Dump(const Json& j, std::string_view what) {
  try {
    return j.dump();
  } catch (const Json::type_error& e) {
    return MakeError(Code::kInvalidArgument, "{}: a string is not valid UTF-8 ({})", what,
                     e.what());
  }
}

}  // namespace internal

namespace {

Status CheckDigestField(std::string_view bytes, std::string_view name) {
  if (!bytes.empty() && bytes.size() != 32) {
    return MakeError(Code::kInvalidArgument, "provenance record: {} has {} bytes, not 32", name,
                     bytes.size());
  }
  return OkStatus();
}

}  // namespace

Result<std::string> CanonicalRecordJson(const proto::ProvenanceRecord& record) {
  return internal::Dump(internal::RecordJson(record),
                        fmt::format("provenance record of run {}", record.run_id()));
}

Result<Digest> RecordDigest(const proto::ProvenanceRecord& record) {
  CAIRN_ASSIGN_OR_RETURN(std::string json, CanonicalRecordJson(record));
  return ckpt::Sha256Of(std::as_bytes(std::span(json.data(), json.size())));
}

Status CheckRecord(const proto::ProvenanceRecord& record) {
  const proto::CodeVersion& code = record.code();
  CAIRN_RETURN_IF_ERROR(CheckDigestField(code.diff_sha256(), "code.diff_sha256"));
  CAIRN_RETURN_IF_ERROR(CheckDigestField(record.spec_sha256(), "spec_sha256"));
  CAIRN_RETURN_IF_ERROR(CheckDigestField(record.resumed_from_manifest(), "resumed_from_manifest"));
  for (int i = 0; i < record.inputs_size(); ++i) {
    const auto& in = record.inputs(i);
    if (in.sha256().size() != 32) {
      return MakeError(Code::kInvalidArgument, "provenance record: input {} ({}) has no digest", i,
                       in.path());
    }
  }
  if (!code.diff().empty() || (code.diff_size() == 0 && !code.diff_sha256().empty())) {
    const Digest d =
        ckpt::Sha256Of(std::as_bytes(std::span(code.diff().data(), code.diff().size())));
    if (code.diff().size() != code.diff_size() ||
        std::string_view(reinterpret_cast<const char*>(d.data()), d.size()) != code.diff_sha256()) {
      return MakeError(Code::kDataLoss,
                       "provenance record: code.diff ({} bytes, sha256 {}) does not match "
                       "code.diff_size {} and code.diff_sha256 {}",
                       code.diff().size(), ckpt::ToHex(d), code.diff_size(),
                       internal::Hex(code.diff_sha256()));
    }
  } else if (code.diff_size() > 0 && !code.diff_too_large()) {
    return MakeError(Code::kDataLoss,
                     "provenance record: code.diff is missing ({} bytes recorded, not marked "
                     "too large)",
                     code.diff_size());
  }
  return OkStatus();
}

Result<std::vector<proto::InputDigest>> DigestInputs(std::span<const proto::InputSpec> inputs,
                                                     InputHasher& hasher) {
  std::vector<std::string> paths;
  for (const auto& in : inputs) {
    if (in.path().empty()) return MakeError(Code::kInvalidArgument, "an input has no path");
    if (in.kind() != "data" && in.kind() != "model") {
      return MakeError(Code::kInvalidArgument,
                       "input {}: kind is \"{}\"; it must be \"data\" or \"model\"", in.path(),
                       in.kind());
    }
    paths.push_back(in.path());
  }
  CAIRN_ASSIGN_OR_RETURN(std::vector<TreeDigest> digests, hasher.HashAll(paths));
  std::vector<proto::InputDigest> out;
  out.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const proto::InputSpec& spec = inputs[i];
    const TreeDigest& td = digests[i];
    if (!spec.sha256().empty()) {
      auto pin = ckpt::DigestFromHex(spec.sha256());
      if (!pin) {
        return MakeError(Code::kInvalidArgument, "input {}: pin: {}", spec.path(),
                         pin.error().message());
      }
      if (*pin != td.sha256) {
        return MakeError(Code::kFailedPrecondition,
                         "input {} has sha256 {} but is pinned to {}: it changed since it was "
                         "pinned (restore the pinned data or update the pin)",
                         spec.path(), ckpt::ToHex(td.sha256), ckpt::ToHex(*pin));
      }
    }
    proto::InputDigest d;
    d.set_path(spec.path());
    d.set_kind(spec.kind());
    d.set_sha256(std::string(td.sha256.begin(), td.sha256.end()));
    d.set_size_bytes(td.size_bytes);
    d.set_pinned(!spec.sha256().empty());
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace cairn::prov
