// Random model inputs for the worker's model tests.
#pragma once

#include "attune/worker/model.h"

namespace attune::worker::testing {

// A small model: every modality, short sequences, no dropout.
inline ModelConfig SmallModel(int heads = 4) {
  ModelConfig m;
  m.d_model = 16;
  m.heads = heads;
  m.static_features = 5;
  m.event_buckets = 50;
  m.max_events = 6;
  m.imaging_patches = 4;
  m.imaging_dim = 7;
  m.genes = 9;
  m.dropout = 0.0;
  return m;
}

// b patients with every modality present, standard-normal features, event
// times in [0, 72) h and random labels.
inline Batch RandomBatch(const ModelConfig& m, int64_t b) {
  Batch x;
  x.static_x = torch::randn({b, m.static_features});
  x.event_bucket = torch::randint(m.event_buckets, {b, m.max_events}, torch::kInt64);
  x.event_value = torch::randn({b, m.max_events});
  x.event_time = torch::rand({b, m.max_events}) * 72;
  x.event_pad = torch::zeros({b, m.max_events}, torch::kBool);
  std::vector<int64_t> imaging = {b};
  for (int64_t d : m.imaging_shape()) imaging.push_back(d);
  x.imaging = torch::randn(imaging);
  x.genomics = torch::randn({b, m.genes});
  x.present = torch::ones({b, kNumModalities}, torch::kBool);
  x.label = torch::randint(2, {b}).to(torch::kFloat);
  return x;
}

}  // namespace attune::worker::testing
