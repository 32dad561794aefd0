#include "attune/coordinator/round_history.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace attune::coordinator {
namespace {

using nlohmann::json;

// `j[a]` (or `j[a][b]`) when it is a number.
std::optional<double> Number(const json& j, const char* a, const char* b = nullptr) {
  auto it = j.find(a);
  if (it == j.end()) return std::nullopt;
  const json* v = &*it;
  if (b) {
    if (!v->is_object()) return std::nullopt;
    auto jt = v->find(b);
    if (jt == v->end()) return std::nullopt;
    v = &*jt;
  }
  if (!v->is_number()) return std::nullopt;
  return v->get<double>();
}

json OrNull(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

}  // namespace

StatusOr<RoundRecord> RoundRecord::FromJson(int64_t round, std::string text) {
  // (`json` here is the record's member: the library's type is spelled out.)
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::DataLossError(absl::StrCat("the record of round ", round, " is not a JSON object"));
  }
  RoundRecord r;
  r.round = round;
  if (auto n = Number(j, "sites_reported")) r.sites_reported = static_cast<int>(*n);
  r.train_loss = Number(j, "train_loss");
  r.val_loss = Number(j, "val", "loss");
  r.val_auc = Number(j, "val", "auc");
  r.seconds = Number(j, "seconds");
  if (auto t = j.find("test"); t != j.end() && t->is_object()) {
    Test test;
    if (auto n = Number(j, "test", "n")) test.n = static_cast<int64_t>(*n);
    test.auc = Number(j, "test", "auc");
    test.accuracy = Number(j, "test", "accuracy");
    test.loss = Number(j, "test", "loss");
    r.test = test;
  }
  r.json = std::move(text);
  return r;
}

StatusOr<RoundHistory> RoundHistory::Load(const StateStore& store) {
  RoundHistory h;
  const int64_t last = store.LastCommittedRound();
  for (int64_t r = 0; r <= last; ++r) {
    ATTUNE_ASSIGN_OR_RETURN(std::string text, store.LoadRecord(r));
    ATTUNE_ASSIGN_OR_RETURN(RoundRecord record, RoundRecord::FromJson(r, std::move(text)));
    h.rounds_.push_back(std::move(record));
  }
  for (int64_t r = last; r >= 0; --r) {
    ATTUNE_ASSIGN_OR_RETURN(std::string audit, store.LoadAudit(r));
    if (audit.empty()) continue;
    h.audit_round_ = r;
    h.audit_json_ = std::move(audit);
    break;
  }
  return h;
}

Status RoundHistory::Append(RoundRecord record, std::string audit_json) {
  const int64_t next = static_cast<int64_t>(rounds_.size());
  if (record.round != next) {
    return absl::InternalError(
        absl::StrCat("round ", record.round, " recorded after ", next - 1, " rounds"));
  }
  if (!audit_json.empty()) {
    audit_round_ = record.round;
    audit_json_ = std::move(audit_json);
  }
  rounds_.push_back(std::move(record));
  return absl::OkStatus();
}

std::string RoundHistory::SummaryJson(const SummaryHeader& header) const {
  const int64_t last = static_cast<int64_t>(rounds_.size()) - 1;
  json summary;
  summary["study_id"] = header.study_id;
  summary["total_rounds"] = header.total_rounds;
  summary["strategy"] = header.strategy;
  summary["rounds"] = std::max<int64_t>(last, 0);
  summary["finished"] = last == header.total_rounds || !header.stopped_early.empty();
  if (!header.stopped_early.empty()) summary["stopped_early"] = header.stopped_early;
  json train_loss = json::array(), val_loss = json::array(), val_auc = json::array();
  for (const RoundRecord& r : rounds_) {
    if (r.round == 0) {
      summary["initial"] = {{"val_loss", OrNull(r.val_loss)}, {"val_auc", OrNull(r.val_auc)}};
      continue;
    }
    train_loss.push_back(OrNull(r.train_loss));
    val_loss.push_back(OrNull(r.val_loss));
    val_auc.push_back(OrNull(r.val_auc));
    if (r.test) {
      summary["final"] = {{"round", r.round},
                          {"split", "test"},
                          {"n", r.test->n},
                          {"auc", OrNull(r.test->auc)},
                          {"accuracy", OrNull(r.test->accuracy)},
                          {"loss", OrNull(r.test->loss)}};
    }
  }
  summary["train_loss"] = train_loss;
  summary["val_loss"] = val_loss;
  summary["val_auc"] = val_auc;
  // The records as they were committed, one per line, after the rest.
  std::string out = summary.dump(2);
  out.pop_back();  // the closing brace
  while (!out.empty() && out.back() == '\n') out.pop_back();
  out += ",\n  \"history\": [";
  for (size_t i = 0; i < rounds_.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "\n    " : ",\n    ", rounds_[i].json);
  }
  out += rounds_.empty() ? "]\n}\n" : "\n  ]\n}\n";
  return out;
}

}  // namespace attune::coordinator
