#include "attune/site/engine.h"

#include <spdlog/spdlog.h>

#include <condition_variable>
#include <filesystem>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/crypto.h"
#include "attune/common/pki.h"
#include "attune/common/privacy.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/wire.h"

namespace attune::site {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kFetchModelMethod[] = "/attune.v1.Federation/FetchModel";
constexpr char kSubmitUpdateMethod[] = "/attune.v1.Federation/SubmitUpdate";

void SetDeadline(grpc::ClientContext* ctx, std::chrono::milliseconds timeout) {
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

// Worth reconnecting for: the coordinator may be restarting.
bool Retryable(const Status& s) {
  if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsAborted(s) ||
      absl::IsCancelled(s)) {
    const std::string m(s.message());
    return m.find("andshake") == std::string::npos && m.find("ertificate") == std::string::npos;
  }
  return false;
}

std::string Explain(const Status& s, const std::string& coordinator) {
  const std::string m(s.message());
  if (m.find("andshake") != std::string::npos || m.find("ertificate") != std::string::npos) {
    return absl::StrCat("TLS handshake with the coordinator at ", coordinator, " failed (", m,
                        "): check that --tls-dir holds this site's bundle from the study's "
                        "`attune provision` and that the address matches the coordinator's "
                        "certificate");
  }
  if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s)) {
    return absl::StrCat("cannot reach the coordinator at ", coordinator, " (", m,
                        "): is it running, and is the address right?");
  }
  if (absl::IsPermissionDenied(s) || absl::IsUnauthenticated(s)) {
    return absl::StrCat("the coordinator refused this site: ", m);
  }
  return absl::StrCat("coordinator at ", coordinator, ": ", m);
}

// What a release is computed on: the model's bytes (of a fetched model: the
// digest its bytes were verified against, FetchModel).
std::string ModelDigest(const FlatModel& model) { return ToHex(EncodedModelSha256(model)); }

// What an evaluation sums: whole split or audit, the columns, the bins and,
// under secure aggregation, the task's cell layout.
std::string LayoutDigest(const v1::RoundTask& task, const EvalOptions& options) {
  std::string text = absl::StrCat(task.audit() ? "audit" : "whole split", "|bins ",
                                  options.histogram_bins, "|",
                                  absl::StrJoin(options.audit_columns, ","), "|");
  if (task.has_eval_layout()) {
    std::string layout;
    task.eval_layout().SerializeToString(&layout);
    text += layout;
  }
  return ToHex(Sha256(text));
}

}  // namespace

StatusOr<TlsBundle> LoadSiteBundle(const std::string& tls_dir, EngineOptions* options) {
  ATTUNE_ASSIGN_OR_RETURN(TlsBundle tls, LoadTlsBundle(tls_dir));
  ATTUNE_ASSIGN_OR_RETURN(options->site_id, CertificateCommonName(tls.cert_pem));
  options->key_pem = tls.key_pem;
  options->ca_pem = tls.ca_pem;
  if (options->terms_path.empty()) {
    options->terms_path = (std::filesystem::path(tls_dir) / kTermsFile).string();
  }
  if (options->state_dir.empty()) {
    options->state_dir = (std::filesystem::path(tls_dir) / "state").string();
  }
  return tls;
}

SiteEngine::SiteEngine(EngineOptions options, std::shared_ptr<grpc::Channel> channel,
                                   LearnerFactory make_learner)
    : options_(std::move(options)),
      channel_(channel),
      coordinator_(v1::Federation::NewStub(channel)),
      make_learner_(std::move(make_learner)) {}

