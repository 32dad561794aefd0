// `attune explain` (worker/explain.h): per-patient attention JSON and the
// imaging heatmap PNG, on a generated site with a freshly initialised model.
#include "attune/worker/explain.h"

#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "attune/common/config.h"
#include "attune/common/npy.h"
#include "attune/common/tensor_codec.h"
#include "attune/worker/learner.h"
#include "attune/common/png.h"
#include "nlohmann/json.hpp"
#include "support/temp_dir.h"
#include "synth/synth.h"

namespace attune::worker {
namespace {

using nlohmann::json;

// A study file with `model` and the model file of its initial model after
// one round of local training: a fresh model attends uniformly (its
// queries start at zero), a trained one does not.
void WriteStudyAndModel(const ModelConfig& m, const std::string& site_dir,
                        const std::string& study, const std::string& model) {
  json j = {{"study_id", "explain"},
            {"roster", {"site-1"}},
            {"min_sites", 1},
            {"model", json::parse(m.ToJson())}};
  ASSERT_TRUE(WriteFileAtomic(study, j.dump()).ok());
  auto learner = MakeTorchLearner(m, {site_dir, 1});
  ASSERT_TRUE(learner.ok()) << learner.status();
  auto flat = (*learner)->InitialModel(7);
  ASSERT_TRUE(flat.ok()) << flat.status();
  auto trained = (*learner)->Train(*flat, TrainConfig{}, {});
  ASSERT_TRUE(trained.ok()) << trained.status();
  ASSERT_EQ(trained->delta.values.size(), flat->values.size());
  for (size_t i = 0; i < flat->values.size(); ++i) flat->values[i] += trained->delta.values[i];
  ASSERT_TRUE(WriteFileAtomic(model, EncodeModel(*flat)).ok());
}

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

ModelConfig SynthModel() {
  ModelConfig m;  // the defaults match the generator's widths
  m.static_features = synth::kStaticFeatures;
  m.imaging_patches = synth::kImagingPatches;
  m.imaging_dim = synth::kImagingDim;
  m.genes = synth::kGenes;
  return m;
}

class ExplainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    synth::SynthOptions s;
    s.out_dir = dir_ / "data";
    s.num_sites = 1;
    s.patients_per_site = 40;
    ASSERT_TRUE(synth::Generate(s).ok());
    site_ = dir_ / "data/site-1";
  }
  // Writes the study and its initial model; options that explain them.
  ExplainOptions Prepare(const ModelConfig& m) {
    WriteStudyAndModel(m, site_, dir_ / "study.json", dir_ / "model.atnm");
    ExplainOptions o;
    o.study_path = dir_ / "study.json";
    o.model_path = dir_ / "model.atnm";
    o.site_dir = site_;
    o.out_dir = dir_ / "explain";
    return o;
  }
  testing::TempDir dir_;
  std::string site_;
};

