#include "attune/coordinator/update_privacy.h"

#include <algorithm>
#include <cmath>

namespace attune::coordinator {

std::optional<DpTerms> UpdatePrivacy::TermsFor(int sharing) const {
  if (!enabled()) return std::nullopt;
  const double total = config_.noise_multiplier * config_.clip_norm;
  const double share = config_.mode == "central"
                           ? total / std::sqrt(static_cast<double>(std::max(sharing, 1)))
                           : total;
  return DpTerms{config_.clip_norm, share};
}

double UpdatePrivacy::SecureWeight(int64_t declared_examples) const {
  if (enabled()) return 1.0;
  return static_cast<double>(std::max<int64_t>(1, declared_examples));
}

}  // namespace attune::coordinator
