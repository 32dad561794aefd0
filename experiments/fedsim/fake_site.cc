#include "fedsim/fake_site.h"

#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "attune/common/eval_stats.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"

namespace attune::fedsim {
namespace {

std::chrono::system_clock::time_point After(std::chrono::seconds s) {
  return std::chrono::system_clock::now() + s;
}

// Adds the microseconds of its lifetime to a counter.
struct Timed {
  std::atomic<int64_t>* us;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  ~Timed() {
    *us += std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now() - start)
               .count();
  }
};

}  // namespace

float SyntheticValue(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ULL + index * 0xbf58476d1ce4e5b9ULL + 1;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<float>(static_cast<int64_t>(z % 2001) - 1000) / 1024.0f;
}

Status ForEachEncodedPiece(const TensorSchema& schema, const ValueFn& value,
                           const std::function<Status(std::string_view)>& piece) {
  std::string buf = EncodeModelHeader(schema);
  const uint64_t count = static_cast<uint64_t>(schema.numel());
  buf.reserve(kMaxChunkBytes + sizeof(float));
  for (uint64_t i = 0; i < count; ++i) {
    const float v = value(i);
    char bytes[sizeof(float)];
    std::memcpy(bytes, &v, sizeof(float));
    buf.append(bytes, sizeof(float));
    if (buf.size() >= kMaxChunkBytes) {
      ATTUNE_RETURN_IF_ERROR(piece(std::string_view(buf).substr(0, kMaxChunkBytes)));
      buf.erase(0, kMaxChunkBytes);
    }
  }
  if (!buf.empty() || count == 0) ATTUNE_RETURN_IF_ERROR(piece(buf));
  return absl::OkStatus();
}

grpc::Status Upload(v1::Federation::Stub* stub, v1::UpdateMeta meta, const TensorSchema& schema,
                    const ValueFn& value, v1::Receipt* receipt, std::chrono::seconds timeout) {
  Sha256Stream whole;
  uint64_t total = 0;
  Status s = ForEachEncodedPiece(schema, value, [&](std::string_view p) {
    whole.Update(p);
    total += p.size();
    return absl::OkStatus();
  });
  if (!s.ok()) return ToGrpcStatus(s);
  meta.set_total_bytes(total);
  meta.set_total_sha256(whole.Final());
  grpc::ClientContext ctx;
  ctx.set_deadline(After(timeout));
  auto writer = stub->SubmitUpdate(&ctx, receipt);
  uint64_t seq = 0, sent = 0;
  s = ForEachEncodedPiece(schema, value, [&](std::string_view p) {
    v1::Chunk c;
    if (seq == 0) *c.mutable_meta() = meta;
    c.set_seq(seq++);
    c.set_data(std::string(p));
    c.set_sha256(Sha256(p));
    sent += p.size();
    c.set_last(sent == total);
    // A refused stream ends early: Finish() says why.
    if (!writer->Write(c)) return absl::CancelledError("stream closed by the coordinator");
    return absl::OkStatus();
  });
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

StatusOr<FetchedModel> Fetch(v1::Federation::Stub* stub, const std::string& study_id,
                             int64_t version, bool keep_values, std::chrono::seconds timeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(After(timeout));
  v1::ModelRef ref;
  ref.set_study_id(study_id);
  ref.set_version(version);
  auto reader = stub->FetchModel(&ctx, ref);
  FetchedModel out;
  std::optional<ChunkVerifier> verifier;
  ModelStreamParser parser;
  v1::Chunk chunk;
  Status s;
  while (s.ok() && reader->Read(&chunk)) {
    if (!verifier) {
      out.bytes = chunk.meta().total_bytes();
      out.sha256 = chunk.meta().total_sha256();
      verifier.emplace(out.bytes, out.sha256, uint64_t{64} << 30);
    }
    s = verifier->Add(chunk.seq(), chunk.data(), chunk.sha256());
    if (s.ok()) {
      s = parser.Feed(chunk.data(), [&](uint64_t, std::span<const float> v) {
        if (keep_values) out.values.insert(out.values.end(), v.begin(), v.end());
        return absl::OkStatus();
      });
    }
  }
  if (!s.ok()) {
    ctx.TryCancel();
    reader->Finish();
    return s;
  }
  ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  if (!verifier) return absl::DataLossError("empty model stream");
  ATTUNE_RETURN_IF_ERROR(verifier->Finish());
  ATTUNE_RETURN_IF_ERROR(parser.Finish());
  out.schema = *parser.schema();
  return out;
}

EvalSums TrivialEvalSums(const std::string& split, int histogram_bins) {
  EvalSums sums = EvalSums::Make(split, histogram_bins > 1 ? histogram_bins : 2, {}, {});
  sums.n = 1;
  sums.loss_sum = 0.1;
  sums.pos_hist.back() = 1;
  sums.confusion.tp = 1;
  return sums;
}

v1::AuditReport TrivialAuditReport(const std::string& split, int histogram_bins) {
  v1::AuditReport report;
  ToProto(TrivialEvalSums(split, histogram_bins), &report);
  return report;
}

ValueFn DeltaValues(const FakeSiteOptions& o, int64_t round) {
  const uint64_t seed = o.seed * 1000003ULL + static_cast<uint64_t>(round);
  const float scale = o.delta_scale;
  return [seed, scale](uint64_t i) { return SyntheticValue(seed, i) * scale; };
}

FakeSite::FakeSite(std::shared_ptr<grpc::Channel> channel, FakeSiteOptions options)
    : options_(std::move(options)), stub_(v1::Federation::NewStub(channel)) {}

void FakeSite::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  if (stream_ctx_) stream_ctx_->TryCancel();
}

