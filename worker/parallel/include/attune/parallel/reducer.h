// The gradient reducer of data-parallel training, as PyTorch DDP's (Li et
// al., "PyTorch Distributed", VLDB 2020): parameters are grouped into buckets
// in reverse order (the order their gradients become ready in backward), and
// an autograd hook on each parameter copies its gradient into its bucket;
// when a bucket's last gradient arrives the bucket's all-reduce starts at
// once, so communication overlaps the rest of the backward pass. Buckets
// start strictly in order, so every rank issues the same collectives in the
// same order whatever order its hooks fire in.
//
// Unused parameters need no flag: a parameter that got no gradient on this
// rank counts as zero when Finish() starts the buckets still waiting, and
// each bucket carries one "used" count per parameter, summed over ranks. A
// parameter used on some rank gets the mean over all ranks (as if the
// per-rank batches were one batch); one no rank used keeps its grad untouched.
//
// With one rank the reducer does nothing (no hooks, no copies).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "attune/parallel/communicator.h"

namespace attune::parallel {

struct ReducerOptions {
  int64_t bucket_bytes = 25 << 20;       // DDP's bucket_cap_mb default (25 MiB)
  int64_t first_bucket_bytes = 1 << 20;  // the first bucket (the last layers,
                                         // ready first) is small, as DDP's
  std::chrono::milliseconds timeout = std::chrono::minutes(5);  // per collective
};

// Parameter indexes per bucket, in launch order: `sizes` are the
// parameters' sizes in bytes, `keys` say which may share a bucket (dtype
// and device), both in registration order. A bucket holds parameters until
// it reaches its cap; a parameter larger than the cap has a bucket to itself.
std::vector<std::vector<size_t>> AssignBuckets(const std::vector<int64_t>& sizes,
                                               const std::vector<int>& keys,
                                               const ReducerOptions& options);

class GradientReducer {
 public:
  // `params`: the model's parameters (those without requires_grad are left
  // alone). The communicator must outlive the reducer.
  GradientReducer(std::vector<torch::Tensor> params, Communicator& comm, ReducerOptions options);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before each backward(): arms the hooks (grads should have been zeroed).
  void Prepare();
  // After backward(): starts the buckets still waiting, waits for all and
  // writes the mean gradients. Throws CollectiveError.
  void Finish();

  // Parameter indexes (into `params`) per bucket, in launch order.
  const std::vector<std::vector<size_t>>& buckets() const { return layout_; }
  // Buckets started by hooks during the last backward (the overlap).
  int launched_in_backward() const { return launched_in_backward_; }

 private:
  struct Bucket;
  void OnGradient(size_t param, const torch::Tensor& grad);
  void LaunchReady();
  void Launch(Bucket& b);

  std::vector<torch::Tensor> params_;
  Communicator& comm_;
  ReducerOptions options_;
  std::vector<std::vector<size_t>> layout_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;  // into the bucket's buffer
    int64_t flag = 0;    // the used count's index in the buffer
    int hook = -1;
    bool seen = false;
  };
  std::vector<Slot> slots_;  // one per parameter
  torch::Tensor scale_;      // 1 / world size (a gradient's share of the mean)
  size_t next_launch_ = 0;
  bool armed_ = false;
  int launched_in_backward_ = 0;
};

}  // namespace attune::parallel
