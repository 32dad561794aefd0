// Random model inputs for the worker's model tests.
#pragma once

#include "attune/worker/model.h"
#include "bench/random_batch.h"

namespace attune::worker::testing {

// A small model: every modality, short sequences, 8 × 8 images (for the
// vit and cnn encoders), no dropout.
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
  m.image_size = 8;
  m.patch_size = 4;
  m.dropout = 0.0;
  return m;
}

using bench::RandomBatch;  // every modality present, no event padding by default

}  // namespace attune::worker::testing
