// The committed rounds as the coordinator reports them (attune status,
// summary.json, audit.json), kept in memory: each round's record is read
// once -- when it commits, or when a restarted coordinator loads the study
// -- and never parsed again. A status call or a commit costs what the
// answer or the file is, not a parse of every earlier round.
//
// Thread-compatible: the round driver guards it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "attune/common/status.h"
#include "attune/common/store.h"

namespace attune::coordinator {

// What status and summary.json show of one committed round.
struct RoundRecord {
  int64_t round = 0;
  int sites_reported = 0;
  // Absent when the round has none (round 0's training, a DP round's loss).
  std::optional<double> train_loss, val_loss, val_auc, seconds;
  // The test split's figures, in the last round only.
  struct Test {
    int64_t n = 0;
    std::optional<double> auc, accuracy, loss;
  };
  std::optional<Test> test;
  // The record as committed (a JSON object): summary.json's history entry.
  std::string json;

  // DataLoss for text that is not a JSON object.
  static StatusOr<RoundRecord> FromJson(int64_t round, std::string json);
};

class RoundHistory {
 public:
  // Every round committed in `store`, and its latest audit.
  static StatusOr<RoundHistory> Load(const StateStore& store);

  // A round just committed (the next one), with its audit ("" if none).
  Status Append(RoundRecord record, std::string audit_json);

  const std::vector<RoundRecord>& rounds() const { return rounds_; }
  // The latest round that was audited (audit.every) and its audit; -1 and
  // "" before any.
  int64_t audit_round() const { return audit_round_; }
  const std::string& audit_json() const { return audit_json_; }

  // summary.json: the study's progress, its curves and every record.
  struct SummaryHeader {
    std::string study_id;
    int64_t total_rounds = 0;
    std::string strategy;
    std::string stopped_early;  // why the study ended before its last round
  };
  std::string SummaryJson(const SummaryHeader& header) const;

 private:
  std::vector<RoundRecord> rounds_;
  int64_t audit_round_ = -1;
  std::string audit_json_;
};

}  // namespace attune::coordinator
