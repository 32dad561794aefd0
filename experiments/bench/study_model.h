// The benchmarked study model and its batch: a variant's configuration
// (bench/model_variants.h) with dropout 0, parameters and batch drawn from
// seed 7. attune-bench-model --dump writes these very parameters and batch
// for the Python side, and attune-bench-parallel trains them beside PyTorch
// DDP on that dump, so both benchmarks build them here.
#pragma once

#include <torch/torch.h>

#include <stdexcept>
#include <string>

#include "attune/common/config.h"
#include "attune/worker/model.h"
#include "bench/model_variants.h"
#include "bench/random_batch.h"

namespace attune::bench {

struct StudyModel {
  ModelConfig config;
  worker::MultimodalAttentionNet net{nullptr};
  worker::Batch batch;
};

// Throws std::runtime_error for a configuration the variant makes invalid.
inline StudyModel MakeStudyModel(const ModelVariant& variant, int64_t batch) {
  torch::manual_seed(7);
  StudyModel s;
  s.config.dropout = 0;  // the Python reference has none
  variant.apply(s.config);
  if (auto st = s.config.Validate(); !st.ok()) throw std::runtime_error(std::string(st.message()));
  s.net = worker::MultimodalAttentionNet(s.config);
  s.net->train();
  s.batch = RandomBatch(s.config, batch,
                        {.pad_events = true, .no_imaging_patient = s.config.has_imaging() ? 1 : -1});
  return s;
}

}  // namespace attune::bench
