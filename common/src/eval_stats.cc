#include "attune/common/eval_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/audit.h"
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

template <typename T>
void AddAll(std::vector<T>& into, const std::vector<T>& v) {
  for (size_t i = 0; i < v.size(); ++i) into[i] += v[i];
}

void CountConfusion(Confusion& c, bool label, bool predicted) {
  if (label) (predicted ? c.tp : c.fn) += 1;
  else (predicted ? c.fp : c.tn) += 1;
}

bool AllFiniteNonNegative(const std::vector<double>& v) {
  for (double x : v) {
    if (!std::isfinite(x) || x < 0) return false;
  }
  return true;
}

// A kCellJoin-joined column's two columns ({"", ""} if it is not one).
std::pair<std::string, std::string> SplitJoined(const std::string& s) {
  const size_t at = s.find(kCellJoin);
  if (at == std::string::npos) return {};
  return {s.substr(0, at), s.substr(at + std::strlen(kCellJoin))};
}

// JSON has no NaN: undefined metrics are written as null.
json Num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// The sums of one split laid out as `layout` says, all zero.
EvalSums Shaped(const EvalLayout& layout, const std::string& split) {
  EvalSums s = EvalSums::Make(split, layout.bins, layout.modalities, layout.features,
                              layout.calibration_bins);
  for (const auto& cell : layout.cells) s.groups[cell] = s.EmptyGroup();
  return s;
}

// The layout cell that a site's cell `key` is counted in: itself, or with
// each value the layout does not list replaced by kOtherValue (an
// intersection's value is split at the kCellJoin after a listed value of
// its first column, else before a listed value of its second); nullptr
// when the layout does not audit the column.
GroupSums* CellFor(EvalSums& s, const EvalLayout& layout, const CellKey& key) {
  auto it = s.groups.find(key);
  if (it != s.groups.end()) return &it->second;
  auto listed = [&](const std::string& column, const std::string& value) {
    return value != kOtherValue && s.groups.count({column, value}) > 0;
  };
  const auto [a, b] = SplitJoined(key.first);
  std::string value;
  if (a.empty()) {
    value = kOtherValue;
  } else {
    std::string va = kOtherValue, vb = kOtherValue;
    const std::string join = kCellJoin;
    for (const auto& [cell, g] : s.groups) {
      if (cell.first == a && cell.second != kOtherValue &&
          key.second.rfind(cell.second + join, 0) == 0) {
        va = cell.second;
        vb = key.second.substr(cell.second.size() + join.size());
      }
    }
    if (va == kOtherValue) {
      for (const auto& [cell, g] : s.groups) {
        const std::string tail = join + cell.second;
        if (cell.first == b && cell.second != kOtherValue && key.second.size() > tail.size() &&
            key.second.compare(key.second.size() - tail.size(), tail.size(), tail) == 0) {
          vb = cell.second;
        }
      }
    }
    if (!listed(b, vb)) vb = kOtherValue;
    value = va + join + vb;
  }
  it = s.groups.find({key.first, value});
  return it == s.groups.end() ? nullptr : &it->second;
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
  count(s.suppressed);
  real(s.loss_sum);
  for (auto& v : s.pos_hist) count(v);
  for (auto& v : s.neg_hist) count(v);
  confusion(s.confusion);
  for (const auto& cell : layout.cells) {
    GroupSums& g = s.groups.at(cell);
    count(g.n);
    count(g.suppressed);
    for (auto& b : g.beta_sum) real(b);
    confusion(g.confusion);
    for (auto& v : g.pos_hist) count(v);
    for (auto& v : g.neg_hist) count(v);
    for (auto& v : g.calib_sum) real(v);
    for (auto& v : g.attention_sum) real(v);
    real(g.entropy_sum);
    for (auto& v : g.value_pos_sum) real(v);
    for (auto& v : g.value_neg_sum) real(v);
    for (auto& v : g.value_sq_sum) real(v);
  }
}

}  // namespace

