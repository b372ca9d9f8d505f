// Attestations: what a run produced and how, as an in-toto Statement v1 with a SLSA
// Provenance v1 predicate, signed in a DSSE envelope.
//
// Promise: BuildStatement turns a run's ProvenanceRecord, its job spec and its outputs
// (subjects) into
//   {"_type": "https://in-toto.io/Statement/v1",
//    "subject": [{"name", "digest": {"sha256"}}],
//    "predicateType": "https://slsa.dev/provenance/v1",
//    "predicate": {
//      "buildDefinition": {
//        "buildType": kCairnBuildType,
//        "externalParameters": {"jobSpec" (the spec in protobuf's JSON form, proto field
//            names), "specSha256", "hyperparameters"},
//        "internalParameters": {"jobId", "attempt", "command", "environment" (as in the
//            record's canonical JSON), "provenanceRecordSha256" (RecordDigest: ties the
//            attestation to the provenance_digest of the run's checkpoint manifests),
//            "executor" (only for an attempt another system ran: {"name": "slurm",
//            "jobId": the attempt's SLURM job id}; known only once sbatch answered, after
//            the record was made, so it is here and not in the record)},
//        "resolvedDependencies": [
//          code: {"name": "code", "uri": "git+<origin url>@<commit>" (without an origin:
//              no uri), "digest": {"gitCommit"} (a repository without commits: {"sha256":
//              the diff's digest}), "annotations": {"branch", "dirty", "diffSha256",
//              "diffSize", "diffTooLarge", "untracked"}}; outside git: {"name": "code",
//              "uri": "file://<spec workdir>", "annotations": {"gitRepository": false,
//              "note"}},
//          each input: {"name": path, "uri": "file://<path>" for an absolute path,
//              "digest": {"sha256"}, "annotations": {"kind", "pinned", "sizeBytes"}},
//          a resumed run: {"name": "resumed-from", "digest": {"sha256": manifest digest},
//              "annotations": {"kind": "checkpoint-manifest"}}]},
//      "runDetails": {
//        "builder": {"id": builder_id, "version": {"cairn": cairn version}},
//        "metadata": {"invocationId": run id, "startedOn", "finishedOn" (RFC 3339 UTC
//            with milliseconds; left out when 0)}}}}
// serialized canonically (sorted keys, no whitespace), so the same input gives the same
// bytes. ParseStatement checks the statement is one of these (types, subjects with a
// sha256 each, the build type) and extracts what a verifier needs. SignStatement and
// VerifyAttestation wrap it in / take it out of a DSSE envelope of payload type
// "application/vnd.in-toto+json" (see dsse.h for the errors).
//
// The build type URI names this layout; a change that alters the meaning of a field
// must get a new URI (…/run/v2), additions of fields do not.
//
// Threading: free functions; thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "proto/cairn.pb.h"
#include "provenance/digest.h"
#include "provenance/dsse.h"

namespace cairn::prov {

inline constexpr std::string_view kInTotoPayloadType = "application/vnd.in-toto+json";
inline constexpr std::string_view kStatementType = "https://in-toto.io/Statement/v1";
inline constexpr std::string_view kSlsaProvenanceType = "https://slsa.dev/provenance/v1";
inline constexpr std::string_view kCairnBuildType = "https://cairn.dev/provenance/run/v1";

struct Subject {
  std::string name;  // e.g. "checkpoint/step-000000000100/manifest"
  Digest sha256{};
};

struct AttestationInput {
  std::vector<Subject> subjects;  // at least one
  proto::ProvenanceRecord record;
  proto::JobSpec spec;
  std::string builder_id;        // the cairnd that ran the job (a URI)
  int64_t finished_unix_ms = 0;  // 0: not finished
  // The system that ran the attempt and its id there ("slurm", "4711"); both empty for
  // cairn's own agents. One without the other is kInvalidArgument.
  std::string executor;
  std::string executor_job_id;
};

Result<std::string> BuildStatement(const AttestationInput& input);

struct Dependency {
  std::string name;
  std::string uri;
  std::map<std::string, std::string> digest;  // algorithm -> hex
  std::string annotations_json;               // canonical JSON object, "{}" if none
};

struct ParsedStatement {
  std::vector<Subject> subjects;
  std::string build_type;
  std::string builder_id;
  std::string invocation_id;
  std::string started_on;   // RFC 3339, or empty
  std::string finished_on;  // RFC 3339, or empty
  std::vector<Dependency> dependencies;
  std::string spec_sha256;               // hex
  std::string provenance_record_sha256;  // hex
  std::string executor;                  // internalParameters.executor, or empty
  std::string executor_job_id;
};

// kInvalidArgument naming the first field that does not fit.
Result<ParsedStatement> ParseStatement(std::string_view json);

// The statement in a signed DSSE envelope, as JSON.
Result<std::string> SignStatement(std::string statement_json, const SigningKey& key);
// Verifies the envelope under `key`, then parses the statement.
Result<ParsedStatement> VerifyAttestation(std::string_view envelope_json, const VerifyKey& key);

// Milliseconds since the epoch as RFC 3339 UTC: "2026-11-26T00:34:12.345Z".
std::string Rfc3339Millis(int64_t unix_ms);

}  // namespace cairn::prov
