#include "attune/coordinator/service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/text.h"
#include "attune/common/wire.h"

namespace attune::coordinator {
namespace {

v1::RoundTask::Kind ToProtoKind(Task::Kind k) {
  switch (k) {
    case Task::Kind::kInit: return v1::RoundTask::INIT;
    case Task::Kind::kTrain: return v1::RoundTask::TRAIN;
    case Task::Kind::kEvaluate: return v1::RoundTask::EVALUATE;
    case Task::Kind::kFinish: return v1::RoundTask::FINISH;
    case Task::Kind::kSecAggShare: return v1::RoundTask::SECAGG_SHARE;
    case Task::Kind::kSecAggMask: return v1::RoundTask::SECAGG_MASK;
    case Task::Kind::kSecAggConfirm: return v1::RoundTask::SECAGG_CONFIRM;
    case Task::Kind::kSecAggUnmask: return v1::RoundTask::SECAGG_UNMASK;
  }
  return v1::RoundTask::KIND_UNSPECIFIED;
}

std::string Progress(const v1::HeartbeatRequest& r) {
  if (r.stage() == "training" && r.epochs() > 0) {
    return absl::StrFormat("training round %d: epoch %d/%d, batch %d/%d", r.round(), r.epoch(),
                           r.epochs(), r.batch(), r.batches());
  }
  if (r.stage().empty() || r.stage() == "idle") return "idle";
  return absl::StrFormat("%s round %d", SafeText(r.stage(), 32), r.round());
}

}  // namespace

grpc::Status FederationService::Refuse(grpc::ServerContext* ctx, const std::string& who,
                                       const char* rpc, const attune::Status& s) {
  std::string name = who;
  if (name.empty()) {  // before authorisation: the certificate's CN, else the address
    auto cn = PeerCommonName(*ctx);
    name = cn.ok() ? *cn : absl::StrCat("peer ", ctx->peer());
  }
  driver_->RecordRefusal(name, rpc, s);
  return ToGrpcStatus(s);
}

// Gives the site's turn and the slot back when the call ends.
class FederationService::Transfer {
 public:
  Transfer(FederationService* service, std::string site)
      : service_(service), site_(std::move(site)) {}
  ~Transfer() {
    if (slot_) service_->transfers_.release();
    std::lock_guard<std::mutex> lock(service_->transfer_mu_);
    service_->transferring_.erase(site_);
  }
  bool slot_ = false;

 private:
  FederationService* service_;
  std::string site_;
};

StatusOr<std::unique_ptr<FederationService::Transfer>> FederationService::BeginTransfer(
    grpc::ServerContext* ctx, const std::string& site) {
  {
    std::lock_guard<std::mutex> lock(transfer_mu_);
    if (!transferring_.insert(site).second) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "site ", site, " already has a model or update transfer open; one at a time"));
    }
  }
  auto t = std::make_unique<Transfer>(this, site);
  while (!transfers_.try_acquire_for(std::chrono::milliseconds(200))) {
    if (ctx->IsCancelled()) return absl::CancelledError("the caller went away");
  }
  t->slot_ = true;
  return t;
}

StatusOr<std::string> FederationService::Authorize(grpc::ServerContext* ctx,
                                                   const std::string& study_id,
                                                   bool operator_ok) {
  ATTUNE_ASSIGN_OR_RETURN(std::string cn, PeerCommonName(*ctx));
  return driver_->Authorize(cn, study_id, operator_ok);
}

// Declares `site`, the authorised caller, or returns the refusal.
#define ATTUNE_AUTHORIZE_OR_REFUSE(site, rpc, study_id, ...) \
  auto site = Authorize(ctx, study_id, ##__VA_ARGS__);       \
  if (!site.ok()) return Refuse(ctx, "", rpc, site.status())

grpc::Status FederationService::Join(grpc::ServerContext* ctx, const v1::JoinRequest* req,
                                     v1::JoinReply* reply) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Join", req->study_id());
  auto samples = req->samples().find("train");
  attune::Status s = driver_->Join(*site, samples == req->samples().end() ? 0 : samples->second,
                                   std::max(1, req->ranks()),
                                   {req->audit_features().begin(), req->audit_features().end()});
  if (!s.ok()) return Refuse(ctx, *site, "Join", s);
  const StudyConfig& study = driver_->study();
  reply->set_site_id(*site);
  reply->set_study_id(study.study_id);
  reply->set_total_rounds(study.rounds);
  reply->set_committed_round(driver_->GetStatus().committed_round);
  reply->set_model_config_json(study.model.ToJson());
  for (const auto& c : study.audit.columns) reply->add_audit_columns(c);
  reply->set_histogram_bins(study.audit.histogram_bins);
  reply->set_heartbeat_interval_ms(driver_->heartbeat_interval_ms());
  reply->set_terms(*driver_->SignedTerms());
  return grpc::Status::OK;
}

