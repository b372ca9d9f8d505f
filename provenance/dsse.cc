#include "provenance/dsse.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <utility>

#include <nlohmann/json.hpp>

#include "checkpoint/crypto.h"
#include "common/io.h"

namespace cairn::prov {
namespace {

using Json = nlohmann::json;

constexpr std::size_t kSignatureSize = 64;
constexpr uint64_t kMaxKeyFileBytes = 64 << 10;

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no OpenSSL error recorded";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

struct PkeyDeleter {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
using Bio = std::unique_ptr<BIO, BioDeleter>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

// A string that wipes itself (PEM text of a private key).
struct WipedString {
  std::string s;
  ~WipedString() {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  }
};

std::string BioContents(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

// Refuses to ask for a passphrase: encrypted PEM files fail instead of prompting.
int NoPassword(char*, int, int, void*) { return -1; }

std::string KeyIdOf(std::span<const uint8_t, VerifyKey::kSize> raw) {
  const auto d = ckpt::Sha256Of(std::as_bytes(std::span(raw)));
  return ckpt::ToHex(d);
}

// Creates `path` with `data` (mode bits exactly `mode`), never replacing a file; fsyncs
// the file and its directory.
Status WriteNewFile(const std::string& path, std::string_view data, mode_t mode,
                    std::string_view what) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) {
    const int err = errno;
    if (err == EEXIST) {
      return MakeError(Code::kFailedPrecondition, "{} {} already exists; refusing to overwrite it",
                       what, path);
    }
    return ErrnoError(err, fmt::format("create {} {}", what, path));
  }
  auto fail = [&](int err, std::string_view op) {
    ::close(fd);
    ::unlink(path.c_str());
    return ErrnoError(err, fmt::format("{} {} {}", op, what, path));
  };
  if (::fchmod(fd, mode) != 0) return fail(errno, "chmod");  // the umask only removes bits
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno, "write");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) return fail(errno, "fsync");
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(path.c_str());
    return ErrnoError(err, fmt::format("close {} {}", what, path));
  }
  return io::DefaultFileSystem().SyncDir(io::DirName(path));
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int B64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

Result<std::string> GetString(const Json& obj, std::string_view key, std::string_view where) {
  const auto it = obj.find(key);
  if (it == obj.end()) return MakeError(Code::kDataLoss, "{}: no \"{}\"", where, key);
  if (!it->is_string()) {
    return MakeError(Code::kDataLoss, "{}: \"{}\" is not a string", where, key);
  }
  return it->get<std::string>();
}

}  // namespace

std::string PreAuthEncoding(std::string_view payload_type, std::string_view payload) {
  std::string out = fmt::format("DSSEv1 {} ", payload_type.size());
  out.reserve(out.size() + payload_type.size() + payload.size() + 24);
  out.append(payload_type);
  out += fmt::format(" {} ", payload.size());
  out.append(payload);
  return out;
}

std::string Base64Encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  auto at = [&](std::size_t k) { return static_cast<uint32_t>(static_cast<uint8_t>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
    out.push_back(kB64[v >> 18 & 63]);
    out.push_back(kB64[v >> 12 & 63]);
    out.push_back(kB64[v >> 6 & 63]);
    out.push_back(kB64[v & 63]);
  }
  const std::size_t rest = bytes.size() - i;
  if (rest == 1) {
    const uint32_t v = at(i) << 16;
    out.push_back(kB64[v >> 18 & 63]);
    out.push_back(kB64[v >> 12 & 63]);
    out.append("==");
  } else if (rest == 2) {
    const uint32_t v = at(i) << 16 | at(i + 1) << 8;
    out.push_back(kB64[v >> 18 & 63]);
    out.push_back(kB64[v >> 12 & 63]);
    out.push_back(kB64[v >> 6 & 63]);
    out.push_back('=');
  }
  return out;
}

Result<std::string> Base64Decode(std::string_view text) {
  std::size_t n = text.size();
  if (n % 4 == 0 && n >= 4) {  // strip padding only where padding may be
    if (text[n - 1] == '=') --n;
    if (text[n - 1] == '=') --n;
  }
  if (n % 4 == 1) {
    return MakeError(Code::kInvalidArgument, "bad base64: a length of {} characters is impossible",
                     n);
  }
  std::string out;
  out.reserve(n / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int v = B64Value(text[i]);
    if (v < 0) {
      return MakeError(Code::kInvalidArgument, "bad base64: character {} is not base64", i + 1);
    }
    acc = acc << 6 | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>(acc >> bits & 0xff));
    }
  }
  if ((acc & ((1u << bits) - 1)) != 0) {  // leftover bits must be zero (canonical)
    return MakeError(Code::kInvalidArgument, "bad base64: non-zero bits after the last byte");
  }
  return out;
}

