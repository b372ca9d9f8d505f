#include "coordinator/frame.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/util/message_differencer.h>
#include <gtest/gtest.h>

namespace cairn::coord {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::testing::HasSubstr;
using ::testing::Not;

proto::Envelope Request(uint64_t id, std::string method, std::string payload = "") {
  proto::Envelope e;
  e.set_protocol_version(kProtocolVersion);
  e.set_client_id("agent-7");
  e.set_request_id(id);
  e.set_method(std::move(method));
  e.set_payload(std::move(payload));
  e.set_auth_token("s3cret-token");
  return e;
}

std::string Frame(const proto::Envelope& e, uint32_t max = kMaxFrameBytes) {
  auto frame = EncodeFrame(e, max);
  EXPECT_TRUE(frame.has_value()) << frame.error().ToString();
  return frame.value_or("");
}

std::string Header(uint32_t n) {
  return {static_cast<char>(n >> 24), static_cast<char>((n >> 16) & 0xff),
          static_cast<char>((n >> 8) & 0xff), static_cast<char>(n & 0xff)};
}

// Several envelopes: small and large, binary payloads, a reply carrying an error.
std::vector<proto::Envelope> SampleEnvelopes() {
  std::vector<proto::Envelope> out;
  out.push_back(Request(1, "Heartbeat"));
  out.push_back(Request(2, "SubmitJob", std::string("\0\x01\x02\xff binary\0", 12)));
  out.push_back(Request(3, "RegisterNode", std::string(1000, 'x')));
  proto::Envelope reply = Request(0, "CancelJob");
  reply.clear_auth_token();
  reply.set_is_reply(true);
  reply.mutable_error()->set_code("NOT_FOUND");
  reply.mutable_error()->set_message("job j-1 not found");
  out.push_back(reply);
  out.push_back(Request(UINT64_MAX, "ReportProgress", std::string(300, '\0')));
  return out;
}

// Feeds `chunks` in order with the read loop documented in frame.h; returns the decoded
// envelopes, or the error.
Result<std::vector<proto::Envelope>> DecodeChunks(FrameDecoder& decoder,
                                                  const std::vector<std::string>& chunks) {
  std::vector<proto::Envelope> out;
  for (const std::string& c : chunks) {
    std::string_view rest = c;
    for (;;) {
      const std::size_t taken = decoder.Feed(rest);
      EXPECT_LE(decoder.buffered_bytes(), std::size_t{decoder.max_frame_bytes()} + 4);
      const bool all_taken = taken == rest.size();
      rest.remove_prefix(taken);
      CAIRN_ASSIGN_OR_RETURN(auto envelope, decoder.Next());
      if (!envelope) {
        // The documented contract: nullopt only once the chunk is fully taken.
        EXPECT_TRUE(all_taken);
        break;
      }
      out.push_back(*std::move(envelope));
    }
  }
  return out;
}

void ExpectSame(const std::vector<proto::Envelope>& got, const std::vector<proto::Envelope>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(MessageDifferencer::Equals(got[i], want[i]))
        << "envelope " << i << ": got " << got[i].ShortDebugString() << " want "
        << want[i].ShortDebugString();
  }
}

std::string Stream(const std::vector<proto::Envelope>& envelopes) {
  std::string s;
  for (const auto& e : envelopes) s += Frame(e);
  return s;
}

TEST(EncodeFrameTest, BigEndianLengthThenEnvelope) {
  const proto::Envelope e = Request(42, "SubmitJob", std::string(300, 'p'));
  const std::string frame = Frame(e);
  const std::string body = e.SerializeAsString();
  ASSERT_GT(body.size(), 256u);
  ASSERT_EQ(frame.size(), 4 + body.size());
  EXPECT_EQ(frame.substr(0, 4), Header(static_cast<uint32_t>(body.size())));
  EXPECT_EQ(static_cast<unsigned char>(frame[2]), body.size() >> 8);
  EXPECT_EQ(frame.substr(4), body);
}

TEST(EncodeFrameTest, RejectsEnvelopeOverTheLimit) {
  const proto::Envelope e = Request(1, "Put", std::string(200, 'p'));
  const auto size = static_cast<uint32_t>(e.ByteSizeLong());
  EXPECT_TRUE(EncodeFrame(e, size).has_value());
  auto r = EncodeFrame(e, size - 1);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.error().message(),
            fmt::format("frame of {} bytes exceeds the {}-byte limit", size, size - 1));
}

