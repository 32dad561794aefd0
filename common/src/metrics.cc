#include "attune/common/metrics.h"

#include <cmath>
#include <limits>

#include "attune/common/status.h"

namespace attune {
namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
double Ratio(int64_t a, int64_t b) { return b == 0 ? kNaN : static_cast<double>(a) / b; }
}  // namespace

int ScoreBin(double score, int bins) {
  ATTUNE_CHECK(bins > 0);
  if (!(score > 0)) return 0;  // also NaN
  int b = static_cast<int>(score * bins);
  return b >= bins ? bins - 1 : b;
}

double HistogramAuc(std::span<const int64_t> pos, std::span<const int64_t> neg) {
  ATTUNE_CHECK(pos.size() == neg.size());
  double p_total = 0, n_total = 0;
  for (size_t i = 0; i < pos.size(); ++i) {
    p_total += pos[i];
    n_total += neg[i];
  }
  if (p_total == 0 || n_total == 0) return kNaN;
  // For each positive bin: negatives strictly below count 1, same bin 1/2.
  double wins = 0, neg_below = 0;
  for (size_t i = 0; i < pos.size(); ++i) {
    wins += pos[i] * (neg_below + 0.5 * neg[i]);
    neg_below += neg[i];
  }
  return wins / (p_total * n_total);
}

double Confusion::Accuracy() const { return Ratio(tp + tn, n()); }
double Confusion::Tpr() const { return Ratio(tp, tp + fn); }
double Confusion::Fpr() const { return Ratio(fp, fp + tn); }

}  // namespace attune