Status SiteEngine::Run() {
  if (!guard_) {
    StatusOr<SiteGuard> guard = SiteGuard::Load(options_.terms_path, options_.ca_pem,
                                                options_.site_id, options_.study_id);
    if (!guard.ok()) return guard.status();
    guard_.emplace(*std::move(guard));
    StatusOr<SiteReleases> releases = SiteReleases::Open(options_.state_dir);
    if (!releases.ok()) return releases.status();
    releases_.emplace(*std::move(releases));
    spdlog::info("study terms version {} (roster of {}, secure aggregation {}, privacy {})",
                 guard_->terms().version, guard_->terms().roster.size(),
                 guard_->terms().secure_aggregation ? "on" : "off",
                 guard_->terms().privacy_mode);
  }
  auto give_up = Clock::now() + options_.reconnect_timeout;
  auto backoff = std::chrono::milliseconds(250);
  while (true) {
    bool joined = false;
    Status s = Session(&joined);
    if (s.ok()) return s;
    if (joined) {  // we were connected: a fresh reconnection window
      give_up = Clock::now() + options_.reconnect_timeout;
      backoff = std::chrono::milliseconds(250);
    }
    if (stopped()) return absl::CancelledError("stopped");
    if (!Retryable(s) || Clock::now() + backoff >= give_up) {
      return Status(s.code(), Explain(s, options_.coordinator));
    }
    spdlog::warn("coordinator unavailable ({}); retrying in {} ms", std::string(s.message()),
                 backoff.count());
    // Until the channel connects or the backoff ends: watching the channel
    // drives its reconnection (with no call in flight gRPC polls it only
    // every few seconds). Cut short by Stop().
    const auto until = Clock::now() + backoff;
    while (Clock::now() < until && !stopped()) {
      const auto slice = std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(200));
      if (channel_->WaitForConnected(std::chrono::system_clock::now() + slice)) break;
    }
    if (stopped()) return absl::CancelledError("stopped");
    backoff = std::min(backoff * 2, std::chrono::milliseconds(4000));
  }
}

void SiteEngine::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  if (stream_ctx_) stream_ctx_->TryCancel();
}

bool SiteEngine::stopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopped_;
}

EngineStats SiteEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void SiteEngine::Count(int64_t sent, int64_t late, int64_t bytes, Clock::duration spent) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.updates_sent += sent;
  stats_.updates_late += late;
  stats_.bytes_up += bytes;
  stats_.update_seconds += std::chrono::duration<double>(spent).count();
}

Status SiteEngine::Join(v1::JoinReply* reply) {
  v1::JoinRequest req;
  req.set_study_id(options_.study_id);
  req.set_ranks(options_.ranks);
  if (learner_) {
    (*req.mutable_samples())["train"] = learner_->NumExamples("train");
    for (const auto& f : learner_->AuditFeatures()) req.add_audit_features(f);
  }
  grpc::ClientContext ctx;
  SetDeadline(&ctx, std::chrono::seconds(10));
  return FromGrpcStatus(coordinator_->Join(&ctx, req, reply));
}

Status SiteEngine::Session(bool* joined) {
  // Join; a worker without its data yet learns the model from the reply,
  // loads the data, then joins again so the coordinator records what the
  // site has (its training samples and audit features). Join is idempotent.
  v1::JoinReply reply;
  ATTUNE_RETURN_IF_ERROR(Join(&reply));
  *joined = true;
  site_id_ = reply.site_id();
  ATTUNE_RETURN_IF_ERROR(guard_->CheckJoin(reply));
  if (!learner_) {
    // The model the terms sign (CheckJoin: the coordinator's is the same).
    auto model = ModelConfig::FromJson(guard_->terms().model_config_json);
    if (!model.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the study terms' model configuration cannot be used by this worker: ",
          std::string(model.status().message())));
    }
    spdlog::info("joined study '{}' as {}; loading site data", reply.study_id(), site_id_);
    auto learner = make_learner_(*model);
    if (!learner.ok()) {
      // Bad data is not a network problem: never retried.
      return absl::FailedPreconditionError(
          absl::StrCat("site data: ", std::string(learner.status().message())));
    }
    learner_ = *std::move(learner);
    spdlog::info("site data loaded: {} train, {} val, {} test patients",
                 learner_->NumExamples("train"), learner_->NumExamples("val"),
                 learner_->NumExamples("test"));
    ATTUNE_RETURN_IF_ERROR(Join(&reply));
    ATTUNE_RETURN_IF_ERROR(guard_->CheckJoin(reply));
  }
  eval_options_.audit_columns.assign(reply.audit_columns().begin(), reply.audit_columns().end());
  eval_options_.histogram_bins = reply.histogram_bins() > 1 ? reply.histogram_bins() : 200;
  SetStage("idle", -1);
  // Stopped and joined when the session ends (jthread's destructor).
  std::jthread heartbeat([this, ms = reply.heartbeat_interval_ms()](std::stop_token stop) {
    HeartbeatLoop(stop, std::chrono::milliseconds(ms > 0 ? ms : 5000));
  });

  grpc::ClientContext ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return absl::CancelledError("stopped");
    stream_ctx_ = &ctx;
  }
  // Stop() cancels the stream only while it is open.
  struct Unregister {
    SiteEngine* engine;
    ~Unregister() {
      std::lock_guard<std::mutex> lock(engine->mu_);
      engine->stream_ctx_ = nullptr;
    }
  } unregister{this};
  v1::SiteHello hello;
  hello.set_study_id(options_.study_id);
  auto stream = coordinator_->Subscribe(&ctx, hello);
  v1::RoundTask task;
  while (stream->Read(&task)) {
    if (task.kind() == v1::RoundTask::FINISH) {
      spdlog::info("study finished");
      ctx.TryCancel();
      stream->Finish();
      return absl::OkStatus();
    }
    Status s = HandleTask(task);
    if (!s.ok()) {
      // The round goes on without us; the coordinator decides on quorum.
      spdlog::error("round {} {} (task {}): {}", task.round(),
                    v1::RoundTask::Kind_Name(task.kind()), task.task_id(),
                    std::string(s.message()));
    }
  }
  Status end = FromGrpcStatus(stream->Finish());
  if (end.ok()) return absl::UnavailableError("the coordinator closed the task stream");
  return end;
}

