#include "attune/worker/model.h"

#include <cmath>

namespace attune::worker {
namespace {

constexpr int kStatic = 0, kEvents = 1, kImaging = 2, kGenomics = 3;

models::SequenceOptions SequenceOf(const ModelConfig& c, bool full_attention) {
  models::SequenceOptions o;
  o.d_model = c.d_model;
  o.heads = c.heads;
  o.layers = c.layers;
  o.dropout = c.dropout;
  o.attention = c.attention == "linear" ? models::AttentionKind::kLinear
                                        : models::AttentionKind::kSoftmax;
  o.need_weights = full_attention;
  return o;
}

void Append(models::AttentionTraces* to, models::AttentionTraces from) {
  for (auto& t : from) to->push_back(std::move(t));
}

// Modalities' tokens and paddings, concatenated along the sequence: [B, ΣL, d], [B, ΣL].
std::pair<torch::Tensor, torch::Tensor> Concat(const std::vector<torch::Tensor>& tokens,
                                               const std::vector<torch::Tensor>& pads) {
  return {torch::cat(tokens, 1), torch::cat(pads, 1)};
}

}  // namespace

Batch SelectRows(const Batch& b, const torch::Tensor& idx) {
  auto rows = [&](const torch::Tensor& t) { return t.defined() ? t.index_select(0, idx) : t; };
  return {rows(b.static_x),  rows(b.event_bucket), rows(b.event_value),
          rows(b.event_time), rows(b.event_pad),   rows(b.imaging),
          rows(b.genomics),  rows(b.present),      rows(b.label)};
}

MultimodalAttentionNetImpl::MultimodalAttentionNetImpl(const ModelConfig& c, bool full_attention)
    : config_(c) {
  const int64_t d = c.d_model;
  const models::SequenceOptions seq = SequenceOf(c, full_attention);
  if (c.has_static()) {
    modalities_.push_back(kStatic);
    static_tokens_ = register_module("static_tokens", models::FeatureTokenizer(c.static_features, d));
    static_encoder_ = register_module("static_encoder", models::SequenceEncoder(seq, "ehr_static"));
  }
  if (c.has_events()) {
    modalities_.push_back(kEvents);
    events_ = register_module("events", models::EventEncoder(c.event_buckets, seq));
  }
  if (c.has_imaging()) {
    modalities_.push_back(kImaging);
    if (c.imaging_encoder == "patch_features" || c.imaging_encoder == "mil") {
      patch_proj_ = register_module("patch_proj", models::Linear(c.imaging_dim, d));
    }
    if (c.imaging_encoder == "patch_features") {
      patch_pos_ = register_parameter("patch_pos", torch::randn({c.imaging_patches, d}) * 0.02);
      imaging_encoder_ = register_module("imaging_encoder", models::SequenceEncoder(seq, "imaging"));
    } else if (c.imaging_encoder == "mil") {
      mil_ = register_module("mil", models::GatedAttentionMil(d, std::max<int64_t>(d, 16)));
    } else if (c.imaging_encoder == "vit") {
      vit_ = register_module("vit", models::PatchEmbedding(c.image_channels, c.image_size,
                                                           c.patch_size, d));
      imaging_encoder_ = register_module("imaging_encoder", models::SequenceEncoder(seq, "imaging"));
    } else {
      models::HybridCnnOptions o;
      o.in_channels = c.image_channels;
      o.image_size = c.image_size;
      o.d_model = d;
      o.heads = c.heads;
      o.layers = c.layers;
      o.dropout = c.dropout;
      cnn_ = register_module("cnn", models::HybridCnn(o));
    }
  }
  if (c.has_genomics()) {
    modalities_.push_back(kGenomics);
    gene_tokens_ = register_module("gene_tokens", models::FeatureTokenizer(c.genes, d));
    gene_encoder_ = register_module("gene_encoder", models::SequenceEncoder(seq, "genomics"));
  }

  if (c.fusion == "hierarchical") {
    std::vector<std::string> names;
    for (int m : modalities_) names.push_back(ModalityNames()[m]);
    hierarchical_ = register_module("hierarchical", models::HierarchicalFusion(d, names));
  } else if (c.fusion == "cross" || c.fusion == "coattention") {
    token_type_ = register_parameter("token_type", torch::randn({kNumModalities, d}) * 0.02);
    if (c.fusion == "cross") {
      models::SequenceOptions fusion = seq;
      fusion.attention = models::AttentionKind::kSoftmax;  // β is read from its weights
      cross_ = register_module("cross", models::SequenceEncoder(fusion, "fusion"));
    } else {
      coattention_ = register_module("coattention", models::CoAttention(d, c.heads, c.dropout));
    }
  } else {
    models::PersAmOptions o;
    o.d_model = d;
    o.heads = c.heads;
    o.layers = c.layers;
    o.classes = 2;
    o.dropout = c.dropout;
    int instances = c.has_events() + c.has_imaging() + c.has_genomics();
    persam_ = register_module("persam", models::PersAm(o, instances));
  }
  if (!persam_) {
    head_ = register_module("head", torch::nn::Sequential(
                                        torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})),
                                        models::Linear(d, d), torch::nn::GELU(),
                                        torch::nn::Dropout(c.dropout), models::Linear(d, 1)));
  }
}

