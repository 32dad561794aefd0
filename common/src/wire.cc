#include "attune/common/wire.h"

#include <algorithm>
#include <limits>
#include <span>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/wire_format_lite.h>

#include "absl/strings/str_cat.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/text.h"

namespace attune {

void ToProto(const EvalSums& s, v1::AuditReport* out) {
  out->set_split(s.split);
  out->set_n(s.n);
  out->set_suppressed_sites(s.suppressed);
  out->set_loss_sum(s.loss_sum);
  out->mutable_pos_hist()->Assign(s.pos_hist.begin(), s.pos_hist.end());
  out->mutable_neg_hist()->Assign(s.neg_hist.begin(), s.neg_hist.end());
  out->set_tp(s.confusion.tp);
  out->set_fp(s.confusion.fp);
  out->set_tn(s.confusion.tn);
  out->set_fn(s.confusion.fn);
  for (const auto& m : s.modalities) out->add_modalities(m);
  for (const auto& f : s.features) out->add_features(f);
  out->set_calibration_bins(s.calibration_bins);
  for (const auto& [key, g] : s.groups) {
    v1::GroupStats* p = out->add_groups();
    p->set_column(key.first);
    p->set_value(key.second);
    p->set_n(g.n);
    p->set_suppressed_sites(g.suppressed);
    p->mutable_beta_sum()->Assign(g.beta_sum.begin(), g.beta_sum.end());
    p->set_tp(g.confusion.tp);
    p->set_fp(g.confusion.fp);
    p->set_tn(g.confusion.tn);
    p->set_fn(g.confusion.fn);
    p->mutable_pos_hist()->Assign(g.pos_hist.begin(), g.pos_hist.end());
    p->mutable_neg_hist()->Assign(g.neg_hist.begin(), g.neg_hist.end());
    p->mutable_calib_sum()->Assign(g.calib_sum.begin(), g.calib_sum.end());
    p->mutable_attention_sum()->Assign(g.attention_sum.begin(), g.attention_sum.end());
    p->set_entropy_sum(g.entropy_sum);
    p->mutable_value_pos_sum()->Assign(g.value_pos_sum.begin(), g.value_pos_sum.end());
    p->mutable_value_neg_sum()->Assign(g.value_neg_sum.begin(), g.value_neg_sum.end());
    p->mutable_value_sq_sum()->Assign(g.value_sq_sum.begin(), g.value_sq_sum.end());
  }
}

StatusOr<EvalSums> FromProto(const v1::AuditReport& r) {
  EvalSums s;
  s.split = r.split();
  s.n = r.n();
  // One site's report: it held a cell (or the split) back, or it did not.
  if (r.suppressed_sites() < 0 || r.suppressed_sites() > 1) {
    return absl::InvalidArgumentError("evaluation: suppressed_sites of one site is 0 or 1");
  }
  s.suppressed = r.suppressed_sites();
  s.loss_sum = r.loss_sum();
  s.pos_hist.assign(r.pos_hist().begin(), r.pos_hist().end());
  s.neg_hist.assign(r.neg_hist().begin(), r.neg_hist().end());
  s.confusion = {r.tp(), r.fp(), r.tn(), r.fn()};
  s.modalities.assign(r.modalities().begin(), r.modalities().end());
  s.features.assign(r.features().begin(), r.features().end());
  s.calibration_bins = r.calibration_bins();
  for (const auto& g : r.groups()) {
    auto [it, inserted] = s.groups.try_emplace({g.column(), g.value()});
    if (!inserted) {
      return absl::InvalidArgumentError(
          absl::StrCat("evaluation: group ", g.column(), "=", g.value(), " listed twice"));
    }
    it->second.n = g.n();
    if (g.suppressed_sites() < 0 || g.suppressed_sites() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "evaluation: group ", g.column(), "=", g.value(), ": suppressed_sites of one site is 0 or 1"));
    }
    it->second.suppressed = g.suppressed_sites();
    it->second.beta_sum.assign(g.beta_sum().begin(), g.beta_sum().end());
    GroupSums& c = it->second;
    c.confusion = {g.tp(), g.fp(), g.tn(), g.fn()};
    c.pos_hist.assign(g.pos_hist().begin(), g.pos_hist().end());
    c.neg_hist.assign(g.neg_hist().begin(), g.neg_hist().end());
    c.calib_sum.assign(g.calib_sum().begin(), g.calib_sum().end());
    c.attention_sum.assign(g.attention_sum().begin(), g.attention_sum().end());
    c.entropy_sum = g.entropy_sum();
    c.value_pos_sum.assign(g.value_pos_sum().begin(), g.value_pos_sum().end());
    c.value_neg_sum.assign(g.value_neg_sum().begin(), g.value_neg_sum().end());
    c.value_sq_sum.assign(g.value_sq_sum().begin(), g.value_sq_sum().end());
  }
  ATTUNE_RETURN_IF_ERROR(s.Validate());
  return s;
}

