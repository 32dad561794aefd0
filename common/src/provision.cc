// Study directories (provision.h): bundles, site.json files and the study
// file. Keys and certificates come from pki.h; this file only decides what
// goes where and in which order it is written.

#include "attune/common/provision.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/at_rest.h"
#include "attune/common/pki.h"
#include "attune/common/site_config.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr char kCoordinatorName[] = "coordinator";  // the coordinator's CN
constexpr size_t kMaxSiteNameLength = 64;           // X.509's limit on a CN

fs::path CaDir(const fs::path& dir) { return dir / "ca"; }
fs::path SiteDir(const fs::path& dir, const std::string& site) {
  return dir / "sites" / site;
}

bool Contains(const std::vector<std::string>& list, const std::string& item) {
  return std::find(list.begin(), list.end(), item) != list.end();
}

Status IoError(const std::string& what, const fs::path& path,
               const std::error_code& ec) {
  return absl::InternalError(
      absl::StrCat(what, " ", path.string(), ": ", ec.message()));
}

Status CreateDirectories(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return IoError("cannot create directory", dir, ec);
  return absl::OkStatus();
}

// Writes `contents` to `path`, replacing it. A private file is truncated and
// chmod 0600 before any byte is written, so the key is never readable by
// others, even when overwriting a file with looser permissions.
Status WriteFile(const fs::path& path, const std::string& contents,
                 bool is_private) {
  if (is_private) {
    { std::ofstream create(path, std::ios::binary | std::ios::trunc); }
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write,
                    fs::perm_options::replace, ec);
    if (ec) return IoError("cannot chmod 0600", path, ec);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::InternalError("cannot open " + path.string() +
                               " for writing");
  }
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  out.close();
  if (!out) return absl::InternalError("cannot write " + path.string());
  return absl::OkStatus();
}

// Writes a bundle directory: ca.crt, cert.crt and key.pem (0600).
Status WriteBundle(const fs::path& dir, const std::string& ca_cert_pem,
                   const KeyAndCert& leaf) {
  ATTUNE_RETURN_IF_ERROR(CreateDirectories(dir));
  ATTUNE_RETURN_IF_ERROR(WriteFile(dir / kBundleCaFile, ca_cert_pem, false));
  ATTUNE_RETURN_IF_ERROR(
      WriteFile(dir / kBundleCertFile, leaf.cert_pem, false));
  return WriteFile(dir / kBundleKeyFile, leaf.key_pem, true);
}

// A site's bundle, made but not written yet.
struct SiteBundle {
  KeyAndCert leaf;
  SiteConfig config;  // site.json; its tls_dir is the bundle's own folder
};

StatusOr<SiteBundle> MakeSiteBundle(const KeyAndCert& ca, const std::string& site,
                                    const StudyConfig& study, int valid_days) {
  CertOptions options;
  options.common_name = site;
  options.valid_days = valid_days;
  ATTUNE_ASSIGN_OR_RETURN(KeyAndCert leaf, IssueCertificate(ca, options));
  return SiteBundle{std::move(leaf),
                    SiteConfig{study.study_id, site, study.coordinator, "."}};
}

// <dir>/sites/<site>/{ca.crt,cert.crt,key.pem,site.json}
Status WriteSiteBundle(const fs::path& dir, const std::string& ca_cert_pem,
                       const SiteBundle& bundle) {
  const fs::path site_dir = SiteDir(dir, bundle.config.site_id);
  ATTUNE_RETURN_IF_ERROR(WriteBundle(site_dir, ca_cert_pem, bundle.leaf));
  return WriteFile(site_dir / kSiteConfigFile, FormatSiteConfig(bundle.config),
                   false);
}

StatusOr<Json> ParseJsonObject(const std::string& text, const std::string& path) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not valid JSON (check commas, quotes and brackets)"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": must be a JSON object"));
  }
  return j;
}

// A study file's next contents, checked with ParseStudyConfig.
struct RenderedStudy {
  std::string text;
  StudyConfig config;
};

// Errors start with `label: ` and name the field.
StatusOr<RenderedStudy> RenderStudy(const Json& study, const std::string& label) {
  std::string text =
      study.dump(2, ' ', /*ensure_ascii=*/false, Json::error_handler_t::replace) + "\n";
  ATTUNE_ASSIGN_OR_RETURN(StudyConfig config, ParseStudyConfig(text, label));
  return RenderedStudy{std::move(text), std::move(config)};
}

// The study file of a study directory, as JSON (to edit, keeping every
// field) and as a validated StudyConfig.
struct StudyFile {
  std::string path;
  Json json;
  StudyConfig config;
};

