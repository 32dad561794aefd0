#include "attune/common/site_config.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "attune/common/config.h"
#include "json_fields.h"
#include "nlohmann/json.hpp"

namespace attune {

StatusOr<std::string> AddressHost(const std::string& address) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", address, "' is not host:port (", why,
        "; e.g. coord.example.org:7443 or [2001:db8::1]:7443)"));
  };
  std::string host;
  absl::string_view port;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() ||
        address[close + 1] != ':') {
      return bad("an IPv6 address is written [address]:port");
    }
    host = address.substr(1, close - 1);
    port = absl::string_view(address).substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return bad("no port");
    host = address.substr(0, colon);
    if (host.find(':') != std::string::npos) {
      return bad("an IPv6 address is written [address]:port");
    }
    port = absl::string_view(address).substr(colon + 1);
  }
  if (host.empty()) return bad("no host");
  int port_number = 0;
  if (port.empty() || !std::all_of(port.begin(), port.end(), absl::ascii_isdigit) ||
      !absl::SimpleAtoi(port, &port_number) || port_number < 1 || port_number > 65535) {
    return bad("the port must be 1..65535");
  }
  return host;
}

StatusOr<SiteConfig> LoadSiteConfig(const std::string& path) {
  auto fail = [&](absl::string_view field, absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", field, ": ", why));
  };
  ATTUNE_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  ATTUNE_ASSIGN_OR_RETURN(const nlohmann::json j, ParseJsonObject(text, path));
  SiteConfig c;
  Status s;
  FieldReader r(j, path + ": ", &s);
  r.Get("study_id", &c.study_id);
  r.Get("site_id", &c.site_id);
  r.Get("coordinator", &c.coordinator);
  r.Get("tls_dir", &c.tls_dir);
  if (const nlohmann::json* p = r.Object("policy")) {
    FieldReader q(*p, path + ": policy.", &s);
    q.Get("min_cell", &c.policy.min_cell);
    q.Get("epsilon", &c.policy.epsilon);
    q.Get("exclude_audit_columns", &c.policy.exclude_audit_columns);
    q.RejectUnknown();
  }
  r.RejectUnknown();
  ATTUNE_RETURN_IF_ERROR(s);
  if (c.policy.min_cell < 0) return fail("policy.min_cell", "must be >= 0 (0: the study's)");
  if (!(c.policy.epsilon >= 0)) return fail("policy.epsilon", "must be >= 0 (0: the study's)");
  for (const auto& column : c.policy.exclude_audit_columns) {
    if (column.empty()) return fail("policy.exclude_audit_columns", "an empty column name");
  }
  for (const auto& [name, value] : {std::pair{"study_id", &c.study_id},
                                    std::pair{"site_id", &c.site_id},
                                    std::pair{"coordinator", &c.coordinator}}) {
    if (value->empty()) return fail(name, "required");
  }
  if (auto host = AddressHost(c.coordinator); !host.ok()) {
    return fail("coordinator", host.status().message());
  }

  namespace fs = std::filesystem;
  fs::path tls_dir(c.tls_dir.empty() ? "." : c.tls_dir);
  if (tls_dir.is_relative()) {
    tls_dir = (fs::path(path).parent_path() / tls_dir).lexically_normal();
    if (tls_dir.empty()) tls_dir = ".";
  }
  // "dir/." normalizes to "dir/"; name the folder itself.
  if (!tls_dir.has_filename() && tls_dir.has_relative_path()) tls_dir = tls_dir.parent_path();
  c.tls_dir = tls_dir.string();
  return c;
}

SitePolicy SitePolicy::Strictest(const SitePolicy& other) const {
  SitePolicy p;
  p.min_cell = std::max(min_cell, other.min_cell);
  p.epsilon = epsilon > 0 && other.epsilon > 0 ? std::min(epsilon, other.epsilon)
                                               : std::max(epsilon, other.epsilon);
  p.exclude_audit_columns = exclude_audit_columns;
  for (const auto& column : other.exclude_audit_columns) {
    if (std::find(p.exclude_audit_columns.begin(), p.exclude_audit_columns.end(), column) ==
        p.exclude_audit_columns.end()) {
      p.exclude_audit_columns.push_back(column);
    }
  }
  return p;
}

std::string FormatSiteConfig(const SiteConfig& config) {
  nlohmann::ordered_json j = {{"study_id", config.study_id},
                              {"site_id", config.site_id},
                              {"coordinator", config.coordinator},
                              {"tls_dir", config.tls_dir}};
  if (!config.policy.empty()) {
    nlohmann::ordered_json p = nlohmann::ordered_json::object();
    if (config.policy.min_cell > 0) p["min_cell"] = config.policy.min_cell;
    if (config.policy.epsilon > 0) p["epsilon"] = config.policy.epsilon;
    if (!config.policy.exclude_audit_columns.empty()) {
      p["exclude_audit_columns"] = config.policy.exclude_audit_columns;
    }
    j["policy"] = p;
  }
  return j.dump(2) + "\n";
}

}  // namespace attune
