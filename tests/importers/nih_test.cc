// attune import nih_chestxray: the real subset (skipped without
// ../shared/data), and crafted metadata and PNGs.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "attune/common/config.h"
#include "attune/common/npy.h"
#include "attune/common/png.h"
#include "attune/worker/site_data.h"
#include "helpers.h"
#include "importers/csv.h"
#include "support/temp_dir.h"

namespace attune::importers {
namespace {

namespace fs = std::filesystem;

const std::string kShared = ATTUNE_SHARED_DATA "/nih_chestxray14_1000_64px";

TEST(NihChestXray, RealImagesImportAndLoad) {
  if (!fs::exists(kShared)) GTEST_SKIP() << kShared << " is absent: the shared data is not here";
  testing::TempDir dir;
  auto report = Import(Options("nih_chestxray", kShared, dir / "sites"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->patients, 1000);  // SOURCE.txt: 500 abnormal / 500 normal
  EXPECT_EQ(report->positives, 500);
  auto model = ModelConfig::FromJson(report->model_json);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->imaging_encoder, "cnn");
  EXPECT_EQ(model->image_size, 64);
  int64_t loaded = 0;
  for (const auto& data : LoadSites(dir / "sites", report->sites, *model)) {
    loaded += data.patients.size();
    for (const auto& p : data.patients) {
      ASSERT_TRUE(p.has_imaging);
      ASSERT_EQ(p.imaging.size(), 64u * 64u);
    }
  }
  EXPECT_EQ(loaded, 1000);
  // Upstream, 30 patients straddle splits; here none does.
  const auto rows = CohortRows(dir / "sites", report->sites);
  CsvReader meta(kShared + "/metadata_nih1000.csv");
  std::vector<std::string> f;
  ASSERT_TRUE(meta.Next(&f));
  std::map<std::string, std::set<std::string>> splits_of_patient;
  while (meta.Next(&f)) {
    const std::string id = f[1].substr(0, f[1].size() - 4);  // "00000231_013.png"
    splits_of_patient[f[6]].insert(rows.at(id)[0]);
  }
  EXPECT_EQ(splits_of_patient.size(), 264u);
  for (const auto& [patient, splits] : splits_of_patient) EXPECT_EQ(splits.size(), 1u) << patient;
  // An RGBA file reads like the RGB ones: a real X-ray, not a blank.
  for (const auto& site : report->sites) {
    const std::string npy = dir / ("sites/" + site + "/imaging/00000273_004.npy");
    if (!fs::exists(npy)) continue;
    auto image = ReadNpy(npy);
    ASSERT_TRUE(image.ok()) << image.status();
    std::set<float> values(image->data.begin(), image->data.end());
    EXPECT_GT(values.size(), 50u);
    EXPECT_GE(*values.begin(), 0.0f);
    EXPECT_LE(*values.rbegin(), 1.0f);
  }
  // Sites by view position.
  ImportOptions o = Options("nih_chestxray", kShared, dir / "views");
  o.site_by = "view";
  report = Import(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->sites, (std::vector<std::string>{"view-ap", "view-pa"}));
}

const char kHeader[] =
    "image_path,Image Index,split,folder_label,Finding Labels,Follow-up #,Patient ID,Patient Age,"
    "Patient Gender,View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n";

// Two 4x4 images of one patient, gray levels 0..15 and 255..240.
void WriteSource(const std::string& src, const std::string& second_folder) {
  fs::create_directories(src + "/images/train/0_normal");
  fs::create_directories(src + "/images/test/1_abnormal");
  for (int k = 0; k < 2; ++k) {
    RgbImage img{4, 4, std::vector<uint8_t>(48)};
    for (int i = 0; i < 16; ++i) {
      const uint8_t v = static_cast<uint8_t>(k == 0 ? i : 255 - i);
      img.pixels[3 * i] = img.pixels[3 * i + 1] = img.pixels[3 * i + 2] = v;
    }
    ASSERT_TRUE(WritePng(src + (k == 0 ? "/images/train/0_normal/a_000.png"
                                       : "/images/test/1_abnormal/a_001.png"),
                         img)
                    .ok());
  }
  std::ofstream(src + "/metadata_nih1000.csv")
      << kHeader
      << "images/train/0_normal/a_000.png,a_000.png,train,0_normal,No Finding,0,7,35,F,PA,1,1,1,1\n"
      << "images/test/1_abnormal/a_001.png,a_001.png,test," << second_folder
      << ",Effusion,1,7,36,F,AP,1,1,1,1\n";
}

TEST(NihChestXray, CraftedImagesBecomeGrayArrays) {
  testing::TempDir dir;
  WriteSource(dir / "src", "1_abnormal");
  ImportOptions o = Options("nih_chestxray", dir / "src", dir / "out");
  o.sites = 1;
  auto report = Import(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->positives, 1);
  const auto rows = CohortRows(dir / "out", {"site-1"});
  EXPECT_EQ(rows.at("a_000")[0], rows.at("a_001")[0]);  // one patient, one split
  EXPECT_EQ(rows.at("a_001"), (std::vector<std::string>{rows.at("a_001")[0], "1", "F", "<40", "AP"}));
  auto a = ReadNpy(dir / "out/site-1/imaging/a_001.npy");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->shape, (std::vector<int64_t>{4, 4}));
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(a->data[i], (255 - i) / 255.0, 1.01 / 255) << i;
}

TEST(NihChestXray, BadInputIsAClearError) {
  {
    testing::TempDir dir;
    WriteSource(dir / "src", "2_unsure");
    auto report = Import(Options("nih_chestxray", dir / "src", dir / "out"));
    EXPECT_NE(report.status().message().find("metadata_nih1000.csv:3: folder_label: '2_unsure'"),
              std::string::npos)
        << report.status();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
  {
    testing::TempDir dir;
    WriteSource(dir / "src", "1_abnormal");
    fs::remove(dir / "src/images/test/1_abnormal/a_001.png");
    auto report = Import(Options("nih_chestxray", dir / "src", dir / "out"));
    EXPECT_NE(report.status().message().find("a_001.png"), std::string::npos) << report.status();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
}

}  // namespace
}  // namespace attune::importers