int64_t SuppressSmallCells(EvalSums* s, int min_cell) {
  if (s->n > 0 && s->n < min_cell) {
    // The whole split: nothing of it leaves.
    EvalSums held = EvalSums::Make(s->split, static_cast<int>(s->pos_hist.size()),
                                   s->modalities, s->features, s->calibration_bins);
    held.suppressed = s->suppressed + 1;
    for (const auto& [key, g] : s->groups) held.groups[key] = held.EmptyGroup();  // the shape
    *s = std::move(held);
    return 1;
  }
  // The small cells and, as at publication (audit.h SuppressedCells), the
  // cells that keep them from being worked out from this site's totals.
  std::map<CellKey, int64_t> counts;
  for (const auto& [key, g] : s->groups) counts[key] = g.n;
  int64_t held = 0;
  for (const CellKey& key : SuppressedCells(counts, s->n, min_cell)) {
    GroupSums& g = s->groups.at(key);
    const int64_t before = g.suppressed;
    g = s->EmptyGroup();
    g.suppressed = before + 1;
    ++held;
  }
  return held;
}

void AddGroup(GroupSums* into, const GroupSums& g) {
  into->n += g.n;
  into->suppressed += g.suppressed;
  AddAll(into->beta_sum, g.beta_sum);
  AddConfusion(&into->confusion, g.confusion);
  AddAll(into->pos_hist, g.pos_hist);
  AddAll(into->neg_hist, g.neg_hist);
  AddAll(into->calib_sum, g.calib_sum);
  AddAll(into->attention_sum, g.attention_sum);
  into->entropy_sum += g.entropy_sum;
  AddAll(into->value_pos_sum, g.value_pos_sum);
  AddAll(into->value_neg_sum, g.value_neg_sum);
  AddAll(into->value_sq_sum, g.value_sq_sum);
}

std::vector<CellKey> SubgroupCells(std::span<const std::string> columns,
                                   std::span<const std::string> values) {
  std::vector<CellKey> out;
  const size_t n = std::min(columns.size(), values.size());
  for (size_t i = 0; i < n; ++i) out.emplace_back(columns[i], values[i]);
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = i + 1; j < n; ++j) {
      const bool in_order = columns[i] < columns[j];
      const size_t a = in_order ? i : j, b = in_order ? j : i;
      out.emplace_back(columns[a] + kCellJoin + columns[b], values[a] + kCellJoin + values[b]);
    }
  }
  return out;
}

int CalibrationBins(int histogram_bins) {
  for (int c = 10; c > 1; --c) {
    if (histogram_bins % c == 0) return c;
  }
  return 1;
}

EvalSums EvalSums::Make(std::string split, int bins, std::vector<std::string> modalities,
                        std::vector<std::string> features, int calibration_bins) {
  EvalSums s;
  s.split = std::move(split);
  s.pos_hist.assign(bins, 0);
  s.neg_hist.assign(bins, 0);
  s.modalities = std::move(modalities);
  s.features = std::move(features);
  s.calibration_bins = calibration_bins > 0 ? calibration_bins : CalibrationBins(bins);
  return s;
}

GroupSums EvalSums::EmptyGroup() const {
  GroupSums g;
  g.beta_sum.assign(modalities.size(), 0.0);
  g.pos_hist.assign(pos_hist.size(), 0);
  g.neg_hist.assign(pos_hist.size(), 0);
  g.calib_sum.assign(calibration_bins, 0.0);
  g.attention_sum.assign(features.size(), 0.0);
  g.value_pos_sum.assign(features.size(), 0.0);
  g.value_neg_sum.assign(features.size(), 0.0);
  g.value_sq_sum.assign(features.size(), 0.0);
  return g;
}

