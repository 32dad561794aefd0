#include "attune/coordinator/fedavg.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace attune::coordinator {

void WeightedMeanInto(std::span<float> out, std::span<const ClientUpdate> updates) {
  ATTUNE_CHECK(!updates.empty());
  double total = 0;
  for (const auto& u : updates) {
    ATTUNE_CHECK(u.delta.size() == out.size());
    total += static_cast<double>(u.num_examples);
  }
  ATTUNE_CHECK(total > 0);
  for (size_t i = 0; i < out.size(); ++i) {
    double acc = 0;
    for (const auto& u : updates) acc += static_cast<double>(u.num_examples) * u.delta[i];
    out[i] = static_cast<float>(acc / total);
  }
}

Status StreamingFedAvg::Accept(const ClientUpdate& u) {
  if (u.delta.size() != sum_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "update from ", u.site, " has ", u.delta.size(), " values, the model has ", sum_.size()));
  }
  if (u.num_examples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("update from ", u.site, " claims ", u.num_examples, " examples"));
  }
  for (float v : u.delta) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("update from ", u.site, " contains NaN or Inf"));
    }
  }
  const double w = static_cast<double>(u.num_examples);
  for (size_t i = 0; i < sum_.size(); ++i) sum_[i] += w * u.delta[i];
  total_examples_ += u.num_examples;
  ++accepted_;
  return absl::OkStatus();
}

StatusOr<std::vector<float>> StreamingFedAvg::Finalize(std::span<const float> global) const {
  if (accepted_ == 0) return absl::FailedPreconditionError("no update was accepted");
  ATTUNE_CHECK(global.size() == sum_.size());
  std::vector<float> out(global.size());
  const double total = static_cast<double>(total_examples_);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<float>(global[i] + sum_[i] / total);
  }
  return out;
}

}  // namespace attune::coordinator