Status SiteEngine::HandleTask(const v1::RoundTask& task) {
  const auto start = Clock::now();
  ATTUNE_RETURN_IF_ERROR(guard_->CheckTask(task));
  switch (task.kind()) {
    case v1::RoundTask::INIT: {
      SetStage("initialising", task.round());
      // From the terms' seed, as every site checks (CheckInitialModel).
      ATTUNE_ASSIGN_OR_RETURN(FlatModel init, learner_->InitialModel(guard_->terms().seed));
      initial_digest_ = ModelDigest(init);
      own_schema_ = init.schema;
      spdlog::info("round 0: uploading the initial model ({} parameters)", init.values.size());
      return SubmitUpdate(task, std::make_shared<const FlatModel>(std::move(init)),
                          learner_->NumExamples("train"), std::nullopt, /*full_weights=*/true);
    }
    case v1::RoundTask::TRAIN: {
      ATTUNE_RETURN_IF_ERROR(StartSecure(task));
      SetStage("fetching", task.round());
      std::string digest;
      ATTUNE_ASSIGN_OR_RETURN(std::shared_ptr<const FlatModel> global,
                              FetchModel(task.model_version(), &digest));
      ATTUNE_RETURN_IF_ERROR(CheckInitialModel(task.model_version(), digest));
      // Recorded (and charged) before it leaves: in the clear, checked
      // before training too; a secure one at SECAGG_UNMASK, when its
      // survivors are known.
      Release release{"update", digest, {}, "", {site_id_}, task.round()};
      if (secure_) {
        release.survivors.clear();
        pending_ = release;
      } else {
        ATTUNE_RETURN_IF_ERROR(releases_->Check(release, Limits(release)));
      }
      SetStage("training", task.round());
      TrainConfig hyper;
      hyper.local_epochs = task.hyper().local_epochs();
      hyper.batch_size = task.hyper().batch_size();
      hyper.learning_rate = task.hyper().learning_rate();
      hyper.seed = task.hyper().seed() + static_cast<uint64_t>(task.round());
      spdlog::info("round {}: training {} epochs on {} patients", task.round(),
                   hyper.local_epochs, learner_->NumExamples("train"));
      TrainOptions train_options;
      train_options.proximal_mu = task.hyper().proximal_mu();
      train_options.progress = [this](const TrainProgress& p) { OnTrainProgress(p); };
      ATTUNE_ASSIGN_OR_RETURN(TrainResult r, learner_->Train(*global, hyper, train_options));
      spdlog::info("round {}: train loss {:.4f} in {:.1f} s", task.round(), r.train_loss,
                   std::chrono::duration<double>(Clock::now() - start).count());
      ATTUNE_RETURN_IF_ERROR(Privatize(task, digest, &r.delta));
      // The loss is not noised: a DP release leaves it out.
      const std::optional<double> loss =
          guard_->terms().privacy_enabled() ? std::nullopt : std::optional(r.train_loss);
      if (secure_) {
        // Held until the SECAGG_MASK step; only the masked sum leaves.
        const auto quantising = Clock::now();
        ATTUNE_ASSIGN_OR_RETURN(int64_t clipped, secure_->SetInput(r.delta.values, loss.value_or(0)));
        Count(0, 0, 0, Clock::now() - quantising);
        if (clipped > 0) {
          spdlog::warn("round {}: {} update values were clipped to secagg.value_clip = {}",
                       task.round(), clipped, task.secagg().value_clip());
        }
        SetStage("idle", task.round());
        return absl::OkStatus();
      }
      if (guard_->terms().privacy_enabled()) {
        ATTUNE_RETURN_IF_ERROR(releases_->Record(release, Limits(release)));
        LogPrivacySpent(task.round());
      }
      SetStage("uploading", task.round());
      Status s = SubmitUpdate(task, std::make_shared<const FlatModel>(std::move(r.delta)),
                              r.num_examples, loss, /*full_weights=*/false);
      SetStage("idle", task.round());
      return s;
    }
    case v1::RoundTask::SECAGG_SHARE:
    case v1::RoundTask::SECAGG_MASK:
    case v1::RoundTask::SECAGG_CONFIRM:
    case v1::RoundTask::SECAGG_UNMASK:
      return HandleSecureStep(task);
    case v1::RoundTask::EVALUATE: {
      ATTUNE_RETURN_IF_ERROR(StartSecure(task));
      SetStage("evaluating", task.round());
      std::string digest;
      ATTUNE_ASSIGN_OR_RETURN(std::shared_ptr<const FlatModel> model,
                              FetchModel(task.model_version(), &digest));
      ATTUNE_RETURN_IF_ERROR(CheckInitialModel(task.model_version(), digest));
      EvalOptions options = eval_options_;
      if (!task.audit()) options.audit_columns.clear();  // the whole split only
      const EvalNoise noise = AuditNoise(task);
      options.value_clip = noise.value_clip;
      const std::vector<std::string> split_names(task.splits().begin(), task.splits().end());
      if (std::set<std::string>(split_names.begin(), split_names.end()).size() !=
          split_names.size()) {
        return absl::InvalidArgumentError("an evaluation that names a split twice");
      }
      Release release{"evaluation", digest, split_names,
                      LayoutDigest(task, options), {site_id_}, task.round()};
      // The noise of this release: the same if it is asked again (a repeat
      // is no new release), other for any other.
      ATTUNE_ASSIGN_OR_RETURN(
          crypto::SecretBytes noise_seed,
          NoiseSeed("attune-audit-noise-v1",
                    absl::StrCat("model ", release.model_digest, "|splits ",
                                 absl::StrJoin(split_names, ","), "|layout ",
                                 release.layout_digest)));
      if (!secure_) {
        // In the clear the sums are this site's alone.
        ATTUNE_RETURN_IF_ERROR(releases_->Record(release, Limits(release)));
        LogPrivacySpent(task.round());
      } else {
        release.survivors.clear();  // known at SECAGG_UNMASK
        pending_ = std::move(release);
      }
      std::vector<EvalSums> splits;
      const EvalLayout layout = LayoutFromProto(task);
      for (const auto& split : task.splits()) {
        ATTUNE_ASSIGN_OR_RETURN(EvalSums sums, learner_->Evaluate(*model, split, options));
        // The columns this site's policy leaves out leave it held back (in a
        // secure layout, every cell of them).
        HoldBackColumns(&sums, options_.policy.exclude_audit_columns, layout.cells);
        splits.push_back(std::move(sums));
      }
      if (secure_) {
        // The sums of every split as one input of words; only their sum
        // over the sites leaves, after the SECAGG steps.
        ATTUNE_ASSIGN_OR_RETURN(
            std::vector<uint32_t> words,
            EncodeEvalWords(splits, layout, task.secagg().sites_size(), MinCell(), noise,
                            noise_seed));
        ATTUNE_RETURN_IF_ERROR(secure_->SetWords(std::move(words)));
        SetStage("idle", task.round());
        return absl::OkStatus();
      }
      // Before anything leaves the site: the small cells held back, then
      // (when the terms say so) the noise on what is sent.
      for (EvalSums& sums : splits) SuppressSmallCells(&sums, MinCell());
      ATTUNE_RETURN_IF_ERROR(AddEvalNoise(noise_seed, noise, splits));
      for (EvalSums& sums : splits) {
        v1::AuditReport report;
        ToProto(sums, &report);
        report.set_study_id(options_.study_id);
        report.set_round(task.round());
        report.set_task_id(task.task_id());
        if (report.ByteSizeLong() > static_cast<size_t>(kMaxMessageBytes)) {
          return absl::ResourceExhaustedError(absl::StrCat(
              "the ", sums.split, " split's evaluation sums are ", report.ByteSizeLong(),
              " bytes, over the ", kMaxMessageBytes,
              "-byte message limit: audit fewer columns (audit.columns) or features"));
        }
        grpc::ClientContext ctx;
        SetDeadline(&ctx, std::chrono::seconds(60));
        v1::Receipt receipt;
        ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(coordinator_->SubmitAudit(&ctx, report, &receipt)));
      }
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown task kind ", task.kind()));
  }
}

