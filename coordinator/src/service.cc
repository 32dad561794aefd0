#include "attune/coordinator/service.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/wire.h"

namespace attune::coordinator {
namespace {

v1::RoundTask::Kind ToProtoKind(Task::Kind k) {
  switch (k) {
    case Task::Kind::kInit: return v1::RoundTask::INIT;
    case Task::Kind::kTrain: return v1::RoundTask::TRAIN;
    case Task::Kind::kEvaluate: return v1::RoundTask::EVALUATE;
    case Task::Kind::kFinish: return v1::RoundTask::FINISH;
  }
  return v1::RoundTask::KIND_UNSPECIFIED;
}

// Logs a refusal (everything from the network is untrusted) and maps it.
grpc::Status Refuse(const std::string& who, const char* rpc, const Status& s) {
  spdlog::warn("refused {} from {}: {}", rpc, who.empty() ? "unknown peer" : who, std::string(s.message()));
  return ToGrpcStatus(s);
}

}  // namespace

StatusOr<std::string> FederationService::Authorize(grpc::ServerContext* ctx,
                                                   const std::string& study_id) {
  ATTUNE_ASSIGN_OR_RETURN(std::string site, PeerCommonName(*ctx));
  const auto& roster = driver_->study().roster;
  if (std::find(roster.begin(), roster.end(), site) == roster.end()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "site '", site, "' is not on the roster of study '", driver_->study().study_id, "'"));
  }
  if (study_id != driver_->study().study_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this coordinator runs study '", driver_->study().study_id, "', not '", study_id, "'"));
  }
  return site;
}

grpc::Status FederationService::Join(grpc::ServerContext* ctx, const v1::JoinRequest* req,
                                     v1::JoinReply* reply) {
  auto site = Authorize(ctx, req->study_id());
  if (!site.ok()) return Refuse("", "Join", site.status());
  auto samples = req->samples().find("train");
  attune::Status s = driver_->Join(*site, samples == req->samples().end() ? 0 : samples->second);
  if (!s.ok()) return Refuse(*site, "Join", s);
  const StatusView v = driver_->GetStatus();
  reply->set_site_id(*site);
  reply->set_study_id(driver_->study().study_id);
  reply->set_total_rounds(driver_->study().rounds);
  reply->set_committed_round(v.committed_round);
  reply->set_model_config_json(driver_->study().model.ToJson());
  for (const auto& c : driver_->study().audit.columns) reply->add_audit_columns(c);
  reply->set_histogram_bins(driver_->study().audit.histogram_bins);
  return grpc::Status::OK;
}

grpc::Status FederationService::Subscribe(grpc::ServerContext* ctx, const v1::SiteHello* req,
                                          grpc::ServerWriter<v1::RoundTask>* writer) {
  auto site = Authorize(ctx, req->study_id());
  if (!site.ok()) return Refuse("", "Subscribe", site.status());
  auto gen = driver_->Subscribe(*site);
  if (!gen.ok()) return Refuse(*site, "Subscribe", gen.status());
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
    v1::Hyper* h = msg.mutable_hyper();
    h->set_local_epochs(train.local_epochs);
    h->set_batch_size(train.batch_size);
    h->set_learning_rate(static_cast<float>(train.learning_rate));
    h->set_seed(train.seed);
    if (!writer->Write(msg)) break;
    if (t.kind == Task::Kind::kFinish) break;
  }
  driver_->Unsubscribe(*site, *gen);
  return result;
}

