#include "attune/worker/model_state.h"

#include <cstring>

namespace attune::worker {
namespace {

std::vector<std::pair<std::string, torch::Tensor>> StateOf(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value());
  return out;
}

}  // namespace

FlatModel ToFlatModel(const torch::nn::Module& module) {
  FlatModel flat;
  auto state = StateOf(module);
  int64_t total = 0;
  for (const auto& [name, t] : state) total += t.numel();
  flat.values.resize(total);
  int64_t off = 0;
  for (const auto& [name, t] : state) {
    flat.schema.tensors.push_back({name, t.sizes().vec(), "f32"});
    torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    std::memcpy(flat.values.data() + off, c.data_ptr<float>(), c.numel() * sizeof(float));
    off += c.numel();
  }
  return flat;
}

Status LoadFlatModel(const FlatModel& flat, torch::nn::Module& module) {
  auto state = StateOf(module);
  if (flat.schema.tensors.size() != state.size()) {
    return absl::InvalidArgumentError("model has a different number of tensors than this site's");
  }
  if (static_cast<int64_t>(flat.values.size()) != flat.schema.numel()) {
    return absl::InvalidArgumentError("model values do not match its schema");
  }
  torch::NoGradGuard no_grad;
  int64_t off = 0;
  for (size_t i = 0; i < state.size(); ++i) {
    const TensorSpec& spec = flat.schema.tensors[i];
    torch::Tensor& t = state[i].second;
    if (spec.name != state[i].first || spec.shape != t.sizes().vec()) {
      return absl::InvalidArgumentError("model tensor '" + spec.name +
                                        "' does not match this site's model (" + state[i].first +
                                        ")");
    }
    torch::Tensor src = torch::from_blob(const_cast<float*>(flat.values.data() + off),
                                         t.sizes(), torch::kFloat32);
    t.copy_(src);
    off += spec.numel();
  }
  return absl::OkStatus();
}

}  // namespace attune::worker
