#include "attune/common/audit.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "variable_ranges.h"

namespace attune {
namespace {

using nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

json Num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

bool IsIntersection(const std::string& column) {
  return column.find(kCellJoin) != std::string::npos;
}

// ---- Suppression -------------------------------------------------------------

// The published sums among the cells: index 0 is the split's total.
struct Tables {
  std::vector<CellKey> cells;  // [0] = the total
  std::vector<int64_t> n;
  struct Sum {
    int parent;
    std::vector<int> children;
  };
  std::vector<Sum> sums;
};

Tables MakeTables(const std::map<CellKey, int64_t>& counts, int64_t total) {
  Tables t;
  t.cells.push_back({"", ""});
  t.n.push_back(total);
  std::map<CellKey, int> index;
  std::map<std::string, std::vector<int>> marginal;  // column -> its cells
  for (const auto& [key, n] : counts) {
    if (n <= 0) continue;  // an empty cell is a known zero
    index[key] = static_cast<int>(t.cells.size());
    t.cells.push_back(key);
    t.n.push_back(n);
    if (!IsIntersection(key.first)) marginal[key.first].push_back(index[key]);
  }
  for (const auto& [column, cells] : marginal) t.sums.push_back({0, cells});
  // Intersection tables: a row per value of a, a column per value of b.
  std::map<std::pair<int, std::string>, std::vector<int>> rows;  // (marginal cell, table)
  for (const auto& [key, i] : index) {
    const size_t at = key.first.find(kCellJoin);
    if (at == std::string::npos) continue;
    const std::string a = key.first.substr(0, at);
    const std::string b = key.first.substr(at + std::strlen(kCellJoin));
    const std::string join = kCellJoin;
    for (int ia : marginal[a]) {
      const std::string& va = t.cells[ia].second;
      if (key.second.rfind(va + join, 0) != 0) continue;
      const std::string vb = key.second.substr(va.size() + join.size());
      auto ib = index.find({b, vb});
      if (ib == index.end()) continue;
      rows[{ia, key.first}].push_back(i);
      rows[{ib->second, key.first}].push_back(i);
      break;
    }
  }
  for (auto& [parent, children] : rows) t.sums.push_back({parent.first, std::move(children)});
  return t;
}

// Whether the count of suppressed cell `s` follows from the published ones:
// whether e_s lies in the row space of the sums restricted to the
// suppressed cells (each sum: Σ suppressed children − suppressed parent =
// a published number).
std::vector<int> Determined(const Tables& t, const std::vector<bool>& hidden) {
  std::vector<int> unknown, column(t.cells.size(), -1);
  for (size_t i = 0; i < t.cells.size(); ++i) {
    if (hidden[i]) {
      column[i] = static_cast<int>(unknown.size());
      unknown.push_back(static_cast<int>(i));
    }
  }
  const size_t m = unknown.size();
  std::vector<std::vector<double>> rows;
  for (const auto& s : t.sums) {
    std::vector<double> r(m, 0.0);
    bool any = false;
    for (int c : s.children) {
      if (hidden[c]) r[column[c]] += 1, any = true;
    }
    if (hidden[s.parent]) r[column[s.parent]] -= 1, any = true;
    if (any) rows.push_back(std::move(r));
  }
  // Reduced row echelon form.
  std::vector<int> pivot_of_row;
  size_t rank = 0;
  for (size_t c = 0; c < m && rank < rows.size(); ++c) {
    size_t best = rank;
    for (size_t r = rank; r < rows.size(); ++r) {
      if (std::abs(rows[r][c]) > std::abs(rows[best][c])) best = r;
    }
    if (std::abs(rows[best][c]) < 1e-9) continue;
    std::swap(rows[rank], rows[best]);
    const double p = rows[rank][c];
    for (double& v : rows[rank]) v /= p;
    for (size_t r = 0; r < rows.size(); ++r) {
      if (r == rank || std::abs(rows[r][c]) < 1e-12) continue;
      const double f = rows[r][c];
      for (size_t k = 0; k < m; ++k) rows[r][k] -= f * rows[rank][k];
    }
    pivot_of_row.push_back(static_cast<int>(c));
    ++rank;
  }
  std::vector<int> out;
  for (size_t u = 0; u < m; ++u) {
    std::vector<double> v(m, 0.0);
    v[u] = 1;
    for (size_t r = 0; r < rank; ++r) {
      const double f = v[pivot_of_row[r]];
      if (std::abs(f) < 1e-12) continue;
      for (size_t k = 0; k < m; ++k) v[k] -= f * rows[r][k];
    }
    if (std::all_of(v.begin(), v.end(), [](double x) { return std::abs(x) < 1e-9; })) {
      out.push_back(unknown[u]);
    }
  }
  return out;
}

// The protection-interval test of statistical disclosure control: for
// every cell of 0 < n < min_cell that is hidden, the interval its count can
// take given everything published -- the published counts (and `known`
// ones: what earlier releases published), the sums of the tables and
// non-negativity -- by linear programming. Returns the hidden small cells
// whose interval is narrower than [1, min_cell] (width min_cell − 1).
std::vector<int> Exposed(const Tables& t, const std::vector<bool>& hidden,
                         const std::vector<bool>& known, int min_cell) {
  std::vector<int> unknown, column(t.cells.size(), -1);
  for (size_t i = 0; i < t.cells.size(); ++i) {
    if (hidden[i] && !known[i]) {
      column[i] = static_cast<int>(unknown.size());
      unknown.push_back(static_cast<int>(i));
    }
  }
  std::vector<std::vector<double>> a;
  std::vector<double> b;
  for (const auto& s : t.sums) {
    std::vector<double> row(unknown.size(), 0.0);
    double rhs = 0;  // Σ children − parent = 0, the known part moved right
    bool any = false;
    for (int c : s.children) {
      if (column[c] >= 0) {
        row[column[c]] += 1, any = true;
      } else {
        rhs -= static_cast<double>(t.n[c]);
      }
    }
    if (column[s.parent] >= 0) {
      row[column[s.parent]] -= 1, any = true;
    } else {
      rhs += static_cast<double>(t.n[s.parent]);
    }
    if (any) a.push_back(std::move(row)), b.push_back(rhs);
  }
  std::vector<int> out;
  if (unknown.empty()) return out;
  StatusOr<std::vector<std::pair<double, double>>> ranges = VariableRanges(a, b);
  if (!ranges.ok()) return unknown;  // cannot happen (the true counts solve it): hide more
  for (size_t u = 0; u < unknown.size(); ++u) {
    const int c = unknown[u];
    if (t.n[c] >= min_cell) continue;  // a complement: not itself protected
    const auto [lo, hi] = (*ranges)[u];
    if (hi - lo < min_cell - 1 - 1e-6) out.push_back(c);
  }
  return out;
}

// The hidden cells not yet protected: those the published counts determine
// exactly (linear algebra, fast), else those with too narrow an interval.
std::vector<int> Unprotected(const Tables& t, const std::vector<bool>& hidden,
                             const std::vector<bool>& known, int min_cell) {
  std::vector<bool> unknown = hidden;
  for (size_t i = 0; i < unknown.size(); ++i) unknown[i] = hidden[i] && !known[i];
  std::vector<int> out = Determined(t, unknown);
  if (out.empty()) out = Exposed(t, hidden, known, min_cell);
  return out;
}

}  // namespace

std::set<CellKey> SuppressedCells(const std::map<CellKey, int64_t>& counts, int64_t total,
                                  int min_cell, const std::set<CellKey>& published_before) {
  const Tables t = MakeTables(counts, total);
  std::vector<bool> hidden(t.cells.size(), false), known(t.cells.size(), false);
  for (size_t i = 1; i < t.cells.size(); ++i) {
    hidden[i] = total < min_cell || t.n[i] < min_cell;
    known[i] = published_before.count(t.cells[i]) > 0;
  }
  // The smallest published cell among `cells` (not the total, nor one an
  // earlier release published: hiding it protects nothing), or -1.
  auto smallest = [&](const std::vector<int>& cells) {
    int best = -1;
    for (int c : cells) {
      if (c != 0 && !hidden[c] && !known[c] && (best < 0 || t.n[c] < t.n[best])) best = c;
    }
    return best;
  };
  for (size_t guard = 0; guard <= t.cells.size(); ++guard) {
    bool changed = false;
    for (const auto& s : t.sums) {
      if (hidden[s.parent]) continue;
      int64_t under = 0, count = 0;
      for (int c : s.children) {
        if (hidden[c]) under += t.n[c], ++count;
      }
      if (count == 0 || (count >= 2 && under >= min_cell)) continue;
      int add = smallest(s.children);
      if (add < 0) add = smallest({s.parent});
      if (add >= 0) hidden[add] = changed = true;
    }
    if (changed) continue;
    if (total < min_cell) break;  // everything is hidden
    const std::vector<int> determined = Unprotected(t, hidden, known, min_cell);
    if (determined.empty()) break;
    const int s = determined.front();
    std::vector<int> around;
    for (const auto& sum : t.sums) {
      const bool in = sum.parent == s ||
                      std::find(sum.children.begin(), sum.children.end(), s) != sum.children.end();
      if (!in) continue;
      around.push_back(sum.parent);
      around.insert(around.end(), sum.children.begin(), sum.children.end());
    }
    int add = smallest(around);
    if (add < 0) {
      // Everything in its sums is hidden already: s follows through a
      // longer chain of sums. Hide the smallest published cell anywhere
      // that breaks the chain (or, failing that, the smallest of all).
      std::vector<int> published;
      for (size_t i = 1; i < t.cells.size(); ++i) {
        if (!hidden[i] && !known[i]) published.push_back(static_cast<int>(i));
      }
      std::sort(published.begin(), published.end(),
                [&](int a, int b) { return t.n[a] < t.n[b]; });
      for (int c : published) {
        hidden[c] = true;
        const std::vector<int> still = Unprotected(t, hidden, known, min_cell);
        hidden[c] = false;
        if (std::find(still.begin(), still.end(), s) == still.end()) {
          add = c;
          break;
        }
      }
      if (add < 0 && !published.empty()) add = published.front();
    }
    if (add < 0) break;  // everything is hidden
    hidden[add] = true;  // one at a time: each may settle the others
  }
  std::set<CellKey> out;
  for (size_t i = 1; i < t.cells.size(); ++i) {
    if (hidden[i]) out.insert(t.cells[i]);
  }
  return out;
}

namespace {

// ---- Metrics -----------------------------------------------------------------

double Ratio(double a, double b) { return b > 0 ? a / b : kNaN; }

struct CellMetrics {
  double prevalence, auc, accuracy, tpr, fpr, selection, ece, entropy;
  std::vector<double> beta, attention;  // mean β; attention share per feature (sums to 1)
};

CellMetrics Metrics(const GroupSums& g, int calibration_bins) {
  CellMetrics m;
  const Confusion& c = g.confusion;
  const double n = static_cast<double>(g.n);
  m.prevalence = Ratio(c.tp + c.fn, n);
  m.auc = HistogramAuc(g.pos_hist, g.neg_hist);
  m.accuracy = c.Accuracy();
  m.tpr = c.Tpr();
  m.fpr = c.Fpr();
  m.selection = Ratio(c.tp + c.fp, n);
  // ECE = Σ_bins (n_b / n) |mean predicted − mean observed| = Σ |Σp − Σy| / n.
  const size_t per = g.pos_hist.size() / std::max(1, calibration_bins);
  double ece = 0;
  for (int b = 0; b < calibration_bins && per > 0; ++b) {
    double observed = 0;
    for (size_t i = b * per; i < (b + 1) * per; ++i) observed += g.pos_hist[i];
    ece += std::abs(g.calib_sum[b] - observed);
  }
  m.ece = Ratio(ece, n);
  m.entropy = Ratio(g.entropy_sum, n);
  for (double b : g.beta_sum) m.beta.push_back(Ratio(b, n));
  const double mass = std::accumulate(g.attention_sum.begin(), g.attention_sum.end(), 0.0);
  for (double a : g.attention_sum) m.attention.push_back(mass > 0 ? a / mass : 0.0);
  return m;
}

// Feature f's term of JSD(p, q) in bits: ½ p log2(p/m) + ½ q log2(q/m).
double JsdTerm(double p, double q) {
  const double m = 0.5 * (p + q);
  double t = 0;
  if (p > 0) t += 0.5 * p * std::log2(p / m);
  if (q > 0) t += 0.5 * q * std::log2(q / m);
  return std::max(0.0, t);
}

// Mean and variance of feature f's value over a cell's patients.
std::pair<double, double> ValueMoments(const GroupSums& g, size_t f) {
  if (g.n <= 0) return {kNaN, kNaN};
  const double mean = (g.value_pos_sum[f] - g.value_neg_sum[f]) / g.n;
  return {mean, std::max(0.0, g.value_sq_sum[f] / g.n - mean * mean)};
}

// How well feature f's value alone tells cell a from the rest b: the AUC
// Φ(d/√2) of two normals d pooled standard deviations apart, and the same at
// the lower end of d's 95 % confidence interval, d − 1.96·SE(d) with
// SE(d)² = 1/n_a + 1/n_b + d²/(2(n_a + n_b)) (Hedges & Olkin): a small cell's
// means are too noisy to call a feature a proxy for it.
struct Membership {
  double auc;
  double lower;
};

Membership MembershipAuc(const GroupSums& a, const GroupSums& b, size_t f) {
  const auto [ma, va] = ValueMoments(a, f);
  const auto [mb, vb] = ValueMoments(b, f);
  const double na = static_cast<double>(a.n), nb = static_cast<double>(b.n);
  const double pooled = (na * va + nb * vb) / (na + nb);
  if (!(pooled > 1e-12)) {
    const double auc = ma == mb ? 0.5 : 1.0;
    return {auc, auc};
  }
  const double d = std::abs(ma - mb) / std::sqrt(pooled);
  const double se = std::sqrt(1 / na + 1 / nb + d * d / (2 * (na + nb)));
  auto phi = [](double x) { return 0.5 * std::erfc(-x / 2.0); };  // Φ(x/√2)
  return {phi(d), phi(std::max(0.0, d - 1.96 * se))};
}

json MetricsJson(const CellMetrics& m, const EvalSums& s, int top_k) {
  json beta = json::object();
  for (size_t i = 0; i < s.modalities.size(); ++i) beta[s.modalities[i]] = Num(m.beta[i]);
  std::vector<size_t> order(m.attention.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return m.attention[a] > m.attention[b]; });
  json top = json::array();
  for (size_t i = 0; i < order.size() && static_cast<int>(i) < top_k; ++i) {
    if (m.attention[order[i]] <= 0) break;
    top.push_back({{"feature", s.features[order[i]]}, {"share", m.attention[order[i]]}});
  }
  json attention = json::array();
  for (double a : m.attention) attention.push_back(a);
  return {{"prevalence", Num(m.prevalence)},
          {"auc", Num(m.auc)},
          {"accuracy", Num(m.accuracy)},
          {"tpr", Num(m.tpr)},
          {"fpr", Num(m.fpr)},
          {"selection_rate", Num(m.selection)},
          {"ece", Num(m.ece)},
          {"mean_beta", beta},
          {"mean_attention_entropy_bits", Num(m.entropy)},
          {"top_features", top},
          {"attention", attention}};
}

// max − min of `v` over the published cells that have it, with the two cells.
json Gap(const std::vector<std::pair<std::string, double>>& v) {
  const std::pair<std::string, double>* lo = nullptr;
  const std::pair<std::string, double>* hi = nullptr;
  int finite = 0;
  for (const auto& x : v) {
    if (!std::isfinite(x.second)) continue;
    ++finite;
    if (!lo || x.second < lo->second) lo = &x;
    if (!hi || x.second > hi->second) hi = &x;
  }
  if (finite < 2) return nullptr;  // nothing to compare
  return {{"value", hi->second - lo->second}, {"highest", hi->first}, {"lowest", lo->first}};
}

}  // namespace

