// The audit's input features (eval_stats.h's per-feature sums) that a study's
// model defines, in order -- what the model attended to, in units a reader
// can name:
//
//   ehr_static/<column>     one per static feature (static_features)
//   ehr_events/bucket <k>   one per event-code bucket (event_buckets)
//   imaging/<region>        patch features: one per patch (up to 16; more are
//                           binned in order); images: a grid of up to 4 × 4
//                           regions
//   genomics/<gene>         one per gene (genes)
//
// The model fixes how many there are and every name but the static
// columns' and the genes', which come from each site's data. The worker
// names them (worker/audit_features.h computes the values); the coordinator
// checks every list a site declares at Join against the model
// (CheckAuditFeatureNames) and lays the sums out as the sites agree
// (AgreedAuditFeatureNames), so that no site's list decides the layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/status.h"

namespace attune {

// The longest name a site may give a static column or a gene.
inline constexpr size_t kMaxFeatureNameBytes = 128;

// Images (vit, cnn): the side of the model's token grid; 0 for a sequence
// of patches (patch_features, mil).
int64_t AuditGridSide(const ModelConfig& m);
// Imaging tokens (without a class token) and the features they are binned into.
int64_t AuditImagingTokens(const ModelConfig& m);
int64_t AuditImagingFeatures(const ModelConfig& m);
// The imaging feature of token `k` (0-based).
int64_t AuditImagingBin(const ModelConfig& m, int64_t k);

// How many features `m` defines.
size_t AuditFeatureCount(const ModelConfig& m);

// The names, with a site's static columns and genes (ehr/static.csv's and
// genomics/expression.tsv's headers, without patient_id); one missing from
// them is "feature <j>" / "gene <j>".
std::vector<std::string> AuditFeatureNames(const ModelConfig& m,
                                           std::span<const std::string> static_columns,
                                           std::span<const std::string> gene_columns);

// OK if `names` is a list `m` defines: AuditFeatureCount(m) names, the
// fixed ones exactly, each static column and gene under its prefix with a
// name of 1..kMaxFeatureNameBytes bytes of printable UTF-8, and no name
// twice. InvalidArgument names the first that is not.
Status CheckAuditFeatureNames(const ModelConfig& m, std::span<const std::string> names);

// The layout's names for sites that declared `lists` (each one that
// CheckAuditFeatureNames accepts; empty lists are skipped): per feature,
// the name every list gives it, else the name AuditFeatureNames gives
// without the site's headers. Empty when every list is.
std::vector<std::string> AgreedAuditFeatureNames(
    const ModelConfig& m, std::span<const std::vector<std::string>* const> lists);

}  // namespace attune
