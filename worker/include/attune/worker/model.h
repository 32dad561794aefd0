// The multimodal attention model (LibTorch). Include only from worker
// translation units that need tensors.
//
// Per modality, the patient's data becomes a token sequence:
//   ehr_static  one token per static feature: x_j * W_j + b_j (feature tokenizer)
//   ehr_events  code embedding + value * w + time encoding (temporal tokens)
//   imaging     patch features -> linear projection + patch position embedding
//   genomics    gene embedding * expression + gene bias (gene tokens)
// Each modality has a learned class token and one transformer block of
// multi-head self-attention; its class-token output is the modality vector.
// Across modalities, attention pooling gives modality weights β (softmax over
// the modalities the patient has; missing ones get weight 0) and the fused
// vector Σ β_m v_m feeds a small classifier that outputs one logit.
//
// forward() returns the logits together with β and each modality's
// head-averaged self-attention weights, so every prediction can be audited.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "attune/common/config.h"

namespace attune::worker {

inline constexpr int kNumModalities = 4;
const std::vector<std::string>& ModalityNames();  // ehr_static, ehr_events, imaging, genomics

// A batch of patients as tensors (B = batch size).
struct Batch {
  torch::Tensor static_x;       // [B, F] float
  torch::Tensor event_bucket;   // [B, L] int64
  torch::Tensor event_value;    // [B, L] float
  torch::Tensor event_time;     // [B, L] float (hours)
  torch::Tensor event_pad;      // [B, L] bool, true = padding
  torch::Tensor imaging;        // [B, P, D] float
  torch::Tensor genomics;       // [B, G] float
  torch::Tensor present;        // [B, 4] bool: which modalities the patient has
  torch::Tensor label;          // [B] float
};

struct ModelOutput {
  torch::Tensor logits;                  // [B]
  torch::Tensor beta;                    // [B, 4], rows sum to 1
  std::vector<torch::Tensor> attention;  // per modality [B, 1+L, 1+L], rows sum to 1
};

// Self-attention block over a token sequence with a class token.
class ModalityEncoderImpl : public torch::nn::Module {
 public:
  ModalityEncoderImpl(int d_model, int heads, double dropout);
  // tokens [B, L, d]; pad [B, L] bool (true = padding) or undefined.
  // Returns the class-token output [B, d] and attention weights [B, 1+L, 1+L].
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& tokens,
                                                  const torch::Tensor& pad);

 private:
  torch::Tensor cls_;
  torch::nn::MultiheadAttention attn_{nullptr};
  torch::nn::LayerNorm norm1_{nullptr}, norm2_{nullptr};
  torch::nn::Sequential ff_{nullptr};
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(ModalityEncoder);

class MultimodalAttentionNetImpl : public torch::nn::Module {
 public:
  explicit MultimodalAttentionNetImpl(const ModelConfig& config);
  ModelOutput forward(const Batch& batch);
  const ModelConfig& config() const { return config_; }

 private:
  ModelConfig config_;
  // Tokenizers.
  torch::Tensor static_w_, static_b_;     // [F, d]
  torch::nn::Embedding event_code_{nullptr};
  torch::nn::Linear event_value_{nullptr}, event_time_{nullptr};
  torch::nn::Linear patch_proj_{nullptr};
  torch::Tensor patch_pos_;               // [P, d]
  torch::Tensor gene_w_, gene_b_;         // [G, d]
  // Encoders, one per modality.
  std::vector<ModalityEncoder> encoders_;
  // Fusion across modalities and the classifier.
  torch::nn::Linear fuse_key_{nullptr};
  torch::Tensor fuse_query_;              // [d]
  torch::nn::Sequential head_{nullptr};
};
TORCH_MODULE(MultimodalAttentionNet);

// FedProx's proximal term μ/2 · Σ ||p − a||² over parameters and their
// anchors (the global model's values), differentiable in `params`.
torch::Tensor ProximalTerm(const std::vector<torch::Tensor>& params,
                           const std::vector<torch::Tensor>& anchors, double mu);

}  // namespace attune::worker
