// The study-model configurations that are benchmarked against Python
// (attune-bench-model, model_bench.py) and held to the Python reference by
// the whole-model parity cases (parity.model, parity.model_<variant>): the
// quickstart model, each modality encoder alone, and each fusion.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "attune/common/config.h"

namespace attune::bench {

struct ModelVariant {
  std::string_view name;
  std::string_view what;                        // one line, for --help and the README
  std::function<void(ModelConfig& m)> apply;  // from the base configuration
};

namespace variant_detail {
enum Modality { kStatic, kEvents, kImaging, kGenomics };
// Keeps one modality (the others switched off), with these settings.
inline std::function<void(ModelConfig&)> Only(Modality keep, std::string imaging = "patch_features",
                                              std::string attention = "softmax") {
  return [=](ModelConfig& m) {
    if (keep != kStatic) m.static_features = 0;
    if (keep != kEvents) m.max_events = 0;
    m.imaging_encoder = keep == kImaging ? imaging : "none";
    if (keep != kGenomics) m.genes = 0;
    m.attention = attention;
  };
}
inline std::function<void(ModelConfig&)> Fusion(std::string fusion) {
  return [=](ModelConfig& m) { m.fusion = fusion; };
}
}  // namespace variant_detail

// The first is the main model (the base configuration unchanged).
inline const std::vector<ModelVariant>& ModelVariants() {
  using namespace variant_detail;
  static const std::vector<ModelVariant> variants = {
      {"model", "all four modalities, patch-feature imaging, hierarchical fusion",
       [](ModelConfig&) {}},
      {"ehr_static", "static EHR features alone (feature tokens, transformer)", Only(kStatic)},
      {"ehr_events", "EHR events alone (codes, values, Time2Vec, transformer)", Only(kEvents)},
      {"imaging_patches", "patch-feature imaging alone (projection, positions, transformer)",
       Only(kImaging)},
      {"imaging_mil", "patch-feature imaging alone, gated attention-MIL", Only(kImaging, "mil")},
      {"imaging_vit", "raw images alone, ViT patch embedding and transformer",
       Only(kImaging, "vit")},
      {"imaging_cnn", "raw images alone, hybrid CNN (CBAM) with a transformer head",
       Only(kImaging, "cnn")},
      {"genomics", "gene tokens alone, softmax attention", Only(kGenomics)},
      {"genomics_linear", "gene tokens alone, efficient (linear) attention",
       Only(kGenomics, "none", "linear")},
      {"fusion_cross", "all four modalities, cross fusion (token types, one transformer)",
       Fusion("cross")},
      {"fusion_coattention", "all four modalities, co-attention fusion (EHR <-> the others)",
       Fusion("coattention")},
      {"fusion_persam", "all four modalities, PersAM fusion (class tokens, MIL-aware loss)",
       Fusion("persam")},
  };
  return variants;
}

// The named variant, or nullptr.
inline const ModelVariant* FindModelVariant(std::string_view name) {
  for (const ModelVariant& v : ModelVariants())
    if (v.name == name) return &v;
  return nullptr;
}

}  // namespace attune::bench
