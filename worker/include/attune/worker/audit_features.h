// The audit's input features (eval_stats.h's per-feature sums): what the
// model attended to, in units a reader can name, and each one's input
// value. Include only from worker translation units that need tensors.
//
//   ehr_static/<column>     one per static feature: its value
//   ehr_events/bucket <k>   one per event-code bucket: the patient's events in it
//   imaging/<region>        patch features: one per patch (up to 16; more are
//                           binned in order); images: a grid of up to 4 × 4
//                           regions: the mean input over the region
//   genomics/<gene>         one per gene: its expression
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