StatusOr<StudyFile> LoadStudyFile(const fs::path& dir) {
  const std::string path = (dir / kStudyFile).string();
  StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return Status(text.status().code(),
                  absl::StrCat(text.status().message(), " (is ", dir.string(),
                               " a study directory made by `attune provision init`?)"));
  }
  ATTUNE_ASSIGN_OR_RETURN(StudyConfig config, ParseStudyConfig(*text, path));
  ATTUNE_ASSIGN_OR_RETURN(Json json, ParseJsonObject(*text, path));
  return StudyFile{path, std::move(json), std::move(config)};
}

// Replaces the study file with `next` (already validated), atomically.
StatusOr<StudyConfig> CommitStudy(const StudyFile& file, RenderedStudy next) {
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(file.path, next.text));
  return std::move(next.config);
}

StatusOr<KeyAndCert> ReadCa(const fs::path& dir) {
  const fs::path ca_dir = CaDir(dir);
  KeyAndCert ca;
  struct Part {
    const char* file;
    std::string* out;
  };
  for (const Part& part : {Part{"ca.crt", &ca.cert_pem}, Part{"ca.key", &ca.key_pem}}) {
    StatusOr<std::string> text = ReadFile((ca_dir / part.file).string());
    if (!text.ok()) {
      return Status(text.status().code(),
                    absl::StrCat(text.status().message(),
                                 " (issuing a certificate or signing the study's terms needs the "
                                 "study CA, ",
                                 ca_dir.string(), "/ca.crt and ca.key)"));
    }
    *part.out = *std::move(text);
  }
  return ca;
}

// The coordinator certificate's names: as given, or the host the sites dial
// plus the loopback names.
std::vector<std::string> CoordinatorHosts(const InitOptions& options,
                                          const std::string& host) {
  if (!options.coordinator_hosts.empty()) return options.coordinator_hosts;
  std::vector<std::string> hosts = {host};
  for (const char* local : {"127.0.0.1", "localhost"}) {
    if (!Contains(hosts, local)) hosts.emplace_back(local);
  }
  return hosts;
}

// init's study.json: the provisioned fields first, then the base's others.
StatusOr<RenderedStudy> InitialStudy(const InitOptions& options,
                                     const std::string& study_path) {
  Json study = {{"study_id", options.study_id},
                {"coordinator", options.coordinator},
                {"roster", options.sites},
                {"revoked", Json::array()}};
  std::string label = study_path;
  if (!options.base_study_path.empty()) {
    ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(options.base_study_path));
    ATTUNE_ASSIGN_OR_RETURN(Json base, ParseJsonObject(text, options.base_study_path));
    for (auto& [key, value] : base.items()) {
      if (!study.contains(key)) study[key] = std::move(value);
    }
    label = absl::StrCat(study_path, " (from ", options.base_study_path, ")");
  }
  const StudyConfig defaults;
  if (!study.contains("min_sites") &&
      options.sites.size() < static_cast<size_t>(defaults.min_sites)) {
    study["min_sites"] = options.sites.size();
  }
  return RenderStudy(study, label);
}

// The version the next signing of <dir>'s terms takes: one past the
// current file's, 1 when there is none yet.
StatusOr<int64_t> NextTermsVersion(const fs::path& dir, const std::string& ca_cert_pem) {
  const fs::path path = dir / kTermsFile;
  std::error_code ec;
  if (!fs::exists(path, ec)) return int64_t{1};
  ATTUNE_ASSIGN_OR_RETURN(StudyTerms current, LoadTerms(path.string(), ca_cert_pem));
  return current.version + 1;
}

// Signs the terms of `study` at `version` and writes them to <dir> and to
// every bundle folder in it (coordinator, operator, each site).
StatusOr<StudyTerms> PublishTerms(const fs::path& dir, const KeyAndCert& ca,
                                  const StudyConfig& study, int64_t version) {
  StudyTerms terms = TermsOf(study, version);
  ATTUNE_ASSIGN_OR_RETURN(std::string text, SignTerms(terms, ca.key_pem));
  std::vector<fs::path> folders = {dir, dir / "coordinator", dir / "operator"};
  std::error_code ec;
  if (fs::is_directory(dir / "sites", ec)) {
    for (const auto& entry : fs::directory_iterator(dir / "sites", ec)) {
      if (entry.is_directory()) folders.push_back(entry.path());
    }
  }
  if (ec) return IoError("cannot list", dir / "sites", ec);
  for (const fs::path& folder : folders) {
    if (!fs::is_directory(folder)) continue;
    ATTUNE_RETURN_IF_ERROR(WriteFileAtomic((folder / kTermsFile).string(), text));
  }
  return terms;
}

}  // namespace

