#include "attune/coordinator/service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <new>

#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/method_handler.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "attune/common/audit_features.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/text.h"
#include "attune/common/wire.h"

namespace attune::coordinator {
namespace {

std::string Progress(const v1::HeartbeatRequest& r) {
  if (r.stage() == "training" && r.epochs() > 0) {
    return absl::StrFormat("training round %d: epoch %d/%d, batch %d/%d", r.round(), r.epoch(),
                           r.epochs(), r.batch(), r.batches());
  }
  if (r.stage().empty() || r.stage() == "idle") return "idle";
  return absl::StrFormat("%s round %d", SafeText(r.stage(), 32), r.round());
}

// The methods in the order federation.proto declares them (the indexes
// grpc::Service numbers them by).
enum MethodIndex {
  kJoin = 0,
  kSubscribe,
  kFetchModel,
  kSubmitUpdate,
  kSubmitAudit,
  kStatus,
  kHeartbeat,
  kSecAgg,
  kAudit,
};

// Serialises `m` into a ByteBuffer for the raw writers.
grpc::ByteBuffer ToBytes(const google::protobuf::Message& m) {
  grpc::ByteBuffer out;
  bool own = false;
  grpc::GenericSerialize<grpc::ProtoBufferWriter, google::protobuf::Message>(m, &out, &own);
  return out;
}

constexpr size_t kKiB = 1024;

}  // namespace

// ---- admission, bounds and watching ------------------------------------------

FederationService::FederationService(RoundDriver* driver, ServiceOptions options)
    : driver_(driver),
      options_(options),
      watch_(StreamWatch::Options{}),
      transfers_(options.max_transfers) {
  const StudyConfig& study = driver->study();
  const int64_t features = static_cast<int64_t>(AuditFeatureCount(study.model));
  const int64_t bins = study.audit.histogram_bins;
  const int64_t modalities = static_cast<int64_t>(ModalityNames().size());
  const int64_t peers = static_cast<int64_t>(study.roster.size()) + 1;
  auto limits = [](const char* rpc, size_t max_bytes) {
    Limits l;
    l.rpc = rpc;
    l.max_bytes = max_bytes;
    return l;
  };

  Limits join = limits("Join", 16 * kKiB + features * (kMaxFeatureNameBytes + 32));
  join.counted = true;
  join.wire.repeated = {{"attune.v1.JoinRequest.audit_features", features}};
  ServeUnary(kJoin, join, &FederationService::Join);

  ServeStream(kSubscribe, limits("Subscribe", 4 * kKiB), &FederationService::Subscribe);

  Limits fetch = limits("FetchModel", 4 * kKiB);
  fetch.transfer = true;
  ServeStream(kFetchModel, fetch, &FederationService::FetchModel);

  Limits upload = limits("SubmitUpdate", kMaxChunkBytes + 64 * kKiB);
  upload.transfer = true;
  upload.wire.repeated = {{"attune.v1.UpdateMeta.metrics", 64}};
  ServeUpload(kSubmitUpdate, upload);

  // A split's sums: the layout's cells at most, each shaped as the study says.
  Limits audit = limits("SubmitAudit", kMaxMessageBytes);
  audit.counted = true;
  audit.wire.repeated = {
      {"attune.v1.AuditReport.groups", MaxReportCells(study.audit.columns, study.audit.values)},
      {"attune.v1.AuditReport.pos_hist", bins},
      {"attune.v1.AuditReport.neg_hist", bins},
      {"attune.v1.AuditReport.modalities", modalities},
      {"attune.v1.AuditReport.features", features},
      {"attune.v1.GroupStats.beta_sum", modalities},
      {"attune.v1.GroupStats.pos_hist", bins},
      {"attune.v1.GroupStats.neg_hist", bins},
      {"attune.v1.GroupStats.calib_sum", bins},
      {"attune.v1.GroupStats.attention_sum", features},
      {"attune.v1.GroupStats.value_pos_sum", features},
      {"attune.v1.GroupStats.value_neg_sum", features},
      {"attune.v1.GroupStats.value_sq_sum", features},
  };
  ServeUnary(kSubmitAudit, audit, &FederationService::SubmitAudit);

  Limits status = limits("Status", 4 * kKiB);
  status.operator_ok = true;
  ServeUnary(kStatus, status, &FederationService::Status);

  ServeUnary(kHeartbeat, limits("Heartbeat", 4 * kKiB), &FederationService::Heartbeat);

  // Shares and unmasking: one entry per peer.
  Limits secagg = limits("SecAgg", 64 * kKiB + peers * 2 * kKiB);
  secagg.wire.repeated = {{"attune.v1.SecAggShares.shares", peers},
                          {"attune.v1.SecAggUnmask.self_mask_seeds", peers},
                          {"attune.v1.SecAggUnmask.mask_keys", peers}};
  ServeUnary(kSecAgg, secagg, &FederationService::SecAgg);

  Limits audit_round = limits("Audit", 4 * kKiB);
  audit_round.operator_ok = true;
  ServeUnary(kAudit, audit_round, &FederationService::Audit);
}

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

grpc::Status FederationService::Guarded(grpc::ServerContext* ctx, const char* rpc,
                                        const std::function<grpc::Status()>& call) {
  try {
    return call();
  } catch (const std::bad_alloc&) {
    return Refuse(ctx, "", rpc,
                  absl::ResourceExhaustedError("the coordinator ran out of memory for this call"));
  }
}

StatusOr<FederationService::Admission> FederationService::Admit(grpc::ServerContext* ctx,
                                                                const Limits& limits) {
  Admission a;
  // By the certificate alone: the study id the caller names is checked
  // once its request is parsed.
  ATTUNE_ASSIGN_OR_RETURN(a.caller,
                          Authorize(ctx, driver_->study().study_id, limits.operator_ok));
  const auto total = limits.transfer
                         ? (options_.transfer_limit.count() > 0
                                ? std::chrono::duration_cast<StreamWatch::Clock::duration>(
                                      options_.transfer_limit)
                                : std::chrono::duration_cast<StreamWatch::Clock::duration>(
                                      std::chrono::duration<double>(
                                          driver_->study().round_deadline_s)))
                         : StreamWatch::Clock::duration::zero();
  a.watch = watch_.Watch([ctx] { ctx->TryCancel(); }, options_.idle_limit, total);
  if (limits.counted) {
    ATTUNE_ASSIGN_OR_RETURN(a.transfer, BeginTransfer(ctx, a.caller, /*wait_turn=*/true));
  }
  return a;
}

attune::Status FederationService::ReadMessage(const grpc::ByteBuffer& in, const Limits& limits,
                                              google::protobuf::Message* out) {
  if (in.Length() > limits.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("a ", limits.rpc, " message of ",
                                                     in.Length(), " bytes; at most ",
                                                     limits.max_bytes, " are accepted"));
  }
  std::vector<grpc::Slice> slices;
  if (!in.Dump(&slices).ok()) return absl::InvalidArgumentError("unreadable message");
  std::string bytes;
  bytes.reserve(in.Length());
  for (const auto& slice : slices) {
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  ATTUNE_RETURN_IF_ERROR(CheckWireBounds(bytes, *out->GetDescriptor(), limits.wire));
  if (!out->ParseFromString(bytes)) {
    return absl::InvalidArgumentError(absl::StrCat("a malformed ", limits.rpc, " message"));
  }
  return absl::OkStatus();
}

attune::Status FederationService::ReadChunk(const grpc::ByteBuffer& in, const Limits& limits,
                                            std::vector<grpc::Slice>* slices,
                                            ChunkPieces* out) {
  if (in.Length() > limits.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("a ", limits.rpc, " message of ",
                                                     in.Length(), " bytes; at most ",
                                                     limits.max_bytes, " are accepted"));
  }
  return ReadChunkBuffer(in, limits.wire, slices, out);
}

