#include "checkpoint/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

namespace cairn::ckpt {
namespace {

// The most bytes handed to one EVP_*Update call (its length is an int).
constexpr std::size_t kMaxUpdate = std::size_t{1} << 30;

// Zeros fed to the cipher for segments that stand for zero bytes.
constexpr std::size_t kZeroBufSize = 64 << 10;
alignas(64) constexpr std::byte kZeros[kZeroBufSize] = {};

// The newest OpenSSL error, for messages ("" if the queue is empty).
std::string OpenSslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no OpenSSL error recorded";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

[[noreturn]] void Fatal(const char* what) {
  std::fprintf(stderr, "cairn: fatal OpenSSL failure in %s: %s\n", what, OpenSslError().c_str());
  std::abort();
}

const EVP_MD* Sha256Md() {
  static const EVP_MD* md = [] {
    EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    if (m == nullptr) Fatal("EVP_MD_fetch(SHA256)");
    return m;
  }();
  return md;
}

const EVP_CIPHER* Aes256Gcm() {
  static const EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}

}  // namespace

// --- SecretKey -------------------------------------------------------------------------

Result<SecretKey> SecretKey::Random() {
  SecretKey k;
  if (RAND_bytes(k.bytes_.data(), static_cast<int>(k.bytes_.size())) != 1) {
    return MakeError(Code::kInternal, "RAND_bytes failed: {}", OpenSslError());
  }
  return k;
}

SecretKey SecretKey::FromBytes(std::span<const uint8_t> bytes) {
  if (bytes.size() != kSize) {
    std::fprintf(stderr, "cairn: SecretKey::FromBytes given %zu bytes, need %zu\n", bytes.size(),
                 kSize);
    std::abort();
  }
  SecretKey k;
  std::copy(bytes.begin(), bytes.end(), k.bytes_.begin());
  return k;
}

SecretKey& SecretKey::operator=(const SecretKey& other) {
  bytes_ = other.bytes_;
  return *this;
}

SecretKey::~SecretKey() { OPENSSL_cleanse(bytes_.data(), bytes_.size()); }

bool SecretKey::operator==(const SecretKey& other) const {
  return CRYPTO_memcmp(bytes_.data(), other.bytes_.data(), kSize) == 0;
}

// --- Sha256 ----------------------------------------------------------------------------

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, Sha256Md(), nullptr) != 1) {
    Fatal("EVP_DigestInit_ex(SHA256)");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

Sha256::Sha256(Sha256&& other) noexcept : ctx_(std::exchange(other.ctx_, nullptr)) {}

Sha256& Sha256::operator=(Sha256&& other) noexcept {
  if (this != &other) {
    EVP_MD_CTX_free(ctx_);
    ctx_ = std::exchange(other.ctx_, nullptr);
  }
  return *this;
}

void Sha256::Update(std::span<const std::byte> data) {
  if (data.empty()) return;
  if (EVP_DigestUpdate(ctx_, data.data(), data.size()) != 1) Fatal("EVP_DigestUpdate");
}

void Sha256::Update(std::span<const uint8_t> data) { Update(std::as_bytes(data)); }

void Sha256::Update(std::string_view data) {
  Update(std::as_bytes(std::span(data.data(), data.size())));
}

Digest Sha256::Finish() {
  Digest d;
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx_, d.data(), &len) != 1 || len != d.size()) {
    Fatal("EVP_DigestFinal_ex");
  }
  if (EVP_DigestInit_ex(ctx_, nullptr, nullptr) != 1) Fatal("EVP_DigestInit_ex");
  return d;
}

Digest Sha256Of(std::span<const std::byte> data) {
  Digest d;
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), d.data(), &len, Sha256Md(), nullptr) != 1) {
    Fatal("EVP_Digest(SHA256)");
  }
  return d;
}

// --- HKDF ------------------------------------------------------------------------------

Status HkdfSha256(std::span<const uint8_t> ikm, std::string_view info, std::span<uint8_t> out) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return MakeError(Code::kInternal, "HKDF unavailable: {}", OpenSslError());
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
  EVP_KDF_free(kdf);
  if (ctx == nullptr) return MakeError(Code::kInternal, "EVP_KDF_CTX_new: {}", OpenSslError());
  char digest_name[] = "SHA256";
  // OpenSSL takes non-const pointers in OSSL_PARAM but only reads these.
  OSSL_PARAM params[4];
  std::size_t np = 0;
  params[np++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest_name, 0);
  params[np++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                                   const_cast<uint8_t*>(ikm.data()), ikm.size());
  if (!info.empty()) {
    params[np++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                                     const_cast<char*>(info.data()), info.size());
  }
  params[np] = OSSL_PARAM_construct_end();
  const int rc = EVP_KDF_derive(ctx, out.data(), out.size(), params);
  EVP_KDF_CTX_free(ctx);
  if (rc != 1) return MakeError(Code::kInternal, "HKDF-SHA256 failed: {}", OpenSslError());
  return OkStatus();
}

Result<SecretKey> HkdfSha256(const SecretKey& ikm, std::string_view info) {
  std::array<uint8_t, SecretKey::kSize> out;
  Status st = HkdfSha256(ikm.bytes(), info, out);
  if (!st) {
    OPENSSL_cleanse(out.data(), out.size());
    return std::unexpected(std::move(st).error());
  }
  SecretKey k = SecretKey::FromBytes(out);
  OPENSSL_cleanse(out.data(), out.size());
  return k;
}

// --- AesGcm ----------------------------------------------------------------------------

