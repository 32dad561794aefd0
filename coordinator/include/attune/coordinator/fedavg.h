// Federated averaging on flat float buffers (no LibTorch in the coordinator).
//
// Pure math: w_next = w + Σ_i n_i Δ_i / Σ_i n_i, where Δ_i = w_i − w is site
// i's update and n_i its number of training examples (McMahan et al. 2017).
//
// StreamingFedAvg folds updates in as they arrive, so memory is O(model)
// whatever the number of sites; it accumulates in double so the result does
// not depend on arrival order beyond double rounding.
// Thread-compatible: the round driver serialises calls.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::coordinator {

struct ClientUpdate {
  std::string site;
  std::span<const float> delta;
  int64_t num_examples = 0;
};

// out = Σ n_i Δ_i / Σ n_i. `updates` must be non-empty and all sizes equal
// to out.size() (checked: a mismatch is a bug).
void WeightedMeanInto(std::span<float> out, std::span<const ClientUpdate> updates);

class StreamingFedAvg {
 public:
  explicit StreamingFedAvg(size_t numel) : sum_(numel, 0.0) {}

  // InvalidArgument: wrong size, num_examples < 1, or a NaN/Inf value.
  // Nothing is folded in when the update is refused.
  Status Accept(const ClientUpdate& update);

  int accepted() const { return accepted_; }
  int64_t total_examples() const { return total_examples_; }

  // global + weighted mean of the accepted deltas. FailedPrecondition when
  // nothing was accepted (the caller keeps the old model).
  StatusOr<std::vector<float>> Finalize(std::span<const float> global) const;

 private:
  std::vector<double> sum_;
  int64_t total_examples_ = 0;
  int accepted_ = 0;
};

}  // namespace attune::coordinator