Status AuditOptions::Validate() const {
  if (min_cell < 1) return absl::InvalidArgumentError("min_cell: must be >= 1");
  if (top_k < 0) return absl::InvalidArgumentError("top_k: must be >= 0");
  if (!(flag_jsd > 0) || !(flag_membership_auc >= 0.5 && flag_membership_auc <= 1)) {
    return absl::InvalidArgumentError(
        "flag_jsd_bits must be > 0 and flag_membership_auc in [0.5, 1]");
  }
  return absl::OkStatus();
}

StatusOr<std::string> AuditJson(const EvalSums& sums, const AuditOptions& o) {
  ATTUNE_RETURN_IF_ERROR(sums.Validate());
  ATTUNE_RETURN_IF_ERROR(o.Validate());
  // The published counts. A cell some site held back
  // (eval_stats.h SuppressSmallCells) counts the other sites' patients only;
  // what the sites held back is protected by their own suppression (the
  // cells that would reveal it from a site's totals were held back too).
  std::map<CellKey, int64_t> counts;
  for (const auto& [key, g] : sums.groups) counts[key] = g.n;
  const std::set<CellKey> hidden =
      SuppressedCells(counts, sums.n, o.min_cell, o.published_before);

  // The columns, marginal ones first, each with its cells in value order.
  std::map<std::string, std::vector<const std::pair<const CellKey, GroupSums>*>> columns;
  for (const auto& kv : sums.groups) columns[kv.first.first].push_back(&kv);
  std::vector<std::string> order;
  for (const auto& [c, v] : columns) {
    if (!IsIntersection(c)) order.push_back(c);
  }
  for (const auto& [c, v] : columns) {
    if (IsIntersection(c)) order.push_back(c);
  }

  json out_columns = json::array();
  json flags = json::array();
  json overall_attention;
  for (const std::string& column : order) {
    const auto& cells = columns[column];
    // Features that define this column's groups (or either side's, for an
    // intersection) are not flagged for it.
    std::set<std::string> defining;
    for (absl::string_view part : absl::StrSplit(column, kCellJoin)) {
      auto it = o.defining_features.find(std::string(part));
      if (it != o.defining_features.end()) defining.insert(it->second.begin(), it->second.end());
    }
    GroupSums all = sums.EmptyGroup();
    for (const auto* kv : cells) AddGroup(&all, kv->second);
    if (overall_attention.is_null() && !IsIntersection(column)) {
      overall_attention = MetricsJson(Metrics(all, sums.calibration_bins), sums, o.top_k);
    }
    json jcells = json::array();
    std::vector<std::pair<std::string, double>> auc, selection, tpr, fpr;
    for (const auto* kv : cells) {
      const CellKey& key = kv->first;
      const GroupSums& g = kv->second;
      if (g.n == 0 && g.suppressed == 0) continue;
      // Hidden here, or held back by every site that had it.
      if (hidden.count(key) || g.n == 0) {
        // One reason for every hidden cell: "fewer than k" and "protects a
        // smaller cell" would each bound the hidden count, and with the
        // published totals could pin it down.
        jcells.push_back({{"value", key.second},
                          {"suppressed", true},
                          {"reason", absl::StrCat("suppressed (small-cell protection, k = ",
                                                  o.min_cell, ")")}});
        continue;
      }
      const CellMetrics m = Metrics(g, sums.calibration_bins);
      json cell = MetricsJson(m, sums, o.top_k);
      cell["value"] = key.second;
      cell["n"] = g.n;
      // Sites that held this cell back: the figures are the other sites'.
      if (g.suppressed > 0) cell["sites_suppressed"] = g.suppressed;
      auc.emplace_back(key.second, m.auc);
      selection.emplace_back(key.second, m.selection);
      tpr.emplace_back(key.second, m.tpr);
      fpr.emplace_back(key.second, m.fpr);
      // This cell against the rest of its column.
      GroupSums rest = sums.EmptyGroup();
      for (const auto* other : cells) {
        if (other != kv) AddGroup(&rest, other->second);
      }
      if (rest.n >= o.min_cell && !sums.features.empty()) {
        const CellMetrics r = Metrics(rest, sums.calibration_bins);
        double jsd = 0;
        std::vector<std::pair<double, size_t>> terms;
        for (size_t f = 0; f < sums.features.size(); ++f) {
          const double term = JsdTerm(m.attention[f], r.attention[f]);
          jsd += term;
          terms.emplace_back(term, f);
        }
        std::sort(terms.rbegin(), terms.rend());
        json top = json::array();
        for (size_t i = 0; i < terms.size() && static_cast<int>(i) < o.top_k; ++i) {
          top.push_back({{"feature", sums.features[terms[i].second]}, {"contribution", terms[i].first}});
        }
        cell["rest_n"] = rest.n;
        cell["jsd_vs_rest_bits"] = jsd;
        cell["jsd_top_features"] = top;
        for (const auto& [term, f] : terms) {
          if (term < o.flag_jsd) break;
          if (defining.count(sums.features[f])) continue;
          const Membership membership = MembershipAuc(g, rest, f);
          if (membership.lower < o.flag_membership_auc) continue;
          flags.push_back({{"column", column},
                           {"value", key.second},
                           {"feature", sums.features[f]},
                           {"jsd_contribution_bits", term},
                           {"jsd_vs_rest_bits", jsd},
                           {"attention_share", m.attention[f]},
                           {"attention_share_rest", r.attention[f]},
                           {"membership_auc", membership.auc},
                           {"membership_auc_lower_95", membership.lower},
                           {"mean_value", Num(ValueMoments(g, f).first)},
                           {"mean_value_rest", Num(ValueMoments(rest, f).first)},
                           {"n", g.n},
                           {"rest_n", rest.n}});
        }
      }
      jcells.push_back(std::move(cell));
    }
    json gaps = {{"auc_gap", Gap(auc)}, {"demographic_parity_difference", Gap(selection)}};
    const json tpr_gap = Gap(tpr), fpr_gap = Gap(fpr);
    json eo = nullptr;
    if (!tpr_gap.is_null() || !fpr_gap.is_null()) {
      const double t = tpr_gap.is_null() ? 0 : tpr_gap["value"].get<double>();
      const double f = fpr_gap.is_null() ? 0 : fpr_gap["value"].get<double>();
      eo = {{"value", std::max(t, f)}, {"tpr_gap", tpr_gap}, {"fpr_gap", fpr_gap}};
    }
    gaps["equalized_odds_difference"] = eo;
    gaps["cells_compared"] = auc.size();
    out_columns.push_back({{"column", column},
                           {"intersection", IsIntersection(column)},
                           {"cells", jcells},
                           {"between_cells", gaps}});
  }

  GroupSums overall = sums.EmptyGroup();
  overall.n = sums.n;
  overall.confusion = sums.confusion;
  overall.pos_hist = sums.pos_hist;
  overall.neg_hist = sums.neg_hist;
  const CellMetrics om = Metrics(overall, sums.calibration_bins);
  json jo = {{"n", sums.n},
             {"loss", Num(sums.Loss())},
             {"prevalence", Num(om.prevalence)},
             {"auc", Num(om.auc)},
             {"accuracy", Num(om.accuracy)},
             {"tpr", Num(om.tpr)},
             {"fpr", Num(om.fpr)},
             {"selection_rate", Num(om.selection)}};
  // Sites whose split was smaller than their k sent none of it.
  if (sums.suppressed > 0) jo["sites_suppressed"] = sums.suppressed;
  if (!overall_attention.is_null()) {
    for (const char* k : {"ece", "mean_beta", "mean_attention_entropy_bits", "top_features", "attention"}) {
      jo[k] = overall_attention[k];
    }
  }
  json doc = {{"schema", kAuditSchema},
              {"split", sums.split},
              {"min_cell", o.min_cell},
              {"operating_threshold", kOperatingThreshold},
              {"modalities", sums.modalities},
              {"features", sums.features},
              {"overall", jo},
              {"columns", out_columns},
              {"flags", flags},
              {"flag_rule", {{"jsd_contribution_bits_at_least", o.flag_jsd},
                             {"membership_auc_lower_95_at_least", o.flag_membership_auc},
                             {"not_flagged_for_their_column", o.defining_features}}},
              {"suppressed_cells", hidden.size()}};
  if (o.noise_multiplier > 0) {
    doc["noise"] = {
        {"noise_multiplier", o.noise_multiplier},
        {"value_clip", o.value_clip},
        {"loss_clip", kNoisedLossClip},
        {"note", "every figure is computed from sums that carry Gaussian noise (a "
                 "differentially private release over patients); counts are noisy, and small "
                 "differences between cells may be noise"}};
  }
  return doc.dump(1);
}

}  // namespace attune
