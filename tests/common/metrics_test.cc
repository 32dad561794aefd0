#include "attune/common/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

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

}  // namespace
}  // namespace attune
