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

// A site's sums of patients all in sex=F: tp true positives (score 0.75),
// fn false negatives (0.25), tn true negatives (0.25), fp false positives
// (0.75), each with β (beta0, 1 − beta0); two histogram bins.
EvalSums Site(int64_t tp, int64_t fn, int64_t tn, int64_t fp, double beta0) {
  EvalSums s = EvalSums::Make("val", 2, {"a", "b"}, {});
  const double beta[] = {beta0, 1 - beta0};
  const std::vector<CellKey> cells = {{"sex", "F"}};
  auto add = [&](int64_t k, bool label, double p) {
    for (int64_t i = 0; i < k; ++i) s.AddPatient({label, p, 0.5, beta, {}, {}}, cells);
  };
  add(tp, true, 0.75);
  add(fn, true, 0.25);
  add(tn, false, 0.25);
  add(fp, false, 0.75);
  return s;
}

TEST(EvalSums, AddsAcrossSites) {
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
  EXPECT_EQ(g.pos_hist, (std::vector<int64_t>{2, 5}));
  EXPECT_EQ(g.neg_hist, (std::vector<int64_t>{4, 3}));
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

// A random site's sums over `patients`, as a worker counts them: cells of
// sex (F, M and an unlisted X), age (y, o), a column the layout does not
// audit, and their intersections; two features.
EvalSums RandomSite(std::mt19937_64& rng, const std::string& split, int patients) {
  EvalSums s = EvalSums::Make(split, 10, {"a", "b"}, {"f1", "f2"});
  std::uniform_real_distribution<double> u(0, 1);
  const std::vector<std::string> columns = {"sex", "age", "site"};
  for (int i = 0; i < patients; ++i) {
    const bool label = u(rng) < 0.3;
    const double score = u(rng);
    const double b = u(rng), a = u(rng);
    const double beta[] = {b, 1 - b}, attention[] = {a, 1 - a}, values[] = {u(rng) - 0.5, 3 * u(rng)};
    const double r = u(rng);
    const std::vector<std::string> of = {r < 0.45 ? "F" : r < 0.9 ? "M" : "X", u(rng) < 0.5 ? "y" : "o", "h1"};
    s.AddPatient({label, score, -std::log(label ? score : 1 - score), beta, attention, values},
                 SubgroupCells(columns, of));
  }
  return s;
}

TEST(EvalWords, TheSumOfSitesWordsDecodesToTheSumOfTheirSums) {
  const EvalLayout layout = EvalLayout::Make({"val", "test"}, 10, {"a", "b"}, {"f1", "f2"},
                                             {{"sex", {"F", "M"}}, {"age", {"y", "o"}}});
  // y, o, (other); F, M, (other); and the 3 x 3 of "age & sex".
  ASSERT_EQ(layout.cells.size(), 15u);
  EXPECT_EQ(layout.cells[6], (CellKey{"age & sex", "y & F"}));
  EXPECT_EQ(layout.calibration_bins, 10);
  // Per split: n, the sites that held it back, Σ loss, 20 histogram bins
  // and 4 confusion counts; per cell: n, the sites that held it back, 2 β,
  // 4 confusion, 20 histogram bins, 10 calibration sums, 2 attention sums,
  // the entropy sum and 3 x 2 value sums; each statistic two words.
  EXPECT_EQ(layout.Words(),
            2 * 2 * (3 + 20 + 4 + 15 * (2 + 2 + 4 + 20 + 10 + 2 + 1 + 6)));
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
    // Listed values as they are; X under (other), also in an intersection;
    // the unaudited column gone.
    for (const auto& [key, g] : got.groups) {
      CellKey site_key = key;
      if (key.second == kOtherValue) site_key.second = "X";
      if (key.second.find("& (other)") != std::string::npos) {
        site_key.second = key.second.substr(0, key.second.size() - 7) + "X";
      }
      const GroupSums& w = want.groups.at(site_key);
      EXPECT_EQ(g.n, w.n) << key.first << "=" << key.second;
      EXPECT_EQ(g.confusion.tp, w.confusion.tp);
      EXPECT_EQ(g.confusion.tn, w.confusion.tn);
      EXPECT_EQ(g.pos_hist, w.pos_hist);
      EXPECT_EQ(g.neg_hist, w.neg_hist);
      for (int m = 0; m < 2; ++m) EXPECT_NEAR(g.beta_sum[m], w.beta_sum[m], real_bound);
      for (int c = 0; c < 10; ++c) EXPECT_NEAR(g.calib_sum[c], w.calib_sum[c], real_bound);
      EXPECT_NEAR(g.entropy_sum, w.entropy_sum, real_bound);
      for (int f = 0; f < 2; ++f) {
        EXPECT_NEAR(g.attention_sum[f], w.attention_sum[f], real_bound);
        EXPECT_NEAR(g.value_pos_sum[f], w.value_pos_sum[f], real_bound);
        EXPECT_NEAR(g.value_neg_sum[f], w.value_neg_sum[f], real_bound);
        EXPECT_NEAR(g.value_sq_sum[f], w.value_sq_sum[f], real_bound);
      }
    }
    // sex F, M, (other); age y, o (its (other) is empty); 2 x 3 of age & sex.
    EXPECT_EQ(got.groups.size(), 11u);
    EXPECT_FALSE(got.groups.count({"site", "h1"}));
    EXPECT_FALSE(got.groups.count({"age & site", "y & h1"}));
  }
}

TEST(EvalWords, RefusesWhatCouldOverflowOrDoesNotMatchTheLayout) {
  const EvalLayout layout = EvalLayout::Make({"val"}, 2, {"a", "b"}, {}, {{"sex", {"F"}}});
  EvalSums big = Site(1, 1, 1, 1, 0.5);
  big.loss_sum = 1.5e9;  // a real sum: its magnitude at most (2^31 - 1) / sites per site
  EXPECT_TRUE(EncodeEvalWords({big}, layout, 1).ok());
  auto over = EncodeEvalWords({big}, layout, 2);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kOutOfRange) << over.status();
  big.loss_sum = 2.2e9;  // past 2^31 - 1 even for one site
  EXPECT_EQ(EncodeEvalWords({big}, layout, 1).status().code(), absl::StatusCode::kOutOfRange);
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
