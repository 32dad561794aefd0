// attune import mimic_iv_demo: the real demo (skipped without
// ../shared/data), and crafted gzipped tables with its quirks.
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>
#include <set>

#include "absl/strings/numbers.h"
#include "attune/common/config.h"
#include "attune/worker/site_data.h"
#include "helpers.h"
#include "importers/csv.h"
#include "support/temp_dir.h"

namespace attune::importers {
namespace {

namespace fs = std::filesystem;

const std::string kShared = ATTUNE_SHARED_DATA "/mimic_iv_demo_2.2_subset";

void WriteGz(const std::string& path, const std::string& text) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, text.data(), static_cast<unsigned>(text.size())), static_cast<int>(text.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

TEST(MimicIvDemo, RealTablesImportAndLoad) {
  if (!fs::exists(kShared)) GTEST_SKIP() << kShared << " is absent: the shared data is not here";
  testing::TempDir dir;
  auto report = Import(Options("mimic_iv_demo", kShared, dir / "sites"));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->patients, 275);  // SOURCE.txt: 275 admissions, 15 in-hospital deaths
  EXPECT_EQ(report->positives, 15);
  auto model = ModelConfig::FromJson(report->model_json);
  ASSERT_TRUE(model.ok()) << model.status();
  int64_t loaded = 0, events = 0;
  for (const auto& data : LoadSites(dir / "sites", report->sites, *model)) {
    loaded += data.patients.size();
    for (const auto& p : data.patients) {
      events += p.events.size();
      for (const auto& e : p.events) {
        if (e.code.rfind("lab:", 0) == 0) EXPECT_LT(e.time, 48.0) << p.id << " " << e.code;
        if (e.code.rfind("icd", 0) == 0) EXPECT_LE(e.time, 0.0) << p.id << " " << e.code;
      }
    }
  }
  EXPECT_EQ(loaded, 275);
  EXPECT_GT(events, 10000);
  // A patient's admissions share a split, and every split has deaths.
  const auto rows = CohortRows(dir / "sites", report->sites);
  CsvReader admissions(kShared + "/hosp/admissions.csv.gz");
  std::vector<std::string> f;
  ASSERT_TRUE(admissions.Next(&f));
  std::map<std::string, std::set<std::string>> splits_of_subject;
  std::map<std::string, int> deaths_in_split;
  while (admissions.Next(&f)) {
    const auto& row = rows.at(f[1]);  // hadm_id
    splits_of_subject[f[0]].insert(row[0]);
    deaths_in_split[row[0]] += row[1] == "1";
  }
  for (const auto& [subject, splits] : splits_of_subject) EXPECT_EQ(splits.size(), 1u) << subject;
  for (const char* split : {"train", "val", "test"}) EXPECT_GT(deaths_in_split[split], 0) << split;
}

// Crafted tables: a quoted comma in a lab name, a lab after 48 h, an
// outpatient lab, a text value, an empty value, a lab charted before
// admission, and ICD codes of an earlier and of the same admission.
struct Crafted {
  std::string died = "1";
  bool truncate_labs = false;
};

void WriteTables(const std::string& src, const Crafted& c) {
  fs::create_directories(src + "/hosp");
  WriteGz(src + "/hosp/patients.csv.gz",
          "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n"
          "1,F,50,2100,2008 - 2010,\n2,M,70,2100,2008 - 2010,\n");
  WriteGz(src + "/hosp/admissions.csv.gz",
          "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,"
          "insurance,race,hospital_expire_flag\n"
          "1,10,2100-01-01 00:00:00,2100-01-05 00:00:00,,EW EMER.,ER,Medicare,WHITE,0\n"
          "1,11,2101-01-01 12:00:00,2101-01-03 00:00:00,,URGENT,ER,,\"HISPANIC/LATINO - CUBAN\"," +
              c.died + "\n"
              "2,20,2100-06-01 00:00:00,2100-06-02 00:00:00,,ELECTIVE,REF,Other,UNKNOWN,0\n");
  WriteGz(src + "/hosp/d_labitems.csv.gz", "itemid,label\n500,\"Sodium, whole blood\"\n");
  const std::string labs =
      "labevent_id,subject_id,hadm_id,itemid,charttime,value,valuenum\n"
      "1,1,10,500,2100-01-01 06:00:00,140,140\n"
      "2,1,10,500,2100-01-03 06:00:00,141,141\n"
      "3,1,,500,2099-12-01 00:00:00,139,139\n"
      "4,1,11,500,2101-01-01 13:30:00,NEG,\n"
      "5,1,11,500,2101-01-01 11:00:00,,\n";
  WriteGz(src + "/hosp/labevents.csv.gz", labs);
  if (c.truncate_labs) {
    std::string bytes = Slurp(src + "/hosp/labevents.csv.gz");
    std::ofstream(src + "/hosp/labevents.csv.gz", std::ios::binary | std::ios::trunc)
        << bytes.substr(0, bytes.size() - 30);
  }
  WriteGz(src + "/hosp/diagnoses_icd.csv.gz",
          "subject_id,hadm_id,seq_num,icd_code,icd_version\n1,10,1,4019,9\n1,11,1,I10,10\n");
}

TEST(MimicIvDemo, QuirksAreHandled) {
  testing::TempDir dir;
  WriteTables(dir / "src", {});
  ImportOptions o = Options("mimic_iv_demo", dir / "src", dir / "out");
  o.sites = 1;
  auto report = Import(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->patients, 3);
  EXPECT_EQ(report->positives, 1);
  const std::string ev = Slurp(dir / "out/site-1/ehr/events.csv");
  EXPECT_NE(ev.find("10,6,lab:Sodium; whole blood,140\n"), std::string::npos) << ev;
  EXPECT_EQ(ev.find(",141\n"), std::string::npos) << ev;  // 54 h after admission
  EXPECT_EQ(ev.find(",139\n"), std::string::npos) << ev;  // outpatient
  EXPECT_NE(ev.find("11,1.5,lab:Sodium; whole blood,\n"), std::string::npos) << ev;  // "NEG"
  EXPECT_NE(ev.find("11,-1,lab:Sodium; whole blood,\n"), std::string::npos) << ev;
  // 2100-01-05 00:00 to 2101-01-01 12:00 is 361 days and 12 hours (2100 is no leap year).
  EXPECT_NE(ev.find("11,-8676,icd9:4019,\n"), std::string::npos) << ev;
  EXPECT_EQ(ev.find("icd10:I10"), std::string::npos) << ev;  // coded at discharge
  const std::string st = Slurp(dir / "out/site-1/ehr/static.csv");
  EXPECT_NE(st.find("patient_id,age_years,earlier_admissions\n"), std::string::npos) << st;
  EXPECT_NE(st.find("11,51,1\n"), std::string::npos) << st;
  const auto rows = CohortRows(dir / "out", {"site-1"});
  EXPECT_EQ(rows.at("11"), (std::vector<std::string>{rows.at("10")[0], "1", "F", "40-59",
                                                     "HISPANIC", "unknown"}));
  auto model = ModelConfig::FromJson(report->model_json);
  ASSERT_TRUE(model.ok());
  auto data = worker::LoadSiteData(dir / "out/site-1", *model);
  ASSERT_TRUE(data.ok()) << data.status();
  // Pseudo-sites from admission_type, named by slug.
  o.site_by = "admission_type";
  o.out_dir = dir / "typed";
  report = Import(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->sites, std::vector<std::string>{"admission_type-other"});  // all < 10
}

TEST(MimicIvDemo, BadInputIsAClearError) {
  {
    testing::TempDir dir;
    WriteTables(dir / "src", {.died = "2"});
    auto report = Import(Options("mimic_iv_demo", dir / "src", dir / "out"));
    EXPECT_EQ(report.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(report.status().message().find("admissions.csv.gz:3: hospital_expire_flag: '2'"),
              std::string::npos)
        << report.status();
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
  {
    testing::TempDir dir;
    WriteTables(dir / "src", {.truncate_labs = true});
    auto report = Import(Options("mimic_iv_demo", dir / "src", dir / "out"));
    EXPECT_EQ(report.status().code(), absl::StatusCode::kDataLoss) << report.status();
    EXPECT_NE(report.status().message().find("labevents.csv.gz"), std::string::npos);
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
  {
    testing::TempDir dir;
    auto report = Import(Options("mimic_iv_demo", dir.path(), dir / "out"));
    EXPECT_EQ(report.status().code(), absl::StatusCode::kNotFound) << report.status();
    EXPECT_NE(report.status().message().find("hosp/patients.csv.gz"), std::string::npos);
  }
}

}  // namespace
}  // namespace attune::importers
