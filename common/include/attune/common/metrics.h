// Evaluation metrics computed from sums, so that sites report only
// aggregatable statistics (histograms and counts), never per-patient scores.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace attune {

// Bin of a score in [0, 1] among `bins` equal-width bins (1.0 -> last bin).
int ScoreBin(double score, int bins);

// ROC AUC from per-bin counts of positive and negative scores. Pairs in the
// same bin count one half (exact when no two scores share a bin). Returns
// NaN when either class is empty.
double HistogramAuc(std::span<const int64_t> pos, std::span<const int64_t> neg);

struct Confusion {
  int64_t tp = 0, fp = 0, tn = 0, fn = 0;
  int64_t n() const { return tp + fp + tn + fn; }
  double Accuracy() const;  // NaN if empty
  double Tpr() const;       // NaN without positives
  double Fpr() const;       // NaN without negatives
};

}  // namespace attune
