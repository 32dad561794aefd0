#include "attune/parallel/trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <filesystem>
#include <map>

namespace attune::parallel {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

std::vector<torch::Tensor> State(torch::nn::Module& module) {
  std::vector<torch::Tensor> out = module.parameters();
  for (const torch::Tensor& b : module.buffers()) out.push_back(b);
  return out;
}

}  // namespace

// Where training stands over `examples` examples: after `global_step`
// steps, `step` of them in `epoch` (0-based), with the epoch's loss so far.
struct DataParallelTrainer::Position {
  int64_t examples = 0;
  int epoch = 0;
  int64_t step = 0;
  int64_t global_step = 0;
  double loss_sum = 0;
  double seen = 0;
};

torch::Tensor ShardIndices(int64_t examples, int world, int rank, uint64_t seed, int epoch) {
  if (examples == 0) return torch::empty({0}, torch::kInt64);
  torch::Tensor perm = torch::randperm(
      examples, at::detail::createCPUGenerator(Mix(seed ^ Mix(static_cast<uint64_t>(epoch)))),
      torch::kInt64);
  const int64_t per_rank = (examples + world - 1) / world;
  const int64_t padded = per_rank * world;
  if (padded > examples) {  // wrap, as DistributedSampler does
    torch::Tensor pad = perm.slice(0, 0, padded - examples);
    while (pad.size(0) < padded - examples) pad = torch::cat({pad, perm});
    perm = torch::cat({perm, pad.slice(0, 0, padded - examples)});
  }
  return perm.slice(0, rank, padded, world).contiguous();
}

DataParallelTrainer::DataParallelTrainer(torch::nn::Module& module,
                                         torch::optim::Optimizer& optimizer, Communicator& comm,
                                         DataParallelOptions options)
    : module_(module),
      optimizer_(optimizer),
      comm_(comm),
      options_(std::move(options)),
      reducer_(module.parameters(), comm, options_.reducer) {
  TORCH_CHECK(options_.batch_size >= 1, "batch size must be >= 1");
  TORCH_CHECK(options_.epochs >= 0, "epochs must be >= 0");
}

