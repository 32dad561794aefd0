// A random Batch (worker/model.h) for a model config: every modality the
// config has, standard-normal features, event times in [0, 72) h, random
// labels. For the model tests, the whole-model parity case and the model
// benchmark.
#pragma once

#include <torch/torch.h>

#include "attune/common/config.h"
#include "attune/worker/model.h"

namespace attune::bench {

struct RandomBatchOptions {
  bool pad_events = false;          // patient i keeps its first L - (i mod (L/2 + 1)) events
  int64_t no_imaging_patient = -1;  // this patient lacks imaging (present false, zeros)
};

inline worker::Batch RandomBatch(const ModelConfig& m, int64_t b, const RandomBatchOptions& o = {}) {
  worker::Batch x;
  x.present = torch::ones({b, worker::kNumModalities}, torch::kBool);
  if (m.has_static()) x.static_x = torch::randn({b, m.static_features});
  if (m.has_events()) {
    const int64_t l = m.max_events;
    x.event_bucket = torch::randint(m.event_buckets, {b, l}, torch::kInt64);
    x.event_value = torch::randn({b, l});
    x.event_time = torch::rand({b, l}) * 72;
    x.event_pad = o.pad_events ? torch::arange(l).unsqueeze(0).ge(
                                     l - torch::arange(b).remainder(l / 2 + 1).unsqueeze(1))
                               : torch::zeros({b, l}, torch::kBool);
  }
  if (m.has_imaging()) {
    std::vector<int64_t> shape = m.imaging_shape();
    shape.insert(shape.begin(), b);
    x.imaging = torch::randn(shape);
    if (o.no_imaging_patient >= 0) {
      x.imaging[o.no_imaging_patient].zero_();
      x.present.index_put_({o.no_imaging_patient, 2}, false);
    }
  }
  if (m.has_genomics()) x.genomics = torch::randn({b, m.genes});
  x.label = torch::randint(2, {b}).to(torch::kFloat32);
  return x;
}

}  // namespace attune::bench
