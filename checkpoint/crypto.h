// Cryptographic primitives of the checkpoint component, over OpenSSL 3: secret keys,
// SHA-256, HKDF-SHA256 and AES-256-GCM.
//
// Promise: thin, allocation-free (after construction) wrappers that keep OpenSSL
// contexts for reuse, so that hashing and sealing gigabytes costs no per-call setup
// beyond a nonce. Secret bytes are wiped (OPENSSL_cleanse) when they go out of scope.
// OpenSSL failures that can only mean a broken library or exhausted memory inside
// Sha256 terminate the process with a message (they would otherwise yield a wrong
// digest); everything a caller can act on is reported through Status/Result.
//
// Threading: each object is used by one thread at a time; distinct objects are
// independent. Free functions are thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "checkpoint/types.h"
#include "common/status.h"

// OpenSSL's opaque types, declared here so that this header does not pull in OpenSSL.
struct evp_md_ctx_st;
struct evp_cipher_ctx_st;

namespace cairn::ckpt {

// A 256-bit secret key.
//
// Promise: holds exactly 32 bytes; the bytes are wiped when the object is destroyed or
// overwritten. Never printed or logged by cairn.
// Threading: a value; const access from several threads is safe.
class SecretKey {
 public:
  static constexpr std::size_t kSize = 32;

  // 32 bytes from the operating system's CSPRNG (RAND_bytes); kInternal if it fails.
  static Result<SecretKey> Random();
  // Copies `bytes`, which must be exactly kSize bytes long (terminates otherwise: a
  // wrong length is a programming error, never input).
  static SecretKey FromBytes(std::span<const uint8_t> bytes);

  SecretKey(const SecretKey& other) = default;
  SecretKey& operator=(const SecretKey& other);
  ~SecretKey();

  std::span<const uint8_t, kSize> bytes() const { return bytes_; }

  // Constant-time comparison.
  bool operator==(const SecretKey& other) const;

 private:
  SecretKey() = default;
  std::array<uint8_t, kSize> bytes_{};
};

// Incremental SHA-256.
//
// Promise: Update() any number of times, then Finish() returns the digest of everything
// given since construction or the previous Finish(); Finish() resets the object for the
// next message, reusing the same EVP_MD_CTX.
// Threading: one thread at a time.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&& other) noexcept;
  Sha256& operator=(Sha256&& other) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::span<const std::byte> data);
  void Update(std::span<const uint8_t> data);
  void Update(std::string_view data);
  Digest Finish();

 private:
  evp_md_ctx_st* ctx_ = nullptr;
};

// SHA-256 of one buffer.
Digest Sha256Of(std::span<const std::byte> data);

// HKDF-SHA256 (RFC 5869) with an empty salt: fills `out` (1..8160 bytes) from `ikm` and
// `info`. kInternal if OpenSSL fails.
Status HkdfSha256(std::span<const uint8_t> ikm, std::string_view info, std::span<uint8_t> out);
// HKDF-SHA256 of a key with an empty salt, 32 bytes of output: derives a sub-key for
// the purpose named by `info` ("cairn.wrap.v1", ...).
Result<SecretKey> HkdfSha256(const SecretKey& ikm, std::string_view info);

// AES-256-GCM with a 96-bit nonce and a 128-bit tag.
//
// Promise: the key is set once at Create(); every Seal/Open only sets the nonce, so the
// per-message cost is the cipher work itself. Seal encrypts the concatenation of
// `plaintext_segments` (a segment whose data() is nullptr stands for that many zero
// bytes) into `ciphertext_out` (which must hold the total length; may alias a single
// plaintext segment exactly for in-place encryption). Open returns false when the
// ciphertext, the AAD, the nonce or the tag has been altered, or the key is wrong; the
// plaintext buffer is then zeroed, never left holding unauthenticated bytes. The
// caller must never reuse a (key, nonce) pair for two different messages.
// Threading: one thread at a time per object; use one object per thread.
class AesGcm {
 public:
  static constexpr std::size_t kNonceSize = 12;
  static constexpr std::size_t kTagSize = 16;

  // kInternal if OpenSSL cannot set up the cipher.
  static Result<AesGcm> Create(const SecretKey& key);

  ~AesGcm();
  AesGcm(AesGcm&& other) noexcept;
  AesGcm& operator=(AesGcm&& other) noexcept;
  AesGcm(const AesGcm&) = delete;
  AesGcm& operator=(const AesGcm&) = delete;

  Status Seal(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> aad,
              std::span<const std::span<const std::byte>> plaintext_segments,
              std::byte* ciphertext_out, std::span<uint8_t, kTagSize> tag_out);
  // Convenience form for one contiguous plaintext.
  Status Seal(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> aad,
              std::span<const std::byte> plaintext, std::byte* ciphertext_out,
              std::span<uint8_t, kTagSize> tag_out);

  // `plaintext_out` must hold ciphertext.size() bytes; it may equal ciphertext.data().
  bool Open(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> aad,
            std::span<const std::byte> ciphertext, std::byte* plaintext_out,
            std::span<const uint8_t, kTagSize> tag);

 private:
  AesGcm() = default;
  void Reset();
  // Separate contexts for the two directions, each keyed once.
  evp_cipher_ctx_st* enc_ = nullptr;
  evp_cipher_ctx_st* dec_ = nullptr;
};

}  // namespace cairn::ckpt
