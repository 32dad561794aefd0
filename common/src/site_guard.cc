#include "attune/common/site_guard.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/shamir.h"

namespace attune {
namespace {

Status Refuse(const std::string& term, const std::string& what) {
  return absl::PermissionDeniedError(
      absl::StrCat("refused by the study terms (", term, "): ", what));
}

bool Contains(const std::vector<std::string>& list, const std::string& item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

// Relative slack for comparing the coordinator's doubles with the terms'.
constexpr double kSlack = 1e-9;

}  // namespace

int MinimumThreshold(int sites, int degree) {
  int holders = sites;
  if (degree > 0 && degree < sites - 1) {
    const int even = degree + (degree % 2);
    holders = std::min(sites, even + 1);
  }
  return holders / 2 + 1;
}

bool IsReservedName(const std::string& name) {
  return name == "coordinator" || name.rfind(kReservedPrefix, 0) == 0;
}

StatusOr<SiteGuard> SiteGuard::Load(std::string terms_path, std::string ca_pem, std::string site,
                                    std::string study_id) {
  StatusOr<StudyTerms> terms = LoadTerms(terms_path, ca_pem);
  if (!terms.ok()) {
    return Status(terms.status().code(),
                  absl::StrCat(terms.status().message(),
                               " (a site's bundle carries the study's signed terms, "
                               "study.terms, from `attune provision`)"));
  }
  if (terms->study_id != study_id) {
    return absl::InvalidArgumentError(absl::StrCat(terms_path, ": the terms are study '",
                                                   terms->study_id, "'s, not '", study_id, "'s"));
  }
  SiteGuard g;
  g.terms_path_ = std::move(terms_path);
  g.ca_pem_ = std::move(ca_pem);
  g.site_ = std::move(site);
  g.study_id_ = std::move(study_id);
  g.terms_ = *std::move(terms);
  return g;
}

Status SiteGuard::Update(const std::string& signed_text) {
  if (signed_text.empty()) return absl::OkStatus();
  StatusOr<StudyTerms> next = VerifyTerms(signed_text, ca_pem_);
  if (!next.ok()) {
    return absl::PermissionDeniedError(
        absl::StrCat("the terms forwarded with the task: ", next.status().message()));
  }
  if (next->study_id != study_id_) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the terms forwarded with the task are study '", next->study_id, "'s, not this one's"));
  }
  if (next->version < terms_.version) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the terms forwarded with the task are stale: version ", next->version,
        ", but this site holds version ", terms_.version));
  }
  if (next->version == terms_.version) {
    if (!TermsDifference(*next, terms_).empty()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the terms forwarded with the task differ from this site's at the same version ",
          terms_.version, " (in ", TermsDifference(*next, terms_), ")"));
    }
    return absl::OkStatus();
  }
  const std::string changed = TermsDifference(*next, terms_);
  spdlog::info("study terms version {} adopted (was {}{}{})", next->version, terms_.version,
               changed.empty() ? "" : "; first change: ", changed);
  terms_ = *std::move(next);
  // Kept so that a restarted site never goes back to older terms.
  if (Status s = WriteFileAtomic(terms_path_, signed_text); !s.ok()) {
    spdlog::warn("cannot keep the newer terms in {}: {}", terms_path_, std::string(s.message()));
  }
  return absl::OkStatus();
}

Status SiteGuard::CheckJoin(const v1::JoinReply& reply) {
  if (Status s = Update(reply.terms()); !s.ok()) return s;
  StatusOr<ModelConfig> model = ModelConfig::FromJson(reply.model_config_json());
  if (!model.ok() || model->ToJson() != terms_.model_config_json) {
    return Refuse("model", "the coordinator's model configuration is not the one the terms sign");
  }
  for (const auto& column : reply.audit_columns()) {
    if (!Contains(terms_.audit_columns, column)) {
      return Refuse("audit.columns", absl::StrCat("the coordinator asks to audit column '",
                                                  column, "', which the terms do not list"));
    }
  }
  if (reply.histogram_bins() > terms_.max_histogram_bins) {
    return Refuse("audit.histogram_bins",
                  absl::StrCat(reply.histogram_bins(), " score bins asked, at most ",
                               terms_.max_histogram_bins, " allowed"));
  }
  return absl::OkStatus();
}

Status SiteGuard::CheckTask(const v1::RoundTask& task) {
  ATTUNE_RETURN_IF_ERROR(Update(task.terms()));
  if (task.study_id() != study_id_) {
    return Refuse("study_id", absl::StrCat("a task for study '", task.study_id(), "'"));
  }
  const bool train = task.kind() == v1::RoundTask::TRAIN;
  const bool evaluate = task.kind() == v1::RoundTask::EVALUATE;
  if (train && (task.round() < 1 || task.round() > terms_.rounds)) {
    return Refuse("rounds", absl::StrCat("a TRAIN task for round ", task.round(),
                                         "; the study trains rounds 1 to ", terms_.rounds));
  }
  if ((train || evaluate) && terms_.secure_aggregation && !task.has_secagg()) {
    return Refuse("secure_aggregation",
                  absl::StrCat("a ", train ? "TRAIN" : "EVALUATE",
                               " task without secure aggregation; the terms require it, so "
                               "nothing leaves this site in the clear"));
  }
  if ((train || evaluate) && task.has_secagg()) ATTUNE_RETURN_IF_ERROR(CheckSecAgg(task));
  if (train) ATTUNE_RETURN_IF_ERROR(CheckPrivacy(task));
  if (evaluate) ATTUNE_RETURN_IF_ERROR(CheckLayout(task));
  return absl::OkStatus();
}

