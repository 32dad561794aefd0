#include "attune/worker/audit_features.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "attune/common/audit_features.h"

namespace attune::worker {
namespace {

// Rows scaled to sum to 1 (rows of zeros stay zero).
torch::Tensor Normalise(const torch::Tensor& t) {
  return t / t.sum(1, true).clamp_min(1e-12);
}

}  // namespace

std::vector<std::string> AuditFeatureNames(const ModelConfig& m, const SiteData& data) {
  return attune::AuditFeatureNames(m, data.static_columns, data.gene_columns);
}

FeatureTensors AuditFeatureValues(const ModelConfig& m, const Batch& x, const ModelOutput& out) {
  torch::NoGradGuard no_grad;
  const int64_t b = x.present.size(0);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  const torch::Tensor beta = out.beta.to(torch::kFloat64);
  std::vector<torch::Tensor> attention, values;
  // Appends one modality's [B, F] attention (normalised, times β) and values.
  auto add = [&](int modality, const torch::Tensor& a, const torch::Tensor& v) {
    torch::Tensor share = a.defined() ? Normalise(a.to(torch::kFloat64)) : torch::zeros_like(v);
    attention.push_back(share * beta.select(1, modality).unsqueeze(1));
    values.push_back(v.to(torch::kFloat64));
  };
  if (m.has_static()) {
    add(0, TokenAttention(out, "ehr_static"), x.static_x);
  }
  if (m.has_events()) {
    torch::Tensor valid = x.event_pad.logical_not().to(torch::kFloat64);
    torch::Tensor counts = torch::zeros({b, m.event_buckets}, opts);
    counts.scatter_add_(1, x.event_bucket, valid);
    torch::Tensor row = TokenAttention(out, "ehr_events");
    torch::Tensor mass;
    if (row.defined()) {
      mass = torch::zeros({b, m.event_buckets}, opts);
      mass.scatter_add_(1, x.event_bucket, row.to(torch::kFloat64) * valid);
    }
    add(1, mass, counts);
  }
  if (m.has_imaging()) {
    const int64_t tokens = AuditImagingTokens(m), bins = AuditImagingFeatures(m);
    torch::Tensor bin_of = torch::empty({tokens}, torch::kInt64);
    for (int64_t k = 0; k < tokens; ++k) bin_of[k] = AuditImagingBin(m, k);
    torch::Tensor index = bin_of.unsqueeze(0).expand({b, tokens});
    // Each token's mean input: a patch's features, or its block of pixels.
    torch::Tensor token_value;
    if (m.raw_images()) {
      const int64_t side = AuditGridSide(m), block = m.image_size / side;
      token_value = torch::nn::functional::avg_pool2d(
                        x.imaging.to(torch::kFloat64),
                        torch::nn::functional::AvgPool2dFuncOptions(block))
                        .mean(1)
                        .reshape({b, tokens});
    } else {
      token_value = x.imaging.to(torch::kFloat64).mean(2);
    }
    torch::Tensor per_bin = torch::zeros({bins}, opts).scatter_add_(
        0, bin_of, torch::ones({tokens}, opts));
    torch::Tensor v = torch::zeros({b, bins}, opts).scatter_add_(1, index, token_value) / per_bin;
    torch::Tensor row = TokenAttention(out, "imaging");
    torch::Tensor mass;
    if (row.defined() && row.size(1) == tokens) {
      mass = torch::zeros({b, bins}, opts).scatter_add_(1, index, row.to(torch::kFloat64));
    }
    add(2, mass, v);
  }
  if (m.has_genomics()) {
    add(3, TokenAttention(out, "genomics"), x.genomics);
  }
  if (attention.empty()) return {torch::zeros({b, 0}, opts), torch::zeros({b, 0}, opts)};
  return {torch::cat(attention, 1), torch::cat(values, 1)};
}

}  // namespace attune::worker