v1::EvalLayout ToProto(const EvalLayout& l) {
  v1::EvalLayout out;
  out.set_bins(l.bins);
  out.set_calibration_bins(l.calibration_bins);
  for (const auto& m : l.modalities) out.add_modalities(m);
  for (const auto& f : l.features) out.add_features(f);
  for (const auto& [column, value] : l.cells) {
    v1::AuditCell* c = out.add_cells();
    c->set_column(column);
    c->set_value(value);
  }
  return out;
}

EvalLayout LayoutFromProto(const v1::RoundTask& task) {
  EvalLayout l;
  l.splits.assign(task.splits().begin(), task.splits().end());
  l.bins = task.eval_layout().bins();
  l.calibration_bins = task.eval_layout().calibration_bins();
  l.modalities.assign(task.eval_layout().modalities().begin(),
                      task.eval_layout().modalities().end());
  l.features.assign(task.eval_layout().features().begin(), task.eval_layout().features().end());
  for (const auto& c : task.eval_layout().cells()) l.cells.emplace_back(c.column(), c.value());
  return l;
}

namespace {

v1::RoundTask::Kind ToProto(Task::Kind k) {
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

void ToProto(const SecureTaskParts& in, v1::RoundTask* out) {
  if (in.setup) {
    const SecAggTerms& t = *in.setup;
    v1::SecAggSetup* s = out->mutable_secagg();
    s->set_context(t.context);
    s->set_index(t.index);
    for (const auto& name : t.sites) s->add_sites(name);
    s->set_threshold(t.threshold);
    s->set_degree(t.degree);
    s->set_length(t.length);
    s->set_value_clip(t.value_clip);
    s->set_weight(t.weight);
  }
  if (in.dp) {
    out->mutable_dp()->set_clip_norm(in.dp->clip_norm);
    out->mutable_dp()->set_noise_stddev(in.dp->noise_stddev);
  }
  if (in.eval_layout) *out->mutable_eval_layout() = ToProto(*in.eval_layout);
  for (const auto& [ad, pem] : in.advertisements) *out->add_advertisements() = secagg::ToProto(ad, pem);
  for (const auto& sh : in.shares) *out->add_shares() = secagg::ToProto(sh);
  for (int v : in.survivors) out->add_survivors(v);
  for (int v : in.dropped) out->add_dropped(v);
  for (const auto& [site, signature] : in.confirmations) {
    v1::SecAggConfirmation* c = out->add_confirmations();
    c->set_site(site);
    c->set_signature(signature);
  }
}

}  // namespace

v1::RoundTask ToProto(const Task& task, std::string_view study_id, const TrainSettings& train,
                      const std::string& terms) {
  v1::RoundTask msg;
  msg.set_kind(ToProto(task.kind));
  msg.set_study_id(std::string(study_id));
  msg.set_round(task.round);
  msg.set_model_version(task.model_version);
  msg.set_task_id(task.task_id);
  for (const auto& split : task.splits) msg.add_splits(split);
  msg.set_audit(task.audit);
  v1::Hyper* h = msg.mutable_hyper();
  h->set_local_epochs(train.local_epochs);
  h->set_batch_size(train.batch_size);
  h->set_learning_rate(static_cast<float>(train.learning_rate));
  h->set_seed(train.seed);
  h->set_proximal_mu(static_cast<float>(train.proximal_mu));
  if (task.secure) ToProto(*task.secure, &msg);
  msg.set_terms(terms);
  return msg;
}

UpdateHeader HeaderFromProto(const v1::UpdateMeta& meta) {
  UpdateHeader h;
  h.task_id = meta.task_id();
  h.round = meta.round();
  h.num_examples = meta.num_examples();
  h.full_weights = meta.full_weights();
  h.masked = meta.masked();
  h.metrics.insert(meta.metrics().begin(), meta.metrics().end());
  h.total_bytes = meta.total_bytes();
  h.total_sha256 = meta.total_sha256();
  return h;
}

namespace {

using PieceFn = std::function<Status(std::string_view)>;
// One chunk to write: `meta` on the first only.
using ChunkFn = std::function<bool(uint64_t seq, const v1::UpdateMeta* meta,
                                   std::string_view data, bool last)>;

// Writes the pieces `for_each` yields as chunks; the first carries `meta`.
bool WritePieces(uint64_t total, const std::function<Status(const PieceFn&)>& for_each,
                 const v1::UpdateMeta& meta, const ChunkFn& write) {
  uint64_t seq = 0, sent = 0;
  const Status s = for_each([&](std::string_view piece) {
    sent += piece.size();
    const bool ok = write(seq, seq == 0 ? &meta : nullptr, piece, sent == total);
    ++seq;
    return ok ? absl::OkStatus() : absl::CancelledError("the peer went away");
  });
  return s.ok();
}

// `meta` completed with the payload's size and digest.
v1::UpdateMeta PayloadMeta(std::string_view payload, v1::UpdateMeta meta,
                           std::string_view payload_sha256) {
  meta.set_total_bytes(payload.size());
  meta.set_total_sha256(payload_sha256.size() == 32 ? std::string(payload_sha256)
                                                    : Sha256(payload));
  return meta;
}

bool WritePayload(std::string_view payload, const v1::UpdateMeta& meta, const ChunkFn& write) {
  return WritePieces(
      payload.size(),
      [&](const PieceFn& piece) {
        for (std::string_view p : SplitChunks(payload)) ATTUNE_RETURN_IF_ERROR(piece(p));
        return absl::OkStatus();
      },
      meta, write);
}

// The chunk as a message (its data copied in).
ChunkFn AsMessages(const std::function<bool(const v1::Chunk&)>& write) {
  return [&write](uint64_t seq, const v1::UpdateMeta* meta, std::string_view data, bool last) {
    v1::Chunk c;
    if (meta) *c.mutable_meta() = *meta;
    c.set_seq(seq);
    c.set_data(std::string(data));
    c.set_last(last);
    return write(c);
  };
}

// The chunk as frames (its data left where it lies; the first's marked
// transient when `first_transient`). Fields in number order, as
// SerializeToString writes them: meta (1), seq (2), data (3: its tag and
// length here), last (5); sha256 (4) is left out.
ChunkFn AsFrames(const std::function<bool(const ChunkFrame&)>& write, bool first_transient) {
  return [&write, first_transient](uint64_t seq, const v1::UpdateMeta* meta,
                                   std::string_view data, bool last) {
    v1::Chunk c;
    if (meta) *c.mutable_meta() = *meta;
    c.set_seq(seq);
    ChunkFrame frame;
    frame.head = c.SerializeAsString();
    if (!data.empty()) {
      google::protobuf::io::StringOutputStream out(&frame.head);
      google::protobuf::io::CodedOutputStream coded(&out);
      coded.WriteTag(google::protobuf::internal::WireFormatLite::MakeTag(
          v1::Chunk::kDataFieldNumber,
          google::protobuf::internal::WireFormatLite::WIRETYPE_LENGTH_DELIMITED));
      coded.WriteVarint64(data.size());
    }
    frame.data = data;
    frame.transient = first_transient && seq == 0;
    if (last) frame.tail = std::string_view("\x28\x01", 2);  // field 5, varint 1
    return write(frame);
  };
}

}  // namespace

bool WriteChunks(std::string_view payload, v1::UpdateMeta meta,
                 const std::function<bool(const v1::Chunk&)>& write,
                 std::string_view payload_sha256) {
  return WritePayload(payload, PayloadMeta(payload, std::move(meta), payload_sha256),
                      AsMessages(write));
}

bool WriteChunkFrames(std::string_view payload, v1::UpdateMeta meta,
                      std::string_view payload_sha256,
                      const std::function<bool(const ChunkFrame&)>& write) {
  return WritePayload(payload, PayloadMeta(payload, std::move(meta), payload_sha256),
                      AsFrames(write, /*first_transient=*/false));
}

namespace {

// EncodeModel(model)'s pieces written as chunks by `write`, the first with
// `meta` completed.
bool WriteModel(const FlatModel& model, v1::UpdateMeta meta, const ChunkFn& write) {
  const uint64_t total = EncodedModelSize(model);
  meta.set_total_bytes(total);
  meta.set_total_sha256(EncodedModelSha256(model));
  return WritePieces(
      total,
      [&](const PieceFn& piece) {
        return ForEachEncodedPiece(model, kMaxChunkBytes, piece);
      },
      meta, write);
}

}  // namespace

bool WriteModelFrames(const FlatModel& model, v1::UpdateMeta meta,
                      const std::function<bool(const ChunkFrame&)>& write) {
  // ForEachEncodedPiece: every piece but the first is a view into the
  // model's values.
  return WriteModel(model, std::move(meta), AsFrames(write, /*first_transient=*/true));
}

bool WriteModelChunks(const FlatModel& model, v1::UpdateMeta meta,
                      const std::function<bool(const v1::Chunk&)>& write) {
  return WriteModel(model, std::move(meta), AsMessages(write));
}

}  // namespace attune

