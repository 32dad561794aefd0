#include "attune/coordinator/strategy.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attune/common/npy.h"
#include "nlohmann/json.hpp"
#include "support/command.h"

// The NumPy oracle (strategy_oracle.py) and the interpreter that runs it. An
// empty ATTUNE_PYTHON skips the oracle tests.
#ifndef ATTUNE_PYTHON
#define ATTUNE_PYTHON ""
#endif
#ifndef ATTUNE_STRATEGY_ORACLE
#define ATTUNE_STRATEGY_ORACLE "tests/coordinator/strategy_oracle.py"
#endif

namespace attune::coordinator {
namespace {

constexpr size_t kWhole = std::numeric_limits<size_t>::max();

struct Update {
  std::string site;
  std::vector<float> delta;
  int64_t num_examples = 1;
};

// Plays rounds of one strategy the way the round driver does: owns the server
// state vectors across rounds and feeds the model in ranges of `chunk`
// coordinates (kWhole: one range).
class Rounds {
 public:
  Rounds(const StrategyConfig& config, size_t numel) : numel_(numel) {
    auto made = MakeStrategy(config);
    ATTUNE_CHECK(made.ok());
    strategy_ = *std::move(made);
    for (int k = 0; k < strategy_->StateVectors(); ++k) {
      state_.emplace_back(numel, strategy_->StateInit(k));
    }
  }

  StatusOr<std::vector<float>> Play(std::span<const float> global,
                                    const std::vector<Update>& updates,
                                    size_t aggregate_chunk = kWhole,
                                    size_t observe_chunk = kWhole) {
    ATTUNE_RETURN_IF_ERROR(strategy_->Begin(static_cast<int>(updates.size())));
    if (strategy_->TwoPass()) {
      ForEachRange(updates, observe_chunk, [&](size_t, size_t, std::span<const SiteDelta> r) {
        strategy_->Observe(r);
      });
      ATTUNE_RETURN_IF_ERROR(strategy_->EndObserve());
    }
    std::vector<float> out(numel_);
    ForEachRange(updates, aggregate_chunk,
                 [&](size_t begin, size_t len, std::span<const SiteDelta> r) {
                   std::vector<std::span<float>> state;
                   for (auto& s : state_) state.push_back(std::span(s).subspan(begin, len));
                   strategy_->Aggregate(r, global.subspan(begin, len), state,
                                        std::span(out).subspan(begin, len));
                 });
    return out;
  }

  Strategy& strategy() { return *strategy_; }
  const std::vector<std::vector<float>>& state() const { return state_; }

 private:
  template <typename Fn>
  void ForEachRange(const std::vector<Update>& updates, size_t chunk, Fn fn) const {
    for (size_t begin = 0; begin < numel_; begin += chunk) {
      const size_t len = std::min(chunk, numel_ - begin);
      std::vector<SiteDelta> range;
      for (const auto& u : updates) {
        range.push_back({u.site, std::span(u.delta).subspan(begin, len), u.num_examples});
      }
      fn(begin, len, range);
    }
  }

  size_t numel_;
  std::unique_ptr<Strategy> strategy_;
  std::vector<std::vector<float>> state_;
};

StrategyConfig Config(const std::string& name) {
  StrategyConfig c;
  c.name = name;
  return c;
}

// |got − want| <= 1e-6 · (1 + |want|): float rounding of values of order 10.
void ExpectNear(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 1e-6 * (1 + std::abs(want[i]))) << "coordinate " << i;
  }
}

std::vector<float> Next(Rounds& rounds, const std::vector<float>& global,
                        const std::vector<Update>& updates) {
  auto next = rounds.Play(global, updates);
  EXPECT_TRUE(next.ok()) << next.status();
  return next.ok() ? *next : std::vector<float>();
}

// ---------------------------------------------------------------------------
// Hand-computed cases.

// Site a: n=1, Δ=(1, 2, 3); site b: n=3, Δ=(5, -2, 0).
// Δ̄ = ((1+15)/4, (2-6)/4, (3+0)/4) = (4, -1, 0.75).
const std::vector<Update> kTwoSites = {{"a", {1, 2, 3}, 1}, {"b", {5, -2, 0}, 3}};
const std::vector<float> kGlobal = {10, 20, 30};

