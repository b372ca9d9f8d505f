// Wire framing of the coordinator protocol: Envelopes in and out of a byte stream.
//
// Promise: a frame is a 4-byte big-endian length N followed by N bytes holding one
// serialized cairn.proto.Envelope. EncodeFrame produces exactly that. FrameDecoder takes
// a byte stream in chunks of any size and yields each complete, valid Envelope once, in
// order; a stream it cannot trust (zero length, a length over the decoder's limit, a body
// that is not an Envelope or has a string field that is not UTF-8, a protocol version
// other than kProtocolVersion, no method, a request with request_id 0) is a
// kInvalidArgument error naming the problem. An oversized length is rejected as soon as
// its 4 bytes are in, before any of the body is taken. After the first error the decoder
// stays failed: every later Next() returns the same error, and the caller closes the
// connection. The decoder never holds more than max_frame_bytes + 4 bytes of the stream
// (Feed takes bytes only up to the end of the frame being assembled; see Feed), and its
// body buffer grows with the bytes that arrive, never past the frame's N, so a length
// prefix alone allocates nothing.
//
// CheckAuth compares a request's cluster token in constant time and never puts the token
// in its error. MakeReply / MakeErrorReply build the answer to a request.
//
// This code is transport-independent: no sockets, no threads, no clocks.
//
// Threading: a FrameDecoder is used by one connection's strand at a time. The free
// functions are pure.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "common/status.h"
#include "proto/cairn.pb.h"

namespace cairn::coord {

// The protocol version this code speaks; Envelopes with another version are rejected.
inline constexpr uint32_t kProtocolVersion = 1;
// Size of the length prefix of a frame.
inline constexpr std::size_t kFrameHeaderBytes = 4;
// Default limit on N, the serialized Envelope size of one frame (16 MiB).
inline constexpr uint32_t kMaxFrameBytes = 16u << 20;
// The largest limit a decoder accepts (protobuf parses at most INT32_MAX bytes); larger
// limits are lowered to it.
inline constexpr uint32_t kMaxFrameBytesCeiling = 0x7fffffffu;

// The frame of `envelope`: 4-byte big-endian length, then the serialized Envelope.
// kInvalidArgument when the serialized size exceeds `max_frame_bytes`. The content is not
// validated here (a default Envelope encodes as a zero-length frame, which decoders
// reject); that is the receiving FrameDecoder's job.
Result<std::string> EncodeFrame(const proto::Envelope& envelope,
                                uint32_t max_frame_bytes = kMaxFrameBytes);

class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_frame_bytes = kMaxFrameBytes);

  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;
  FrameDecoder(FrameDecoder&&) = default;
  FrameDecoder& operator=(FrameDecoder&&) = default;

  // Appends bytes of the stream and returns how many of `bytes` were taken. All of them
  // are taken, except that Feed stops at the end of a complete frame not yet returned by
  // Next(), and takes nothing once the decoder has failed. So when Feed returns less than
  // bytes.size(), the following Next() returns an Envelope or an error, never nullopt;
  // call Next(), then Feed the rest. The read loop of a connection:
  //
  //   for (;;) {
  //     chunk = chunk.subspan(decoder.Feed(chunk));
  //     CAIRN_ASSIGN_OR_RETURN(auto envelope, decoder.Next());  // error: close
  //     if (!envelope) break;  // chunk fully taken; read more
  //     Handle(*std::move(envelope));
  //   }
  [[nodiscard]] std::size_t Feed(std::span<const std::byte> bytes);
  [[nodiscard]] std::size_t Feed(std::string_view bytes);

  // The next complete Envelope; nullopt when more bytes are needed; the (sticky) error
  // when the stream is bad.
  Result<std::optional<proto::Envelope>> Next();

  bool failed() const { return error_.has_value(); }
  // Bytes of the stream held now (at most max_frame_bytes() + 4).
  std::size_t buffered_bytes() const { return header_size_ + body_.size(); }
  uint32_t max_frame_bytes() const { return max_frame_bytes_; }
  // Frames returned by Next() so far.
  uint64_t frames_decoded() const { return frames_decoded_; }

 private:
  // Called when the 4 header bytes are in: checks the length, fails the decoder if bad.
  void OnHeaderComplete();
  void Fail(Error error);

  uint32_t max_frame_bytes_;
  std::array<std::byte, kFrameHeaderBytes> header_{};
  std::size_t header_size_ = 0;  // header bytes held (0..4)
  uint32_t body_size_ = 0;       // N, valid once header_size_ == 4
  std::string body_;             // body bytes held (0..N)
  std::optional<Error> error_;   // set once; sticky
  uint64_t frames_decoded_ = 0;
};

// OK when `request` carries `cluster_token` (compared in constant time for a given token
// length). Otherwise kPermissionDenied "request N from client C: bad or missing cluster
// token"; the token itself is never part of the error. An empty `cluster_token` (no token
// configured) accepts nothing: kFailedPrecondition.
Status CheckAuth(const proto::Envelope& request, std::string_view cluster_token);

// The successful reply to `request`: same protocol version, client_id, request_id and
// method, is_reply set, `payload` as payload, no auth token, no error.
proto::Envelope MakeReply(const proto::Envelope& request, std::string payload);

// The failed reply to `request`: as MakeReply with an empty payload and ErrorDetail
// {code: CodeName(error.code()), message: error.ToString()}.
proto::Envelope MakeErrorReply(const proto::Envelope& request, const Error& error);

}  // namespace cairn::coord
