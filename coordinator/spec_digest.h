// What identifies a job spec and its hyperparameters in provenance records.
//
// Promise: SpecDigestHex is the SHA-256 (hex) of the spec's JSON form with proto field
// names, keys sorted (map entries included), no whitespace: the same spec gives the same
// digest in cairnd and in the CLI that verifies it. HyperparametersOf reads "--name value",
// "--name=value" and a bare "--flag" ("true") from the spec's command line, as given.
//
// Threading: pure functions.
#pragma once

#include <map>
#include <string>

#include "common/status.h"
#include "proto/cairn.pb.h"

namespace cairn::coord {

Result<std::string> SpecDigestHex(const proto::JobSpec& spec);
std::map<std::string, std::string> HyperparametersOf(const proto::JobSpec& spec);

}  // namespace cairn::coord
