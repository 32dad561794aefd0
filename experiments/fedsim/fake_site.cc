#include "fedsim/fake_site.h"

#include <cmath>

#include "absl/strings/str_cat.h"

#include "attune/common/config.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"
#include "attune/site/learner.h"

namespace attune::fedsim {
namespace {

std::chrono::system_clock::time_point After(std::chrono::seconds s) {
  return std::chrono::system_clock::now() + s;
}

// The learner of a site without data: a synthetic initial model and
// deltas, and evaluation sums that pass every check.
class SyntheticLearner : public site::Learner {
 public:
  explicit SyntheticLearner(FakeSiteOptions options) : options_(std::move(options)) {}

  StatusOr<FlatModel> InitialModel(uint64_t seed) override {
    return SyntheticModel(options_.init_schema, [seed](uint64_t i) { return SyntheticValue(seed, i); });
  }

  StatusOr<site::TrainResult> Train(const FlatModel& global, const TrainConfig& hyper,
                                    const site::TrainOptions& options) override {
    if (failed_ < options_.fail_trainings) {
      ++failed_;
      return absl::InternalError(absl::StrCat("synthetic training failure ", failed_, " of ",
                                              options_.fail_trainings, " (fail_trainings)"));
    }
    site::TrainResult r;
    // Filled in place (no call per value): the benchmark's rounds measure
    // the engine, and a fake site's "training" should cost next to nothing.
    r.delta.schema = global.schema;
    r.delta.values.resize(static_cast<size_t>(global.schema.numel()));
    const uint64_t seed = DeltaSeed(options_, hyper.seed);
    for (size_t i = 0; i < r.delta.values.size(); ++i) {
      r.delta.values[i] = SyntheticValue(seed, i) * options_.delta_scale;
    }
    r.num_examples = options_.num_examples;
    r.train_loss = 0.5;
    if (options.progress) options.progress({1, 1, 1, 1, r.train_loss});
    return r;
  }

  StatusOr<EvalSums> Evaluate(const FlatModel&, const std::string& split,
                              const site::EvalOptions& options) override {
    return SyntheticEvalSums(split, options.histogram_bins, options_.num_examples);
  }

  int64_t NumExamples(const std::string&) const override { return options_.num_examples; }

 private:
  FakeSiteOptions options_;
  int failed_ = 0;
};

}  // namespace

FlatModel SyntheticModel(const TensorSchema& schema, const ValueFn& value) {
  FlatModel m{schema, std::vector<float>(static_cast<size_t>(schema.numel()))};
  for (size_t i = 0; i < m.values.size(); ++i) m.values[i] = value(i);
  return m;
}

grpc::Status Upload(v1::Federation::Stub* stub, v1::UpdateMeta meta, const FlatModel& model,
                    v1::Receipt* receipt, std::chrono::seconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(After(timeout));
  auto writer = stub->SubmitUpdate(&ctx, receipt);
  // A refused stream ends early: Finish() says why.
  WriteModelChunks(model, std::move(meta), [&](const v1::Chunk& c) { return writer->Write(c); });
  writer->WritesDone();
  return writer->Finish();
}

grpc::Status SendChunks(v1::Federation::Stub* stub, const std::vector<v1::Chunk>& chunks,
                        v1::Receipt* receipt) {
  grpc::ClientContext ctx;
  ctx.set_deadline(After(std::chrono::seconds(60)));
  auto writer = stub->SubmitUpdate(&ctx, receipt);
  for (const auto& c : chunks) {
    if (!writer->Write(c)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

EvalSums SyntheticEvalSums(const std::string& split, int histogram_bins, int64_t patients) {
  EvalSums sums = EvalSums::Make(split, histogram_bins > 1 ? histogram_bins : 2, ModalityNames(), {});
  const std::vector<double> beta(sums.modalities.size(), 1.0 / std::max<size_t>(1, sums.modalities.size()));
  for (int64_t i = 0; i < patients; ++i) {
    PatientEval p;
    p.label = i % 2 == 1;
    p.probability = p.label ? 0.75 : 0.25;
    p.loss = -std::log(0.75);
    p.beta = beta;
    sums.AddPatient(p, {});
  }
  return sums;
}

v1::AuditReport TrivialAuditReport(const std::string& split, int histogram_bins,
                                   int64_t patients) {
  v1::AuditReport report;
  ToProto(SyntheticEvalSums(split, histogram_bins, patients), &report);
  return report;
}

uint64_t DeltaSeed(const FakeSiteOptions& o, uint64_t train_seed) {
  return o.seed * 1000003ULL + train_seed;
}

ValueFn DeltaValues(const FakeSiteOptions& o, uint64_t train_seed) {
  const uint64_t seed = DeltaSeed(o, train_seed);
  const float scale = o.delta_scale;
  return [seed, scale](uint64_t i) { return SyntheticValue(seed, i) * scale; };
}

StatusOr<std::unique_ptr<FakeSite>> FakeSite::Open(const std::string& bundle_dir,
                                                   const std::string& coordinator,
                                                   FakeSiteOptions options) {
  site::EngineOptions engine;
  engine.coordinator = coordinator;
  engine.study_id = options.study_id;
  engine.reconnect_timeout = options.reconnect_timeout;
  ATTUNE_ASSIGN_OR_RETURN(TlsBundle tls, site::LoadSiteBundle(bundle_dir, &engine));
  site::LearnerFactory learner =
      [options = std::move(options)](const ModelConfig&) -> StatusOr<std::unique_ptr<site::Learner>> {
    return std::make_unique<SyntheticLearner>(options);
  };
  return std::unique_ptr<FakeSite>(new FakeSite(std::make_unique<site::SiteEngine>(
      std::move(engine), MakeChannel(coordinator, tls), std::move(learner))));
}

}  // namespace attune::fedsim