// ---- CheckWireBounds --------------------------------------------------------

namespace attune {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::internal::WireFormatLite;
namespace pbio = google::protobuf::io;

Status Malformed(const Descriptor& type) {
  return absl::InvalidArgumentError(absl::StrCat("a malformed ", type.name(), " message"));
}

// The elements of a packed field of `f`'s type in `bytes`; -1 when the
// bytes are not whole elements (a fixed-size one cut short, a varint that
// does not end or runs past 10 bytes), which protobuf refuses too.
int64_t PackedCount(const FieldDescriptor& f, const std::string& bytes) {
  auto fixed = [&](size_t width) -> int64_t {
    return bytes.size() % width == 0 ? static_cast<int64_t>(bytes.size() / width) : -1;
  };
  switch (f.type()) {
    case FieldDescriptor::TYPE_DOUBLE:
    case FieldDescriptor::TYPE_FIXED64:
    case FieldDescriptor::TYPE_SFIXED64:
      return fixed(8);
    case FieldDescriptor::TYPE_FLOAT:
    case FieldDescriptor::TYPE_FIXED32:
    case FieldDescriptor::TYPE_SFIXED32:
      return fixed(4);
    default: {  // varints: one per byte without the continuation bit
      int64_t n = 0;
      size_t run = 0;
      for (unsigned char c : bytes) {
        if (++run > 10) return -1;
        if ((c & 0x80) == 0) {
          ++n;
          run = 0;
        }
      }
      return run == 0 ? n : -1;
    }
  }
}

// A length-delimited field's length, as protobuf reads it: a varint of at
// most 5 bytes whose value fits an int32 (ReadVarint32 would drop the high
// bits of a fifth byte: 80 80 80 80 40 read as 0, found by
// fuzz/targets/wire_messages.cc), within what is left of the message.
bool ReadLength(pbio::CodedInputStream* in, uint32_t* len) {
  const int start = in->CurrentPosition();
  uint64_t v = 0;
  if (!in->ReadVarint64(&v) || in->CurrentPosition() - start > 5 ||
      v > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()) ||
      static_cast<int64_t>(v) > in->BytesUntilLimit()) {
    return false;
  }
  *len = static_cast<uint32_t>(v);
  return true;
}