torch::Tensor MultimodalAttentionNetImpl::Absent(const Batch& x, int m) const {
  return x.present.select(1, m).logical_not().unsqueeze(1);
}

std::vector<MultimodalAttentionNetImpl::Encoded> MultimodalAttentionNetImpl::Encode(
    const Batch& x, models::AttentionTraces* traces) {
  std::vector<Encoded> out(kNumModalities);
  const int64_t b = x.present.size(0);
  // A patient without a modality: every token but the class token is padding.
  auto absent_pad = [&](int m, int64_t len) { return Absent(x, m).expand({b, len}); };
  auto from_sequence = [&](int m, models::SequenceEncoding e) {
    out[m] = {e.tokens, e.pad, e.vector};
    Append(traces, std::move(e.traces));
  };
  if (static_tokens_) {
    torch::Tensor t = static_tokens_(x.static_x);
    from_sequence(kStatic, static_encoder_(t, absent_pad(kStatic, t.size(1))));
  }
  if (events_) {
    from_sequence(kEvents, events_(x.event_bucket, x.event_value, x.event_time, x.event_pad));
  }
  if (imaging_encoder_ && patch_proj_) {
    torch::Tensor t = patch_proj_(x.imaging) + patch_pos_;
    from_sequence(kImaging, imaging_encoder_(t, absent_pad(kImaging, t.size(1))));
  } else if (mil_) {
    torch::Tensor t = patch_proj_(x.imaging);
    models::Attended a = mil_(t);
    traces->push_back({"imaging/mil", a.weights});
    torch::Tensor tokens = torch::cat({a.output.unsqueeze(1), t}, 1);
    out[kImaging] = {tokens, absent_pad(kImaging, tokens.size(1)), a.output};
  } else if (vit_) {
    torch::Tensor t = vit_(x.imaging);
    from_sequence(kImaging, imaging_encoder_(t, absent_pad(kImaging, t.size(1))));
  } else if (cnn_) {
    models::HybridCnnOutput h = cnn_(x.imaging);
    Append(traces, std::move(h.traces));
    out[kImaging] = {h.tokens, absent_pad(kImaging, h.tokens.size(1)), h.vector};
  }
  if (gene_tokens_) {
    torch::Tensor t = gene_tokens_(x.genomics);
    from_sequence(kGenomics, gene_encoder_(t, absent_pad(kGenomics, t.size(1))));
  }
  return out;
}