void EvalSums::AddPatient(const PatientEval& p, std::span<const CellKey> cells) {
  const bool predicted = p.probability >= kOperatingThreshold;
  const int bin = ScoreBin(p.probability, static_cast<int>(pos_hist.size()));
  n += 1;
  loss_sum += p.loss;
  (p.label ? pos_hist : neg_hist)[bin] += 1;
  CountConfusion(confusion, p.label, predicted);
  double entropy = 0;
  for (double a : p.attention) {
    if (a > 0) entropy -= a * std::log2(a);
  }
  const int calib = ScoreBin(p.probability, calibration_bins);
  for (const CellKey& key : cells) {
    auto [it, inserted] = groups.try_emplace(key);
    GroupSums& g = it->second;
    if (inserted) g = EmptyGroup();
    g.n += 1;
    for (size_t m = 0; m < g.beta_sum.size() && m < p.beta.size(); ++m) g.beta_sum[m] += p.beta[m];
    CountConfusion(g.confusion, p.label, predicted);
    (p.label ? g.pos_hist : g.neg_hist)[bin] += 1;
    g.calib_sum[calib] += p.probability;
    g.entropy_sum += entropy;
    for (size_t f = 0; f < features.size(); ++f) {
      if (f < p.attention.size()) g.attention_sum[f] += p.attention[f];
      if (f < p.values.size()) {
        const double x = p.values[f];
        (x >= 0 ? g.value_pos_sum : g.value_neg_sum)[f] += std::abs(x);
        g.value_sq_sum[f] += x * x;
      }
    }
  }
}

EvalLayout EvalLayout::Make(std::vector<std::string> splits, int bins,
                            std::vector<std::string> modalities, std::vector<std::string> features,
                            const std::map<std::string, std::vector<std::string>>& values,
                            int calibration_bins) {
  EvalLayout l;
  l.splits = std::move(splits);
  l.bins = bins;
  l.calibration_bins = calibration_bins > 0 ? calibration_bins : CalibrationBins(bins);
  l.modalities = std::move(modalities);
  l.features = std::move(features);
  auto with_other = [](std::vector<std::string> v) {
    v.push_back(kOtherValue);
    return v;
  };
  for (const auto& [column, listed] : values) {
    for (const auto& v : with_other(listed)) l.cells.emplace_back(column, v);
  }
  for (auto a = values.begin(); a != values.end(); ++a) {  // map order: a < b
    for (auto b = std::next(a); b != values.end(); ++b) {
      for (const auto& va : with_other(a->second)) {
        for (const auto& vb : with_other(b->second)) {
          l.cells.emplace_back(a->first + kCellJoin + b->first, va + kCellJoin + vb);
        }
      }
    }
  }
  return l;
}

int64_t EvalLayout::Words() const {
  const int64_t f = static_cast<int64_t>(features.size());
  const int64_t per_cell = 2 + static_cast<int64_t>(modalities.size()) + 4 + 2 * int64_t{bins} +
                           calibration_bins + f + 1 + 3 * f;
  const int64_t per_split = 3 + 2 * int64_t{bins} + 4 + per_cell * static_cast<int64_t>(cells.size());
  return 2 * per_split * static_cast<int64_t>(splits.size());
}

