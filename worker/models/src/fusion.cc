#include "attune/models/fusion.h"

#include <cmath>

#include "attune/models/blocks.h"

namespace attune::models {
namespace {

torch::Tensor NoPad(const torch::Tensor& tokens) {
  return torch::zeros({tokens.size(0), tokens.size(1)},
                      torch::TensorOptions(torch::kBool).device(tokens.device()));
}

torch::Tensor PadOf(const ModalityTokens& m) { return m.pad.defined() ? m.pad : NoPad(m.tokens); }

// Mean over the last axis of `x` [B, P, K] where `pad` [B, K] is false;
// rows with nothing unpadded give 1 (no modulation).
torch::Tensor MeanOrOne(const torch::Tensor& x, const torch::Tensor& pad) {
  torch::Tensor keep = pad.logical_not().to(x.dtype()).unsqueeze(1);  // [B, 1, K]
  torch::Tensor count = keep.sum(-1);                                 // [B, 1]
  torch::Tensor mean = (x * keep).sum(-1) / count.clamp_min(1.0);
  return torch::where(count > 0, mean, torch::ones_like(mean));
}

}  // namespace

AttentionPoolImpl::AttentionPoolImpl(int64_t d) {
  proj_ = register_module("proj", Linear(d, d));
  // Zero, like the attention queries: α starts uniform over the tokens.
  query_ = register_parameter("query", torch::zeros({d}));
}

Attended AttentionPoolImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  torch::Tensor scores = torch::tanh(proj_(x)).matmul(query_);  // [B, L]
  torch::Tensor alpha = MaskedSoftmax(scores, mask, 1);
  return {(alpha.unsqueeze(-1) * x).sum(1), alpha};
}

HierarchicalFusionImpl::HierarchicalFusionImpl(int64_t d, std::vector<std::string> modalities)
    : modalities_(std::move(modalities)) {
  alpha_ = register_module("alpha", torch::nn::ModuleList());
  for (size_t m = 0; m < modalities_.size(); ++m) alpha_->push_back(AttentionPool(d));
  beta_ = register_module("beta", AttentionPool(d));
}

FusionOutput HierarchicalFusionImpl::forward(const std::vector<ModalityTokens>& inputs,
                                             const torch::Tensor& present) {
  TORCH_CHECK(inputs.size() == modalities_.size(), "HierarchicalFusion: ", inputs.size(),
              " modalities given, ", modalities_.size(), " expected");
  FusionOutput out;
  std::vector<torch::Tensor> pooled;
  for (size_t m = 0; m < inputs.size(); ++m) {
    const ModalityTokens& in = inputs[m];
    torch::Tensor absent = present.select(1, m).logical_not().unsqueeze(1);  // [B, 1]
    Attended a = alpha_[m]->as<AttentionPool>()->forward(in.tokens, PadOf(in).logical_or(absent));
    pooled.push_back(a.output);
    out.traces.push_back({"fusion/alpha/" + modalities_[m], a.weights});
  }
  Attended b = beta_(torch::stack(pooled, 1), present.logical_not());
  out.vector = b.output;
  out.beta = b.weights;
  out.traces.push_back({"fusion/beta", b.weights});
  return out;
}

PersAmImpl::PersAmImpl(const PersAmOptions& o, int64_t instance_modalities) : options_(o) {
  const int64_t d = o.d_model;
  class_tokens_ = register_parameter("class_tokens", torch::randn({1, o.classes, d}) * 0.02);
  type_instance_ =
      register_parameter("type_instance", torch::randn({instance_modalities, d}) * 0.02);
  type_clinical_ = register_parameter("type_clinical", torch::randn({d}) * 0.02);
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.layers; ++i) {
    blocks_->push_back(TransformerBlock(TransformerOptions{d, o.heads, 2, o.dropout}));
  }
  norm_ = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
  q_ = register_module("q", Linear(d, d));
  k_ = register_module("k", Linear(d, d));
  v_ = register_module("v", Linear(d, d));
  classifier_ = register_module(
      "classifier", torch::nn::Sequential(Linear(d, d), torch::nn::GELU(),
                                          Linear(d, o.classes)));
}

