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
// A release is recorded (the file rewritten atomically) before anything of
// it leaves the site, so a restarted site does not forget it.
#pragma once

#include <string>
#include <vector>

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

class SiteReleases {
 public:
  // Reads <state_dir>/releases.json (an absent file: nothing released yet).
  static StatusOr<SiteReleases> Open(const std::string& state_dir);

  // OK when `r` may be released: PermissionDenied naming the earlier
  // release, or the limit, otherwise. `max_releases` bounds evaluation
  // releases per (model, split).
  Status Check(const Release& r, int max_releases) const;
  // Check, then record `r` on disk (unless it is a repeat of a recorded one).
  Status Record(const Release& r, int max_releases);

  size_t size() const { return releases_.size(); }

 private:
  SiteReleases() = default;
  Status Save() const;
  std::string path_;
  std::vector<Release> releases_;
};

}  // namespace attune
