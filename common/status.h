// cairn's one error type.
//
// Promise: every fallible function in cairn returns `Status` (= Result<void>) or
// `Result<T>` (= std::expected<T, Error>). An Error carries a Code chosen by what the
// caller should do about it, a message naming the problem, and a context chain that
// grows as the error travels up ("commit step 40: write shard 3: /ckpt/...: No space
// left on device"). Codes are few on purpose; details go in the message.
//
// Threading: values; no shared state.
#pragma once

#include <expected>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace cairn {

// Each code says what the caller should do.
enum class Code {
  kInvalidArgument,     // The input is wrong (spec, flag, file content). Fix it; never retry.
  kNotFound,            // The named thing does not exist. Create it or pick another.
  kFailedPrecondition,  // The system is not in a state to do this (key file too open,
                        // checkpoint dir locked). Fix the state first, then retry.
  kPermissionDenied,    // Not authenticated or not authorised. Fix credentials.
  kUnavailable,         // Transient (peer down, EINTR, connection lost). Retry with backoff.
  kResourceExhausted,   // Out of disk, memory or quota. Free resources, then retry.
  kDeadlineExceeded,    // Took too long. Retry at a higher level (restart the attempt).
  kDataLoss,            // Integrity check failed: data is corrupt or tampered with. Do not
                        // trust it; fall back to an older copy.
  kCancelled,           // The operation was cancelled by request.
  kInternal,            // A bug or an unexpected system failure. Give up and report.
};

std::string_view CodeName(Code code);
// True when retrying the same call later may succeed.
bool IsRetryable(Code code);

class Error {
 public:
  Error(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  Code code() const { return code_; }
  // The innermost message, without context.
  const std::string& message() const { return message_; }
  // Context frames, innermost first.
  const std::vector<std::string>& context() const { return context_; }

  // Adds an outer context frame ("while doing X") and returns the error.
  Error& With(std::string frame) & {
    context_.push_back(std::move(frame));
    return *this;
  }
  Error&& With(std::string frame) && {
    context_.push_back(std::move(frame));
    return std::move(*this);
  }

  // "outer: inner: message" — what users see.
  std::string ToString() const;

 private:
  Code code_;
  std::string message_;
  std::vector<std::string> context_;
};

template <typename T>
using Result = std::expected<T, Error>;
using Status = Result<void>;

inline Status OkStatus() { return {}; }

// Builds an unexpected Error with a formatted message:
//   return MakeError(Code::kInvalidArgument, "rank {} out of range", r);
template <typename... Args>
std::unexpected<Error> MakeError(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return std::unexpected<Error>(Error(code, fmt::format(f, std::forward<Args>(args)...)));
}

// An Error for a failed system call: "<what>: <strerror(err)>", code from errno
// (ENOSPC/EDQUOT/ENOMEM -> kResourceExhausted, ENOENT -> kNotFound, EACCES/EPERM ->
// kPermissionDenied, EINTR/EAGAIN/EBUSY -> kUnavailable, EIO -> kDataLoss, ...).
std::unexpected<Error> ErrnoError(int err, std::string_view what);
Code CodeFromErrno(int err);

// Adds a context frame to the error of a failed result; passes success through.
template <typename T>
Result<T> WithContext(Result<T> r, std::string frame) {
  if (!r) r.error().With(std::move(frame));
  return r;
}

}  // namespace cairn

// Returns the error of a failed Status/Result expression from the enclosing function.
#define CAIRN_RETURN_IF_ERROR(expr)                                   \
  do {                                                                \
    if (auto cairn_status_ = (expr); !cairn_status_) [[unlikely]]     \
      return std::unexpected(std::move(cairn_status_).error());      \
  } while (0)

// As above, adding a context frame (any fmt arguments) to the error.
#define CAIRN_RETURN_IF_ERROR_CTX(expr, ...)                          \
  do {                                                                \
    if (auto cairn_status_ = (expr); !cairn_status_) [[unlikely]]     \
      return std::unexpected(                                         \
          std::move(cairn_status_).error().With(fmt::format(__VA_ARGS__))); \
  } while (0)

#define CAIRN_CONCAT_INNER_(a, b) a##b
#define CAIRN_CONCAT_(a, b) CAIRN_CONCAT_INNER_(a, b)

// `CAIRN_ASSIGN_OR_RETURN(auto x, MakeX());` — binds the value or returns the error.
#define CAIRN_ASSIGN_OR_RETURN(lhs, expr) \
  CAIRN_ASSIGN_OR_RETURN_IMPL_(CAIRN_CONCAT_(cairn_result_, __LINE__), lhs, expr)
#define CAIRN_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)              \
  auto tmp = (expr);                                              \
  if (!tmp) [[unlikely]]                                          \
    return std::unexpected(std::move(tmp).error());               \
  lhs = std::move(*tmp)
