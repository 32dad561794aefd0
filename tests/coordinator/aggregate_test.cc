// AggregateRound over real spool files, for a model large enough to be
// aggregated on several threads, against the strategy applied to the
// whole model in one range (its contract: the result does not depend on
// how the coordinates are split, nor on who computes each range).
#include "attune/coordinator/aggregate.h"

#include <gtest/gtest.h>

#include <cstring>

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

}  // namespace
}  // namespace attune::coordinator
