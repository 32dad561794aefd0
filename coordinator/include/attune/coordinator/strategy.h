// Aggregation strategies: how the coordinator turns a round's site updates
// into the next global model. Pure math on flat float buffers (no LibTorch).
//
// Notation, per coordinate: x = the global model, Δ_i = site i's update
// (w_i − x), n_i its number of training examples, and
//   Δ̄ = Σ n_i Δ_i / Σ n_i        (the example-weighted mean; McMahan et al.)
// All arithmetic within a coordinate is done in double; only the final value
// (and each server state value) is rounded to float.
//
//   fedavg, fedprox  out = x + Δ̄   (fedprox differs only in the worker's loss)
//   fedavgm          m ← momentum·m + Δ̄;  out = x + η·m   (Hsu et al. 2019)
//   fedadagrad       m ← β1·m + (1−β1)·Δ̄;  v ← v + Δ̄²
//   fedadam          m as above;  v ← β2·v + (1−β2)·Δ̄²
//   fedyogi          m as above;  v ← v − (1−β2)·Δ̄²·sign(v − Δ̄²)
//                    all three: out = x + η·m / (√v + τ), m₀ = 0, v₀ = τ²
//                    (Reddi et al. 2021, Algorithm 2, no bias correction)
//   median           out = x + the coordinate-wise median of the Δ_i
//                    (unweighted; an even count takes the mean of the middle two)
//   trimmed_mean     out = x + the unweighted mean of the Δ_i left after removing
//                    the k smallest and k largest, k = ⌊trim_fraction·n⌋
//                    (a 1e-9 slack absorbs binary rounding: 0.29·100 gives 29)
//   krum             score(i) = Σ of the n−f−2 smallest ‖Δ_i − Δ_j‖², j ≠ i,
//                    over the whole model; the m lowest scores are selected (ties
//                    → lower site index) and out = x + their unweighted mean
//                    (Blanchard et al. 2017; m > 1 is Multi-Krum). n ≥ 2f + 3.
// η = server_learning_rate, f = krum_byzantine, m = krum_select (config.h).
//
// The robust strategies ignore num_examples: weighting by a site's own claim
// would let one site buy influence.
//
// Driving a round (the round driver owns the model, the deltas and the server
// state vectors, and may split the model into coordinate ranges to bound
// memory):
//   Begin(n);
//   if (TwoPass()) { Observe(range) for every range; EndObserve(); }
//   Aggregate(range, ...) for every range;
//   Describe();
// Inputs are trusted: sizes are checked (a mismatch is a bug and aborts), but
// deltas must already be finite and num_examples >= 1 (UpdateIntake checks
// every update before the strategy sees it).
// Thread-compatible: one round at a time, calls serialised by the caller.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "attune/common/config.h"
#include "attune/common/status.h"
#include "attune/common/task.h"

namespace attune::coordinator {

// One coordinate range [begin, begin + delta.size()) of one site's update.
struct SiteDelta {
  std::string_view site;
  std::span<const float> delta;
  int64_t num_examples = 0;
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  virtual const char* name() const = 0;
  // The local training `site` is asked for: the study's train settings,
  // unless the strategy decides otherwise (fedprox adds its proximal term).
  // Privacy is a policy around this (the DP fields the driver adds to a
  // TRAIN task), not the strategy's.
  virtual TrainSettings TrainingFor(const TrainConfig& study, const std::string& site) const;
  // Per-coordinate server state vectors carried from round to round
  // (fedavgm: 1 = momentum; fedadam/fedyogi/fedadagrad: 2 = m, v), with their
  // initial value (v starts at tau^2 as in Reddi et al.; m at 0).
  virtual int StateVectors() const { return 0; }
  virtual float StateInit(int /*index*/) const { return 0.f; }
  // Krum needs a first pass over every coordinate before it can aggregate.
  virtual bool TwoPass() const { return false; }
  // Start of a round's aggregation: `num_sites` updates will be seen, always
  // in the same site order in every range. InvalidArgument when the strategy
  // cannot work with that many (e.g. krum needs n >= 2f + 3; trimmed mean
  // needs at least one left after trimming); FailedPrecondition("no updates")
  // for 0. Resets everything the previous round left behind.
  virtual Status Begin(int num_sites) = 0;
  // Pass 1 (TwoPass only): one coordinate range of every site, same order as
  // later. The ranges must cover every coordinate exactly once; they need not
  // match Aggregate's ranges. Given in ascending coordinate order, the result
  // is bit-identical however the model is split.
  virtual void Observe(std::span<const SiteDelta> /*range*/) {}
  // FailedPrecondition when Observe was never called this round.
  virtual Status EndObserve() { return absl::OkStatus(); }
  // Writes the new global model for one coordinate range: out = f(global, deltas, state).
  // state[k] is this range of state vector k, updated in place. Result must not
  // depend on how the coordinates are split into ranges. Called from several
  // threads at once on disjoint ranges (after Begin and any Observe pass):
  // it may read what Begin and EndObserve set, and must keep no other state.
  virtual void Aggregate(std::span<const SiteDelta> range, std::span<const float> global,
                         std::span<const std::span<float>> state, std::span<float> out) = 0;
  // A JSON object describing the round's choice, e.g. krum's selected sites
  // {"selected": ["site-2"], "scores": {"site-1": 4.5, ...}}; "{}" when there
  // is nothing to say.
  virtual std::string Describe() const { return "{}"; }
};

// InvalidArgument for an unknown name (config validation normally catches it).
StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& config);

}  // namespace attune::coordinator