Status FakeSite::Run() {
  Status s;
  for (int i = 0; i < options_.max_sessions; ++i) {
    s = Session();
    // Another session for what the worker reconnects for (a coordinator
    // killed mid-call can surface as any of these).
    if (!absl::IsUnavailable(s) && !absl::IsCancelled(s) && !absl::IsDeadlineExceeded(s) &&
        !absl::IsAborted(s)) {
      return s;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return s;
  }
  return s;
}

Status FakeSite::Session() {
  v1::JoinRequest join;
  join.set_study_id(options_.study_id);
  (*join.mutable_samples())["train"] = options_.num_examples;
  v1::JoinReply reply;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(After(std::chrono::seconds(30)));
    ctx.set_wait_for_ready(true);  // a restarting coordinator: wait for it
    ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(stub_->Join(&ctx, join, &reply)));
  }
  grpc::ClientContext ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return absl::CancelledError("stopped");
    stream_ctx_ = &ctx;
  }
  v1::SiteHello hello;
  hello.set_study_id(options_.study_id);
  auto stream = stub_->Subscribe(&ctx, hello);
  v1::RoundTask task;
  Status result = absl::UnavailableError("the coordinator closed the task stream");
  while (stream->Read(&task)) {
    if (task.kind() == v1::RoundTask::FINISH) {
      result = absl::OkStatus();
      ctx.TryCancel();
      break;
    }
    Status s = Handle(task, reply.histogram_bins());
    if (!s.ok()) {
      result = s;
      ctx.TryCancel();
      break;
    }
  }
  Status end = FromGrpcStatus(stream->Finish());
  {
    std::lock_guard<std::mutex> lock(mu_);
    stream_ctx_ = nullptr;
  }
  if (absl::IsUnavailable(result) && !end.ok()) return end;  // the stream's own reason
  return result;
}

