// Noised evaluation releases (eval_stats.h EvalNoise): the spread of each
// statistic, what one patient can move, the draws' distribution in the
// clear and summed over secure words, and the settled sums.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "attune/common/eval_stats.h"

namespace attune {
namespace {

std::vector<uint8_t> Seed(uint8_t b) { return std::vector<uint8_t>(32, b); }

TEST(EvalNoise, StddevsAreTheHandComputedOnes) {
  // σ = 2, value_clip 3, three audited columns: each patient is in 3 + 3
  // cells, so G = 2 + 7 · 6 = 44 groups share the sensitivity; √44 =
  // 6.6332495807108.
  EvalNoise noise{2.0, 3.0, 1};
  const double unit = 2.0 * 6.6332495807108;
  EXPECT_EQ(CellsPerPatient(3), 6);
  EXPECT_EQ(CellsPerPatient(0), 0);
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kHist, 6, 8), unit, 1e-9);
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kBeta, 6, 8), unit, 1e-9);
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kLoss, 6, 8), 5 * unit, 1e-9);
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kEntropy, 6, 8), 3 * unit, 1e-9);  // log2 8
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kValue, 6, 8), 3 * unit, 1e-9);
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kValueSq, 6, 8), 9 * unit, 1e-9);
  EXPECT_EQ(NoiseStddev(noise, EvalStat::kCount, 6, 8), 0);
  // Four shares: each site adds a quarter of the variance.
  noise.shares = 4;
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kHist, 6, 8), unit / 2, 1e-9);
  // The whole split only: G = 2.
  noise.shares = 1;
  EXPECT_NEAR(NoiseStddev(noise, EvalStat::kHist, 0, 8), 2.0 * std::sqrt(2.0), 1e-12);
  EXPECT_EQ(NoiseStddev(EvalNoise{}, EvalStat::kHist, 6, 8), 0);  // not noised
}

// σ · √(Σ over every released statistic of ((with − without) / its
// stddev)²): the release's L2 sensitivity to one patient in the units that
// the noise multiplier σ is relative to (the noise is σ of them).
double NoiseUnits(const EvalSums& with, const EvalSums& without, const EvalNoise& noise,
                  int64_t cells_per_patient) {
  const size_t f = with.features.size();
  auto sd = [&](EvalStat s) { return NoiseStddev(noise, s, cells_per_patient, f); };
  double total = 0;
  auto add = [&](double d, EvalStat s) { total += (d / sd(s)) * (d / sd(s)); };
  for (size_t b = 0; b < with.pos_hist.size(); ++b) {
    add(static_cast<double>(with.pos_hist[b] - without.pos_hist[b]), EvalStat::kHist);
    add(static_cast<double>(with.neg_hist[b] - without.neg_hist[b]), EvalStat::kHist);
  }
  add(with.loss_sum - without.loss_sum, EvalStat::kLoss);
  for (const auto& [key, g] : with.groups) {
    GroupSums zero = with.EmptyGroup();
    const auto it = without.groups.find(key);
    const GroupSums& h = it == without.groups.end() ? zero : it->second;
    for (size_t b = 0; b < g.pos_hist.size(); ++b) {
      add(static_cast<double>(g.pos_hist[b] - h.pos_hist[b]), EvalStat::kHist);
      add(static_cast<double>(g.neg_hist[b] - h.neg_hist[b]), EvalStat::kHist);
    }
    for (size_t m = 0; m < g.beta_sum.size(); ++m) add(g.beta_sum[m] - h.beta_sum[m], EvalStat::kBeta);
    for (size_t c = 0; c < g.calib_sum.size(); ++c) add(g.calib_sum[c] - h.calib_sum[c], EvalStat::kCalib);
    for (size_t i = 0; i < f; ++i) {
      add(g.attention_sum[i] - h.attention_sum[i], EvalStat::kAttention);
      add(g.value_pos_sum[i] - h.value_pos_sum[i], EvalStat::kValue);
      add(g.value_neg_sum[i] - h.value_neg_sum[i], EvalStat::kValue);
      add(g.value_sq_sum[i] - h.value_sq_sum[i], EvalStat::kValueSq);
    }
    add(g.entropy_sum - h.entropy_sum, EvalStat::kEntropy);
  }
  return noise.multiplier * std::sqrt(total);
}

