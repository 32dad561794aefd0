// Building blocks of the model zoo: a transformer block with either
// attention, channel and spatial attention for CNN feature maps (SE, CBAM)
// and a small hybrid CNN backbone with a transformer head.
#pragma once

#include <torch/torch.h>

#include "attune/models/attention.h"

namespace attune::models {

enum class AttentionKind { kSoftmax, kLinear };

struct TransformerOptions {
  int64_t d_model = 32;
  int64_t heads = 4;
  int64_t ff_mult = 2;      // feed-forward width = ff_mult · d_model
  double dropout = 0;
  AttentionKind attention = AttentionKind::kSoftmax;
};

// Pre-norm transformer block: h = x + Attn(LN(x)); out = h + FF(LN(h)),
// FF = Linear → GELU → Linear. Parameters: norm1, attn, norm2, ff.0, ff.2.
class TransformerBlockImpl : public torch::nn::Module {
 public:
  explicit TransformerBlockImpl(const TransformerOptions& options);
  // x [B, L, d]; pad [B, L] bool or undefined. Weights as the attention
  // returns them ([B, heads, L, L] for softmax; key maps for linear unless
  // need_weights).
  Attended forward(const torch::Tensor& x, const torch::Tensor& pad = {},
                   bool need_weights = false);

 private:
  TransformerOptions options_;
  torch::nn::LayerNorm norm1_{nullptr}, norm2_{nullptr};
  MultiHeadAttention mha_{nullptr};
  LinearAttention linear_{nullptr};
  torch::nn::Sequential ff_{nullptr};
  torch::nn::Dropout drop_{nullptr};
};
TORCH_MODULE(TransformerBlock);

// Squeeze-and-excitation (Hu et al. 2018): s = σ(W2 ReLU(W1 GAP(x))),
// out = x · s per channel. Parameters fc1 [C/r, C], fc2 [C, C/r] with biases.
class SqueezeExcitationImpl : public torch::nn::Module {
 public:
  SqueezeExcitationImpl(int64_t channels, int64_t reduction = 16);
  // x [B, C, H, W]; weights: the channel gates s [B, C].
  Attended forward(const torch::Tensor& x);

 private:
  Linear fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(SqueezeExcitation);

// CBAM (Woo et al. 2018): channel attention Mc = σ(MLP(avg) + MLP(max)) with
// a shared MLP (mlp.0 [C/r, C], mlp.2 [C, C/r]), then spatial attention
// Ms = σ(conv7×7([mean_c; max_c])) (conv [1, 2, k, k], no bias);
// out = (x·Mc)·Ms.
struct CbamOutput {
  torch::Tensor output;           // [B, C, H, W]
  torch::Tensor channel_weights;  // [B, C]
  torch::Tensor spatial_weights;  // [B, H, W]
};
class CbamImpl : public torch::nn::Module {
 public:
  CbamImpl(int64_t channels, int64_t reduction = 16, int64_t kernel = 7);
  CbamOutput forward(const torch::Tensor& x);

 private:
  torch::nn::Sequential mlp_{nullptr};
  torch::nn::Conv2d spatial_{nullptr};
};
TORCH_MODULE(Cbam);

struct HybridCnnOptions {
  int64_t in_channels = 1;
  int64_t image_size = 28;  // square images; a multiple of 4
  int64_t channels = 16;    // width of the first stage (second: 2×)
  int64_t d_model = 32;
  int64_t heads = 4;
  int64_t layers = 1;       // transformer blocks on the feature map
  double dropout = 0;
};

// A small hybrid CNN + transformer (TransUNet/CoAtNet style): two conv
// stages (stage<i> = 3×3 conv with padding 1 → GroupNorm(min(4, C) groups,
// eps 1e-5) → ReLU, then cbam<i> with reduction 4 and a 7×7 kernel, then a
// 2×2 max-pool) reduce the image 4× (channels: `channels`, then 2×). The
// (H/4 × W/4) feature map becomes tokens (to_tokens: Linear 2C → d, tokens in
// row-major order), a class token `cls` [1, 1, d] is prepended, learned
// positions `pos` [1, 1 + N, d] are added, and pre-norm transformer blocks
// block<i> (ff_mult 2) give the image vector: the class token's output.
struct HybridCnnOutput {
  torch::Tensor vector;   // [B, d]
  torch::Tensor tokens;   // [B, 1 + (H/4)(W/4), d]
  AttentionTraces traces; // cbam channel/spatial per stage, transformer weights
};
class HybridCnnImpl : public torch::nn::Module {
 public:
  explicit HybridCnnImpl(const HybridCnnOptions& options);
  HybridCnnOutput forward(const torch::Tensor& images);  // [B, C, H, W]

 private:
  HybridCnnOptions options_;
  torch::nn::Sequential stage1_{nullptr}, stage2_{nullptr};
  Cbam cbam1_{nullptr}, cbam2_{nullptr};
  Linear to_tokens_{nullptr};
  torch::Tensor cls_, pos_;
  std::vector<TransformerBlock> blocks_;
};
TORCH_MODULE(HybridCnn);

}  // namespace attune::models
