#include "common/status.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace cairn {
namespace {

Result<int> ParsePositive(int v) {
  if (v <= 0) return MakeError(Code::kInvalidArgument, "value {} is not positive", v);
  return v;
}

Result<int> Doubled(int v) {
  CAIRN_ASSIGN_OR_RETURN(int x, ParsePositive(v));
  return 2 * x;
}

Status CheckWithContext(int v, std::string_view file) {
  CAIRN_RETURN_IF_ERROR_CTX(Doubled(v), "read {}", file);
  return OkStatus();
}

Status Outer(int v) { return WithContext(CheckWithContext(v, "a.yaml"), "load config"); }

TEST(StatusTest, ValuePassesThrough) {
  auto r = Doubled(21);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, 42);
  EXPECT_TRUE(Outer(3).has_value());
}

TEST(StatusTest, ErrorKeepsCodeAndGrowsContextOutward) {
  auto st = Outer(-1);
  ASSERT_FALSE(st.has_value());
  EXPECT_EQ(st.error().code(), Code::kInvalidArgument);
  EXPECT_EQ(st.error().message(), "value -1 is not positive");
  ASSERT_EQ(st.error().context().size(), 2u);
  EXPECT_EQ(st.error().context()[0], "read a.yaml");
  EXPECT_EQ(st.error().context()[1], "load config");
  EXPECT_EQ(st.error().ToString(), "load config: read a.yaml: value -1 is not positive");
}

TEST(StatusTest, ErrnoMapsToCallerAction) {
  EXPECT_EQ(ErrnoError(ENOSPC, "write x").error().code(), Code::kResourceExhausted);
  EXPECT_EQ(ErrnoError(ENOENT, "open x").error().code(), Code::kNotFound);
  EXPECT_EQ(ErrnoError(EACCES, "open x").error().code(), Code::kPermissionDenied);
  EXPECT_EQ(ErrnoError(EINTR, "read x").error().code(), Code::kUnavailable);
  EXPECT_EQ(ErrnoError(EIO, "fsync x").error().code(), Code::kDataLoss);
  auto e = ErrnoError(ENOSPC, "write /ckpt/shard-0").error();
  EXPECT_EQ(e.ToString(), "write /ckpt/shard-0: No space left on device");
}

TEST(StatusTest, RetryabilityFollowsCode) {
  EXPECT_TRUE(IsRetryable(Code::kUnavailable));
  EXPECT_TRUE(IsRetryable(Code::kResourceExhausted));
  EXPECT_FALSE(IsRetryable(Code::kInvalidArgument));
  EXPECT_FALSE(IsRetryable(Code::kDataLoss));
  EXPECT_EQ(CodeName(Code::kDataLoss), "DATA_LOSS");
}

}  // namespace
}  // namespace cairn