TEST(EvalNoise, OnePatientMovesTheReleaseByAtMostOneOverSigmaNoiseUnits) {
  const std::vector<std::string> columns = {"age", "sex", "site"};
  const std::vector<std::string> features = {"a", "b", "c", "d"};
  const EvalNoise noise{1.5, 2.0, 1};
  const int64_t per_patient = CellsPerPatient(3);
  auto patients = [&](EvalSums* s) {
    const double beta[3] = {0.2, 0.3, 0.5};
    const double attention[4] = {0.1, 0.2, 0.3, 0.4};
    const double value[4] = {0.5, -0.25, 1.0, 0.0};
    for (int i = 0; i < 30; ++i) {
      const std::vector<std::string> v = {i % 2 ? "y" : "o", i % 3 ? "F" : "M", "h1"};
      s->AddPatient({i % 4 == 0, 0.1 + 0.025 * i, 0.3, beta, attention, value},
                    SubgroupCells(columns, v), noise.value_clip);
    }
  };
  // The patients the worst case has: a loss far past the clip, values far
  // past value_clip, all attention and β on one entry, a score near 1, and
  // spread attention (the most entropy) with values on one feature.
  const double one_hot[3] = {1, 0, 0};
  const double spike[4] = {1, 0, 0, 0}, spread[4] = {0.25, 0.25, 0.25, 0.25};
  const double huge[4] = {-40, 30, 0, 0}, one_feature[4] = {0, 0, 0, 100};
  struct Extreme {
    std::span<const double> attention, values;
  } extremes[] = {{spike, huge}, {spread, one_feature}};
  for (const auto& x : extremes) {
    EvalSums without = EvalSums::Make("val", 20, {"a", "b", "c"}, features);
    patients(&without);
    EvalSums with = without;
    with.AddPatient({true, 0.999, 80.0, one_hot, x.attention, x.values},
                    SubgroupCells(columns, std::vector<std::string>{"o", "M", "h2"}),
                    noise.value_clip);
    const double units = NoiseUnits(with, without, noise, per_patient);
    EXPECT_LE(units, 1.0 + 1e-9);
    EXPECT_GT(units, 0.85);  // near the bound: the allotment is not loose
  }
}

// Sums of one split without cells: `count` patients in every bin of the
// 200, positives and negatives alike (consistent, so Validate passes).
EvalSums Flat(int64_t count) {
  EvalSums s = EvalSums::Make("val", 200, {"a"}, {});
  std::fill(s.pos_hist.begin(), s.pos_hist.end(), count);
  std::fill(s.neg_hist.begin(), s.neg_hist.end(), count);
  s.n = 400 * count;
  s.confusion = {100 * count, 100 * count, 100 * count, 100 * count};
  s.loss_sum = 0.5 * static_cast<double>(s.n);
  return s;
}

// Mean and variance of the bins' residuals against `count`.
std::pair<double, double> Residuals(const EvalSums& s, int64_t count) {
  std::vector<double> r;
  for (size_t b = 0; b < s.pos_hist.size(); ++b) {
    r.push_back(static_cast<double>(s.pos_hist[b] - count));
    r.push_back(static_cast<double>(s.neg_hist[b] - count));
  }
  const double mean = std::accumulate(r.begin(), r.end(), 0.0) / r.size();
  double var = 0;
  for (double x : r) var += (x - mean) * (x - mean);
  return {mean, var / (r.size() - 1)};
}

