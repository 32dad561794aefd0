#include "attune/common/wire.h"

#include "absl/strings/str_cat.h"
#include "attune/common/tensor_codec.h"

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

using PieceFn = std::function<Status(std::string_view)>;

// Writes the pieces `for_each` yields as chunks; the first carries `meta`.
bool WritePieces(uint64_t total, const std::function<Status(const PieceFn&)>& for_each,
                 v1::UpdateMeta meta, const std::function<bool(const v1::Chunk&)>& write) {
  uint64_t seq = 0, sent = 0;
  const Status s = for_each([&](std::string_view piece) {
    v1::Chunk c;
    if (seq == 0) *c.mutable_meta() = meta;
    c.set_seq(seq++);
    c.set_data(std::string(piece));
    c.set_sha256(Sha256(piece));
    sent += piece.size();
    c.set_last(sent == total);
    return write(c) ? absl::OkStatus() : absl::CancelledError("the peer went away");
  });
  return s.ok();
}

}  // namespace

bool WriteChunks(std::string_view payload, v1::UpdateMeta meta,
                 const std::function<bool(const v1::Chunk&)>& write) {
  meta.set_total_bytes(payload.size());
  meta.set_total_sha256(Sha256(payload));
  return WritePieces(
      payload.size(),
      [&](const PieceFn& piece) {
        for (std::string_view p : SplitChunks(payload)) ATTUNE_RETURN_IF_ERROR(piece(p));
        return absl::OkStatus();
      },
      std::move(meta), write);
}

bool WriteModelChunks(const FlatModel& model, v1::UpdateMeta meta,
                      const std::function<bool(const v1::Chunk&)>& write) {
  const uint64_t total = EncodedModelSize(model);
  meta.set_total_bytes(total);
  meta.set_total_sha256(EncodedModelSha256(model));
  return WritePieces(
      total,
      [&](const PieceFn& piece) {
        return ForEachEncodedPiece(model, kMaxChunkBytes, piece);
      },
      std::move(meta), write);
}

}  // namespace attune
