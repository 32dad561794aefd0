#include "attune/worker/site_ranks.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "attune/parallel/communicator.h"
#include "spdlog/spdlog.h"
#include "torch_guard.h"
#if ATTUNE_HAVE_MPI
#include "attune/parallel/mpi_communicator.h"
#endif

namespace attune::worker {
namespace {

enum Command : int64_t { kLoad = 1, kTrain = 2, kStop = 3 };
// Ranks > 0 wait this long for rank 0's next command (rank 0 may wait on the
// coordinator for a long time; a rank 0 that dies ends the job at mpirun).
constexpr auto kIdle = std::chrono::hours(24 * 7);
constexpr auto kCollective = std::chrono::minutes(5);

// The numbers of a TRAIN command, before the model blob.
struct TrainHeader {
  double epochs, batch_size, learning_rate, proximal_mu;
  uint64_t seed;
};

}  // namespace

struct SiteRanks::Impl {
  std::unique_ptr<parallel::Communicator> comm;
  bool stopped = false;

  // Rank 0 sends {command, bytes}; every rank returns the command and the
  // payload (rank 0's own).
  std::pair<int64_t, std::string> Exchange(int64_t command, const std::string& payload,
                                           std::chrono::milliseconds timeout) {
    torch::Tensor header = torch::tensor({command, static_cast<int64_t>(payload.size())});
    comm->Broadcast(header, 0, "site command")->Wait(timeout);
    const int64_t cmd = header[0].item<int64_t>(), n = header[1].item<int64_t>();
    torch::Tensor bytes = torch::empty({n}, torch::kByte);
    if (comm->rank() == 0 && n > 0) std::memcpy(bytes.data_ptr(), payload.data(), n);
    if (n > 0) comm->Broadcast(bytes, 0, "site command payload")->Wait(kCollective);
    return {cmd, std::string(static_cast<const char*>(bytes.data_ptr()), n)};
  }

  // Every rank's outcome of a step: OK when all succeeded, else which failed.
  Status Agree(const Status& mine, const char* what) {
    torch::Tensor failed =
        torch::tensor({static_cast<int64_t>(mine.ok() ? -1 : comm->rank())}, torch::kLong);
    comm->AllReduce(failed, parallel::ReduceOp::kMax, what)->Wait(kCollective);
    const int64_t rank = failed.item<int64_t>();
    if (rank < 0) return absl::OkStatus();
    if (!mine.ok()) return mine;
    return absl::FailedPreconditionError(
        absl::StrCat(what, " failed on rank ", rank, " of ", comm->size(), " (see its log)"));
  }

  StatusOr<std::unique_ptr<Learner>> Load(const ModelConfig& model, LearnerOptions options) {
    options.ranks = comm.get();
    return MakeTorchLearner(model, options);
  }

  static std::string EncodeTrain(const FlatModel& global, const TrainConfig& hyper,
                                 const TrainOptions& o) {
    TrainHeader h{static_cast<double>(hyper.local_epochs), static_cast<double>(hyper.batch_size),
                  hyper.learning_rate, o.proximal_mu, hyper.seed};
    std::string out(reinterpret_cast<const char*>(&h), sizeof h);
    return out + EncodeModel(global);
  }
  static Status DecodeTrain(const std::string& payload, FlatModel* global, TrainConfig* hyper,
                            TrainOptions* o) {
    if (payload.size() < sizeof(TrainHeader)) return absl::DataLossError("short TRAIN command");
    TrainHeader h;
    std::memcpy(&h, payload.data(), sizeof h);
    hyper->local_epochs = static_cast<int>(h.epochs);
    hyper->batch_size = static_cast<int>(h.batch_size);
    hyper->learning_rate = h.learning_rate;
    hyper->seed = h.seed;
    o->proximal_mu = h.proximal_mu;
    ATTUNE_ASSIGN_OR_RETURN(*global, DecodeModel(std::string_view(payload).substr(sizeof h)));
    return absl::OkStatus();
  }
};

namespace {

// Rank 0's learner: a TRAIN goes to every rank first.
class RankZeroLearner final : public Learner {
 public:
  RankZeroLearner(SiteRanks::Impl* ranks, std::unique_ptr<Learner> inner)
      : ranks_(ranks), inner_(std::move(inner)) {}
  StatusOr<FlatModel> InitialModel(uint64_t seed) override { return inner_->InitialModel(seed); }
  StatusOr<TrainResult> Train(const FlatModel& global, const TrainConfig& hyper,
                              const TrainOptions& options) override {
    ATTUNE_RETURN_IF_ERROR(TorchGuard("sending the training task to the ranks", [&] {
      ranks_->Exchange(kTrain, SiteRanks::Impl::EncodeTrain(global, hyper, options), kCollective);
      return absl::OkStatus();
    }));
    return inner_->Train(global, hyper, options);
  }
  StatusOr<EvalSums> Evaluate(const FlatModel& model, const std::string& split,
                              const EvalOptions& options) override {
    return inner_->Evaluate(model, split, options);
  }
  int64_t NumExamples(const std::string& split) const override {
    return inner_->NumExamples(split);
  }
  std::vector<std::string> AuditFeatures() const override { return inner_->AuditFeatures(); }

