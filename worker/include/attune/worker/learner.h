// The LibTorch learner over a site directory (torch_learner.cc), behind the
// torch-free interface the site engine uses (attune/site/learner.h).
#pragma once

#include <memory>
#include <string>

#include "attune/common/config.h"
#include "attune/common/status.h"
#include "attune/site/learner.h"

namespace attune::parallel {
class Communicator;
}

namespace attune::worker {

// The interface is the site engine's; the worker implements it.
using site::EvalOptions;
using site::Learner;
using site::ProgressFn;
using site::TrainOptions;
using site::TrainProgress;
using site::TrainResult;

struct LearnerOptions {
  std::string site_dir;
  int threads = 1;  // LibTorch intra-op threads
  // The ranks that train together (data-parallel; worker/parallel). Null =
  // this process alone. Every rank reads the same site directory and takes
  // its own shard of each epoch; Train() is collective: every rank must call
  // it with the same arguments. Must outlive the learner.
  parallel::Communicator* ranks = nullptr;
};

// The LibTorch learner over a site directory: loads and validates the data
// for `model` (errors name file and line).
StatusOr<std::unique_ptr<Learner>> MakeTorchLearner(const ModelConfig& model,
                                                    const LearnerOptions& options);

}  // namespace attune::worker