TEST(Strategy, FedAvgAddsTheExampleWeightedMean) {
  Rounds rounds(Config("fedavg"), 3);
  ExpectNear(Next(rounds, kGlobal, kTwoSites), {14, 19, 30.75});  // x + (4, -1, 0.75)
  EXPECT_STREQ(rounds.strategy().name(), "fedavg");
  EXPECT_EQ(rounds.strategy().StateVectors(), 0);
  EXPECT_EQ(rounds.strategy().Describe(), "{}");
}

TEST(Strategy, FedProxAggregatesLikeFedAvg) {
  Rounds rounds(Config("fedprox"), 3);
  ExpectNear(Next(rounds, kGlobal, kTwoSites), {14, 19, 30.75});
  EXPECT_STREQ(rounds.strategy().name(), "fedprox");
}

// The strategy decides what each site trains with: the study's settings,
// and FedProx's proximal term (only fedprox's).
TEST(Strategy, TheStrategyDecidesEachSitesTraining) {
  TrainConfig train;
  train.local_epochs = 3;
  train.batch_size = 16;
  train.learning_rate = 0.01;
  train.seed = 42;
  StrategyConfig prox = Config("fedprox");
  prox.proximal_mu = 0.25;
  for (const std::string name : {"fedprox", "fedavg", "fedadam", "krum"}) {
    StrategyConfig c = name == "fedprox" ? prox : Config(name);
    c.proximal_mu = 0.25;  // set for all; only fedprox uses it
    auto s = MakeStrategy(c);
    ASSERT_TRUE(s.ok()) << name;
    const TrainSettings t = (*s)->TrainingFor(train, "site-1");
    EXPECT_EQ(t.local_epochs, 3) << name;
    EXPECT_EQ(t.batch_size, 16) << name;
    EXPECT_DOUBLE_EQ(t.learning_rate, 0.01) << name;
    EXPECT_EQ(t.seed, 42u) << name;
    EXPECT_DOUBLE_EQ(t.proximal_mu, name == "fedprox" ? 0.25 : 0.0) << name;
  }
}

TEST(Strategy, FedAvgMCarriesMomentumAcrossRounds) {
  StrategyConfig c = Config("fedavgm");
  c.momentum = 0.5;
  c.server_learning_rate = 2;
  Rounds rounds(c, 3);
  ASSERT_EQ(rounds.strategy().StateVectors(), 1);
  EXPECT_EQ(rounds.strategy().StateInit(0), 0.f);
  // Round 1: m = 0.5·0 + (4, -1, 0.75) = (4, -1, 0.75); out = x + 2m = (18, 18, 31.5).
  auto x1 = Next(rounds, kGlobal, kTwoSites);
  ExpectNear(x1, {18, 18, 31.5});
  ExpectNear(rounds.state()[0], {4, -1, 0.75});
  // Round 2: a n=1 Δ=(0, 4, 1), b n=3 Δ=(4, 0, 1): Δ̄ = (12/4, 4/4, 4/4) = (3, 1, 1).
  // m = 0.5·(4, -1, 0.75) + (3, 1, 1) = (5, 0.5, 1.375); out = (18+10, 18+1, 31.5+2.75).
  auto x2 = Next(rounds, x1, {{"a", {0, 4, 1}, 1}, {"b", {4, 0, 1}, 3}});
  ExpectNear(x2, {28, 19, 34.25});
  ExpectNear(rounds.state()[0], {5, 0.5, 1.375});
}

// The adaptive optimisers share one input: η = 1, β1 = 0.5, β2 = 0.75, τ = 0.75
// (v₀ = τ² = 0.5625), x = (1, 2, 3, 4), sites a (n=1) and b (n=3).
// Round 1: a=(4, .75, -2, 2), b=(0, .75, -2, 0) → Δ̄ = (1, 0.75, -2, 0.5).
// Round 2: a=(2, 2, 4, -4),   b=(0, 2, 0, 0)    → Δ̄ = (0.5, 2, 1, -1).
// m is the same for all three: round 1 m = 0.5·Δ̄ = (0.5, 0.375, -1, 0.25);
// round 2 m = 0.5·m + 0.5·Δ̄ = (0.5, 1.1875, 0, -0.375).
struct AdaptiveExpectation {
  const char* name;
  std::vector<double> v1, x1, v2, x2;
};

void PrintTo(const AdaptiveExpectation& e, std::ostream* os) { *os << e.name; }