 private:
  SiteRanks::Impl* ranks_;
  std::unique_ptr<Learner> inner_;
};

}  // namespace

SiteRanks::SiteRanks(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SiteRanks::~SiteRanks() {
  if (rank() == 0 && !impl_->stopped) Stop(false);
}

StatusOr<std::unique_ptr<SiteRanks>> SiteRanks::Create() {
  auto impl = std::make_unique<Impl>();
#if ATTUNE_HAVE_MPI
  if (parallel::LaunchedAsMpiRanks()) {
    try {
      impl->comm = parallel::MakeMpiCommunicator();
    } catch (const parallel::CollectiveError& e) {
      return absl::UnavailableError(e.what());
    }
  }
#endif
  if (!impl->comm) impl->comm = parallel::MakeLocalCommunicator();
  return std::unique_ptr<SiteRanks>(new SiteRanks(std::move(impl)));
}

int SiteRanks::rank() const { return impl_->comm->rank(); }
int SiteRanks::size() const { return impl_->comm->size(); }

site::LearnerFactory SiteRanks::Factory(LearnerOptions options) {
  return [this, options](const ModelConfig& model) -> StatusOr<std::unique_ptr<Learner>> {
    if (size() == 1) return MakeTorchLearner(model, options);
    StatusOr<std::unique_ptr<Learner>> learner = absl::UnknownError("not loaded");
    ATTUNE_RETURN_IF_ERROR(TorchGuard("loading the site data on every rank", [&] {
      impl_->Exchange(kLoad, model.ToJson(), kCollective);
      learner = impl_->Load(model, options);
      return impl_->Agree(learner.status(), "loading the site data");
    }));
    return std::unique_ptr<Learner>(new RankZeroLearner(impl_.get(), *std::move(learner)));
  };
}

Status SiteRanks::Serve(LearnerOptions options) {
  return TorchGuard("following rank 0", [&]() -> Status {
    std::unique_ptr<Learner> learner;
    for (;;) {
      auto [cmd, payload] = impl_->Exchange(0, "", kIdle);
      switch (cmd) {
        case kLoad: {
          StatusOr<ModelConfig> model = ModelConfig::FromJson(payload);
          StatusOr<std::unique_ptr<Learner>> loaded =
              model.ok() ? impl_->Load(*model, options) : model.status();
          if (!loaded.ok()) {
            spdlog::error("rank {}: {}", rank(), std::string(loaded.status().message()));
          }
          ATTUNE_RETURN_IF_ERROR(impl_->Agree(loaded.status(), "loading the site data"));
          learner = *std::move(loaded);
          spdlog::info("rank {}: site data loaded ({} train patients)", rank(),
                       learner->NumExamples("train"));
          break;
        }
        case kTrain: {
          if (!learner) return absl::FailedPreconditionError("TRAIN before the site data");
          FlatModel global;
          TrainConfig hyper;
          TrainOptions to;
          ATTUNE_RETURN_IF_ERROR(Impl::DecodeTrain(payload, &global, &hyper, &to));
          auto r = learner->Train(global, hyper, to);
          if (!r.ok()) return r.status();
          spdlog::info("rank {}: trained with rank 0 (mean loss of the last epoch {:.4f})", rank(),
                       r->train_loss);
          break;
        }
        case kStop:
          if (payload == "ok") return absl::OkStatus();
          return absl::AbortedError("rank 0 stopped with an error (see its log)");
        default:
          return absl::InternalError(absl::StrCat("unknown command ", cmd, " from rank 0"));
      }
    }
  });
}

void SiteRanks::Stop(bool ok) {
  if (impl_->stopped || size() == 1) {
    impl_->stopped = true;
    return;
  }
  impl_->stopped = true;
  try {
    impl_->Exchange(kStop, ok ? "ok" : "failed", kCollective);
  } catch (const parallel::CollectiveError& e) {
    spdlog::error("telling the other ranks to stop: {}", e.what());
  }
}

}  // namespace attune::worker
