// A site's configuration file, site.json, written by `attune provision` next
// to the site's TLS bundle:
//   {"study_id": "lung-2026", "site_id": "st-marys",
//    "coordinator": "coord.example.org:7443", "tls_dir": "."}
// `attune-worker --config site.json` reads it; its flags override each value.
//
// An optional "policy" object is the site's own, stricter than the study's
// signed terms; it may only tighten them, never loosen:
//   "policy": {"min_cell": 20,            // a larger k than audit.min_cell
//              "epsilon": 3.0,            // a smaller budget than privacy.epsilon
//              "exclude_audit_columns": ["ethnicity"]}  // never audited here
// Combined with the worker's flags, the strictest of each wins.
#pragma once

#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune {

inline constexpr char kSiteConfigFile[] = "site.json";

struct SitePolicy {
  int min_cell = 0;      // 0: the terms' k
  double epsilon = 0;    // 0: the terms' budget
  // Audit columns this site never reports: their cells (and intersections
  // with them) leave it as held back (eval_stats.h HoldBackColumns).
  std::vector<std::string> exclude_audit_columns;

  // The stricter of this and `other`, field by field.
  SitePolicy Strictest(const SitePolicy& other) const;
  bool empty() const { return min_cell == 0 && epsilon == 0 && exclude_audit_columns.empty(); }
};

struct SiteConfig {
  std::string study_id;     // the study to join
  std::string site_id;      // this site's certificate CN
  std::string coordinator;  // host:port the coordinator is reached at
  std::string tls_dir;      // the bundle (ca.crt, cert.crt, key.pem)
  SitePolicy policy;
};

// Reads and checks a site.json. study_id, site_id and coordinator are
// required, tls_dir defaults to "." and, when relative, is resolved against
// the file's folder. Unknown fields are refused. Errors name the file and
// the field, e.g. `bundle/site.json: coordinator: 'coord' is not host:port`.
StatusOr<SiteConfig> LoadSiteConfig(const std::string& path);

// The JSON text of `config`, fields as given (tls_dir is not resolved).
std::string FormatSiteConfig(const SiteConfig& config);

// The host of a "host:port" or "[IPv6]:port" address (brackets removed).
// InvalidArgument, naming `address`, for anything else or a port outside
// 1..65535.
StatusOr<std::string> AddressHost(const std::string& address);

}  // namespace attune
