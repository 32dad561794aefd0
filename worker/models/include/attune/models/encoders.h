// Modality encoders: each turns one modality of a batch of patients into
// tokens (and, with a class token, a modality vector), returning the
// attention that produced them.
//
//   EHR events  code embedding + value + continuous-time encoding, then
//               temporal self-attention (TimeEncoding, EventEncoder)
//   imaging     ViT patch embedding with learned positions (PatchEmbedding;
//               the class token comes from SequenceEncoder), or bags of precomputed patch
//               features pooled with gated attention-MIL (GatedAttentionMil)
//   genomics    gene tokens: a learned gene embedding scaled by the
//               expression value or mutation flag (FeatureTokenizer)
//   static EHR  the same tokenizer over numeric columns
#pragma once

#include <torch/torch.h>

#include "attune/models/attention.h"
#include "attune/models/blocks.h"

namespace attune::models {

// Continuous-time encoding (Time2Vec, Kazemi et al. 2019) of event times in
// hours: te(t)[0] = ω0·t + φ0 and te(t)[i] = sin(ωi·t + φi), learned ω, φ
// (parameter `linear` [d, 1] with bias). t [..] → [.., d].
class TimeEncodingImpl : public torch::nn::Module {
 public:
  explicit TimeEncodingImpl(int64_t d_model);
  torch::Tensor forward(const torch::Tensor& hours);

 private:
  Linear linear_{nullptr};
};
TORCH_MODULE(TimeEncoding);

// Numeric features as tokens: token_j = x_j · w_j + b_j (one learned
// embedding w_j and bias b_j per feature, parameters `weight`, `bias`
// [F, d]). For genomics, feature j is gene j and x_j its standardised
// expression or 0/1 mutation flag, so attention runs gene to gene.
class FeatureTokenizerImpl : public torch::nn::Module {
 public:
  FeatureTokenizerImpl(int64_t features, int64_t d_model);
  torch::Tensor forward(const torch::Tensor& x);  // [B, F] → [B, F, d]

 private:
  torch::Tensor weight_, bias_;
};
TORCH_MODULE(FeatureTokenizer);

struct SequenceEncoding {
  torch::Tensor vector;   // [B, d]: the class token's output
  torch::Tensor tokens;   // [B, 1 + L, d]: class token first
  torch::Tensor pad;      // [B, 1 + L] bool (the class token never pads)
  AttentionTraces traces; // one per layer: [B, heads, 1+L, 1+L]
};

struct SequenceOptions {
  int64_t d_model = 32;
  int64_t heads = 4;
  int64_t layers = 1;
  double dropout = 0;
  AttentionKind attention = AttentionKind::kSoftmax;
  bool need_weights = false;  // linear attention: materialise token weights
};

// A class token and transformer blocks over a token sequence; the shared
// tail of every sequence encoder. Parameters: cls [1, 1, d], blocks.<i>,
// norm (final LayerNorm).
class SequenceEncoderImpl : public torch::nn::Module {
 public:
  SequenceEncoderImpl(const SequenceOptions& options, std::string trace_prefix);
  // tokens [B, L, d]; pad [B, L] or undefined.
  SequenceEncoding forward(const torch::Tensor& tokens, const torch::Tensor& pad = {});

 private:
  SequenceOptions options_;
  std::string prefix_;
  torch::Tensor cls_;
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
};
TORCH_MODULE(SequenceEncoder);

// EHR events → temporal self-attention: token = code(bucket) + (value·w_v +
// b_v) + TimeEncoding(t). Parameters: code [buckets, d], value (Linear 1 → d
// with bias), time, encoder (a SequenceEncoder whose traces are
// "ehr_events/layer<i>/self").
class EventEncoderImpl : public torch::nn::Module {
 public:
  EventEncoderImpl(int64_t buckets, const SequenceOptions& options);
  // bucket [B, L] int64, value [B, L], hours [B, L], pad [B, L] bool.
  SequenceEncoding forward(const torch::Tensor& bucket, const torch::Tensor& value,
                           const torch::Tensor& hours, const torch::Tensor& pad);

 private:
  torch::nn::Embedding code_{nullptr};
  Linear value_{nullptr};
  TimeEncoding time_{nullptr};
  SequenceEncoder encoder_{nullptr};
};
TORCH_MODULE(EventEncoder);

// ViT patch embedding (Dosovitskiy et al. 2021): a patch×patch conv with
// stride `patch` (parameter `proj`, [d, C, p, p] with bias) turns an image
// into (H/p)(W/p) tokens, plus learned positions (`pos` [1, N, d]).
class PatchEmbeddingImpl : public torch::nn::Module {
 public:
  PatchEmbeddingImpl(int64_t in_channels, int64_t image_size, int64_t patch, int64_t d_model);
  torch::Tensor forward(const torch::Tensor& images);  // [B, C, H, W] → [B, N, d]
  int64_t grid() const { return grid_; }               // patches per side

 private:
  int64_t grid_;
  torch::nn::Conv2d proj_{nullptr};
  torch::Tensor pos_;
};
TORCH_MODULE(PatchEmbedding);

// Gated attention-MIL pooling (Ilse et al. 2018):
//   a_k = softmax_k( wᵀ (tanh(V h_k) ⊙ σ(U h_k)) ),  z = Σ_k a_k h_k
// Parameters V [hidden, d] (bias), U [hidden, d] (bias), w [1, hidden]
// (bias). Padding instances get a_k = 0.
class GatedAttentionMilImpl : public torch::nn::Module {
 public:
  GatedAttentionMilImpl(int64_t d_model, int64_t hidden);
  // h [B, K, d]; pad [B, K] or undefined. Output z [B, d]; weights a [B, K].
  Attended forward(const torch::Tensor& h, const torch::Tensor& pad = {});

 private:
  Linear v_{nullptr}, u_{nullptr}, w_{nullptr};
};
TORCH_MODULE(GatedAttentionMil);

}  // namespace attune::models
