// Internal to provenance/: the JSON forms shared by record.cc and attestation.cc.
//
// Threading: pure functions.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "proto/cairn.pb.h"

namespace cairn::prov::internal {

using Json = nlohmann::json;

// Lowercase hex of a bytes field ("" for empty).
std::string Hex(std::string_view bytes);

// The canonical objects of record.h (every field, proto names, bytes as hex).
Json CodeJson(const proto::CodeVersion& code);
Json InputJson(const proto::InputDigest& input);
Json EnvironmentJson(const proto::EnvironmentInfo& env);
Json RecordJson(const proto::ProvenanceRecord& record);

// Compact dump with sorted keys; invalid UTF-8 in any string is kInvalidArgument.
Result<std::string> Dump(const Json& j, std::string_view what);

}  // namespace cairn::prov::internal