TEST(FrameDecoderTest, RoundTripInOneChunk) {
  const auto want = SampleEnvelopes();
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Stream(want)});
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  ExpectSame(*got, want);
  EXPECT_EQ(decoder.frames_decoded(), want.size());
  EXPECT_EQ(decoder.buffered_bytes(), 0u);
  EXPECT_FALSE(decoder.failed());
}

TEST(FrameDecoderTest, RoundTripByteByByte) {
  const auto want = SampleEnvelopes();
  const std::string stream = Stream(want);
  std::vector<std::string> chunks;
  for (char c : stream) chunks.emplace_back(1, c);
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, chunks);
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  ExpectSame(*got, want);
}

TEST(FrameDecoderTest, RoundTripSplitAtEveryOffset) {
  const auto want = SampleEnvelopes();
  const std::string stream = Stream(want);
  for (std::size_t k = 0; k <= stream.size(); ++k) {
    SCOPED_TRACE(k);
    FrameDecoder decoder;
    auto got = DecodeChunks(decoder, {stream.substr(0, k), stream.substr(k)});
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    ExpectSame(*got, want);
  }
}

TEST(FrameDecoderTest, SpanOverloadAndLargeFrameInSmallChunks) {
  const std::vector<proto::Envelope> want = {Request(9, "Upload", std::string(1 << 20, 'z')),
                                             Request(10, "Heartbeat")};
  const std::string stream = Stream(want);
  FrameDecoder decoder;
  std::vector<proto::Envelope> got;
  auto bytes = std::as_bytes(std::span<const char>(stream.data(), stream.size()));
  while (!bytes.empty()) {
    auto chunk = bytes.first(std::min<std::size_t>(4096, bytes.size()));
    bytes = bytes.subspan(chunk.size());
    for (;;) {
      chunk = chunk.subspan(decoder.Feed(chunk));
      auto next = decoder.Next();
      ASSERT_TRUE(next.has_value()) << next.error().ToString();
      if (!*next) break;
      got.push_back(**std::move(next));
    }
  }
  ExpectSame(got, want);
}

TEST(FrameDecoderTest, FeedStopsAtTheEndOfACompleteFrame) {
  // Memory bound: a burst of frames is taken one frame at a time, never more than
  // max + 4 bytes held.
  std::vector<proto::Envelope> want;
  for (uint64_t i = 1; i <= 50; ++i) want.push_back(Request(i, "Heartbeat", std::string(100, 'h')));
  const std::string stream = Stream(want);
  const std::size_t first = Frame(want[0]).size();
  FrameDecoder decoder(200);
  EXPECT_EQ(decoder.Feed(stream), first);
  EXPECT_EQ(decoder.buffered_bytes(), first);
  EXPECT_EQ(decoder.Feed(std::string_view(stream).substr(first)), 0u);  // still undrained
  auto got = DecodeChunks(decoder, {stream.substr(first)});
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  EXPECT_EQ(got->size(), want.size());  // the first frame came out of the first Next()
}

TEST(FrameDecoderTest, OversizedLengthRejectedAfterExactlyFourBytes) {
  FrameDecoder decoder;
  const std::string header = Header(kMaxFrameBytes + 1);
  std::string stream = header + std::string(100, 'b');
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(decoder.Feed(std::string_view(stream).substr(i, 1)), 1u);
    auto next = decoder.Next();
    ASSERT_TRUE(next.has_value());
    EXPECT_FALSE(next->has_value());
    EXPECT_FALSE(decoder.failed());
  }
  // The fourth length byte decides; the body bytes after it are not taken.
  EXPECT_EQ(decoder.Feed(std::string_view(stream).substr(3)), 1u);
  EXPECT_TRUE(decoder.failed());
  EXPECT_EQ(decoder.buffered_bytes(), 4u);
  auto next = decoder.Next();
  ASSERT_FALSE(next.has_value());
  EXPECT_EQ(next.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(next.error().message(), "frame of 16777217 bytes exceeds the 16777216-byte limit");
}

