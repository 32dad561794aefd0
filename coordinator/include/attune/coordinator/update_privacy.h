// Differential privacy of a study's updates (privacy.*), as the rounds
// apply it around the strategy: what each site's TRAIN task asks of it
// (clip and noise), how the secure sum weighs the sites, and what a round
// is charged. The strategy aggregates what arrives and knows nothing of
// it; the driver asks this policy and the ledger keeps the account.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "attune/common/config.h"
#include "attune/common/task.h"

namespace attune::coordinator {

class UpdatePrivacy {
 public:
  explicit UpdatePrivacy(PrivacyConfig config) : config_(std::move(config)) {}

  bool enabled() const { return config_.enabled(); }
  // The DP terms of a TRAIN task (nullopt when off). `sharing` sites add
  // the noise together: 1 in the clear, where each site noises its own
  // update with all of it; under secure aggregation the threshold t, each
  // adding 1/sqrt(t) of it (central DP), so that any t survivors together
  // add at least the whole noise.
  std::optional<DpTerms> TermsFor(int sharing) const;
  // A site's weight in a secure sum, from the examples it declared: under
  // DP uniform, so that one site moves the mean by at most clip_norm.
  double SecureWeight(int64_t declared_examples) const;
  // Whether sites report their training loss: under DP it is left out (it
  // is not noised).
  bool reports_loss() const { return !enabled(); }
  // When a round's update release is charged, and at what noise: in the
  // clear once any site's noised update arrived; under secure aggregation
  // with central DP when the sum is unmasked.
  bool charged_at_unmask() const { return config_.mode == "central"; }
  double noise_multiplier() const { return config_.noise_multiplier; }

 private:
  PrivacyConfig config_;
};

}  // namespace attune::coordinator
