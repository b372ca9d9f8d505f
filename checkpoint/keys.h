// Checkpoint master keys: loading them from a file, an environment variable or a key
// management command, generating key files, and wrapping per-shard data keys.
//
// Key text format (file, variable, command output): 64 hexadecimal characters (either
// case) encoding 32 bytes. A key file holds exactly that, optionally followed by one
// "\n"; the variable and the command output may have surrounding whitespace.
//
// Key id: lowercase hex of the first 8 bytes of SHA-256("cairn.keyid.v1" || key), 16
// characters. Manifests record it so that a wrong key is named before any decryption.
//
// Wrapped data key (60 bytes): nonce (12, random) || AES-256-GCM ciphertext of the 32
// key bytes || tag (16), under HKDF-SHA256(master, salt = "", info = "cairn.wrap.v1"),
// with caller-chosen AAD binding the wrapped key to its context (run, step, rank).
//
// Promise: no function here ever puts key material into an error message or a log; a
// MasterKey's `source` names where the key came from, not what it is. Errors use codes
// by what the caller should do: a badly formed key is kInvalidArgument, a key file
// readable by others is kFailedPrecondition, a missing key is kNotFound, a failing key
// command is kUnavailable (retry), a hung one kDeadlineExceeded, and a wrapped key that
// does not authenticate is kDataLoss.
//
// Threading: all functions are thread-safe (LoadKeyFromCommand forks a child per call).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/crypto.h"
#include "common/status.h"

namespace cairn::ckpt {

struct MasterKey {
  SecretKey key;
  std::string id;      // KeyId(key)
  std::string source;  // "file /path", "env CAIRN_MASTER_KEY", "command <cmd>"
};

// The default variable for LoadKeyFromEnv.
inline constexpr std::string_view kMasterKeyEnvVar = "CAIRN_MASTER_KEY";

// Lowercase hex of the first 8 bytes of SHA-256("cairn.keyid.v1" || key).
std::string KeyId(const SecretKey& key);

// Parses 64 hex characters into a key. `what` names the origin for messages ("key file
// /x"); errors are kInvalidArgument and never quote the text.
Result<SecretKey> ParseHexKey(std::string_view hex, std::string_view what);

// Loads a key file (format above). Refuses a file with any group/other permission bit
// (kFailedPrecondition, with the chmod to run), one that is not a regular file
// (kInvalidArgument), and a missing one (kNotFound).
Result<MasterKey> LoadKeyFile(const std::string& path);

// Loads the key from an environment variable; unset or empty: kNotFound.
Result<MasterKey> LoadKeyFromEnv(std::string_view var = kMasterKeyEnvVar);

// Runs `/bin/sh -c command` (common/subprocess.h: stdin from /dev/null, in its own
// process group, its output wiped from every buffer once read) and takes the key from
// its standard output (at most 4 KiB). A non-zero exit is kUnavailable
// with the status and the first line of its stderr; after `timeout` the process group
// is killed and the result is kDeadlineExceeded.
Result<MasterKey> LoadKeyFromCommand(const std::string& command,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Creates a new key file: 32 random bytes as 64 hex characters and "\n", mode 0600,
// never replacing an existing file (kFailedPrecondition); the file and its directory
// are fsynced before returning.
Status WriteNewKeyFile(const std::string& path);

// Where the master key comes from; exactly one field must be set.
struct KeySource {
  std::string file;     // key file path (--key-file, CAIRN_KEY_FILE, checkpoint.key_file)
  std::string env_var;  // name of a variable holding the hex key (CAIRN_MASTER_KEY)
  std::string command;  // key management command printing the hex key (--key-command)
};

// Loads the key from the one source given; none or several: kInvalidArgument.
Result<MasterKey> ResolveKey(const KeySource& source);

// Size of a wrapped data key: nonce || ciphertext || tag.
inline constexpr std::size_t kWrappedKeySize = 12 + 32 + 16;

// Encrypts `data_key` under `master` (see above); `aad` binds it to its context.
Result<std::vector<uint8_t>> WrapKey(const MasterKey& master, const SecretKey& data_key,
                                     std::span<const uint8_t> aad);
// Inverse of WrapKey. Wrong length or failed authentication (tampering, another
// context's AAD, another master key): kDataLoss.
Result<SecretKey> UnwrapKey(const MasterKey& master, std::span<const uint8_t> wrapped,
                            std::span<const uint8_t> aad);

}  // namespace cairn::ckpt