TEST(FrameDecoderTest, MaxIsConfigurableAndInclusive) {
  const proto::Envelope e = Request(5, "Put", std::string(100, 'p'));
  const auto size = static_cast<uint32_t>(e.ByteSizeLong());
  {
    FrameDecoder decoder(size);
    auto got = DecodeChunks(decoder, {Frame(e)});
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    ExpectSame(*got, {e});
  }
  {
    FrameDecoder decoder(size - 1);
    auto got = DecodeChunks(decoder, {Frame(e)});
    ASSERT_FALSE(got.has_value());
    EXPECT_EQ(got.error().message(),
              fmt::format("frame of {} bytes exceeds the {}-byte limit", size, size - 1));
  }
  EXPECT_EQ(FrameDecoder(UINT32_MAX).max_frame_bytes(), kMaxFrameBytesCeiling);
  EXPECT_EQ(FrameDecoder().max_frame_bytes(), 16u * 1024 * 1024);
}

TEST(FrameDecoderTest, ZeroLengthFrameIsAnError) {
  FrameDecoder decoder;
  EXPECT_EQ(decoder.Feed(Header(0) + Frame(Request(1, "Heartbeat"))), 4u);
  auto next = decoder.Next();
  ASSERT_FALSE(next.has_value());
  EXPECT_EQ(next.error().code(), Code::kInvalidArgument);
  EXPECT_THAT(next.error().message(), HasSubstr("zero-length frame"));
}

TEST(FrameDecoderTest, BodyThatIsNotAnEnvelopeIsAnError) {
  // 0xff...: field number with the invalid wire type 7.
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Header(16) + std::string(16, '\xff')});
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(got.error().message(), "frame of 16 bytes does not parse as a cairn.proto.Envelope");
}

TEST(FrameDecoderTest, TruncatedEnvelopeIsAnError) {
  // The auth token is the last field serialized; cutting 3 bytes leaves its length prefix
  // promising more bytes than the body has.
  const std::string body = Request(7, "SubmitJob", "payload").SerializeAsString();
  const std::string cut = body.substr(0, body.size() - 3);
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Header(static_cast<uint32_t>(cut.size())) + cut});
  ASSERT_FALSE(got.has_value());
  EXPECT_THAT(got.error().message(), HasSubstr("does not parse as a cairn.proto.Envelope"));
}

TEST(FrameDecoderTest, InvalidUtf8InAStringFieldIsAnError) {
  // protocol_version 1, client_id "\xff\xfe" (not UTF-8), request_id 1, method "H".
  const std::string body("\x08\x01\x12\x02\xff\xfe\x18\x01\x22\x01H", 11);
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Header(static_cast<uint32_t>(body.size())) + body});
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().message(), "frame of 11 bytes does not parse as a cairn.proto.Envelope");

  // The same bytes with a valid client id decode.
  std::string fixed = body;
  fixed[4] = 'a';
  fixed[5] = 'b';
  FrameDecoder decoder2;
  auto ok = DecodeChunks(decoder2, {Header(11) + fixed});
  ASSERT_TRUE(ok.has_value()) << ok.error().ToString();
  ASSERT_EQ(ok->size(), 1u);
  EXPECT_EQ((*ok)[0].client_id(), "ab");
  EXPECT_EQ((*ok)[0].method(), "H");
}

TEST(FrameDecoderTest, RandomBodiesAreErrors) {
  std::mt19937_64 rng(20240601);
  for (int i = 0; i < 200; ++i) {
    std::string body(1 + rng() % 64, '\0');
    for (char& c : body) c = static_cast<char>(rng());
    FrameDecoder decoder;
    auto got = DecodeChunks(decoder, {Header(static_cast<uint32_t>(body.size())) + body});
    ASSERT_FALSE(got.has_value()) << "random body " << i << " decoded as an envelope";
    EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
  }
}

TEST(FrameDecoderTest, UnsupportedProtocolVersion) {
  for (uint32_t version : {0u, 2u, 77u}) {
    proto::Envelope e = Request(3, "Heartbeat");
    e.set_protocol_version(version);
    FrameDecoder decoder;
    auto got = DecodeChunks(decoder, {Frame(e)});
    ASSERT_FALSE(got.has_value());
    EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
    EXPECT_EQ(got.error().message(),
              fmt::format("unsupported protocol version {} (this server speaks 1)", version));
  }
}

