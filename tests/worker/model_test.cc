#include "attune/worker/model.h"

#include <gtest/gtest.h>

#include "attune/worker/model_state.h"
#include "worker/batches.h"

namespace attune::worker {
namespace {

using testing::SmallModel;

ModelConfig Small() { return SmallModel(); }

// Patient 0 has two events; patient 1 no imaging, patient 2 no genomics.
Batch RandomBatch(const ModelConfig& m, int64_t b) {
  Batch x = testing::RandomBatch(m, b);
  x.event_pad.index_put_({0, torch::indexing::Slice(2, torch::indexing::None)}, true);
  if (b > 2) {
    x.present.index_put_({1, 2}, false);
    x.present.index_put_({2, 3}, false);
  }
  return x;
}

const models::AttentionTrace* FindTrace(const ModelOutput& out, const std::string& name) {
  for (const auto& t : out.traces) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// Every fusion, with each kind of within-modality attention: shapes, β and
// the attention weights are proper distributions, a missing modality gets
// no weight, and nothing is NaN.
class EveryFusion : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(EveryFusion, OutputShapesAndAttentionRowsSumToOne) {
  torch::manual_seed(1);
  ModelConfig m = Small();
  m.fusion = std::get<0>(GetParam());
  m.attention = std::get<1>(GetParam());
  MultimodalAttentionNet net(m);
  net->eval();
  Batch x = RandomBatch(m, 5);
  ModelOutput out = net->forward(x);
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{5}));
  EXPECT_EQ(out.beta.sizes(), (std::vector<int64_t>{5, kNumModalities}));
  EXPECT_TRUE(torch::allclose(out.beta.sum(1), torch::ones({5}), 1e-5, 1e-6)) << out.beta;
  // A missing modality gets no weight.
  EXPECT_LT(out.beta[1][2].item<float>(), 1e-6);
  EXPECT_LT(out.beta[2][3].item<float>(), 1e-6);
  EXPECT_FALSE(torch::isnan(out.logits).any().item<bool>());
  for (const auto& t : out.traces) {
    EXPECT_TRUE(torch::isfinite(t.weights).all().item<bool>()) << t.name;
  }
  if (m.attention == "softmax") {
    const std::vector<int64_t> lens = {m.static_features, m.max_events, m.imaging_patches, m.genes};
    for (int k = 0; k < kNumModalities; ++k) {
      const auto* t = FindTrace(out, ModalityNames()[k] + "/layer0/self");
      ASSERT_NE(t, nullptr) << ModalityNames()[k];
      EXPECT_EQ(t->weights.sizes(), (std::vector<int64_t>{5, m.heads, lens[k] + 1, lens[k] + 1}));
      EXPECT_TRUE(torch::allclose(t->weights.sum(-1), torch::ones({5, m.heads, lens[k] + 1}),
                                  1e-5, 1e-6));
    }
    // Padded events get no attention: patient 0 has events only at 0 and 1.
    const auto* events = FindTrace(out, "ehr_events/layer0/self");
    EXPECT_LT(events->weights[0].slice(2, 3).abs().max().item<float>(), 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Zoo, EveryFusion,
    ::testing::Combine(::testing::Values("hierarchical", "cross", "coattention", "persam"),
                       ::testing::Values("softmax", "linear")),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

// Each imaging encoder builds, reads its input shape and gives a finite
// output; a missing image gets no weight.
class EveryImagingEncoder : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryImagingEncoder, BuildsAndMasksAMissingImage) {
  torch::manual_seed(2);
  ModelConfig m = Small();
  m.imaging_encoder = GetParam();
  MultimodalAttentionNet net(m);
  net->eval();
  Batch x = RandomBatch(m, 5);
  ModelOutput out = net->forward(x);
  EXPECT_TRUE(torch::isfinite(out.logits).all().item<bool>());
  EXPECT_LT(out.beta[1][2].item<float>(), 1e-6);
  EXPECT_GT(out.beta[0][2].item<float>(), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Zoo, EveryImagingEncoder,
                         ::testing::Values("patch_features", "mil", "vit", "cnn"));

TEST(MultimodalAttentionNet, ModalitiesTheModelLacksAreNotBuilt) {
  ModelConfig m = Small();
  m.static_features = 0;
  m.imaging_encoder = "none";
  MultimodalAttentionNet net(m);
  for (const auto& p : net->named_parameters()) {
    EXPECT_EQ(p.key().find("static"), std::string::npos) << p.key();
    EXPECT_EQ(p.key().find("imaging"), std::string::npos) << p.key();
  }
  Batch x = RandomBatch(m, 3);
  ModelOutput out = net->forward(x);
  EXPECT_TRUE(torch::isfinite(out.logits).all().item<bool>());
  EXPECT_EQ(out.beta.select(1, 0).abs().max().item<float>(), 0.0f);
  EXPECT_EQ(out.beta.select(1, 2).abs().max().item<float>(), 0.0f);
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
  // Nothing to attend to: no modality gets weight.
  EXPECT_EQ(out.beta.abs().max().item<float>(), 0.0f);
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
// Attention rollout by hand: one patient, three tokens (the class token
// first), two heads whose mean is
//   [[0.3, 0.425, 0.275], [0.1, 0.9, 0], [0, 0.25, 0.75]].
TEST(TokenAttention, RollsTheFusionsMassBackByHand) {
  const torch::Tensor layer0 =
      torch::tensor({0.5, 0.25, 0.25, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0,     // head 0
                     0.1, 0.6, 0.3, 0.2, 0.8, 0.0, 0.0, 0.5, 0.5},     // head 1
                    torch::kFloat32)
          .reshape({1, 2, 3, 3});
  auto expect = [](const torch::Tensor& got, std::vector<double> want) {
    ASSERT_TRUE(got.defined());
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{1, static_cast<int64_t>(want.size())}));
    for (size_t j = 0; j < want.size(); ++j) {
      EXPECT_NEAR(got[0][j].item<double>(), want[j], 1e-7) << "token " << j + 1;
    }
  };
  ModelOutput out;
  out.traces.push_back({"ehr_static/layer0/self", layer0});
  // No α: all the mass starts on the class token, 1/2 stays, 1/2 follows its row.
  expect(TokenAttention(out, "ehr_static"), {0.2125, 0.1375});
  // Hierarchical fusion's α = [0.2, 0.5, 0.3]: αA = [0.11, 0.61, 0.28].
  out.traces.push_back({"fusion/alpha/ehr_static", torch::tensor({{0.2, 0.5, 0.3}})});
  expect(TokenAttention(out, "ehr_static"), {0.555, 0.29});
  // Two layers, no α: through layer 1 (the class token attends half to each
  // other token) [0.5, 0.25, 0.25], then through layer 0.
  ModelOutput two;
  two.traces.push_back({"genomics/layer0/self", layer0});
  two.traces.push_back({"genomics/layer1/self",
                        torch::tensor({0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0})
                            .reshape({1, 1, 3, 3})
                            .expand({1, 2, 3, 3})});
  expect(TokenAttention(two, "genomics"), {0.375, 0.2875});
  // Attention-MIL's weights are the answer; a modality without traces has none.
  two.traces.push_back({"imaging/mil", torch::tensor({{0.1, 0.2, 0.3, 0.4}})});
  expect(TokenAttention(two, "imaging"), {0.1, 0.2, 0.3, 0.4});
  EXPECT_FALSE(TokenAttention(two, "ehr_events").defined());
}

// On a real model, each modality's mass over its input tokens is at most 1,
// never negative, and under hierarchical fusion it adds up to 1 minus what
// stays on the class token.
TEST(TokenAttention, IsADistributionOnARealModel) {
  torch::manual_seed(3);
  ModelConfig m = Small();
  MultimodalAttentionNet net(m);
  net->eval();
  ModelOutput out = net->forward(RandomBatch(m, 4));
  for (const std::string modality : {"ehr_static", "ehr_events", "imaging", "genomics"}) {
    torch::Tensor mass = TokenAttention(out, modality);
    ASSERT_TRUE(mass.defined()) << modality;
    EXPECT_GE(mass.min().item<double>(), 0) << modality;
    EXPECT_LE(mass.sum(1).max().item<double>(), 1 + 1e-6) << modality;
    EXPECT_GT(mass.sum(1).max().item<double>(), 0.25) << modality;
  }
}

// Queries start at zero, so a fresh model attends uniformly: every
// within-modality row spreads over the unpadded tokens, the fusion's α over
// each modality's tokens and β over the modalities present. A group
// difference in attention is then something training made.
TEST(MultimodalAttentionNet, AttentionStartsUniform) {
  torch::manual_seed(5);
  ModelConfig m = Small();
  MultimodalAttentionNet net(m);
  net->eval();
  Batch x = RandomBatch(m, 4);
  ModelOutput out = net->forward(x);
  const auto* events = FindTrace(out, "ehr_events/layer0/self");
  ASSERT_NE(events, nullptr);
  // Patient 0 has two events: the class token and those two share each row.
  EXPECT_TRUE(torch::allclose(events->weights[0].slice(2, 0, 3),
                              torch::full({m.heads, m.max_events + 1, 3}, 1.0 / 3), 1e-6, 1e-6));
  const auto* statics = FindTrace(out, "ehr_static/layer0/self");
  ASSERT_NE(statics, nullptr);
  EXPECT_TRUE(torch::allclose(statics->weights, torch::full_like(statics->weights,
                                                                1.0 / (m.static_features + 1)),
                              1e-6, 1e-6));
  const auto* alpha = FindTrace(out, "fusion/alpha/genomics");
  ASSERT_NE(alpha, nullptr);
  EXPECT_TRUE(torch::allclose(alpha->weights[0], torch::full({m.genes + 1}, 1.0 / (m.genes + 1)),
                              1e-6, 1e-6));
  // Patient 3 has every modality, patient 1 no imaging.
  EXPECT_TRUE(torch::allclose(out.beta[3], torch::full({kNumModalities}, 0.25), 1e-6, 1e-6))
      << out.beta;
  EXPECT_NEAR(out.beta[1][0].item<double>(), 1.0 / 3, 1e-6);
  EXPECT_NEAR(out.beta[1][2].item<double>(), 0.0, 1e-6);
}

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
