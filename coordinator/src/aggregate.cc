#include "attune/coordinator/aggregate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "attune/coordinator/update_spool.h"

namespace attune::coordinator {
namespace {

TensorSchema StateSchema(int vectors, int64_t numel) {
  TensorSchema s;
  for (int k = 0; k < vectors; ++k) s.tensors.push_back({absl::StrCat("state.", k), {numel}, "f32"});
  return s;
}

// The strategy's state as an encoded blob of `vectors` x `numel` values:
// the committed one when it fits, else fresh initial values.
std::string LoadOrInitState(const Strategy& strategy, int64_t numel, const std::string& committed) {
  const int vectors = strategy.StateVectors();
  if (vectors == 0) return {};
  const TensorSchema want = StateSchema(vectors, numel);
  if (!committed.empty()) {
    auto view = ViewModel(committed);
    if (view.ok() && view->schema == want) return committed;
    spdlog::warn("strategy {}: committed server state does not fit; starting it afresh",
                 strategy.name());
  }
  std::string blob = EncodeZeroModel(want);
  std::span<float> values = MutableValues(blob);
  for (int k = 0; k < vectors; ++k) {
    std::fill_n(values.begin() + k * numel, numel, strategy.StateInit(k));
  }
  return blob;
}

}  // namespace

StatusOr<AggregateResult> AggregateRound(Strategy& strategy, const TensorSchema& schema,
                                         std::span<const float> global,
                                         const std::string& server_state,
                                         std::span<const SpooledUpdate> updates) {
  const uint64_t numel = global.size();
  const size_t n = updates.size();
  ATTUNE_RETURN_IF_ERROR(strategy.Begin(static_cast<int>(n)));
  std::vector<SpoolReader> readers;
  readers.reserve(n);
  for (const auto& u : updates) {
    ATTUNE_ASSIGN_OR_RETURN(SpoolReader r, SpoolReader::Open(u.path, numel));
    readers.push_back(std::move(r));
  }
  const size_t range = std::clamp<size_t>(kAggregateBudgetBytes / sizeof(float) / std::max<size_t>(n, 1),
                                          size_t{1} << 10, size_t{1} << 18);
  std::vector<std::vector<float>> buffers(n, std::vector<float>(range));
  std::vector<SiteDelta> deltas(n);
  // Reads [begin, begin + len) of every site into `deltas`.
  auto load = [&](uint64_t begin, size_t len) -> Status {
    for (size_t i = 0; i < n; ++i) {
      std::span<float> buf(buffers[i].data(), len);
      ATTUNE_RETURN_IF_ERROR(readers[i].Read(begin, buf));
      deltas[i] = {updates[i].site, buf, updates[i].num_examples};
    }
    return absl::OkStatus();
  };
  if (strategy.TwoPass()) {
    for (uint64_t begin = 0; begin < numel; begin += range) {
      const size_t len = std::min<uint64_t>(range, numel - begin);
      ATTUNE_RETURN_IF_ERROR(load(begin, len));
      strategy.Observe(deltas);
    }
    ATTUNE_RETURN_IF_ERROR(strategy.EndObserve());
  }

  AggregateResult result;
  result.model = EncodeZeroModel(schema);
  std::span<float> out = MutableValues(result.model);
  result.server_state = LoadOrInitState(strategy, static_cast<int64_t>(numel), server_state);
  const int vectors = strategy.StateVectors();
  std::span<float> state = vectors ? MutableValues(result.server_state) : std::span<float>();
  std::vector<std::span<float>> state_ranges(vectors);
  for (uint64_t begin = 0; begin < numel; begin += range) {
    const size_t len = std::min<uint64_t>(range, numel - begin);
    ATTUNE_RETURN_IF_ERROR(load(begin, len));
    for (int k = 0; k < vectors; ++k) state_ranges[k] = state.subspan(k * numel + begin, len);
    std::span<float> o = out.subspan(begin, len);
    strategy.Aggregate(deltas, global.subspan(begin, len), state_ranges, o);
    for (size_t j = 0; j < len; ++j) {
      if (!std::isfinite(o[j])) {
        return absl::InternalError(absl::StrCat("strategy ", strategy.name(),
                                                " produced a non-finite value at index ",
                                                begin + j, "; the global model is kept"));
      }
    }
  }
  result.describe_json = strategy.Describe();
  return result;
}

}  // namespace attune::coordinator
