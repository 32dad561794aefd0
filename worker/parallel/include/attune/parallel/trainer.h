// Data-parallel training of one model over the ranks of a communicator, as
// PyTorch DDP with a DistributedSampler does it, for any module and loss:
//
//  - BroadcastState() gives every rank rank 0's parameters and buffers;
//  - every epoch, every rank draws the same permutation of the examples
//    (seed, epoch) and takes its own shard (every size-th, from its rank),
//    padded by wrapping so that all ranks take the same number of batches
//    of the same sizes;
//  - each step, the rank's batch is forwarded and backwarded, the
//    GradientReducer all-reduces the gradients in buckets during backward,
//    and every rank applies the same mean gradient, so the ranks stay
//    identical — and equal to one process training on the concatenation of
//    the ranks' batches (per-rank batch size × size);
//  - the random stream of each step is seeded from (seed, rank, step), so a
//    run resumed from a checkpoint continues exactly as it would have;
//  - every `checkpoint_every` steps (and at the end) rank 0 writes the model,
//    the optimizer and the data position to `checkpoint_path` atomically;
//    Train() resumes from it when it exists (every rank reads it: the path
//    must be visible to all ranks, as a cluster's shared filesystem is).
//
// Throws CollectiveError (communication) and c10::Error (LibTorch).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>

#include "attune/parallel/communicator.h"
#include "attune/parallel/reducer.h"

namespace attune::parallel {

struct DataParallelOptions {
  int64_t batch_size = 32;  // per rank
  int epochs = 1;
  uint64_t seed = 7;
  double clip_grad_norm = 0;     // of the mean gradient; 0 = off
  int64_t max_steps = 0;         // stop after this many steps in all; 0 = every epoch
  std::string checkpoint_path;   // "" = no checkpoints
  int64_t checkpoint_every = 0;  // steps; 0 = only at the end (when a path is set)
  ReducerOptions reducer;
};

// What a step's loss function returns: the objective to differentiate and
// the loss to report (the mean over the rank's batch).
struct StepLoss {
  torch::Tensor objective;
  double loss = 0;
};
// This rank's batch: indices into the dataset, int64 [batch].
using LossFn = std::function<StepLoss(const torch::Tensor& indices)>;

struct StepInfo {
  int epoch = 0;  // 1-based
  int epochs = 0;
  int64_t step = 0;  // 1-based within the epoch
  int64_t steps = 0;
  int64_t global_step = 0;
  double loss = 0;  // this rank's mean loss of the epoch so far
};
using StepFn = std::function<void(const StepInfo&)>;

struct TrainSummary {
  double loss = 0;           // mean loss of the last epoch over all ranks' batches
  int64_t steps = 0;         // steps taken in all (counting those before a resume)
  int64_t resumed_from = 0;  // the step a checkpoint resumed at; 0 = none
  int launched_in_backward = 0;  // buckets started during the last backward
};

// This rank's examples of `epoch` (0-based), in order.
torch::Tensor ShardIndices(int64_t examples, int world, int rank, uint64_t seed, int epoch);

class DataParallelTrainer {
 public:
  // The module, optimizer and communicator must outlive the trainer. The
  // optimizer must be over module.parameters().
  DataParallelTrainer(torch::nn::Module& module, torch::optim::Optimizer& optimizer,
                      Communicator& comm, DataParallelOptions options);

  // Rank 0's parameters and buffers to every rank.
  void BroadcastState();
  // Trains over `examples` examples (the same number on every rank; checked).
  TrainSummary Train(int64_t examples, const LossFn& loss, const StepFn& on_step = {});

 private:
  struct Position;
  // Fills `position` (its `examples` set) from the checkpoint, if there is one.
  bool LoadCheckpoint(Position* position);
  void SaveCheckpoint(const Position& position);
  // Sum of `values` over ranks.
  std::vector<double> SumOverRanks(std::vector<double> values, const char* what);

  torch::nn::Module& module_;
  torch::optim::Optimizer& optimizer_;
  Communicator& comm_;
  DataParallelOptions options_;
  GradientReducer reducer_;
};

}  // namespace attune::parallel