grpc::Status FederationService::Subscribe(grpc::ServerContext* ctx, const v1::SiteHello* req,
                                          grpc::ServerWriter<v1::RoundTask>* writer) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Subscribe", req->study_id());
  auto gen = driver_->Subscribe(*site);
  if (!gen.ok()) return Refuse(ctx, *site, "Subscribe", gen.status());
  const TrainConfig& train = driver_->study().train;
  grpc::Status result = grpc::Status::OK;
  while (!ctx->IsCancelled()) {
    auto next = driver_->NextTask(*site, *gen, std::chrono::milliseconds(500));
    if (!next.ok()) {
      result = ToGrpcStatus(next.status());
      break;
    }
    if (!next->has_value()) continue;
    const Task& t = **next;
    v1::RoundTask msg;
    msg.set_kind(ToProtoKind(t.kind));
    msg.set_study_id(driver_->study().study_id);
    msg.set_round(t.round);
    msg.set_model_version(t.model_version);
    msg.set_task_id(t.task_id);
    for (const auto& split : t.splits) msg.add_splits(split);
    msg.set_audit(t.audit);
    v1::Hyper* h = msg.mutable_hyper();
    h->set_local_epochs(train.local_epochs);
    h->set_batch_size(train.batch_size);
    h->set_learning_rate(static_cast<float>(train.learning_rate));
    h->set_seed(train.seed);
    h->set_proximal_mu(static_cast<float>(driver_->proximal_mu()));
    if (t.secure) msg.MergeFrom(*t.secure);
    msg.set_terms(*driver_->SignedTerms());
    if (!writer->Write(msg)) break;
    if (t.kind == Task::Kind::kFinish) break;
  }
  driver_->Unsubscribe(*site, *gen);
  return result;
}

grpc::Status FederationService::FetchModel(grpc::ServerContext* ctx, const v1::ModelRef* req,
                                           grpc::ServerWriter<v1::Chunk>* writer) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "FetchModel", req->study_id());
  auto blob = driver_->Model(req->version());
  if (!blob.ok()) return Refuse(ctx, *site, "FetchModel", blob.status());
  auto transfer = BeginTransfer(ctx, *site);
  if (!transfer.ok()) return Refuse(ctx, *site, "FetchModel", transfer.status());
  v1::UpdateMeta meta;
  meta.set_study_id(driver_->study().study_id);
  meta.set_round(req->version());
  if (!WriteChunks(**blob, meta, [&](const v1::Chunk& c) { return writer->Write(c); })) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::SubmitUpdate(grpc::ServerContext* ctx,
                                             grpc::ServerReader<v1::Chunk>* reader,
                                             v1::Receipt* receipt) {
  // The caller is authorised before it may take a slot (by its
  // certificate: the study id it names is checked with the first chunk),
  // and the slot before the first chunk is read: a waiting upload costs
  // the coordinator no memory, and no one off the roster can hold a slot.
  ATTUNE_AUTHORIZE_OR_REFUSE(caller, "SubmitUpdate", driver_->study().study_id);
  auto transfer = BeginTransfer(ctx, *caller);
  if (!transfer.ok()) return Refuse(ctx, *caller, "SubmitUpdate", transfer.status());
  v1::Chunk chunk;
  if (!reader->Read(&chunk)) {
    return Refuse(ctx, "", "SubmitUpdate", absl::InvalidArgumentError("empty update stream"));
  }
  if (!chunk.has_meta()) {
    return Refuse(ctx, "", "SubmitUpdate",
                  absl::InvalidArgumentError("the first chunk must carry the update's metadata"));
  }
  const v1::UpdateMeta meta = chunk.meta();
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "SubmitUpdate", meta.study_id());
  UpdateHeader header;
  header.task_id = meta.task_id();
  header.round = meta.round();
  header.num_examples = meta.num_examples();
  header.full_weights = meta.full_weights();
  header.masked = meta.masked();
  header.metrics.insert(meta.metrics().begin(), meta.metrics().end());
  header.total_bytes = meta.total_bytes();
  header.total_sha256 = meta.total_sha256();
  auto intake = driver_->BeginUpdate(*site, header);
  if (!intake.ok()) return Refuse(ctx, *site, "SubmitUpdate", intake.status());
  receipt->set_site_id(*site);
  receipt->set_round(meta.round());
  receipt->set_accepted(true);
  if (*intake == nullptr) {  // the same update again: nothing to do
    receipt->set_detail("already accepted; not folded in twice");
    return grpc::Status::OK;
  }
  bool last = false;
  do {
    if (last) {
      return Refuse(ctx, *site, "SubmitUpdate",
                    absl::InvalidArgumentError("chunk after the one marked last"));
    }
    attune::Status s = (*intake)->AddChunk(chunk.seq(), chunk.data(), chunk.sha256());
    if (!s.ok()) return Refuse(ctx, *site, "SubmitUpdate", s);
    last = chunk.last();
  } while (reader->Read(&chunk));
  if (ctx->IsCancelled()) {
    return Refuse(ctx, *site, "SubmitUpdate",
                  absl::CancelledError("the update stream was cut off"));
  }
  attune::Status s = driver_->FinishUpdate(*site, *std::move(intake));
  if (!s.ok()) return Refuse(ctx, *site, "SubmitUpdate", s);
  return grpc::Status::OK;
}

