#include "attune/worker/central.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "attune/common/config.h"
#include "attune/parallel/communicator.h"
#include "spdlog/spdlog.h"
#if ATTUNE_HAVE_MPI
#include "attune/parallel/mpi_communicator.h"
#endif

namespace attune::worker {
namespace {

StatusOr<CentralResult> Train(const CentralOptions& options, parallel::Communicator* ranks) {
  ATTUNE_ASSIGN_OR_RETURN(StudyConfig study, LoadStudyConfig(options.study_path));
  if (options.epochs < 0) return absl::InvalidArgumentError("--epochs: must be >= 0");
  if (options.checkpoint_every < 0) {
    return absl::InvalidArgumentError("--checkpoint-every: must be >= 0");
  }
  if (options.out_dir.empty()) return absl::InvalidArgumentError("--out: required");
  const bool rank0 = ranks == nullptr || ranks->rank() == 0;
  const int world = ranks == nullptr ? 1 : ranks->size();
  std::error_code ec;
  std::filesystem::create_directories(options.out_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(options.out_dir, ": ", ec.message()));

  LearnerOptions lo;
  lo.site_dir = options.site_dir;
  lo.threads = options.threads;
  lo.ranks = ranks;
  ATTUNE_ASSIGN_OR_RETURN(std::unique_ptr<Learner> learner, MakeTorchLearner(study.model, lo));
  ATTUNE_ASSIGN_OR_RETURN(FlatModel initial, learner->InitialModel(study.train.seed));
  if (rank0) {
    spdlog::info("training on {} with {} rank{} ({} training patients each epoch)",
                 options.site_dir, world, world == 1 ? "" : "s",
                 learner->NumExamples("train"));
  }

  TrainConfig hyper = study.train;
  hyper.local_epochs =
      options.epochs > 0 ? options.epochs : study.rounds * study.train.local_epochs;
  TrainOptions to;
  if (rank0) to.progress = options.progress;
  if (options.checkpoint_every > 0) {
    to.checkpoint_path = (std::filesystem::path(options.out_dir) / "train.ckpt").string();
    to.checkpoint_every = options.checkpoint_every;
  }
  ATTUNE_ASSIGN_OR_RETURN(TrainResult trained, learner->Train(initial, hyper, to));

  CentralResult result;
  result.rank = ranks == nullptr ? 0 : ranks->rank();
  result.world = world;
  result.examples = trained.num_examples;
  result.train_loss = trained.train_loss;
  if (!rank0) return result;
  FlatModel model = std::move(initial);
  for (size_t i = 0; i < model.values.size(); ++i) model.values[i] += trained.delta.values[i];
  result.model_path = (std::filesystem::path(options.out_dir) / "model.atnm").string();
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(result.model_path, EncodeModel(model)));
  EvalOptions eo;
  eo.histogram_bins = study.audit.histogram_bins;
  ATTUNE_ASSIGN_OR_RETURN(EvalSums val, learner->Evaluate(model, "val", eo));
  ATTUNE_ASSIGN_OR_RETURN(EvalSums test, learner->Evaluate(model, "test", eo));
  result.val_metrics = val.MetricsJson();
  result.test_metrics = test.MetricsJson();
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(
      (std::filesystem::path(options.out_dir) / "metrics.json").string(),
      absl::StrCat("{\"schema\": \"attune.train/1\", \"ranks\": ", world,
                   ", \"epochs\": ", hyper.local_epochs, ", \"train_examples\": ",
                   result.examples, ", \"train_loss\": ", result.train_loss,
                   ",\n \"val\": ", result.val_metrics, ",\n \"test\": ", result.test_metrics,
                   "}\n")));
  return result;
}

}  // namespace

StatusOr<CentralResult> TrainCentral(const CentralOptions& options) {
  std::unique_ptr<parallel::Communicator> ranks;
#if ATTUNE_HAVE_MPI
  if (parallel::LaunchedAsMpiRanks()) {
    try {
      ranks = parallel::MakeMpiCommunicator();
    } catch (const parallel::CollectiveError& e) {
      return absl::UnavailableError(e.what());
    }
  }
#endif
  StatusOr<CentralResult> result = Train(options, ranks.get());
  if (!result.ok() && ranks != nullptr) {
    return Status(result.status().code(),
                  absl::StrCat("rank ", ranks->rank(), " of ", ranks->size(), ": ",
                               result.status().message()));
  }
  return result;
}

}  // namespace attune::worker