PersAmImpl::Output PersAmImpl::forward(const std::vector<ModalityTokens>& instances,
                                       const ModalityTokens& clinical,
                                       const torch::Tensor& labels) {
  TORCH_CHECK(static_cast<int64_t>(instances.size()) == type_instance_.size(0),
              "PersAm: ", instances.size(), " instance modalities given, ",
              type_instance_.size(0), " expected");
  const int64_t b = clinical.tokens.size(0), c = options_.classes, d = options_.d_model;
  std::vector<torch::Tensor> inst, inst_pad;
  std::vector<int64_t> lengths;
  for (size_t m = 0; m < instances.size(); ++m) {
    inst.push_back(instances[m].tokens + type_instance_[m]);
    inst_pad.push_back(PadOf(instances[m]));
    lengths.push_back(instances[m].tokens.size(1));
  }
  torch::Tensor pad_l = torch::cat(inst_pad, 1);  // [B, L]
  torch::Tensor pad_t = PadOf(clinical);          // [B, Mc]
  const int64_t l = pad_l.size(1), mc = pad_t.size(1);
  torch::Tensor cls = class_tokens_.expand({b, c, d});
  torch::Tensor x = torch::cat({cls, torch::cat(inst, 1), clinical.tokens + type_clinical_}, 1);
  torch::Tensor pad = torch::cat({NoPad(cls), pad_l, pad_t}, 1);

  Output out;
  for (size_t i = 0; i < blocks_->size(); ++i) {
    Attended a = blocks_[i]->as<TransformerBlock>()->forward(x, pad);
    x = a.output;
    out.traces.push_back({"fusion/layer" + std::to_string(i) + "/self", a.weights});
  }
  x = norm_(x);
  torch::Tensor q = q_(x), k = k_(x), v = v_(x);
  auto part = [&](const torch::Tensor& t, int64_t from, int64_t len) { return t.narrow(1, from, len); };
  torch::Tensor q_c = part(q, 0, c), k_l = part(k, c, l), v_l = part(v, c, l);
  torch::Tensor q_t = part(q, c + l, mc), k_t = part(k, c + l, mc);
  const double scale = 1.0 / std::sqrt(double(d));
  auto s = [&](const torch::Tensor& a, const torch::Tensor& bt) {
    return torch::sigmoid(torch::matmul(a, bt.transpose(1, 2)) * scale);
  };
  // Padded instances attend to nothing: a = ψ = 0 there, hence a' = 0.
  torch::Tensor class_wise = s(k_l, q_c).masked_fill(pad_l.unsqueeze(-1), 0.0);  // a [B, L, C]
  torch::Tensor psi = MeanOrOne(s(k_l, q_t), pad_t).masked_fill(pad_l, 0.0);     // ψ [B, L]
  torch::Tensor phi = MeanOrOne(s(q_c, k_t), pad_t);                             // φ [B, C]
  torch::Tensor explanatory = class_wise * phi.unsqueeze(1) * psi.unsqueeze(-1);  // a' [B, L, C]
  torch::Tensor a_l = std::get<0>(explanatory.max(-1));                    // [B, L]
  torch::Tensor total = a_l.sum(1, true);                                  // [B, 1]
  torch::Tensor share = a_l / total.clamp_min(1e-12);
  out.vector = (share.unsqueeze(-1) * v_l).sum(1);
  out.logits = classifier_->forward(out.vector);
  std::vector<torch::Tensor> shares;
  int64_t from = 0;
  for (int64_t len : lengths) {
    shares.push_back(share.narrow(1, from, len).sum(1));
    from += len;
  }
  out.beta = torch::stack(shares, 1);
  if (labels.defined()) {
    torch::Tensor bag = std::get<0>(explanatory.max(1));  // [B, C]
    torch::Tensor target = torch::one_hot(labels, c).to(bag.dtype());
    out.aux_loss = options_.mil_weight * torch::binary_cross_entropy(bag, target);
  }
  out.traces.push_back({"fusion/class_attention", class_wise});
  out.traces.push_back({"fusion/exploratory", psi});
  out.traces.push_back({"fusion/relevance", phi});
  out.traces.push_back({"fusion/explanatory", explanatory});
  return out;
}

}  // namespace attune::models