grpc::Status FederationService::SubmitAudit(grpc::ServerContext* ctx,
                                            const v1::AuditReport* req, v1::Receipt* receipt) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "SubmitAudit", req->study_id());
  auto sums = FromProto(*req);
  if (!sums.ok()) return Refuse(ctx, *site, "SubmitAudit", sums.status());
  attune::Status s = driver_->SubmitEval(*site, req->task_id(), req->round(), *std::move(sums));
  if (!s.ok()) return Refuse(ctx, *site, "SubmitAudit", s);
  receipt->set_site_id(*site);
  receipt->set_round(req->round());
  receipt->set_accepted(true);
  return grpc::Status::OK;
}

grpc::Status FederationService::Heartbeat(grpc::ServerContext* ctx,
                                          const v1::HeartbeatRequest* req,
                                          v1::HeartbeatReply* reply) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Heartbeat", req->study_id());
  reply->set_open_round(driver_->Heartbeat(*site, Progress(*req)));
  return grpc::Status::OK;
}

grpc::Status FederationService::SecAgg(grpc::ServerContext* ctx, const v1::SecAggMessage* req,
                                       v1::Receipt* receipt) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "SecAgg", req->study_id());
  attune::Status s;
  switch (req->step_case()) {
    case v1::SecAggMessage::kAdvertisement: {
      // Relay the certificate the site authenticated with, so that peers
      // can check the signature against it.
      auto pem = PeerCertificatePem(*ctx);
      s = pem.ok() ? driver_->SecAggAdvertise(*site, req->task_id(), req->round(),
                                              secagg::FromProto(req->advertisement()), *pem)
                   : pem.status();
      break;
    }
    case v1::SecAggMessage::kShares: {
      std::vector<secagg::SealedShares> shares;
      for (const auto& p : req->shares().shares()) shares.push_back(secagg::FromProto(p));
      s = driver_->SecAggShares(*site, req->task_id(), req->round(), shares);
      break;
    }
    case v1::SecAggMessage::kConfirm:
      s = driver_->SecAggConfirm(*site, req->task_id(), req->round(), req->confirm().signature());
      break;
    case v1::SecAggMessage::kUnmask:
      s = driver_->SecAggUnmask(*site, req->task_id(), req->round(),
                                secagg::FromProto(-1, req->unmask()));
      break;
    default:
      s = absl::InvalidArgumentError("a SecAgg message must carry one step");
  }
  if (!s.ok()) return Refuse(ctx, *site, "SecAgg", s);
  receipt->set_site_id(*site);
  receipt->set_round(req->round());
  receipt->set_accepted(true);
  return grpc::Status::OK;
}

