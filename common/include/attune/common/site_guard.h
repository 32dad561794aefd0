// The site's side of trust: what a site checks before it does what the
// coordinator asks (docs/threat-model.md). The coordinator is not trusted
// with what a site reveals, so every parameter that decides it -- the
// peers of a secure aggregation and its threshold, the clip and noise of
// differential privacy, the audit's columns and bins, the model -- must be
// one the study's signed terms (terms.h) allow. A refusal names the term.
//
// Used by attune-worker's federation client before each task; the
// secure-aggregation site (secure_update.h) then checks that each relayed
// peer's certificate is the study CA's, for client authentication, and
// issued to the name the (checked) setup gives it.
#pragma once

#include <string>

#include "attune/common/status.h"
#include "attune/common/terms.h"
#include "attune/v1/federation.pb.h"

namespace attune {

// The smallest secure-aggregation threshold a site accepts among n sites
// with neighbour-graph degree `degree` (0: everyone masks with everyone):
// more than half of the holders of each secret -- n, or degree + 1 (degree
// rounded up to even, as secagg::Graph does) under SecAgg+ -- so that no
// set of colluders smaller than the threshold, nor two disjoint sets of
// survivors, can rebuild a live site's secrets.
int MinimumThreshold(int sites, int degree);

// The fewest sites a secure aggregation may have: with two, each site
// learns the other's input from the sum.
inline constexpr int kMinSecureSites = 3;

// True for the names no site may have: the coordinator's CN and the
// reserved prefix (the operator's).
bool IsReservedName(const std::string& name);

class SiteGuard {
 public:
  // Verifies the terms at `terms_path` (the site's bundle) against the study
  // CA. `site` is this site's certificate CN, `study_id` the study it joins.
  // Newer terms adopted later are written back to `terms_path`.
  static StatusOr<SiteGuard> Load(std::string terms_path, std::string ca_pem, std::string site,
                                  std::string study_id);

  const StudyTerms& terms() const { return terms_; }

  // Adopts forwarded terms: they must verify, name this study, and be at
  // least as new as the ones held (an older version is stale: refused).
  // Empty text keeps the current terms.
  Status Update(const std::string& signed_text);

  // The Join reply: the model must be the terms', the audit columns among
  // the terms' and the histogram no finer than they allow.
  Status CheckJoin(const v1::JoinReply& reply);

  // A task: its forwarded terms first (Update), then every parameter the
  // terms bound. PermissionDenied naming the term on a refusal.
  Status CheckTask(const v1::RoundTask& task);

 private:
  SiteGuard() = default;
  Status CheckSecAgg(const v1::RoundTask& task) const;
  Status CheckPrivacy(const v1::RoundTask& task) const;
  Status CheckLayout(const v1::RoundTask& task) const;

  std::string terms_path_, ca_pem_, site_, study_id_;
  StudyTerms terms_;
};

}  // namespace attune