int SiteEngine::MinCell() const {
  return std::max(guard_->terms().min_cell, options_.policy.min_cell);
}

ReleaseLimits SiteEngine::Limits(const Release& r) const {
  const StudyTerms& t = guard_->terms();
  ReleaseLimits limits;
  limits.max_releases = t.max_releases;
  if (t.privacy_enabled() && r.purpose == "update") limits.noise_multiplier = t.noise_multiplier;
  if (t.audit_noised() && r.purpose == "evaluation") {
    limits.noise_multiplier = t.audit_noise_multiplier;
  }
  limits.epsilon =
      options_.policy.epsilon > 0 ? std::min(options_.policy.epsilon, t.epsilon) : t.epsilon;
  limits.delta = t.delta;
  return limits;
}

void SiteEngine::LogPrivacySpent(int64_t round) const {
  if (releases_->dp_releases() == 0) return;
  const Release none;
  spdlog::info("round {}: this site's privacy loss is epsilon {:.4g} of {:.4g} after {} private "
               "release(s)",
               round, releases_->epsilon(), Limits(none).epsilon, releases_->dp_releases());
}

Status SiteEngine::KnowOwnModel() {
  if (own_schema_) return absl::OkStatus();
  ATTUNE_ASSIGN_OR_RETURN(FlatModel mine, learner_->InitialModel(guard_->terms().seed));
  initial_digest_ = ModelDigest(mine);
  own_schema_ = std::move(mine.schema);
  return absl::OkStatus();
}

