// The audit against an independent oracle (audit_oracle.py: NumPy and
// scikit-learn, Debian's python3-sklearn): per-group metrics from the sums
// that three sites send -- added in the clear, and through the secure
// words -- against the same metrics computed on the pooled raw
// predictions; and small-cell suppression on random tables, checked by
// NumPy's linear algebra.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "attune/common/audit.h"
#include "attune/common/eval_stats.h"
#include "nlohmann/json.hpp"
#include "support/command.h"
#include "support/temp_dir.h"

namespace attune {
namespace {

using nlohmann::json;

constexpr int kSites = 3;
constexpr int kPatientsPerSite = 400;

bool HaveOracle() { return !std::string(ATTUNE_PYTHON).empty(); }

std::pair<int, std::string> RunOracle(const std::string& args) {
  return ::testing::RunCommand(::testing::ShellQuote(ATTUNE_PYTHON) + " " +
                               ::testing::ShellQuote(ATTUNE_AUDIT_ORACLE) + " " + args);
}

void WriteJson(const std::string& path, const json& j) {
  std::ofstream(path) << j.dump();
}

// Patients with a site-dependent prevalence, scores that depend on the label
// and on the group, modality weights, attention over features and feature
// values; one feature's value and attention share shift with sex (a
// shortcut flag), another's attention share with age (no flag).
struct Generated {
  std::vector<EvalSums> sites;
  json raw = json::array();
};

Generated Generate(uint64_t seed, const std::vector<std::string>& features) {
  const std::vector<std::string> columns = {"sex", "age_band", "ethnicity"};
  const std::vector<std::string> sexes = {"F", "M"};
  const std::vector<std::string> ages = {"18-39", "40-64", "65+"};
  const std::vector<std::string> ethnicities = {"white", "black", "asian", "other"};
  const std::vector<double> ethnicity_weight = {0.6, 0.2, 0.15, 0.05};
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform;
  std::discrete_distribution<int> ethnicity(ethnicity_weight.begin(), ethnicity_weight.end());
  Generated g;
  for (int site = 0; site < kSites; ++site) {
    EvalSums s = EvalSums::Make("val", 200, {"ehr", "imaging", "genomics"}, features);
    for (int i = 0; i < kPatientsPerSite; ++i) {
      const int sex = uniform(rng) < 0.5 ? 0 : 1;
      const int age = static_cast<int>(uniform(rng) * 3);
      const int eth = ethnicity(rng);
      const bool label = uniform(rng) < 0.2 + 0.1 * site + 0.1 * age;
      const double logit = (label ? 1.2 : -1.0) + 0.4 * normal(rng) * (1 + sex) + 0.3 * age;
      const double p = 1 / (1 + std::exp(-logit));
      std::vector<double> beta(3), attention(features.size()), value(features.size());
      double bsum = 0, asum = 0;
      for (auto& b : beta) bsum += b = std::exp(normal(rng));
      for (auto& b : beta) b /= bsum;
      for (size_t f = 0; f < features.size(); ++f) {
        asum += attention[f] =
            std::exp(normal(rng) + (f == 1 ? 0.8 * age : 0.0) + (f == 0 ? 2.0 * sex : 0.0));
        value[f] = normal(rng) + (f == 0 ? 1.5 * sex : 0.0);
      }
      for (auto& a : attention) a /= asum;
      const std::vector<std::string> values = {sexes[sex], ages[age], ethnicities[eth]};
      s.AddPatient({label, p, -std::log(label ? p : 1 - p), beta, attention, value},
                   SubgroupCells(columns, values));
      g.raw.push_back({{"site", site},
                       {"label", label ? 1 : 0},
                       {"p", p},
                       {"beta", beta},
                       {"attention", attention},
                       {"value", value},
                       {"sex", values[0]},
                       {"age_band", values[1]},
                       {"ethnicity", values[2]}});
    }
    g.sites.push_back(std::move(s));
  }
  return g;
}

TEST(AuditOracle, FederatedPerGroupMetricsMatchSklearnOnThePooledPredictions) {
  if (!HaveOracle()) GTEST_SKIP() << "ATTUNE_PYTHON is empty: no oracle";
  const std::vector<std::string> features = {"ehr_static/a", "ehr_static/b", "genomics/G1",
                                             "imaging/patch 0"};
  for (uint64_t seed : {1u, 2u, 3u}) {
    Generated g = Generate(seed, features);
    // In the clear: the coordinator adds the sites' reports.
    EvalSums clear = g.sites[0];
    for (int s = 1; s < kSites; ++s) ASSERT_TRUE(clear.Add(g.sites[s]).ok());
    // Securely: each site's words, summed modulo 2^32 as the masks cancel.
    const EvalLayout layout = EvalLayout::Make(
        {"val"}, 200, {"ehr", "imaging", "genomics"}, features,
        {{"sex", {"F", "M"}}, {"age_band", {"18-39", "40-64", "65+"}},
         {"ethnicity", {"white", "black", "asian", "other"}}});
    std::vector<uint32_t> total(layout.Words(), 0);
    for (const EvalSums& site : g.sites) {
      auto words = EncodeEvalWords({site}, layout, kSites);
      ASSERT_TRUE(words.ok()) << words.status();
      for (size_t i = 0; i < total.size(); ++i) total[i] += (*words)[i];
    }
    auto secure = DecodeEvalWords(total, layout);
    ASSERT_TRUE(secure.ok()) << secure.status();

    AuditOptions o;
    o.min_cell = 5;
    // Tolerances: in the clear, rounding; securely, each site's real sums
    // are rounded to 2^-16 (at most 3 x 2^-17 summed), ten calibration bins
    // of them in an ECE, over a cell of >= 5 patients: under 1e-4.
    for (const auto& [name, sums, tol] :
         {std::tuple<std::string, const EvalSums*, std::string>{"clear", &clear, "1e-9"},
          {"secure", &secure->front(), "1e-4"}}) {
      SCOPED_TRACE(name + " sums, seed " + std::to_string(seed));
      auto audit = AuditJson(*sums, o);
      ASSERT_TRUE(audit.ok()) << audit.status();
      testing::TempDir dir;
      WriteJson(dir / "raw.json", g.raw);
      std::ofstream(dir / "audit.json") << *audit;
      auto [rc, out] = RunOracle("metrics " + ::testing::ShellQuote(dir.path()) + " " +
                                 tol);
      EXPECT_EQ(rc, 0) << out;
      if (seed == 1 && name == "clear") std::printf("%s", out.c_str());
    }
  }
}

TEST(AuditOracle, NoSuppressedCellFollowsFromThePublishedCountsOnRandomTables) {
  if (!HaveOracle()) GTEST_SKIP() << "ATTUNE_PYTHON is empty: no oracle";
  std::mt19937_64 rng(11);
  json tables = json::array();
  for (int t = 0; t < 60; ++t) {
    // Two or three columns of 2-4 values with skewed weights; every pairwise
    // intersection; 20-200 patients, k = 5 or 10.
    const int ncols = 2 + static_cast<int>(rng() % 2);
    const int64_t total = 20 + static_cast<int64_t>(rng() % 181);
    const int k = rng() % 2 ? 5 : 10;
    std::vector<std::string> columns;
    std::vector<std::vector<double>> weights;
    for (int c = 0; c < ncols; ++c) {
      columns.push_back(std::string(1, static_cast<char>('a' + c)));
      std::vector<double> w(2 + rng() % 3);
      for (auto& x : w) x = std::exp(2.0 * std::normal_distribution<double>()(rng));
      weights.push_back(w);
    }
    std::map<CellKey, int64_t> counts;
    for (int64_t p = 0; p < total; ++p) {
      std::vector<std::string> values;
      for (int c = 0; c < ncols; ++c) {
        std::discrete_distribution<int> d(weights[c].begin(), weights[c].end());
        values.push_back(columns[c] + std::to_string(d(rng)));
      }
      for (const CellKey& cell : SubgroupCells(columns, values)) ++counts[cell];
    }
    const std::set<CellKey> hidden = SuppressedCells(counts, total, k);
    json cells = json::array();
    for (const auto& [key, n] : counts) {
      cells.push_back({{"column", key.first},
                       {"value", key.second},
                       {"n", n},
                       {"suppressed", hidden.count(key) > 0}});
    }
    tables.push_back({{"total", total}, {"k", k}, {"cells", cells}});
  }
  testing::TempDir dir;
  WriteJson(dir / "tables.json", tables);
  auto [rc, out] = RunOracle("suppression " + ::testing::ShellQuote(dir.path()));
  EXPECT_EQ(rc, 0) << out;
  std::printf("%s", out.c_str());
}

}  // namespace
}  // namespace attune
