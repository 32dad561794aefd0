// `attune explain`: runs the model over chosen patients and writes, per
// patient, every attention module's weights as JSON and an imaging heatmap.
#include "attune/worker/explain.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "attune/common/config.h"
#include "attune/common/tensor_codec.h"
#include "attune/worker/model.h"
#include "attune/worker/model_state.h"
#include "attune/common/png.h"
#include "attune/worker/site_data.h"
#include "torch_guard.h"
#include "nlohmann/json.hpp"

namespace attune::worker {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A tensor as nested JSON arrays (floats rounded to 6 significant digits).
json ToJson(const torch::Tensor& t) {
  if (t.dim() == 0) {
    const double v = t.item<double>();
    return std::stod(absl::StrCat(static_cast<float>(v)));
  }
  json a = json::array();
  for (int64_t i = 0; i < t.size(0); ++i) a.push_back(ToJson(t[i]));
  return a;
}

// What each attention index of a modality's encoder refers to: the class
// token first, then one label per token.
std::vector<std::string> TokenLabels(int modality, const Patient& p, const SiteData& data,
                                     const ModelConfig& m) {
  std::vector<std::string> out = {"[class]"};
  switch (modality) {
    case 0:
      for (int j = 0; j < m.static_features; ++j) {
        out.push_back(j < static_cast<int>(data.static_columns.size()) ? data.static_columns[j]
                                                                        : absl::StrCat("feature ", j));
      }
      break;
    case 1:
      for (int k = 0; k < m.max_events; ++k) {
        if (k < static_cast<int>(p.events.size())) {
          out.push_back(absl::StrCat(p.events[k].code, " @ ", p.events[k].time, " h"));
        } else {
          out.push_back("[padding]");
        }
      }
      break;
    case 2: {
      int n = 0, side = 0;
      if (m.imaging_encoder == "vit") side = m.image_size / m.patch_size;
      if (m.imaging_encoder == "cnn") side = m.image_size / 4;
      n = side > 0 ? side * side : m.imaging_patches;
      if (m.imaging_encoder == "mil") out[0] = "[mil pooled]";
      for (int k = 0; k < n; ++k) {
        out.push_back(side > 0 ? absl::StrCat("patch row ", k / side, " col ", k % side)
                               : absl::StrCat("patch ", k));
      }
      break;
    }
    case 3:
      for (int j = 0; j < m.genes; ++j) {
        out.push_back(j < static_cast<int>(data.gene_columns.size()) ? data.gene_columns[j]
                                                                      : absl::StrCat("gene ", j));
      }
      break;
  }
  return out;
}

// A perceptual dark-to-bright ramp (black → purple → orange → pale yellow).
void Heat(double v, uint8_t* rgb) {
  static const double stops[5][3] = {
      {0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}};
  v = std::clamp(v, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(v));
  const double f = v - i;
  for (int c = 0; c < 3; ++c) rgb[c] = static_cast<uint8_t>(stops[i][c] * (1 - f) + stops[i + 1][c] * f);
}

Status WriteHeatmap(const std::string& path, const torch::Tensor& attention,
                    const torch::Tensor& image, const ModelConfig& m) {
  const int64_t n = attention.size(0);
  int64_t rows = 1, cols = n;
  const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(double(n))));
  if (side * side == n) rows = cols = side;
  torch::Tensor a = attention / attention.max().clamp_min(1e-12);  // brightest patch = 1
  RgbImage img;
  if (m.raw_images()) {
    // The image (first channel, min-max scaled) under the patch heat, 50/50.
    const int64_t s = m.image_size, scale = std::max<int64_t>(1, 256 / s);
    torch::Tensor g = image[0];
    g = (g - g.min()) / (g.max() - g.min()).clamp_min(1e-12);
    img.width = img.height = static_cast<int>(s * scale);
    img.pixels.assign(3u * img.width * img.height, 0);
    auto ga = g.accessor<float, 2>();
    auto aa = a.accessor<float, 1>();
    for (int y = 0; y < img.height; ++y) {
      for (int x = 0; x < img.width; ++x) {
        const int64_t py = y / scale, px = x / scale;
        const int64_t cell = (py * rows / s) * cols + (px * cols / s);
        uint8_t heat[3];
        Heat(aa[cell], heat);
        const double gray = 255.0 * ga[py][px];
        for (int c = 0; c < 3; ++c) img.at(x, y)[c] = static_cast<uint8_t>(0.5 * gray + 0.5 * heat[c]);
      }
    }
  } else {
    const int cell = 32;
    img.width = static_cast<int>(cols * cell);
    img.height = static_cast<int>(rows * cell);
    img.pixels.assign(3u * img.width * img.height, 0);
    auto aa = a.accessor<float, 1>();
    for (int y = 0; y < img.height; ++y) {
      for (int x = 0; x < img.width; ++x) Heat(aa[(y / cell) * cols + x / cell], img.at(x, y));
    }
  }
  return WritePng(path, img);
}

}  // namespace

