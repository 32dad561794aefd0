// The study's multimodal attention model, assembled from ModelConfig out of
// the model zoo (worker/models). Include only from worker translation units
// that need tensors.
//
// Per modality the patient's data becomes tokens, and an encoder attends
// over them:
//   ehr_static  one token per numeric feature (FeatureTokenizer) → self-attention
//   ehr_events  code + value + continuous-time encoding → temporal self-attention
//   imaging     precomputed patch features → self-attention, or gated
//               attention-MIL; raw images → ViT patches or a hybrid CNN
//   genomics    gene tokens (embedding × expression) → self-attention
// (softmax or efficient linear attention, per model.attention). The fusion
// (model.fusion: hierarchical, cross, coattention or persam) makes one
// vector per patient and the modality weights β (a modality the patient
// lacks is masked: β = 0, never zero-filled data), and a classifier gives
// one logit.
//
// forward() returns the logit with β and every attention module's weights
// (AttentionTrace, named "<modality>/layer<i>/self", "fusion/...") so every
// prediction can be audited and explained.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/models/attention.h"
#include "attune/models/encoders.h"
#include "attune/models/fusion.h"
#include "attune/worker/site_data.h"

namespace attune::worker {

inline constexpr int kNumModalities = 4;  // the slots of attune::ModalityNames()

// A batch of patients as tensors (B = batch size). Tensors of a modality
// the model does not have may be undefined.
struct Batch {
  torch::Tensor static_x;       // [B, F] float
  torch::Tensor event_bucket;   // [B, L] int64
  torch::Tensor event_value;    // [B, L] float
  torch::Tensor event_time;     // [B, L] float (hours)
  torch::Tensor event_pad;      // [B, L] bool, true = padding
  torch::Tensor imaging;        // [B, P, D] features or [B, C, S, S] images
  torch::Tensor genomics;       // [B, G] float
  torch::Tensor present;        // [B, 4] bool: which modalities the patient has
  torch::Tensor label;          // [B] float
};

// The patients' tensors for model `m` (their split does not matter).
Batch ToBatch(const std::vector<const Patient*>& patients, const ModelConfig& m);

// The patients `idx` [n] int64 of a batch.
Batch SelectRows(const Batch& b, const torch::Tensor& idx);

struct ModelOutput {
  torch::Tensor logits;            // [B]
  torch::Tensor beta;              // [B, 4]: rows sum to 1 over the modalities present
  torch::Tensor aux_loss;          // scalar to add to the task loss, or undefined
  models::AttentionTraces traces;  // every attention module's weights
};

// The attention mass each input token of `modality` ("ehr_static",
// "ehr_events", "imaging", "genomics") receives, [B, L] without the class
// token; undefined when `out` has no trace of the modality's encoder.
// Hierarchical fusion pools a modality's encoded tokens with its α
// attention: that is where the mass starts (other fusions read the
// modality's class token, so all of it starts there). Attention rollout
// (Abnar & Zuidema, 2020) then carries it back to the inputs through each
// self-attention layer, last to first: half stays with the token (the
// residual path), half goes to what the token attended to (mean over
// heads). Gated attention-MIL imaging: the MIL weights.
torch::Tensor TokenAttention(const ModelOutput& out, const std::string& modality);

class MultimodalAttentionNetImpl : public torch::nn::Module {
 public:
  // full_attention: linear attention also materialises its O(N²)
  // token-to-token weights (for `attune explain`); the parameters and the
  // outputs are the same either way.
  explicit MultimodalAttentionNetImpl(const ModelConfig& config, bool full_attention = false);
  ModelOutput forward(const Batch& batch);
  const ModelConfig& config() const { return config_; }

 private:
  // One modality after its encoder: tokens [B, L, d] with padding and the
  // modality vector [B, d].
  struct Encoded {
    torch::Tensor tokens, pad, vector;
  };
  std::vector<Encoded> Encode(const Batch& x, models::AttentionTraces* traces);
  torch::Tensor Absent(const Batch& x, int m) const;  // [B, 1] bool

  ModelConfig config_;
  std::vector<int> modalities_;  // indexes into ModalityNames() this model has
  // Encoders (only those of the model's modalities are registered).
  models::FeatureTokenizer static_tokens_{nullptr}, gene_tokens_{nullptr};
  models::SequenceEncoder static_encoder_{nullptr}, imaging_encoder_{nullptr},
      gene_encoder_{nullptr};
  models::EventEncoder events_{nullptr};
  models::Linear patch_proj_{nullptr};
  torch::Tensor patch_pos_;
  models::GatedAttentionMil mil_{nullptr};
  models::PatchEmbedding vit_{nullptr};
  models::HybridCnn cnn_{nullptr};
  // Fusion (one of) and the classifier.
  models::HierarchicalFusion hierarchical_{nullptr};
  torch::Tensor token_type_;
  models::SequenceEncoder cross_{nullptr};
  models::CoAttention coattention_{nullptr};
  models::PersAm persam_{nullptr};
  torch::nn::Sequential head_{nullptr};
};
TORCH_MODULE(MultimodalAttentionNet);

// FedProx's proximal term μ/2 · Σ ||p − a||² over parameters and their
// anchors (the global model's values), differentiable in `params`.
torch::Tensor ProximalTerm(const std::vector<torch::Tensor>& params,
                           const std::vector<torch::Tensor>& anchors, double mu);

}  // namespace attune::worker