TEST(FrameDecoderTest, MissingMethod) {
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Frame(Request(12, ""))});
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(got.error().message(), "request 12 from client 'agent-7' has no method");
}

TEST(FrameDecoderTest, RequestIdZeroIsRejectedForRequestsOnly) {
  {
    FrameDecoder decoder;
    auto got = DecodeChunks(decoder, {Frame(Request(0, "SubmitJob"))});
    ASSERT_FALSE(got.has_value());
    EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
    EXPECT_THAT(got.error().message(), HasSubstr("request_id 0"));
  }
  {
    proto::Envelope reply = Request(0, "SubmitJob");
    reply.set_is_reply(true);
    FrameDecoder decoder;
    auto got = DecodeChunks(decoder, {Frame(reply)});
    ASSERT_TRUE(got.has_value()) << got.error().ToString();
    ExpectSame(*got, {reply});
  }
}

TEST(FrameDecoderTest, ClientIdInErrorsIsSanitised) {
  proto::Envelope e = Request(4, "");
  e.set_client_id("evil\nline\x01" + std::string(100, 'a'));
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Frame(e)});
  ASSERT_FALSE(got.has_value());
  EXPECT_THAT(got.error().message(), HasSubstr("evil\\x0aline\\x01aaa"));
  EXPECT_THAT(got.error().message(), HasSubstr("...'"));
  EXPECT_THAT(got.error().message(), Not(HasSubstr("\n")));
}

TEST(FrameDecoderTest, ErrorIsSticky) {
  const std::string good = Frame(Request(1, "Heartbeat"));
  FrameDecoder decoder;
  // A good frame, then a bad one, then good ones: the good one comes out, then the error
  // forever; nothing after the error is taken.
  const std::string stream = good + Frame(Request(2, "")) + good;
  auto got = DecodeChunks(decoder, {stream});
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(decoder.frames_decoded(), 1u);
  const std::string first = got.error().ToString();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(decoder.Feed(good), 0u);
    auto next = decoder.Next();
    ASSERT_FALSE(next.has_value());
    EXPECT_EQ(next.error().code(), Code::kInvalidArgument);
    EXPECT_EQ(next.error().ToString(), first);
    EXPECT_TRUE(decoder.failed());
  }
}

TEST(CheckAuthTest, AcceptsTheClusterToken) {
  EXPECT_TRUE(CheckAuth(Request(1, "Heartbeat"), "s3cret-token").has_value());
}

TEST(CheckAuthTest, RejectsWrongOrMissingTokenWithoutEchoingIt) {
  const std::vector<std::string> wrong = {
      "s3cret-tokem",           // same length, last byte differs
      "S3cret-token",           // first byte differs
      "s3cret-toke",            // prefix
      "s3cret-token-and-more",  // extension
      std::string("s3cret-token\0", 13),
      "",  // missing
  };
  for (const std::string& token : wrong) {
    proto::Envelope e = Request(31, "SubmitJob");
    e.set_auth_token(token);
    auto s = CheckAuth(e, "s3cret-token");
    ASSERT_FALSE(s.has_value()) << "token '" << token << "' accepted";
    EXPECT_EQ(s.error().code(), Code::kPermissionDenied);
    EXPECT_EQ(s.error().message(),
              "request 31 from client 'agent-7': bad or missing cluster token");
    EXPECT_THAT(s.error().ToString(), Not(HasSubstr("s3cret")));
  }
  proto::Envelope unset = Request(32, "SubmitJob");
  unset.clear_auth_token();
  auto s = CheckAuth(unset, "s3cret-token");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kPermissionDenied);
}

TEST(CheckAuthTest, NoConfiguredTokenAcceptsNothing) {
  proto::Envelope e = Request(5, "SubmitJob");
  e.clear_auth_token();
  auto s = CheckAuth(e, "");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), Code::kFailedPrecondition);
  EXPECT_FALSE(CheckAuth(Request(6, "SubmitJob"), "").has_value());
}

