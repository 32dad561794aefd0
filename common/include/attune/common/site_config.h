// A site's configuration file, site.json, written by `attune provision` next
// to the site's TLS bundle:
//   {"study_id": "lung-2026", "site_id": "st-marys",
//    "coordinator": "coord.example.org:7443", "tls_dir": "."}
// `attune-worker --config site.json` reads it; its flags override each value.
#pragma once

#include <string>

#include "attune/common/status.h"

namespace attune {

inline constexpr char kSiteConfigFile[] = "site.json";

struct SiteConfig {
  std::string study_id;     // the study to join
  std::string site_id;      // this site's certificate CN
  std::string coordinator;  // host:port the coordinator is reached at
  std::string tls_dir;      // the bundle (ca.crt, cert.crt, key.pem)
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
