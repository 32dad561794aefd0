// Evaluation and audit statistics as sums, so that they add up across sites
// (and can later be securely aggregated): counts, Σ loss, score histograms,
// confusion counts, and per subgroup the count, Σ modality attention β and
// confusion counts. The coordinator turns summed EvalSums into metrics and
// the audit report; no per-patient value ever leaves a site.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "attune/common/metrics.h"
#include "attune/common/status.h"

namespace attune {

struct GroupSums {
  int64_t n = 0;
  std::vector<double> beta_sum;  // one per modality
  Confusion confusion;
};

struct EvalSums {
  std::string split;                       // "val" or "test"
  int64_t n = 0;
  double loss_sum = 0;                     // Σ binary cross-entropy
  std::vector<int64_t> pos_hist, neg_hist; // score histograms, equal bins on [0,1]
  Confusion confusion;                     // at threshold 0.5
  std::vector<std::string> modalities;     // names of GroupSums::beta_sum entries
  std::map<std::pair<std::string, std::string>, GroupSums> groups;  // (column, value)

  // Adds `other` into this. InvalidArgument if splits, histogram sizes or
  // modality lists differ, or any count is negative or any sum not finite.
  Status Add(const EvalSums& other);
  // Checks internal consistency of one site's report (same rules as Add).
  Status Validate() const;

  double Loss() const;   // mean BCE; NaN if empty
  double Auc() const;    // from the histograms

  // {"n", "loss", "auc", "accuracy", "tpr", "fpr"}
  std::string MetricsJson() const;
  // Per column and group: n, mean β per modality, accuracy, TPR, FPR;
  // groups with n < min_cell are written as {"suppressed": true}.
  std::string AuditJson(int min_cell) const;
};

// ---- Secure evaluation: the sums as words ----------------------------------
//
// Under secure aggregation each site's sums are one vector of 32-bit words,
// added mod 2^32, so every site must lay them out the same way. The layout
// fixes it: for each split, n, Σ loss, the two histograms and the confusion
// counts; then for each (column, value) cell -- the study's audit.values,
// plus (column, kOtherValue) for values a site has that are not listed --
// n, Σ β per modality and the cell's confusion counts. Every statistic is a
// non-negative fixed-point number (counts at scale 1, sums of reals at scale
// 2^16) carried in two words, its low 16 bits and the rest, so that adding
// the words of up to `sites` sites can never carry out of a word: a site
// refuses (OutOfRange) a statistic whose high word exceeds (2^32 − 1) / sites.
// Counts come out exact; a real sum within sites · 2^-17 of the true one.
inline constexpr char kOtherValue[] = "(other)";

struct EvalLayout {
  std::vector<std::string> splits;
  int bins = 0;
  std::vector<std::string> modalities;
  std::vector<std::pair<std::string, std::string>> cells;  // (column, value)

  // The cells of `values` (column -> listed values), each column followed
  // by its kOtherValue cell.
  static EvalLayout Make(std::vector<std::string> splits, int bins,
                         std::vector<std::string> modalities,
                         const std::map<std::string, std::vector<std::string>>& values);
  int64_t Words() const;
};

// One site's words: `sums` has one entry per layout split, in order. A
// group whose value is not a cell is counted in its column's kOtherValue
// cell; a column the layout does not have is left out.
StatusOr<std::vector<uint32_t>> EncodeEvalWords(const std::vector<EvalSums>& sums,
                                                const EvalLayout& layout, int sites);
// The sums of the summed words, one per split; cells with n = 0 are left
// out. InvalidArgument if the words' length does not match, or if the
// result is inconsistent (EvalSums::Validate).
StatusOr<std::vector<EvalSums>> DecodeEvalWords(std::span<const uint32_t> sum,
                                                const EvalLayout& layout);

}  // namespace attune
