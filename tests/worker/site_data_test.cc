#include "attune/worker/site_data.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "attune/common/npy.h"
#include "support/temp_dir.h"
#include "synth/synth.h"

namespace attune::worker {
namespace {

void Write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

ModelConfig SmallModel() {
  ModelConfig m;
  m.static_features = 2;
  m.genes = 2;
  m.imaging_patches = 2;
  m.imaging_dim = 3;
  m.max_events = 2;
  return m;
}

// A minimal valid site: 3 patients, every modality for some of them.
void WriteSite(const testing::TempDir& d) {
  Write(d / "cohort.csv",
        "\xEF\xBB\xBFpatient_id,split,label,sex\r\np1,train,1,F\r\np2,train,0,M\r\np3,val,0,F\r\n");
  Write(d / "ehr/static.csv", "patient_id,a,b\np1,1,10\np2,3,\np3,5,30\n");
  Write(d / "ehr/events.csv",
        "patient_id,time,code,value\np1,3,LAB:x,1\np1,1,LAB:x,3\np1,2,DX:y,\np2,1,LAB:x,2\n");
  Write(d / "genomics/expression.tsv", "patient_id\tG1\tG2\np2\t1\t2\n");
  std::filesystem::create_directories(d / "imaging");
  ASSERT_TRUE(WriteNpy(d / "imaging/p1.npy", {{2, 3}, {1, 2, 3, 4, 5, 6}}).ok());
}

TEST(SiteData, LoadsAllModalitiesAndMissingOnes) {
  testing::TempDir d;
  WriteSite(d);
  auto data = LoadSiteData(d.path(), SmallModel());
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->subgroup_columns, std::vector<std::string>{"sex"});
  ASSERT_EQ(data->patients.size(), 3u);
  EXPECT_EQ(data->Count("train"), 2);
  const Patient& p1 = data->patients[0];
  EXPECT_EQ(p1.label, 1);
  EXPECT_TRUE(p1.has_static && p1.has_imaging && !p1.has_genomics);
  ASSERT_EQ(p1.events.size(), 2u);  // max_events keeps the latest two
  EXPECT_FLOAT_EQ(p1.events[0].time, 2);
  EXPECT_FLOAT_EQ(p1.events[1].time, 3);
  // Static features standardised on the training split: a = (1, 3) -> (-1, 1).
  EXPECT_NEAR(p1.static_features[0], -1.0, 1e-3);
  EXPECT_NEAR(data->patients[1].static_features[0], 1.0, 1e-3);
  EXPECT_FLOAT_EQ(data->patients[1].static_features[1], 0.0f);  // missing -> mean
  EXPECT_TRUE(data->patients[1].has_genomics);
  EXPECT_FALSE(data->patients[2].has_genomics);
}

struct BadRow {
  const char* file;
  const char* content;
  const char* expect;  // in the message: file and line
};

class SiteDataErrors : public ::testing::TestWithParam<BadRow> {};

TEST_P(SiteDataErrors, NameFileAndLine) {
  testing::TempDir d;
  WriteSite(d);
  Write(d / GetParam().file, GetParam().content);
  auto data = LoadSiteData(d.path(), SmallModel());
  ASSERT_FALSE(data.ok());
  const std::string msg(data.status().message());
  EXPECT_NE(msg.find(GetParam().expect), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, SiteDataErrors,
    ::testing::Values(
        BadRow{"cohort.csv", "patient_id,split,label,sex\np1,train,2,F\n", "cohort.csv:2: label must be 0 or 1"},
        BadRow{"cohort.csv", "patient_id,split,label,sex\np1,train,1,F\np1,val,0,M\n", "cohort.csv:3: patient 'p1' appears twice"},
        BadRow{"cohort.csv", "patient_id,split,label,sex\np1,dev,1,F\n", "cohort.csv:2: split must be"},
        BadRow{"cohort.csv", "patient_id,split,label,sex\np1,train,1\n", "cohort.csv:2: expected 4 fields, got 3"},
        BadRow{"cohort.csv", "id,split,label\n", "cohort.csv:1: header must start with"},
        BadRow{"ehr/static.csv", "patient_id,a,b\np1,1,2\np2,abc,3\n", "static.csv:3: column 'a': 'abc' is not a finite number"},
        BadRow{"ehr/static.csv", "patient_id,a,b\np9,1,2\n", "static.csv:2: patient 'p9' is not in cohort.csv"},
        BadRow{"ehr/static.csv", "patient_id,a\np1,1\n", "static.csv:1: the study's model expects 2"},
        BadRow{"ehr/static.csv", "patient_id,a,b\np1,inf,2\n", "static.csv:2: column 'a'"},
        BadRow{"ehr/events.csv", "patient_id,time,code,value\np1,x,LAB,1\n", "events.csv:2: column 'time'"},
        BadRow{"ehr/events.csv", "patient_id,time,code,value\np1,1,,1\n", "events.csv:2: column 'code' is empty"},
        BadRow{"genomics/expression.tsv", "patient_id\tG1\tG2\np1\t1\n", "expression.tsv:2: expected 3 fields, got 2"},
        BadRow{"imaging/p2.npy", "garbage", "imaging/p2.npy"}));

TEST(SiteData, MissingCohortIsNotFound) {
  testing::TempDir d;
  auto data = LoadSiteData(d.path(), SmallModel());
  EXPECT_EQ(data.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(data.status().message()).find("cohort.csv"), std::string::npos);
}

TEST(SiteData, ImagingOfTheWrongShapeNamesTheFile) {
  testing::TempDir d;
  WriteSite(d);
  ASSERT_TRUE(WriteNpy(d / "imaging/p2.npy", {{3, 2}, {1, 2, 3, 4, 5, 6}}).ok());
  auto data = LoadSiteData(d.path(), SmallModel());
  ASSERT_FALSE(data.ok());
  EXPECT_NE(std::string(data.status().message()).find("p2.npy: shape [3,2]"), std::string::npos)
      << data.status();
}

TEST(SiteData, LoadsTheSyntheticCohort) {
  testing::TempDir d;
  synth::SynthOptions o;
  o.out_dir = d.path();
  o.num_sites = 1;
  o.patients_per_site = 60;
  ASSERT_TRUE(synth::Generate(o).ok());
  auto data = LoadSiteData(d / "site-1", ModelConfig{});
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->patients.size(), 60u);
  EXPECT_EQ(data->subgroup_columns, (std::vector<std::string>{"sex", "age_band", "ethnicity"}));
}

}  // namespace
}  // namespace attune::worker
