#include "attune/coordinator/aggregate.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <thread>

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
  // The aggregation pass runs on up to kAggregateWorkers threads, each on
  // its own share of the ranges with its own buffers (the budget is shared):
  // a range's result is the same whoever computes it.
  const size_t workers =
      numel >= kParallelAggregateValues
          ? std::clamp<size_t>(std::thread::hardware_concurrency(), 1, kAggregateWorkers)
          : 1;
  const size_t range =
      std::clamp<size_t>(kAggregateBudgetBytes / sizeof(float) / std::max<size_t>(n, 1) / workers,
                         size_t{1} << 10, size_t{1} << 18);
  // One worker's buffers; Load reads [begin, begin + len) of every site.
  struct Buffers {
    std::vector<std::vector<float>> values;
    std::vector<SiteDelta> deltas;
  };
  auto make_buffers = [&] {
    return Buffers{std::vector<std::vector<float>>(n, std::vector<float>(range)),
                   std::vector<SiteDelta>(n)};
  };
  auto load = [&](Buffers& b, uint64_t begin, size_t len) -> Status {
    for (size_t i = 0; i < n; ++i) {
      std::span<float> buf(b.values[i].data(), len);
      ATTUNE_RETURN_IF_ERROR(readers[i].Read(begin, buf));
      b.deltas[i] = {updates[i].site, buf, updates[i].num_examples};
    }
    return absl::OkStatus();
  };
  if (strategy.TwoPass()) {  // in coordinate order, on this thread
    Buffers b = make_buffers();
    for (uint64_t begin = 0; begin < numel; begin += range) {
      const size_t len = std::min<uint64_t>(range, numel - begin);
      ATTUNE_RETURN_IF_ERROR(load(b, begin, len));
      strategy.Observe(b.deltas);
    }
    ATTUNE_RETURN_IF_ERROR(strategy.EndObserve());
  }

  AggregateResult result;
  result.model = EncodeZeroModel(schema);
  std::span<float> out = MutableValues(result.model);
  result.server_state = LoadOrInitState(strategy, static_cast<int64_t>(numel), server_state);
  const int vectors = strategy.StateVectors();
  std::span<float> state = vectors ? MutableValues(result.server_state) : std::span<float>();
  const uint64_t ranges = (numel + range - 1) / range;
  // Worker w takes ranges w, w + workers, ...; each reports the first
  // failure of its own, and the one at the lowest coordinate is returned.
  std::vector<Status> failed(workers);
  std::vector<uint64_t> failed_at(workers, numel);
  auto work = [&](size_t w) {
    Buffers b = make_buffers();
    std::vector<std::span<float>> state_ranges(vectors);
    for (uint64_t r = w; r < ranges; r += workers) {
      const uint64_t begin = r * range;
      const size_t len = std::min<uint64_t>(range, numel - begin);
      if (Status s = load(b, begin, len); !s.ok()) {
        failed[w] = s;
        failed_at[w] = begin;
        return;
      }
      for (int k = 0; k < vectors; ++k) state_ranges[k] = state.subspan(k * numel + begin, len);
      std::span<float> o = out.subspan(begin, len);
      strategy.Aggregate(b.deltas, global.subspan(begin, len), state_ranges, o);
      for (size_t j = 0; j < len; ++j) {
        if (!std::isfinite(o[j])) {
          failed[w] = absl::InternalError(absl::StrCat("strategy ", strategy.name(),
                                                       " produced a non-finite value at index ",
                                                       begin + j, "; the global model is kept"));
          failed_at[w] = begin + j;
          return;
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(work, w);
  work(0);
  for (auto& t : threads) t.join();
  size_t first = 0;
  for (size_t w = 1; w < workers; ++w) {
    if (failed_at[w] < failed_at[first]) first = w;
  }
  ATTUNE_RETURN_IF_ERROR(failed[first]);
  result.describe_json = strategy.Describe();
  return result;
}

}  // namespace attune::coordinator
