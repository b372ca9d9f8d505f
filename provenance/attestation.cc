#include "provenance/attestation.h"

#include <ctime>

#include <google/protobuf/util/json_util.h>

#include "checkpoint/crypto.h"
#include "provenance/json_internal.h"
#include "provenance/record.h"

namespace cairn::prov {
namespace {

using internal::Hex;
using internal::Json;

Result<Json> SpecJson(const proto::JobSpec& spec) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  std::string text;
  const auto status = google::protobuf::util::MessageToJsonString(spec, &text, opts);
  if (!status.ok()) {
    return MakeError(Code::kInvalidArgument, "job spec to JSON: {}", status.ToString());
  }
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return MakeError(Code::kInternal, "job spec JSON does not parse back");
  return j;
}

Json CodeDependency(const proto::CodeVersion& code, const std::string& workdir) {
  Json dep = {{"name", "code"}};
  if (!code.is_git_repo()) {
    if (!workdir.empty()) dep["uri"] = "file://" + workdir;
    dep["annotations"] = Json{{"gitRepository", false}, {"note", code.note()}};
    return dep;
  }
  if (!code.remote().empty()) {
    dep["uri"] =
        "git+" + code.remote() + (code.git_commit().empty() ? "" : "@" + code.git_commit());
  }
  if (!code.git_commit().empty()) {
    dep["digest"] = Json{{"gitCommit", code.git_commit()}};
  } else {
    dep["digest"] = Json{{"sha256", Hex(code.diff_sha256())}};
  }
  Json untracked = Json::array();
  for (const auto& u : code.untracked()) untracked.push_back(u);
  dep["annotations"] = Json{{"branch", code.branch()},
                            {"dirty", code.dirty()},
                            {"diffSha256", Hex(code.diff_sha256())},
                            {"diffSize", code.diff_size()},
                            {"diffTooLarge", code.diff_too_large()},
                            {"untracked", std::move(untracked)}};
  return dep;
}

Json InputDependency(const proto::InputDigest& in) {
  Json dep = {{"name", in.path()},
              {"digest", Json{{"sha256", Hex(in.sha256())}}},
              {"annotations",
               Json{{"kind", in.kind()}, {"pinned", in.pinned()}, {"sizeBytes", in.size_bytes()}}}};
  if (!in.path().empty() && in.path().front() == '/') dep["uri"] = "file://" + in.path();
  return dep;
}

bool IsHex64(const std::string& s) { return ckpt::DigestFromHex(s).has_value(); }

// The string at `key` of object `o`, or an error naming `where.key`.
Result<std::string> Str(const Json& o, const char* key, std::string_view where,
                        bool required = true) {
  const auto it = o.find(key);
  if (it == o.end()) {
    if (!required) return std::string();
    return MakeError(Code::kInvalidArgument, "statement: {}.{} is missing", where, key);
  }
  if (!it->is_string()) {
    return MakeError(Code::kInvalidArgument, "statement: {}.{} is not a string", where, key);
  }
  return it->get<std::string>();
}

Result<const Json*> Obj(const Json& o, const char* key, std::string_view where) {
  const auto it = o.find(key);
  if (it == o.end() || !it->is_object()) {
    return MakeError(Code::kInvalidArgument, "statement: {}.{} is missing or not an object", where,
                     key);
  }
  return &*it;
}

}  // namespace

std::string Rfc3339Millis(int64_t unix_ms) {
  int64_t secs = unix_ms / 1000;
  int64_t ms = unix_ms % 1000;
  if (ms < 0) {
    ms += 1000;
    --secs;
  }
  const std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
}