Status SiteEngine::CheckInitialModel(int64_t version, const std::string& digest) {
  if (version != 0) return absl::OkStatus();
  ATTUNE_RETURN_IF_ERROR(KnowOwnModel());
  if (digest != initial_digest_) {
    return absl::PermissionDeniedError(absl::StrCat(
        "refused by the study terms (seed): the coordinator's initial model (version 0) is not "
        "the one the study's model and seed ", guard_->terms().seed,
        " give; this site trains and evaluates only models that start from it"));
  }
  return absl::OkStatus();
}

Status SiteEngine::StartSecure(const v1::RoundTask& task) {
  secure_.reset();
  pending_.reset();
  if (!task.has_secagg()) return absl::OkStatus();
  // Advertise first: the other steps wait on every site's keys, and
  // training (or evaluating) is the long part.
  const auto start = Clock::now();
  ATTUNE_ASSIGN_OR_RETURN(secure_,
                          secagg::SecureSite::Start(task, options_.key_pem, options_.ca_pem));
  v1::SecAggMessage msg;
  *msg.mutable_advertisement() = secure_->Advertisement();
  Count(0, 0, 0, Clock::now() - start);
  return SendSecAgg(task, std::move(msg));
}

Status SiteEngine::Privatize(const v1::RoundTask& task, const std::string& model_digest,
                                   FlatModel* delta) {
  const v1::DpSetup& dp = task.dp();
  if (dp.clip_norm() <= 0) return absl::OkStatus();
  const double norm = privacy::ClipToNorm(delta->values, dp.clip_norm());
  if (dp.noise_stddev() > 0) {
    // Seeded by this site's private key, the study, the round and the model
    // trained from: secret to everyone else, the same if the same round is
    // run again on the same model (the same release), and fresh for any
    // other model, so that two releases never share noise that their
    // difference would cancel (a coordinator that replays a round number
    // with another model after a restart learns nothing from it).
    ATTUNE_ASSIGN_OR_RETURN(
        crypto::SecretBytes seed,
        NoiseSeed("attune-dp-noise-v2", absl::StrCat("round ", task.round(), "|model ",
                                                      model_digest)));
    ATTUNE_RETURN_IF_ERROR(privacy::AddGaussianNoise(seed, dp.noise_stddev(), delta->values));
  }
  spdlog::info("round {}: update norm {:.4g} clipped to {:.4g}, noise stddev {:.4g}",
               task.round(), norm, dp.clip_norm(), dp.noise_stddev());
  return absl::OkStatus();
}

StatusOr<crypto::SecretBytes> SiteEngine::NoiseSeed(std::string_view context,
                                                         const std::string& what) const {
  const std::string label(context);
  return crypto::HkdfSha256(crypto::View(options_.key_pem), crypto::View(label),
                            crypto::View(absl::StrCat(options_.study_id, "|", what)), 32);
}

