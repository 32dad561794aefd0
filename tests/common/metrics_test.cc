#include "attune/common/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "attune/common/eval_stats.h"

namespace attune {
namespace {

TEST(HistogramAuc, HandComputed) {
  // Scores: positives in bins 2, 3; negatives in bins 0, 2.
  // Pairs (pos, neg): (2,0)=1, (2,2)=0.5, (3,0)=1, (3,2)=1 -> 3.5 / 4.
  std::vector<int64_t> pos = {0, 0, 1, 1}, neg = {1, 0, 1, 0};
  EXPECT_DOUBLE_EQ(HistogramAuc(pos, neg), 0.875);
  // Perfect separation and perfect inversion.
  EXPECT_DOUBLE_EQ(HistogramAuc(std::vector<int64_t>{0, 3}, std::vector<int64_t>{2, 0}), 1.0);
  EXPECT_DOUBLE_EQ(HistogramAuc(std::vector<int64_t>{3, 0}, std::vector<int64_t>{0, 2}), 0.0);
  EXPECT_TRUE(std::isnan(HistogramAuc(std::vector<int64_t>{0, 0}, std::vector<int64_t>{1, 0})));
}

TEST(ScoreBin, Edges) {
  EXPECT_EQ(ScoreBin(0.0, 10), 0);
  EXPECT_EQ(ScoreBin(0.0999, 10), 0);
  EXPECT_EQ(ScoreBin(0.1, 10), 1);
  EXPECT_EQ(ScoreBin(1.0, 10), 9);
  EXPECT_EQ(ScoreBin(std::nan(""), 10), 0);
}

TEST(Confusion, Rates) {
  Confusion c{3, 1, 4, 2};  // tp fp tn fn
  EXPECT_DOUBLE_EQ(c.Accuracy(), 0.7);
  EXPECT_DOUBLE_EQ(c.Tpr(), 0.6);
  EXPECT_DOUBLE_EQ(c.Fpr(), 0.2);
}

EvalSums Site(int64_t tp, int64_t fn, int64_t tn, int64_t fp, double beta0) {
  EvalSums s;
  s.split = "val";
  s.modalities = {"a", "b"};
  s.pos_hist = {fn, tp};  // two bins: below / above 0.5
  s.neg_hist = {tn, fp};
  s.confusion = {tp, fp, tn, fn};
  s.n = tp + fn + tn + fp;
  s.loss_sum = 0.5 * s.n;
  GroupSums g;
  g.n = s.n;
  g.beta_sum = {beta0 * s.n, (1 - beta0) * s.n};
  g.confusion = s.confusion;
  s.groups[{"sex", "F"}] = g;
  return s;
}

TEST(EvalSums, AddsAcrossSitesAndSuppressesSmallCells) {
  EvalSums total;
  ASSERT_TRUE(total.Add(Site(4, 1, 3, 2, 0.25)).ok());   // n = 10
  ASSERT_TRUE(total.Add(Site(1, 1, 1, 1, 0.75)).ok());   // n = 4
  EXPECT_EQ(total.n, 14);
  EXPECT_EQ(total.confusion.tp, 5);
  EXPECT_DOUBLE_EQ(total.Loss(), 0.5);
  const auto& g = total.groups.at({"sex", "F"});
  EXPECT_EQ(g.n, 14);
  // Mean β of modality a: (0.25*10 + 0.75*4) / 14.
  EXPECT_NEAR(g.beta_sum[0] / g.n, 5.5 / 14, 1e-12);
  EXPECT_NE(total.AuditJson(10).find("\"n\": 14"), std::string::npos);
  EXPECT_NE(total.AuditJson(15).find("\"suppressed\": true"), std::string::npos);
}

TEST(EvalSums, RefusesInconsistentReports) {
  EvalSums bad = Site(4, 1, 3, 2, 0.25);
  bad.n = 99;
  EvalSums total;
  EXPECT_EQ(total.Add(bad).code(), absl::StatusCode::kInvalidArgument);
  EvalSums other_bins = Site(1, 1, 1, 1, 0.5);
  other_bins.pos_hist.push_back(0);
  other_bins.neg_hist.push_back(0);
  ASSERT_TRUE(total.Add(Site(1, 1, 1, 1, 0.5)).ok());
  EXPECT_EQ(total.Add(other_bins).code(), absl::StatusCode::kInvalidArgument);
  EvalSums neg = Site(1, 1, 1, 1, 0.5);
  neg.groups.begin()->second.beta_sum[0] = -1;
  EXPECT_EQ(total.Add(neg).code(), absl::StatusCode::kInvalidArgument);
}

// ---- Secure evaluation words ----

// A random site's sums over `patients`, as a worker would count them:
// groups of sex (F, M and an unlisted X), age (y, o) and a column the
// layout does not audit.
EvalSums RandomSite(std::mt19937_64& rng, const std::string& split, int patients) {
  const int bins = 10;
  EvalSums s;
  s.split = split;
  s.modalities = {"a", "b"};
  s.pos_hist.assign(bins, 0);
  s.neg_hist.assign(bins, 0);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < patients; ++i) {
    const bool label = u(rng) < 0.3;
    const double score = u(rng);
    const bool pred = score >= 0.5;
    const double beta = u(rng);
    s.n += 1;
    s.loss_sum += -std::log(label ? score : 1 - score);
    (label ? s.pos_hist : s.neg_hist)[ScoreBin(score, bins)] += 1;
    auto count = [&](Confusion& c) {
      if (label) (pred ? c.tp : c.fn) += 1;
      else (pred ? c.fp : c.tn) += 1;
    };
    count(s.confusion);
    const double r = u(rng);
    for (const auto& key : {std::pair<std::string, std::string>{"sex", r < 0.45 ? "F" : r < 0.9 ? "M" : "X"},
                            {"age", u(rng) < 0.5 ? "y" : "o"},
                            {"site", "h1"}}) {
      GroupSums& g = s.groups[key];
      if (g.beta_sum.empty()) g.beta_sum.assign(2, 0.0);
      g.n += 1;
      g.beta_sum[0] += beta;
      g.beta_sum[1] += 1 - beta;
      count(g.confusion);
    }
  }
  return s;
}

TEST(EvalWords, TheSumOfSitesWordsDecodesToTheSumOfTheirSums) {
  const EvalLayout layout = EvalLayout::Make({"val", "test"}, 10, {"a", "b"},
                                             {{"sex", {"F", "M"}}, {"age", {"y", "o"}}});
  ASSERT_EQ(layout.cells.size(), 6u);  // F, M, (other); y, o, (other)
  EXPECT_EQ(layout.Words(), 2 * 2 * (2 + 20 + 4 + 6 * (1 + 2 + 4)));
  const int sites = 5;
  std::mt19937_64 rng(11);
  std::vector<uint32_t> sum(layout.Words(), 0);
  std::map<std::string, EvalSums> plain;  // the oracle: sums added in the clear
  for (int k = 0; k < sites; ++k) {
    std::vector<EvalSums> site = {RandomSite(rng, "val", 40 + 13 * k),
                                  RandomSite(rng, "test", 25 + 7 * k)};
    auto words = EncodeEvalWords(site, layout, sites);
    ASSERT_TRUE(words.ok()) << words.status();
    ASSERT_EQ(static_cast<int64_t>(words->size()), layout.Words());
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += (*words)[i];  // mod 2^32
    for (auto& s : site) ASSERT_TRUE(plain[s.split].Add(s).ok());
  }
  auto decoded = DecodeEvalWords(sum, layout);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_EQ(decoded->size(), 2u);
  const double real_bound = sites * 0.5 / 65536;
  for (const EvalSums& got : *decoded) {
    const EvalSums& want = plain.at(got.split);
    EXPECT_EQ(got.n, want.n);
    EXPECT_NEAR(got.loss_sum, want.loss_sum, real_bound);
    EXPECT_EQ(got.pos_hist, want.pos_hist);
    EXPECT_EQ(got.neg_hist, want.neg_hist);
    EXPECT_EQ(got.confusion.tp, want.confusion.tp);
    EXPECT_EQ(got.confusion.fn, want.confusion.fn);
    EXPECT_EQ(got.Auc(), want.Auc());
    // Listed values as they are; X under (other); the unaudited column gone.
    for (const auto& [key, g] : got.groups) {
      const auto& w = want.groups.at(key.second == kOtherValue ? std::pair<std::string, std::string>{key.first, "X"} : key);
      EXPECT_EQ(g.n, w.n) << key.first << "=" << key.second;
      EXPECT_EQ(g.confusion.tp, w.confusion.tp);
      EXPECT_EQ(g.confusion.tn, w.confusion.tn);
      for (int m = 0; m < 2; ++m) EXPECT_NEAR(g.beta_sum[m], w.beta_sum[m], real_bound);
    }
    EXPECT_EQ(got.groups.size(), 5u);  // sex F, M, (other); age y, o (its (other) is empty)
    EXPECT_FALSE(got.groups.count({"site", "h1"}));
  }
}

TEST(EvalWords, RefusesWhatCouldOverflowOrDoesNotMatchTheLayout) {
  const EvalLayout layout = EvalLayout::Make({"val"}, 2, {"a", "b"}, {{"sex", {"F"}}});
  EvalSums big = Site(1, 1, 1, 1, 0.5);
  big.loss_sum = 3e9;  // a real sum: at most (2^32 - 1) / sites per site
  EXPECT_TRUE(EncodeEvalWords({big}, layout, 1).ok());
  auto over = EncodeEvalWords({big}, layout, 2);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kOutOfRange) << over.status();
  EvalSums other_modalities = Site(1, 1, 1, 1, 0.5);
  other_modalities.modalities = {"a", "c"};
  EXPECT_EQ(EncodeEvalWords({other_modalities}, layout, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeEvalWords({Site(1, 1, 1, 1, 0.5), Site(1, 1, 1, 1, 0.5)}, layout, 2)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);  // two splits, one laid out
  std::vector<uint32_t> short_sum(layout.Words() - 2, 0);
  EXPECT_EQ(DecodeEvalWords(short_sum, layout).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune
