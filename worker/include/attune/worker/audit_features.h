// The audit's input features' values and attention (eval_stats.h's
// per-feature sums), in the order and with the names the study's model
// defines (common/audit_features.h). Include only from worker translation
// units that need tensors.
//
// A modality's attention is model.h's TokenAttention (what the fusion drew
// from each input token, rolled out through the modality's encoder),
// renormalised over the modality's tokens, summed into the features and
// weighted by the modality's β: a patient's shares add up to 1 over the
// modalities present.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/worker/model.h"
#include "attune/worker/site_data.h"

namespace attune::worker {

std::vector<std::string> AuditFeatureNames(const ModelConfig& m, const SiteData& data);

struct FeatureTensors {
  torch::Tensor attention;  // [B, F] double, rows sum to 1
  torch::Tensor values;     // [B, F] double
};

// For a batch and the model's output on it (the model built with
// full_attention, so that linear attention has its weights).
FeatureTensors AuditFeatureValues(const ModelConfig& m, const Batch& x, const ModelOutput& out);

}  // namespace attune::worker