grpc::Status FederationService::FetchModel(grpc::ServerContext* ctx, const v1::ModelRef* req,
                                           grpc::ServerWriter<v1::Chunk>* writer) {
  auto site = Authorize(ctx, req->study_id());
  if (!site.ok()) return Refuse("", "FetchModel", site.status());
  auto blob = driver_->Model(req->version());
  if (!blob.ok()) return Refuse(*site, "FetchModel", blob.status());
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
  v1::Chunk chunk;
  if (!reader->Read(&chunk)) {
    return Refuse("", "SubmitUpdate", absl::InvalidArgumentError("empty update stream"));
  }
  if (!chunk.has_meta()) {
    return Refuse("", "SubmitUpdate",
                  absl::InvalidArgumentError("the first chunk must carry the update's metadata"));
  }
  const v1::UpdateMeta meta = chunk.meta();
  auto site = Authorize(ctx, meta.study_id());
  if (!site.ok()) return Refuse("", "SubmitUpdate", site.status());
  attune::Status s = driver_->CheckOpenTask(*site, meta.task_id(), meta.round());
  if (!s.ok()) return Refuse(*site, "SubmitUpdate", s);
  ChunkAssembler assembler(meta.total_bytes(), meta.total_sha256(), driver_->MaxPayloadBytes());
  bool last = false;
  do {
    if (last) {
      return Refuse(*site, "SubmitUpdate",
                    absl::InvalidArgumentError("chunk after the one marked last"));
    }
    s = assembler.Add(chunk.seq(), chunk.data(), chunk.sha256());
    if (!s.ok()) return Refuse(*site, "SubmitUpdate", s);
    last = chunk.last();
  } while (reader->Read(&chunk));
  auto payload = assembler.Finish();
  if (!payload.ok()) return Refuse(*site, "SubmitUpdate", payload.status());
  auto model = DecodeModel(*payload);
  if (!model.ok()) return Refuse(*site, "SubmitUpdate", model.status());
  UpdateSubmission u;
  u.task_id = meta.task_id();
  u.round = meta.round();
  u.num_examples = meta.num_examples();
  u.full_weights = meta.full_weights();
  u.metrics.insert(meta.metrics().begin(), meta.metrics().end());
  u.model = *std::move(model);
  s = driver_->SubmitUpdate(*site, std::move(u));
  if (!s.ok()) return Refuse(*site, "SubmitUpdate", s);
  receipt->set_site_id(*site);
  receipt->set_round(meta.round());
  receipt->set_accepted(true);
  return grpc::Status::OK;
}

grpc::Status FederationService::SubmitAudit(grpc::ServerContext* ctx,
                                            const v1::AuditReport* req, v1::Receipt* receipt) {
  auto site = Authorize(ctx, req->study_id());
  if (!site.ok()) return Refuse("", "SubmitAudit", site.status());
  auto sums = FromProto(*req);
  if (!sums.ok()) return Refuse(*site, "SubmitAudit", sums.status());
  attune::Status s = driver_->SubmitEval(*site, req->task_id(), req->round(), *std::move(sums));
  if (!s.ok()) return Refuse(*site, "SubmitAudit", s);
  receipt->set_site_id(*site);
  receipt->set_round(req->round());
  receipt->set_accepted(true);
  return grpc::Status::OK;
}

grpc::Status FederationService::Status(grpc::ServerContext* ctx, const v1::StatusRequest* req,
                                       v1::StudyStatus* reply) {
  auto site = Authorize(ctx, req->study_id());
  if (!site.ok()) return Refuse("", "Status", site.status());
  const StatusView v = driver_->GetStatus();
  reply->set_study_id(driver_->study().study_id);
  reply->set_committed_round(v.committed_round);
  reply->set_total_rounds(driver_->study().rounds);
  reply->set_phase(v.phase);
  for (const auto& s : v.sites) {
    v1::SiteInfo* i = reply->add_sites();
    i->set_site_id(s.site);
    i->set_subscribed(s.subscribed);
    i->set_train_samples(s.train_samples);
  }
  return grpc::Status::OK;
}

StatusOr<RunningServer> StartServer(RoundDriver* driver, const std::string& listen,
                                    const TlsBundle& tls) {
  RunningServer rs;
  rs.service = std::make_unique<FederationService>(driver);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(listen, MakeServerCredentials(tls), &rs.port);
  builder.RegisterService(rs.service.get());
  // One chunk plus framing; anything larger is refused by gRPC itself.
  builder.SetMaxReceiveMessageSize(static_cast<int>(kMaxChunkBytes + (64 << 10)));
  builder.SetMaxSendMessageSize(static_cast<int>(kMaxChunkBytes + (64 << 10)));
  rs.server = builder.BuildAndStart();
  if (!rs.server || rs.port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (address in use, or not an address of this machine?)"));
  }
  return rs;
}

}  // namespace attune::coordinator