// The one request of a unary or server-streaming call, read under the
// watch and checked (ReadMessage). Cancelled when the caller went away.
template <typename Stream>
attune::Status FederationService::ReadRequest(Stream* stream, StreamWatch::Call& watch,
                                              const Limits& limits,
                                              google::protobuf::Message* out) {
  grpc::ByteBuffer in;
  bool read;
  {
    auto op = watch.Begin();
    read = stream->Read(&in);
  }
  ATTUNE_RETURN_IF_ERROR(watch.expired());
  if (!read) return absl::CancelledError("the caller went away");
  return ReadMessage(in, limits, out);
}

grpc::Status FederationService::RefuseRead(grpc::ServerContext* ctx, const std::string& caller,
                                           const char* rpc, const attune::Status& s) {
  // A caller that went away is not refused: there is nobody to tell.
  if (absl::IsCancelled(s)) return ToGrpcStatus(s);
  return Refuse(ctx, caller, rpc, s);
}

template <typename Req, typename Resp>
void FederationService::ServeUnary(
    int index, Limits limits,
    grpc::Status (FederationService::*method)(grpc::ServerContext*, const Req&, Resp*)) {
  using Streamer = grpc::ServerUnaryStreamer<grpc::ByteBuffer, grpc::ByteBuffer>;
  MarkMethodStreamed(index, new grpc::internal::StreamedUnaryHandler<grpc::ByteBuffer,
                                                                     grpc::ByteBuffer>(
                                [this, limits, method](grpc::ServerContext* ctx, Streamer* stream) {
    return Guarded(ctx, limits.rpc, [&]() -> grpc::Status {
      auto admitted = Admit(ctx, limits);
      if (!admitted.ok()) return Refuse(ctx, "", limits.rpc, admitted.status());
      Req req;
      attune::Status got = ReadRequest(stream, *admitted->watch, limits, &req);
      if (!got.ok()) return RefuseRead(ctx, admitted->caller, limits.rpc, got);
      Resp reply;
      grpc::Status s = (this->*method)(ctx, req, &reply);
      if (!s.ok()) return s;
      auto op = admitted->watch->Begin();
      if (!stream->Write(ToBytes(reply))) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "the caller went away");
      }
      return grpc::Status::OK;
    });
  }));
}