// --- VerifyKey --------------------------------------------------------------------------

Result<VerifyKey> VerifyKey::FromRaw(std::span<const uint8_t> raw) {
  if (raw.size() != kSize) {
    return MakeError(Code::kInvalidArgument, "an Ed25519 public key has {} bytes, got {}", kSize,
                     raw.size());
  }
  VerifyKey k;
  std::copy(raw.begin(), raw.end(), k.raw_.begin());
  k.keyid_ = KeyIdOf(k.raw_);
  return k;
}

Result<VerifyKey> VerifyKey::FromPem(std::string_view pem, std::string_view what) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return MakeError(Code::kInternal, "BIO_new_mem_buf: {}", OpenSslError());
  Pkey pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, NoPassword, nullptr));
  if (!pkey) {
    return MakeError(Code::kInvalidArgument, "{}: not a PEM public key ({})", what, OpenSslError());
  }
  if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
    return MakeError(Code::kInvalidArgument, "{}: not an Ed25519 key", what);
  }
  std::array<uint8_t, kSize> raw;
  std::size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), raw.data(), &len) != 1 || len != kSize) {
    return MakeError(Code::kInternal, "{}: EVP_PKEY_get_raw_public_key: {}", what, OpenSslError());
  }
  return FromRaw(raw);
}

Result<VerifyKey> VerifyKey::LoadPem(const std::string& path) {
  CAIRN_ASSIGN_OR_RETURN(std::string pem,
                         io::ReadWholeFile(io::DefaultFileSystem(), path, kMaxKeyFileBytes));
  return FromPem(pem, fmt::format("public key file {}", path));
}

std::string VerifyKey::ToPem() const {
  Pkey pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, raw_.data(), raw_.size()));
  Bio bio(BIO_new(BIO_s_mem()));
  if (!pkey || !bio || PEM_write_bio_PUBKEY(bio.get(), pkey.get()) != 1) {
    std::fprintf(stderr, "cairn: fatal OpenSSL failure writing a public key: %s\n",
                 OpenSslError().c_str());
    std::abort();
  }
  return BioContents(bio.get());
}

Status VerifyKey::SavePem(const std::string& path) const {
  return WriteNewFile(path, ToPem(), 0644, "public key file");
}

bool VerifyKey::Verify(std::string_view message, std::string_view signature) const {
  if (signature.size() != kSignatureSize) return false;
  Pkey pkey(EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, raw_.data(), raw_.size()));
  MdCtx ctx(EVP_MD_CTX_new());
  if (!pkey || !ctx) return false;
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1) return false;
  const int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const uint8_t*>(signature.data()),
                                  signature.size(),
                                  reinterpret_cast<const uint8_t*>(message.data()), message.size());
  ERR_clear_error();
  return rc == 1;
}

// --- SigningKey -------------------------------------------------------------------------

Result<SigningKey> SigningKey::Generate() {
  std::array<uint8_t, 32> seed;
  if (RAND_bytes(seed.data(), static_cast<int>(seed.size())) != 1) {
    return MakeError(Code::kInternal, "RAND_bytes failed: {}", OpenSslError());
  }
  auto key = FromRawPrivate(seed);
  OPENSSL_cleanse(seed.data(), seed.size());
  return key;
}

Result<SigningKey> SigningKey::FromRawPrivate(std::span<const uint8_t> seed) {
  if (seed.size() != 32) {
    return MakeError(Code::kInvalidArgument, "an Ed25519 private key has 32 bytes, got {}",
                     seed.size());
  }
  Pkey pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed.data(), seed.size()));
  if (!pkey) return MakeError(Code::kInternal, "EVP_PKEY_new_raw_private_key: {}", OpenSslError());
  std::array<uint8_t, VerifyKey::kSize> pub;
  std::size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub.data(), &len) != 1 || len != pub.size()) {
    return MakeError(Code::kInternal, "EVP_PKEY_get_raw_public_key: {}", OpenSslError());
  }
  CAIRN_ASSIGN_OR_RETURN(VerifyKey vk, VerifyKey::FromRaw(pub));
  std::array<uint8_t, 32> s;
  std::copy(seed.begin(), seed.end(), s.begin());
  SigningKey key(s, std::move(vk));
  OPENSSL_cleanse(s.data(), s.size());
  return key;
}

