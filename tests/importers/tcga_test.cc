// attune import tcga_glioma: the real file (skipped without ../shared/data),
// and its quirks on crafted files.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "attune/common/config.h"
#include "attune/worker/site_data.h"
#include "helpers.h"
#include "support/temp_dir.h"

namespace attune::importers {
namespace {

namespace fs = std::filesystem;

const std::string kShared = ATTUNE_SHARED_DATA "/tcga_gbm_lgg_glioma_mutations";

ImportOptions Options(const std::string& source, const std::string& out) {
  return importers::Options("tcga_glioma", source, out);
}

TEST(TcgaGlioma, RealFileImportsAndLoads) {
  if (!fs::exists(kShared)) GTEST_SKIP() << kShared << " is absent: the shared data is not here";
  testing::TempDir dir;
  auto report = Import(Options(kShared, dir / "sites"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->patients, 862);  // SOURCE.txt: 862 cases, GBM 363, LGG 499
  EXPECT_EQ(report->positives, 363);
  ASSERT_EQ(report->sites.size(), 3u);
  auto model = ModelConfig::FromJson(report->model_json);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->genes, 20);
  EXPECT_EQ(model->static_features, 1);
  int64_t loaded = 0;
  for (const auto& data : LoadSites(dir / "sites", report->sites, *model)) {
    loaded += data.patients.size();
    EXPECT_EQ(data.gene_columns.front(), "IDH1");
    EXPECT_EQ(data.subgroup_columns, (std::vector<std::string>{"sex", "age_band", "race"}));
  }
  EXPECT_EQ(loaded, 862);
  // The first case: LGG, male, "51 years 108 days", IDH1 mutated.
  std::string all;
  for (const auto& site : report->sites) all += Slurp(dir / ("sites/" + site + "/ehr/static.csv"));
  EXPECT_NE(all.find("TCGA-DU-8164," + std::to_string(51 + 108 / 365.25).substr(0, 6)),
            std::string::npos);
  // The same options give the same files.
  auto again = Import(Options(kShared, dir / "again"));
  ASSERT_TRUE(again.ok());
  for (const auto& site : report->sites) {
    EXPECT_EQ(Slurp(dir / ("sites/" + site + "/cohort.csv")),
              Slurp(dir / ("again/" + site + "/cohort.csv")));
  }
}

TEST(TcgaGlioma, TissueSourceSitesAreLabelPure) {
  if (!fs::exists(kShared)) GTEST_SKIP() << kShared << " is absent: the shared data is not here";
  testing::TempDir dir;
  ImportOptions o = Options(kShared, dir.path());
  o.site_by = "tss";
  auto report = Import(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(report->sites.size(), 10u);
  for (const auto& site : report->sites) {
    if (site == "tss-other") continue;  // small sites pooled
    std::ifstream in(dir / (site + "/cohort.csv"));
    std::string line;
    std::getline(in, line);
    std::set<char> labels;
    while (std::getline(in, line)) {
      const size_t a = line.find(','), b = line.find(',', a + 1);
      labels.insert(line[b + 1]);
    }
    EXPECT_EQ(labels.size(), 1u) << site;
  }
}

// A crafted file with the publisher's quirks: BOM, CRLF, a quoted comma, a
// missing final newline, "87 years" and "--" ages.
std::string Crafted(const std::string& age2, const std::string& gene2) {
  return "\xEF\xBB\xBFGrade,Project,Case_ID,Gender,Age_at_diagnosis,Primary_Diagnosis,Race,IDH1,TP53\r\n"
         "LGG,TCGA-LGG,TCGA-DU-0001,Male,51 years 108 days,\"Oligodendroglioma, NOS\",white,MUTATED,NOT_MUTATED\r\n"
         "GBM,TCGA-GBM,TCGA-06-0002,Female," + age2 + ",Glioblastoma,--,NOT_MUTATED," + gene2 + "\r\n"
         "GBM,TCGA-GBM,TCGA-06-0003,--,--,Glioblastoma,asian,NOT_MUTATED,MUTATED";
}

TEST(TcgaGlioma, QuirksAreHandled) {
  testing::TempDir dir;
  fs::create_directories(dir / "src");
  std::ofstream(dir / "src/TCGA_GBM_LGG_Mutations_all.csv", std::ios::binary)
      << Crafted("87 years", "MUTATED");
  ImportOptions o = Options(dir / "src", dir / "out");
  o.sites = 1;
  auto report = Import(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->patients, 3);
  const std::string cohort = Slurp(dir / "out/site-1/cohort.csv");
  EXPECT_NE(cohort.find("TCGA-06-0002,"), std::string::npos);
  EXPECT_NE(cohort.find(",1,F,>=60,unknown"), std::string::npos) << cohort;
  EXPECT_NE(cohort.find(",1,unknown,unknown,asian"), std::string::npos) << cohort;
  const std::string st = Slurp(dir / "out/site-1/ehr/static.csv");
  EXPECT_NE(st.find("TCGA-06-0002,87\n"), std::string::npos) << st;
  EXPECT_NE(st.find("TCGA-06-0003,\n"), std::string::npos) << st;  // missing, not 0
  const std::string ge = Slurp(dir / "out/site-1/genomics/expression.tsv");
  EXPECT_NE(ge.find("patient_id\tIDH1\tTP53\n"), std::string::npos) << ge;
  EXPECT_NE(ge.find("TCGA-DU-0001\t1\t0\n"), std::string::npos) << ge;
  // Importing again without --overwrite keeps what is there.
  auto again = Import(o);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
}

TEST(TcgaGlioma, BadCellsNameFileAndLine) {
  struct Case {
    std::string age, gene, want;
  };
  for (const Case& c : {Case{"51 yrs", "MUTATED", ".csv:3: Age_at_diagnosis: '51 yrs'"},
                        Case{"60 years", "MAYBE", ".csv:3: TP53: 'MAYBE'"}}) {
    testing::TempDir dir;
    fs::create_directories(dir / "src");
    std::ofstream(dir / "src/TCGA_GBM_LGG_Mutations_all.csv", std::ios::binary)
        << Crafted(c.age, c.gene);
    auto report = Import(Options(dir / "src", dir / "out"));
    EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(report.status().message().find(c.want), std::string::npos) << report.status();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
}

}  // namespace
}  // namespace attune::importers
