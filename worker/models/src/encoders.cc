#include "attune/models/encoders.h"

#include <cmath>

namespace attune::models {

TimeEncodingImpl::TimeEncodingImpl(int64_t d) {
  TORCH_CHECK(d >= 2, "TimeEncoding: d_model must be at least 2");
  linear_ = register_module("linear", Linear(1, d));
}

torch::Tensor TimeEncodingImpl::forward(const torch::Tensor& hours) {
  torch::Tensor z = linear_(hours.unsqueeze(-1));
  return torch::cat({z.narrow(-1, 0, 1), torch::sin(z.narrow(-1, 1, z.size(-1) - 1))}, -1);
}

FeatureTokenizerImpl::FeatureTokenizerImpl(int64_t features, int64_t d) {
  weight_ = register_parameter("weight", torch::randn({features, d}) / std::sqrt(double(d)));
  bias_ = register_parameter("bias", torch::randn({features, d}) * 0.02);
}

torch::Tensor FeatureTokenizerImpl::forward(const torch::Tensor& x) {
  return x.unsqueeze(-1) * weight_ + bias_;
}

SequenceEncoderImpl::SequenceEncoderImpl(const SequenceOptions& o, std::string prefix)
    : options_(o), prefix_(std::move(prefix)) {
  cls_ = register_parameter("cls", torch::randn({1, 1, o.d_model}) * 0.02);
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.layers; ++i) {
    blocks_->push_back(
        TransformerBlock(TransformerOptions{o.d_model, o.heads, 2, o.dropout, o.attention}));
  }
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({o.d_model})));
}

SequenceEncoding SequenceEncoderImpl::forward(const torch::Tensor& tokens,
                                              const torch::Tensor& pad) {
  const int64_t b = tokens.size(0), l = tokens.size(1);
  SequenceEncoding out;
  torch::Tensor x = torch::cat({cls_.expand({b, 1, options_.d_model}), tokens}, 1);
  // The class token is never padding, so no attention row is empty.
  torch::Tensor cls_pad = torch::zeros({b, 1}, torch::TensorOptions(torch::kBool).device(x.device()));
  out.pad = torch::cat({cls_pad, pad.defined() ? pad : cls_pad.expand({b, l})}, 1);
  for (size_t i = 0; i < blocks_->size(); ++i) {
    Attended a = blocks_[i]->as<TransformerBlock>()->forward(x, out.pad, options_.need_weights);
    x = a.output;
    out.traces.push_back({prefix_ + "/layer" + std::to_string(i) + "/self", a.weights});
  }
  out.tokens = norm_(x);
  out.vector = out.tokens.select(1, 0);
  return out;
}

EventEncoderImpl::EventEncoderImpl(int64_t buckets, const SequenceOptions& o) {
  code_ = register_module("code", torch::nn::Embedding(buckets, o.d_model));
  value_ = register_module("value", Linear(1, o.d_model));
  time_ = register_module("time", TimeEncoding(o.d_model));
  encoder_ = register_module("encoder", SequenceEncoder(o, "ehr_events"));
}

SequenceEncoding EventEncoderImpl::forward(const torch::Tensor& bucket, const torch::Tensor& value,
                                           const torch::Tensor& hours, const torch::Tensor& pad) {
  torch::Tensor tokens = code_(bucket) + value_(value.unsqueeze(-1)) + time_(hours);
  return encoder_(tokens, pad);
}

PatchEmbeddingImpl::PatchEmbeddingImpl(int64_t in_channels, int64_t image_size, int64_t patch,
                                       int64_t d) {
  TORCH_CHECK(patch > 0 && image_size % patch == 0, "PatchEmbedding: image size ", image_size,
              " is not a multiple of the patch ", patch);
  grid_ = image_size / patch;
  proj_ = register_module(
      "proj", torch::nn::Conv2d(torch::nn::Conv2dOptions(in_channels, d, patch).stride(patch)));
  pos_ = register_parameter("pos", torch::randn({1, grid_ * grid_, d}) * 0.02);
}

torch::Tensor PatchEmbeddingImpl::forward(const torch::Tensor& images) {
  return proj_(images).flatten(2).transpose(1, 2) + pos_;
}

GatedAttentionMilImpl::GatedAttentionMilImpl(int64_t d, int64_t hidden) {
  v_ = register_module("V", Linear(d, hidden));
  u_ = register_module("U", Linear(d, hidden));
  w_ = register_module("w", Linear(hidden, 1));
}

Attended GatedAttentionMilImpl::forward(const torch::Tensor& h, const torch::Tensor& pad) {
  torch::Tensor scores = w_(torch::tanh(v_(h)) * torch::sigmoid(u_(h))).squeeze(-1);  // [B, K]
  torch::Tensor a = MaskedSoftmax(scores, pad, 1);
  return {(a.unsqueeze(-1) * h).sum(1), a};
}

}  // namespace attune::models
