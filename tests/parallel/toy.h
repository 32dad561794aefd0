// A small model and dataset for the data-parallel tests: parameters of 0, 1
// and odd element counts, one used only by some batches (examples whose
// index is a multiple of 7) and one never used, so that the reducer meets
// every case; no dropout, so one process can replay the ranks exactly.
#pragma once

#include <torch/torch.h>

#include "attune/parallel/trainer.h"

namespace attune::testing {

struct ToyNetImpl : torch::nn::Module {
  explicit ToyNetImpl(uint64_t seed) {
    torch::manual_seed(seed);
    w = register_parameter("w", torch::randn({5, 3}) * 0.5);   // 15
    b = register_parameter("b", torch::randn({1}));            // 1
    empty = register_parameter("empty", torch::zeros({0}));    // 0
    v = register_parameter("v", torch::randn({7}) * 0.3);      // 7
    rare = register_parameter("rare", torch::randn({3}) * 0.3);
    unused = register_parameter("unused", torch::randn({4}));
    out = register_parameter("out", torch::randn({3}) * 0.5);
    scale = register_buffer("scale", torch::full({1}, 0.1));
  }
  torch::Tensor w, b, empty, v, rare, unused, out, scale;
};
TORCH_MODULE(ToyNet);

struct ToyData {
  torch::Tensor x, aux, y;
  explicit ToyData(int64_t n) {
    torch::Tensor i = torch::arange(n, torch::kFloat).unsqueeze(1);
    x = torch::sin(i * torch::arange(1, 6, torch::kFloat) * 0.37);
    aux = torch::cos(i * torch::arange(1, 8, torch::kFloat) * 0.11);
    y = torch::sin(i.squeeze(1) * 0.05) + 0.3 * torch::cos(i.squeeze(1) * 0.7);
  }
  int64_t size() const { return x.size(0); }
};

// Mean squared error over the examples `idx`.
inline torch::Tensor ToyLoss(ToyNet& net, const ToyData& d, const torch::Tensor& idx) {
  torch::Tensor h = torch::tanh(d.x.index_select(0, idx).matmul(net->w));
  torch::Tensor s = (h * net->out).sum(1) + net->b + net->empty.sum() +
                    (d.aux.index_select(0, idx) * net->v).sum(1) * net->scale;
  torch::Tensor rows = torch::nonzero(idx.remainder(7) == 0).squeeze(1);
  if (rows.numel() > 0) {
    s = s.index_add(0, rows, (h.index_select(0, rows) * net->rare).sum(1));
  }
  return torch::mse_loss(s, d.y.index_select(0, idx));
}

inline parallel::LossFn ToyLossFn(ToyNet& net, const ToyData& d) {
  return [&net, &d](const torch::Tensor& idx) {
    torch::Tensor l = ToyLoss(net, d, idx);
    return parallel::StepLoss{l, l.item<double>()};
  };
}

// All of a module's parameters and buffers, flattened.
inline torch::Tensor Flatten(torch::nn::Module& m) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : m.parameters()) parts.push_back(p.detach().reshape({-1}));
  for (const auto& b : m.buffers()) parts.push_back(b.detach().reshape({-1}));
  return torch::cat(parts);
}

// One process replaying `world` ranks: each step trains on the concatenation
// of the ranks' batches (the same shards the trainer draws).
inline void TrainConcatenated(ToyNet& net, torch::optim::Optimizer& opt, const ToyData& d,
                              int world, const parallel::DataParallelOptions& o, int64_t steps) {
  int64_t done = 0;
  for (int e = 0; e < o.epochs && done < steps; ++e) {
    std::vector<torch::Tensor> shards;
    for (int r = 0; r < world; ++r) {
      shards.push_back(parallel::ShardIndices(d.size(), world, r, o.seed, e));
    }
    const int64_t len = shards[0].size(0);
    for (int64_t off = 0; off < len && done < steps; off += o.batch_size, ++done) {
      std::vector<torch::Tensor> parts;
      for (const auto& s : shards) parts.push_back(s.slice(0, off, off + o.batch_size));
      opt.zero_grad();
      ToyLoss(net, d, torch::cat(parts)).backward();
      opt.step();
    }
  }
}

// Trains a fresh ToyNet(seed) with Adam (a step's loss scaled by a dropout
// draw, so the per-step random stream matters) for up to `max_steps` steps
// with checkpoints at `checkpoint`; returns its state and the summary once
// every rank is done (rank 0's checkpoint is then written).
inline std::pair<torch::Tensor, parallel::TrainSummary> TrainToyWithCheckpoints(
    parallel::Communicator& comm, const ToyData& data, parallel::DataParallelOptions o,
    uint64_t seed, int64_t max_steps, const std::string& checkpoint) {
  o.max_steps = max_steps;
  o.checkpoint_path = checkpoint;
  ToyNet net(seed);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.01));
  parallel::DataParallelTrainer trainer(*net, opt, comm, o);
  trainer.BroadcastState();
  auto loss = [&](const torch::Tensor& idx) {
    torch::Tensor l =
        ToyLoss(net, data, idx) * torch::dropout(torch::ones({1}), 0.5, /*train=*/true).sum();
    return parallel::StepLoss{l, l.item<double>()};
  };
  parallel::TrainSummary s = trainer.Train(data.size(), loss);
  comm.Barrier("trained")->Wait(std::chrono::seconds(60));
  return {Flatten(*net), s};
}

}  // namespace attune::testing
