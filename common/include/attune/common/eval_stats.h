// Evaluation and audit statistics as sums, so that they add up across sites
// (and can later be securely aggregated): counts, Σ loss, score histograms,
// confusion counts, and per subgroup the count, Σ modality attention β and
// confusion counts. The coordinator turns summed EvalSums into metrics and
// the audit report; no per-patient value ever leaves a site.
#pragma once

#include <cstdint>
#include <map>
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

}  // namespace attune
