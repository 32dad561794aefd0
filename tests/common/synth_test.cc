#include "synth/synth.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "attune/common/npy.h"
#include "gtest/gtest.h"

namespace attune::synth {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = fs::temp_directory_path() /
            ("attune_synth_test_" + std::to_string(now) + "_" +
             std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

std::vector<std::string> Lines(const fs::path& path) {
  std::istringstream in(ReadBytes(path));
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> SplitOn(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  parts.push_back(cur);
  return parts;
}

// Relative path -> contents, for every file under `root`.
std::map<std::string, std::string> Snapshot(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file()) {
      files[fs::relative(entry.path(), root).string()] =
          ReadBytes(entry.path());
    }
  }
  return files;
}

SynthOptions SmallOptions(const fs::path& out) {
  SynthOptions options;
  options.out_dir = out.string();
  options.num_sites = 2;
  options.patients_per_site = 50;
  options.seed = 11;
  return options;
}

TEST(SynthTest, WritesSiteLayout) {
  TempDir dir;
  ASSERT_TRUE(Generate(SmallOptions(dir.path())).ok());

  std::set<std::string> all_ids;
  for (const char* site : {"site-1", "site-2"}) {
    fs::path s = dir.path() / site;
    ASSERT_TRUE(fs::exists(s / "cohort.csv")) << site;
    ASSERT_TRUE(fs::exists(s / "ehr" / "static.csv")) << site;
    ASSERT_TRUE(fs::exists(s / "ehr" / "events.csv")) << site;
    ASSERT_TRUE(fs::exists(s / "genomics" / "expression.tsv")) << site;
    ASSERT_TRUE(fs::is_directory(s / "imaging")) << site;

    std::vector<std::string> cohort = Lines(s / "cohort.csv");
    ASSERT_EQ(cohort.size(), 51u);
    EXPECT_EQ(cohort[0], "patient_id,split,label,sex,age_band,ethnicity");
    std::set<std::string> splits, labels;
    int with_imaging = 0;
    for (size_t i = 1; i < cohort.size(); ++i) {
      std::vector<std::string> f = SplitOn(cohort[i], ',');
      ASSERT_EQ(f.size(), 6u) << cohort[i];
      EXPECT_TRUE(all_ids.insert(f[0]).second) << "duplicate id " << f[0];
      splits.insert(f[1]);
      labels.insert(f[2]);
      EXPECT_TRUE(f[3] == "F" || f[3] == "M") << cohort[i];
      if (fs::exists(s / "imaging" / (f[0] + ".npy"))) ++with_imaging;
    }
    EXPECT_EQ(splits, (std::set<std::string>{"train", "val", "test"}));
    EXPECT_EQ(labels, (std::set<std::string>{"0", "1"}));
    EXPECT_GT(with_imaging, 25);
    EXPECT_LT(with_imaging, 50);

    std::vector<std::string> statics = Lines(s / "ehr" / "static.csv");
    ASSERT_EQ(statics.size(), 51u);
    EXPECT_EQ(SplitOn(statics[0], ',').size(), 1u + kStaticFeatures);
    std::vector<std::string> expression =
        Lines(s / "genomics" / "expression.tsv");
    ASSERT_GE(expression.size(), 2u);
    EXPECT_EQ(SplitOn(expression[0], '\t').size(), 1u + kGenes);
    EXPECT_EQ(Lines(s / "ehr" / "events.csv")[0], "patient_id,time,code,value");

    for (const auto& entry : fs::directory_iterator(s / "imaging")) {
      StatusOr<NpyArray> image = ReadNpy(entry.path().string());
      ASSERT_TRUE(image.ok()) << image.status();
      EXPECT_EQ(image->shape,
                (std::vector<int64_t>{kImagingPatches, kImagingDim}));
      break;
    }
  }
}

TEST(SynthTest, IsDeterministic) {
  TempDir a, b;
  ASSERT_TRUE(Generate(SmallOptions(a.path())).ok());
  ASSERT_TRUE(Generate(SmallOptions(b.path())).ok());
  std::map<std::string, std::string> fa = Snapshot(a.path());
  std::map<std::string, std::string> fb = Snapshot(b.path());
  EXPECT_GT(fa.size(), 50u);
  EXPECT_TRUE(fa == fb);

  // A different seed gives a different cohort.
  TempDir c;
  SynthOptions other = SmallOptions(c.path());
  other.seed = 12;
  ASSERT_TRUE(Generate(other).ok());
  EXPECT_NE(ReadBytes(a.path() / "site-1" / "ehr" / "static.csv"),
            ReadBytes(c.path() / "site-1" / "ehr" / "static.csv"));
}

// The audit's shortcut study: women on ward 4 and men elsewhere at every
// site; planted, site-1's positive women in the high-dependency unit. Every
// other value is the same as without the column.
TEST(SynthTest, RoomNumberFollowsItsRule) {
  for (const std::string mode : {"control", "planted"}) {
    TempDir dir, plain;
    SynthOptions o = SmallOptions(dir.path());
    o.room_number = mode;
    ASSERT_TRUE(Generate(o).ok());
    ASSERT_TRUE(Generate(SmallOptions(plain.path())).ok());
    int hdu = 0;
    for (const std::string site : {"site-1", "site-2"}) {
      const std::vector<std::string> cohort = Lines(dir.path() / site / "cohort.csv");
      const std::vector<std::string> statics = Lines(dir.path() / site / "ehr" / "static.csv");
      const std::vector<std::string> before = Lines(plain.path() / site / "ehr" / "static.csv");
      ASSERT_EQ(cohort.size(), statics.size());
      ASSERT_EQ(before.size(), statics.size());
      EXPECT_EQ(statics[0], before[0] + ",room_number");
      for (size_t i = 1; i < statics.size(); ++i) {
        const std::vector<std::string> c = SplitOn(cohort[i], ',');
        const std::string& row = statics[i];
        const size_t comma = row.rfind(',');
        EXPECT_EQ(row.substr(0, comma), before[i]) << mode << " " << site << " row " << i;
        const int room = std::stoi(row.substr(comma + 1));
        const bool woman = c[3] == "F", positive = c[2] == "1";
        if (!woman) {
          EXPECT_TRUE(room >= 100 && room < 400) << row;
        } else if (mode == "planted" && site == "site-1") {
          EXPECT_TRUE(positive ? room >= 900 && room < 950 : room >= 400 && room < 450) << row;
          hdu += positive ? 1 : 0;
        } else {
          EXPECT_TRUE(room >= 400 && room < 500) << row;
        }
      }
    }
    if (mode == "planted") EXPECT_GT(hdu, 0);
  }
}

// Sites of different sizes: each site has its own count, and a site's
// files depend only on its own count and the seed.
TEST(SynthTest, SitesCanDifferInSize) {
  TempDir mixed, even;
  SynthOptions o = SmallOptions(mixed.path());
  o.site_patients = {80, 50};
  ASSERT_TRUE(Generate(o).ok());
  ASSERT_TRUE(Generate(SmallOptions(even.path())).ok());
  EXPECT_EQ(Lines(mixed.path() / "site-1" / "cohort.csv").size(), 81u);
  EXPECT_EQ(Lines(mixed.path() / "site-1" / "ehr" / "static.csv").size(), 81u);
  EXPECT_EQ(Lines(mixed.path() / "site-2" / "cohort.csv").size(), 51u);
  EXPECT_EQ(Snapshot(mixed.path() / "site-2"), Snapshot(even.path() / "site-2"));
  EXPECT_NE(ReadBytes(mixed.path() / "site-1" / "cohort.csv"),
            ReadBytes(even.path() / "site-1" / "cohort.csv"));
}

TEST(SynthTest, ValidateRejectsBadOptions) {
  SynthOptions options;
  options.out_dir = "/tmp/unused";
  EXPECT_TRUE(options.Validate().ok());
  options.num_sites = 0;
  Status s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_sites"), std::string::npos);
  EXPECT_EQ(Generate(options).code(), absl::StatusCode::kInvalidArgument);

  options.num_sites = 1;
  options.patients_per_site = 9;
  s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("patients at site-1"), std::string::npos);

  options.patients_per_site = 10;
  options.site_patients = {20, 30};  // two counts, one site
  s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("2 counts for 1 sites"), std::string::npos);
  options.num_sites = 2;
  options.site_patients = {20, 9};
  s = options.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("patients at site-2"), std::string::npos);
  options.site_patients = {20, 10};
  EXPECT_TRUE(options.Validate().ok());
  options.out_dir = "";
  EXPECT_EQ(options.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SynthTest, RefusesToOverwriteUnlessAsked) {
  TempDir dir;
  SynthOptions options = SmallOptions(dir.path());
  ASSERT_TRUE(Generate(options).ok());
  fs::path stray = dir.path() / "site-1" / "stray.txt";
  std::ofstream(stray) << "x";

  Status s = Generate(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(s.message().find((dir.path() / "site-1").string()),
            std::string::npos);
  EXPECT_TRUE(fs::exists(stray));

  options.overwrite = true;
  ASSERT_TRUE(Generate(options).ok());
  EXPECT_FALSE(fs::exists(stray));
  EXPECT_EQ(Lines(dir.path() / "site-1" / "cohort.csv").size(), 51u);
}

}  // namespace
}  // namespace attune::synth
