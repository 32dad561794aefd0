// A module's parameters and buffers as a FlatModel (names, shapes, values
// in registration order) and back. The schema is the contract between sites
// and coordinator: a model whose schema differs is refused.
#pragma once

#include <torch/torch.h>

#include "attune/common/status.h"
#include "attune/common/tensor_codec.h"

namespace attune::worker {

FlatModel ToFlatModel(const torch::nn::Module& module);
// InvalidArgument when the schema differs from the module's.
Status LoadFlatModel(const FlatModel& flat, torch::nn::Module& module);

}  // namespace attune::worker