Status SiteGuard::CheckSecAgg(const v1::RoundTask& task) const {
  const v1::SecAggSetup& setup = task.secagg();
  const int n = setup.sites_size();
  if (n < kMinSecureSites || n > shamir::kMaxShares) {
    return Refuse("secure_aggregation",
                  absl::StrCat("a secure aggregation among ", n, " sites; it needs ",
                               kMinSecureSites, " to ", shamir::kMaxShares));
  }
  std::set<std::string> seen;
  for (const std::string& name : setup.sites()) {
    if (IsReservedName(name)) {
      return Refuse("roster", absl::StrCat("'", name,
                                           "' is not a site and cannot take part in a secure "
                                           "aggregation"));
    }
    if (!terms_.Admits(name)) {
      return Refuse("roster", absl::StrCat("peer '", name, "' is ",
                                           Contains(terms_.roster, name) ? "revoked"
                                                                         : "not on the roster"));
    }
    if (!seen.insert(name).second) {
      return Refuse("roster", absl::StrCat("peer '", name, "' is named twice"));
    }
  }
  if (setup.index() < 0 || setup.index() >= n || setup.sites(setup.index()) != site_) {
    return Refuse("secure_aggregation",
                  absl::StrCat("the setup does not give this site (", site_, ") its own index"));
  }
  if (setup.degree() < 0 || setup.degree() > n) {
    return Refuse("secure_aggregation", absl::StrCat("neighbour degree ", setup.degree()));
  }
  const int minimum = std::max(terms_.min_threshold, MinimumThreshold(n, setup.degree()));
  if (setup.threshold() < minimum || setup.threshold() > n) {
    return Refuse("secure_aggregation.min_threshold",
                  absl::StrCat("threshold ", setup.threshold(), " among ", n,
                               " sites; this site needs at least ", minimum,
                               " (more than half of each secret's holders",
                               terms_.min_threshold > 0 ? ", and the terms' minimum" : "", ")"));
  }
  return absl::OkStatus();
}

Status SiteGuard::CheckPrivacy(const v1::RoundTask& task) const {
  if (!terms_.privacy_enabled()) return absl::OkStatus();
  const v1::DpSetup& dp = task.dp();
  if (!(dp.clip_norm() > 0) || dp.clip_norm() > terms_.clip_norm * (1 + kSlack)) {
    return Refuse("privacy.clip_norm",
                  absl::StrCat("clip norm ", dp.clip_norm(), "; the terms need (0, ",
                               terms_.clip_norm, "]"));
  }
  // The noise the terms' multiplier implies for this clip: all of it at
  // each site in local mode; in central mode each site adds its share, so
  // that any `threshold` survivors together add σ·C.
  double shares = 1;
  if (terms_.privacy_mode == "central") {
    if (!task.has_secagg()) {
      return Refuse("privacy.mode", "central DP without secure aggregation");
    }
    shares = task.secagg().threshold();
  }
  const double needed = terms_.noise_multiplier * dp.clip_norm() / std::sqrt(shares);
  if (!(dp.noise_stddev() >= needed * (1 - kSlack))) {
    return Refuse("privacy.noise_multiplier",
                  absl::StrCat("noise stddev ", dp.noise_stddev(), "; the terms need at least ",
                               needed, " at clip ", dp.clip_norm()));
  }
  return absl::OkStatus();
}

Status SiteGuard::CheckLayout(const v1::RoundTask& task) const {
  if (!task.has_eval_layout()) return absl::OkStatus();
  const v1::EvalLayout& layout = task.eval_layout();
  if (layout.bins() > terms_.max_histogram_bins) {
    return Refuse("audit.histogram_bins",
                  absl::StrCat(layout.bins(), " score bins asked, at most ",
                               terms_.max_histogram_bins, " allowed"));
  }
  auto allowed = [&](const std::string& column, const std::string& value) {
    if (!Contains(terms_.audit_columns, column)) return false;
    if (value == kOtherValue) return true;
    auto it = terms_.audit_values.find(column);
    return it != terms_.audit_values.end() && Contains(it->second, value);
  };
  for (const auto& cell : layout.cells()) {
    const size_t join = cell.column().find(kCellJoin);
    bool ok;
    if (join == std::string::npos) {
      ok = allowed(cell.column(), cell.value());
    } else {
      const size_t vjoin = cell.value().find(kCellJoin);
      const size_t width = sizeof(kCellJoin) - 1;
      ok = vjoin != std::string::npos &&
           allowed(cell.column().substr(0, join), cell.value().substr(0, vjoin)) &&
           allowed(cell.column().substr(join + width), cell.value().substr(vjoin + width));
    }
    if (!ok) {
      return Refuse("audit.columns", absl::StrCat("an audit cell ", cell.column(), " = ",
                                                  cell.value(), " the terms do not define"));
    }
  }
  return absl::OkStatus();
}

}  // namespace attune
