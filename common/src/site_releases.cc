#include "attune/common/site_releases.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "attune/common/config.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

using nlohmann::json;

bool SameRelease(const Release& a, const Release& b) {
  return a.purpose == b.purpose && a.model_digest == b.model_digest && a.splits == b.splits &&
         a.layout_digest == b.layout_digest;
}

std::string Describe(const Release& r) {
  std::string what = r.purpose == "update" ? "the update from model "
                                           : "the evaluation of model ";
  absl::StrAppend(&what, r.model_digest.substr(0, 12));
  if (!r.splits.empty()) absl::StrAppend(&what, " on ", absl::StrJoin(r.splits, "+"));
  return what;
}

}  // namespace

StatusOr<SiteReleases> SiteReleases::Open(const std::string& state_dir) {
  std::error_code ec;
  std::filesystem::create_directories(state_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create the site's state directory ", state_dir, ": ", ec.message()));
  }
  SiteReleases s;
  s.path_ = (std::filesystem::path(state_dir) / kReleasesFile).string();
  if (!std::filesystem::exists(s.path_, ec)) return s;
  if (std::filesystem::file_size(s.path_, ec) > kMaxReleasesBytes) {
    return absl::FailedPreconditionError(absl::StrCat(s.path_, ": over ", kMaxReleasesBytes,
                                                      " bytes; not a release ledger"));
  }
  ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(s.path_));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  const auto bad = [&](const std::string& why) {
    return absl::DataLossError(absl::StrCat(
        s.path_, ": ", why,
        " (the site's record of what it released; it is never rewritten by hand)"));
  };
  if (!j.is_object() || !j.contains("releases") || !j["releases"].is_array()) {
    return bad("not a release ledger");
  }
  try {
    for (const json& e : j["releases"]) {
      Release r;
      r.purpose = e.at("purpose").get<std::string>();
      r.model_digest = e.at("model").get<std::string>();
      r.splits = e.at("splits").get<std::vector<std::string>>();
      r.layout_digest = e.at("layout").get<std::string>();
      r.survivors = e.at("survivors").get<std::vector<std::string>>();
      r.round = e.at("round").get<int64_t>();
      s.releases_.push_back(std::move(r));
    }
  } catch (const json::exception& e) {
    return bad(e.what());
  }
  if (j.contains("privacy")) {
    auto ledger = privacy::Accountant::FromJson(j["privacy"].dump());
    if (!ledger.ok()) return bad(std::string(ledger.status().message()));
    s.ledger_.emplace(std::move(*ledger));
  }
  return s;
}

Status SiteReleases::Check(const Release& r, const ReleaseLimits& limits) const {
  int earlier_of_split = 0;
  for (const Release& e : releases_) {
    if (SameRelease(e, r)) {
      if (e.survivors == r.survivors) return absl::OkStatus();  // the same sum again
      return absl::PermissionDeniedError(absl::StrCat(
          "refusing to release ", Describe(r), " for {", absl::StrJoin(r.survivors, ", "),
          "}: this site already released it for {", absl::StrJoin(e.survivors, ", "),
          "} (round ", e.round, "), and two sums over different sites would reveal a site's "
          "values"));
    }
    if (r.purpose == "evaluation" && e.purpose == r.purpose &&
        e.model_digest == r.model_digest) {
      for (const auto& split : r.splits) {
        if (std::find(e.splits.begin(), e.splits.end(), split) != e.splits.end()) {
          ++earlier_of_split;
          break;
        }
      }
    }
  }
  if (r.purpose == "evaluation" && earlier_of_split >= limits.max_releases) {
    return absl::PermissionDeniedError(absl::StrCat(
        "refused by the study terms (audit.max_releases): ", Describe(r), " was released ",
        earlier_of_split, " time(s) already, the most the terms allow"));
  }
  if (limits.noise_multiplier > 0) {
    ATTUNE_ASSIGN_OR_RETURN(privacy::Accountant ledger, Charged(limits));
    const double after = ledger.EpsilonAfter(1.0, limits.noise_multiplier);
    if (after > limits.epsilon) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "refused by this site's privacy budget: releasing %s would take the site's epsilon "
          "from %.4g to %.4g, past its budget of %.4g (delta %.3g) after %d private "
          "release(s)",
          Describe(r), ledger.epsilon(), after, limits.epsilon, limits.delta,
          ledger.releases()));
    }
  }
  return absl::OkStatus();
}

StatusOr<privacy::Accountant> SiteReleases::Charged(const ReleaseLimits& limits) const {
  if (!ledger_) return privacy::Accountant::Make(limits.epsilon, limits.delta);
  privacy::Accountant ledger = *ledger_;
  if (ledger.delta() != limits.delta) {
    return absl::FailedPreconditionError(absl::StrCat(
        path_, ": the site's privacy ledger is kept at delta = ", ledger.delta(),
        ", the terms now say ", limits.delta, "; a ledger's delta cannot change"));
  }
  ATTUNE_RETURN_IF_ERROR(ledger.SetBudget(limits.epsilon));
  return ledger;
}

Status SiteReleases::Record(const Release& r, const ReleaseLimits& limits) {
  ATTUNE_RETURN_IF_ERROR(Check(r, limits));
  for (const Release& e : releases_) {
    if (SameRelease(e, r)) return absl::OkStatus();  // Check: the same survivors
  }
  const std::optional<privacy::Accountant> before = ledger_;
  if (limits.noise_multiplier > 0) {
    ATTUNE_ASSIGN_OR_RETURN(privacy::Accountant ledger, Charged(limits));
    ATTUNE_RETURN_IF_ERROR(
        ledger.Spend(1.0, limits.noise_multiplier, absl::StrCat("round ", r.round)));
    ledger_.emplace(std::move(ledger));
  }
  releases_.push_back(r);
  Status s = Save();
  if (!s.ok()) {
    releases_.pop_back();
    ledger_ = before;
  }
  return s;
}

Status SiteReleases::Save() const {
  json list = json::array();
  for (const Release& r : releases_) {
    list.push_back({{"purpose", r.purpose},
                    {"model", r.model_digest},
                    {"splits", r.splits},
                    {"layout", r.layout_digest},
                    {"survivors", r.survivors},
                    {"round", r.round}});
  }
  json out{{"releases", list}};
  if (ledger_) out["privacy"] = json::parse(ledger_->ToJson());
  return WriteFileAtomic(path_, out.dump(1) + "\n");
}

}  // namespace attune
