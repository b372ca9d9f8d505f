// DSSE v1 envelopes signed with Ed25519: how cairn signs its attestations.
//
// Promise:
//  - A signature covers PAE(payloadType, payload) = "DSSEv1" SP LEN(type) SP type SP
//    LEN(payload) SP payload, lengths as ASCII decimal byte counts, never the payload
//    alone, so a payload cannot be passed off as another type.
//  - The envelope is the JSON object {"payload": base64(payload), "payloadType": type,
//    "signatures": [{"keyid": id, "sig": base64(signature)}]} (standard base64 with
//    padding when written; standard or URL-safe, padded or not, accepted when read, as
//    the DSSE spec allows).
//  - Keys are Ed25519 (OpenSSL EVP, one-shot EVP_DigestSign). A key id is the lowercase
//    hex SHA-256 of the 32-byte raw public key. Private keys are PKCS#8 PEM files written
//    0600, never over an existing file, fsynced with their directory; a private key file
//    with any group or other permission bit is refused (kFailedPrecondition, naming the
//    chmod), as are encrypted PEM files (cairn never prompts). Public keys are
//    SubjectPublicKeyInfo PEM. The private key's bytes are wiped when a SigningKey goes.
//  - VerifyEnvelope accepts an envelope only if its payloadType is the expected one, and
//    every signature whose keyid is the key's id (or empty) verifies under the key, and
//    at least one does. Errors name what failed: a malformed envelope, bad base64 or an
//    unexpected payloadType or a signature that does not verify is kDataLoss (do not
//    trust it); an envelope with no signature by the given key is kPermissionDenied,
//    listing the key ids it was signed with.
//
// Threading: keys are immutable values, safe to share between threads; free functions
// are thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace cairn::prov {

// "DSSEv1 <len(type)> <type> <len(payload)> <payload>".
std::string PreAuthEncoding(std::string_view payload_type, std::string_view payload);

std::string Base64Encode(std::string_view bytes);
// Standard or URL-safe alphabet, padding optional; no whitespace. kInvalidArgument otherwise.
Result<std::string> Base64Decode(std::string_view text);

// An Ed25519 public key.
class VerifyKey {
 public:
  static constexpr std::size_t kSize = 32;
  static Result<VerifyKey> FromRaw(std::span<const uint8_t> raw);
  // SubjectPublicKeyInfo PEM ("-----BEGIN PUBLIC KEY-----"); `what` names it in errors.
  static Result<VerifyKey> FromPem(std::string_view pem, std::string_view what = "public key");
  static Result<VerifyKey> LoadPem(const std::string& path);

  const std::array<uint8_t, kSize>& raw() const { return raw_; }
  const std::string& keyid() const { return keyid_; }
  std::string ToPem() const;
  // Writes the PEM to a new file (0644); an existing file is kFailedPrecondition.
  Status SavePem(const std::string& path) const;

  // True if `signature` is this key's Ed25519 signature of `message`.
  bool Verify(std::string_view message, std::string_view signature) const;

 private:
  VerifyKey() = default;
  std::array<uint8_t, kSize> raw_{};
  std::string keyid_;
};

// An Ed25519 private key (its 32-byte seed) with its public half.
class SigningKey {
 public:
  static Result<SigningKey> Generate();
  // From the RFC 8032 32-byte secret (seed).
  static Result<SigningKey> FromRawPrivate(std::span<const uint8_t> seed);
  // PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"); encrypted keys are refused.
  static Result<SigningKey> FromPem(std::string_view pem, std::string_view what = "private key");
  // Loads a key file, refusing one readable by group or others (see above).
  static Result<SigningKey> LoadPem(const std::string& path);

  SigningKey(const SigningKey& other) = default;
  SigningKey& operator=(const SigningKey& other);
  ~SigningKey();

  const VerifyKey& public_key() const { return public_; }
  const std::string& keyid() const { return public_.keyid(); }
  std::string ToPem() const;
  // Writes the PEM to a new file (0600, fsynced with its directory); never replaces one.
  Status SavePem(const std::string& path) const;

  // The 64-byte Ed25519 signature of `message`.
  Result<std::string> Sign(std::string_view message) const;

 private:
  SigningKey(std::array<uint8_t, 32> seed, VerifyKey pub) : seed_(seed), public_(std::move(pub)) {}
  std::array<uint8_t, 32> seed_{};
  VerifyKey public_;
};

// Generates a key pair and writes it: private key at private_path (0600), public key at
// public_path (0644). Neither file may exist yet.
Result<SigningKey> GenerateKeyFiles(const std::string& private_path,
                                    const std::string& public_path);

struct DsseSignature {
  std::string keyid;
  std::string sig;  // raw signature bytes
};

struct Envelope {
  std::string payload_type;
  std::string payload;  // raw bytes
  std::vector<DsseSignature> signatures;
};

// Signs PAE(payload_type, payload) with `key`.
Result<Envelope> SignEnvelope(std::string_view payload_type, std::string payload,
                              const SigningKey& key);

// The envelope as compact JSON with sorted keys.
std::string EnvelopeToJson(const Envelope& envelope);
// Parses envelope JSON; a malformed envelope or bad base64 is kDataLoss naming the field.
Result<Envelope> EnvelopeFromJson(std::string_view json);

Status VerifyEnvelope(const Envelope& envelope, std::string_view expected_payload_type,
                      const VerifyKey& key);
// Parses and verifies; returns the payload.
Result<std::string> VerifyEnvelopeJson(std::string_view json,
                                       std::string_view expected_payload_type,
                                       const VerifyKey& key);

}  // namespace cairn::prov