TEST(EvalNoise, InTheClearEachBinGetsTheStatedSpreadAndTheCountsFollow) {
  const EvalNoise noise{3.0, 1.0, 1};
  const double sd = 3.0 * std::sqrt(2.0);  // the whole split: G = 2
  std::vector<EvalSums> release = {Flat(1000)};
  ASSERT_TRUE(AddEvalNoise(Seed(7), noise, release).ok());
  const auto [mean, var] = Residuals(release[0], 1000);
  // 400 draws: the mean within 4 standard errors, the variance within 25 %
  // (its relative standard error is √(2/399) = 7 %).
  EXPECT_LT(std::abs(mean), 4 * sd / 20);
  EXPECT_GT(var / (sd * sd), 0.75);
  EXPECT_LT(var / (sd * sd), 1.25);
  // n and the confusion counts are the noisy histograms' (even bins: the
  // upper 100 are predicted positive), and the loss is noised too.
  const EvalSums& s = release[0];
  int64_t tp = 0, fn = 0;
  for (int b = 0; b < 200; ++b) (b >= 100 ? tp : fn) += s.pos_hist[b];
  EXPECT_EQ(s.confusion.tp, tp);
  EXPECT_EQ(s.confusion.fn, fn);
  EXPECT_EQ(s.n, s.confusion.n());
  EXPECT_NE(s.loss_sum, 200000.0);
  EXPECT_TRUE(s.Validate().ok());
  // The same seed gives the same release; another seed another.
  std::vector<EvalSums> again = {Flat(1000)}, other = {Flat(1000)};
  ASSERT_TRUE(AddEvalNoise(Seed(7), noise, again).ok());
  ASSERT_TRUE(AddEvalNoise(Seed(8), noise, other).ok());
  EXPECT_EQ(again[0].pos_hist, s.pos_hist);
  EXPECT_NE(other[0].pos_hist, s.pos_hist);
  // Two splits of one release never share draws (their difference would
  // cancel the noise).
  std::vector<EvalSums> two = {Flat(1000), Flat(1000)};
  two[1].split = "test";
  ASSERT_TRUE(AddEvalNoise(Seed(7), noise, two).ok());
  EXPECT_NE(two[0].pos_hist, two[1].pos_hist);
}

TEST(EvalNoise, SecureSharesAddUpToTheWholeNoiseWithNegativeWords) {
  // Four sites with 12 patients per bin each; each adds a quarter of the
  // variance (sd 7.07 for σ = 10, G = 2), so many shares are negative. The
  // sum has 48 per bin and the whole noise: sd 10 · √2.
  const EvalLayout layout = EvalLayout::Make({"val"}, 200, {"a"}, {}, {});
  const EvalNoise noise{10.0, 1.0, 4};
  std::vector<uint32_t> total(layout.Words(), 0);
  int negative_shares = 0;
  for (uint8_t site = 0; site < 4; ++site) {
    auto words = EncodeEvalWords({Flat(12)}, layout, 4, 1, noise, Seed(site + 1));
    ASSERT_TRUE(words.ok()) << words.status();
    for (size_t i = 0; i < total.size(); ++i) total[i] += (*words)[i];
    for (size_t i = 1; i < words->size(); i += 2) negative_shares += static_cast<int32_t>((*words)[i]) < 0;
  }
  EXPECT_GT(negative_shares, 10);
  // Decoded as a noised sum of 4 sites: settled, consistent.
  auto decoded = DecodeEvalWords(total, layout, 4);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  const double sd = 10.0 * std::sqrt(2.0);
  const auto [mean, var] = Residuals((*decoded)[0], 48);
  EXPECT_LT(std::abs(mean), 4 * sd / 20);
  EXPECT_GT(var / (sd * sd), 0.75);
  EXPECT_LT(var / (sd * sd), 1.25);
  EXPECT_NEAR((*decoded)[0].loss_sum, 0.5 * 4 * 400 * 12, 6 * 10.0 * std::sqrt(2.0) * 5);
  // Not decoded as noised, a negative share sum would be refused; the exact
  // path is unchanged: no noise, every count back exactly.
  std::vector<uint32_t> exact(layout.Words(), 0);
  for (int site = 0; site < 4; ++site) {
    auto words = EncodeEvalWords({Flat(12)}, layout, 4);
    ASSERT_TRUE(words.ok());
    for (size_t i = 0; i < exact.size(); ++i) exact[i] += (*words)[i];
  }
  auto plain = DecodeEvalWords(exact, layout);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)[0].pos_hist, std::vector<int64_t>(200, 48));
  EXPECT_EQ((*plain)[0].n, 400 * 48);
}

