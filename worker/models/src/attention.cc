#include "attune/models/attention.h"

#include <cmath>

namespace attune::models {
namespace {

// [B, L, h·dh] → [B, h, L, dh]
torch::Tensor SplitHeads(const torch::Tensor& x, int64_t heads) {
  return x.reshape({x.size(0), x.size(1), heads, x.size(2) / heads}).transpose(1, 2).contiguous();
}

// [B, h, L, dh] → [B, L, h·dh]
torch::Tensor MergeHeads(const torch::Tensor& x) {
  return x.transpose(1, 2).contiguous().view({x.size(0), x.size(2), x.size(1) * x.size(3)});
}

}  // namespace

torch::Tensor MaskedSoftmax(const torch::Tensor& logits, const torch::Tensor& mask, int64_t dim) {
  if (!mask.defined()) return torch::softmax(logits, dim);
  torch::Tensor filled = logits.masked_fill(mask, -std::numeric_limits<float>::infinity());
  torch::Tensor all_masked = mask.all(dim, /*keepdim=*/true);
  // Where a slice keeps a key, exp(-inf) is exactly 0 at the masked ones.
  if (!all_masked.any().item<bool>()) return torch::softmax(filled, dim);
  // A finite fill keeps fully masked slices free of NaN (exp(-inf - -inf));
  // those slices are then zeroed explicitly.
  filled = filled.masked_fill(all_masked, 0.0);
  return torch::softmax(filled, dim).masked_fill(mask, 0.0);
}

namespace {

// softmax(q kᵀ · scale + bias, masked): the weights of ScaledDotProductAttention.
torch::Tensor AttentionWeights(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& mask, const torch::Tensor& bias, double scale) {
  if (scale == 0) scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const int64_t dims = q.dim(), lq = q.size(-2), lk = k.size(-2);
  const bool fold = mask.defined() && !bias.defined() && dims >= 3 && k.dim() == dims &&
                    mask.dim() == dims && q.sizes().slice(0, dims - 2) == k.sizes().slice(0, dims - 2) &&
                    !mask.all(-1).any().item<bool>();
  if (fold) {
    // Every query keeps a key: one batched matmul folds in the scale and
    // the mask as −inf (exp gives exactly 0 there), as
    // torch.nn.MultiheadAttention does: no masked_fill over the logits, in
    // the forward or the backward pass.
    std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end() - 2);
    const int64_t rows = mask.size(-2);  // 1 (the same keys for every query) or Lq
    shape.push_back(rows);
    shape.push_back(lk);
    torch::Tensor additive = torch::zeros(mask.sizes(), q.options())
                                 .masked_fill_(mask, -std::numeric_limits<float>::infinity())
                                 .expand(shape)
                                 .reshape({-1, rows, lk});
    torch::Tensor logits = torch::baddbmm(additive, q.reshape({-1, lq, q.size(-1)}),
                                          k.reshape({-1, lk, k.size(-1)}).transpose(1, 2),
                                          /*beta=*/1, /*alpha=*/scale);
    shape[shape.size() - 2] = lq;
    return torch::softmax(logits, -1).view(shape);
  }
  // Scaling q rather than the logits: fewer multiplications when L > dh.
  torch::Tensor logits = torch::matmul(q * scale, k.transpose(-2, -1));
  if (bias.defined()) logits = logits + bias;
  if (!mask.defined()) return torch::softmax(logits, -1);
  return MaskedSoftmax(logits, mask, -1);  // the mask unexpanded: its all() stays small
}

// The q/k/v/out projections of a multi-head attention, registered on `m`
// under q_proj, k_proj, v_proj, out_proj; defaults kv_dim to d_model.
void RegisterProjections(torch::nn::Module& m, MultiHeadOptions* o, const char* who,
                         Linear* q, Linear* k, Linear* v,
                         Linear* out) {
  TORCH_CHECK(o->heads > 0 && o->d_model % o->heads == 0, who, ": d_model ", o->d_model,
              " is not a multiple of heads ", o->heads);
  if (o->kv_dim == 0) o->kv_dim = o->d_model;
  *q = m.register_module("q_proj", Linear(o->d_model, o->d_model));
  *k = m.register_module("k_proj", Linear(o->kv_dim, o->d_model));
  *v = m.register_module("v_proj", Linear(o->kv_dim, o->d_model));
  *out = m.register_module("out_proj", Linear(o->d_model, o->d_model));
}

}  // namespace

Attended ScaledDotProductAttention(const torch::Tensor& q, const torch::Tensor& k,
                                   const torch::Tensor& v, const torch::Tensor& mask,
                                   const torch::Tensor& bias, double scale) {
  torch::Tensor weights = AttentionWeights(q, k, mask, bias, scale);
  return {torch::matmul(weights, v), weights};
}