Result<std::string> BuildStatement(const AttestationInput& input) {
  if (input.subjects.empty()) {
    return MakeError(Code::kInvalidArgument, "an attestation needs at least one subject");
  }
  if (input.builder_id.empty()) {
    return MakeError(Code::kInvalidArgument, "an attestation needs a builder id");
  }
  if (input.executor.empty() != input.executor_job_id.empty()) {
    return MakeError(Code::kInvalidArgument,
                     "an attestation names an executor (\"{}\") and its job id (\"{}\") together "
                     "or neither",
                     input.executor, input.executor_job_id);
  }
  const proto::ProvenanceRecord& r = input.record;
  CAIRN_RETURN_IF_ERROR(CheckRecord(r));
  CAIRN_ASSIGN_OR_RETURN(Digest record_digest, RecordDigest(r));
  CAIRN_ASSIGN_OR_RETURN(Json spec, SpecJson(input.spec));

  Json subjects = Json::array();
  for (const auto& s : input.subjects) {
    if (s.name.empty()) return MakeError(Code::kInvalidArgument, "a subject has no name");
    subjects.push_back(Json{{"name", s.name}, {"digest", Json{{"sha256", ckpt::ToHex(s.sha256)}}}});
  }

  Json hyper = Json::object();
  for (const auto& [k, v] : r.hyperparameters()) hyper[k] = v;
  Json command = Json::array();
  for (const auto& c : r.command()) command.push_back(c);

  Json deps = Json::array();
  deps.push_back(CodeDependency(r.code(), input.spec.workdir()));
  for (const auto& in : r.inputs()) deps.push_back(InputDependency(in));
  if (!r.resumed_from_manifest().empty()) {
    deps.push_back(Json{{"name", "resumed-from"},
                        {"digest", Json{{"sha256", Hex(r.resumed_from_manifest())}}},
                        {"annotations", Json{{"kind", "checkpoint-manifest"}}}});
  }

  Json internal_params = {{"jobId", r.job_id()},
                          {"attempt", r.attempt()},
                          {"command", std::move(command)},
                          {"environment", internal::EnvironmentJson(r.environment())},
                          {"provenanceRecordSha256", ckpt::ToHex(record_digest)}};
  if (!input.executor.empty()) {
    internal_params["executor"] =
        Json{{"name", input.executor}, {"jobId", input.executor_job_id}};
  }

  Json metadata = {{"invocationId", r.run_id()}};
  if (r.started_unix_ms() != 0) metadata["startedOn"] = Rfc3339Millis(r.started_unix_ms());
  if (input.finished_unix_ms != 0) metadata["finishedOn"] = Rfc3339Millis(input.finished_unix_ms);

  const Json predicate = {
      {"buildDefinition",
       Json{{"buildType", std::string(kCairnBuildType)},
            {"externalParameters", Json{{"jobSpec", std::move(spec)},
                                        {"specSha256", Hex(r.spec_sha256())},
                                        {"hyperparameters", std::move(hyper)}}},
            {"internalParameters", std::move(internal_params)},
            {"resolvedDependencies", std::move(deps)}}},
      {"runDetails",
       Json{{"builder", Json{{"id", input.builder_id},
                             {"version", Json{{"cairn", r.environment().cairn_version()}}}}},
            {"metadata", std::move(metadata)}}}};
  const Json statement = {{"_type", std::string(kStatementType)},
                          {"subject", std::move(subjects)},
                          {"predicateType", std::string(kSlsaProvenanceType)},
                          {"predicate", predicate}};
  return internal::Dump(statement, fmt::format("statement of run {}", r.run_id()));
}

