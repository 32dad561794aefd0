// The coordinator's tasks and the sites' update headers in domain terms.
// wire.h maps them to and from the protocol (ToProto, HeaderFromProto);
// the coordinator uses no other mapping.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attune/common/eval_stats.h"
#include "attune/common/secagg.h"

namespace attune {

// One site's view of a secure aggregation it is asked into (the task's
// SecAggSetup): who takes part, in which order, and how the sum is built.
struct SecAggTerms {
  std::string context;             // binds every signature to this aggregation
  int index = 0;                   // this site's place in `sites`
  std::vector<std::string> sites;  // the selected sites, in index order
  int threshold = 0;
  int degree = 0;  // 0: every pair masks; else each site's neighbours
  int64_t length = 0;
  double value_clip = 0;
  double weight = 1;  // this site's FedAvg weight in the sum
};

// Differential privacy asked of a TRAIN update: clip to `clip_norm`, add
// Gaussian noise of `noise_stddev` (0: none; central DP noises the sum).
struct DpTerms {
  double clip_norm = 0;
  double noise_stddev = 0;
};

// The local training a site is asked for.
struct TrainSettings {
  int local_epochs = 0;
  int batch_size = 0;
  double learning_rate = 0;
  uint64_t seed = 0;
  double proximal_mu = 0;  // FedProx's proximal term; 0: none
};

// What a secure step carries besides the task itself: the setup (first
// step), DP terms, the evaluation layout, and what the coordinator relays
// between the sites (advertisements with their certificates, sealed
// shares, the survivor set and its confirmations).
struct SecureTaskParts {
  std::optional<SecAggTerms> setup;
  std::optional<DpTerms> dp;
  std::optional<EvalLayout> eval_layout;
  std::vector<std::pair<secagg::Advertisement, std::string>> advertisements;  // with PEM
  std::vector<secagg::SealedShares> shares;
  std::vector<int> survivors;
  std::vector<int> dropped;
  std::vector<std::pair<int, std::string>> confirmations;  // survivor index, signature
};

struct Task {
  enum class Kind {
    kInit, kTrain, kEvaluate, kFinish, kSecAggShare, kSecAggMask, kSecAggConfirm, kSecAggUnmask
  };
  Kind kind = Kind::kTrain;
  int64_t round = 0;
  int64_t model_version = -1;
  std::vector<std::string> splits;  // EVALUATE only
  bool audit = false;               // EVALUATE: also the subgroup audit sums
  std::string task_id;
  // Shared by the tasks of one step when it is the same for every site.
  std::shared_ptr<const SecureTaskParts> secure;
};

// What a site says of an update it sends, in its first chunk (wire.h:
// HeaderFromProto reads it from the protocol's UpdateMeta).
struct UpdateHeader {
  std::string task_id;
  int64_t round = 0;
  int64_t num_examples = 0;
  bool full_weights = false;
  bool masked = false;       // a secure aggregation's masked input
  std::map<std::string, double> metrics;
  uint64_t total_bytes = 0;
  std::string total_sha256;  // 32 raw bytes
};

inline const char* KindName(Task::Kind k) {
  switch (k) {
    case Task::Kind::kInit: return "init";
    case Task::Kind::kTrain: return "train";
    case Task::Kind::kEvaluate: return "evaluate";
    case Task::Kind::kFinish: return "finish";
    case Task::Kind::kSecAggShare: return "secagg-share";
    case Task::Kind::kSecAggMask: return "secagg-mask";
    case Task::Kind::kSecAggConfirm: return "secagg-confirm";
    case Task::Kind::kSecAggUnmask: return "secagg-unmask";
  }
  return "?";
}

}  // namespace attune