Result<SigningKey> SigningKey::FromPem(std::string_view pem, std::string_view what) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return MakeError(Code::kInternal, "BIO_new_mem_buf: {}", OpenSslError());
  Pkey pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassword, nullptr));
  if (!pkey) {
    return MakeError(Code::kInvalidArgument, "{}: not an unencrypted PEM private key ({})", what,
                     OpenSslError());
  }
  if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
    return MakeError(Code::kInvalidArgument, "{}: not an Ed25519 key", what);
  }
  std::array<uint8_t, 32> seed;
  std::size_t len = seed.size();
  if (EVP_PKEY_get_raw_private_key(pkey.get(), seed.data(), &len) != 1 || len != seed.size()) {
    return MakeError(Code::kInternal, "{}: EVP_PKEY_get_raw_private_key: {}", what, OpenSslError());
  }
  auto key = FromRawPrivate(seed);
  OPENSSL_cleanse(seed.data(), seed.size());
  return key;
}

Result<SigningKey> SigningKey::LoadPem(const std::string& path) {
  // O_NONBLOCK so that a FIFO planted at the path cannot block us before the type check.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      return MakeError(Code::kNotFound, "signing key file {} does not exist", path);
    return ErrnoError(err, fmt::format("open signing key file {}", path));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, fmt::format("stat signing key file {}", path));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return MakeError(Code::kInvalidArgument, "signing key file {} is not a regular file", path);
  }
  const unsigned mode = st.st_mode & 07777;
  if ((mode & 077) != 0) {
    ::close(fd);
    return MakeError(Code::kFailedPrecondition,
                     "signing key file {} has mode {:04o}; it must not be readable by group or "
                     "others (chmod 600 {})",
                     path, mode, path);
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxKeyFileBytes) {
    ::close(fd);
    return MakeError(Code::kInvalidArgument, "signing key file {} is too large ({} bytes)", path,
                     st.st_size);
  }
  WipedString text;
  text.s.resize(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < text.s.size()) {
    const ssize_t n = ::read(fd, text.s.data() + got, text.s.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError(err, fmt::format("read signing key file {}", path));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return FromPem(std::string_view(text.s).substr(0, got), fmt::format("signing key file {}", path));
}

SigningKey& SigningKey::operator=(const SigningKey& other) {
  if (this != &other) {
    seed_ = other.seed_;
    public_ = other.public_;
  }
  return *this;
}

SigningKey::~SigningKey() { OPENSSL_cleanse(seed_.data(), seed_.size()); }

std::string SigningKey::ToPem() const {
  Pkey pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed_.data(), seed_.size()));
  Bio bio(BIO_new(BIO_s_mem()));
  if (!pkey || !bio ||
      PEM_write_bio_PrivateKey(bio.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    std::fprintf(stderr, "cairn: fatal OpenSSL failure writing a private key: %s\n",
                 OpenSslError().c_str());
    std::abort();
  }
  std::string pem = BioContents(bio.get());
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio.get(), &data);
  OPENSSL_cleanse(data, static_cast<std::size_t>(n));
  return pem;
}

Status SigningKey::SavePem(const std::string& path) const {
  WipedString pem{ToPem()};
  return WriteNewFile(path, pem.s, 0600, "signing key file");
}

Result<std::string> SigningKey::Sign(std::string_view message) const {
  Pkey pkey(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed_.data(), seed_.size()));
  MdCtx ctx(EVP_MD_CTX_new());
  if (!pkey || !ctx) return MakeError(Code::kInternal, "Ed25519 setup: {}", OpenSslError());
  if (EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, pkey.get()) != 1) {
    return MakeError(Code::kInternal, "EVP_DigestSignInit: {}", OpenSslError());
  }
  std::string sig(kSignatureSize, '\0');
  std::size_t len = sig.size();
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<uint8_t*>(sig.data()), &len,
                     reinterpret_cast<const uint8_t*>(message.data()), message.size()) != 1 ||
      len != kSignatureSize) {
    return MakeError(Code::kInternal, "EVP_DigestSign: {}", OpenSslError());
  }
  return sig;
}

Result<SigningKey> GenerateKeyFiles(const std::string& private_path,
                                    const std::string& public_path) {
  struct stat st;
  if (::lstat(public_path.c_str(), &st) == 0) {
    return MakeError(Code::kFailedPrecondition,
                     "public key file {} already exists; refusing to overwrite it", public_path);
  }
  CAIRN_ASSIGN_OR_RETURN(SigningKey key, SigningKey::Generate());
  CAIRN_RETURN_IF_ERROR(key.SavePem(private_path));
  if (auto s = key.public_key().SavePem(public_path); !s) {
    ::unlink(private_path.c_str());  // no half-made pair left behind
    return std::unexpected(std::move(s).error());
  }
  return key;
}

