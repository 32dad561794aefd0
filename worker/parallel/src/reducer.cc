#include "attune/parallel/reducer.h"

#include <map>
#include <string>

namespace attune::parallel {

std::vector<std::vector<size_t>> AssignBuckets(const std::vector<int64_t>& sizes,
                                               const std::vector<int>& keys,
                                               const ReducerOptions& options) {
  struct Open {
    std::vector<size_t> params;
    int64_t bytes = 0;
    bool first = true;  // this key's first bucket has the small cap
  };
  std::map<int, Open> open;
  std::vector<std::vector<size_t>> out;
  for (size_t k = sizes.size(); k-- > 0;) {
    Open& o = open[keys[k]];
    o.params.push_back(k);
    o.bytes += sizes[k];
    const int64_t cap = o.first ? options.first_bucket_bytes : options.bucket_bytes;
    if (o.bytes >= cap) {
      out.push_back(std::move(o.params));
      o.params.clear();
      o.bytes = 0;
      o.first = false;
    }
  }
  for (auto& [key, o] : open) {
    if (!o.params.empty()) out.push_back(std::move(o.params));
  }
  return out;
}

struct GradientReducer::Bucket {
  torch::Tensor buffer;  // gradients, then one used count per parameter
  size_t waiting = 0;    // parameters whose gradient has not arrived
  std::unique_ptr<Work> work;
};

GradientReducer::GradientReducer(std::vector<torch::Tensor> params, Communicator& comm,
                                 ReducerOptions options)
    : params_(std::move(params)), comm_(comm), options_(options), slots_(params_.size()) {
  if (comm_.size() == 1) return;
  scale_ = torch::scalar_tensor(1.0 / comm_.size());
  std::vector<size_t> trained;  // indexes of parameters that require grad
  std::vector<int64_t> sizes;
  std::vector<int> keys;
  std::map<std::pair<int, std::string>, int> key_of;
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& p = params_[i];
    if (!p.requires_grad()) continue;
    trained.push_back(i);
    sizes.push_back(p.numel() * p.element_size());
    auto key = std::make_pair(static_cast<int>(p.scalar_type()), p.device().str());
    keys.push_back(key_of.emplace(key, static_cast<int>(key_of.size())).first->second);
  }
  for (auto& bucket : AssignBuckets(sizes, keys, options_)) {
    for (size_t& k : bucket) k = trained[k];
    int64_t numel = 0;
    for (size_t i : bucket) {
      slots_[i].bucket = layout_.size();
      slots_[i].offset = numel;
      numel += params_[i].numel();
    }
    for (size_t j = 0; j < bucket.size(); ++j) slots_[bucket[j]].flag = numel + j;
    auto b = std::make_unique<Bucket>();
    b->buffer = torch::zeros({numel + static_cast<int64_t>(bucket.size())},
                             params_[bucket.front()].options().requires_grad(false));
    buckets_.push_back(std::move(b));
    layout_.push_back(std::move(bucket));
  }
  for (size_t i : trained) {
    slots_[i].hook = params_[i].register_hook(
        [this, i](const torch::Tensor& grad) { OnGradient(i, grad); });
  }
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < params_.size(); ++i) {
    if (slots_[i].hook >= 0) params_[i].remove_hook(slots_[i].hook);
  }
}

void GradientReducer::Prepare() {
  if (buckets_.empty()) return;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b]->waiting = layout_[b].size();
    buckets_[b]->work.reset();
  }
  for (Slot& s : slots_) s.seen = false;
  next_launch_ = 0;
  launched_in_backward_ = 0;
  armed_ = true;
}

void GradientReducer::OnGradient(size_t param, const torch::Tensor& grad) {
  if (!armed_) return;  // a backward outside a training step
  Slot& s = slots_[param];
  Bucket& b = *buckets_[s.bucket];
  if (grad.is_sparse()) {
    throw CollectiveError(CollectiveError::Kind::kInvalid,
                          "data-parallel reducer: sparse gradients are not supported");
  }
  torch::NoGradGuard no_grad;
  // The gradient goes in already divided by the world size (one pass, as
  // DDP's), viewed in the parameter's shape so that an expanded or strided
  // gradient is read where it lies rather than first made contiguous.
  torch::Tensor slice =
      b.buffer.narrow(0, s.offset, params_[param].numel()).view(params_[param].sizes());
  if (s.seen) {  // a second gradient for the same parameter: accumulate
    slice.add_(grad, 1.0 / comm_.size());
    return;
  }
  torch::mul_out(slice, grad, scale_);
  b.buffer[s.flag].fill_(1);
  s.seen = true;
  if (--b.waiting == 0) {
    LaunchReady();
    launched_in_backward_ = static_cast<int>(next_launch_);
  }
  // Give MPI a chance to progress what is in flight.
  for (size_t k = 0; k < next_launch_; ++k) {
    if (buckets_[k]->work && !buckets_[k]->work->IsCompleted()) break;
  }
}

void GradientReducer::LaunchReady() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_]->waiting == 0) {
    Launch(*buckets_[next_launch_++]);
  }
}

void GradientReducer::Launch(Bucket& b) {
  b.work = comm_.AllReduce(b.buffer, ReduceOp::kSum,
                           "gradient bucket " + std::to_string(&b - buckets_.front().get()));
}

void GradientReducer::Finish() {
  if (buckets_.empty()) return;
  armed_ = false;
  torch::NoGradGuard no_grad;
  // Parameters without a gradient on this rank count as zero.
  for (size_t b = next_launch_; b < buckets_.size(); ++b) {
    Bucket& bucket = *buckets_[b];
    for (size_t i : layout_[b]) {
      if (slots_[i].seen) continue;
      bucket.buffer.narrow(0, slots_[i].offset, params_[i].numel()).zero_();
      bucket.buffer[slots_[i].flag].fill_(0);
    }
    bucket.waiting = 0;
  }
  LaunchReady();
  for (size_t b = 0; b < buckets_.size(); ++b) {
    Bucket& bucket = *buckets_[b];
    bucket.work->Wait(options_.timeout);
    bucket.work.reset();
    torch::Tensor used = bucket.buffer.narrow(0, slots_[layout_[b].front()].flag,
                                              static_cast<int64_t>(layout_[b].size()))
                             .to(torch::TensorOptions().device(torch::kCPU).dtype(torch::kDouble));
    auto used_a = used.accessor<double, 1>();
    for (size_t j = 0; j < layout_[b].size(); ++j) {
      if (used_a[j] == 0) continue;  // no rank produced a gradient
      torch::Tensor& p = params_[layout_[b][j]];
      torch::Tensor mean =
          bucket.buffer.narrow(0, slots_[layout_[b][j]].offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(mean);
      } else {
        p.mutable_grad() = mean.clone();
      }
    }
  }
}

}  // namespace attune::parallel
