// Fusion across modalities: how the per-modality tokens of a patient become
// one vector, and the attention that says which modality and which token
// mattered.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "attune/models/attention.h"

namespace attune::models {

// Additive attention pooling (Bahdanau; HAN, Yang et al. 2016):
//   α_j = softmax_j( qᵀ tanh(W x_j + b) ),  out = Σ_j α_j x_j
// Parameters: proj [d, d] (bias), query [d]. Masked tokens get α = 0; a
// fully masked row gives a zero vector and zero weights.
class AttentionPoolImpl : public torch::nn::Module {
 public:
  explicit AttentionPoolImpl(int64_t d_model);
  // x [B, L, d]; mask [B, L] bool (true = excluded) or undefined.
  // Output [B, d]; weights [B, L].
  Attended forward(const torch::Tensor& x, const torch::Tensor& mask = {});

 private:
  Linear proj_{nullptr};
  torch::Tensor query_;
};
TORCH_MODULE(AttentionPool);

// One modality's tokens as fusion sees them.
struct ModalityTokens {
  torch::Tensor tokens;  // [B, L, d]
  torch::Tensor pad;     // [B, L] bool, or undefined = none padded
};

struct FusionOutput {
  torch::Tensor vector;   // [B, d]
  torch::Tensor beta;     // [B, M]: weight of each modality, rows sum to 1 over present ones
  AttentionTraces traces; // module-specific (α per modality, class-wise attention, ...)
  torch::Tensor aux_loss; // scalar added to the task loss (PersAM's MIL term), or undefined
};

// Hierarchical attention (DESIGN.md; HAN): α within each modality pools its
// tokens into h_m (AttentionPool per modality, `alpha.<m>`), β across the
// modalities the patient has pools the h_m (`beta`). Parameters alpha.<i>
// (one AttentionPool per modality, in order) and beta. An absent modality
// (present false) has all its tokens masked: α = 0 and β = 0. Traces: "fusion/alpha/
// <m>" [B, L_m] and "fusion/beta" [B, M].
class HierarchicalFusionImpl : public torch::nn::Module {
 public:
  HierarchicalFusionImpl(int64_t d_model, std::vector<std::string> modalities);
  // present [B, M] bool: which modalities each patient has.
  FusionOutput forward(const std::vector<ModalityTokens>& inputs, const torch::Tensor& present);

 private:
  std::vector<std::string> modalities_;
  torch::nn::ModuleList alpha_{nullptr};
  AttentionPool beta_{nullptr};
};
TORCH_MODULE(HierarchicalFusion);

struct PersAmOptions {
  int64_t d_model = 32;
  int64_t heads = 4;
  int64_t layers = 1;
  int64_t classes = 2;
  double dropout = 0;
  double mil_weight = 1.0;   // λ of the MIL term
};

// PersAM (personalized attention, file 002 of the literature) generalised
// to several instance modalities. Instance tokens (events, image patches,
// genes) get a learned token-type embedding per modality; clinical tokens
// (static EHR) their own; C class tokens get none. A transformer runs over
// [class; instances; clinical]; then, with one shared q/k/v projection and
// s(x, y) = σ(xᵀy/√d):
//   class-wise         a_{l,c} = s(q_c, k_l)
//   exploratory        ψ_l     = mean_m s(q_m, k_l)     (m: clinical tokens)
//   class relevance    φ_c     = mean_m s(q_c, k_m)
//   explanatory        a'_{l,c} = a_{l,c} · φ_c · ψ_l
//   a'_l = max_c a'_{l,c};  z = Σ_l a'_l v_l / Σ_l a'_l;  logits = MLP(z)
// A patient without clinical tokens gets ψ = φ = 1. The MIL term is
//   λ · mean_c BCE(max_l a'_{l,c}, y_c)   (a bag is positive for a class if
// any instance is), returned as aux_loss when labels are given. For one
// output logit (binary tasks) `logit = logits[1] − logits[0]`.
// Parameters: class_tokens [1, C, d], type_instance [M_instance, d] (added to
// every token of that modality), type_clinical [d] (added to every clinical
// token), blocks.<i> (pre-norm TransformerBlock, ff_mult 2), norm (LayerNorm
// after the blocks), q, k, v (Linear d → d with bias), classifier
// (Linear d → d, GELU, Linear d → C; names classifier.0, classifier.2).
// Padded instances get a = ψ = a' = 0 (padded clinical tokens are left out
// of the means); a patient whose instances are all padded gets z = 0. Σ_l a'_l is clamped below at 1e-12.
// Traces: "fusion/class_attention" a [B, L, C], "fusion/exploratory" ψ
// [B, L], "fusion/relevance" φ [B, C], "fusion/explanatory" a' [B, L, C],
// and the encoder's layers.
class PersAmImpl : public torch::nn::Module {
 public:
  PersAmImpl(const PersAmOptions& options, int64_t instance_modalities);
  struct Output {
    torch::Tensor logits;    // [B, C]
    torch::Tensor vector;    // z [B, d]
    torch::Tensor aux_loss;  // scalar, defined when labels given
    torch::Tensor beta;      // [B, M_instance]: share of Σ a'_l per instance modality
    AttentionTraces traces;
  };
  // instances: one entry per instance modality; clinical [B, Mc, d] with its
  // pad (a row all padded = no clinical record); labels [B] int64 or undefined.
  Output forward(const std::vector<ModalityTokens>& instances, const ModalityTokens& clinical,
                 const torch::Tensor& labels = {});

 private:
  PersAmOptions options_;
  torch::Tensor class_tokens_, type_instance_, type_clinical_;
  torch::nn::ModuleList blocks_{nullptr};
  torch::nn::LayerNorm norm_{nullptr};
  Linear q_{nullptr}, k_{nullptr}, v_{nullptr};
  torch::nn::Sequential classifier_{nullptr};
};
TORCH_MODULE(PersAm);

}  // namespace attune::models
