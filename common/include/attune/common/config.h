// Study configuration: one JSON file, parsed once (in main) into typed,
// validated structs. Every validation error names the offending field by its
// JSON path, e.g. `study.json: train.batch_size: must be >= 1 (got 0)`.
//
// Example (experiments/studies/quickstart.json):
//   {
//     "study_id": "quickstart", "rounds": 5, "min_sites": 2,
//     "roster": ["site-1", "site-2", "site-3"],
//     "train": {"local_epochs": 2, "batch_size": 32, "learning_rate": 0.003},
//     "model": {"d_model": 32, "heads": 4},
//     "audit": {"columns": ["sex", "age_band", "ethnicity"]}
//   }
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune {

// The multimodal attention model's shape. Sites and coordinator must agree;
// the coordinator ships this section with every task.
struct ModelConfig {
  int d_model = 32;
  int heads = 4;
  int static_features = 8;     // columns of ehr/static.csv after patient_id
  int event_buckets = 256;     // event codes are feature-hashed into this many
  int max_events = 32;         // most recent events kept per patient
  int imaging_patches = 16;    // rows of imaging/<patient>.npy
  int imaging_dim = 32;        // columns of imaging/<patient>.npy
  int genes = 64;              // columns of genomics/expression.tsv after patient_id
  double dropout = 0.1;

  Status Validate() const;
  std::string ToJson() const;
  static StatusOr<ModelConfig> FromJson(const std::string& json);
};

struct TrainConfig {
  int local_epochs = 2;
  int batch_size = 32;
  double learning_rate = 3e-3;
  uint64_t seed = 7;
};

struct AuditConfig {
  std::vector<std::string> columns = {"sex", "age_band", "ethnicity"};
  int min_cell = 10;          // groups with fewer patients are suppressed
  int histogram_bins = 200;   // score histogram resolution for AUC
};

struct StudyConfig {
  std::string study_id;
  int rounds = 5;
  int min_sites = 2;                 // quorum for a round to close
  std::vector<std::string> roster;   // certificate CNs allowed to join
  double join_timeout_s = 120;       // wait this long for the whole roster
  double round_deadline_s = 600;     // a round closes at this deadline with >= min_sites
  TrainConfig train;
  ModelConfig model;
  AuditConfig audit;

  Status Validate() const;
};

// Parses and validates; errors start with `path: `.
StatusOr<StudyConfig> ParseStudyConfig(const std::string& json_text,
                                       const std::string& path = "study");
StatusOr<StudyConfig> LoadStudyConfig(const std::string& path);

// Reads a whole file; NotFound / Internal name the path.
StatusOr<std::string> ReadFile(const std::string& path);
// Writes atomically (temp file + rename).
Status WriteFileAtomic(const std::string& path, const std::string& content);

}  // namespace attune