grpc::Status FederationService::Audit(grpc::ServerContext* ctx, const v1::AuditRequest* req,
                                      v1::AuditReply* reply) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Audit", req->study_id(), /*operator_ok=*/true);
  if (*site != kOperatorName) {
    // A site could otherwise ask for sums over chosen sets of sites.
    return Refuse(ctx, *site, "Audit",
                  absl::PermissionDeniedError(absl::StrCat(
                      "only the ", kOperatorName, " certificate may run audit-only rounds")));
  }
  // The caller's deadline bounds the wait (audits run between rounds).
  const auto left = ctx->deadline() - std::chrono::system_clock::now();
  const auto deadline = std::chrono::steady_clock::now() +
                        std::min<std::chrono::system_clock::duration>(left, std::chrono::hours(24));
  attune::StatusOr<std::string> audit =
      driver_->Audit(req->model_version(), req->split(), deadline);
  if (!audit.ok()) return Refuse(ctx, *site, "Audit", audit.status());
  reply->set_audit_json(*std::move(audit));
  return grpc::Status::OK;
}

grpc::Status FederationService::Status(grpc::ServerContext* ctx, const v1::StatusRequest* req,
                                       v1::StudyStatus* reply) {
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Status", req->study_id(), /*operator_ok=*/true);
  const StatusView v = driver_->GetStatus();
  reply->set_study_id(driver_->study().study_id);
  reply->set_committed_round(v.committed_round);
  reply->set_total_rounds(driver_->study().rounds);
  reply->set_phase(v.phase);
  reply->set_strategy(driver_->study().strategy.name);
  reply->set_log_entries(v.log_entries);
  reply->set_secure_aggregation(v.secure_aggregation);
  if (!v.privacy.mode.empty()) {
    v1::PrivacyStatus* p = reply->mutable_privacy();
    p->set_mode(v.privacy.mode);
    p->set_epsilon_spent(v.privacy.epsilon_spent);
    p->set_epsilon_budget(v.privacy.epsilon_budget);
    p->set_delta(v.privacy.delta);
    p->set_releases(v.privacy.releases);
    p->set_audit_releases(v.privacy.audit_releases);
    p->set_noise_multiplier(v.privacy.noise_multiplier);
  }
  for (const auto& s : v.sites) {
    // A site sees its own row only; the operator sees every site.
    if (*site != kOperatorName && s.site != *site) continue;
    v1::SiteInfo* i = reply->add_sites();
    i->set_site_id(s.site);
    i->set_subscribed(s.subscribed);
    i->set_train_samples(s.train_samples);
    i->set_alive(s.alive);
    i->set_last_seen_ms_ago(s.last_seen_ms_ago);
    i->set_progress(s.progress);
    i->set_revoked(s.revoked);
    i->set_rounds_contributed(s.rounds_contributed);
  }
  for (const auto& r : v.rounds) {
    v1::RoundInfo* i = reply->add_rounds();
    i->set_round(r.round);
    i->set_sites(r.sites);
    i->set_train_loss(r.train_loss);
    i->set_val_loss(r.val_loss);
    i->set_val_auc(r.val_auc);
    i->set_seconds(r.seconds);
  }
  return grpc::Status::OK;
}

#undef ATTUNE_AUTHORIZE_OR_REFUSE

StatusOr<RunningServer> StartServer(RoundDriver* driver, const std::string& listen,
                                    const TlsBundle& tls, ServiceOptions options) {
  RunningServer rs;
  rs.service = std::make_unique<FederationService>(driver, options);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, MakeServerCredentials(tls), &rs.port);
  builder.RegisterService(rs.service.get());
  // kMaxMessageBytes (an update chunk or a split's evaluation sums); anything
  // larger is refused by gRPC itself.
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  // Per-connection read buffers grow up to 4 MiB by default; with one
  // connection per site that would make memory grow with the number of sites.
  builder.AddChannelArgument(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 256 << 10);
  // Likewise flow-control windows: BDP probing would let every waiting
  // upload park megabytes in the coordinator's transport buffers.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  rs.server = builder.BuildAndStart();
  if (!rs.server || rs.port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (address in use, or not an address of this machine?)"));
  }
  return rs;
}

}  // namespace attune::coordinator
