#include "attune/worker/model.h"

#include <cmath>

namespace attune::worker {
namespace {

// Sinusoidal time features of event times in hours, at periods of 1 h, 6 h,
// 24 h and 7 days, plus the scaled time itself: [B, L, 9].
torch::Tensor TimeFeatures(const torch::Tensor& hours) {
  std::vector<torch::Tensor> parts = {(hours / 100.0).unsqueeze(-1)};
  for (double period : {1.0, 6.0, 24.0, 168.0}) {
    const double w = 2 * M_PI / period;
    parts.push_back(torch::sin(hours * w).unsqueeze(-1));
    parts.push_back(torch::cos(hours * w).unsqueeze(-1));
  }
  return torch::cat(parts, -1);
}

}  // namespace

const std::vector<std::string>& ModalityNames() {
  static const std::vector<std::string> names = {"ehr_static", "ehr_events", "imaging",
                                                 "genomics"};
  return names;
}

ModalityEncoderImpl::ModalityEncoderImpl(int d, int heads, double dropout) {
  cls_ = register_parameter("cls", torch::randn({1, 1, d}) * 0.02);
  attn_ = register_module(
      "attn", torch::nn::MultiheadAttention(
                  torch::nn::MultiheadAttentionOptions(d, heads).dropout(dropout)));
  norm1_ = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  norm2_ = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  ff_ = register_module("ff", torch::nn::Sequential(torch::nn::Linear(d, 2 * d), torch::nn::GELU(),
                                                    torch::nn::Linear(2 * d, d)));
  drop_ = register_module("drop", torch::nn::Dropout(dropout));
}

std::pair<torch::Tensor, torch::Tensor> ModalityEncoderImpl::forward(const torch::Tensor& tokens,
                                                                     const torch::Tensor& pad) {
  const int64_t b = tokens.size(0);
  torch::Tensor x = torch::cat({cls_.expand({b, 1, tokens.size(2)}), tokens}, 1);  // [B, 1+L, d]
  torch::Tensor mask;
  if (pad.defined()) {
    // The class token is never padding, so no attention row is empty.
    mask = torch::cat({torch::zeros({b, 1}, pad.options()), pad}, 1);
  }
  torch::Tensor seq = x.transpose(0, 1);  // [1+L, B, d]: MultiheadAttention is sequence-first
  auto [out, weights] = attn_->forward(seq, seq, seq, mask, /*need_weights=*/true);
  torch::Tensor h = norm1_(x + drop_(out.transpose(0, 1)));
  h = norm2_(h + drop_(ff_->forward(h)));
  return {h.select(1, 0), weights};
}

MultimodalAttentionNetImpl::MultimodalAttentionNetImpl(const ModelConfig& c) : config_(c) {
  const int d = c.d_model;
  const int64_t f = std::max(c.static_features, 1), g = std::max(c.genes, 1),
                p = std::max(c.imaging_patches, 1), di = std::max(c.imaging_dim, 1);
  static_w_ = register_parameter("static_w", torch::randn({f, d}) * (1.0 / std::sqrt(d)));
  static_b_ = register_parameter("static_b", torch::randn({f, d}) * 0.02);
  event_code_ = register_module("event_code", torch::nn::Embedding(c.event_buckets, d));
  event_value_ = register_module("event_value", torch::nn::Linear(1, d));
  event_time_ = register_module("event_time", torch::nn::Linear(9, d));
  patch_proj_ = register_module("patch_proj", torch::nn::Linear(di, d));
  patch_pos_ = register_parameter("patch_pos", torch::randn({p, d}) * 0.02);
  gene_w_ = register_parameter("gene_w", torch::randn({g, d}) * (1.0 / std::sqrt(d)));
  gene_b_ = register_parameter("gene_b", torch::randn({g, d}) * 0.02);
  for (const auto& name : ModalityNames()) {
    encoders_.push_back(
        register_module("enc_" + name, ModalityEncoder(d, c.heads, c.dropout)));
  }
  fuse_key_ = register_module("fuse_key", torch::nn::Linear(d, d));
  fuse_query_ = register_parameter("fuse_query", torch::randn({d}) * (1.0 / std::sqrt(d)));
  head_ = register_module("head", torch::nn::Sequential(
                                      torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})),
                                      torch::nn::Linear(d, d), torch::nn::GELU(),
                                      torch::nn::Dropout(c.dropout), torch::nn::Linear(d, 1)));
}

ModelOutput MultimodalAttentionNetImpl::forward(const Batch& x) {
  const int64_t b = x.label.size(0);
  // Missing modalities: every token is padding except the class token.
  auto all_pad = [&](int m, int64_t len) {
    return x.present.select(1, m).logical_not().unsqueeze(1).expand({b, len});
  };
  std::vector<torch::Tensor> tokens(kNumModalities), pads(kNumModalities);
  tokens[0] = x.static_x.unsqueeze(-1) * static_w_ + static_b_;
  pads[0] = all_pad(0, tokens[0].size(1));
  tokens[1] = event_code_(x.event_bucket) + event_value_(x.event_value.unsqueeze(-1)) +
              event_time_(TimeFeatures(x.event_time));
  pads[1] = x.event_pad;
  tokens[2] = patch_proj_(x.imaging) + patch_pos_;
  pads[2] = all_pad(2, tokens[2].size(1));
  tokens[3] = x.genomics.unsqueeze(-1) * gene_w_ + gene_b_;
  pads[3] = all_pad(3, tokens[3].size(1));

  ModelOutput out;
  std::vector<torch::Tensor> vecs;
  for (int m = 0; m < kNumModalities; ++m) {
    auto [v, w] = encoders_[m]->forward(tokens[m], pads[m]);
    vecs.push_back(v);
    out.attention.push_back(w);
  }
  torch::Tensor v = torch::stack(vecs, 1);                          // [B, M, d]
  torch::Tensor scores = torch::tanh(fuse_key_(v)).matmul(fuse_query_);  // [B, M]
  scores = scores.masked_fill(x.present.logical_not(), -1e9);
  out.beta = torch::softmax(scores, 1);
  torch::Tensor fused = (out.beta.unsqueeze(-1) * v).sum(1);       // [B, d]
  out.logits = head_->forward(fused).squeeze(-1);
  return out;
}

torch::Tensor ProximalTerm(const std::vector<torch::Tensor>& params,
                           const std::vector<torch::Tensor>& anchors, double mu) {
  TORCH_CHECK(params.size() == anchors.size(), "ProximalTerm: ", params.size(),
              " parameters but ", anchors.size(), " anchors");
  torch::Tensor sum = torch::zeros({}, torch::kFloat32);
  for (size_t i = 0; i < params.size(); ++i) sum = sum + (params[i] - anchors[i]).pow(2).sum();
  return sum * (mu / 2);
}

}  // namespace attune::worker
