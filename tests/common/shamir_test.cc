#include "attune/common/shamir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace attune::shamir {
namespace {

using crypto::Bytes;
using crypto::SecretBytes;

Bytes Plain(const SecretBytes& b) { return Bytes(b.begin(), b.end()); }

// FIPS-197 §4.2: {57}·{83} = {c1}, {57}·{13} = {fe}; x·{02} is xtime.
TEST(ShamirTest, FieldArithmeticMatchesFips197) {
  EXPECT_EQ(GfMul(0x57, 0x83), 0xc1);
  EXPECT_EQ(GfMul(0x57, 0x13), 0xfe);
  EXPECT_EQ(GfMul(0x57, 0x02), 0xae);
  EXPECT_EQ(GfMul(0xae, 0x02), 0x47);
  EXPECT_EQ(GfMul(0x00, 0x9a), 0x00);
  // FIPS-197 §5.1.1: the multiplicative inverse of {53} is {ca}.
  EXPECT_EQ(GfInv(0x53), 0xca);
  for (int a = 1; a < 256; ++a) {
    ASSERT_EQ(GfMul(static_cast<uint8_t>(a), GfInv(static_cast<uint8_t>(a))), 1) << a;
  }
}

TEST(ShamirTest, AnyThresholdSubsetRecoversTheSecret) {
  std::mt19937 rng(5);  // which subsets: not security-relevant
  const SecretBytes secret = *crypto::RandomBytes(32);
  for (auto [t, n] : {std::pair{1, 1}, {1, 4}, {2, 3}, {3, 5}, {7, 20}, {20, 20}, {128, 255}}) {
    StatusOr<std::vector<Share>> shares = Split(secret, t, n);
    ASSERT_TRUE(shares.ok()) << shares.status();
    ASSERT_EQ(static_cast<int>(shares->size()), n);
    for (int trial = 0; trial < 5; ++trial) {
      std::vector<Share> subset = *shares;
      std::shuffle(subset.begin(), subset.end(), rng);
      subset.resize(t + trial % 2 * (n - t));  // exactly t, or all n
      StatusOr<SecretBytes> got = Combine(subset, t);
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ(Plain(*got), Plain(secret)) << t << " of " << n;
    }
    if (t > 1) {
      // t − 1 shares (padded with a repeat) are refused, not guessed.
      std::vector<Share> few(shares->begin(), shares->begin() + t - 1);
      EXPECT_FALSE(Combine(few, t).ok());
      few.push_back(few.front());
      EXPECT_EQ(Combine(few, t).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

// With t = 2, one share of a one-byte secret is uniform whatever the
// secret: over 256 × 200 splits of secret 0x00 and of 0xff, each share
// value appears about 200 times (chi-square, 255 degrees of freedom; the
// 0.999 quantile is about 330).
TEST(ShamirTest, FewerThanThresholdSharesRevealNothing) {
  for (uint8_t s : {uint8_t{0x00}, uint8_t{0xff}}) {
    std::vector<int> counts(256, 0);
    const int trials = 256 * 200;
    for (int i = 0; i < trials; ++i) {
      Bytes secret{s};
      counts[(*Split(secret, 2, 3))[1].y[0]]++;
    }
    double chi2 = 0;
    for (int c : counts) chi2 += (c - 200.0) * (c - 200.0) / 200.0;
    EXPECT_LT(chi2, 330.0) << "secret " << int(s);
  }
}

TEST(ShamirTest, BadArgumentsAreRefused) {
  const Bytes secret(32, 7);
  EXPECT_EQ(Split(secret, 0, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(secret, 4, 3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(secret, 2, 256).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Split(Bytes{}, 1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<Share> shares = *Split(secret, 2, 3);
  shares[1].y.pop_back();
  EXPECT_EQ(Combine(shares, 2).status().code(), absl::StatusCode::kInvalidArgument);
  shares[1].x = 0;
  EXPECT_EQ(Combine(shares, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune::shamir
