// What a site has released, kept on disk across restarts: the site's
// defence against differencing. Two sums of one site's values over
// different sets of survivors give away that site's values; so do two
// evaluations that differ only in who took part. A release is identified
// by what it sums -- its purpose, the digest of the model it was computed
// on, the splits and a digest of the layout (columns, bins, cells) -- never
// by a round number or label the coordinator picks.
//
//   - The same release again, over the same survivors, sums the same
//     values: allowed, and not counted again (a retried round).
//   - The same release over other survivors: refused.
//   - An evaluation release of a model's split beyond the terms'
//     audit.max_releases: refused.
//   - A differentially private release (a noised update, an update that
//     goes into a noised sum, a noised audit) is charged to the site's own
//     RDP ledger, kept in the same file; one that would take the site's ε
//     past its budget is refused. The site charges what it sends, whether
//     or not the coordinator's round then succeeds.
// A release is recorded (the file rewritten atomically) before anything of
// it leaves the site, so a restarted site does not forget it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "attune/common/privacy.h"
#include "attune/common/status.h"

namespace attune {

inline constexpr char kReleasesFile[] = "releases.json";
// A ledger larger than this is refused when read (it grows by one small
// entry per release).
inline constexpr size_t kMaxReleasesBytes = 64 << 20;

struct Release {
  std::string purpose;               // "update" or "evaluation"
  std::string model_digest;          // SHA-256 (hex) of the encoded model
  std::vector<std::string> splits;   // evaluation: the splits it sums
  std::string layout_digest;         // evaluation: what is summed per split
  std::vector<std::string> survivors;  // the sites in the sum, sorted ({self} in the clear)
  int64_t round = -1;                // for the log only
};

// What the terms (tightened by the site's own policy) allow a release.
struct ReleaseLimits {
  int max_releases = 2;  // evaluation releases per (model, split)
  // Noise multiplier of this release's Gaussian mechanism, 0 for a release
  // that is not differentially private (charged nothing).
  double noise_multiplier = 0;
  double epsilon = 0, delta = 0;  // the site's budget, when noise_multiplier > 0
};

class SiteReleases {
 public:
  // Reads <state_dir>/releases.json (an absent file: nothing released yet).
  static StatusOr<SiteReleases> Open(const std::string& state_dir);

  // OK when `r` may be released: PermissionDenied naming the earlier
  // release or the limit, ResourceExhausted when its charge would take the
  // site past its privacy budget. A repeat of a recorded release is always
  // OK and charged nothing (the same sum with the same noise).
  Status Check(const Release& r, const ReleaseLimits& limits) const;
  // Check, then record `r` and its charge on disk (unless it is a repeat).
  Status Record(const Release& r, const ReleaseLimits& limits);

  size_t size() const { return releases_.size(); }
  // ε spent by this site's differentially private releases (0 if none).
  double epsilon() const { return ledger_ ? ledger_->epsilon() : 0.0; }
  int dp_releases() const { return ledger_ ? ledger_->releases() : 0; }

 private:
  SiteReleases() = default;
  Status Save() const;
  // The ledger to charge under `limits` (a fresh one before the first DP
  // release), with the budget now in force.
  StatusOr<privacy::Accountant> Charged(const ReleaseLimits& limits) const;
  std::string path_;
  std::vector<Release> releases_;
  std::optional<privacy::Accountant> ledger_;  // after the first DP release
};

}  // namespace attune
