// AggregateRound over real spool files, for a model large enough to be
// aggregated on several threads, against the strategy applied to the
// whole model in one range (its contract: the result does not depend on
// how the coordinates are split, nor on who computes each range).
#include "attune/coordinator/aggregate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <span>

#include "absl/strings/str_cat.h"

#include "attune/coordinator/update_spool.h"
#include "support/temp_dir.h"

namespace attune::coordinator {
namespace {

float Value(uint64_t site, uint64_t i) {
  uint64_t z = (site + 1) * 0x9e3779b97f4a7c15ULL + i * 0xbf58476d1ce4e5b9ULL;
  z ^= z >> 29;
  z *= 0x94d049bb133111ebULL;
  z ^= z >> 32;
  return static_cast<float>(static_cast<int64_t>(z % 2001) - 1000) / 4096.0f;
}

TEST(AggregateRound, ManyThreadsGiveTheOneRangeResultBitForBit) {
  testing::TempDir dir;
  // Above kParallelAggregateValues and not a multiple of any range.
  const uint64_t numel = kParallelAggregateValues + 12345;
  const TensorSchema schema{{{"w", {static_cast<int64_t>(numel)}, "f32"}}};
  const int sites = 6;
  std::vector<std::vector<float>> deltas(sites, std::vector<float>(numel));
  std::vector<SpooledUpdate> updates;
  for (int s = 0; s < sites; ++s) {
    for (uint64_t i = 0; i < numel; ++i) deltas[s][i] = Value(s, i);
    const std::string path = dir.path() + "/u" + std::to_string(s);
    auto w = SpoolWriter::Create(path, numel);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE(w->Append(0, deltas[s]).ok());
    ASSERT_TRUE(w->Commit().ok());
    updates.push_back({"site-" + std::to_string(s), path, 10 + 7 * s});
  }
  std::vector<float> global(numel);
  for (uint64_t i = 0; i < numel; ++i) global[i] = Value(99, i);

  for (const char* name : {"fedavg", "fedavgm", "fedadam", "fedyogi", "median", "trimmed_mean",
                           "krum"}) {
    SCOPED_TRACE(name);
    StrategyConfig config;
    config.name = name;
    config.trim_fraction = 0.2;
    auto made = MakeStrategy(config);
    ASSERT_TRUE(made.ok()) << made.status();
    auto got = AggregateRound(**made, schema, global, "", updates);
    ASSERT_TRUE(got.ok()) << got.status();

    // The oracle: the same strategy, freshly made, on one range.
    auto one = MakeStrategy(config);
    ASSERT_TRUE(one.ok());
    ASSERT_TRUE((*one)->Begin(sites).ok());
    std::vector<SiteDelta> all;
    for (int s = 0; s < sites; ++s) all.push_back({updates[s].site, deltas[s], updates[s].num_examples});
    if ((*one)->TwoPass()) {
      (*one)->Observe(all);
      ASSERT_TRUE((*one)->EndObserve().ok());
    }
    const int vectors = (*one)->StateVectors();
    std::vector<std::vector<float>> state(vectors);
    std::vector<std::span<float>> state_spans;
    for (int k = 0; k < vectors; ++k) {
      state[k].assign(numel, (*one)->StateInit(k));
      state_spans.push_back(state[k]);
    }
    std::vector<float> want(numel);
    (*one)->Aggregate(all, global, state_spans, want);

    auto view = ViewModel(got->model);
    ASSERT_TRUE(view.ok()) << view.status();
    ASSERT_EQ(view->values.size(), numel);
    EXPECT_EQ(std::memcmp(view->values.data(), want.data(), numel * sizeof(float)), 0);
    if (vectors > 0) {
      auto st = ViewModel(got->server_state);
      ASSERT_TRUE(st.ok());
      for (int k = 0; k < vectors; ++k) {
        EXPECT_EQ(std::memcmp(st->values.data() + k * numel, state[k].data(), numel * sizeof(float)), 0)
            << "state " << k;
      }
    }
    EXPECT_EQ(got->describe_json, (*one)->Describe());
  }
}

// An update's norm is the same bit for bit however its values were cut
// into pieces (the network decides), and equal to the sum of squares
// computed independently in long double; a NaN or Inf is refused naming its
// index, whichever piece it is in, and nothing after it is written.
TEST(SpoolWriter, TheNormDoesNotDependOnThePiecesAndBadValuesAreNamed) {
  testing::TempDir dir;
  const uint64_t numel = 10007;
  std::vector<float> v(numel);
  long double oracle = 0;
  for (uint64_t i = 0; i < numel; ++i) {
    v[i] = Value(3, i) * (i % 97 == 0 ? 1e6f : 1.0f);
    oracle += static_cast<long double>(v[i]) * v[i];
  }
  std::vector<double> norms;
  for (size_t piece : {size_t{1}, size_t{3}, size_t{8}, size_t{13}, size_t{4096}, size_t{numel}}) {
    auto w = SpoolWriter::Create(dir.path() + "/n" + std::to_string(piece), numel);
    ASSERT_TRUE(w.ok()) << w.status();
    for (uint64_t at = 0; at < numel; at += piece) {
      const size_t len = std::min<uint64_t>(piece, numel - at);
      ASSERT_TRUE(w->Append(at, std::span<const float>(v).subspan(at, len)).ok());
    }
    norms.push_back(w->norm());
    ASSERT_TRUE(w->Commit().ok());
  }
  for (double n : norms) EXPECT_EQ(n, norms[0]);  // bit for bit
  EXPECT_NEAR(norms[0], std::sqrt(static_cast<double>(oracle)), 1e-12 * norms[0]);

  for (uint64_t bad : {uint64_t{0}, uint64_t{7}, uint64_t{4100}, numel - 1}) {
    for (float value : {std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()}) {
      std::vector<float> u = v;
      u[bad] = value;
      const std::string path = dir.path() + "/bad";
      auto w = SpoolWriter::Create(path, numel);
      ASSERT_TRUE(w.ok()) << w.status();
      Status s;
      uint64_t at = 0;
      for (; at < numel && s.ok(); at += 1000) {
        s = w->Append(at, std::span<const float>(u).subspan(at, std::min<uint64_t>(1000, numel - at)));
      }
      ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad;
      EXPECT_NE(s.message().find(absl::StrCat("update value ", bad, " is ",
                                              std::isnan(value) ? "NaN" : "Inf")),
                std::string_view::npos)
          << s;
      EXPECT_EQ(at, (bad / 1000 + 1) * 1000) << "stopped at the piece with the bad value";
      EXPECT_FALSE(w->Commit().ok());  // the values after it never arrived
    }
  }
}

}  // namespace
}  // namespace attune::coordinator
