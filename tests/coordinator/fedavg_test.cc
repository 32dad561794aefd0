#include "attune/coordinator/fedavg.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace attune::coordinator {
namespace {

TEST(FedAvg, WeightedMeanHandComputed) {
  // Site a: n=1, Δ=(1, 2, 3); site b: n=3, Δ=(5, -2, 0).
  // Mean = ((1+15)/4, (2-6)/4, (3+0)/4) = (4, -1, 0.75).
  std::vector<float> a = {1, 2, 3}, b = {5, -2, 0};
  std::vector<ClientUpdate> u = {{"a", a, 1}, {"b", b, 3}};
  std::vector<float> out(3);
  WeightedMeanInto(out, u);
  EXPECT_FLOAT_EQ(out[0], 4.0f);
  EXPECT_FLOAT_EQ(out[1], -1.0f);
  EXPECT_FLOAT_EQ(out[2], 0.75f);
}

TEST(FedAvg, StreamingMatchesHandComputedNextModel) {
  std::vector<float> global = {10, 20, 30};
  std::vector<float> a = {1, 2, 3}, b = {5, -2, 0};
  StreamingFedAvg agg(3);
  ASSERT_TRUE(agg.Accept({"b", b, 3}).ok());  // arrival order does not matter
  ASSERT_TRUE(agg.Accept({"a", a, 1}).ok());
  EXPECT_EQ(agg.accepted(), 2);
  EXPECT_EQ(agg.total_examples(), 4);
  auto next = agg.Finalize(global);
  ASSERT_TRUE(next.ok());
  EXPECT_FLOAT_EQ((*next)[0], 14.0f);
  EXPECT_FLOAT_EQ((*next)[1], 19.0f);
  EXPECT_FLOAT_EQ((*next)[2], 30.75f);
}

TEST(FedAvg, StreamingAgreesWithBatchOnManySites) {
  const int sites = 13, numel = 1001;
  std::vector<std::vector<float>> deltas(sites, std::vector<float>(numel));
  std::vector<ClientUpdate> updates;
  StreamingFedAvg agg(numel);
  for (int s = 0; s < sites; ++s) {
    for (int i = 0; i < numel; ++i) deltas[s][i] = static_cast<float>((s + 1) * 0.01 * i - s);
    updates.push_back({"s" + std::to_string(s), deltas[s], s + 1});
    ASSERT_TRUE(agg.Accept(updates.back()).ok());
  }
  std::vector<float> mean(numel), zero(numel, 0.0f);
  WeightedMeanInto(mean, updates);
  auto next = agg.Finalize(zero);
  ASSERT_TRUE(next.ok());
  for (int i = 0; i < numel; ++i) EXPECT_NEAR((*next)[i], mean[i], 1e-4 * (1 + std::abs(mean[i])));
}

TEST(FedAvg, RefusesBadUpdatesWithoutFoldingThemIn) {
  StreamingFedAvg agg(2);
  std::vector<float> wrong_size = {1, 2, 3};
  std::vector<float> nan = {1, std::numeric_limits<float>::quiet_NaN()};
  std::vector<float> inf = {std::numeric_limits<float>::infinity(), 0};
  std::vector<float> good = {2, 4};
  EXPECT_EQ(agg.Accept({"x", wrong_size, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.Accept({"x", nan, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.Accept({"x", inf, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.Accept({"x", good, 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.accepted(), 0);
  EXPECT_EQ(agg.Finalize(std::vector<float>{0, 0}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(agg.Accept({"x", good, 2}).ok());
  auto next = agg.Finalize(std::vector<float>{1, 1});
  ASSERT_TRUE(next.ok());
  EXPECT_FLOAT_EQ((*next)[0], 3.0f);
  EXPECT_FLOAT_EQ((*next)[1], 5.0f);
}

}  // namespace
}  // namespace attune::coordinator
