// The provenance record of a run attempt: its inputs' digests and its canonical digest.
//
// Promise:
//  - CanonicalRecordJson writes a ProvenanceRecord as JSON decided by the rules here
//    alone, never by the protobuf library's serialization (which is not canonical across
//    versions): an object {"format": "cairn-provenance-record/v1", <every field of the
//    record under its proto name>}, nested messages as objects with every field too
//    (default values included), bytes as lowercase hex, integers as JSON numbers, maps
//    as objects, repeated fields in their order; keys sorted, no whitespace (nlohmann's
//    compact dump). One field is left out: code.diff, which code.diff_sha256 covers, so
//    a 64 MiB diff does not make every digest computation rehash it. Strings must be
//    valid UTF-8 (kInvalidArgument naming the field otherwise).
//  - RecordDigest is the SHA-256 of those bytes: the provenance_digest that every
//    checkpoint manifest of the attempt carries. The same record gives the same digest
//    in any process and any version of cairn that writes format v1.
//  - CheckRecord verifies what the digest does not cover by itself: code.diff, when
//    present, has code.diff_size bytes and SHA-256 code.diff_sha256; every digest field
//    is empty or 32 bytes (kDataLoss / kInvalidArgument naming the field).
//  - DigestInputs hashes a job's inputs (InputSpec: path, kind "data" or "model",
//    optional sha256 pin) with an InputHasher and returns their InputDigests in the same
//    order. A pinned input whose digest differs from its pin is kFailedPrecondition
//    naming the path and both digests: the job must not run on data it did not ask for.
//
// Threading: free functions; thread-safe (DigestInputs uses the given hasher, which is
// one thread at a time).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "proto/cairn.pb.h"
#include "provenance/digest.h"

namespace cairn::prov {

inline constexpr std::string_view kRecordFormat = "cairn-provenance-record/v1";

Result<std::string> CanonicalRecordJson(const proto::ProvenanceRecord& record);
Result<Digest> RecordDigest(const proto::ProvenanceRecord& record);
Status CheckRecord(const proto::ProvenanceRecord& record);

Result<std::vector<proto::InputDigest>> DigestInputs(std::span<const proto::InputSpec> inputs,
                                                     InputHasher& hasher);

}  // namespace cairn::prov