MultiHeadAttentionImpl::MultiHeadAttentionImpl(const MultiHeadOptions& o) : options_(o) {
  RegisterProjections(*this, &options_, "MultiHeadAttention", &q_proj_, &k_proj_, &v_proj_,
                      &out_proj_);
  drop_ = register_module("drop", torch::nn::Dropout(o.dropout));
  // torch.nn.MultiheadAttention's initialisation: xavier-uniform projections, zero biases.
  for (auto* l : {&q_proj_, &k_proj_, &v_proj_}) {
    torch::nn::init::xavier_uniform_((*l)->weight);
    torch::nn::init::zeros_((*l)->bias);
  }
  // The query projection starts at zero (as muP does, Yang et al. 2021,
  // "Tensor Programs V"): every row starts uniform, so a difference in
  // attention between patient groups is learned, not drawn at initialisation.
  torch::nn::init::zeros_(q_proj_->weight);
  torch::nn::init::zeros_(out_proj_->bias);
}

Attended MultiHeadAttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& key,
                                         const torch::Tensor& value,
                                         const torch::Tensor& key_padding_mask) {
  const int64_t h = options_.heads;
  torch::Tensor q, k, v;
  if (query.is_same(key) && key.is_same(value)) {
    // Self-attention: one matmul for the three projections (as
    // torch.nn.MultiheadAttention packs them).
    std::vector<torch::Tensor> qkv =
        torch::linear(query, torch::cat({q_proj_->weight, k_proj_->weight, v_proj_->weight}),
                      torch::cat({q_proj_->bias, k_proj_->bias, v_proj_->bias}))
            .chunk(3, -1);
    q = SplitHeads(qkv[0], h);
    k = SplitHeads(qkv[1], h);
    v = SplitHeads(qkv[2], h);
  } else {
    q = SplitHeads(q_proj_(query), h);
    k = SplitHeads(k_proj_(key), h);
    v = SplitHeads(v_proj_(value), h);
  }
  torch::Tensor mask;
  if (key_padding_mask.defined()) mask = key_padding_mask.view({key.size(0), 1, 1, key.size(1)});
  torch::Tensor weights = AttentionWeights(q, k, mask, {}, 0);
  // Dropout (training only) acts on what is applied to v; the weights
  // returned are the attention itself.
  torch::Tensor out = torch::matmul(options_.dropout > 0 ? drop_(weights) : weights, v);
  return {out_proj_(MergeHeads(out)), weights};
}

LinearAttentionImpl::LinearAttentionImpl(const MultiHeadOptions& o) : options_(o) {
  RegisterProjections(*this, &options_, "LinearAttention", &q_proj_, &k_proj_, &v_proj_,
                      &out_proj_);
}

Attended LinearAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& pad,
                                      bool need_weights, const torch::Tensor& context) {
  const int64_t h = options_.heads;
  const torch::Tensor& kv = context.defined() ? context : x;
  torch::Tensor q = torch::softmax(SplitHeads(q_proj_(x), h), -1);  // [B, h, N, dh]
  torch::Tensor k_logits = SplitHeads(k_proj_(kv), h);              // [B, h, M, dh]
  torch::Tensor v = SplitHeads(v_proj_(kv), h);
  torch::Tensor mask;
  if (pad.defined()) mask = pad.view({kv.size(0), 1, kv.size(1), 1}).expand(k_logits.sizes());
  torch::Tensor k = MaskedSoftmax(k_logits, mask, 2);                // over tokens
  torch::Tensor context_kv = torch::matmul(k.transpose(-2, -1), v);  // [B, h, dh, dh]
  torch::Tensor out = torch::matmul(q, context_kv);                   // [B, h, N, dh]
  torch::Tensor weights =
      need_weights ? torch::matmul(q, k.transpose(-2, -1)) : k.transpose(-2, -1);
  return {out_proj_(MergeHeads(out)), weights};
}

CoAttentionImpl::CoAttentionImpl(int64_t d, int64_t heads, double dropout) {
  ab_ = register_module("ab", MultiHeadAttention(MultiHeadOptions{d, heads, 0, dropout}));
  ba_ = register_module("ba", MultiHeadAttention(MultiHeadOptions{d, heads, 0, dropout}));
  fuse_ = register_module("fuse", Linear(2 * d, d));
}

namespace {
// Mean over the unmasked tokens: x [B, L, d], pad [B, L] or undefined.
torch::Tensor MaskedMean(const torch::Tensor& x, const torch::Tensor& pad) {
  if (!pad.defined()) return x.mean(1);
  torch::Tensor keep = pad.logical_not().to(x.dtype()).unsqueeze(-1);  // [B, L, 1]
  return (x * keep).sum(1) / keep.sum(1).clamp_min(1.0);
}
}  // namespace

CoAttended CoAttentionImpl::forward(const torch::Tensor& a, const torch::Tensor& b,
                                    const torch::Tensor& pad_a, const torch::Tensor& pad_b) {
  Attended ab = ab_->forward(a, b, b, pad_b);
  Attended ba = ba_->forward(b, a, a, pad_a);
  CoAttended out;
  out.a = a + ab.output;
  out.b = b + ba.output;
  out.weights_ab = ab.weights;
  out.weights_ba = ba.weights;
  out.fused = fuse_(torch::cat({MaskedMean(out.a, pad_a), MaskedMean(out.b, pad_b)}, -1));
  return out;
}

