#include "attune/worker/model.h"

#include <gtest/gtest.h>

#include "attune/worker/model_state.h"

namespace attune::worker {
namespace {

ModelConfig Small() {
  ModelConfig m;
  m.d_model = 16;
  m.heads = 4;
  m.static_features = 5;
  m.event_buckets = 50;
  m.max_events = 6;
  m.imaging_patches = 4;
  m.imaging_dim = 7;
  m.genes = 9;
  m.dropout = 0.0;
  return m;
}

Batch RandomBatch(const ModelConfig& m, int64_t b) {
  Batch x;
  x.static_x = torch::randn({b, m.static_features});
  x.event_bucket = torch::randint(m.event_buckets, {b, m.max_events}, torch::kInt64);
  x.event_value = torch::randn({b, m.max_events});
  x.event_time = torch::rand({b, m.max_events}) * 72;
  x.event_pad = torch::zeros({b, m.max_events}, torch::kBool);
  x.event_pad.index_put_({0, torch::indexing::Slice(2, torch::indexing::None)}, true);  // 2 events
  x.imaging = torch::randn({b, m.imaging_patches, m.imaging_dim});
  x.genomics = torch::randn({b, m.genes});
  x.present = torch::ones({b, kNumModalities}, torch::kBool);
  if (b > 2) {
    x.present.index_put_({1, 2}, false);  // patient 1 has no imaging
    x.present.index_put_({2, 3}, false);  // patient 2 has no genomics
  }
  x.label = torch::randint(2, {b}).to(torch::kFloat);
  return x;
}

TEST(MultimodalAttentionNet, OutputShapesAndAttentionRowsSumToOne) {
  torch::manual_seed(1);
  const ModelConfig m = Small();
  MultimodalAttentionNet net(m);
  net->eval();
  Batch x = RandomBatch(m, 5);
  ModelOutput out = net->forward(x);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{5}));
  EXPECT_EQ(out.beta.sizes(), (std::vector<int64_t>{5, kNumModalities}));
  EXPECT_TRUE(torch::allclose(out.beta.sum(1), torch::ones({5}), 1e-5, 1e-6));
  // A missing modality gets no weight.
  EXPECT_LT(out.beta[1][2].item<float>(), 1e-6);
  EXPECT_LT(out.beta[2][3].item<float>(), 1e-6);
  const std::vector<int64_t> lens = {m.static_features, m.max_events, m.imaging_patches, m.genes};
  ASSERT_EQ(out.attention.size(), 4u);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(out.attention[k].sizes(), (std::vector<int64_t>{5, lens[k] + 1, lens[k] + 1}));
    EXPECT_TRUE(torch::allclose(out.attention[k].sum(-1), torch::ones({5, lens[k] + 1}), 1e-5, 1e-6));
    EXPECT_FALSE(torch::isnan(out.attention[k]).any().item<bool>());
  }
  // Padded events get no attention: patient 0 has events only at 0 and 1.
  EXPECT_LT(out.attention[1][0].slice(1, 3).abs().max().item<float>(), 1e-6);
  EXPECT_FALSE(torch::isnan(out.logits).any().item<bool>());
}

TEST(MultimodalAttentionNet, PatientWithoutAnyModalityGivesFiniteOutput) {
  const ModelConfig m = Small();
  MultimodalAttentionNet net(m);
  net->eval();
  Batch x = RandomBatch(m, 2);
  x.present = torch::zeros({2, kNumModalities}, torch::kBool);
  x.event_pad = torch::ones({2, m.max_events}, torch::kBool);
  ModelOutput out = net->forward(x);
  EXPECT_TRUE(torch::isfinite(out.logits).all().item<bool>());
  EXPECT_TRUE(torch::allclose(out.beta.sum(1), torch::ones({2}), 1e-5, 1e-6));
}

TEST(ModelState, FlatRoundTripAndSchemaCheck) {
  const ModelConfig m = Small();
  torch::manual_seed(3);
  MultimodalAttentionNet a(m);
  torch::manual_seed(4);
  MultimodalAttentionNet b(m);
  FlatModel flat = ToFlatModel(*a);
  EXPECT_EQ(static_cast<int64_t>(flat.values.size()), flat.schema.numel());
  ASSERT_TRUE(LoadFlatModel(flat, *b).ok());
  EXPECT_EQ(ToFlatModel(*b).values, flat.values);
  // The same seed gives the same initial model (sites agree on v0).
  torch::manual_seed(3);
  MultimodalAttentionNet c(m);
  EXPECT_EQ(ToFlatModel(*c).values, flat.values);

  ModelConfig bigger = m;
  bigger.genes = 10;
  MultimodalAttentionNet d(bigger);
  EXPECT_EQ(LoadFlatModel(flat, *d).code(), absl::StatusCode::kInvalidArgument);
}

TEST(MultimodalAttentionNet, LearnsAPlantedSignal) {
  // A few Adam steps on a signal in the static features must lower the loss.
  torch::manual_seed(5);
  const ModelConfig m = Small();
  MultimodalAttentionNet net(m);
  Batch x = RandomBatch(m, 64);
  x.label = (x.static_x.select(1, 0) > 0).to(torch::kFloat);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  auto loss_of = [&] {
    return torch::binary_cross_entropy_with_logits(net->forward(x).logits, x.label);
  };
  const double before = loss_of().item<double>();
  for (int i = 0; i < 40; ++i) {
    opt.zero_grad();
    auto loss = loss_of();
    loss.backward();
    opt.step();
  }
  EXPECT_LT(loss_of().item<double>(), 0.5 * before);
}

}  // namespace
// FedProx: μ/2 Σ ||p − a||², checked by hand, and its gradient μ(p − a).
TEST(ProximalTerm, MatchesHandComputedValueAndGradient) {
  torch::Tensor p1 = torch::tensor({1.0f, 2.0f}).requires_grad_(true);
  torch::Tensor p2 = torch::tensor({3.0f}).requires_grad_(true);
  std::vector<torch::Tensor> anchors = {torch::tensor({0.0f, 0.0f}), torch::tensor({1.0f})};
  // 0.5 / 2 * ((1-0)^2 + (2-0)^2 + (3-1)^2) = 0.25 * 9 = 2.25
  torch::Tensor term = ProximalTerm({p1, p2}, anchors, 0.5);
  EXPECT_FLOAT_EQ(term.item<float>(), 2.25f);
  term.backward();
  // μ (p − a) = 0.5 * (1, 2) and 0.5 * 2
  EXPECT_FLOAT_EQ(p1.grad()[0].item<float>(), 0.5f);
  EXPECT_FLOAT_EQ(p1.grad()[1].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(p2.grad()[0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(ProximalTerm({p1, p2}, anchors, 0.0).item<float>(), 0.0f);
}

}  // namespace attune::worker
