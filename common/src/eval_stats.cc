#include "attune/common/eval_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/audit.h"
#include "attune/common/privacy.h"
#include "attune/common/text.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

using nlohmann::json;

bool BadConfusion(const Confusion& c) {
  return c.tp < 0 || c.fp < 0 || c.tn < 0 || c.fn < 0 || c.tp > kMaxReportCount ||
         c.fp > kMaxReportCount || c.tn > kMaxReportCount || c.fn > kMaxReportCount;
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

// Visits every statistic of `s` in the layout's order -- the split's
// totals, then each of `cells` -- as count(stat, int64_t&, cell) for counts
// and real(stat, double&, cell) for sums of reals, `cell` null for the
// totals. Encoding, decoding and the noise share it, so they cannot
// disagree on the order.
template <typename Count, typename Real>
void Walk(const std::vector<CellKey>& cells, EvalSums& s, Count&& count, Real&& real) {
  const GroupSums* totals = nullptr;
  auto confusion = [&](Confusion& c, const GroupSums* g) {
    count(EvalStat::kCount, c.tp, g);
    count(EvalStat::kCount, c.fp, g);
    count(EvalStat::kCount, c.tn, g);
    count(EvalStat::kCount, c.fn, g);
  };
  count(EvalStat::kCount, s.n, totals);
  count(EvalStat::kCount, s.suppressed, totals);
  real(EvalStat::kLoss, s.loss_sum, totals);
  for (auto& v : s.pos_hist) count(EvalStat::kHist, v, totals);
  for (auto& v : s.neg_hist) count(EvalStat::kHist, v, totals);
  confusion(s.confusion, totals);
  for (const auto& cell : cells) {
    GroupSums& g = s.groups.at(cell);
    count(EvalStat::kCount, g.n, &g);
    count(EvalStat::kCount, g.suppressed, &g);
    for (auto& b : g.beta_sum) real(EvalStat::kBeta, b, &g);
    confusion(g.confusion, &g);
    for (auto& v : g.pos_hist) count(EvalStat::kHist, v, &g);
    for (auto& v : g.neg_hist) count(EvalStat::kHist, v, &g);
    for (auto& v : g.calib_sum) real(EvalStat::kCalib, v, &g);
    for (auto& v : g.attention_sum) real(EvalStat::kAttention, v, &g);
    real(EvalStat::kEntropy, g.entropy_sum, &g);
    for (auto& v : g.value_pos_sum) real(EvalStat::kValue, v, &g);
    for (auto& v : g.value_neg_sum) real(EvalStat::kValue, v, &g);
    for (auto& v : g.value_sq_sum) real(EvalStat::kValueSq, v, &g);
  }
}

// The audited columns among `cells` (the intersections' columns are pairs
// of them).
int64_t CountColumns(const std::vector<CellKey>& cells) {
  std::set<std::string> columns;
  for (const auto& [column, value] : cells) {
    if (column.find(kCellJoin) == std::string::npos) columns.insert(column);
  }
  return static_cast<int64_t>(columns.size());
}

std::vector<CellKey> KeysOf(const EvalSums& s) {
  std::vector<CellKey> keys;
  for (const auto& [key, g] : s.groups) keys.push_back(key);
  return keys;
}

// Released values are not: n and the confusion counts (derived from the
// noisy histograms after the sum).
void ZeroDerived(EvalSums* s) {
  s->n = 0;
  s->confusion = {};
  for (auto& [key, g] : s->groups) {
    g.n = 0;
    g.confusion = {};
  }
}

// n and the confusion counts of histograms (bin b of `bins` holds scores
// in [b / bins, (b + 1) / bins): with an even number of bins the upper half
// is predicted positive).
void DeriveCounts(const std::vector<int64_t>& pos, const std::vector<int64_t>& neg, int64_t* n,
                  Confusion* c) {
  *c = {};
  const size_t upper = (pos.size() + 1) / 2;
  for (size_t b = 0; b < pos.size(); ++b) {
    (b >= upper ? c->tp : c->fn) += pos[b];
    (b >= upper ? c->fp : c->tn) += neg[b];
  }
  *n = c->n();
}

template <typename T>
void ClampAll(std::vector<T>& v) {
  for (T& x : v) x = std::max<T>(x, 0);
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

int64_t HoldBackColumns(EvalSums* s, const std::vector<std::string>& columns,
                        std::span<const CellKey> also) {
  if (columns.empty()) return 0;
  auto excluded = [&](const std::string& column) {
    auto [a, b] = SplitJoined(column);
    if (a.empty()) a = column;
    for (const auto& c : columns) {
      if (c == a || c == b) return true;
    }
    return false;
  };
  for (const CellKey& key : also) {
    if (excluded(key.first) && !s->groups.count(key)) s->groups[key] = s->EmptyGroup();
  }
  int64_t held = 0;
  for (auto& [key, g] : s->groups) {
    if (!excluded(key.first)) continue;
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

void EvalSums::AddPatient(const PatientEval& p, std::span<const CellKey> cells,
                          double value_clip) {
  const bool predicted = p.probability >= kOperatingThreshold;
  const int bin = ScoreBin(p.probability, static_cast<int>(pos_hist.size()));
  // A noised release bounds what one patient adds (EvalNoise).
  const bool clip = value_clip > 0;
  double scale = 1;
  if (clip) {
    double norm2 = 0;
    for (size_t f = 0; f < features.size() && f < p.values.size(); ++f) {
      norm2 += p.values[f] * p.values[f];
    }
    if (norm2 > value_clip * value_clip) scale = value_clip / std::sqrt(norm2);
  }
  n += 1;
  loss_sum += clip ? std::min(p.loss, kNoisedLossClip) : p.loss;
  (p.label ? pos_hist : neg_hist)[bin] += 1;
  CountConfusion(confusion, p.label, predicted);
  double entropy = 0;
  for (double a : p.attention) {
    if (a > 0) entropy -= a * std::log2(a);
  }
  if (clip) entropy = std::min(entropy, std::log2(std::max<double>(features.size(), 1)));
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
        const double x = p.values[f] * scale;
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

int64_t CellsPerPatient(int64_t columns) { return columns + columns * (columns - 1) / 2; }

double NoiseStddev(const EvalNoise& noise, EvalStat stat, int64_t cells_per_patient,
                   size_t features) {
  if (!noise.enabled()) return 0;
  double bound = 0;
  switch (stat) {
    case EvalStat::kCount: return 0;
    case EvalStat::kHist: case EvalStat::kBeta: case EvalStat::kCalib:
    case EvalStat::kAttention: bound = 1; break;
    case EvalStat::kLoss: bound = kNoisedLossClip; break;
    case EvalStat::kEntropy: bound = std::log2(std::max<double>(features, 1)); break;
    case EvalStat::kValue: bound = noise.value_clip; break;
    case EvalStat::kValueSq: bound = noise.value_clip * noise.value_clip; break;
  }
  // The totals' 2 groups (histograms, loss) and each cell's 7.
  const double groups = 2.0 + 7.0 * static_cast<double>(cells_per_patient);
  return noise.multiplier * std::sqrt(groups) * bound / std::sqrt(std::max(noise.shares, 1));
}

namespace {

// Draws one standard normal per noised statistic of `splits` (walked over
// each one's `cells`), in order, from `seed`.
StatusOr<std::vector<double>> DrawNoise(std::span<const uint8_t> seed, std::span<EvalSums> splits,
                                        const std::vector<std::vector<CellKey>>& cells) {
  size_t count = 0;
  auto counted = [&](EvalStat stat, auto&, const GroupSums*) {
    if (stat != EvalStat::kCount) ++count;
  };
  for (size_t k = 0; k < splits.size(); ++k) Walk(cells[k], splits[k], counted, counted);
  std::vector<double> z(count);
  ATTUNE_RETURN_IF_ERROR(privacy::StandardNormals(seed, z));
  return z;
}

}  // namespace

Status AddEvalNoise(std::span<const uint8_t> seed, const EvalNoise& noise,
                    std::span<EvalSums> splits) {
  if (!noise.enabled()) return absl::OkStatus();
  std::vector<std::vector<CellKey>> cells;
  for (const EvalSums& s : splits) cells.push_back(KeysOf(s));
  ATTUNE_ASSIGN_OR_RETURN(std::vector<double> z, DrawNoise(seed, splits, cells));
  size_t at = 0;
  for (size_t k = 0; k < splits.size(); ++k) {
    EvalSums& s = splits[k];
    const int64_t per_patient = CellsPerPatient(CountColumns(cells[k]));
    const bool held = s.suppressed > 0;  // held back whole: nothing of it is sent
    ZeroDerived(&s);
    auto sd = [&](EvalStat stat, const GroupSums* g) {
      const bool sent = !held && (g == nullptr || g->suppressed == 0);
      return sent ? NoiseStddev(noise, stat, per_patient, s.features.size()) : 0.0;
    };
    // Every draw is taken, used or not, so the stream stays in step.
    Walk(cells[k], s,
         [&](EvalStat stat, int64_t& c, const GroupSums* g) {
           if (stat == EvalStat::kCount) return;
           c += std::llround(sd(stat, g) * z[at++]);
         },
         [&](EvalStat stat, double& x, const GroupSums* g) { x += sd(stat, g) * z[at++]; });
    SettleNoised(&s, 1);
  }
  return absl::OkStatus();
}

void SettleNoised(EvalSums* s, int64_t sites) {
  const int64_t all = std::max<int64_t>(sites, 1);
  if (s->suppressed >= all) {
    // Held back by every site: nothing of it is published.
    std::fill(s->pos_hist.begin(), s->pos_hist.end(), 0);
    std::fill(s->neg_hist.begin(), s->neg_hist.end(), 0);
    s->loss_sum = 0;
    for (auto& [key, g] : s->groups) {
      const int64_t held = g.suppressed;
      g = s->EmptyGroup();
      g.suppressed = held;
    }
  }
  ClampAll(s->pos_hist);
  ClampAll(s->neg_hist);
  s->loss_sum = std::isfinite(s->loss_sum) ? std::max(s->loss_sum, 0.0) : 0.0;
  DeriveCounts(s->pos_hist, s->neg_hist, &s->n, &s->confusion);
  for (auto& [key, g] : s->groups) {
    if (g.suppressed >= all) {
      const int64_t held = g.suppressed;
      g = s->EmptyGroup();
      g.suppressed = held;
      continue;
    }
    ClampAll(g.pos_hist);
    ClampAll(g.neg_hist);
    ClampAll(g.beta_sum);
    ClampAll(g.calib_sum);
    ClampAll(g.attention_sum);
    ClampAll(g.value_pos_sum);
    ClampAll(g.value_neg_sum);
    ClampAll(g.value_sq_sum);
    g.entropy_sum = std::max(g.entropy_sum, 0.0);
    DeriveCounts(g.pos_hist, g.neg_hist, &g.n, &g.confusion);
  }
}

StatusOr<std::vector<uint32_t>> EncodeEvalWords(const std::vector<EvalSums>& sums,
                                                const EvalLayout& layout, int sites,
                                                int min_cell, const EvalNoise& noise,
                                                std::span<const uint8_t> seed) {
  if (sums.size() != layout.splits.size() || sites < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "secure evaluation: ", sums.size(), " splits evaluated, ", layout.splits.size(),
        " laid out"));
  }
  std::vector<EvalSums> laid;  // the site's sums in the layout's cells, as they leave
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
    if (noise.enabled()) ZeroDerived(&s);
    laid.push_back(std::move(s));
  }
  // This site's share of the noise: on every statistic (held-back cells
  // too), so that the sum of any `shares` sites carries all of it.
  std::vector<double> z;
  const int64_t per_patient = CellsPerPatient(CountColumns(layout.cells));
  if (noise.enabled()) {
    const std::vector<std::vector<CellKey>> cells(laid.size(), layout.cells);
    ATTUNE_ASSIGN_OR_RETURN(z, DrawNoise(seed, laid, cells));
  }
  size_t at = 0;
  auto draw = [&](EvalStat stat) {
    if (!noise.enabled() || stat == EvalStat::kCount) return 0.0;
    return NoiseStddev(noise, stat, per_patient, layout.features.size()) * z[at++];
  };
  std::vector<uint32_t> words;
  words.reserve(layout.Words());
  const int64_t max_high = 0x7FFFFFFF / sites;
  Status status;
  // Appends v (a statistic at `scale`) as its two words: the low 16 bits
  // and the rest, signed.
  auto put = [&](int64_t v, const char* what, double scale) {
    const int64_t high = v >> 16;  // arithmetic: floor(v / 2^16)
    if ((high > max_high || high < -max_high) && status.ok()) {
      status = absl::OutOfRangeError(absl::StrCat(
          "secure evaluation: a ", what, " of ", static_cast<double>(v) / scale,
          " is too large to add up over ", sites, " sites (at most ",
          static_cast<double>(max_high) * 65536.0 / scale, " in magnitude per site)"));
    }
    words.push_back(static_cast<uint32_t>(v & 0xFFFF));
    words.push_back(static_cast<uint32_t>(static_cast<uint64_t>(high)));
  };
  auto fixed = [](double scaled) -> int64_t {
    if (!(scaled < 9e18)) return std::numeric_limits<int64_t>::max();  // refused by put
    if (!(scaled > -9e18)) return std::numeric_limits<int64_t>::min();
    return std::llround(scaled);
  };
  for (EvalSums& s : laid) {
    Walk(layout.cells, s,
         [&](EvalStat stat, int64_t& c, const GroupSums*) {
           put(c + std::llround(draw(stat)), "count", 1);
         },
         [&](EvalStat stat, double& x, const GroupSums*) {
           // The noise at the words' resolution, added to the value's: what
           // is added does not depend on the value.
           put(fixed(x * kRealScale) + fixed(draw(stat) * kRealScale), "sum", kRealScale);
         });
  }
  ATTUNE_RETURN_IF_ERROR(status);
  return words;
}

StatusOr<std::vector<EvalSums>> DecodeEvalWords(std::span<const uint32_t> sum,
                                                const EvalLayout& layout,
                                                int64_t noised_sites) {
  if (static_cast<int64_t>(sum.size()) != layout.Words()) {
    return absl::InvalidArgumentError(absl::StrCat("secure evaluation: ", sum.size(),
                                                   " words, the layout has ", layout.Words()));
  }
  std::vector<EvalSums> out;
  size_t at = 0;
  auto next = [&] {
    // The low words' sum is exact; the high words' is a signed 32-bit sum.
    const int64_t v = int64_t{sum[at]} +
                      int64_t{static_cast<int32_t>(sum[at + 1])} * 65536;
    at += 2;
    return v;
  };
  for (const auto& split : layout.splits) {
    EvalSums s = Shaped(layout, split);
    Walk(layout.cells, s, [&](EvalStat, int64_t& c, const GroupSums*) { c = next(); },
         [&](EvalStat, double& x, const GroupSums*) {
           x = static_cast<double>(next()) / kRealScale;
         });
    if (noised_sites > 0) SettleNoised(&s, noised_sites);
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
  if (n > kMaxReportCount || suppressed > kMaxReportCount) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluation: a count past ", kMaxReportCount));
  }
  if (pos_hist.size() != neg_hist.size() || pos_hist.empty()) {
    return absl::InvalidArgumentError("evaluation: histograms must be non-empty and of equal size");
  }
  int64_t hist_total = 0;
  for (size_t i = 0; i < pos_hist.size(); ++i) {
    if (pos_hist[i] < 0 || neg_hist[i] < 0 || pos_hist[i] > kMaxReportCount ||
        neg_hist[i] > kMaxReportCount) {
      return absl::InvalidArgumentError("evaluation: a histogram count out of range");
    }
    hist_total += pos_hist[i] + neg_hist[i];
  }
  if (BadConfusion(confusion)) {
    return absl::InvalidArgumentError("evaluation: a confusion count out of range");
  }
  if (hist_total != n || confusion.n() != n) {
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
    shaped = shaped && g.n <= kMaxReportCount && g.suppressed <= kMaxReportCount;
    for (size_t i = 0; shaped && i < g.pos_hist.size(); ++i) {
      if (g.pos_hist[i] < 0 || g.neg_hist[i] < 0 || g.pos_hist[i] > kMaxReportCount ||
          g.neg_hist[i] > kMaxReportCount) {
        shaped = false;
      }
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


// ---- One site's report ---------------------------------------------------------

namespace {

// How many cells a column may have in a report.
int64_t ColumnCells(const std::string& column,
                    const std::map<std::string, std::vector<std::string>>& values) {
  auto it = values.find(column);
  const int64_t listed = it == values.end() ? 0 : static_cast<int64_t>(it->second.size()) + 1;
  return listed + kMaxUnlistedValues;
}

bool GoodValue(const std::string& v) {
  return !v.empty() && v.size() <= kMaxValueBytes && SafeText(v, v.size() + 3) == v;
}

}  // namespace

int64_t MaxReportCells(const std::vector<std::string>& columns,
                       const std::map<std::string, std::vector<std::string>>& values) {
  int64_t cells = 0;
  for (size_t a = 0; a < columns.size(); ++a) {
    cells += ColumnCells(columns[a], values);
    for (size_t b = a + 1; b < columns.size(); ++b) {
      cells += ColumnCells(columns[a], values) * ColumnCells(columns[b], values);
    }
  }
  return cells;
}

Status CheckEvalReport(const EvalSums& r, const EvalReportSpec& spec) {
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("evaluation of split '", SafeText(r.split, 32), "': ", why));
  };
  if (static_cast<int>(r.pos_hist.size()) != spec.bins) {
    return bad(absl::StrCat(r.pos_hist.size(), " score bins; the study has ", spec.bins));
  }
  if (r.calibration_bins != CalibrationBins(spec.bins)) {
    return bad(absl::StrCat(r.calibration_bins, " calibration bins; the study's ", spec.bins,
                            " score bins make ", CalibrationBins(spec.bins)));
  }
  if (r.modalities != spec.modalities) {
    return bad("its modalities are not the study's (" + absl::StrJoin(spec.modalities, ", ") +
               ")");
  }
  if (r.features != spec.features) {
    return bad(absl::StrCat(r.features.size(), " audit features, not the ",
                            spec.features.size(), " this site declared at Join"));
  }
  if (static_cast<int64_t>(r.groups.size()) > MaxReportCells(spec.columns, spec.values)) {
    return bad(absl::StrCat(r.groups.size(), " cells; at most ",
                            MaxReportCells(spec.columns, spec.values)));
  }
  std::map<std::string, std::set<std::string>> unlisted;
  auto listed = [&](const std::string& column, const std::string& value) {
    auto it = spec.values.find(column);
    return value == kOtherValue ||
           (it != spec.values.end() &&
            std::find(it->second.begin(), it->second.end(), value) != it->second.end());
  };
  auto count_value = [&](const std::string& column, const std::string& value) -> Status {
    if (!GoodValue(value)) {
      return bad(absl::StrCat("a value of column ", column, " that is not 1..", kMaxValueBytes,
                              " bytes of printable UTF-8"));
    }
    if (!listed(column, value)) {
      auto& seen = unlisted[column];
      seen.insert(value);
      if (static_cast<int64_t>(seen.size()) > kMaxUnlistedValues) {
        return bad(absl::StrCat("more than ", kMaxUnlistedValues,
                                " values the study does not list in column ", column));
      }
    }
    return absl::OkStatus();
  };
  auto column_at = [&](const std::string& c) {
    return std::find(spec.columns.begin(), spec.columns.end(), c) - spec.columns.begin();
  };
  const auto ncols = static_cast<ptrdiff_t>(spec.columns.size());
  for (const auto& [key, g] : r.groups) {
    const auto [a, b] = SplitJoined(key.first);
    if (a.empty()) {
      if (column_at(key.first) == ncols) {
        return bad(absl::StrCat("a cell of column '", SafeText(key.first, 64),
                                "', which this evaluation does not audit"));
      }
      ATTUNE_RETURN_IF_ERROR(count_value(key.first, key.second));
      continue;
    }
    const auto ia = column_at(a), ib = column_at(b);
    if (ia == ncols || ib == ncols || !(a < b)) {
      return bad(absl::StrCat("an intersection '", SafeText(key.first, 64),
                              "' that is not of two audited columns in name order"));
    }
    // The value: "va & vb" with va and vb values of their columns.
    const std::string join = kCellJoin;
    bool split_ok = false;
    for (size_t at = key.second.find(join); at != std::string::npos;
         at = key.second.find(join, at + 1)) {
      const std::string va = key.second.substr(0, at), vb = key.second.substr(at + join.size());
      if (GoodValue(va) && GoodValue(vb)) {
        ATTUNE_RETURN_IF_ERROR(count_value(a, va));
        ATTUNE_RETURN_IF_ERROR(count_value(b, vb));
        split_ok = true;
        break;
      }
    }
    if (!split_ok) {
      return bad(absl::StrCat("an intersection value of ", SafeText(key.first, 64),
                              " that is not two values joined by '", join, "'"));
    }
  }
  return absl::OkStatus();
}

}  // namespace attune