class AdaptiveHandComputed : public ::testing::TestWithParam<AdaptiveExpectation> {};

TEST_P(AdaptiveHandComputed, TwoRoundsWithStateCarried) {
  const AdaptiveExpectation& e = GetParam();
  StrategyConfig c = Config(e.name);
  c.server_learning_rate = 1;
  c.beta1 = 0.5;
  c.beta2 = 0.75;
  c.tau = 0.75;
  Rounds rounds(c, 4);
  ASSERT_EQ(rounds.strategy().StateVectors(), 2);
  EXPECT_EQ(rounds.strategy().StateInit(0), 0.f);
  EXPECT_EQ(rounds.strategy().StateInit(1), 0.5625f);
  const std::vector<float> x0 = {1, 2, 3, 4};
  auto x1 = Next(rounds, x0, {{"a", {4, .75, -2, 2}, 1}, {"b", {0, .75, -2, 0}, 3}});
  ExpectNear(x1, e.x1);
  ExpectNear(rounds.state()[0], {0.5, 0.375, -1, 0.25});
  ExpectNear(rounds.state()[1], e.v1);
  auto x2 = Next(rounds, x1, {{"a", {2, 2, 4, -4}, 1}, {"b", {0, 2, 0, 0}, 3}});
  ExpectNear(x2, e.x2);
  ExpectNear(rounds.state()[0], {0.5, 1.1875, 0, -0.375});
  ExpectNear(rounds.state()[1], e.v2);
}

INSTANTIATE_TEST_SUITE_P(
    Strategy, AdaptiveHandComputed,
    ::testing::Values(
        // v ← v + Δ̄². Round 1: v = 0.5625 + (1, 0.5625, 4, 0.25) = (1.5625, 1.125, 4.5625, 0.8125);
        // x += m/(√v+0.75) = (0.5/2, 0.375/1.8106602, -1/2.8860009, 0.25/1.6513878).
        // Round 2: v += (0.25, 4, 1, 1) → (1.8125, 5.125, 5.5625, 1.8125);
        // x += (0.5/2.0962912, 1.1875/3.0138463, 0, -0.375/2.0962912).
        AdaptiveExpectation{"fedadagrad",
                            {1.5625, 1.125, 4.5625, 0.8125},
                            {1.25, 2.2071067812, 2.6534997659, 4.1513878189},
                            {1.8125, 5.125, 5.5625, 1.8125},
                            {1.4885164807, 2.6011215676, 2.6534997659, 3.9725004583}},
        // v ← 0.75·v + 0.25·Δ̄². Round 1: v = 0.421875 + (0.25, 0.140625, 1, 0.0625)
        // = (0.671875, 0.5625, 1.421875, 0.484375);
        // x += (0.5/1.5696798, 0.375/1.5, -1/1.9424240, 0.25/1.4459705).
        // Round 2: v = 0.75·v + (0.0625, 1, 0.25, 0.25) = (0.56640625, 1.421875, 1.31640625, 0.61328125);
        // x += (0.5/1.5025997, 1.1875/1.9424240, 0, -0.375/1.5331228).
        AdaptiveExpectation{"fedadam",
                            {0.671875, 0.5625, 1.421875, 0.484375},
                            {1.3185362996, 2.25, 2.4851793434, 4.1728942549},
                            {0.56640625, 1.421875, 1.31640625, 0.61328125},
                            {1.6512929299, 2.8613495297, 2.4851793434, 3.9282954459}},
        // v ← v − 0.25·Δ̄²·sign(v − Δ̄²). Round 1 from v = 0.5625, Δ̄² = (1, 0.5625, 4, 0.25):
        // signs (-, 0, -, +) → v = (0.8125, 0.5625, 1.5625, 0.5)  (sign(0) = 0 keeps v);
        // x += (0.5/1.6513878, 0.375/1.5, -1/2, 0.25/1.4571068).
        // Round 2, Δ̄² = (0.25, 4, 1, 1): signs (+, -, +, -) → v = (0.75, 1.5625, 1.3125, 0.75);
        // x += (0.5/1.6160254, 1.1875/2, 0, -0.375/1.6160254).
        AdaptiveExpectation{"fedyogi",
                            {0.8125, 0.5625, 1.5625, 0.5},
                            {1.3027756377, 2.25, 2.5, 4.1715728753},
                            {0.75, 1.5625, 1.3125, 0.75},
                            {1.6121767145, 2.84375, 2.5, 3.9395220677}}),
    [](const auto& info) { return std::string(info.param.name); });

