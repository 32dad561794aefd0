#include "attune/common/eval_stats.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

void AddGroup(GroupSums* into, const GroupSums& g) {
  into->n += g.n;
  for (size_t m = 0; m < g.beta_sum.size(); ++m) into->beta_sum[m] += g.beta_sum[m];
  AddConfusion(&into->confusion, g.confusion);
}

// JSON has no NaN: undefined metrics are written as null.
json Num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// The sums of one split laid out as `layout` says, all zero.
EvalSums Shaped(const EvalLayout& layout, const std::string& split) {
  EvalSums s;
  s.split = split;
  s.pos_hist.assign(layout.bins, 0);
  s.neg_hist.assign(layout.bins, 0);
  s.modalities = layout.modalities;
  for (const auto& cell : layout.cells) {
    s.groups[cell].beta_sum.assign(layout.modalities.size(), 0.0);
  }
  return s;
}

constexpr double kRealScale = 65536.0;

// Visits every statistic of `s` in the layout's order: count(int64_t&) for
// counts, real(double&) for sums of reals. Encoding and decoding share it,
// so they cannot disagree on the order.
template <typename Count, typename Real>
void Walk(const EvalLayout& layout, EvalSums& s, Count&& count, Real&& real) {
  auto confusion = [&](Confusion& c) {
    count(c.tp);
    count(c.fp);
    count(c.tn);
    count(c.fn);
  };
  count(s.n);
  real(s.loss_sum);
  for (auto& v : s.pos_hist) count(v);
  for (auto& v : s.neg_hist) count(v);
  confusion(s.confusion);
  for (const auto& cell : layout.cells) {
    GroupSums& g = s.groups.at(cell);
    count(g.n);
    for (auto& b : g.beta_sum) real(b);
    confusion(g.confusion);
  }
}

}  // namespace

EvalLayout EvalLayout::Make(std::vector<std::string> splits, int bins,
                            std::vector<std::string> modalities,
                            const std::map<std::string, std::vector<std::string>>& values) {
  EvalLayout l;
  l.splits = std::move(splits);
  l.bins = bins;
  l.modalities = std::move(modalities);
  for (const auto& [column, listed] : values) {
    for (const auto& v : listed) l.cells.emplace_back(column, v);
    l.cells.emplace_back(column, kOtherValue);
  }
  return l;
}

int64_t EvalLayout::Words() const {
  const int64_t per_cell = 1 + static_cast<int64_t>(modalities.size()) + 4;
  const int64_t per_split = 2 + 2 * int64_t{bins} + 4 + per_cell * static_cast<int64_t>(cells.size());
  return 2 * per_split * static_cast<int64_t>(splits.size());
}

StatusOr<std::vector<uint32_t>> EncodeEvalWords(const std::vector<EvalSums>& sums,
                                                const EvalLayout& layout, int sites) {
  if (sums.size() != layout.splits.size() || sites < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "secure evaluation: ", sums.size(), " splits evaluated, ", layout.splits.size(),
        " laid out"));
  }
  std::vector<uint32_t> words;
  words.reserve(layout.Words());
  const uint64_t max_high = 0xFFFFFFFFull / static_cast<uint64_t>(sites);
  Status status;
  // Appends v (a statistic at `scale`) as its two words.
  auto put = [&](uint64_t v, const char* what, double scale) {
    if ((v >> 16) > max_high && status.ok()) {
      status = absl::OutOfRangeError(absl::StrCat(
          "secure evaluation: a ", what, " of ", static_cast<double>(v) / scale,
          " is too large to add up over ", sites, " sites (at most ",
          static_cast<double>((max_high << 16) | 0xFFFF) / scale, " per site)"));
    }
    words.push_back(static_cast<uint32_t>(v & 0xFFFF));
    words.push_back(static_cast<uint32_t>(v >> 16));
  };
  for (size_t k = 0; k < sums.size(); ++k) {
    const EvalSums& site = sums[k];
    ATTUNE_RETURN_IF_ERROR(site.Validate());
    if (site.split != layout.splits[k] || static_cast<int>(site.pos_hist.size()) != layout.bins ||
        site.modalities != layout.modalities) {
      return absl::InvalidArgumentError(absl::StrCat(
          "secure evaluation: the sums of split '", site.split,
          "' do not match the layout (split '", layout.splits[k], "', ", layout.bins,
          " bins, modalities ", absl::StrJoin(layout.modalities, ","), ")"));
    }
    // Fold the site's groups into the layout's cells.
    EvalSums s = Shaped(layout, site.split);
    s.n = site.n;
    s.loss_sum = site.loss_sum;
    s.pos_hist = site.pos_hist;
    s.neg_hist = site.neg_hist;
    s.confusion = site.confusion;
    for (const auto& [key, g] : site.groups) {
      auto it = s.groups.find(key);
      if (it == s.groups.end()) it = s.groups.find({key.first, kOtherValue});
      if (it != s.groups.end()) AddGroup(&it->second, g);  // else: not an audited column
    }
    Walk(layout, s, [&](int64_t& c) { put(static_cast<uint64_t>(c), "count", 1); },
         [&](double& x) {
           const double scaled = x * kRealScale;  // finite and >= 0 (Validate)
           put(scaled >= 9e18 ? ~uint64_t{0} : static_cast<uint64_t>(std::llround(scaled)), "sum",
               kRealScale);
         });
  }
  ATTUNE_RETURN_IF_ERROR(status);
  return words;
}

StatusOr<std::vector<EvalSums>> DecodeEvalWords(std::span<const uint32_t> sum,
                                                const EvalLayout& layout) {
  if (static_cast<int64_t>(sum.size()) != layout.Words()) {
    return absl::InvalidArgumentError(absl::StrCat("secure evaluation: ", sum.size(),
                                                   " words, the layout has ", layout.Words()));
  }
  std::vector<EvalSums> out;
  size_t at = 0;
  auto next = [&] {
    const uint64_t v = uint64_t{sum[at]} + (uint64_t{sum[at + 1]} << 16);
    at += 2;
    return v;
  };
  for (const auto& split : layout.splits) {
    EvalSums s = Shaped(layout, split);
    Walk(layout, s, [&](int64_t& c) { c = static_cast<int64_t>(next()); },
         [&](double& x) { x = static_cast<double>(next()) / kRealScale; });
    std::erase_if(s.groups, [](const auto& kv) { return kv.second.n == 0; });
    ATTUNE_RETURN_IF_ERROR(s.Validate());
    out.push_back(std::move(s));
  }
  return out;
}

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
    AddGroup(&mine, g);
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
