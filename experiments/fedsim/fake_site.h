// Federation without training: the site engine (site/engine.h) with a
// synthetic learner, for tests of the coordinator (refusals, a 1 GiB round
// trip, faults) and for the coordinator benchmark. A fake site is a real
// site in everything but its data: it checks every task against its
// bundle's signed terms, keeps its release ledger, and runs secure
// aggregation and differential privacy as attune-worker does.
//
// Synthetic values are dyadic rationals (k / 1024 times a power of two), so
// sums of a few of them are exact in float and a test can predict the
// coordinator's result bit for bit. Also here: helpers for tests that drive
// the protocol by hand (Upload, SendChunks, TrivialAuditReport).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "attune/common/eval_stats.h"
#include "attune/common/status.h"
#include "attune/common/tensor_codec.h"
#include "attune/site/engine.h"
#include "attune/v1/federation.grpc.pb.h"

namespace attune::fedsim {

// Value `index` of synthetic stream `seed`: an integer in [-1000, 1000]
// divided by 1024.
inline float SyntheticValue(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL + index * 0xbf58476d1ce4e5b9ULL + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  // One of -1000..1000 (a multiply and shift, not a division: the fake
  // sites make 10^7 of these per update, and the benchmark times the engine).
  return static_cast<float>(static_cast<int64_t>(((z >> 32) * 2001) >> 32) - 1000) / 1024.0f;
}

using ValueFn = std::function<float(uint64_t index)>;

// A model of `schema` whose value i is value(i).
FlatModel SyntheticModel(const TensorSchema& schema, const ValueFn& value);

// Streams `model` as one SubmitUpdate; `meta` is completed with the
// payload's size and digest. Returns the call's status.
grpc::Status Upload(v1::Federation::Stub* stub, v1::UpdateMeta meta, const FlatModel& model,
                    v1::Receipt* receipt, std::chrono::seconds timeout = std::chrono::seconds(600));

// Sends exactly `chunks` as one SubmitUpdate (for tests that craft bad streams).
grpc::Status SendChunks(v1::Federation::Stub* stub, const std::vector<v1::Chunk>& chunks,
                        v1::Receipt* receipt);

// Valid evaluation sums for `split`: `patients` patients, half of them
// positive, each scored on the right side of the threshold.
EvalSums SyntheticEvalSums(const std::string& split, int histogram_bins, int64_t patients);
// The same as a report (for a site driven by hand).
v1::AuditReport TrivialAuditReport(const std::string& split, int histogram_bins,
                                   int64_t patients = 20);

struct FakeSiteOptions {
  std::string study_id;
  // The model: the initial one (from the terms' seed s) is SyntheticValue(s, i).
  TensorSchema init_schema;
  // TRAIN deltas: DeltaValues(options, the task's training seed).
  uint64_t seed = 2;
  float delta_scale = 1.0f / 64;
  int64_t num_examples = 100;  // patients in each split
  // Faults: the first `fail_trainings` local trainings fail (the site logs
  // the error and sends nothing for that task, as a worker whose training
  // crashed would).
  int fail_trainings = 0;
  // How long the site waits for a coordinator that went away (a restart).
  std::chrono::milliseconds reconnect_timeout{60000};
};

// The delta a fake site with `options` sends for training seed
// `train_seed` (the study's train.seed plus the round).
ValueFn DeltaValues(const FakeSiteOptions& options, uint64_t train_seed);
// The synthetic stream those deltas are drawn from (times delta_scale).
uint64_t DeltaSeed(const FakeSiteOptions& options, uint64_t train_seed);

// A site that trains nothing. Run() joins, subscribes and handles tasks
// until FINISH (OK), the coordinator stays away (Unavailable) or Stop().
class FakeSite {
 public:
  // `bundle_dir`: the site's folder from `attune provision` (its key, the
  // study CA and the signed terms; its release ledger goes in state/ there).
  static StatusOr<std::unique_ptr<FakeSite>> Open(const std::string& bundle_dir,
                                                  const std::string& coordinator,
                                                  FakeSiteOptions options);
  Status Run() { return engine_->Run(); }
  void Stop() { engine_->Stop(); }
  site::EngineStats stats() const { return engine_->stats(); }

 private:
  explicit FakeSite(std::unique_ptr<site::SiteEngine> engine) : engine_(std::move(engine)) {}
  std::unique_ptr<site::SiteEngine> engine_;
};

}  // namespace attune::fedsim
