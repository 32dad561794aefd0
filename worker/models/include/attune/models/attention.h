// Attention modules of the model zoo (DESIGN.md, "Models"). LibTorch only:
// this library needs nothing but LibTorch, so it builds on its own (on a GPU
// machine too). Every module returns its attention weights with its output,
// so the audit and `attune explain` can read what the model attended to.
//
// Conventions: batch first; `[B, L, d]` token sequences; boolean masks are
// true where a token may NOT be attended to (padding). Weights are
// probabilities over keys: every row sums to 1, masked keys get exactly 0.
// A row whose keys are all masked gets zero weights and a zero output
// (never NaN), so a patient without a modality is handled by masking.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "attune/models/linear.h"

namespace attune::models {

// The output of an attention and the weights that produced it.
struct Attended {
  torch::Tensor output;
  torch::Tensor weights;
};

// What one attention module attended to, named for export
// (e.g. "ehr_events/layer0/self", "fusion/beta").
struct AttentionTrace {
  std::string name;
  torch::Tensor weights;  // [B, ...]: layout documented by the module that made it
};
using AttentionTraces = std::vector<AttentionTrace>;

// softmax(q kᵀ · scale + bias, masked) v.
//   q [..., Lq, dk], k [..., Lk, dk], v [..., Lk, dv]
//   mask: bool, broadcastable to [..., Lq, Lk], true = masked out (may be undefined)
//   bias: float, broadcastable to [..., Lq, Lk], added to the logits (may be undefined)
//   scale: 0 means 1/sqrt(dk)
// Returns output [..., Lq, dv] and weights [..., Lq, Lk].
Attended ScaledDotProductAttention(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& mask = {},
                                   const torch::Tensor& bias = {}, double scale = 0);

// Masked softmax over `dim`: masked entries get 0, a slice with every entry
// masked gets all zeros. `mask` is bool, broadcastable to `logits`.
torch::Tensor MaskedSoftmax(const torch::Tensor& logits, const torch::Tensor& mask, int64_t dim);

struct MultiHeadOptions {
  int64_t d_model = 32;  // query width and output width
  int64_t heads = 4;     // d_model must be a multiple
  int64_t kv_dim = 0;    // key/value width; 0 = d_model (self-attention)
  double dropout = 0;    // on the attention weights, training only
};

// Multi-head attention (Vaswani et al.): per head softmax(QKᵀ/√dh)V, heads
// concatenated and projected. Self-attention: forward(x, x, x); cross-
// attention: forward(a, b, b), queries from one modality, keys and values
// from another. Parameters: q_proj [d, d], k_proj/v_proj [d, kv_dim],
// out_proj [d, d], each with a bias (torch.nn.MultiheadAttention's maths).
class MultiHeadAttentionImpl : public torch::nn::Module {
 public:
  explicit MultiHeadAttentionImpl(const MultiHeadOptions& options);
  // query [B, Lq, d]; key, value [B, Lk, kv_dim]; key_padding_mask [B, Lk]
  // bool (may be undefined). Weights: [B, heads, Lq, Lk].
  Attended forward(const torch::Tensor& query, const torch::Tensor& key,
                   const torch::Tensor& value, const torch::Tensor& key_padding_mask = {});
  const MultiHeadOptions& options() const { return options_; }

 private:
  MultiHeadOptions options_;
  Linear q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, out_proj_{nullptr};
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(MultiHeadAttention);

// Efficient attention (Shen et al. 2021, as in DAE-Former): per head
//   E(Q, K, V) = ρq(Q) (ρk(K)ᵀ V)
// with ρq a softmax over each query's features and ρk a softmax over the
// tokens for each key feature (padding excluded). Cost O(N·dh²) instead of
// O(N²·dh); no 1/√d scaling. The implied token-to-token attention
// ρq(Q) ρk(K)ᵀ is a proper attention (rows sum to 1) but costs O(N²): it is
// materialised only when `need_weights` is set (for `attune explain`).
// Otherwise the weights returned are the key maps ρk(K)ᵀ [B, heads, dh, N]:
// how each feature of the global context is pooled over the tokens.
class LinearAttentionImpl : public torch::nn::Module {
 public:
  explicit LinearAttentionImpl(const MultiHeadOptions& options);
  // x [B, N, d] attends to itself, or to `context` [B, M, kv_dim] when given.
  Attended forward(const torch::Tensor& x, const torch::Tensor& key_padding_mask = {},
                   bool need_weights = false, const torch::Tensor& context = {});

 private:
  MultiHeadOptions options_;
  Linear q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, out_proj_{nullptr};
};
TORCH_MODULE(LinearAttention);

// Co-attention (both directions, then fused): a attends to b and b to a
// with two cross-attentions, each stream keeps a residual, and the fused
// vector is Linear([mean(a + a→b); mean(b + b→a)]) over unmasked tokens.
struct CoAttended {
  torch::Tensor fused;       // [B, d]
  torch::Tensor a, b;        // [B, La, d], [B, Lb, d] after the residual
  torch::Tensor weights_ab;  // [B, heads, La, Lb]: a's queries over b
  torch::Tensor weights_ba;  // [B, heads, Lb, La]
};
class CoAttentionImpl : public torch::nn::Module {
 public:
  CoAttentionImpl(int64_t d_model, int64_t heads, double dropout = 0);
  CoAttended forward(const torch::Tensor& a, const torch::Tensor& b,
                     const torch::Tensor& pad_a = {}, const torch::Tensor& pad_b = {});

 private:
  MultiHeadAttention ab_{nullptr}, ba_{nullptr};
  Linear fuse_{nullptr};
};
TORCH_MODULE(CoAttention);

// Shifted-window attention (Swin, Liu et al. 2021) on a token grid: windows
// of window×window tokens attend within themselves, with a learned relative
// position bias per head; a nonzero `shift` cyclically rolls the grid by
// -shift first (and back after), with a mask so tokens only attend to
// tokens that were neighbours before the roll. Parameters (Swin's names):
// qkv [3d, d], proj [d, d], relative_position_bias_table [(2w-1)², heads].
class WindowAttentionImpl : public torch::nn::Module {
 public:
  WindowAttentionImpl(int64_t d_model, int64_t heads, int64_t window, int64_t shift);
  // x [B, H, W, d] with H and W multiples of `window`. Output [B, H, W, d];
  // weights [B, windows, heads, w², w²] (windows in row-major order of the
  // rolled grid).
  Attended forward(const torch::Tensor& x);

 private:
  int64_t d_, heads_, window_, shift_;
  Linear qkv_{nullptr}, proj_{nullptr};
  torch::Tensor bias_table_;
  torch::Tensor relative_index_;  // buffer [w², w²] int64
};
TORCH_MODULE(WindowAttention);

// Axial attention (Ho et al. 2019; Wang et al. 2020): multi-head attention
// along each row of a grid, then along each column — O(HW(H+W)).
struct AxialAttended {
  torch::Tensor output;       // [B, H, W, d]
  torch::Tensor row_weights;  // [B, H, heads, W, W]
  torch::Tensor col_weights;  // [B, W, heads, H, H]
};
class AxialAttentionImpl : public torch::nn::Module {
 public:
  AxialAttentionImpl(int64_t d_model, int64_t heads);
  AxialAttended forward(const torch::Tensor& x);  // x [B, H, W, d]

 private:
  MultiHeadAttention row_{nullptr}, col_{nullptr};
};
TORCH_MODULE(AxialAttention);

}  // namespace attune::models