// A tag, as protobuf reads it: a varint of at most 5 bytes whose value fits
// 32 bits and is not 0 (CodedInputStream::ReadTag takes longer, overlong
// ones, found by fuzz/targets/wire_messages.cc).
bool ReadTag(pbio::CodedInputStream* in, uint32_t* tag) {
  const int start = in->CurrentPosition();
  uint64_t v = 0;
  if (!in->ReadVarint64(&v) || in->CurrentPosition() - start > 5 || v == 0 ||
      v > std::numeric_limits<uint32_t>::max()) {
    return false;
  }
  *tag = static_cast<uint32_t>(v);
  return true;
}

Status Walk(pbio::CodedInputStream* in, const Descriptor& type, const WireBounds& bounds,
            int depth) {
  if (depth > bounds.max_depth) {
    return absl::InvalidArgumentError(
        absl::StrCat("messages nested more than ", bounds.max_depth, " deep"));
  }
  std::map<int, int64_t> counts;  // per repeated field of this message
  while (true) {
    if (in->BytesUntilLimit() == 0) return absl::OkStatus();
    uint32_t tag = 0;
    if (!ReadTag(in, &tag)) return Malformed(type);
    const int number = WireFormatLite::GetTagFieldNumber(tag);
    const WireFormatLite::WireType wire = WireFormatLite::GetTagWireType(tag);
    const FieldDescriptor* f = type.FindFieldByNumber(number);
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("field ", number, " is not a field of ", type.name()));
    }
    const auto expected =
        WireFormatLite::WireTypeForFieldType(static_cast<WireFormatLite::FieldType>(f->type()));
    const bool packed = f->is_packable() && wire == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (wire != expected && !packed) {
      return absl::InvalidArgumentError(
          absl::StrCat("field ", f->full_name(), " has the wrong wire type"));
    }
    int64_t items = 1;
    if (packed) {
      uint32_t len = 0;
      std::string bytes;
      if (!ReadLength(in, &len) || !in->ReadString(&bytes, static_cast<int>(len))) {
        return Malformed(type);
      }
      items = PackedCount(*f, bytes);
      if (items < 0) return Malformed(type);
    } else if (f->type() == FieldDescriptor::TYPE_MESSAGE) {
      uint32_t len = 0;
      if (!ReadLength(in, &len)) return Malformed(type);
      const pbio::CodedInputStream::Limit limit = in->PushLimit(static_cast<int>(len));
      ATTUNE_RETURN_IF_ERROR(Walk(in, *f->message_type(), bounds, depth + 1));
      in->PopLimit(limit);
    } else if (f->type() == FieldDescriptor::TYPE_BYTES) {
      uint32_t len = 0;
      if (!ReadLength(in, &len) || !in->Skip(static_cast<int>(len))) return Malformed(type);
    } else if (f->type() == FieldDescriptor::TYPE_STRING) {
      // protobuf refuses a proto3 string that is not UTF-8: so does the walk.
      uint32_t len = 0;
      std::string text;
      if (!ReadLength(in, &len) || !in->ReadString(&text, static_cast<int>(len))) {
        return Malformed(type);
      }
      if (!IsUtf8(text)) {
        return absl::InvalidArgumentError(
            absl::StrCat("field ", f->full_name(), " is not UTF-8"));
      }
    } else if (!WireFormatLite::SkipField(in, tag)) {
      return Malformed(type);
    }
    if (f->is_repeated()) {
      auto it = bounds.repeated.find(f->full_name());
      const int64_t max = it != bounds.repeated.end() ? it->second : bounds.default_repeated;
      int64_t& count = counts[number];
      count += items;
      if (count > max) {
        return absl::InvalidArgumentError(absl::StrCat(
            f->full_name(), ": more than ", max, " entries (the most this study allows)"));
      }
    }
  }
}

}  // namespace