// Five sites, three coordinates; num_examples must not matter to the robust
// strategies (site s1 claims 1000 and would dominate a weighted mean).
const std::vector<Update> kFiveSites = {{"s0", {1, 0, -1}, 1},
                                        {"s1", {9, 0, -2}, 1000},
                                        {"s2", {3, 5, -3}, 1},
                                        {"s3", {-4, 5, -4}, 1},
                                        {"s4", {100, 5, 50}, 1}};

TEST(Strategy, MedianOfOddAndEvenCounts) {
  Rounds rounds(Config("median"), 3);
  // Sorted columns: (-4, 1, 3, 9, 100), (0, 0, 5, 5, 5), (-4, -3, -2, -1, 50).
  ExpectNear(Next(rounds, kGlobal, kFiveSites), {10 + 3, 20 + 5, 30 - 2});
  // Without s4: (-4, 1, 3, 9) → (1+3)/2 = 2; (0, 0, 5, 5) → 2.5; (-4, -3, -2, -1) → -2.5.
  const std::vector<Update> four(kFiveSites.begin(), kFiveSites.end() - 1);
  ExpectNear(Next(rounds, kGlobal, four), {12, 22.5, 27.5});
}

TEST(Strategy, TrimmedMeanCutsFloorOfFractionAtEachEnd) {
  StrategyConfig c = Config("trimmed_mean");
  c.trim_fraction = 0.2;  // k = ⌊0.2·5⌋ = 1
  Rounds one(c, 3);
  // (1+3+9)/3 = 4.3333333, (0+5+5)/3 = 3.3333333, (-3-2-1)/3 = -2.
  ExpectNear(Next(one, kGlobal, kFiveSites), {10 + 13.0 / 3, 20 + 10.0 / 3, 28});
  c.trim_fraction = 0.1;  // k = ⌊0.5⌋ = 0: the unweighted mean
  Rounds none(c, 3);
  // (1+9+3-4+100)/5 = 21.8, 15/5 = 3, (-1-2-3-4+50)/5 = 8.
  ExpectNear(Next(none, kGlobal, kFiveSites), {31.8, 23, 38});
  c.trim_fraction = 0.4;  // k = 2: only the median is left
  Rounds two(c, 3);
  ExpectNear(Next(two, kGlobal, kFiveSites), {13, 25, 28});
}

TEST(Strategy, TrimmedMeanRefusesToTrimEverything) {
  StrategyConfig c = Config("trimmed_mean");
  c.trim_fraction = 0.5;  // k = 1 of 2 at each end leaves nothing
  auto s = MakeStrategy(c);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Begin(2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*s)->Begin(3).ok());  // k = 1 of 3 leaves one
}

// Krum, f = 1, n = 5: each score sums the n−f−2 = 2 smallest squared distances.
//   s0=(0,0,0) s1=(1,0,0) s2=(0,2,0) s3=(1,1,1) s4=(10,10,10)
//   d01=1 d02=4 d03=3 d04=300 d12=5 d13=2 d14=281 d23=3 d24=264 d34=243
//   score: s0 = 1+3 = 4, s1 = 1+2 = 3, s2 = 3+4 = 7, s3 = 2+3 = 5, s4 = 243+264 = 507.
const std::vector<Update> kKrumSites = {{"s0", {0, 0, 0}, 1},
                                        {"s1", {1, 0, 0}, 50},
                                        {"s2", {0, 2, 0}, 1},
                                        {"s3", {1, 1, 1}, 1},
                                        {"s4", {10, 10, 10}, 1}};

StrategyConfig KrumConfig(int f, int m) {
  StrategyConfig c = Config("krum");
  c.krum_byzantine = f;
  c.krum_select = m;
  return c;
}

nlohmann::json Described(Rounds& rounds) {
  return nlohmann::json::parse(rounds.strategy().Describe());
}

