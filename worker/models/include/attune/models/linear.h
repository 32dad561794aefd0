// models::Linear: torch::nn::Linear with the same parameters (weight
// [out, in], bias [out]), names and initialisation, whose forward is ATen's
// linear, as PyTorch's F.linear: one fused addmm for a contiguous input of
// any rank. LibTorch's C++ functional instead multiplies (matmul) and then
// adds the bias in place for inputs beyond 2-D, which doubles the autograd
// nodes of every token projection (about 5% of the study model's step).
// Every module of the zoo uses this one.
#pragma once

#include <torch/torch.h>

namespace attune::models {

class LinearImpl : public torch::nn::LinearImpl {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& input) { return torch::linear(input, weight, bias); }
};
TORCH_MODULE(Linear);

}  // namespace attune::models