ModelOutput MultimodalAttentionNetImpl::forward(const Batch& x) {
  const int64_t b = x.present.size(0);
  ModelOutput out;
  std::vector<Encoded> enc = Encode(x, &out.traces);
  // Padding at fusion: an absent modality is masked whole.
  auto fusion_pad = [&](int m) { return enc[m].pad.logical_or(Absent(x, m)); };
  torch::Tensor beta = torch::zeros({b, kNumModalities}, x.present.options().dtype(torch::kFloat32));
  torch::Tensor fused;

  if (hierarchical_) {
    std::vector<models::ModalityTokens> in;
    std::vector<torch::Tensor> present;
    for (int m : modalities_) {
      in.push_back({enc[m].tokens, enc[m].pad});
      present.push_back(x.present.select(1, m));
    }
    models::FusionOutput f = hierarchical_(in, torch::stack(present, 1));
    fused = f.vector;
    for (size_t i = 0; i < modalities_.size(); ++i) {
      beta.select(1, modalities_[i]).copy_(f.beta.select(1, i).detach());
    }
    Append(&out.traces, std::move(f.traces));
  } else if (cross_ || coattention_) {
    // Token-type embeddings tell the fusion which modality a token is from.
    auto typed = [&](int m) { return enc[m].tokens + token_type_[m]; };
    std::vector<int64_t> lengths;
    std::vector<torch::Tensor> tokens, pads;
    for (int m : modalities_) {
      tokens.push_back(typed(m));
      pads.push_back(fusion_pad(m));
      lengths.push_back(enc[m].tokens.size(1));
    }
    // Attention mass per modality from per-token mass [B, ΣL].
    auto mass_by_modality = [&](const torch::Tensor& mass, const std::vector<int>& which,
                                const std::vector<int64_t>& lens) {
      int64_t from = 0;
      for (size_t i = 0; i < which.size(); ++i) {
        beta.select(1, which[i]).add_(mass.narrow(1, from, lens[i]).sum(1).detach());
        from += lens[i];
      }
    };
    if (cross_) {
      auto [all, pad] = Concat(tokens, pads);
      models::SequenceEncoding e = cross_(all, pad);
      fused = e.vector;
      // β: the fusion class token's attention over each modality's tokens in
      // the last layer, averaged over heads (its own token excluded).
      torch::Tensor row = e.traces.back().weights.select(2, 0).mean(1).narrow(1, 1, all.size(1));
      mass_by_modality(row, modalities_, lengths);
      Append(&out.traces, std::move(e.traces));
    } else {
      // EHR (static, events) ↔ imaging and genomics, both directions.
      std::vector<int> side_a, side_b;
      std::vector<int64_t> len_a, len_b;
      std::vector<torch::Tensor> ta, pa, tb, pb;
      for (size_t i = 0; i < modalities_.size(); ++i) {
        const bool ehr = modalities_[i] == kStatic || modalities_[i] == kEvents;
        (ehr ? side_a : side_b).push_back(modalities_[i]);
        (ehr ? len_a : len_b).push_back(lengths[i]);
        (ehr ? ta : tb).push_back(tokens[i]);
        (ehr ? pa : pb).push_back(pads[i]);
      }
      TORCH_CHECK(!ta.empty() && !tb.empty(),
                  "coattention fusion needs an EHR modality and an imaging or genomics modality");
      auto [a, pad_a] = Concat(ta, pa);
      auto [bb, pad_b] = Concat(tb, pb);
      models::CoAttended co = coattention_(a, bb, pad_a, pad_b);
      fused = co.fused;
      // β: attention mass each side's tokens receive from the other side.
      // Only real (unpadded) queries count.
      auto received = [](const torch::Tensor& w, const torch::Tensor& query_pad) {
        torch::Tensor keep = query_pad.logical_not().to(w.dtype()).unsqueeze(-1);
        return (w.mean(1) * keep).sum(1);
      };
      mass_by_modality(received(co.weights_ab, pad_a), side_b, len_b);
      mass_by_modality(received(co.weights_ba, pad_b), side_a, len_a);
      out.traces.push_back({"fusion/ehr_to_other", co.weights_ab});
      out.traces.push_back({"fusion/other_to_ehr", co.weights_ba});
    }
    beta = beta / beta.sum(1, true).clamp_min(1e-12);
  } else {
    std::vector<models::ModalityTokens> instances;
    std::vector<int> which;
    for (int m : modalities_) {
      if (m == kStatic) continue;
      instances.push_back({enc[m].tokens, fusion_pad(m)});
      which.push_back(m);
    }
    models::ModalityTokens clinical;
    if (static_tokens_) {
      clinical = {enc[kStatic].tokens, fusion_pad(kStatic)};
    } else {
      clinical = {torch::zeros({b, 0, config_.d_model}), torch::zeros({b, 0}, torch::kBool)};
    }
    torch::Tensor labels = x.label.defined() ? x.label.to(torch::kInt64) : torch::Tensor();
    models::PersAmImpl::Output p = persam_(instances, clinical, labels);
    out.logits = p.logits.select(1, 1) - p.logits.select(1, 0);
    out.aux_loss = p.aux_loss;
    for (size_t i = 0; i < which.size(); ++i) beta.select(1, which[i]).copy_(p.beta.select(1, i).detach());
    Append(&out.traces, std::move(p.traces));
  }
  if (head_) out.logits = head_->forward(fused).squeeze(-1);
  out.beta = beta;
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

torch::Tensor TokenAttention(const ModelOutput& out, const std::string& modality) {
  if (modality == "imaging") {
    for (const auto& t : out.traces) {
      if (t.name == "imaging/mil") return t.weights.reshape({t.weights.size(0), -1});
    }
  }
  std::vector<torch::Tensor> layers;  // [B, heads, 1+L, 1+L], first to last
  torch::Tensor alpha;                // [B, 1+L]
  const std::string prefix = modality + "/layer", alpha_name = "fusion/alpha/" + modality;
  for (const auto& t : out.traces) {
    if (!t.weights.defined()) continue;
    if (t.name.rfind(prefix, 0) == 0 && t.weights.dim() == 4 &&
        t.weights.size(2) == t.weights.size(3)) {
      layers.push_back(t.weights);
    } else if (t.name == alpha_name && t.weights.dim() == 2) {
      alpha = t.weights;
    }
  }
  if (layers.empty()) return {};
  const int64_t b = layers.back().size(0), n = layers.back().size(3);
  torch::Tensor mass;
  if (alpha.defined() && alpha.size(1) == n) {
    mass = alpha.to(torch::kFloat64);
  } else {
    mass = torch::zeros({b, n}, layers.back().options().dtype(torch::kFloat64));
    mass.select(1, 0).fill_(1.0);
  }
  // Rollout: through each layer, from the last to the first, a token's mass
  // goes half to itself (the residual path) and half to what it attended to.
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    torch::Tensor a = it->to(torch::kFloat64).mean(1);  // [B, n, n]
    mass = 0.5 * mass + 0.5 * mass.unsqueeze(1).bmm(a).squeeze(1);
  }
  return mass.narrow(1, 1, n - 1);
}

}  // namespace attune::worker
