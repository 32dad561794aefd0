#include "attune/models/blocks.h"

namespace attune::models {

TransformerBlockImpl::TransformerBlockImpl(const TransformerOptions& o) : options_(o) {
  norm1_ = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model})));
  MultiHeadOptions mho{o.d_model, o.heads, 0, o.dropout};
  if (o.attention == AttentionKind::kSoftmax) {
    mha_ = register_module("attn", MultiHeadAttention(mho));
  } else {
    linear_ = register_module("attn", LinearAttention(mho));
  }
  norm2_ = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model})));
  ff_ = register_module("ff", torch::nn::Sequential(
                                  Linear(o.d_model, o.ff_mult * o.d_model),
                                  torch::nn::GELU(),
                                  Linear(o.ff_mult * o.d_model, o.d_model)));
  drop_ = register_module("drop", torch::nn::Dropout(o.dropout));
}

Attended TransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& pad,
                                       bool need_weights) {
  torch::Tensor n = norm1_(x);
  Attended a = mha_ ? mha_->forward(n, n, n, pad) : linear_->forward(n, pad, need_weights);
  torch::Tensor h = x + drop_(a.output);
  return {h + drop_(ff_->forward(norm2_(h))), a.weights};
}

SqueezeExcitationImpl::SqueezeExcitationImpl(int64_t channels, int64_t reduction) {
  const int64_t hidden = std::max<int64_t>(1, channels / reduction);
  fc1_ = register_module("fc1", Linear(channels, hidden));
  fc2_ = register_module("fc2", Linear(hidden, channels));
}

Attended SqueezeExcitationImpl::forward(const torch::Tensor& x) {
  torch::Tensor s = torch::sigmoid(fc2_(torch::relu(fc1_(x.mean({2, 3})))));  // [B, C]
  return {x * s.unsqueeze(-1).unsqueeze(-1), s};
}

CbamImpl::CbamImpl(int64_t channels, int64_t reduction, int64_t kernel) {
  const int64_t hidden = std::max<int64_t>(1, channels / reduction);
  mlp_ = register_module("mlp", torch::nn::Sequential(Linear(channels, hidden),
                                                      torch::nn::ReLU(),
                                                      Linear(hidden, channels)));
  spatial_ = register_module(
      "spatial", torch::nn::Conv2d(
                     torch::nn::Conv2dOptions(2, 1, kernel).padding(kernel / 2).bias(false)));
}

CbamOutput CbamImpl::forward(const torch::Tensor& x) {
  torch::Tensor avg = x.mean({2, 3}), max = x.amax({2, 3});
  torch::Tensor mc = torch::sigmoid(mlp_->forward(avg) + mlp_->forward(max));  // [B, C]
  torch::Tensor y = x * mc.unsqueeze(-1).unsqueeze(-1);
  torch::Tensor maps = torch::cat({y.mean(1, true), y.amax(1, true)}, 1);  // [B, 2, H, W]
  torch::Tensor ms = torch::sigmoid(spatial_(maps));                       // [B, 1, H, W]
  return {y * ms, mc, ms.squeeze(1)};
}

namespace {
torch::nn::Sequential ConvStage(int64_t in, int64_t out) {
  return torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)),
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(std::min<int64_t>(4, out), out)),
      torch::nn::ReLU());
}
}  // namespace

HybridCnnImpl::HybridCnnImpl(const HybridCnnOptions& o) : options_(o) {
  TORCH_CHECK(o.image_size % 4 == 0, "HybridCnn: image size ", o.image_size,
              " is not a multiple of 4");
  stage1_ = register_module("stage1", ConvStage(o.in_channels, o.channels));
  cbam1_ = register_module("cbam1", Cbam(o.channels, 4));
  stage2_ = register_module("stage2", ConvStage(o.channels, 2 * o.channels));
  cbam2_ = register_module("cbam2", Cbam(2 * o.channels, 4));
  to_tokens_ = register_module("to_tokens", Linear(2 * o.channels, o.d_model));
  const int64_t n = (o.image_size / 4) * (o.image_size / 4);
  cls_ = register_parameter("cls", torch::randn({1, 1, o.d_model}) * 0.02);
  pos_ = register_parameter("pos", torch::randn({1, 1 + n, o.d_model}) * 0.02);
  for (int64_t i = 0; i < o.layers; ++i) {
    blocks_.push_back(register_module(
        "block" + std::to_string(i),
        TransformerBlock(TransformerOptions{o.d_model, o.heads, 2, o.dropout})));
  }
}

HybridCnnOutput HybridCnnImpl::forward(const torch::Tensor& images) {
  HybridCnnOutput out;
  CbamOutput c1 = cbam1_(stage1_->forward(images));
  torch::Tensor f = torch::max_pool2d(c1.output, 2);
  CbamOutput c2 = cbam2_(stage2_->forward(f));
  f = torch::max_pool2d(c2.output, 2);  // [B, 2C, H/4, W/4]
  out.traces.push_back({"imaging/cbam1/channel", c1.channel_weights});
  out.traces.push_back({"imaging/cbam1/spatial", c1.spatial_weights});
  out.traces.push_back({"imaging/cbam2/channel", c2.channel_weights});
  out.traces.push_back({"imaging/cbam2/spatial", c2.spatial_weights});
  const int64_t b = images.size(0);
  torch::Tensor tokens = to_tokens_(f.flatten(2).transpose(1, 2));  // [B, N, d]
  torch::Tensor x = torch::cat({cls_.expand({b, 1, options_.d_model}), tokens}, 1) + pos_;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Attended a = blocks_[i]->forward(x);
    x = a.output;
    out.traces.push_back({"imaging/layer" + std::to_string(i) + "/self", a.weights});
  }
  out.tokens = x;
  out.vector = x.select(1, 0);
  return out;
}

}  // namespace attune::models