EvalNoise SiteEngine::AuditNoise(const v1::RoundTask& task) const {
  const StudyTerms& t = guard_->terms();
  EvalNoise noise;
  if (!t.audit_noised()) return noise;
  noise.multiplier = t.audit_noise_multiplier;
  noise.value_clip = t.audit_value_clip;
  // Under secure aggregation each site adds its share: any `threshold`
  // survivors together add all of it (the threshold is checked by the guard).
  noise.shares = task.has_secagg() ? std::max(task.secagg().threshold(), 1) : 1;
  return noise;
}

Status SiteEngine::HandleSecureStep(const v1::RoundTask& task) {
  if (!secure_ || secure_->task_id() != task.task_id()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a secure aggregation step for task '", task.task_id(), "', which this site is not in"));
  }
  v1::SecAggMessage msg;
  // The cryptography of each step counts as time spent on the update.
  const auto start = Clock::now();
  auto spent = [&] { Count(0, 0, 0, Clock::now() - start); };
  switch (task.kind()) {
    case v1::RoundTask::SECAGG_SHARE: {
      ATTUNE_ASSIGN_OR_RETURN(*msg.mutable_shares(), secure_->ShareKeys(task));
      spent();
      return SendSecAgg(task, std::move(msg));
    }
    case v1::RoundTask::SECAGG_MASK: {
      ATTUNE_ASSIGN_OR_RETURN(std::string payload, secure_->MaskedPayload(task));
      spent();
      SetStage("uploading", task.round());
      v1::UpdateMeta meta;
      meta.set_masked(true);
      meta.set_num_examples(learner_->NumExamples("train"));
      Status s = SubmitPayload(task, std::make_shared<const std::string>(std::move(payload)),
                               std::move(meta));
      SetStage("idle", task.round());
      return s;
    }
    case v1::RoundTask::SECAGG_CONFIRM: {
      ATTUNE_ASSIGN_OR_RETURN(*msg.mutable_confirm(), secure_->Confirm(task));
      spent();
      return SendSecAgg(task, std::move(msg));
    }
    default: {
      std::vector<std::string> survivors;
      for (int v : task.survivors()) {
        if (v >= 0 && v < static_cast<int>(secure_->sites().size())) {
          survivors.push_back(secure_->sites()[v]);
        }
      }
      std::sort(survivors.begin(), survivors.end());
      if (!pending_ || pending_->purpose != secure_->purpose()) {
        return absl::FailedPreconditionError("an unmask step before this site had an input");
      }
      // Recorded before anything is revealed (site_releases.h).
      pending_->survivors = survivors;
      pending_->round = task.round();
      ATTUNE_RETURN_IF_ERROR(releases_->Record(*pending_, Limits(*pending_)));
      LogPrivacySpent(task.round());
      ATTUNE_ASSIGN_OR_RETURN(*msg.mutable_unmask(), secure_->Unmask(task));
      spent();
      pending_.reset();
      Status s = SendSecAgg(task, std::move(msg));
      secure_.reset();
      return s;
    }
  }
}

Status SiteEngine::SendSecAgg(const v1::RoundTask& task, v1::SecAggMessage msg) {
  msg.set_study_id(options_.study_id);
  msg.set_round(task.round());
  msg.set_task_id(task.task_id());
  Count(0, 0, static_cast<int64_t>(msg.ByteSizeLong()), Clock::duration::zero());
  grpc::ClientContext ctx;
  SetDeadline(&ctx, std::chrono::seconds(60));
  v1::Receipt receipt;
  return FromGrpcStatus(coordinator_->SecAgg(&ctx, msg, &receipt));
}

void SiteEngine::SetStage(const char* stage, int64_t round) {
  std::lock_guard<std::mutex> lock(progress_mu_);
  progress_.Clear();
  progress_.set_stage(stage);
  progress_.set_round(round);
}

void SiteEngine::OnTrainProgress(const TrainProgress& p) {
  std::lock_guard<std::mutex> lock(progress_mu_);
  progress_.set_epoch(p.epoch);
  progress_.set_epochs(p.epochs);
  progress_.set_batch(p.batch);
  progress_.set_batches(p.batches);
  const auto now = Clock::now();
  const bool epoch_done = p.batch == p.batches;
  if (epoch_done || now - last_progress_log_ >= std::chrono::seconds(10)) {
    spdlog::info("round {}: epoch {}/{}, batch {}/{}, loss {:.4f}{}", progress_.round(), p.epoch,
                 p.epochs, p.batch, p.batches, p.loss, epoch_done ? " (epoch done)" : "");
    last_progress_log_ = now;
  }
}