template <typename Req>
void FederationService::ServeStream(
    int index, Limits limits,
    grpc::Status (FederationService::*method)(grpc::ServerContext*, const Req&, const Writer&)) {
  using Streamer = grpc::ServerSplitStreamer<grpc::ByteBuffer, grpc::ByteBuffer>;
  MarkMethodStreamed(index, new grpc::internal::SplitServerStreamingHandler<grpc::ByteBuffer,
                                                                            grpc::ByteBuffer>(
                                [this, limits, method](grpc::ServerContext* ctx, Streamer* stream) {
    return Guarded(ctx, limits.rpc, [&]() -> grpc::Status {
      auto admitted = Admit(ctx, limits);
      if (!admitted.ok()) return Refuse(ctx, "", limits.rpc, admitted.status());
      StreamWatch::Call& watch = *admitted->watch;
      Req req;
      attune::Status got = ReadRequest(stream, watch, limits, &req);
      if (!got.ok()) return RefuseRead(ctx, admitted->caller, limits.rpc, got);
      Writer write;
      write.message = [&](const google::protobuf::Message& m) {
        auto op = watch.Begin();
        return stream->Write(ToBytes(m));
      };
      write.frame = [&](const ChunkFrame& f, const std::shared_ptr<const std::string>& owner) {
        auto op = watch.Begin();
        return stream->Write(ChunkFrameBuffer(f, owner));
      };
      grpc::Status s = (this->*method)(ctx, req, write);
      if (attune::Status why = watch.expired(); !why.ok()) {
        return Refuse(ctx, admitted->caller, limits.rpc, why);
      }
      return s;
    });
  }));
}

void FederationService::ServeUpload(int index, Limits limits) {
  using Streamer = grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;
  MarkMethodStreamed(
      index, new grpc::internal::BidiStreamingHandler<FederationService, grpc::ByteBuffer,
                                                      grpc::ByteBuffer>(
                 [limits](FederationService* self, grpc::ServerContext* ctx, Streamer* stream) {
    return self->Guarded(ctx, limits.rpc, [&]() -> grpc::Status {
      auto admitted = self->Admit(ctx, limits);
      if (!admitted.ok()) return self->Refuse(ctx, "", limits.rpc, admitted.status());
      StreamWatch::Call& watch = *admitted->watch;
      // The chunk read last lies in `slices` (its data is not copied out
      // of gRPC's buffers): valid until the next read.
      std::vector<grpc::Slice> slices;
      const ChunkReader read = [&](ChunkPieces* chunk) -> StatusOr<bool> {
        grpc::ByteBuffer in;
        bool more;
        {
          auto op = watch.Begin();
          more = stream->Read(&in);
        }
        ATTUNE_RETURN_IF_ERROR(watch.expired());
        if (!more) return false;
        ATTUNE_RETURN_IF_ERROR(self->ReadChunk(in, limits, &slices, chunk));
        return true;
      };
      v1::Receipt receipt;
      grpc::Status s = self->SubmitUpdate(ctx, read, &receipt);
      if (!s.ok()) return s;
      auto op = watch.Begin();
      if (!stream->Write(ToBytes(receipt))) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "the caller went away");
      }
      return grpc::Status::OK;
    });
  },
                 this));
}