StatusOr<ExplainResult> Explain(const ExplainOptions& o) {
  if (o.out_dir.empty()) return absl::InvalidArgumentError("--out: required");
  if (o.count < 1) return absl::InvalidArgumentError("--count: must be >= 1");
  if (o.threads < 1) return absl::InvalidArgumentError("--threads: must be >= 1");
  ATTUNE_ASSIGN_OR_RETURN(StudyConfig study, LoadStudyConfig(o.study_path));
  const ModelConfig& m = study.model;
  ATTUNE_ASSIGN_OR_RETURN(std::string blob, ReadFile(o.model_path));
  auto flat = DecodeModel(blob);
  if (!flat.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.model_path, ": not an Attune model file (", flat.status().message(), ")"));
  }
  ATTUNE_ASSIGN_OR_RETURN(SiteData data, LoadSiteData(o.site_dir, m));

  std::vector<const Patient*> chosen;
  if (!o.patients.empty()) {
    for (const std::string& id : o.patients) {
      auto it = std::find_if(data.patients.begin(), data.patients.end(),
                             [&](const Patient& p) { return p.id == id; });
      if (it == data.patients.end()) {
        return absl::NotFoundError(
            absl::StrCat("patient '", id, "' is not in ", o.site_dir, "/cohort.csv"));
      }
      chosen.push_back(&*it);
    }
  } else {
    for (const Patient& p : data.patients) {
      if (p.split == o.split && static_cast<int>(chosen.size()) < o.count) chosen.push_back(&p);
    }
    if (chosen.empty()) {
      return absl::NotFoundError(absl::StrCat(o.site_dir, "/cohort.csv: no patient in split '",
                                              o.split, "'"));
    }
  }

  return TorchGuard("explain", [&]() -> StatusOr<ExplainResult> {
    torch::set_num_threads(o.threads);
    MultimodalAttentionNet net(m, /*full_attention=*/true);
    Status loaded = LoadFlatModel(*flat, *net);
    if (!loaded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(o.model_path, ": not a model of the study ",
                                                     o.study_path, " (", loaded.message(), ")"));
    }
    net->eval();
    torch::NoGradGuard no_grad;
    Batch batch = ToBatch(chosen, m);
    ModelOutput out = net->forward(batch);
    torch::Tensor prob = torch::sigmoid(out.logits);
    // Attention mass over the imaging tokens, for the heatmaps.
    const torch::Tensor imaging_mass =
        m.has_imaging() ? TokenAttention(out, "imaging") : torch::Tensor();

    std::error_code ec;
    fs::create_directories(o.out_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(o.out_dir, ": ", ec.message()));
    ExplainResult result;
    result.patients = chosen.size();
    for (size_t i = 0; i < chosen.size(); ++i) {
      const Patient& p = *chosen[i];
      json j = {{"schema", "attune.explain/1"},
                {"patient_id", p.id},
                {"split", p.split},
                {"label", p.label},
                {"probability", ToJson(prob[i])}};
      json modalities = json::object();
      for (int k = 0; k < kNumModalities; ++k) {
        modalities[ModalityNames()[k]] = {{"present", batch.present[i][k].item<bool>()},
                                          {"beta", ToJson(out.beta[i][k])},
                                          {"tokens", TokenLabels(k, p, data, m)}};
      }
      j["modalities"] = std::move(modalities);
      json attention = json::array();
      for (const auto& t : out.traces) {
        torch::Tensor w = t.weights[i];
        attention.push_back({{"name", t.name}, {"shape", w.sizes().vec()}, {"weights", ToJson(w)}});
      }
      j["attention"] = std::move(attention);
      if (imaging_mass.defined() && p.has_imaging) {
        const torch::Tensor heat = imaging_mass[i].to(torch::kFloat32);
        const std::string png = (fs::path(o.out_dir) / (p.id + ".imaging.png")).string();
        ATTUNE_RETURN_IF_ERROR(WriteHeatmap(png, heat, batch.imaging[i], m));
        j["imaging_heatmap"] = fs::path(png).filename().string();
        result.files.push_back(png);
      }
      const std::string path = (fs::path(o.out_dir) / (p.id + ".json")).string();
      ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(path, j.dump() + "\n"));
      result.files.push_back(path);
    }
    return result;
  });
}

}  // namespace attune::worker