void SiteEngine::HeartbeatLoop(std::stop_token stop, std::chrono::milliseconds interval) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock<std::mutex> lock(mu);
  // Waits for the interval or for the session to end, whichever is first.
  while (true) {
    cv.wait_for(lock, stop, interval, [] { return false; });
    if (stop.stop_requested()) return;
    v1::HeartbeatRequest req;
    {
      std::lock_guard<std::mutex> p(progress_mu_);
      req = progress_;
    }
    req.set_study_id(options_.study_id);
    grpc::ClientContext ctx;
    SetDeadline(&ctx, std::chrono::seconds(5));
    v1::HeartbeatReply reply;
    grpc::Status s = coordinator_->Heartbeat(&ctx, req, &reply);
    if (!s.ok()) spdlog::debug("heartbeat: {}", s.error_message());
  }
}

StatusOr<std::shared_ptr<const FlatModel>> SiteEngine::FetchModel(int64_t version,
                                                                   std::string* digest) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.rpc_timeout);
  v1::ModelRef ref;
  ref.set_study_id(options_.study_id);
  ref.set_version(version);
  if (held_) ref.set_held_sha256(held_sha256_);
  // Read as raw messages: each chunk's data is verified and parsed where
  // it lies in gRPC's buffers (ReadChunkPieces), not copied into a message.
  const grpc::internal::RpcMethod method(kFetchModelMethod,
                                         grpc::internal::RpcMethod::SERVER_STREAMING, channel_);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel_.get(), method, &ctx,
                                                                    ref));
  // The model must have the architecture the terms' model section gives
  // this site's learner: checked as soon as its header arrives, before
  // anything is kept of it.
  ATTUNE_RETURN_IF_ERROR(KnowOwnModel());
  grpc::ByteBuffer message;
  std::vector<grpc::Slice> slices;  // the chunk read last lies in these
  ChunkPieces chunk;
  auto read = [&]() -> StatusOr<bool> {
    if (!reader->Read(&message)) return false;
    Status r = ReadChunkBuffer(message, WireBounds{}, &slices, &chunk);
    if (!r.ok()) return absl::DataLossError(absl::StrCat("a model chunk: ", r.message()));
    return true;
  };
  std::optional<ChunkVerifier> verifier;
  ModelStreamParser parser;
  FlatModel model;
  uint64_t announced = 0;
  std::string announced_sha256;  // verified by verifier->Finish()
  bool schema_checked = false;
  bool held = false;  // the coordinator said this site holds it (checked)
  auto check_schema = [&]() -> Status {
    if (schema_checked || parser.schema() == nullptr) return absl::OkStatus();
    schema_checked = true;
    if (*parser.schema() == *own_schema_) return absl::OkStatus();
    return absl::PermissionDeniedError(absl::StrCat(
        "refused by the study terms (model): the coordinator's model version ", version, " has ",
        parser.schema()->tensors.size(), " tensors of ", parser.schema()->numel(),
        " values, not the architecture of the terms' model section (",
        own_schema_->tensors.size(), " tensors of ", own_schema_->numel(), " values)"));
  };
  Status s;
  while (s.ok()) {
    StatusOr<bool> more = read();
    if (!more.ok() || !*more) {
      s = more.status();
      break;
    }
    if (!verifier) {
      if (!chunk.rest.has_meta()) {
        s = absl::DataLossError("model stream without metadata");
        break;
      }
      announced = chunk.rest.meta().total_bytes();
      announced_sha256 = chunk.rest.meta().total_sha256();
      if (chunk.rest.meta().held()) {
        s = HeldModelReply(chunk, version);
        if (s.ok() && reader->Read(&message)) s = absl::DataLossError("chunks after a held model");
        held = s.ok();
        break;
      }
      verifier.emplace(announced, announced_sha256, uint64_t{16} << 30);
      // A new model: the held one is let go, its storage filled again.
      if (held_ && held_.use_count() == 1) model.values = std::move(held_->values);
      model.values.clear();
      held_.reset();
      held_sha256_.clear();
    }
    s = verifier->Add(chunk.rest.seq(), chunk.data, chunk.rest.sha256());
    for (std::string_view piece : chunk.data) {
      if (!s.ok()) break;
      s = parser.Feed(piece, [&](uint64_t, std::span<const float> v) {
        ATTUNE_RETURN_IF_ERROR(check_schema());
        // The values of a model of this site's shape: reserved once.
        if (model.values.empty()) model.values.reserve(static_cast<size_t>(own_schema_->numel()));
        model.values.insert(model.values.end(), v.begin(), v.end());
        return absl::OkStatus();
      });
      if (s.ok()) s = check_schema();
    }
  }
  if (!s.ok()) {
    ctx.TryCancel();
    reader->Finish();
    return s;
  }
  ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (held) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.models_held;
    }
    *digest = ToHex(held_sha256_);
    return std::shared_ptr<const FlatModel>(held_);
  }
  if (!verifier) return absl::DataLossError("empty model stream");
  ATTUNE_RETURN_IF_ERROR(verifier->Finish());
  ATTUNE_RETURN_IF_ERROR(parser.Finish());
  ATTUNE_RETURN_IF_ERROR(check_schema());
  model.schema = *parser.schema();
  *digest = ToHex(announced_sha256);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stats_.bytes_down += static_cast<int64_t>(announced);
  }
  held_ = std::make_shared<FlatModel>(std::move(model));
  held_sha256_ = std::move(announced_sha256);
  return std::shared_ptr<const FlatModel>(held_);
}

