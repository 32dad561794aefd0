// A random Batch (worker/model.h) for a model config, for the model
// benchmark and the whole-model parity case: every modality the config has,
// events padded at the tail, and optionally one patient missing imaging.
#pragma once

#include <torch/torch.h>

#include "attune/common/config.h"
#include "attune/worker/model.h"

namespace attune::bench {

inline worker::Batch RandomBatch(const ModelConfig& m, int64_t b, int64_t no_imaging_patient = -1) {
  worker::Batch x;
  x.present = torch::ones({b, 4}, torch::kBool);
  if (m.has_static()) x.static_x = torch::randn({b, m.static_features});
  if (m.has_events()) {
    const int64_t l = m.max_events;
    x.event_bucket = torch::randint(m.event_buckets, {b, l}, torch::kInt64);
    x.event_value = torch::randn({b, l});
    x.event_time = torch::rand({b, l}) * 48;
    // Patient i keeps its first l - (i mod (l/2)) events.
    x.event_pad = torch::arange(l).unsqueeze(0).ge(l - torch::arange(b).remainder(l / 2 + 1).unsqueeze(1));
  }
  if (m.has_imaging()) {
    std::vector<int64_t> shape = m.imaging_shape();
    shape.insert(shape.begin(), b);
    x.imaging = torch::randn(shape);
    if (no_imaging_patient >= 0) {
      x.imaging[no_imaging_patient].zero_();
      x.present.index_put_({no_imaging_patient, 2}, false);
    }
  }
  if (m.has_genomics()) x.genomics = torch::randn({b, m.genes});
  x.label = torch::randint(2, {b}).to(torch::kFloat32);
  return x;
}

}  // namespace attune::bench