Result<ParsedStatement> ParseStatement(std::string_view json) {
  const Json j = Json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeError(Code::kInvalidArgument, "statement: not a JSON object");
  }
  CAIRN_ASSIGN_OR_RETURN(std::string type, Str(j, "_type", "statement"));
  if (type != kStatementType) {
    return MakeError(Code::kInvalidArgument, "statement: _type is \"{}\", expected \"{}\"", type,
                     kStatementType);
  }
  CAIRN_ASSIGN_OR_RETURN(std::string predicate_type, Str(j, "predicateType", "statement"));
  if (predicate_type != kSlsaProvenanceType) {
    return MakeError(Code::kInvalidArgument, "statement: predicateType is \"{}\", expected \"{}\"",
                     predicate_type, kSlsaProvenanceType);
  }
  ParsedStatement out;
  const auto subjects = j.find("subject");
  if (subjects == j.end() || !subjects->is_array() || subjects->empty()) {
    return MakeError(Code::kInvalidArgument, "statement: subject is missing or empty");
  }
  for (std::size_t i = 0; i < subjects->size(); ++i) {
    const Json& s = (*subjects)[i];
    const std::string where = fmt::format("subject[{}]", i);
    if (!s.is_object())
      return MakeError(Code::kInvalidArgument, "statement: {} is not an object", where);
    Subject sub;
    CAIRN_ASSIGN_OR_RETURN(sub.name, Str(s, "name", where, /*required=*/false));
    CAIRN_ASSIGN_OR_RETURN(const Json* digest, Obj(s, "digest", where));
    CAIRN_ASSIGN_OR_RETURN(std::string hex, Str(*digest, "sha256", where + ".digest"));
    auto d = ckpt::DigestFromHex(hex);
    if (!d) {
      return MakeError(Code::kInvalidArgument, "statement: {}.digest.sha256: {}", where,
                       d.error().message());
    }
    sub.sha256 = *d;
    out.subjects.push_back(std::move(sub));
  }

  CAIRN_ASSIGN_OR_RETURN(const Json* predicate, Obj(j, "predicate", "statement"));
  CAIRN_ASSIGN_OR_RETURN(const Json* build, Obj(*predicate, "buildDefinition", "predicate"));
  CAIRN_ASSIGN_OR_RETURN(out.build_type, Str(*build, "buildType", "buildDefinition"));
  if (out.build_type != kCairnBuildType) {
    return MakeError(Code::kInvalidArgument,
                     "statement: buildType is \"{}\", expected \"{}\" (not a cairn run)",
                     out.build_type, kCairnBuildType);
  }
  CAIRN_ASSIGN_OR_RETURN(const Json* external,
                         Obj(*build, "externalParameters", "buildDefinition"));
  CAIRN_ASSIGN_OR_RETURN(out.spec_sha256, Str(*external, "specSha256", "externalParameters"));
  CAIRN_ASSIGN_OR_RETURN(const Json* internal_params,
                         Obj(*build, "internalParameters", "buildDefinition"));
  CAIRN_ASSIGN_OR_RETURN(out.provenance_record_sha256,
                         Str(*internal_params, "provenanceRecordSha256", "internalParameters"));
  if (!IsHex64(out.provenance_record_sha256)) {
    return MakeError(Code::kInvalidArgument,
                     "statement: internalParameters.provenanceRecordSha256 is not a SHA-256");
  }
  if (internal_params->contains("executor")) {
    CAIRN_ASSIGN_OR_RETURN(const Json* executor,
                           Obj(*internal_params, "executor", "internalParameters"));
    CAIRN_ASSIGN_OR_RETURN(out.executor, Str(*executor, "name", "internalParameters.executor"));
    CAIRN_ASSIGN_OR_RETURN(out.executor_job_id,
                           Str(*executor, "jobId", "internalParameters.executor"));
    if (out.executor.empty() || out.executor_job_id.empty()) {
      return MakeError(Code::kInvalidArgument,
                       "statement: internalParameters.executor has an empty name or jobId");
    }
  }
  const auto deps = build->find("resolvedDependencies");
  if (deps != build->end()) {
    if (!deps->is_array()) {
      return MakeError(Code::kInvalidArgument, "statement: resolvedDependencies is not an array");
    }
    for (std::size_t i = 0; i < deps->size(); ++i) {
      const Json& d = (*deps)[i];
      const std::string where = fmt::format("resolvedDependencies[{}]", i);
      if (!d.is_object()) {
        return MakeError(Code::kInvalidArgument, "statement: {} is not an object", where);
      }
      Dependency dep;
      CAIRN_ASSIGN_OR_RETURN(dep.name, Str(d, "name", where, /*required=*/false));
      CAIRN_ASSIGN_OR_RETURN(dep.uri, Str(d, "uri", where, /*required=*/false));
      if (const auto dg = d.find("digest"); dg != d.end()) {
        if (!dg->is_object()) {
          return MakeError(Code::kInvalidArgument, "statement: {}.digest is not an object", where);
        }
        for (const auto& [alg, value] : dg->items()) {
          if (!value.is_string()) {
            return MakeError(Code::kInvalidArgument, "statement: {}.digest.{} is not a string",
                             where, alg);
          }
          dep.digest[alg] = value.get<std::string>();
        }
      }
      if (dep.uri.empty() && dep.digest.empty()) {
        // ResourceDescriptor: one of uri, digest, content is required; cairn writes
        // content never, so an annotation-only entry is the "not a git repository" code.
        if (!d.contains("annotations")) {
          return MakeError(Code::kInvalidArgument, "statement: {} has neither uri nor digest",
                           where);
        }
      }
      const auto ann = d.find("annotations");
      CAIRN_ASSIGN_OR_RETURN(dep.annotations_json,
                             internal::Dump(ann == d.end() ? Json::object() : *ann, where));
      out.dependencies.push_back(std::move(dep));
    }
  }

  CAIRN_ASSIGN_OR_RETURN(const Json* run, Obj(*predicate, "runDetails", "predicate"));
  CAIRN_ASSIGN_OR_RETURN(const Json* builder, Obj(*run, "builder", "runDetails"));
  CAIRN_ASSIGN_OR_RETURN(out.builder_id, Str(*builder, "id", "runDetails.builder"));
  CAIRN_ASSIGN_OR_RETURN(const Json* metadata, Obj(*run, "metadata", "runDetails"));
  CAIRN_ASSIGN_OR_RETURN(out.invocation_id,
                         Str(*metadata, "invocationId", "runDetails.metadata", false));
  CAIRN_ASSIGN_OR_RETURN(out.started_on, Str(*metadata, "startedOn", "runDetails.metadata", false));
  CAIRN_ASSIGN_OR_RETURN(out.finished_on,
                         Str(*metadata, "finishedOn", "runDetails.metadata", false));
  return out;
}

Result<std::string> SignStatement(std::string statement_json, const SigningKey& key) {
  CAIRN_ASSIGN_OR_RETURN(Envelope env,
                         SignEnvelope(kInTotoPayloadType, std::move(statement_json), key));
  return EnvelopeToJson(env);
}

Result<ParsedStatement> VerifyAttestation(std::string_view envelope_json, const VerifyKey& key) {
  CAIRN_ASSIGN_OR_RETURN(std::string payload,
                         VerifyEnvelopeJson(envelope_json, kInTotoPayloadType, key));
  return ParseStatement(payload);
}

}  // namespace cairn::prov