Status FakeSite::Handle(const v1::RoundTask& task, int histogram_bins) {
  v1::UpdateMeta meta;
  meta.set_study_id(options_.study_id);
  meta.set_round(task.round());
  meta.set_task_id(task.task_id());
  meta.set_num_examples(options_.num_examples);
  v1::Receipt receipt;
  switch (task.kind()) {
    case v1::RoundTask::INIT: {
      meta.set_full_weights(true);
      const uint64_t seed = options_.init_seed;
      ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(Upload(stub_.get(), meta, options_.init_schema,
                                                   [seed](uint64_t i) { return SyntheticValue(seed, i); },
                                                   &receipt)));
      ++updates_sent_;
      return absl::OkStatus();
    }
    case v1::RoundTask::TRAIN: {
      ATTUNE_RETURN_IF_ERROR(StartSecure(task));
      ATTUNE_ASSIGN_OR_RETURN(FetchedModel global,
                              Fetch(stub_.get(), options_.study_id, task.model_version()));
      if (secure_) {
        Timed t{&update_us_};
        std::vector<float> delta(static_cast<size_t>(global.schema.numel()));
        const ValueFn value = DeltaValues(options_, task.round());
        for (size_t i = 0; i < delta.size(); ++i) delta[i] = value(i);
        return secure_->SetInput(delta, 0.5).status();
      }
      (*meta.mutable_metrics())["train_loss"] = 0.5;
      const auto start = std::chrono::steady_clock::now();
      Status sent = FromGrpcStatus(
          Upload(stub_.get(), meta, global.schema, DeltaValues(options_, task.round()), &receipt));
      // Encoding and digests are interleaved with sending: the whole upload counts.
      update_us_ += std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count();
      bytes_up_ += static_cast<int64_t>(EncodeModelHeader(global.schema).size()) +
                   global.schema.numel() * static_cast<int64_t>(sizeof(float));
      if (absl::IsFailedPrecondition(sent)) {  // a straggler: the round went on without us
        ++updates_late_;
        return absl::OkStatus();
      }
      ATTUNE_RETURN_IF_ERROR(sent);
      ++updates_sent_;
      return absl::OkStatus();
    }
    case v1::RoundTask::EVALUATE: {
      ATTUNE_RETURN_IF_ERROR(StartSecure(task));
      ATTUNE_ASSIGN_OR_RETURN(FetchedModel model,
                              Fetch(stub_.get(), options_.study_id, task.model_version()));
      if (secure_) {
        Timed t{&update_us_};
        const EvalLayout layout = LayoutFromProto(task);
        std::vector<EvalSums> splits;
        for (const auto& split : layout.splits) {
          splits.push_back(TrivialEvalSums(split, layout.bins));
          splits.back().modalities = layout.modalities;
          splits.back().features = layout.features;
          splits.back().calibration_bins = layout.calibration_bins;
        }
        ATTUNE_ASSIGN_OR_RETURN(std::vector<uint32_t> words,
                                EncodeEvalWords(splits, layout, task.secagg().sites_size()));
        return secure_->SetWords(std::move(words));
      }
      for (const auto& split : task.splits()) {
        v1::AuditReport report = TrivialAuditReport(split, histogram_bins);
        report.set_study_id(options_.study_id);
        report.set_round(task.round());
        report.set_task_id(task.task_id());
        grpc::ClientContext ctx;
        ctx.set_deadline(After(std::chrono::seconds(60)));
        ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(stub_->SubmitAudit(&ctx, report, &receipt)));
      }
      return absl::OkStatus();
    }
    case v1::RoundTask::SECAGG_SHARE: {
      v1::SecAggMessage msg;
      {
        Timed t{&update_us_};
        ATTUNE_ASSIGN_OR_RETURN(*msg.mutable_shares(), secure_->ShareKeys(task));
      }
      return SendSecAgg(task, std::move(msg));
    }
    case v1::RoundTask::SECAGG_MASK: {
      std::string payload;
      {
        Timed t{&update_us_};
        ATTUNE_ASSIGN_OR_RETURN(payload, secure_->MaskedPayload(task));
      }
      meta.set_masked(true);
      bytes_up_ += static_cast<int64_t>(payload.size());
      grpc::ClientContext ctx;
      ctx.set_deadline(After(std::chrono::seconds(600)));
      auto writer = stub_->SubmitUpdate(&ctx, &receipt);
      WriteChunks(payload, meta, [&](const v1::Chunk& c) { return writer->Write(c); });
      writer->WritesDone();
      ATTUNE_RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
      ++updates_sent_;
      return absl::OkStatus();
    }
    case v1::RoundTask::SECAGG_CONFIRM: {
      v1::SecAggMessage msg;
      {
        Timed t{&update_us_};
        ATTUNE_ASSIGN_OR_RETURN(*msg.mutable_confirm(), secure_->Confirm(task));
      }
      return SendSecAgg(task, std::move(msg));
    }
    case v1::RoundTask::SECAGG_UNMASK: {
      v1::SecAggMessage msg;
      {
        Timed t{&update_us_};
        ATTUNE_ASSIGN_OR_RETURN(*msg.mutable_unmask(), secure_->Unmask(task));
      }
      Status s = SendSecAgg(task, std::move(msg));
      secure_.reset();
      return s;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("unexpected task kind ", task.kind()));
  }
}

Status FakeSite::StartSecure(const v1::RoundTask& task) {
  secure_.reset();
  if (!task.has_secagg()) return absl::OkStatus();
  v1::SecAggMessage msg;
  {
    Timed t{&update_us_};
    ATTUNE_ASSIGN_OR_RETURN(secure_,
                            secagg::SecureSite::Start(task, options_.key_pem, options_.ca_pem));
    *msg.mutable_advertisement() = secure_->Advertisement();
  }
  return SendSecAgg(task, std::move(msg));
}

Status FakeSite::SendSecAgg(const v1::RoundTask& task, v1::SecAggMessage msg) {
  if (!secure_) return absl::FailedPreconditionError("no secure aggregation is open");
  msg.set_study_id(options_.study_id);
  msg.set_round(task.round());
  msg.set_task_id(task.task_id());
  bytes_up_ += static_cast<int64_t>(msg.ByteSizeLong());
  grpc::ClientContext ctx;
  ctx.set_deadline(After(std::chrono::seconds(60)));
  v1::Receipt receipt;
  return FromGrpcStatus(stub_->SecAgg(&ctx, msg, &receipt));
}

}  // namespace attune::fedsim