Status SiteEngine::HeldModelReply(const ChunkPieces& chunk, int64_t version) const {
  // Only what this site said it holds, and nothing but the metadata.
  if (!held_ || chunk.rest.meta().total_sha256() != held_sha256_) {
    return absl::DataLossError(absl::StrCat(
        "the coordinator says this site holds model version ", version,
        " already, but the model it holds has another digest"));
  }
  if (chunk.data_size() != 0 || !chunk.rest.last() || chunk.rest.seq() != 0) {
    return absl::DataLossError("a held model's reply with data or more chunks");
  }
  return absl::OkStatus();
}

Status SiteEngine::SubmitUpdate(const v1::RoundTask& task, std::shared_ptr<const FlatModel> model,
                                int64_t num_examples, std::optional<double> train_loss,
                                bool full_weights) {
  v1::UpdateMeta meta;
  meta.set_num_examples(num_examples);
  meta.set_full_weights(full_weights);
  if (train_loss) (*meta.mutable_metrics())["train_loss"] = *train_loss;
  const FlatModel& m = *model;
  return SubmitChunks(task, std::move(meta), EncodedModelSize(m), std::move(model),
                      [&](v1::UpdateMeta um, const FrameWriter& write) {
                        return WriteModelFrames(m, std::move(um), write);
                      });
}

Status SiteEngine::SubmitPayload(const v1::RoundTask& task,
                                 std::shared_ptr<const std::string> payload, v1::UpdateMeta meta) {
  const std::string& p = *payload;
  return SubmitChunks(task, std::move(meta), p.size(), std::move(payload),
                      [&](v1::UpdateMeta um, const FrameWriter& write) {
                        return WriteChunkFrames(p, std::move(um), {}, write);
                      });
}

Status SiteEngine::SubmitChunks(const v1::RoundTask& task, v1::UpdateMeta meta, uint64_t bytes,
                                std::shared_ptr<const void> owner,
                                const std::function<bool(v1::UpdateMeta, const FrameWriter&)>& chunks) {
  // A plain update is encoded and digested as it is sent: its whole upload
  // counts as time spent on it; a masked one was made beforehand. The
  // initial model is no update: counted as sent only.
  const bool masked = meta.masked(), initial = meta.full_weights();
  const auto start = Clock::now();
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.rpc_timeout);
  // Written as raw messages: each chunk's data goes to gRPC as a slice of
  // the payload (ChunkFrameBuffer), not copied into a message and then
  // serialised.
  const grpc::internal::RpcMethod method(kSubmitUpdateMethod,
                                         grpc::internal::RpcMethod::CLIENT_STREAMING, channel_);
  grpc::ByteBuffer receipt;
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel_.get(), method, &ctx,
                                                                    &receipt));
  meta.set_study_id(options_.study_id);
  meta.set_round(task.round());
  meta.set_task_id(task.task_id());
  // A false return means the server ended the call: Finish() says why.
  chunks(std::move(meta),
         [&](const ChunkFrame& f) { return writer->Write(ChunkFrameBuffer(f, owner)); });
  writer->WritesDone();
  const Status s = FromGrpcStatus(writer->Finish());
  // Late (FAILED_PRECONDITION): a straggler; the round went on without us.
  Count(s.ok() ? 1 : 0, absl::IsFailedPrecondition(s) ? 1 : 0,
        initial ? 0 : static_cast<int64_t>(bytes),
        masked || initial ? Clock::duration::zero() : Clock::now() - start);
  return s;
}

}  // namespace attune::site
