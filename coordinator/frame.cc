#include "coordinator/frame.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include <google/protobuf/stubs/common.h>
#if GOOGLE_PROTOBUF_VERSION < 4022000
#include <google/protobuf/stubs/logging.h>
#define CAIRN_FRAME_SILENCE_PROTOBUF_LOG 1
#endif

namespace cairn::coord {
namespace {

// Body buffer capacity kept between frames; a larger buffer is released after its frame.
constexpr std::size_t kKeepBodyCapacity = 64u << 10;

// A peer-chosen string made safe for an error message: at most 64 bytes, printable ASCII,
// other bytes as \xNN.
std::string Printable(std::string_view s) {
  constexpr std::size_t kMax = 64;
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("\\x{:02x}", c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

Status Validate(const proto::Envelope& e) {
  if (e.protocol_version() != kProtocolVersion) {
    return MakeError(Code::kInvalidArgument,
                     "unsupported protocol version {} (this server speaks {})",
                     e.protocol_version(), kProtocolVersion);
  }
  const char* kind = e.is_reply() ? "reply" : "request";
  if (e.method().empty()) {
    return MakeError(Code::kInvalidArgument, "{} {} from client '{}' has no method", kind,
                     e.request_id(), Printable(e.client_id()));
  }
  if (!e.is_reply() && e.request_id() == 0) {
    return MakeError(Code::kInvalidArgument,
                     "request '{}' from client '{}' has request_id 0 (must be non-zero)",
                     Printable(e.method()), Printable(e.client_id()));
  }
  return OkStatus();
}

// Equal iff a == b; the time taken depends on the sizes only, not on the contents.
bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  // Every byte of `given` is compared against a byte of `expected` (or 0 past its end);
  // no early exit. volatile keeps the compiler from turning this into a memcmp.
  volatile unsigned char diff = given.size() == expected.size() ? 0 : 1;
  const std::size_t n = expected.size();
  for (std::size_t i = 0; i < given.size(); ++i) {
    const std::size_t in_range = static_cast<std::size_t>(i < n);
    const std::size_t j = i * in_range;  // i when in range, else 0 (expected is non-empty)
    const auto mask = static_cast<unsigned char>(0u - in_range);
    const auto e = static_cast<unsigned char>(static_cast<unsigned char>(expected[j]) & mask);
    diff = static_cast<unsigned char>(diff | (static_cast<unsigned char>(given[i]) ^ e));
  }
  return diff == 0;
}

}  // namespace

Result<std::string> EncodeFrame(const proto::Envelope& envelope, uint32_t max_frame_bytes) {
  const std::size_t n = envelope.ByteSizeLong();
  if (n > max_frame_bytes) {
    return MakeError(Code::kInvalidArgument, "frame of {} bytes exceeds the {}-byte limit", n,
                     max_frame_bytes);
  }
  std::string out(kFrameHeaderBytes + n, '\0');
  const auto len = static_cast<uint32_t>(n);
  out[0] = static_cast<char>((len >> 24) & 0xff);
  out[1] = static_cast<char>((len >> 16) & 0xff);
  out[2] = static_cast<char>((len >> 8) & 0xff);
  out[3] = static_cast<char>(len & 0xff);
  if (n > 0 && !envelope.SerializeToArray(out.data() + kFrameHeaderBytes, static_cast<int>(n))) {
    return MakeError(Code::kInternal, "serialize Envelope of {} bytes (method '{}')", n,
                     Printable(envelope.method()));
  }
  return out;
}

FrameDecoder::FrameDecoder(uint32_t max_frame_bytes)
    : max_frame_bytes_(std::min(max_frame_bytes, kMaxFrameBytesCeiling)) {}

std::size_t FrameDecoder::Feed(std::string_view bytes) {
  return Feed(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

std::size_t FrameDecoder::Feed(std::span<const std::byte> bytes) {
  std::size_t taken = 0;
  if (error_ || bytes.empty()) return 0;
  if (header_size_ < kFrameHeaderBytes) {
    const std::size_t k = std::min(kFrameHeaderBytes - header_size_, bytes.size());
    std::memcpy(header_.data() + header_size_, bytes.data(), k);
    header_size_ += k;
    taken += k;
    if (header_size_ < kFrameHeaderBytes) return taken;
    OnHeaderComplete();  // completed by this call
    if (error_) return taken;
  }
  const std::size_t want = body_size_ - body_.size();
  const std::size_t k = std::min(want, bytes.size() - taken);
  if (k > 0) {
    const std::size_t new_size = body_.size() + k;
    if (new_size > body_.capacity()) {
      // Grow geometrically but never past N: capacity stays within the frame's size.
      body_.reserve(std::min<std::size_t>(body_size_, std::max(new_size, 2 * body_.capacity())));
    }
    body_.append(reinterpret_cast<const char*>(bytes.data() + taken), k);
    taken += k;
  }
  return taken;
}

void FrameDecoder::OnHeaderComplete() {
  const auto b = [&](int i) { return static_cast<uint32_t>(header_[i]); };
  body_size_ = (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
  if (body_size_ == 0) {
    Fail(Error(Code::kInvalidArgument,
               fmt::format("zero-length frame (frame {} of the stream)", frames_decoded_ + 1)));
  } else if (body_size_ > max_frame_bytes_) {
    Fail(Error(Code::kInvalidArgument, fmt::format("frame of {} bytes exceeds the {}-byte limit",
                                                   body_size_, max_frame_bytes_)));
  }
}

void FrameDecoder::Fail(Error error) {
  error_.emplace(std::move(error));
  body_.clear();
  body_.shrink_to_fit();
}

Result<std::optional<proto::Envelope>> FrameDecoder::Next() {
  if (error_) return std::unexpected(*error_);
  if (header_size_ < kFrameHeaderBytes || body_.size() < body_size_) {
    return std::optional<proto::Envelope>();
  }
  std::optional<proto::Envelope> envelope(std::in_place);
  bool parsed;
  {
#ifdef CAIRN_FRAME_SILENCE_PROTOBUF_LOG
    // A peer's bad bytes (e.g. invalid UTF-8 in a string field) must not become a
    // libprotobuf ERROR line per frame; the error returned below names the problem.
    google::protobuf::LogSilencer silence_peer_input;
#endif
    parsed = envelope->ParseFromArray(body_.data(), static_cast<int>(body_.size()));
  }
  if (!parsed) {
    Fail(Error(
        Code::kInvalidArgument,
        fmt::format("frame of {} bytes does not parse as a cairn.proto.Envelope", body_size_)));
    return std::unexpected(*error_);
  }
  if (Status valid = Validate(*envelope); !valid) {
    Fail(std::move(valid).error());
    return std::unexpected(*error_);
  }
  ++frames_decoded_;
  header_size_ = 0;
  body_size_ = 0;
  body_.clear();
  if (body_.capacity() > kKeepBodyCapacity) {
    // Do not keep a large frame's buffer on an idle connection.
    body_.shrink_to_fit();
  }
  return envelope;
}

Status CheckAuth(const proto::Envelope& request, std::string_view cluster_token) {
  if (cluster_token.empty()) {
    return MakeError(Code::kFailedPrecondition,
                     "request {} from client '{}': the server has no cluster token configured",
                     request.request_id(), Printable(request.client_id()));
  }
  if (!ConstantTimeEquals(request.auth_token(), cluster_token)) {
    return MakeError(Code::kPermissionDenied,
                     "request {} from client '{}': bad or missing cluster token",
                     request.request_id(), Printable(request.client_id()));
  }
  return OkStatus();
}

proto::Envelope MakeReply(const proto::Envelope& request, std::string payload) {
  proto::Envelope reply;
  reply.set_protocol_version(kProtocolVersion);
  reply.set_client_id(request.client_id());
  reply.set_request_id(request.request_id());
  reply.set_method(request.method());
  reply.set_payload(std::move(payload));
  reply.set_is_reply(true);
  return reply;
}

proto::Envelope MakeErrorReply(const proto::Envelope& request, const Error& error) {
  proto::Envelope reply = MakeReply(request, std::string());
  proto::ErrorDetail* detail = reply.mutable_error();
  detail->set_code(std::string(CodeName(error.code())));
  detail->set_message(error.ToString());
  return reply;
}

}  // namespace cairn::coord