// --- envelopes --------------------------------------------------------------------------

Result<Envelope> SignEnvelope(std::string_view payload_type, std::string payload,
                              const SigningKey& key) {
  CAIRN_ASSIGN_OR_RETURN(std::string sig, key.Sign(PreAuthEncoding(payload_type, payload)));
  Envelope env;
  env.payload_type = std::string(payload_type);
  env.payload = std::move(payload);
  env.signatures.push_back(DsseSignature{key.keyid(), std::move(sig)});
  return env;
}

std::string EnvelopeToJson(const Envelope& envelope) {
  Json sigs = Json::array();
  for (const auto& s : envelope.signatures) {
    sigs.push_back(Json{{"keyid", s.keyid}, {"sig", Base64Encode(s.sig)}});
  }
  const Json j = {{"payloadType", envelope.payload_type},
                  {"payload", Base64Encode(envelope.payload)},
                  {"signatures", std::move(sigs)}};
  // Every string here is ASCII except payloadType, which callers choose: replace rather
  // than throw on invalid UTF-8 (the signature covers the original bytes either way).
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Result<Envelope> EnvelopeFromJson(std::string_view json) {
  const Json j = Json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return MakeError(Code::kDataLoss, "DSSE envelope: not valid JSON");
  if (!j.is_object()) return MakeError(Code::kDataLoss, "DSSE envelope: not a JSON object");
  Envelope env;
  CAIRN_ASSIGN_OR_RETURN(env.payload_type, GetString(j, "payloadType", "DSSE envelope"));
  CAIRN_ASSIGN_OR_RETURN(std::string payload64, GetString(j, "payload", "DSSE envelope"));
  auto payload = Base64Decode(payload64);
  if (!payload) {
    return MakeError(Code::kDataLoss, "DSSE envelope: payload: {}", payload.error().message());
  }
  env.payload = std::move(*payload);
  const auto sigs = j.find("signatures");
  if (sigs == j.end() || !sigs->is_array()) {
    return MakeError(Code::kDataLoss, "DSSE envelope: no \"signatures\" array");
  }
  for (std::size_t i = 0; i < sigs->size(); ++i) {
    const Json& s = (*sigs)[i];
    const std::string where = fmt::format("DSSE envelope: signature {}", i);
    if (!s.is_object()) return MakeError(Code::kDataLoss, "{}: not an object", where);
    DsseSignature sig;
    if (s.contains("keyid")) {
      CAIRN_ASSIGN_OR_RETURN(sig.keyid, GetString(s, "keyid", where));
    }
    CAIRN_ASSIGN_OR_RETURN(std::string sig64, GetString(s, "sig", where));
    auto raw = Base64Decode(sig64);
    if (!raw) return MakeError(Code::kDataLoss, "{}: sig: {}", where, raw.error().message());
    sig.sig = std::move(*raw);
    env.signatures.push_back(std::move(sig));
  }
  return env;
}

Status VerifyEnvelope(const Envelope& envelope, std::string_view expected_payload_type,
                      const VerifyKey& key) {
  if (envelope.payload_type != expected_payload_type) {
    return MakeError(Code::kDataLoss, "DSSE envelope: payloadType is \"{}\", expected \"{}\"",
                     envelope.payload_type, expected_payload_type);
  }
  const std::string pae = PreAuthEncoding(envelope.payload_type, envelope.payload);
  int verified = 0;
  std::string others;
  for (std::size_t i = 0; i < envelope.signatures.size(); ++i) {
    const DsseSignature& s = envelope.signatures[i];
    if (!s.keyid.empty() && s.keyid != key.keyid()) {
      others += others.empty() ? s.keyid : ", " + s.keyid;
      continue;
    }
    if (!key.Verify(pae, s.sig)) {
      return MakeError(Code::kDataLoss,
                       "DSSE envelope: signature {} does not verify under key {} (the payload, "
                       "its type or the signature was altered, or another key signed it)",
                       i, key.keyid());
    }
    ++verified;
  }
  if (verified == 0) {
    return MakeError(Code::kPermissionDenied,
                     "DSSE envelope: no signature by key {} (signed by: {})", key.keyid(),
                     others.empty() ? "nobody" : others);
  }
  return OkStatus();
}

Result<std::string> VerifyEnvelopeJson(std::string_view json,
                                       std::string_view expected_payload_type,
                                       const VerifyKey& key) {
  CAIRN_ASSIGN_OR_RETURN(Envelope env, EnvelopeFromJson(json));
  CAIRN_RETURN_IF_ERROR(VerifyEnvelope(env, expected_payload_type, key));
  return std::move(env.payload);
}

}  // namespace cairn::prov