// Gives the site's turn and the slot back when the call ends.
class FederationService::Transfer {
 public:
  Transfer(FederationService* service, std::string site)
      : service_(service), site_(std::move(site)) {}
  ~Transfer() {
    if (slot_) service_->transfers_.release();
    {
      std::lock_guard<std::mutex> lock(service_->transfer_mu_);
      service_->transferring_.erase(site_);
    }
    service_->transfer_cv_.notify_all();
  }
  bool slot_ = false;

 private:
  FederationService* service_;
  std::string site_;
};

StatusOr<std::unique_ptr<FederationService::Transfer>> FederationService::BeginTransfer(
    grpc::ServerContext* ctx, const std::string& site, bool wait_turn) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(transfer_mu_);
      if (transferring_.insert(site).second) break;
    }
    if (!wait_turn) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "site ", site, " already has a model or update transfer open; one at a time"));
    }
    if (ctx->IsCancelled()) return absl::CancelledError("the caller went away");
    std::unique_lock<std::mutex> lock(transfer_mu_);
    transfer_cv_.wait_for(lock, std::chrono::milliseconds(200),
                          [&] { return !transferring_.count(site); });
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

grpc::Status FederationService::Join(grpc::ServerContext* ctx, const v1::JoinRequest& request,
                                     v1::JoinReply* reply) {
  const v1::JoinRequest* req = &request;
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

grpc::Status FederationService::Subscribe(grpc::ServerContext* ctx, const v1::SiteHello& request,
                                          const Writer& write) {
  const v1::SiteHello* req = &request;
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Subscribe", req->study_id());
  auto gen = driver_->Subscribe(*site);
  if (!gen.ok()) return Refuse(ctx, *site, "Subscribe", gen.status());
  const TrainSettings train = driver_->TrainingFor(*site);
  grpc::Status result = grpc::Status::OK;
  while (!ctx->IsCancelled()) {
    auto next = driver_->NextTask(*site, *gen, std::chrono::milliseconds(500));
    if (!next.ok()) {
      result = ToGrpcStatus(next.status());
      break;
    }
    if (!next->has_value()) continue;
    const Task& t = **next;
    const v1::RoundTask msg = ToProto(t, driver_->study().study_id, train, *driver_->SignedTerms());
    if (!write(msg)) break;
    if (t.kind == Task::Kind::kFinish) break;
  }
  driver_->Unsubscribe(*site, *gen);
  return result;
}

grpc::Status FederationService::FetchModel(grpc::ServerContext* ctx, const v1::ModelRef& request,
                                           const Writer& write) {
  const v1::ModelRef* req = &request;
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "FetchModel", req->study_id());
  auto model = driver_->Model(req->version());
  if (!model.ok()) return Refuse(ctx, *site, "FetchModel", model.status());
  if (!req->held_sha256().empty() && req->held_sha256() == model->sha256) {
    // The site holds this very model (it evaluated it last round): its
    // metadata only, no transfer.
    v1::Chunk held;
    v1::UpdateMeta* meta = held.mutable_meta();
    meta->set_study_id(driver_->study().study_id);
    meta->set_round(req->version());
    meta->set_total_bytes(model->bytes->size());
    meta->set_total_sha256(model->sha256);
    meta->set_held(true);
    held.set_last(true);
    if (!write(held)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    return grpc::Status::OK;
  }
  auto transfer = BeginTransfer(ctx, *site, /*wait_turn=*/false);
  if (!transfer.ok()) return Refuse(ctx, *site, "FetchModel", transfer.status());
  v1::UpdateMeta meta;
  meta.set_study_id(driver_->study().study_id);
  meta.set_round(req->version());
  // Every site gets the same bytes: sent from the one copy held, not
  // copied into a message per chunk.
  if (!WriteChunkFrames(*model->bytes, meta, model->sha256,
                        [&](const ChunkFrame& f) { return write.frame(f, model->bytes); })) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
  }
  return grpc::Status::OK;
}

