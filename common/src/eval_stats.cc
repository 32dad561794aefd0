#include "attune/common/eval_stats.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

using nlohmann::json;

bool BadConfusion(const Confusion& c) {
  return c.tp < 0 || c.fp < 0 || c.tn < 0 || c.fn < 0;
}

void AddConfusion(Confusion* into, const Confusion& c) {
  into->tp += c.tp;
  into->fp += c.fp;
  into->tn += c.tn;
  into->fn += c.fn;
}

// JSON has no NaN: undefined metrics are written as null.
json Num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

}  // namespace

Status EvalSums::Validate() const {
  if (n < 0 || !std::isfinite(loss_sum) || loss_sum < 0) {
    return absl::InvalidArgumentError("evaluation: negative count or non-finite loss");
  }
  if (pos_hist.size() != neg_hist.size() || pos_hist.empty()) {
    return absl::InvalidArgumentError("evaluation: histograms must be non-empty and of equal size");
  }
  int64_t hist_total = 0;
  for (size_t i = 0; i < pos_hist.size(); ++i) {
    if (pos_hist[i] < 0 || neg_hist[i] < 0) {
      return absl::InvalidArgumentError("evaluation: negative histogram count");
    }
    hist_total += pos_hist[i] + neg_hist[i];
  }
  if (hist_total != n || confusion.n() != n || BadConfusion(confusion)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "evaluation: counts disagree (n=", n, ", histograms ", hist_total,
        ", confusion ", confusion.n(), ")"));
  }
  for (const auto& [key, g] : groups) {
    if (g.n < 0 || BadConfusion(g.confusion) || g.confusion.n() != g.n ||
        g.beta_sum.size() != modalities.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluation: inconsistent group ", key.first, "=", key.second));
    }
    for (double b : g.beta_sum) {
      if (!std::isfinite(b) || b < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluation: bad attention sum in group ", key.first, "=", key.second));
      }
    }
  }
  return absl::OkStatus();
}

Status EvalSums::Add(const EvalSums& o) {
  ATTUNE_RETURN_IF_ERROR(o.Validate());
  if (n == 0 && pos_hist.empty()) {  // empty accumulator takes the first shape
    *this = o;
    return absl::OkStatus();
  }
  if (o.split != split || o.pos_hist.size() != pos_hist.size() ||
      o.modalities != modalities) {
    return absl::InvalidArgumentError(
        "evaluation: report does not match the others (split, bins or modalities)");
  }
  n += o.n;
  loss_sum += o.loss_sum;
  for (size_t i = 0; i < pos_hist.size(); ++i) {
    pos_hist[i] += o.pos_hist[i];
    neg_hist[i] += o.neg_hist[i];
  }
  AddConfusion(&confusion, o.confusion);
  for (const auto& [key, g] : o.groups) {
    GroupSums& mine = groups[key];
    if (mine.beta_sum.empty()) mine.beta_sum.assign(modalities.size(), 0.0);
    mine.n += g.n;
    for (size_t m = 0; m < g.beta_sum.size(); ++m) mine.beta_sum[m] += g.beta_sum[m];
    AddConfusion(&mine.confusion, g.confusion);
  }
  return absl::OkStatus();
}

double EvalSums::Loss() const {
  return n == 0 ? std::numeric_limits<double>::quiet_NaN() : loss_sum / n;
}

double EvalSums::Auc() const { return HistogramAuc(pos_hist, neg_hist); }

std::string EvalSums::MetricsJson() const {
  json j = {{"n", n},
            {"loss", Num(Loss())},
            {"auc", Num(Auc())},
            {"accuracy", Num(confusion.Accuracy())},
            {"tpr", Num(confusion.Tpr())},
            {"fpr", Num(confusion.Fpr())}};
  return j.dump();
}

std::string EvalSums::AuditJson(int min_cell) const {
  json cols = json::object();
  for (const auto& [key, g] : groups) {
    json entry;
    if (g.n < min_cell) {
      entry = {{"suppressed", true}};
    } else {
      json beta = json::object();
      for (size_t m = 0; m < modalities.size(); ++m) {
        beta[modalities[m]] = Num(g.beta_sum[m] / g.n);
      }
      entry = {{"n", g.n},
               {"mean_beta", beta},
               {"accuracy", Num(g.confusion.Accuracy())},
               {"tpr", Num(g.confusion.Tpr())},
               {"fpr", Num(g.confusion.Fpr())}};
    }
    cols[key.first][key.second] = entry;
  }
  json j = {{"split", split},
            {"n", n},
            {"min_cell", min_cell},
            {"modalities", modalities},
            {"groups", cols}};
  return j.dump(2);
}

}  // namespace attune