Result<AesGcm> AesGcm::Create(const SecretKey& key) {
  const EVP_CIPHER* cipher = Aes256Gcm();
  if (cipher == nullptr) {
    return MakeError(Code::kInternal, "AES-256-GCM unavailable: {}", OpenSslError());
  }
  AesGcm g;
  g.enc_ = EVP_CIPHER_CTX_new();
  g.dec_ = EVP_CIPHER_CTX_new();
  if (g.enc_ == nullptr || g.dec_ == nullptr ||
      EVP_EncryptInit_ex(g.enc_, cipher, nullptr, key.bytes().data(), nullptr) != 1 ||
      EVP_DecryptInit_ex(g.dec_, cipher, nullptr, key.bytes().data(), nullptr) != 1) {
    return MakeError(Code::kInternal, "AES-256-GCM setup failed: {}", OpenSslError());
  }
  return g;
}

void AesGcm::Reset() {
  EVP_CIPHER_CTX_free(enc_);
  EVP_CIPHER_CTX_free(dec_);
  enc_ = nullptr;
  dec_ = nullptr;
}

AesGcm::~AesGcm() { Reset(); }

AesGcm::AesGcm(AesGcm&& other) noexcept
    : enc_(std::exchange(other.enc_, nullptr)), dec_(std::exchange(other.dec_, nullptr)) {}

AesGcm& AesGcm::operator=(AesGcm&& other) noexcept {
  if (this != &other) {
    Reset();
    enc_ = std::exchange(other.enc_, nullptr);
    dec_ = std::exchange(other.dec_, nullptr);
  }
  return *this;
}

Status AesGcm::Seal(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> aad,
                    std::span<const std::span<const std::byte>> plaintext_segments,
                    std::byte* ciphertext_out, std::span<uint8_t, kTagSize> tag_out) {
  if (enc_ == nullptr) return MakeError(Code::kInternal, "AES-GCM object was moved from");
  int outl = 0;
  if (EVP_EncryptInit_ex(enc_, nullptr, nullptr, nullptr, nonce.data()) != 1) {
    return MakeError(Code::kInternal, "AES-GCM: setting the nonce failed: {}", OpenSslError());
  }
  for (std::size_t done = 0; done < aad.size();) {
    const std::size_t n = std::min(aad.size() - done, kMaxUpdate);
    if (EVP_EncryptUpdate(enc_, nullptr, &outl, aad.data() + done, static_cast<int>(n)) != 1) {
      return MakeError(Code::kInternal, "AES-GCM: AAD update failed: {}", OpenSslError());
    }
    done += n;
  }
  auto* out = reinterpret_cast<unsigned char*>(ciphertext_out);
  for (const auto& seg : plaintext_segments) {
    std::size_t left = seg.size();
    const auto* in = reinterpret_cast<const unsigned char*>(seg.data());
    while (left > 0) {
      const bool zeros = in == nullptr;
      const std::size_t n = std::min(left, zeros ? kZeroBufSize : kMaxUpdate);
      const auto* src = zeros ? reinterpret_cast<const unsigned char*>(kZeros) : in;
      if (EVP_EncryptUpdate(enc_, out, &outl, src, static_cast<int>(n)) != 1 ||
          static_cast<std::size_t>(outl) != n) {
        return MakeError(Code::kInternal, "AES-GCM: encryption failed: {}", OpenSslError());
      }
      out += n;
      if (!zeros) in += n;
      left -= n;
    }
  }
  if (EVP_EncryptFinal_ex(enc_, out, &outl) != 1 ||
      EVP_CIPHER_CTX_ctrl(enc_, EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagSize), tag_out.data()) !=
          1) {
    return MakeError(Code::kInternal, "AES-GCM: finishing failed: {}", OpenSslError());
  }
  return OkStatus();
}

Status AesGcm::Seal(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> aad,
                    std::span<const std::byte> plaintext, std::byte* ciphertext_out,
                    std::span<uint8_t, kTagSize> tag_out) {
  const std::span<const std::byte> segs[1] = {plaintext};
  return Seal(nonce, aad, segs, ciphertext_out, tag_out);
}

bool AesGcm::Open(std::span<const uint8_t, kNonceSize> nonce, std::span<const uint8_t> aad,
                  std::span<const std::byte> ciphertext, std::byte* plaintext_out,
                  std::span<const uint8_t, kTagSize> tag) {
  if (dec_ == nullptr) return false;
  auto fail = [&] {
    ERR_clear_error();
    if (!ciphertext.empty()) OPENSSL_cleanse(plaintext_out, ciphertext.size());
    return false;
  };
  int outl = 0;
  if (EVP_DecryptInit_ex(dec_, nullptr, nullptr, nullptr, nonce.data()) != 1) return fail();
  for (std::size_t done = 0; done < aad.size();) {
    const std::size_t n = std::min(aad.size() - done, kMaxUpdate);
    if (EVP_DecryptUpdate(dec_, nullptr, &outl, aad.data() + done, static_cast<int>(n)) != 1) {
      return fail();
    }
    done += n;
  }
  auto* out = reinterpret_cast<unsigned char*>(plaintext_out);
  const auto* in = reinterpret_cast<const unsigned char*>(ciphertext.data());
  for (std::size_t done = 0; done < ciphertext.size();) {
    const std::size_t n = std::min(ciphertext.size() - done, kMaxUpdate);
    if (EVP_DecryptUpdate(dec_, out + done, &outl, in + done, static_cast<int>(n)) != 1) {
      return fail();
    }
    done += n;
  }
  // The tag is only read by OpenSSL; the control call takes a non-const pointer.
  if (EVP_CIPHER_CTX_ctrl(dec_, EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagSize),
                          const_cast<uint8_t*>(tag.data())) != 1) {
    return fail();
  }
  if (EVP_DecryptFinal_ex(dec_, out + ciphertext.size(), &outl) != 1) return fail();
  return true;
}

}  // namespace cairn::ckpt