TEST_F(ExplainTest, WritesEveryLayerAndHeadAndAHeatmap) {
  const ModelConfig m = SynthModel();
  ExplainOptions o = Prepare(m);
  o.split = "train";
  o.count = 4;
  auto r = Explain(o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->patients, 4u);

  int heatmaps = 0;
  for (const std::string& f : r->files) {
    if (f.ends_with(".png")) {
      auto png = ReadPng(f);
      ASSERT_TRUE(png.ok()) << png.status();
      EXPECT_EQ(png->width, 4 * 32);  // 16 patches as a 4 × 4 grid of 32 px cells
      EXPECT_EQ(png->height, 4 * 32);
      std::set<uint32_t> colours;
      for (size_t i = 0; i < png->pixels.size(); i += 3) {
        colours.insert(png->pixels[i] << 16 | png->pixels[i + 1] << 8 | png->pixels[i + 2]);
      }
      EXPECT_GT(colours.size(), 4u) << f << ": a heatmap, not a flat image";
      ++heatmaps;
      continue;
    }
    json j = ReadJson(f);
    EXPECT_EQ(j["schema"], "attune.explain/1");
    const double p = j["probability"];
    EXPECT_GT(p, 0.0);
    EXPECT_LT(p, 1.0);
    double beta = 0;
    for (const auto& [name, mod] : j["modalities"].items()) {
      beta += mod["beta"].get<double>();
      if (!mod["present"].get<bool>()) EXPECT_EQ(mod["beta"].get<double>(), 0.0) << name;
    }
    EXPECT_NEAR(beta, 1.0, 1e-5);
    // Tokens are named from the site's files: the class token, then columns.
    const auto& static_tokens = j["modalities"]["ehr_static"]["tokens"];
    ASSERT_EQ(static_tokens.size(), 1u + m.static_features);
    EXPECT_EQ(static_tokens[1], "age");
    // Every encoder layer's self-attention: [heads][1+L][1+L], rows sum to 1.
    std::set<std::string> names;
    for (const auto& a : j["attention"]) {
      const std::string name = a["name"];
      names.insert(name);
      if (!name.ends_with("/self") || name.rfind("fusion", 0) == 0) continue;
      ASSERT_EQ(a["shape"][0], m.heads) << name;
      for (const auto& head : a["weights"]) {
        for (const auto& row : head) {
          double sum = 0;
          for (double w : row) sum += w;
          EXPECT_NEAR(sum, 1.0, 1e-4) << name;
        }
      }
    }
    for (const char* want : {"ehr_static/layer0/self", "ehr_events/layer0/self",
                             "imaging/layer0/self", "genomics/layer0/self", "fusion/beta"}) {
      EXPECT_TRUE(names.count(want)) << want;
    }
  }
  EXPECT_GT(heatmaps, 0);
}

TEST_F(ExplainTest, DrawsTheHeatmapOverARawImage) {
  ModelConfig m = SynthModel();
  m.imaging_encoder = "vit";
  m.image_size = 8;
  m.patch_size = 4;
  // Replace the generated patch features by 8 × 8 images.
  std::filesystem::remove_all(site_ + "/imaging");
  std::filesystem::create_directories(site_ + "/imaging");
  std::ifstream cohort(site_ + "/cohort.csv");
  std::string line, first;
  std::getline(cohort, line);
  std::getline(cohort, line);
  first = line.substr(0, line.find(','));
  NpyArray image{{1, 8, 8}, std::vector<float>(64)};
  for (int i = 0; i < 64; ++i) image.data[i] = static_cast<float>(i % 8);  // a horizontal ramp
  ASSERT_TRUE(WriteNpy(site_ + "/imaging/" + first + ".npy", image).ok());
  ExplainOptions o = Prepare(m);
  o.patients = {first};
  auto r = Explain(o);
  ASSERT_TRUE(r.ok()) << r.status();
  auto png = ReadPng(dir_ / ("explain/" + first + ".imaging.png"));
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(png->width, 256);  // 8 px scaled 32×
  // The image shows through: within one patch, brightness rises left to right.
  EXPECT_LT(png->at(2, 2)[1], png->at(100, 2)[1]);
  json j = ReadJson(dir_ / ("explain/" + first + ".json"));
  EXPECT_EQ(j["imaging_heatmap"], first + ".imaging.png");
  EXPECT_EQ(j["modalities"]["imaging"]["tokens"][1], "patch row 0 col 0");
}

TEST_F(ExplainTest, ClearErrors) {
  const ModelConfig m = SynthModel();
  ExplainOptions o = Prepare(m);

  o.patients = {"nobody"};
  auto r = Explain(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("'nobody'"), std::string::npos) << r.status();

  o.patients.clear();
  ASSERT_TRUE(WriteFileAtomic(dir_ / "garbage.atnm", "not a model").ok());
  o.model_path = dir_ / "garbage.atnm";
  r = Explain(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not an Attune model file"), std::string::npos) << r.status();

  // A model of another study (other widths) is refused, not misread.
  ModelConfig other = m;
  other.d_model = 16;
  WriteStudyAndModel(other, site_, dir_ / "other.json", dir_ / "other.atnm");
  o.model_path = dir_ / "other.atnm";
  r = Explain(o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("not a model of the study"), std::string::npos) << r.status();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "explain"));
}

}  // namespace
}  // namespace attune::worker