TEST(Strategy, KrumSelectsTheLowestScore) {
  Rounds rounds(KrumConfig(1, 1), 3);
  EXPECT_TRUE(rounds.strategy().TwoPass());
  ExpectNear(Next(rounds, kGlobal, kKrumSites), {11, 20, 30});  // x + Δ_s1
  const auto d = Described(rounds);
  EXPECT_EQ(d["selected"], nlohmann::json({"s1"}));
  EXPECT_EQ(d["scores"], nlohmann::json({{"s0", 4.0}, {"s1", 3.0}, {"s2", 7.0},
                                         {"s3", 5.0}, {"s4", 507.0}}));
}

TEST(Strategy, MultiKrumAveragesTheThreeBest) {
  Rounds rounds(KrumConfig(1, 3), 3);
  // s1 (3), s0 (4), s3 (5): ((1,0,0) + (0,0,0) + (1,1,1))/3 = (2/3, 1/3, 1/3), unweighted.
  ExpectNear(Next(rounds, kGlobal, kKrumSites), {10 + 2.0 / 3, 20 + 1.0 / 3, 30 + 1.0 / 3});
  EXPECT_EQ(Described(rounds)["selected"], nlohmann::json({"s1", "s0", "s3"}));
}

TEST(Strategy, KrumBreaksTiesByLowerIndex) {
  // f = 0, n = 3, 1 neighbour: d01 = 1, d02 = 4, d12 = 1 → every score is 1.
  Rounds rounds(KrumConfig(0, 2), 3);
  auto x = Next(rounds, kGlobal, {{"t0", {0, 0, 0}, 1}, {"t1", {1, 0, 0}, 1}, {"t2", {2, 0, 0}, 1}});
  ExpectNear(x, {10.5, 20, 30});  // (0 + 1)/2
  EXPECT_EQ(Described(rounds)["selected"], nlohmann::json({"t0", "t1"}));
}

TEST(Strategy, KrumLeavesOutAnOutlierRoundAfterRound) {
  std::mt19937 rng(11);
  std::normal_distribution<float> noise(0.f, 0.1f);
  Rounds rounds(KrumConfig(1, 3), 8);
  std::vector<float> global(8, 0.f);
  for (int outlier : {4, 0, 2}) {  // Begin must forget the previous round
    std::vector<Update> sites;
    for (int i = 0; i < 5; ++i) {
      Update u{"site-" + std::to_string(i), std::vector<float>(8), 1};
      for (float& v : u.delta) v = noise(rng) + (i == outlier ? 5.f : 0.f);
      sites.push_back(std::move(u));
    }
    global = Next(rounds, global, sites);
    const auto selected = Described(rounds)["selected"];
    ASSERT_EQ(selected.size(), 3u);
    for (const auto& s : selected) EXPECT_NE(s, "site-" + std::to_string(outlier));
    for (float v : global) EXPECT_LT(std::abs(v), 1.f) << "the outlier's +5 leaked in";
  }
}

TEST(Strategy, KrumRefusesTooFewSitesOrTooManySelected) {
  auto krum = MakeStrategy(KrumConfig(1, 1));
  ASSERT_TRUE(krum.ok());
  const Status few = (*krum)->Begin(4);  // f = 1 needs 2f + 3 = 5
  EXPECT_EQ(few.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(few.message().find("5"), std::string::npos) << few;
  EXPECT_NE(few.message().find("4"), std::string::npos) << few;
  EXPECT_TRUE((*krum)->Begin(5).ok());
  auto greedy = MakeStrategy(KrumConfig(1, 6));
  ASSERT_TRUE(greedy.ok());
  EXPECT_EQ((*greedy)->Begin(5).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*krum)->EndObserve().code(), absl::StatusCode::kFailedPrecondition)
      << "nothing observed";
}

TEST(Strategy, EveryStrategyRefusesARoundWithoutUpdates) {
  for (const char* name : {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad",
                           "median", "trimmed_mean", "krum"}) {
    auto s = MakeStrategy(Config(name));
    ASSERT_TRUE(s.ok()) << name;
    EXPECT_STREQ((*s)->name(), name);
    const Status st = (*s)->Begin(0);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << name;
    EXPECT_EQ(st.message(), "no updates") << name;
  }
}

