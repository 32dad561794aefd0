// `attune-worker train`: one site's data (or a pooled dataset) trained
// without a coordinator — the centralised baseline that federated studies
// are compared with — by one process or by many ranks under mpirun:
//
//   mpirun -np 4 attune-worker train --config study.json --site-dir D --out O
//
// The study file gives the model and the training settings (train.*); the
// epochs default to rounds × train.local_epochs, the passes a federated
// site makes. Each rank reads the site directory and trains on its own
// shard; the ranks all-reduce their gradients (worker/parallel). Rank 0
// writes <out>/model.atnm (the format of a study's model, for `attune
// explain`) and <out>/metrics.json (validation and test metrics), and, with
// checkpoint_every, <out>/train.ckpt, which a rerun resumes from. No LibTorch
// in this interface.
#pragma once

#include <cstdint>
#include <string>

#include "attune/common/status.h"
#include "attune/worker/learner.h"

namespace attune::worker {

struct CentralOptions {
  std::string study_path;  // study.json (model and train.*)
  std::string site_dir;
  std::string out_dir;
  int epochs = 0;                // 0 = rounds × train.local_epochs
  int64_t checkpoint_every = 0;  // steps; 0 = no checkpoints
  int threads = 1;               // LibTorch intra-op threads per rank
  ProgressFn progress;           // rank 0's steps; may be empty
};

struct CentralResult {
  int rank = 0, world = 1;  // this process among the ranks
  int64_t examples = 0;     // training patients of the site
  double train_loss = 0;    // mean loss of the last epoch, over all ranks
  std::string val_metrics;  // MetricsJson of the validation split
  std::string test_metrics;
  std::string model_path;   // written by rank 0
};

// The ranks are MPI's when a launcher (mpirun, srun) started several, else
// this process alone. Errors name the rank.
StatusOr<CentralResult> TrainCentral(const CentralOptions& options);

}  // namespace attune::worker