WindowAttentionImpl::WindowAttentionImpl(int64_t d, int64_t heads, int64_t window, int64_t shift)
    : d_(d), heads_(heads), window_(window), shift_(shift) {
  TORCH_CHECK(heads > 0 && d % heads == 0, "WindowAttention: d_model ", d,
              " is not a multiple of heads ", heads);
  TORCH_CHECK(window > 0 && shift >= 0 && shift < window, "WindowAttention: need 0 <= shift (",
              shift, ") < window (", window, ")");
  qkv_ = register_module("qkv", Linear(d, 3 * d));
  proj_ = register_module("proj", Linear(d, d));
  const int64_t span = 2 * window - 1;
  bias_table_ = register_parameter("relative_position_bias_table",
                                   torch::randn({span * span, heads}) * 0.02);
  // Index of the bias for query token i and key token j of a window: their
  // row and column offsets, each shifted into [0, 2w-2].
  torch::Tensor pos = torch::arange(window * window, torch::kInt64);
  torch::Tensor row = pos.div(window, "floor"), col = pos.remainder(window);
  torch::Tensor dr = row.unsqueeze(1) - row.unsqueeze(0) + (window - 1);
  torch::Tensor dc = col.unsqueeze(1) - col.unsqueeze(0) + (window - 1);
  relative_index_ = register_buffer("relative_position_index", dr * span + dc);
}

namespace {
// Which of the three bands [0, n-w), [n-w, n-s), [n-s, n) a rolled coordinate
// falls in: tokens from different bands were not neighbours before the roll.
torch::Tensor Band(int64_t n, int64_t window, int64_t shift) {
  torch::Tensor i = torch::arange(n, torch::kInt64);
  return (i >= n - window).to(torch::kInt64) + (i >= n - shift).to(torch::kInt64);
}
}  // namespace

Attended WindowAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), hgt = x.size(1), wid = x.size(2), w = window_;
  TORCH_CHECK(hgt % w == 0 && wid % w == 0, "WindowAttention: grid ", hgt, "x", wid,
              " is not a multiple of the window ", w);
  torch::Tensor t = shift_ > 0 ? torch::roll(x, {-shift_, -shift_}, {1, 2}) : x;
  const int64_t nh = hgt / w, nw = wid / w, n = w * w, windows = nh * nw;
  // [B, nh, w, nw, w, d] → [B, windows, w², d]
  torch::Tensor win = t.view({b, nh, w, nw, w, d_}).permute({0, 1, 3, 2, 4, 5}).reshape(
      {b, windows, n, d_});
  torch::Tensor qkv = qkv_(win).view({b, windows, n, 3, heads_, d_ / heads_})
                          .permute({3, 0, 1, 4, 2, 5});  // [3, B, windows, heads, n, dh]
  torch::Tensor bias = bias_table_.index_select(0, relative_index_.view(-1))
                           .view({n, n, heads_})
                           .permute({2, 0, 1});  // [heads, n, n]
  torch::Tensor mask;
  if (shift_ > 0) {
    // Region id of every token of the rolled grid, gathered per window.
    torch::Tensor region = Band(hgt, w, shift_).unsqueeze(1) * 3 + Band(wid, w, shift_).unsqueeze(0);
    torch::Tensor r = region.view({nh, w, nw, w}).permute({0, 2, 1, 3}).reshape({windows, n});
    mask = (r.unsqueeze(2) != r.unsqueeze(1)).view({1, windows, 1, n, n});
  }
  Attended a = ScaledDotProductAttention(qkv[0], qkv[1], qkv[2], mask, bias);
  // [B, windows, heads, n, dh] → [B, windows, n, d] → grid
  torch::Tensor o = a.output.transpose(2, 3).reshape({b, windows, n, d_});
  o = proj_(o).view({b, nh, nw, w, w, d_}).permute({0, 1, 3, 2, 4, 5}).reshape({b, hgt, wid, d_});
  if (shift_ > 0) o = torch::roll(o, {shift_, shift_}, {1, 2});
  return {o, a.weights};
}

AxialAttentionImpl::AxialAttentionImpl(int64_t d, int64_t heads) {
  row_ = register_module("row", MultiHeadAttention(MultiHeadOptions{d, heads}));
  col_ = register_module("col", MultiHeadAttention(MultiHeadOptions{d, heads}));
}

AxialAttended AxialAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t b = x.size(0), hgt = x.size(1), wid = x.size(2), d = x.size(3);
  torch::Tensor rows = x.reshape({b * hgt, wid, d});
  Attended r = row_->forward(rows, rows, rows);
  torch::Tensor y = r.output.view({b, hgt, wid, d});
  torch::Tensor cols = y.transpose(1, 2).reshape({b * wid, hgt, d});
  Attended c = col_->forward(cols, cols, cols);
  AxialAttended out;
  out.output = c.output.view({b, wid, hgt, d}).transpose(1, 2);
  out.row_weights = r.weights.view({b, hgt, -1, wid, wid});
  out.col_weights = c.weights.view({b, wid, -1, hgt, hgt});
  return out;
}

}  // namespace attune::models