grpc::Status FederationService::SubmitUpdate(grpc::ServerContext* ctx, const ChunkReader& read,
                                             v1::Receipt* receipt) {
  // The caller was authorised by its certificate before it could send a
  // byte (the study id it names is checked with the first chunk), and
  // takes its slot before the first chunk is read: a waiting upload costs
  // the coordinator no memory, and no one off the roster can hold a slot.
  ATTUNE_AUTHORIZE_OR_REFUSE(caller, "SubmitUpdate", driver_->study().study_id);
  auto transfer = BeginTransfer(ctx, *caller, /*wait_turn=*/false);
  if (!transfer.ok()) return Refuse(ctx, *caller, "SubmitUpdate", transfer.status());
  ChunkPieces chunk;
  StatusOr<bool> more = read(&chunk);
  if (!more.ok()) return Refuse(ctx, *caller, "SubmitUpdate", more.status());
  if (!*more) {
    return Refuse(ctx, *caller, "SubmitUpdate", absl::InvalidArgumentError("empty update stream"));
  }
  if (!chunk.rest.has_meta()) {
    return Refuse(ctx, *caller, "SubmitUpdate",
                  absl::InvalidArgumentError("the first chunk must carry the update's metadata"));
  }
  const v1::UpdateMeta meta = chunk.rest.meta();
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "SubmitUpdate", meta.study_id());
  if (meta.held()) {
    return Refuse(ctx, *site, "SubmitUpdate",
                  absl::InvalidArgumentError("an update marked held (FetchModel's mark) sends no "
                                             "data: refused"));
  }
  auto intake = driver_->BeginUpdate(*site, HeaderFromProto(meta));
  if (!intake.ok()) return Refuse(ctx, *site, "SubmitUpdate", intake.status());
  receipt->set_site_id(*site);
  receipt->set_round(meta.round());
  receipt->set_accepted(true);
  if (*intake == nullptr) {  // the same update again: nothing to do
    receipt->set_detail("already accepted; not folded in twice");
    return grpc::Status::OK;
  }
  bool last = false;
  while (true) {
    if (last) {
      return Refuse(ctx, *site, "SubmitUpdate",
                    absl::InvalidArgumentError("chunk after the one marked last"));
    }
    attune::Status s = (*intake)->AddChunk(chunk.rest.seq(), chunk.data, chunk.rest.sha256());
    if (!s.ok()) return Refuse(ctx, *site, "SubmitUpdate", s);
    last = chunk.rest.last();
    more = read(&chunk);
    if (!more.ok()) return Refuse(ctx, *site, "SubmitUpdate", more.status());
    if (!*more) break;
  }
  if (ctx->IsCancelled()) {
    return Refuse(ctx, *site, "SubmitUpdate",
                  absl::CancelledError("the update stream was cut off"));
  }
  attune::Status s = driver_->FinishUpdate(*site, *std::move(intake));
  if (!s.ok()) return Refuse(ctx, *site, "SubmitUpdate", s);
  return grpc::Status::OK;
}

grpc::Status FederationService::SubmitAudit(grpc::ServerContext* ctx, const v1::AuditReport& request,
    v1::Receipt* receipt) {
  const v1::AuditReport* req = &request;
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

grpc::Status FederationService::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest& request,
    v1::HeartbeatReply* reply) {
  const v1::HeartbeatRequest* req = &request;
  ATTUNE_AUTHORIZE_OR_REFUSE(site, "Heartbeat", req->study_id());
  reply->set_open_round(driver_->Heartbeat(*site, Progress(*req)));
  return grpc::Status::OK;
}

grpc::Status FederationService::SecAgg(grpc::ServerContext* ctx, const v1::SecAggMessage& request,
    v1::Receipt* receipt) {
  const v1::SecAggMessage* req = &request;
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

grpc::Status FederationService::Audit(grpc::ServerContext* ctx, const v1::AuditRequest& request,
    v1::AuditReply* reply) {
  const v1::AuditRequest* req = &request;
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

grpc::Status FederationService::Status(grpc::ServerContext* ctx, const v1::StatusRequest& request,
    v1::StudyStatus* reply) {
  const v1::StatusRequest* req = &request;
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
  // kMaxMessageBytes (an update chunk or a split's evaluation sums); read
  // buffers (4 MiB by default) and flow-control windows (BDP probing would
  // let every waiting upload park megabytes) kept from growing with the
  // number of sites.
  ApplyServerTransportLimits(&builder);
  rs.server = builder.BuildAndStart();
  if (!rs.server || rs.port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", listen, " (address in use, or not an address of this machine?)"));
  }
  return rs;
}

}  // namespace attune::coordinator