Status CheckSiteName(const std::string& site) {
  if (site.empty() || site == "." || site == "..") {
    return absl::InvalidArgumentError("invalid site name '" + site + "'");
  }
  if (site.size() > kMaxSiteNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid site name '", site, "': at most ",
                     kMaxSiteNameLength, " characters"));
  }
  for (char c : site) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          "invalid site name '" + site + "': only [A-Za-z0-9._-] allowed");
    }
  }
  if (site == kCoordinatorName) {
    return absl::InvalidArgumentError(
        "site name 'coordinator' is reserved for the coordinator's certificate");
  }
  if (site.rfind(kReservedPrefix, 0) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid site name '", site, "': names starting with '",
                     kReservedPrefix, "' are reserved (e.g. ", kOperatorName, ")"));
  }
  return absl::OkStatus();
}

StatusOr<InitResult> InitStudy(const InitOptions& options) {
  if (options.out_dir.empty()) {
    return absl::InvalidArgumentError("provision init: no output directory");
  }
  if (options.study_id.empty()) {
    return absl::InvalidArgumentError("provision init: no study id");
  }
  if (options.sites.empty()) {
    return absl::InvalidArgumentError("provision init: no sites given");
  }
  std::set<std::string> seen;
  for (const std::string& site : options.sites) {
    ATTUNE_RETURN_IF_ERROR(CheckSiteName(site));
    if (!seen.insert(site).second) {
      return absl::InvalidArgumentError("duplicate site name '" + site + "'");
    }
  }
  StatusOr<std::string> host = AddressHost(options.coordinator);
  if (!host.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("coordinator: ", host.status().message()));
  }

  const fs::path out(options.out_dir);
  const fs::path ca_dir = CaDir(out);
  std::error_code ec;
  const bool ca_exists = fs::exists(ca_dir, ec);
  if (ec) return IoError("cannot stat", ca_dir, ec);
  if (ca_exists && !options.overwrite) {
    return absl::AlreadyExistsError(
        ca_dir.string() + " exists; refusing to replace a study CA");
  }

  // Everything is made, and study.json validated, before anything is written.
  const std::string study_path = (out / kStudyFile).string();
  ATTUNE_ASSIGN_OR_RETURN(RenderedStudy study, InitialStudy(options, study_path));
  ATTUNE_ASSIGN_OR_RETURN(
      KeyAndCert ca,
      MakeCertificateAuthority("Attune " + options.study_id + " CA", options.valid_days));

  InitResult result{study.config, CoordinatorHosts(options, *host)};
  CertOptions coordinator_options;
  coordinator_options.common_name = kCoordinatorName;
  coordinator_options.server = true;
  coordinator_options.valid_days = options.valid_days;
  for (const std::string& name : result.coordinator_hosts) {
    (IsIpAddress(name) ? coordinator_options.ip_addresses
                       : coordinator_options.dns_names)
        .push_back(name);
  }
  ATTUNE_ASSIGN_OR_RETURN(KeyAndCert coordinator,
                          IssueCertificate(ca, coordinator_options));

  CertOptions operator_options;
  operator_options.common_name = kOperatorName;
  operator_options.valid_days = options.valid_days;
  ATTUNE_ASSIGN_OR_RETURN(KeyAndCert operator_cert, IssueCertificate(ca, operator_options));

  std::vector<SiteBundle> sites;
  for (const std::string& site : options.sites) {
    ATTUNE_ASSIGN_OR_RETURN(SiteBundle bundle,
                            MakeSiteBundle(ca, site, study.config, options.valid_days));
    sites.push_back(std::move(bundle));
  }

  // Bundles and study.json first, the CA last: a run that fails part way
  // leaves no ca/ and can simply be repeated.
  ATTUNE_RETURN_IF_ERROR(WriteBundle(out / "coordinator", ca.cert_pem, coordinator));
  // The coordinator's at-rest key: kept when it exists (--overwrite), since
  // data directories sealed under it would otherwise be lost.
  const fs::path at_rest_key = out / "coordinator" / kAtRestKeyFile;
  if (!fs::exists(at_rest_key)) ATTUNE_RETURN_IF_ERROR(at_rest::MakeKeyFile(at_rest_key.string()));
  ATTUNE_RETURN_IF_ERROR(WriteBundle(out / "operator", ca.cert_pem, operator_cert));
  for (const SiteBundle& bundle : sites) {
    ATTUNE_RETURN_IF_ERROR(WriteSiteBundle(out, ca.cert_pem, bundle));
  }
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(study_path, study.text));
  // The terms start again at version 1 with a new CA: older ones are not
  // signed by it.
  std::filesystem::remove(out / kTermsFile, ec);
  ATTUNE_RETURN_IF_ERROR(PublishTerms(out, ca, study.config, 1).status());
  ATTUNE_RETURN_IF_ERROR(CreateDirectories(ca_dir));
  ATTUNE_RETURN_IF_ERROR(WriteFile(ca_dir / "ca.crt", ca.cert_pem, false));
  ATTUNE_RETURN_IF_ERROR(WriteFile(ca_dir / "ca.key", ca.key_pem, true));
  return result;
}

