#include "attune/common/privacy.h"

#include <gtest/gtest.h>

#include <cmath>

#include "nlohmann/json.hpp"
#include "support/command.h"

#ifndef ATTUNE_PYTHON
#define ATTUNE_PYTHON ""
#endif

namespace attune::privacy {
namespace {

// Closed forms: q = 1 is the Gaussian mechanism, α / (2σ²); at α = 2 the
// binomial sum is 1 + q²(e^{1/σ²} − 1); at α = 3 it has four terms.
TEST(PrivacyTest, RdpMatchesClosedForms) {
  EXPECT_DOUBLE_EQ(SampledGaussianRdp(1.0, 2.0, 5), 5 / 8.0);
  for (double q : {0.01, 0.3, 0.9}) {
    for (double s : {0.7, 1.1, 4.0}) {
      const double e1 = std::exp(1 / (s * s)), e3 = std::exp(3 / (s * s));
      EXPECT_NEAR(SampledGaussianRdp(q, s, 2), std::log(1 + q * q * (e1 - 1)), 1e-12);
      const double a3 = std::pow(1 - q, 3) + 3 * q * (1 - q) * (1 - q) + 3 * q * q * (1 - q) * e1 +
                        q * q * q * e3;
      EXPECT_NEAR(SampledGaussianRdp(q, s, 3), std::log(a3) / 2, 1e-12);
    }
  }
  EXPECT_EQ(SampledGaussianRdp(0, 1, 7), 0);
}

// Against an independent 60-digit implementation (mpmath), RDP at every
// order and ε after many releases, for sampled and unsampled rounds.
TEST(PrivacyTest, MatchesTheMpmathOracle) {
  if (std::string(ATTUNE_PYTHON).empty()) GTEST_SKIP() << "ATTUNE_PYTHON is empty: no oracle";
  const nlohmann::json cases = {
      {{"q", 1.0}, {"sigma", 1.0}, {"releases", 10}, {"delta", 1e-5}},
      {{"q", 0.3}, {"sigma", 1.1}, {"releases", 50}, {"delta", 1e-5}},
      {{"q", 256.0 / 60000}, {"sigma", 1.1}, {"releases", 14063}, {"delta", 1e-5}},
      {{"q", 0.05}, {"sigma", 0.8}, {"releases", 1}, {"delta", 1e-6}},
  };
  const auto [code, output] = testing::RunCommand(
      testing::ShellQuote(ATTUNE_PYTHON) + " " + testing::ShellQuote(ATTUNE_PRIVACY_ORACLE) + " " +
      testing::ShellQuote(cases.dump()));
  ASSERT_EQ(code, 0) << output;
  const nlohmann::json want = nlohmann::json::parse(output);
  for (size_t c = 0; c < cases.size(); ++c) {
    const double q = cases[c]["q"], sigma = cases[c]["sigma"], delta = cases[c]["delta"];
    const int releases = cases[c]["releases"];
    std::vector<double> curve;
    for (int a : Orders()) {
      const double got = releases * SampledGaussianRdp(q, sigma, a);
      const double expect = want[c]["rdp"][std::to_string(a)];
      EXPECT_NEAR(got, expect, 1e-9 * std::max(1.0, std::fabs(expect))) << "case " << c << " α " << a;
      curve.push_back(got);
    }
    const double eps = Epsilon(curve, delta), expect = want[c]["epsilon"];
    EXPECT_NEAR(eps, expect, 1e-9 * std::max(1.0, expect)) << "case " << c;
    std::printf("case %zu: q %.5f sigma %.2f x%d delta %g: epsilon %.4f (oracle %.4f)\n", c, q,
                sigma, releases, delta, eps, expect);
  }
}

TEST(PrivacyTest, TheLedgerRefusesAReleaseOverTheBudgetAndSurvivesARestart) {
  Accountant a = *Accountant::Make(/*epsilon_budget=*/2.0, /*delta=*/1e-5);
  int spent = 0;
  Status s;
  while ((s = a.Spend(1.0, 3.0, "round " + std::to_string(spent + 1))).ok()) {
    ++spent;
    ASSERT_LT(spent, 1000);
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(s.message()).find("over the study's budget"), std::string::npos) << s;
  EXPECT_GT(spent, 0);
  EXPECT_LE(a.epsilon(), 2.0);
  EXPECT_GT(a.EpsilonAfter(1.0, 3.0), 2.0);
  EXPECT_EQ(a.releases(), spent);
  // The refused release spent nothing; the ledger reloads as it was.
  Accountant b = *Accountant::FromJson(a.ToJson());
  EXPECT_EQ(b.releases(), spent);
  EXPECT_DOUBLE_EQ(b.epsilon(), a.epsilon());
  EXPECT_FALSE(Accountant::FromJson("{}").ok());
  EXPECT_FALSE(Accountant::Make(1, 0).ok());
  EXPECT_FALSE(Accountant::Make(0, 1e-5).ok());
}

TEST(Noise, ClipToNormScalesOnlyWhatIsOver) {
  std::vector<float> v = {3, 4};
  EXPECT_DOUBLE_EQ(ClipToNorm(v, 10), 5);
  EXPECT_EQ(v, (std::vector<float>{3, 4}));
  EXPECT_DOUBLE_EQ(ClipToNorm(v, 1), 5);
  EXPECT_NEAR(v[0], 0.6, 1e-7);
  EXPECT_NEAR(v[1], 0.8, 1e-7);
}

TEST(Noise, GaussianNoiseHasTheStatedMomentsAndIsSeeded) {
  std::vector<uint8_t> seed(32, 7);
  const size_t n = 200000;
  std::vector<float> a(n, 1.0f), b(n, 1.0f), c(n, 1.0f);
  ASSERT_TRUE(AddGaussianNoise(seed, 0.5, a).ok());
  ASSERT_TRUE(AddGaussianNoise(seed, 0.5, b).ok());
  EXPECT_EQ(a, b);  // same seed, same noise
  seed[0] ^= 1;
  ASSERT_TRUE(AddGaussianNoise(seed, 0.5, c).ok());
  EXPECT_NE(a, c);
  double sum = 0, sq = 0, fourth = 0;
  size_t beyond_2sd = 0;
  for (float x : a) {
    const double z = x - 1.0;
    sum += z;
    sq += z * z;
    fourth += z * z * z * z;
    beyond_2sd += std::abs(z) > 1.0 ? 1 : 0;
  }
  const double mean = sum / n, var = sq / n;
  // Standard errors at n = 200000: mean 0.0011, variance 0.0008.
  EXPECT_NEAR(mean, 0.0, 0.006);
  EXPECT_NEAR(var, 0.25, 0.004);
  EXPECT_NEAR(fourth / n / (var * var), 3.0, 0.05);  // Gaussian kurtosis
  EXPECT_NEAR(static_cast<double>(beyond_2sd) / n, 0.0455, 0.002);
  EXPECT_FALSE(AddGaussianNoise(std::vector<uint8_t>(16), 1.0, a).ok());
}

}  // namespace
}  // namespace attune::privacy
