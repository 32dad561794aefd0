// A task the coordinator sends a site on its task stream (the service maps
// it to the protocol's RoundTask).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attune/v1/federation.pb.h"

namespace attune::coordinator {

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
  // Secure aggregation and DP fields of the task message (setup, relayed
  // advertisements, sealed shares, survivors), merged into it as they are.
  std::shared_ptr<const v1::RoundTask> secure;
};
const char* KindName(Task::Kind k);

}  // namespace attune::coordinator