TEST(ReplyTest, MakeReplyCopiesTheRequestIdentity) {
  const proto::Envelope request = Request(77, "SubmitJob", "request-bytes");
  const proto::Envelope reply = MakeReply(request, "reply-bytes");
  EXPECT_EQ(reply.protocol_version(), kProtocolVersion);
  EXPECT_EQ(reply.client_id(), "agent-7");
  EXPECT_EQ(reply.request_id(), 77u);
  EXPECT_EQ(reply.method(), "SubmitJob");
  EXPECT_EQ(reply.payload(), "reply-bytes");
  EXPECT_TRUE(reply.is_reply());
  EXPECT_TRUE(reply.auth_token().empty());
  EXPECT_FALSE(reply.has_error());

  // It travels through a decoder unchanged.
  FrameDecoder decoder;
  auto got = DecodeChunks(decoder, {Frame(reply)});
  ASSERT_TRUE(got.has_value()) << got.error().ToString();
  ExpectSame(*got, {reply});
}

TEST(ReplyTest, MakeErrorReplyCarriesCodeAndFullMessage) {
  const proto::Envelope request = Request(78, "CancelJob", "request-bytes");
  Error error(Code::kNotFound, "job j-9 not found");
  error.With("cancel");
  const proto::Envelope reply = MakeErrorReply(request, error);
  EXPECT_EQ(reply.protocol_version(), kProtocolVersion);
  EXPECT_EQ(reply.client_id(), "agent-7");
  EXPECT_EQ(reply.request_id(), 78u);
  EXPECT_EQ(reply.method(), "CancelJob");
  EXPECT_TRUE(reply.is_reply());
  EXPECT_TRUE(reply.payload().empty());
  EXPECT_TRUE(reply.auth_token().empty());
  ASSERT_TRUE(reply.has_error());
  EXPECT_EQ(reply.error().code(), CodeName(Code::kNotFound));
  EXPECT_EQ(reply.error().message(), error.ToString());
  EXPECT_THAT(reply.error().message(), HasSubstr("cancel"));
  EXPECT_THAT(reply.error().message(), HasSubstr("job j-9 not found"));
}

// Random byte strings, random mutations of valid streams and random chunkings: the decoder
// never crashes, never holds more than max + 4 bytes, always ends with envelopes only
// (each valid) or with an error, and every call returns.
TEST(FrameDecoderTest, FuzzRandomStreams) {
  std::mt19937_64 rng(7);
  const std::string valid = Stream(SampleEnvelopes());
  int errors = 0, clean = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::string input;
    switch (iter % 4) {
      case 0:  // plain random bytes
        input.resize(rng() % 256);
        for (char& c : input) c = static_cast<char>(rng());
        break;
      case 1: {  // a small plausible length, then random bytes
        const uint32_t n = 1 + static_cast<uint32_t>(rng() % 64);
        input = Header(n);
        for (std::size_t i = 0, m = rng() % 80; i < m; ++i)
          input.push_back(static_cast<char>(rng()));
        break;
      }
      default: {  // a valid stream with a few bytes flipped, and maybe truncated
        input = valid;
        for (int f = 0, flips = 1 + static_cast<int>(rng() % 4); f < flips; ++f) {
          input[rng() % input.size()] ^= static_cast<char>(1 + rng() % 255);
        }
        if (rng() % 2) input.resize(rng() % input.size());
        break;
      }
    }
    std::vector<std::string> chunks;
    for (std::size_t pos = 0; pos < input.size();) {
      const std::size_t n = std::min<std::size_t>(1 + rng() % 40, input.size() - pos);
      chunks.push_back(input.substr(pos, n));
      pos += n;
    }
    FrameDecoder decoder(iter % 8 == 0 ? 512 : kMaxFrameBytes);
    auto got = DecodeChunks(decoder, chunks);
    if (!got) {
      ++errors;
      EXPECT_EQ(got.error().code(), Code::kInvalidArgument);
      EXPECT_TRUE(decoder.failed());
      EXPECT_FALSE(decoder.Next().has_value());  // still failed
    } else {
      ++clean;
      EXPECT_FALSE(decoder.failed());
      for (const auto& e : *got) {
        EXPECT_EQ(e.protocol_version(), kProtocolVersion);
        EXPECT_FALSE(e.method().empty());
        EXPECT_TRUE(e.is_reply() || e.request_id() != 0);
      }
      EXPECT_EQ(decoder.frames_decoded(), got->size());
    }
  }
  // Both outcomes occur (truncated-only or harmless flips decode cleanly).
  EXPECT_GT(errors, 0);
  EXPECT_GT(clean, 0);
}

}  // namespace
}  // namespace cairn::coord