StatusOr<StudyConfig> AddSite(const std::string& dir, const std::string& site,
                              int valid_days) {
  ATTUNE_RETURN_IF_ERROR(CheckSiteName(site));
  const fs::path root(dir);
  ATTUNE_ASSIGN_OR_RETURN(StudyFile study, LoadStudyFile(root));
  if (Contains(study.config.roster, site)) {
    return absl::AlreadyExistsError(absl::StrCat(
        "site '", site, "' is already on the roster of ", study.path,
        Contains(study.config.revoked, site) ? " (revoked; pick a new name)" : ""));
  }
  if (study.config.coordinator.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        study.path, ": coordinator: not set; the site's site.json needs the "
        "address sites dial: add \"coordinator\": \"host:port\""));
  }
  ATTUNE_ASSIGN_OR_RETURN(KeyAndCert ca, ReadCa(root));
  study.json["roster"].push_back(site);
  ATTUNE_ASSIGN_OR_RETURN(RenderedStudy next, RenderStudy(study.json, study.path));
  ATTUNE_ASSIGN_OR_RETURN(SiteBundle bundle,
                          MakeSiteBundle(ca, site, study.config, valid_days));
  ATTUNE_ASSIGN_OR_RETURN(int64_t version, NextTermsVersion(root, ca.cert_pem));
  // The bundle first: the site is admitted only once study.json says so.
  ATTUNE_RETURN_IF_ERROR(WriteSiteBundle(root, ca.cert_pem, bundle));
  ATTUNE_ASSIGN_OR_RETURN(StudyConfig committed, CommitStudy(study, std::move(next)));
  ATTUNE_RETURN_IF_ERROR(PublishTerms(root, ca, committed, version).status());
  return committed;
}

StatusOr<StudyConfig> RevokeSite(const std::string& dir, const std::string& site) {
  ATTUNE_ASSIGN_OR_RETURN(StudyFile study, LoadStudyFile(fs::path(dir)));
  if (!Contains(study.config.roster, site)) {
    return absl::NotFoundError(absl::StrCat(
        "site '", site, "' is not on the roster of ", study.path, " (roster: ",
        absl::StrJoin(study.config.roster, ", "), ")"));
  }
  if (Contains(study.config.revoked, site)) {
    return absl::AlreadyExistsError(
        absl::StrCat("site '", site, "' is already revoked in ", study.path));
  }
  Json& revoked = study.json["revoked"];
  if (revoked.is_null()) revoked = Json::array();
  revoked.push_back(site);
  ATTUNE_ASSIGN_OR_RETURN(RenderedStudy next, RenderStudy(study.json, study.path));
  const fs::path root(dir);
  ATTUNE_ASSIGN_OR_RETURN(KeyAndCert ca, ReadCa(root));
  ATTUNE_ASSIGN_OR_RETURN(int64_t version, NextTermsVersion(root, ca.cert_pem));
  ATTUNE_ASSIGN_OR_RETURN(StudyConfig committed, CommitStudy(study, std::move(next)));
  ATTUNE_RETURN_IF_ERROR(PublishTerms(root, ca, committed, version).status());
  return committed;
}

StatusOr<StudyTerms> SignStudy(const std::string& dir, const std::string& study_path) {
  const fs::path root(dir);
  ATTUNE_ASSIGN_OR_RETURN(StudyFile current, LoadStudyFile(root));
  ATTUNE_ASSIGN_OR_RETURN(KeyAndCert ca, ReadCa(root));
  StudyConfig study = current.config;
  if (!study_path.empty()) {
    ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(study_path));
    ATTUNE_ASSIGN_OR_RETURN(study, ParseStudyConfig(text, study_path));
    if (study.study_id != current.config.study_id) {
      return absl::InvalidArgumentError(absl::StrCat(
          study_path, ": study_id: '", study.study_id, "', but ", dir, " is the CA of study '",
          current.config.study_id, "'"));
    }
    ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(current.path, text));
  }
  ATTUNE_ASSIGN_OR_RETURN(int64_t version, NextTermsVersion(root, ca.cert_pem));
  return PublishTerms(root, ca, study, version);
}

}  // namespace attune
