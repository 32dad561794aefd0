// RoundHistory: the committed rounds read once from a real StateStore, the
// figures status shows, and summary.json, checked against hand-written
// records.
#include "attune/coordinator/round_history.h"

#include <gtest/gtest.h>

#include <cmath>

#include "attune/common/tensor_codec.h"
#include "nlohmann/json.hpp"
#include "support/temp_dir.h"

namespace attune::coordinator {
namespace {

using nlohmann::json;

const char* kRecords[] = {
    R"({"sites_reported": 3, "train_loss": null, "val": {"loss": 0.69, "auc": 0.5}, "seconds": 1.5})",
    R"({"sites_reported": 2, "train_loss": 0.61, "val": {"loss": 0.6, "auc": null}, "seconds": 2.0})",
    R"({"sites_reported": 3, "train_loss": 0.55, "val": {"loss": 0.5, "auc": 0.8}, "seconds": 2.5,
        "test": {"n": 300, "auc": 0.79, "accuracy": 0.7, "loss": 0.52}})",
};

void Commit(StateStore* store, int64_t round, const std::string& audit) {
  const std::string model = EncodeModel(FlatModel{TensorSchema{{{"w", {2}, "f32"}}}, {1.0f, 2.0f}});
  RoundCommit c;
  c.round = round;
  c.model = model;
  c.record_json = kRecords[round];
  c.audit_json = audit;
  ASSERT_TRUE(store->CommitRound(c).ok());
}

TEST(RoundHistory, ReadsEachCommittedRoundOnceAndSummarisesThem) {
  testing::TempDir dir;
  auto store = StateStore::Open(dir.path(), "study");
  ASSERT_TRUE(store.ok()) << store.status();
  Commit(store->get(), 0, R"({"columns": [], "round0": true})");
  Commit(store->get(), 1, "");
  auto history = RoundHistory::Load(**store);
  ASSERT_TRUE(history.ok()) << history.status();
  ASSERT_EQ(history->rounds().size(), 2u);
  EXPECT_EQ(history->audit_round(), 0);  // round 1 had no audit
  const RoundRecord& r0 = history->rounds()[0];
  EXPECT_EQ(r0.sites_reported, 3);
  EXPECT_FALSE(r0.train_loss.has_value());
  EXPECT_DOUBLE_EQ(*r0.val_loss, 0.69);
  EXPECT_DOUBLE_EQ(*r0.val_auc, 0.5);
  EXPECT_DOUBLE_EQ(*r0.seconds, 1.5);
  EXPECT_FALSE(r0.test.has_value());
  EXPECT_FALSE(history->rounds()[1].val_auc.has_value());

  // The next round, as the driver appends it after its commit.
  Commit(store->get(), 2, R"({"columns": [], "round2": true})");
  auto r2 = RoundRecord::FromJson(2, kRecords[2]);
  ASSERT_TRUE(r2.ok()) << r2.status();
  ASSERT_TRUE(r2->test.has_value());
  EXPECT_EQ(r2->test->n, 300);
  EXPECT_DOUBLE_EQ(*r2->test->accuracy, 0.7);
  ASSERT_TRUE(history->Append(*r2, R"({"columns": [], "round2": true})").ok());
  EXPECT_EQ(history->audit_round(), 2);
  // Out of order: refused.
  EXPECT_FALSE(history->Append(*r2, "").ok());

  const json summary = json::parse(history->SummaryJson({"study", 3, "fedavg", ""}));
  EXPECT_EQ(summary["study_id"], "study");
  EXPECT_EQ(summary["rounds"], 2);
  EXPECT_EQ(summary["finished"], false);
  EXPECT_EQ(summary["initial"], json({{"val_loss", 0.69}, {"val_auc", 0.5}}));
  EXPECT_EQ(summary["train_loss"], json({0.61, 0.55}));
  EXPECT_EQ(summary["val_loss"], json({0.6, 0.5}));
  EXPECT_EQ(summary["val_auc"], json({nullptr, 0.8}));
  EXPECT_EQ(summary["final"], json({{"round", 2}, {"split", "test"}, {"n", 300}, {"auc", 0.79},
                                    {"accuracy", 0.7}, {"loss", 0.52}}));
  ASSERT_EQ(summary["history"].size(), 3u);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(summary["history"][r], json::parse(kRecords[r])) << r;

  // A reopened store gives the same history.
  auto again = RoundHistory::Load(**store);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->SummaryJson({"study", 3, "fedavg", ""}),
            history->SummaryJson({"study", 3, "fedavg", ""}));
  EXPECT_EQ(again->audit_json(), R"({"columns": [], "round2": true})");

  // Stopped early (the privacy budget): finished, and says why.
  const json stopped = json::parse(history->SummaryJson({"study", 3, "fedavg", "budget"}));
  EXPECT_EQ(stopped["finished"], true);
  EXPECT_EQ(stopped["stopped_early"], "budget");
}

TEST(RoundHistory, AnEmptyStudyAndABrokenRecord) {
  testing::TempDir dir;
  auto store = StateStore::Open(dir.path(), "study");
  ASSERT_TRUE(store.ok());
  auto history = RoundHistory::Load(**store);
  ASSERT_TRUE(history.ok());
  const json summary = json::parse(history->SummaryJson({"study", 3, "fedavg", ""}));
  EXPECT_EQ(summary["history"], json::array());
  EXPECT_EQ(summary["rounds"], 0);
  EXPECT_EQ(history->audit_round(), -1);
  EXPECT_EQ(RoundRecord::FromJson(0, "[1, 2]").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(RoundRecord::FromJson(0, "{").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace attune::coordinator
