#include "variable_ranges.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace attune {
namespace {

constexpr double kEps = 1e-9;

// A simplex tableau in equality form: rows of T x = rhs with a feasible
// basis (rhs >= 0, basis[r]'s column the unit vector e_r).
struct Tableau {
  std::vector<std::vector<double>> t;
  std::vector<double> rhs;
  std::vector<int> basis;
  size_t columns = 0;

  void Pivot(size_t row, size_t col) {
    const double p = t[row][col];
    for (double& v : t[row]) v /= p;
    rhs[row] /= p;
    for (size_t r = 0; r < t.size(); ++r) {
      if (r == row || std::abs(t[r][col]) < kEps) continue;
      const double f = t[r][col];
      for (size_t k = 0; k < columns; ++k) t[r][k] -= f * t[row][k];
      rhs[r] -= f * rhs[row];
      if (std::abs(rhs[r]) < kEps) rhs[r] = 0;
    }
    basis[row] = static_cast<int>(col);
  }

  // Minimises cost · x over the first `usable` columns (the others stay
  // out of the basis). False when unbounded below.
  bool Minimise(const std::vector<double>& cost, size_t usable) {
    // Bland's rule terminates; the bound is a guard against a numerical
    // loop, far above any audit's tables.
    for (int step = 0; step < 100000; ++step) {
      size_t enter = usable;
      for (size_t j = 0; j < usable; ++j) {
        double reduced = cost[j];
        for (size_t r = 0; r < t.size(); ++r) reduced -= cost[basis[r]] * t[r][j];
        if (reduced < -kEps) {
          enter = j;
          break;
        }
      }
      if (enter == usable) return true;
      size_t leave = t.size();
      double best = 0;
      for (size_t r = 0; r < t.size(); ++r) {
        if (t[r][enter] <= kEps) continue;
        const double ratio = rhs[r] / t[r][enter];
        if (leave == t.size() || ratio < best - kEps ||
            (ratio < best + kEps && basis[r] < basis[leave])) {
          leave = r;
          best = ratio;
        }
      }
      if (leave == t.size()) return false;
      Pivot(leave, enter);
    }
    return true;
  }

  double Value(size_t j) const {
    for (size_t r = 0; r < t.size(); ++r) {
      if (basis[r] == static_cast<int>(j)) return rhs[r];
    }
    return 0;
  }
};

}  // namespace

StatusOr<std::vector<std::pair<double, double>>> VariableRanges(
    const std::vector<std::vector<double>>& a, const std::vector<double>& b) {
  const size_t m = a.size();
  const size_t n = m == 0 ? 0 : a[0].size();
  std::vector<std::pair<double, double>> out;
  if (m == 0) {
    out.assign(n, {0.0, std::numeric_limits<double>::infinity()});
    return out;
  }
  // Phase 1: an artificial variable per row, their sum minimised.
  Tableau tab;
  tab.columns = n + m;
  for (size_t r = 0; r < m; ++r) {
    const double sign = b[r] < 0 ? -1 : 1;
    std::vector<double> row(n + m, 0.0);
    for (size_t j = 0; j < n; ++j) row[j] = sign * a[r][j];
    row[n + r] = 1;
    tab.t.push_back(std::move(row));
    tab.rhs.push_back(sign * b[r]);
    tab.basis.push_back(static_cast<int>(n + r));
  }
  std::vector<double> cost(n + m, 0.0);
  for (size_t r = 0; r < m; ++r) cost[n + r] = 1;
  tab.Minimise(cost, n + m);
  double infeasibility = 0;
  for (size_t r = 0; r < m; ++r) infeasibility += cost[tab.basis[r]] * tab.rhs[r];
  if (infeasibility > 1e-6) {
    return absl::FailedPreconditionError(
        absl::StrCat("the equations have no non-negative solution (residual ", infeasibility, ")"));
  }
  // Artificials left in the basis (at 0) leave it, or their row is
  // redundant and goes.
  for (size_t r = 0; r < tab.t.size();) {
    if (tab.basis[r] < static_cast<int>(n)) {
      ++r;
      continue;
    }
    size_t col = n;
    for (size_t j = 0; j < n; ++j) {
      if (std::abs(tab.t[r][j]) > kEps) {
        col = j;
        break;
      }
    }
    if (col < n) {
      tab.Pivot(r, col);
      ++r;
    } else {
      tab.t.erase(tab.t.begin() + static_cast<std::ptrdiff_t>(r));
      tab.rhs.erase(tab.rhs.begin() + static_cast<std::ptrdiff_t>(r));
      tab.basis.erase(tab.basis.begin() + static_cast<std::ptrdiff_t>(r));
    }
  }
  // Phase 2, from one optimum to the next (every basis is feasible).
  out.resize(n);
  std::vector<double> objective(n + m, 0.0);
  for (size_t j = 0; j < n; ++j) {
    objective[j] = 1;
    tab.Minimise(objective, n);  // bounded below by 0
    out[j].first = tab.Value(j);
    objective[j] = -1;
    out[j].second =
        tab.Minimise(objective, n) ? tab.Value(j) : std::numeric_limits<double>::infinity();
    objective[j] = 0;
  }
  return out;
}

}  // namespace attune