void DataParallelTrainer::BroadcastState() {
  if (comm_.size() == 1) return;
  torch::NoGradGuard no_grad;
  std::map<c10::ScalarType, std::vector<torch::Tensor>> by_dtype;
  for (const torch::Tensor& t : State(module_)) by_dtype[t.scalar_type()].push_back(t);
  for (auto& [dtype, tensors] : by_dtype) {
    std::vector<torch::Tensor> flat;
    for (const torch::Tensor& t : tensors) flat.push_back(t.reshape({-1}));
    torch::Tensor all = torch::cat(flat);
    comm_.Broadcast(all, 0, "initial parameters")->Wait(options_.reducer.timeout);
    int64_t offset = 0;
    for (torch::Tensor& t : tensors) {
      t.copy_(all.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

std::vector<double> DataParallelTrainer::SumOverRanks(std::vector<double> values,
                                                      const char* what) {
  torch::Tensor t = torch::tensor(values, torch::kDouble);
  comm_.AllReduce(t, ReduceOp::kSum, what)->Wait(options_.reducer.timeout);
  auto a = t.accessor<double, 1>();
  for (size_t i = 0; i < values.size(); ++i) values[i] = a[i];
  return values;
}

TrainSummary DataParallelTrainer::Train(int64_t examples, const LossFn& loss,
                                        const StepFn& on_step) {
  const int world = comm_.size(), rank = comm_.rank();
  Position pos;
  pos.examples = examples;
  TrainSummary summary;
  const bool resumed = !options_.checkpoint_path.empty() && LoadCheckpoint(&pos);
  {
    // Every rank must see the same examples and resume at the same step.
    torch::Tensor t = torch::tensor(
        {examples, -examples, pos.global_step, -pos.global_step}, torch::kInt64);
    comm_.AllReduce(t, ReduceOp::kMax, "training start check")->Wait(options_.reducer.timeout);
    auto a = t.accessor<int64_t, 1>();
    TORCH_CHECK(a[0] == -a[1], "the ranks see different numbers of training examples (",
                -a[1], " to ", a[0], "): every rank must read the same data");
    TORCH_CHECK(a[2] == -a[3], "the ranks resumed at different steps (", -a[3], " to ", a[2],
                "): ", options_.checkpoint_path, " must be the same file for every rank");
  }
  if (resumed) summary.resumed_from = pos.global_step;

  bool stop = false;
  auto at_max = [&] { return options_.max_steps > 0 && pos.global_step >= options_.max_steps; };
  for (int e = pos.epoch; e < options_.epochs && !stop && !at_max(); ++e) {
    torch::Tensor shard = ShardIndices(examples, world, rank, options_.seed, e);
    const int64_t len = shard.size(0);
    const int64_t steps = (len + options_.batch_size - 1) / options_.batch_size;
    for (int64_t s = (e == pos.epoch ? pos.step : 0); s < steps; ++s) {
      if (at_max()) {
        stop = true;
        break;
      }
      torch::Tensor idx =
          shard.slice(0, s * options_.batch_size, std::min(len, (s + 1) * options_.batch_size));
      torch::manual_seed(Mix(options_.seed ^ Mix(static_cast<uint64_t>(pos.global_step) << 16 |
                                                 static_cast<uint64_t>(rank))));
      optimizer_.zero_grad();
      reducer_.Prepare();
      StepLoss l = loss(idx);
      l.objective.backward();
      reducer_.Finish();
      if (options_.clip_grad_norm > 0) {
        torch::nn::utils::clip_grad_norm_(module_.parameters(), options_.clip_grad_norm);
      }
      optimizer_.step();
      pos.loss_sum += l.loss * idx.size(0);
      pos.seen += idx.size(0);
      pos.epoch = e;
      pos.step = s + 1;
      ++pos.global_step;
      if (on_step) {
        on_step({e + 1, options_.epochs, s + 1, steps, pos.global_step, pos.loss_sum / pos.seen});
      }
      if (!options_.checkpoint_path.empty() && options_.checkpoint_every > 0 &&
          pos.global_step % options_.checkpoint_every == 0) {
        SaveCheckpoint(pos);
      }
    }
    std::vector<double> sums = SumOverRanks({pos.loss_sum, pos.seen}, "epoch loss");
    summary.loss = sums[1] > 0 ? sums[0] / sums[1] : 0;
    if (!stop) {  // the epoch is complete
      pos.epoch = e + 1;
      pos.step = 0;
      pos.loss_sum = pos.seen = 0;
    }
  }
  if (!options_.checkpoint_path.empty()) SaveCheckpoint(pos);
  summary.steps = pos.global_step;
  summary.launched_in_backward = reducer_.launched_in_backward();
  return summary;
}

void DataParallelTrainer::SaveCheckpoint(const Position& pos) {
  if (comm_.rank() != 0) return;
  torch::serialize::OutputArchive root, model, optim;
  module_.save(model);
  optimizer_.save(optim);
  root.write("model", model);
  root.write("optimizer", optim);
  root.write("position",
             torch::tensor({static_cast<double>(pos.epoch), static_cast<double>(pos.step),
                            static_cast<double>(pos.global_step), pos.loss_sum, pos.seen,
                            static_cast<double>(comm_.size()),
                            static_cast<double>(options_.batch_size),
                            static_cast<double>(pos.examples)},
                           torch::kDouble));
  const std::string tmp = options_.checkpoint_path + ".tmp";
  root.save_to(tmp);
  std::filesystem::rename(tmp, options_.checkpoint_path);
}

bool DataParallelTrainer::LoadCheckpoint(Position* pos) {
  if (!std::filesystem::exists(options_.checkpoint_path)) return false;
  torch::serialize::InputArchive root, model, optim;
  root.load_from(options_.checkpoint_path);
  root.read("model", model);
  root.read("optimizer", optim);
  torch::Tensor p;
  root.read("position", p);
  TORCH_CHECK(p.numel() == 8, options_.checkpoint_path, ": not an Attune training checkpoint");
  auto a = p.accessor<double, 1>();
  TORCH_CHECK(a[5] == comm_.size() && a[6] == options_.batch_size, options_.checkpoint_path,
              ": written by ", a[5], " ranks with batch size ", a[6], "; this run has ",
              comm_.size(), " with batch size ", options_.batch_size,
              " (the data position would differ: start afresh or use the same layout)");
  TORCH_CHECK(a[7] == pos->examples, options_.checkpoint_path, ": written for ", a[7],
              " training examples; this run has ", pos->examples);
  module_.load(model);
  optimizer_.load(optim);
  pos->epoch = static_cast<int>(a[0]);
  pos->step = static_cast<int64_t>(a[1]);
  pos->global_step = static_cast<int64_t>(a[2]);
  pos->loss_sum = a[3];
  pos->seen = a[4];
  return true;
}

}  // namespace attune::parallel
