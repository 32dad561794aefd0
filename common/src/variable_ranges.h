// The range of each variable over a polytope {y >= 0 : A y = b}, by linear
// programming (a dense two-phase simplex with Bland's rule: small, exact
// enough for the integer tables of an audit, and never cycling). Used by
// the audit's disclosure check: what an attacker who knows every published
// count and the additivity of the tables can say about a hidden one.
// Internal to common/.
#pragma once

#include <utility>
#include <vector>

#include "attune/common/status.h"

namespace attune {

// For each variable j, [min y_j, max y_j] over the polytope (max is +inf
// when unbounded). `a` has one row per equation, each as long as the
// number of variables. FailedPrecondition when the polytope is empty.
StatusOr<std::vector<std::pair<double, double>>> VariableRanges(
    const std::vector<std::vector<double>>& a, const std::vector<double>& b);

}  // namespace attune
