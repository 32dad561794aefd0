// The site's learner: what the site engine (engine.h) asks of local
// training and evaluation, without LibTorch in the interface, so that the
// engine is torch-free and serves both attune-worker (worker/'s LibTorch
// learner) and the fake sites of experiments/fedsim (a synthetic one).
//
// Thread-compatible: the engine calls one method at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/status.h"
#include "attune/common/tensor_codec.h"

namespace attune::site {

struct TrainResult {
  FlatModel delta;          // w_local - w_global, same schema as the global model
  int64_t num_examples = 0; // training patients (the FedAvg weight)
  double train_loss = 0;    // mean loss of the last local epoch
};

// Called after every batch of local training (from the training thread).
struct TrainProgress {
  int epoch = 0;        // 1-based
  int epochs = 0;
  int64_t batch = 0;    // 1-based within the epoch
  int64_t batches = 0;
  double loss = 0;      // mean loss of the epoch so far
};
using ProgressFn = std::function<void(const TrainProgress&)>;

struct TrainOptions {
  // FedProx (Li et al. 2020): adds μ/2 · ||w − w_global||² to the loss, so
  // local training cannot drift far from the global model. 0 = off.
  double proximal_mu = 0;
  ProgressFn progress;  // may be empty
  // Checkpoints of the training (model, optimizer, data position) every
  // `checkpoint_every` steps and at the end; training resumes from the file
  // when it exists. "" = none.
  std::string checkpoint_path;
  int64_t checkpoint_every = 0;
};

struct EvalOptions {
  std::vector<std::string> audit_columns;  // subgroup columns to report
  int histogram_bins = 200;
  // > 0: a noised release (the terms' audit.value_clip): what each patient
  // adds is bounded (EvalSums::AddPatient).
  double value_clip = 0;
};

class Learner {
 public:
  virtual ~Learner() = default;
  // The initial global model, identical for a given config and seed.
  virtual StatusOr<FlatModel> InitialModel(uint64_t seed) = 0;
  virtual StatusOr<TrainResult> Train(const FlatModel& global, const TrainConfig& hyper,
                                      const TrainOptions& options) = 0;
  // Sums only (see eval_stats.h) for `split` ("val" or "test").
  virtual StatusOr<EvalSums> Evaluate(const FlatModel& model, const std::string& split,
                                      const EvalOptions& options) = 0;
  virtual int64_t NumExamples(const std::string& split) const = 0;
  // Names of the input features Evaluate's sums have per-feature entries for.
  virtual std::vector<std::string> AuditFeatures() const { return {}; }
};

}  // namespace attune::site