Status CheckWireBounds(std::string_view bytes, const google::protobuf::Descriptor& type,
                       const WireBounds& bounds) {
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError("message too large");
  }
  pbio::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                            static_cast<int>(bytes.size()));
  in.PushLimit(static_cast<int>(bytes.size()));
  return Walk(&in, type, bounds, 0);
}

}  // namespace attune

// ---- ReadChunkPieces ---------------------------------------------------------

namespace attune {
namespace {

// The pieces of one message as one protobuf input stream.
class PiecesInputStream : public pbio::ZeroCopyInputStream {
 public:
  explicit PiecesInputStream(std::span<const std::string_view> pieces) : pieces_(pieces) {}
  bool Next(const void** data, int* size) override {
    while (index_ < pieces_.size() && offset_ == pieces_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
    if (index_ == pieces_.size()) return false;
    const std::string_view p = pieces_[index_];
    const size_t n = std::min<size_t>(p.size() - offset_, std::numeric_limits<int>::max());
    *data = p.data() + offset_;
    *size = static_cast<int>(n);
    offset_ += n;
    count_ += static_cast<int64_t>(n);
    return true;
  }
  void BackUp(int count) override {  // within the piece Next gave last
    offset_ -= static_cast<size_t>(count);
    count_ -= count;
  }
  bool Skip(int count) override {
    const void* data;
    int size;
    while (count > 0) {
      if (!Next(&data, &size)) return false;
      if (size > count) {
        BackUp(size - count);
        return true;
      }
      count -= size;
    }
    return true;
  }
  int64_t ByteCount() const override { return count_; }

 private:
  std::span<const std::string_view> pieces_;
  size_t index_ = 0, offset_ = 0;
  int64_t count_ = 0;
};

// [offset, offset + len) of the joined pieces, as views (`views`) or bytes (`bytes`).
void TakeRange(std::span<const std::string_view> pieces, uint64_t offset, uint64_t len,
               std::vector<std::string_view>* views, std::string* bytes) {
  for (std::string_view p : pieces) {
    if (len == 0) return;
    if (offset >= p.size()) {
      offset -= p.size();
      continue;
    }
    const std::string_view part = p.substr(offset, std::min<uint64_t>(len, p.size() - offset));
    if (views != nullptr) views->push_back(part);
    if (bytes != nullptr) bytes->append(part);
    len -= part.size();
    offset = 0;
  }
}

}  // namespace

uint64_t ChunkPieces::data_size() const {
  uint64_t n = 0;
  for (std::string_view p : data) n += p.size();
  return n;
}

Status ReadChunkPieces(std::span<const std::string_view> message, const WireBounds& bounds,
                       ChunkPieces* out) {
  const Descriptor& type = *v1::Chunk::descriptor();
  uint64_t total = 0;
  for (std::string_view p : message) total += p.size();
  if (total > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
    return absl::InvalidArgumentError("message too large");
  }
  const int size = static_cast<int>(total);
  {  // the bounds, over the whole message (data is skipped, not read)
    PiecesInputStream stream(message);
    pbio::CodedInputStream in(&stream);
    in.PushLimit(size);
    ATTUNE_RETURN_IF_ERROR(Walk(&in, type, bounds, 0));
  }
  // Then each top-level field: data is noted where it lies, the others are
  // kept as they were written, for protobuf to parse.
  PiecesInputStream stream(message);
  pbio::CodedInputStream in(&stream);
  in.PushLimit(size);
  std::string rest;
  uint64_t data_at = 0, data_len = 0;
  while (in.BytesUntilLimit() > 0) {
    const int start = in.CurrentPosition();
    uint32_t tag = 0;
    if (!ReadTag(&in, &tag)) return Malformed(type);
    if (tag == WireFormatLite::MakeTag(v1::Chunk::kDataFieldNumber,
                                       WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) {
      uint32_t len = 0;
      if (!ReadLength(&in, &len)) return Malformed(type);
      data_at = static_cast<uint64_t>(in.CurrentPosition());
      data_len = len;
      if (!in.Skip(static_cast<int>(len))) return Malformed(type);
      continue;
    }
    if (!WireFormatLite::SkipField(&in, tag)) return Malformed(type);
    TakeRange(message, static_cast<uint64_t>(start),
              static_cast<uint64_t>(in.CurrentPosition() - start), nullptr, &rest);
  }
  out->rest.Clear();
  out->data.clear();
  if (!out->rest.ParseFromString(rest)) return Malformed(type);
  TakeRange(message, data_at, data_len, &out->data, nullptr);
  return absl::OkStatus();
}

}  // namespace attune
