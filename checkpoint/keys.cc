#include "checkpoint/keys.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/io.h"
#include "common/subprocess.h"

namespace cairn::ckpt {
namespace {

constexpr std::size_t kHexKeyLen = 2 * SecretKey::kSize;
constexpr std::size_t kMaxCommandOutput = 4096;

// A string that wipes itself: holds key text while it is parsed.
struct WipedString {
  std::string s;
  ~WipedString() {
    if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  }
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

Result<MasterKey> MakeMasterKey(SecretKey key, std::string source) {
  std::string id = KeyId(key);
  return MasterKey{std::move(key), std::move(id), std::move(source)};
}

// Closes a descriptor when it goes out of scope.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Close(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Gives up ownership without closing.
  int Release() { return std::exchange(fd_, -1); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

Result<SecretKey> RandomKeyText(WipedString* text) {
  CAIRN_ASSIGN_OR_RETURN(SecretKey key, SecretKey::Random());
  text->s = ToHex(key.bytes());
  text->s.push_back('\n');
  return key;
}

}  // namespace

std::string KeyId(const SecretKey& key) {
  Sha256 h;
  h.Update(std::string_view("cairn.keyid.v1"));
  h.Update(key.bytes());
  const Digest d = h.Finish();
  return ToHex(std::span(d).first(8));
}

Result<SecretKey> ParseHexKey(std::string_view hex, std::string_view what) {
  if (hex.size() != kHexKeyLen) {
    return MakeError(Code::kInvalidArgument,
                     "{}: expected {} hex characters (a 32-byte key), got {} characters", what,
                     kHexKeyLen, hex.size());
  }
  std::array<uint8_t, SecretKey::kSize> raw;
  for (std::size_t i = 0; i < SecretKey::kSize; ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      OPENSSL_cleanse(raw.data(), raw.size());
      return MakeError(Code::kInvalidArgument,
                       "{}: character {} is not a hex digit (expected {} hex characters)", what,
                       2 * i + (hi < 0 ? 1 : 2), kHexKeyLen);
    }
    raw[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  SecretKey key = SecretKey::FromBytes(raw);
  OPENSSL_cleanse(raw.data(), raw.size());
  return key;
}

Result<MasterKey> LoadKeyFile(const std::string& path) {
  // O_NONBLOCK so that a FIFO planted at the path cannot block us before the type check.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT) return MakeError(Code::kNotFound, "key file {} does not exist", path);
    return ErrnoError(err, fmt::format("open key file {}", path));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError(errno, fmt::format("stat key file {}", path));
  if (!S_ISREG(st.st_mode)) {
    return MakeError(Code::kInvalidArgument, "key file {} is not a regular file", path);
  }
  const unsigned mode = st.st_mode & 07777;
  if ((mode & 077) != 0) {
    return MakeError(Code::kFailedPrecondition,
                     "key file {} has mode {:04o}; it must not be readable by group or others "
                     "(chmod 600 {})",
                     path, mode, path);
  }
  // Read one byte more than a valid file can hold, to tell "too long" apart.
  WipedString text;
  text.s.resize(kHexKeyLen + 2);
  std::size_t got = 0;
  while (got < text.s.size()) {
    const ssize_t n = ::read(fd.get(), text.s.data() + got, text.s.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, fmt::format("read key file {}", path));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  std::string_view content(text.s.data(), got);
  const std::string what = fmt::format("key file {}", path);
  if (got > kHexKeyLen + 1 || (got == kHexKeyLen + 1 && content.back() != '\n')) {
    return MakeError(Code::kInvalidArgument,
                     "{}: too long (expected exactly {} hex characters and an optional newline)",
                     what, kHexKeyLen);
  }
  if (!content.empty() && content.back() == '\n') content.remove_suffix(1);
  CAIRN_ASSIGN_OR_RETURN(SecretKey key, ParseHexKey(content, what));
  return MakeMasterKey(std::move(key), fmt::format("file {}", path));
}

Result<MasterKey> LoadKeyFromEnv(std::string_view var) {
  const std::string name(var);
  const char* value = std::getenv(name.c_str());
  if (value == nullptr || *value == '\0') {
    return MakeError(Code::kNotFound, "environment variable {} is not set or empty", name);
  }
  CAIRN_ASSIGN_OR_RETURN(SecretKey key,
                         ParseHexKey(Trim(value), fmt::format("environment variable {}", name)));
  return MakeMasterKey(std::move(key), fmt::format("env {}", name));
}

Result<MasterKey> LoadKeyFromCommand(const std::string& command,
                                     std::chrono::milliseconds timeout) {
  const std::string what = fmt::format("key command `{}`", command);
  const std::vector<std::string> argv = {"/bin/sh", "-c", command};
  subprocess::RunOptions options;
  options.max_stdout_bytes = kMaxCommandOutput;
  options.max_stderr_bytes = kMaxCommandOutput;
  options.timeout = timeout;
  options.secret_output = true;
  options.name = what;
  CAIRN_ASSIGN_OR_RETURN(subprocess::RunResult r, subprocess::RunProcess(argv, options));
  WipedString out{std::move(r.out)};

  const std::string first_err = r.ErrFirstLine();
  const std::string err_note = first_err.empty() ? std::string() : fmt::format(": {}", first_err);
  if (r.term_signal != 0) {
    return MakeError(Code::kUnavailable, "{} was killed by signal {}{}", what, r.term_signal,
                     err_note);
  }
  if (r.exit_code != 0) {
    return MakeError(Code::kUnavailable, "{} exited with status {}{}", what, r.exit_code,
                     err_note);
  }
  if (r.out_truncated) {
    return MakeError(Code::kInvalidArgument, "{} printed more than {} bytes", what,
                     kMaxCommandOutput);
  }
  CAIRN_ASSIGN_OR_RETURN(SecretKey key, ParseHexKey(Trim(out.s), what + " output"));
  return MakeMasterKey(std::move(key), fmt::format("command {}", command));
}

Status WriteNewKeyFile(const std::string& path) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == EEXIST) {
      return MakeError(Code::kFailedPrecondition,
                       "key file {} already exists; refusing to overwrite it", path);
    }
    return ErrnoError(err, fmt::format("create key file {}", path));
  }
  auto fail = [&](int err, std::string_view op) {
    fd.Close();
    ::unlink(path.c_str());
    return ErrnoError(err, fmt::format("{} key file {}", op, path));
  };
  // The umask can only remove bits; make sure of 0600 regardless.
  if (::fchmod(fd.get(), 0600) != 0) return fail(errno, "chmod");
  WipedString text;
  auto key = RandomKeyText(&text);
  if (!key) {
    fd.Close();
    ::unlink(path.c_str());
    return std::unexpected(std::move(key).error().With(fmt::format("create key file {}", path)));
  }
  std::size_t done = 0;
  while (done < text.s.size()) {
    const ssize_t n = ::write(fd.get(), text.s.data() + done, text.s.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno, "write");
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail(errno, "fsync");
  if (::close(fd.Release()) != 0 && errno != EINTR) {
    const int err = errno;
    ::unlink(path.c_str());
    return ErrnoError(err, fmt::format("close key file {}", path));
  }
  return WithContext(io::DefaultFileSystem().SyncDir(io::DirName(path)),
                     fmt::format("create key file {}", path));
}

Result<MasterKey> ResolveKey(const KeySource& source) {
  const int given = !source.file.empty() + !source.env_var.empty() + !source.command.empty();
  if (given == 0) {
    return MakeError(Code::kInvalidArgument,
                     "no checkpoint key given: use --key-file or --key-command, or set "
                     "CAIRN_KEY_FILE, CAIRN_KEY_COMMAND or CAIRN_MASTER_KEY");
  }
  if (given > 1) {
    return MakeError(Code::kInvalidArgument,
                     "more than one key source given (file, environment variable, command); "
                     "use exactly one");
  }
  if (!source.file.empty()) return LoadKeyFile(source.file);
  if (!source.env_var.empty()) return LoadKeyFromEnv(source.env_var);
  return LoadKeyFromCommand(source.command);
}

Result<std::vector<uint8_t>> WrapKey(const MasterKey& master, const SecretKey& data_key,
                                     std::span<const uint8_t> aad) {
  CAIRN_ASSIGN_OR_RETURN(SecretKey wrapping, HkdfSha256(master.key, "cairn.wrap.v1"));
  CAIRN_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(wrapping));
  std::vector<uint8_t> out(kWrappedKeySize);
  auto nonce = std::span(out).first<AesGcm::kNonceSize>();
  auto ct = std::span(out).subspan(AesGcm::kNonceSize, SecretKey::kSize);
  auto tag = std::span(out).last<AesGcm::kTagSize>();
  if (RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) != 1) {
    return MakeError(Code::kInternal, "RAND_bytes failed for a key-wrapping nonce");
  }
  CAIRN_RETURN_IF_ERROR_CTX(gcm.Seal(nonce, aad, std::as_bytes(data_key.bytes()),
                                     reinterpret_cast<std::byte*>(ct.data()), tag),
                            "wrap data key under master key {}", master.id);
  return out;
}

Result<SecretKey> UnwrapKey(const MasterKey& master, std::span<const uint8_t> wrapped,
                            std::span<const uint8_t> aad) {
  if (wrapped.size() != kWrappedKeySize) {
    return MakeError(Code::kDataLoss, "wrapped data key is {} bytes, expected {}", wrapped.size(),
                     kWrappedKeySize);
  }
  CAIRN_ASSIGN_OR_RETURN(SecretKey wrapping, HkdfSha256(master.key, "cairn.wrap.v1"));
  CAIRN_ASSIGN_OR_RETURN(AesGcm gcm, AesGcm::Create(wrapping));
  std::array<uint8_t, SecretKey::kSize> raw;
  const bool ok =
      gcm.Open(wrapped.first<AesGcm::kNonceSize>(), aad,
               std::as_bytes(wrapped.subspan(AesGcm::kNonceSize, SecretKey::kSize)),
               reinterpret_cast<std::byte*>(raw.data()), wrapped.last<AesGcm::kTagSize>());
  if (!ok) {
    return MakeError(Code::kDataLoss,
                     "wrapped data key does not authenticate (tampered, or wrapped for another "
                     "context) under master key {}",
                     master.id);
  }
  SecretKey key = SecretKey::FromBytes(raw);
  OPENSSL_cleanse(raw.data(), raw.size());
  return key;
}

}  // namespace cairn::ckpt
