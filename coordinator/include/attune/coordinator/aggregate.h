// Applies a Strategy to one round's spooled site updates, one coordinate
// range at a time: memory is O(model) for the new model and the strategy's
// state plus a fixed budget for the ranges, whatever the number of sites.
//
// Sites are visited in the order given (the round driver sorts them by
// name), so the result is bitwise reproducible for the same inputs: it does
// not depend on the order in which updates arrived.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "attune/common/status.h"
#include "attune/common/tensor_codec.h"
#include "attune/coordinator/strategy.h"

namespace attune::coordinator {

struct SpooledUpdate {
  std::string site;
  std::string path;          // raw float32 file (update_spool.h)
  int64_t num_examples = 0;
};

struct AggregateResult {
  std::string model;         // encoded candidate model (aligned, EncodeModel layout)
  std::string server_state;  // encoded strategy state; empty when it keeps none
  std::string describe_json; // Strategy::Describe()
};

// The bytes of range buffers, shared by all sites (ranges shrink as the
// number of sites grows).
inline constexpr size_t kAggregateBudgetBytes = size_t{16} << 20;
// Models of at least this many values are aggregated on up to
// kAggregateWorkers threads (never more than the machine's cores).
inline constexpr uint64_t kParallelAggregateValues = uint64_t{1} << 20;
inline constexpr size_t kAggregateWorkers = 4;

// `global` is the current model (schema + values); `server_state` the
// encoded state committed with it, or empty to start from the strategy's
// initial values (also when its shape does not fit the strategy).
StatusOr<AggregateResult> AggregateRound(Strategy& strategy, const TensorSchema& schema,
                                         std::span<const float> global,
                                         const std::string& server_state,
                                         std::span<const SpooledUpdate> updates);

}  // namespace attune::coordinator
