#include "attune/common/config.h"

#include <gtest/gtest.h>

namespace attune {
namespace {

const char* kGood = R"({"study_id": "s1", "rounds": 3, "min_sites": 2,
  "roster": ["a", "b", "c"], "train": {"batch_size": 16}, "model": {"d_model": 16, "heads": 2}})";

TEST(StudyConfig, ParsesAndKeepsDefaults) {
  auto c = ParseStudyConfig(kGood, "study.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->study_id, "s1");
  EXPECT_EQ(c->rounds, 3);
  EXPECT_EQ(c->roster.size(), 3u);
  EXPECT_EQ(c->train.batch_size, 16);
  EXPECT_EQ(c->train.local_epochs, 2);  // default
  EXPECT_EQ(c->model.d_model, 16);
  EXPECT_EQ(c->audit.report.min_cell, 10);
}

struct BadCase {
  const char* json;
  const char* expect_in_message;
};

class StudyConfigErrors : public ::testing::TestWithParam<BadCase> {};

TEST_P(StudyConfigErrors, NameTheField) {
  auto c = ParseStudyConfig(GetParam().json, "study.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(c.status().message());
  EXPECT_NE(msg.find("study.json: "), std::string::npos) << msg;
  EXPECT_NE(msg.find(GetParam().expect_in_message), std::string::npos) << msg;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, StudyConfigErrors,
    ::testing::Values(
        BadCase{"{not json", "not valid JSON"},
        BadCase{"[1,2]", "must be a JSON object"},
        BadCase{R"({"roster": ["a"]})", "study_id: required"},
        BadCase{R"({"study_id": "s", "roster": []})", "roster"},
        BadCase{R"({"study_id": "s", "roster": ["a"], "rounds": "five"})", "rounds: must be an integer"},
        BadCase{R"({"study_id": "s", "roster": ["a"], "rounds": 0})", "rounds: must be in"},
        BadCase{R"({"study_id": "s", "roster": ["a"], "min_sites": 2})", "min_sites"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "train": {"batch_size": 0}})", "train.batch_size"},
        BadCase{R"({"study_id": "s", "roster": ["a"], "train": {"batchsize": 4}})", "train.batchsize: unknown field"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "model": {"d_model": 30, "heads": 4}})", "model.heads: must divide"},
        BadCase{R"({"study_id": "s", "roster": ["a", "a"]})", "listed twice"},
        BadCase{R"({"study_id": "s", "roster": ["a"], "rouds": 3})", "rouds: unknown field"},
        BadCase{R"({"study_id": "s", "roster": ["a"], "secure_aggregation": true, "min_sites": 1})",
                "at least 2 sites"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "secure_aggregation": true,
                    "strategy": {"name": "median"}})", "cannot run with secure_aggregation"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "secure_aggregation": true,
                    "secagg": {"threshold": 1}})", "secagg.threshold"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "secagg": {"clip": 1}})",
                "secagg.clip: unknown field"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "privacy": {"mode": "central"}})",
                "set secure_aggregation to true"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "privacy": {"mode": "global"}})",
                "privacy.mode"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"],
                    "privacy": {"mode": "local", "delta": 0.9}})", "privacy.delta"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"], "secure_aggregation": true,
                    "audit": {"columns": ["sex", "race"], "values": {"sex": ["F", "M"]}}})",
                "missing: race"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"],
                    "audit": {"columns": ["sex"], "values": {"age": ["<40"]}}})",
                "audit.values.age: not one of audit.columns"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"],
                    "audit": {"columns": ["sex"], "values": {"sex": ["F", "F"]}}})",
                "listed twice"},
        BadCase{R"j({"study_id": "s", "roster": ["a", "b"],
                    "audit": {"columns": ["sex"], "values": {"sex": ["F", "(other)"]}}})j",
                "do not list it"},
        BadCase{R"({"study_id": "s", "roster": ["a", "b"],
                    "audit": {"columns": ["sex"], "values": {"sex": "F"}}})",
                "audit.values.sex: must be an array of strings"}));

TEST(StudyConfig, SecureAggregationAndPrivacyParse) {
  auto c = ParseStudyConfig(R"({"study_id": "s", "roster": ["a", "b", "c"],
      "secure_aggregation": true, "secagg": {"threshold": 2, "neighbours": 2, "value_clip": 0.5},
      "privacy": {"mode": "central", "clip_norm": 2, "noise_multiplier": 0.8, "epsilon": 8,
                  "delta": 1e-6},
      "audit": {"columns": ["sex", "age_band"],
                "values": {"sex": ["F", "M"], "age_band": ["<40", "40-59", ">=60"]}}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->secure_aggregation);
  EXPECT_EQ(c->secagg.threshold, 2);
  EXPECT_EQ(c->secagg.neighbours, 2);
  EXPECT_DOUBLE_EQ(c->secagg.value_clip, 0.5);
  EXPECT_EQ(c->privacy.mode, "central");
  EXPECT_DOUBLE_EQ(c->privacy.noise_multiplier, 0.8);
  EXPECT_DOUBLE_EQ(c->privacy.epsilon, 8);
  EXPECT_DOUBLE_EQ(c->privacy.delta, 1e-6);
  EXPECT_EQ(c->audit.values.at("age_band"), (std::vector<std::string>{"<40", "40-59", ">=60"}));
}

TEST(StudyConfig, MissingFileIsNotFound) {
  auto c = LoadStudyConfig("/nonexistent/study.json");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(c.status().message()).find("/nonexistent/study.json"), std::string::npos);
}

TEST(ModelConfig, JsonRoundTrip) {
  ModelConfig m;
  m.d_model = 64;
  m.genes = 10;
  auto back = ModelConfig::FromJson(m.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->d_model, 64);
  EXPECT_EQ(back->genes, 10);
}

}  // namespace
}  // namespace attune