TEST(Strategy, UnknownNameIsInvalidArgument) {
  EXPECT_EQ(MakeStrategy(Config("fedsgd")).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Every strategy, on random data: split independence and the NumPy oracle.

struct Case {
  const char* label;
  StrategyConfig config;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.label; }

std::vector<Case> AllCases() {
  auto with = [](const std::string& name, auto set) {
    StrategyConfig c = Config(name);
    set(c);
    return c;
  };
  auto adaptive = [](StrategyConfig& c) {
    c.server_learning_rate = 0.3;
    c.beta1 = 0.85;
    c.beta2 = 0.95;
    c.tau = 1e-2;
  };
  return {
      {"fedavg", Config("fedavg")},
      {"fedprox", Config("fedprox")},
      {"fedavgm", with("fedavgm", [](StrategyConfig& c) {
         c.server_learning_rate = 0.5;
         c.momentum = 0.8;
       })},
      {"fedadagrad", with("fedadagrad", adaptive)},
      {"fedadam", with("fedadam", adaptive)},
      {"fedyogi", with("fedyogi", adaptive)},
      {"median", Config("median")},
      {"trimmed_mean", with("trimmed_mean", [](StrategyConfig& c) { c.trim_fraction = 0.2; })},
      {"krum", KrumConfig(1, 1)},
      {"multi_krum", KrumConfig(1, 3)},
  };
}

std::vector<float> RandomVector(std::mt19937& rng, size_t numel, float stddev, float offset = 0) {
  std::normal_distribution<float> normal(offset, stddev);
  std::vector<float> v(numel);
  for (float& x : v) x = normal(rng);
  return v;
}

// Six sites of different spread and size; site-3 is shifted (an outlier for
// the robust strategies, and the heaviest site for the weighted ones).
std::vector<Update> RandomUpdates(std::mt19937& rng, size_t numel) {
  constexpr int64_t kExamples[] = {40, 250, 7, 1000, 63, 128};
  std::vector<Update> updates;
  for (int i = 0; i < 6; ++i) {
    updates.push_back({"site-" + std::to_string(i),
                       RandomVector(rng, numel, 0.05f * (1 + i), i == 3 ? 0.5f : 0.f),
                       kExamples[i]});
  }
  return updates;
}

class EveryStrategy : public ::testing::TestWithParam<Case> {};

// The same two rounds with every combination of range sizes 1, 7 and the whole
// model (for krum's observe pass too) give bit-identical models and state.
TEST_P(EveryStrategy, ResultDoesNotDependOnRangeSplit) {
  constexpr size_t kNumel = 50;  // 7 does not divide it: a short last range
  std::mt19937 rng(5);
  const std::vector<float> x0 = RandomVector(rng, kNumel, 1);
  const std::vector<std::vector<Update>> round_updates = {RandomUpdates(rng, kNumel),
                                                          RandomUpdates(rng, kNumel)};
  struct Result {
    std::vector<float> model;
    std::vector<std::vector<float>> state;
    std::string describe;
  };
  auto play = [&](size_t aggregate_chunk, size_t observe_chunk) {
    Rounds rounds(GetParam().config, kNumel);
    std::vector<float> x = x0;
    for (const auto& updates : round_updates) {
      auto next = rounds.Play(x, updates, aggregate_chunk, observe_chunk);
      EXPECT_TRUE(next.ok()) << next.status();
      x = *next;
    }
    return Result{x, rounds.state(), rounds.strategy().Describe()};
  };
  auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  const Result whole = play(kWhole, kWhole);
  for (size_t aggregate_chunk : {size_t{1}, size_t{7}, kWhole}) {
    for (size_t observe_chunk : {size_t{1}, size_t{7}, kWhole}) {
      SCOPED_TRACE(testing::Message() << "aggregate ranges of " << aggregate_chunk
                                      << ", observe ranges of " << observe_chunk);
      const Result r = play(aggregate_chunk, observe_chunk);
      EXPECT_TRUE(same_bits(r.model, whole.model));
      ASSERT_EQ(r.state.size(), whole.state.size());
      for (size_t k = 0; k < r.state.size(); ++k) EXPECT_TRUE(same_bits(r.state[k], whole.state[k]));
      EXPECT_EQ(r.describe, whole.describe);
    }
  }
}

// A fresh directory from mkdtemp, removed with its contents on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = "/tmp/attune-strategy-XXXXXX";
    ATTUNE_CHECK(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

using testing::RunCommand;
using testing::ShellQuote;

void Write(const std::string& path, std::vector<int64_t> shape, std::vector<float> data) {
  const Status s = WriteNpy(path, NpyArray{std::move(shape), std::move(data)});
  ASSERT_TRUE(s.ok()) << s;
}

std::string OracleParams(const StrategyConfig& c, int rounds) {
  return nlohmann::json{{"server_learning_rate", c.server_learning_rate},
                        {"momentum", c.momentum},
                        {"beta1", c.beta1},
                        {"beta2", c.beta2},
                        {"tau", c.tau},
                        {"trim_fraction", c.trim_fraction},
                        {"krum_byzantine", c.krum_byzantine},
                        {"krum_select", c.krum_select},
                        {"rounds", rounds}}
      .dump();
}

// Three rounds of random updates (6 sites, 1001 coordinates, fresh deltas each
// round, the global model moved by the strategy's own output), replayed by
// strategy_oracle.py with its own state; every coordinate of every round must
// agree, and so must krum's selection.
TEST_P(EveryStrategy, MatchesNumPyOracle) {
  if (std::string(ATTUNE_PYTHON).empty()) GTEST_SKIP() << "ATTUNE_PYTHON is empty: no NumPy oracle";
  constexpr int kRounds = 3;
  constexpr size_t kNumel = 1001;
  const StrategyConfig& config = GetParam().config;
  ScratchDir dir;
  std::mt19937 rng(20240611);
  std::vector<float> global = RandomVector(rng, kNumel, 1);
  Write(dir / "global.npy", {static_cast<int64_t>(kNumel)}, global);

  Rounds rounds(config, kNumel);
  std::vector<std::vector<float>> models;
  std::vector<nlohmann::json> selections;
  for (int r = 0; r < kRounds; ++r) {
    const std::vector<Update> updates = RandomUpdates(rng, kNumel);
    std::vector<float> deltas, examples;
    for (const auto& u : updates) {
      deltas.insert(deltas.end(), u.delta.begin(), u.delta.end());
      examples.push_back(static_cast<float>(u.num_examples));
    }
    const int64_t sites = static_cast<int64_t>(updates.size());
    Write(dir / ("deltas_" + std::to_string(r) + ".npy"), {sites, static_cast<int64_t>(kNumel)},
          deltas);
    Write(dir / ("examples_" + std::to_string(r) + ".npy"), {sites}, examples);
    // Uneven ranges, as a memory-bounded round driver would use.
    auto next = rounds.Play(global, updates, /*aggregate_chunk=*/100, /*observe_chunk=*/128);
    ASSERT_TRUE(next.ok()) << next.status();
    global = *next;
    models.push_back(global);
    selections.push_back(nlohmann::json::parse(rounds.strategy().Describe())["selected"]);
  }

  const auto [code, output] = RunCommand(
      ShellQuote(ATTUNE_PYTHON) + " " + ShellQuote(ATTUNE_STRATEGY_ORACLE) + " " +
      ShellQuote(config.name) + " " + ShellQuote(dir.path()) + " " +
      ShellQuote(OracleParams(config, kRounds)));
  ASSERT_EQ(code, 0) << "strategy_oracle.py failed:\n" << output;

  for (int r = 0; r < kRounds; ++r) {
    SCOPED_TRACE(testing::Message() << "round " << r);
    auto expected = ReadNpy(dir / ("expected_" + std::to_string(r) + ".npy"));
    ASSERT_TRUE(expected.ok()) << expected.status() << "\noracle output:\n" << output;
    ASSERT_EQ(expected->data.size(), kNumel);
    int mismatches = 0;
    for (size_t i = 0; i < kNumel; ++i) {
      const double want = expected->data[i], got = models[r][i];
      if (std::abs(got - want) > 1e-5 * std::abs(want) + 1e-6 && ++mismatches <= 5) {
        ADD_FAILURE() << "coordinate " << i << ": C++ " << got << ", NumPy " << want;
      }
    }
    EXPECT_EQ(mismatches, 0);
    if (config.name == "krum") {
      auto selected = ReadNpy(dir / ("selected_" + std::to_string(r) + ".npy"));
      ASSERT_TRUE(selected.ok()) << selected.status();
      nlohmann::json want = nlohmann::json::array();
      for (float i : selected->data) want.push_back("site-" + std::to_string(static_cast<int>(i)));
      EXPECT_EQ(selections[r], want);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Strategy, EveryStrategy, ::testing::ValuesIn(AllCases()),
                         [](const auto& info) { return std::string(info.param.label); });

}  // namespace
}  // namespace attune::coordinator