TEST(EvalNoise, CellsASiteHoldsBackStayHeldBackAndEverythingSettles) {
  const std::vector<std::string> columns = {"sex"};
  const double beta[1] = {1};
  EvalSums s = EvalSums::Make("val", 10, {"a"}, {});
  for (int i = 0; i < 40; ++i) {
    s.AddPatient({i % 2 == 0, 0.05 + 0.02 * i, 0.4, beta, {}, {}},
                 SubgroupCells(columns, std::vector<std::string>{i < 2 ? "X" : (i % 3 ? "F" : "M")}),
                 1.0);
  }
  // X has 2 patients: held back with k = 5, with its complement M.
  SuppressSmallCells(&s, 5);
  ASSERT_EQ(s.groups.at({"sex", "X"}).suppressed, 1);
  std::vector<EvalSums> release = {s};
  ASSERT_TRUE(AddEvalNoise(Seed(3), EvalNoise{0.5, 1.0, 1}, release).ok());
  const EvalSums& noisy = release[0];
  EXPECT_TRUE(noisy.Validate().ok());
  for (const auto& [key, g] : noisy.groups) {
    if (g.suppressed > 0) {
      EXPECT_EQ(g.n, 0) << key.second;  // not sent, so not noised
      EXPECT_EQ(std::accumulate(g.pos_hist.begin(), g.pos_hist.end(), int64_t{0}), 0);
    } else {
      for (int64_t b : g.pos_hist) EXPECT_GE(b, 0);  // clamped
      EXPECT_EQ(g.n, g.confusion.n());
    }
  }
  // A split a site held back whole is sent empty, noise or not.
  EvalSums tiny = EvalSums::Make("val", 10, {"a"}, {});
  tiny.AddPatient({true, 0.9, 0.1, beta, {}, {}}, {}, 1.0);
  SuppressSmallCells(&tiny, 5);
  std::vector<EvalSums> held = {tiny};
  ASSERT_TRUE(AddEvalNoise(Seed(3), EvalNoise{0.5, 1.0, 1}, held).ok());
  EXPECT_EQ(held[0].n, 0);
  EXPECT_EQ(held[0].suppressed, 1);
}

TEST(EvalNoise, AddPatientBoundsWhatOnePatientAdds) {
  const double beta[1] = {1};
  const double attention[2] = {0.5, 0.5};
  const double values[2] = {3, 4};  // L2 norm 5
  EvalSums s = EvalSums::Make("val", 10, {"a"}, {"f", "g"});
  s.AddPatient({true, 0.9, 12.0, beta, attention, values}, {{{"sex", "F"}}}, 2.5);
  EXPECT_DOUBLE_EQ(s.loss_sum, kNoisedLossClip);
  const GroupSums& g = s.groups.at({"sex", "F"});
  EXPECT_DOUBLE_EQ(g.value_pos_sum[0], 1.5);  // scaled by 2.5 / 5
  EXPECT_DOUBLE_EQ(g.value_pos_sum[1], 2.0);
  EXPECT_DOUBLE_EQ(g.value_sq_sum[1], 4.0);
  EXPECT_DOUBLE_EQ(g.entropy_sum, 1.0);  // log2 2: within the bound
  // Without a clip: as before.
  EvalSums e = EvalSums::Make("val", 10, {"a"}, {"f", "g"});
  e.AddPatient({true, 0.9, 12.0, beta, attention, values}, {{{"sex", "F"}}});
  EXPECT_DOUBLE_EQ(e.loss_sum, 12.0);
  EXPECT_DOUBLE_EQ(e.groups.at({"sex", "F"}).value_pos_sum[1], 4.0);
}

}  // namespace
}  // namespace attune