StatusOr<std::vector<uint32_t>> EncodeEvalWords(const std::vector<EvalSums>& sums,
                                                const EvalLayout& layout, int sites,
                                                int min_cell) {
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
        site.modalities != layout.modalities ||
        site.calibration_bins != layout.calibration_bins) {
      return absl::InvalidArgumentError(absl::StrCat(
          "secure evaluation: the sums of split '", site.split,
          "' do not match the layout (split '", layout.splits[k], "', ", layout.bins,
          " bins, ", layout.calibration_bins, " calibration bins, modalities ",
          absl::StrJoin(layout.modalities, ","), ")"));
    }
    if (site.features != layout.features) {
      size_t i = 0;
      while (i < site.features.size() && i < layout.features.size() &&
             site.features[i] == layout.features[i]) {
        ++i;
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "secure evaluation: this site's model has ", site.features.size(),
          " audit features and the layout ", layout.features.size(), "; they differ at #", i,
          " ('", i < site.features.size() ? site.features[i] : "", "' here, '",
          i < layout.features.size() ? layout.features[i] : "", "' in the layout)"));
    }
    // Fold the site's groups into the layout's cells.
    EvalSums s = Shaped(layout, site.split);
    s.n = site.n;
    s.loss_sum = site.loss_sum;
    s.pos_hist = site.pos_hist;
    s.neg_hist = site.neg_hist;
    s.confusion = site.confusion;
    s.suppressed = site.suppressed;
    for (const auto& [key, g] : site.groups) {
      if (GroupSums* cell = CellFor(s, layout, key)) AddGroup(cell, g);  // else: not audited
    }
    // The cells as they leave the site: small ones held back.
    SuppressSmallCells(&s, min_cell);
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
    std::erase_if(s.groups,
                  [](const auto& kv) { return kv.second.n == 0 && kv.second.suppressed == 0; });
    ATTUNE_RETURN_IF_ERROR(s.Validate());
    out.push_back(std::move(s));
  }
  return out;
}

Status EvalSums::Validate() const {
  if (n < 0 || suppressed < 0 || !std::isfinite(loss_sum) || loss_sum < 0) {
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
  if (calibration_bins < 1 || pos_hist.size() % calibration_bins != 0) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation: ", calibration_bins,
                                                   " calibration bins do not divide ",
                                                   pos_hist.size(), " histogram bins"));
  }
  const size_t f = features.size();
  for (const auto& [key, g] : groups) {
    int64_t group_hist = 0;
    bool shaped = g.pos_hist.size() == pos_hist.size() && g.neg_hist.size() == pos_hist.size() &&
                  g.beta_sum.size() == modalities.size() &&
                  g.calib_sum.size() == static_cast<size_t>(calibration_bins) &&
                  g.attention_sum.size() == f && g.value_pos_sum.size() == f &&
                  g.value_neg_sum.size() == f && g.value_sq_sum.size() == f;
    for (size_t i = 0; shaped && i < g.pos_hist.size(); ++i) {
      if (g.pos_hist[i] < 0 || g.neg_hist[i] < 0) shaped = false;
      group_hist += g.pos_hist[i] + g.neg_hist[i];
    }
    if (!shaped || g.n < 0 || g.suppressed < 0 || BadConfusion(g.confusion) ||
        g.confusion.n() != g.n ||
        group_hist != g.n) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluation: inconsistent group ", key.first, "=", key.second));
    }
    if (!AllFiniteNonNegative(g.beta_sum) || !AllFiniteNonNegative(g.calib_sum) ||
        !AllFiniteNonNegative(g.attention_sum) || !AllFiniteNonNegative(g.value_pos_sum) ||
        !AllFiniteNonNegative(g.value_neg_sum) || !AllFiniteNonNegative(g.value_sq_sum) ||
        !std::isfinite(g.entropy_sum) || g.entropy_sum < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluation: a negative or non-finite sum in group ", key.first, "=",
                       key.second));
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
      o.modalities != modalities || o.features != features ||
      o.calibration_bins != calibration_bins) {
    return absl::InvalidArgumentError(
        "evaluation: report does not match the others (split, bins, modalities or features)");
  }
  n += o.n;
  suppressed += o.suppressed;
  loss_sum += o.loss_sum;
  for (size_t i = 0; i < pos_hist.size(); ++i) {
    pos_hist[i] += o.pos_hist[i];
    neg_hist[i] += o.neg_hist[i];
  }
  AddConfusion(&confusion, o.confusion);
  for (const auto& [key, g] : o.groups) {
    auto [it, inserted] = groups.try_emplace(key);
    if (inserted) it->second = EmptyGroup();
    AddGroup(&it->second, g);
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

}  // namespace attune
