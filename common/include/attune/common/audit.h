// The subgroup bias audit: from one split's summed EvalSums (every site's
// sums added, in the clear or securely), per subgroup cell the metrics a
// reader needs -- prevalence, AUC, accuracy, TPR, FPR, ECE, mean β per
// modality, the attention distribution over input features and its top-k
// -- and between the cells of each column the gaps (AUC gap,
// demographic-parity and equalized-odds differences) and each cell's
// Jensen–Shannon divergence of attention from the rest of its column. Cells
// of fewer than min_cell patients are suppressed, and then enough others
// that no suppressed cell can be recovered by subtraction from the
// published ones and the totals (SuppressedCells).
//
// A shortcut flag names a feature whose attention share differs strongly
// between a cell and the rest of its column (its term in their JSD is at
// least flag_jsd bits) and whose input value itself tells the cell from
// the rest (the value's standardised mean difference d gives, for two
// normal classes of equal variance, a membership AUC Φ(|d|/√2); at the
// lower end of d's 95 % confidence interval it must still be at least
// flag_membership_auc, so that a small cell's noisy means flag nothing):
// the model may be using it as a proxy for the group.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "attune/common/eval_stats.h"
#include "attune/common/status.h"

namespace attune {

inline constexpr char kAuditSchema[] = "attune.audit/3";

struct AuditOptions {
  int min_cell = 10;                  // k: smaller cells are suppressed
  int top_k = 5;                      // features listed per cell
  double flag_jsd = 0.004;            // bits: a feature's term in JSD(cell, rest)
  double flag_membership_auc = 0.75;  // the feature's value tells the cell from the rest
                                      // (the lower end of its 95 % interval)
  // Features that define a column's groups (age for age bands): attending
  // to them differently by group is expected, so they are never flagged for
  // that column or an intersection with it.
  std::map<std::string, std::vector<std::string>> defining_features;
  // Cells earlier releases of the same patients (split and sites) published:
  // the disclosure check counts them as known (SuppressedCells).
  std::set<CellKey> published_before;
  // > 0: the sums carry Gaussian noise (eval_stats.h EvalNoise); the
  // document says so, with the multiplier and the clip.
  double noise_multiplier = 0;
  double value_clip = 0;

  Status Validate() const;
};

// The cells to suppress among `counts` (every marginal cell (column, value)
// and intersection cell of EvalSums::groups, with its patient count; a cell
// not listed has none) when the split has `total` patients: every cell with
// 0 < n < min_cell (all of them when total < min_cell), and then, for each
// published total -- the split's, for a column's cells, and a marginal
// cell's, for its row or column of an intersection table -- more cells,
// smallest first, until the suppressed cells under it are none, or at
// least two of at least min_cell patients together; and until no
// suppressed count is determined by the published counts through those
// sums (checked by linear algebra over all of them at once), nor confined
// to an interval narrower than [1, min_cell] (the protection-interval test:
// linear programs over the published counts, the sums and non-negativity).
// `published_before`: cells an earlier release of the same patients
// published, whose counts are known whatever this one hides.
std::set<CellKey> SuppressedCells(const std::map<CellKey, int64_t>& counts, int64_t total,
                                  int min_cell,
                                  const std::set<CellKey>& published_before = {});

// The audit document (kAuditSchema) of `sums`, as JSON text.
// InvalidArgument if the sums are inconsistent.
StatusOr<std::string> AuditJson(const EvalSums& sums, const AuditOptions& options);

}  // namespace attune
