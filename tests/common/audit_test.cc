#include "attune/common/audit.h"
#include "variable_ranges.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "attune/common/audit_html.h"
#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/png.h"
#include "nlohmann/json.hpp"
#include "support/command.h"
#include "support/temp_dir.h"

namespace attune {
namespace {

using nlohmann::json;

const json& Cell(const json& doc, const std::string& column, const std::string& value) {
  for (const auto& c : doc["columns"]) {
    if (c["column"] != column) continue;
    for (const auto& cell : c["cells"]) {
      if (cell["value"] == value) return cell;
    }
  }
  static const json none;
  ADD_FAILURE() << "no cell " << column << "=" << value;
  return none;
}

// Four women who attend 0.8 to f0 (value 1) and are scored 0.85 (positives)
// or 0.15, and four men who attend 0.2 to f0 (value 0) and are scored 0.65
// or 0.55. Every figure below is worked out by hand.
EvalSums HandStudy(std::vector<std::string> features = {"f0", "f1"}) {
  EvalSums s = EvalSums::Make("val", 10, {"a", "b"}, std::move(features));
  const double beta[] = {0.5, 0.5};
  const double att_f[] = {0.8, 0.2}, att_m[] = {0.2, 0.8};
  const double val_f[] = {1, 0}, val_m[] = {0, 0};
  const std::vector<CellKey> f = {{"sex", "F"}}, m = {{"sex", "M"}};
  for (int i = 0; i < 2; ++i) {
    s.AddPatient({true, 0.85, 0.1, beta, att_f, val_f}, f);
    s.AddPatient({false, 0.15, 0.1, beta, att_f, val_f}, f);
    s.AddPatient({true, 0.65, 0.1, beta, att_m, val_m}, m);
    s.AddPatient({false, 0.55, 0.1, beta, att_m, val_m}, m);
  }
  return s;
}

TEST(Audit, PerCellMetricsGapsAndDivergenceAreTheHandComputedOnes) {
  AuditOptions o;
  o.min_cell = 1;
  auto text = AuditJson(HandStudy(), o);
  ASSERT_TRUE(text.ok()) << text.status();
  const json doc = json::parse(*text);
  EXPECT_EQ(doc["schema"], kAuditSchema);
  const json& f = Cell(doc, "sex", "F");
  const json& m = Cell(doc, "sex", "M");
  EXPECT_EQ(f["n"], 4);
  EXPECT_DOUBLE_EQ(f["prevalence"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(f["auc"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(f["tpr"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(f["fpr"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(m["fpr"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(m["accuracy"].get<double>(), 0.5);
  // ECE: F |1.7 − 2| + |0.3 − 0| over 4; M |1.3 − 2| + |1.1 − 0| over 4.
  EXPECT_NEAR(f["ece"].get<double>(), 0.15, 1e-12);
  EXPECT_NEAR(m["ece"].get<double>(), 0.45, 1e-12);
  EXPECT_NEAR(f["mean_attention_entropy_bits"].get<double>(), 0.7219280948873623, 1e-12);
  EXPECT_NEAR(f["attention"][0].get<double>(), 0.8, 1e-12);
  EXPECT_EQ(f["top_features"][0]["feature"], "f0");
  EXPECT_NEAR(f["mean_beta"]["a"].get<double>(), 0.5, 1e-12);
  // JSD([.8 .2], [.2 .8]) = 2 (0.4 log2 1.6 + 0.1 log2 0.4) bits.
  const double term = 0.4 * std::log2(1.6) + 0.1 * std::log2(0.4);
  EXPECT_NEAR(f["jsd_vs_rest_bits"].get<double>(), 2 * term, 1e-12);
  EXPECT_NEAR(f["jsd_top_features"][0]["contribution"].get<double>(), term, 1e-12);
  const json& gaps = doc["columns"][0]["between_cells"];
  EXPECT_DOUBLE_EQ(gaps["auc_gap"]["value"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(gaps["demographic_parity_difference"]["value"].get<double>(), 0.5);
  EXPECT_EQ(gaps["demographic_parity_difference"]["highest"], "M");
  EXPECT_DOUBLE_EQ(gaps["equalized_odds_difference"]["value"].get<double>(), 1.0);
  // f0 is attended differently and its value tells the groups apart; f1's
  // value does not (0 for everyone).
  ASSERT_EQ(doc["flags"].size(), 2u);
  for (const auto& flag : doc["flags"]) {
    EXPECT_EQ(flag["feature"], "f0");
    EXPECT_DOUBLE_EQ(flag["membership_auc"].get<double>(), 1.0);
  }
}

// Women's f0 values alternate 2, 0 (mean 1, variance 1), men's are all 0:
// pooled variance 1/2, d = √2, membership AUC Φ(d/√2) = Φ(1) = 0.8413. With
// 4 patients a side, SE(d) = √(1/4 + 1/4 + 2/16) = 0.7906 and d − 1.96·SE < 0:
// the lower bound is 0.5 and nothing is flagged. With 200 a side, SE(d) =
// √(2/200 + 2/800) = 0.1118, the bound Φ((√2 − 0.2191)/√2) = 0.8010: flagged.
TEST(Audit, ASmallCellsNoisyMeansFlagNothing) {
  for (const int copies : {2, 100}) {
    EvalSums s = EvalSums::Make("val", 10, {"a", "b"}, {"f0", "f1"});
    const double beta[] = {0.5, 0.5};
    const double att_f[] = {0.8, 0.2}, att_m[] = {0.2, 0.8};
    const double val_f2[] = {2, 0}, val_f0[] = {0, 0}, val_m[] = {0, 0};
    const std::vector<CellKey> f = {{"sex", "F"}}, m = {{"sex", "M"}};
    for (int i = 0; i < copies; ++i) {
      s.AddPatient({true, 0.85, 0.1, beta, att_f, val_f2}, f);
      s.AddPatient({false, 0.15, 0.1, beta, att_f, val_f0}, f);
      s.AddPatient({true, 0.65, 0.1, beta, att_m, val_m}, m);
      s.AddPatient({false, 0.55, 0.1, beta, att_m, val_m}, m);
    }
    AuditOptions o;
    o.min_cell = 1;
    auto text = AuditJson(s, o);
    ASSERT_TRUE(text.ok()) << text.status();
    const json flags = json::parse(*text)["flags"];
    if (copies == 2) {
      EXPECT_TRUE(flags.empty()) << flags.dump();
      continue;
    }
    ASSERT_EQ(flags.size(), 2u) << flags.dump();
    for (const auto& flag : flags) {
      EXPECT_EQ(flag["feature"], "f0");
      EXPECT_NEAR(flag["membership_auc"].get<double>(), 0.841345, 1e-6);
      EXPECT_NEAR(flag["membership_auc_lower_95"].get<double>(), 0.8010, 1e-4);
    }
  }
}

TEST(Audit, NoFlagWithoutAValueThatTellsTheGroupsApart) {
  EvalSums s = HandStudy();
  for (auto& [key, g] : s.groups) {  // everyone's f0 value the same
    g.value_pos_sum[0] = static_cast<double>(g.n);
    g.value_sq_sum[0] = static_cast<double>(g.n);
  }
  AuditOptions o;
  o.min_cell = 1;
  auto text = AuditJson(s, o);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_TRUE(json::parse(*text)["flags"].empty());
}

TEST(Suppression, ASmallCellTakesTheNextSmallestWithIt) {
  // X alone would be the total less F and M.
  const std::set<CellKey> got =
      SuppressedCells({{{"sex", "F"}, 30}, {{"sex", "M"}, 25}, {{"sex", "X"}, 3}}, 58, 10);
  EXPECT_EQ(got, (std::set<CellKey>{{"sex", "X"}, {"sex", "M"}}));
  // Nothing below k: nothing suppressed.
  EXPECT_TRUE(SuppressedCells({{{"sex", "F"}, 30}, {{"sex", "M"}, 28}}, 58, 10).empty());
  // A study below k: every cell.
  EXPECT_EQ(SuppressedCells({{{"sex", "F"}, 5}, {{"sex", "M"}, 4}}, 9, 10).size(), 2u);
}

TEST(Suppression, IntersectionsAreProtectedInTheirRowsAndColumns) {
  // F = 30, M = 28; y = 29, o = 29. F&o = 4 and M&y = 3 are small: each row
  // and column of the 2 x 2 table then needs a second cell, and with all
  // four hidden no count follows from the margins (rank 3, 4 unknowns).
  const std::map<CellKey, int64_t> counts = {
      {{"sex", "F"}, 30},           {{"sex", "M"}, 28},           {{"age", "y"}, 29},
      {{"age", "o"}, 29},           {{"age & sex", "y & F"}, 26}, {{"age & sex", "o & F"}, 4},
      {{"age & sex", "y & M"}, 3},  {{"age & sex", "o & M"}, 25}};
  const std::set<CellKey> got = SuppressedCells(counts, 58, 10);
  EXPECT_EQ(got, (std::set<CellKey>{{"age & sex", "y & F"},
                                    {"age & sex", "o & F"},
                                    {"age & sex", "y & M"},
                                    {"age & sex", "o & M"}}));
}

TEST(Suppression, ASmallMarginHidesItsRowToo) {
  // X = 6 is small; its intersections (X&y = 3, X&o = 3) are too; X would
  // otherwise be the total less F and M.
  const std::map<CellKey, int64_t> counts = {
      {{"sex", "F"}, 30},          {{"sex", "M"}, 24},          {{"sex", "X"}, 6},
      {{"age", "y"}, 30},          {{"age", "o"}, 30},          {{"age & sex", "y & F"}, 15},
      {{"age & sex", "o & F"}, 15}, {{"age & sex", "y & M"}, 12}, {{"age & sex", "o & M"}, 12},
      {{"age & sex", "y & X"}, 3},  {{"age & sex", "o & X"}, 3}};
  const std::set<CellKey> got = SuppressedCells(counts, 60, 10);
  EXPECT_TRUE(got.count({"sex", "X"}));
  EXPECT_TRUE(got.count({"age & sex", "y & X"}));
  EXPECT_TRUE(got.count({"age & sex", "o & X"}));
  EXPECT_GE(got.size(), 5u);  // a second sex cell and more in the table
}

// A site's own suppression (eval_stats.h SuppressSmallCells): a cell under
// the site's k, and the cell that protects it in its column, leave as zeros
// with suppressed = 1; published, a cell counts the other sites' patients
// and says how many sites held it back; a split under k leaves nothing but
// its flag.
TEST(Suppression, VariableRangesAreTheHandComputedOnes) {
  // x + y = 10, y + z = 4 over x, y, z >= 0: y and z in [0, 4], x in [6, 10].
  auto r = VariableRanges({{1, 1, 0}, {0, 1, 1}}, {10, 4});
  ASSERT_TRUE(r.ok()) << r.status();
  const std::vector<std::pair<double, double>> want = {{6, 10}, {0, 4}, {0, 4}};
  ASSERT_EQ(r->size(), 3u);
  for (size_t j = 0; j < 3; ++j) {
    EXPECT_NEAR((*r)[j].first, want[j].first, 1e-9) << j;
    EXPECT_NEAR((*r)[j].second, want[j].second, 1e-9) << j;
  }
  // A redundant equation changes nothing; a free variable is unbounded.
  r = VariableRanges({{1, 1, 0, 0}, {0, 1, 1, 0}, {1, 2, 1, 0}}, {10, 4, 14});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR((*r)[0].first, 6, 1e-9);
  EXPECT_TRUE(std::isinf((*r)[3].second));
  // x + y = -1 has no solution in non-negative numbers.
  EXPECT_EQ(VariableRanges({{1, 1}}, {-1}).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// The protection-interval test: counts that earlier releases published are
// known, so a small cell they would pin down is protected by other cells.
TEST(Suppression, WhatAnEarlierReleasePublishedCountsAsKnown) {
  // F 30, M 25, X 3: X and M are hidden (M the smallest complement).
  const std::map<CellKey, int64_t> counts = {
      {{"sex", "F"}, 30}, {{"sex", "M"}, 25}, {{"sex", "X"}, 3}};
  EXPECT_EQ(SuppressedCells(counts, 58, 10),
            (std::set<CellKey>{{"sex", "M"}, {"sex", "X"}}));
  // Had an earlier release of these patients published M, X would follow
  // from it: F is hidden too, and hiding M protects nothing.
  const std::set<CellKey> got = SuppressedCells(counts, 58, 10, {{"sex", "M"}});
  EXPECT_TRUE(got.count({"sex", "F"})) << got.size();
  EXPECT_TRUE(got.count({"sex", "X"}));
}

TEST(SiteSuppression, NoCellUnderTheSitesKLeavesIt) {
  EvalSums a = HandStudy();  // 4 F, 4 M
  const std::vector<CellKey> one = {{"sex", "X"}};
  const double beta[] = {0.5, 0.5}, att[] = {0.5, 0.5}, val[] = {3, 7};
  a.AddPatient({true, 0.9, 0.1, beta, att, val}, one);  // a cell of one patient
  EvalSums plain = a;
  // X, and one of F and M: else X = 9 - F - M.
  EXPECT_EQ(SuppressSmallCells(&a, 2), 2);
  EXPECT_EQ(a.groups.at({"sex", "F"}).suppressed + a.groups.at({"sex", "M"}).suppressed, 1);
  const GroupSums& x = a.groups.at({"sex", "X"});
  EXPECT_EQ(x.n, 0);
  EXPECT_EQ(x.suppressed, 1);
  EXPECT_EQ(x.value_pos_sum, std::vector<double>(2, 0.0)) << "the patient's values stay home";
  EXPECT_EQ(x.pos_hist, std::vector<int64_t>(10, 0));
  EXPECT_EQ(a.n, 9) << "the split's totals still count the patient";
  EXPECT_TRUE(a.Validate().ok()) << a.Validate();
  // k = 5: the 4-patient cells go too.
  EvalSums k5 = plain;
  EXPECT_EQ(SuppressSmallCells(&k5, 5), 3);
  // Two sites: the second has 5 women and 5 men; the first held every cell
  // back, so F and M are the second's, and X is nobody's.
  EvalSums b = EvalSums::Make("val", 10, {"a", "b"}, {"f0", "f1"});
  const double att_f[] = {0.8, 0.2}, val_f[] = {1, 0};
  for (int i = 0; i < 5; ++i) b.AddPatient({i % 2 == 0, 0.7, 0.1, beta, att_f, val_f}, {{{"sex", "F"}}});
  for (int i = 0; i < 5; ++i) b.AddPatient({i % 2 == 1, 0.3, 0.1, beta, att_f, val_f}, {{{"sex", "M"}}});
  EXPECT_EQ(SuppressSmallCells(&b, 5), 0);
  ASSERT_TRUE(k5.Add(b).ok());
  AuditOptions o;
  o.min_cell = 5;
  const json doc = json::parse(*AuditJson(k5, o));
  EXPECT_EQ(Cell(doc, "sex", "F")["n"], 5);
  EXPECT_EQ(Cell(doc, "sex", "F")["sites_suppressed"], 1);
  EXPECT_EQ(Cell(doc, "sex", "M")["sites_suppressed"], 1);
  EXPECT_EQ(Cell(doc, "sex", "X")["suppressed"], true);
  EXPECT_NE(Cell(doc, "sex", "X")["reason"].get<std::string>().find("k = 5"), std::string::npos);
  EXPECT_EQ(doc["overall"]["n"], 19);
  // A split under k: nothing of it, not even its count.
  EvalSums tiny = EvalSums::Make("val", 10, {"a", "b"}, {"f0", "f1"});
  tiny.AddPatient({true, 0.9, 0.1, beta, att, val}, one);
  EXPECT_EQ(SuppressSmallCells(&tiny, 10), 1);
  EXPECT_EQ(tiny.n, 0);
  EXPECT_EQ(tiny.suppressed, 1);
  EXPECT_EQ(tiny.loss_sum, 0);
  EXPECT_TRUE(tiny.Validate().ok());
  // In the secure words, after the site's cells are laid out.
  const EvalLayout layout = EvalLayout::Make({"val"}, 10, {"a", "b"}, {"f0", "f1"},
                                             {{"sex", {"F", "M", "X"}}});
  auto words = EncodeEvalWords({plain}, layout, 3, /*min_cell=*/2);
  ASSERT_TRUE(words.ok()) << words.status();
  auto decoded = DecodeEvalWords(*words, layout);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ((*decoded)[0].groups.at({"sex", "X"}).suppressed, 1);
  EXPECT_EQ((*decoded)[0].groups.at({"sex", "X"}).n, 0);
  EXPECT_EQ((*decoded)[0].groups.at({"sex", "F"}).n + (*decoded)[0].groups.at({"sex", "M"}).n, 4)
      << "one of F and M protects X";
}

// A column the site's policy leaves out leaves it held back: its cells and
// every intersection with it, and in a secure layout the cells it lacks too.
TEST(SiteSuppression, AColumnLeftOutByTheSiteLeavesItHeldBack) {
  const double beta[2] = {0.5, 0.5};
  const std::vector<std::string> columns = {"eth", "sex"};
  EvalSums s = EvalSums::Make("val", 10, {"a", "b"}, {});
  for (int i = 0; i < 30; ++i) {
    s.AddPatient({i % 2 == 0, 0.1 + 0.02 * i, 0.3, beta, {}, {}},
                 SubgroupCells(columns, std::vector<std::string>{i % 3 ? "w" : "b",
                                                                 i % 2 ? "F" : "M"}));
  }
  const std::vector<CellKey> also = {{"eth", "a"}, {"eth & sex", "a & F"}, {"sex", "F"}};
  EXPECT_EQ(HoldBackColumns(&s, {"eth"}, also), 2 + 4 + 2);  // w, b, 4 pairs, and a's two
  for (const auto& [key, g] : s.groups) {
    const bool held = key.first != "sex";
    EXPECT_EQ(g.suppressed, held ? 1 : 0) << key.first << "=" << key.second;
    if (held) EXPECT_EQ(g.n, 0);
    else EXPECT_EQ(g.n, 15);
  }
  EXPECT_TRUE(s.Validate().ok());
  EXPECT_EQ(HoldBackColumns(&s, {}), 0);
}

TEST(Audit, DefiningFeaturesAreNotFlaggedForTheirColumn) {
  AuditOptions o;
  o.min_cell = 1;
  o.defining_features = {{"sex", {"f0"}}};
  auto text = AuditJson(HandStudy(), o);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_TRUE(json::parse(*text)["flags"].empty());
}

TEST(AuditHtml, CarriesTheDocumentSafelyAndRefusesOtherJson) {
  AuditOptions o;
  o.min_cell = 1;
  auto text = AuditJson(HandStudy({"f0</script><b>", "f1"}), o);
  ASSERT_TRUE(text.ok()) << text.status();
  auto html = AuditHtml(*text);
  ASSERT_TRUE(html.ok()) << html.status();
  // The feature name cannot end the script element that carries the JSON.
  EXPECT_EQ(html->find("f0</script>"), std::string::npos);
  EXPECT_NE(html->find("f0\\u003c/script>"), std::string::npos);
  EXPECT_NE(html->find("d3"), std::string::npos);
  EXPECT_FALSE(AuditHtml("{\"schema\": \"other\"}").ok());
  EXPECT_FALSE(AuditHtml("not json").ok());
}

// The page as a browser draws it: headless Chromium (scripts/setup.sh
// --test-tools installs it) takes a screenshot and dumps the DOM after the
// scripts ran.
TEST(AuditHtml, ChromiumDrawsThePlotsAndNamesTheFlaggedFeature) {
  const std::string chromium = ATTUNE_CHROMIUM;
  if (chromium.empty()) GTEST_SKIP() << "chromium not installed (scripts/setup.sh --test-tools)";
  AuditOptions o;
  o.min_cell = 1;
  auto text = AuditJson(HandStudy({"ehr_static/room_number", "ehr_static/heart_rate"}), o);
  ASSERT_TRUE(text.ok()) << text.status();
  ASSERT_EQ(json::parse(*text)["flags"][0]["feature"], "ehr_static/room_number");
  testing::TempDir dir;
  ASSERT_TRUE(WriteAuditFiles(dir.path(), *text).ok());
  const std::string page = "file://" + (dir / "audit.html");
  const std::string common = ::testing::ShellQuote(chromium) +
                             " --headless --no-sandbox --disable-gpu --no-first-run"
                             " --hide-scrollbars --user-data-dir=" +
                             ::testing::ShellQuote(dir / "profile") + " --window-size=1200,1600 ";
  auto [rc, out] = ::testing::RunCommand(common + "--screenshot=" +
                                         ::testing::ShellQuote(dir / "shot.png") + " " +
                                         ::testing::ShellQuote(page));
  ASSERT_EQ(rc, 0) << out;
  auto shot = ReadPng(dir / "shot.png");
  ASSERT_TRUE(shot.ok()) << shot.status() << "\n" << out;
  // Not blank: many pixels are neither white nor one flat colour, and the
  // bars' and the heatmap's colours are there.
  int64_t inked = 0, blue = 0;
  for (size_t i = 0; i + 2 < shot->pixels.size(); i += 3) {
    const int r = shot->pixels[i], g = shot->pixels[i + 1], b = shot->pixels[i + 2];
    inked += (r < 200 || g < 200 || b < 200) ? 1 : 0;
    blue += (b > r + 40 && b > g + 20) ? 1 : 0;  // the AUC bars (#4c78a8), the heatmap
  }
  const int64_t total = static_cast<int64_t>(shot->pixels.size() / 3);
  EXPECT_GT(inked, total / 100) << "the screenshot is (nearly) blank";
  EXPECT_GT(blue, 2000) << "no bars drawn";
  auto [rc2, dom] = ::testing::RunCommand(common + "--dump-dom " + ::testing::ShellQuote(page));
  ASSERT_EQ(rc2, 0) << dom;
  EXPECT_NE(dom.find("data-rendered=\"true\""), std::string::npos) << "the script did not finish";
  // The flag table and the heatmap's axis name the feature.
  EXPECT_NE(dom.find("<td>ehr_static/room_number</td>"), std::string::npos);
  EXPECT_NE(dom.find("class=\"flagged\""), std::string::npos);
  EXPECT_NE(dom.find("<svg"), std::string::npos);
}

TEST(AuditConfig, StudyFileSetsTheReportOptions) {
  auto study = ParseStudyConfig(R"({
    "study_id": "s", "rounds": 4, "min_sites": 1, "roster": ["a"],
    "audit": {"min_cell": 5, "top_k": 3, "every": 2, "flag_jsd_bits": 0.05,
              "flag_membership_auc": 0.8,
              "defining_features": {"age_band": ["ehr_static/age"]}}})",
                                "study.json");
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(study->audit.report.min_cell, 5);
  EXPECT_EQ(study->audit.report.top_k, 3);
  EXPECT_EQ(study->audit.every, 2);
  EXPECT_DOUBLE_EQ(study->audit.report.flag_jsd, 0.05);
  EXPECT_DOUBLE_EQ(study->audit.report.flag_membership_auc, 0.8);
  EXPECT_EQ(study->audit.report.defining_features.at("age_band"),
            std::vector<std::string>{"ehr_static/age"});
  auto bad = ParseStudyConfig(
      R"({"study_id": "s", "rounds": 1, "min_sites": 1, "roster": ["a"],
          "audit": {"flag_membership_auc": 0.3}})",
      "study.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("audit."), std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace attune
