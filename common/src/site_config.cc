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
  r.RejectUnknown();
  ATTUNE_RETURN_IF_ERROR(s);
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

std::string FormatSiteConfig(const SiteConfig& config) {
  const nlohmann::ordered_json j = {{"study_id", config.study_id},
                                    {"site_id", config.site_id},
                                    {"coordinator", config.coordinator},
                                    {"tls_dir", config.tls_dir}};
  return j.dump(2) + "\n";
}

}  // namespace attune
