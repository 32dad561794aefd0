// Study directories (provision.h) and site.json (site_config.h).
#include "attune/common/provision.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/pki.h"
#include "attune/common/site_config.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "support/temp_dir.h"

namespace attune {
namespace {

namespace fs = std::filesystem;
using ::attune::testing::TempDir;

constexpr fs::perms kOwnerOnly = fs::perms::owner_read | fs::perms::owner_write;

std::string Read(const fs::path& path) {
  StatusOr<std::string> text = ReadFile(path.string());
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : std::string();
}

void Write(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

fs::perms Perms(const fs::path& path) {
  return fs::status(path).permissions() & fs::perms::mask;
}

// Whether the PEM certificate names `host` (DNS) or `ip` in its SANs.
bool CertNamesHost(const std::string& cert_pem, const std::string& host) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())), BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(
      PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
  if (!cert) return false;
  if (IsIpAddress(host)) return X509_check_ip_asc(cert.get(), host.c_str(), 0) == 1;
  return X509_check_host(cert.get(), host.data(), host.size(), 0, nullptr) == 1;
}

InitOptions Options(const TempDir& tmp, std::vector<std::string> sites) {
  InitOptions o;
  o.out_dir = tmp / "pki";
  o.study_id = "demo";
  o.sites = std::move(sites);
  o.coordinator = "coord.example.org:7443";
  o.valid_days = 30;
  return o;
}

// Checks a bundle directory: the study CA, a certificate for `cn` that
// chains to it, a private key file.
void ExpectBundle(const fs::path& dir, const std::string& ca_cert, const std::string& cn) {
  SCOPED_TRACE(dir.string());
  EXPECT_EQ(Read(dir / kBundleCaFile), ca_cert);
  const std::string cert = Read(dir / kBundleCertFile);
  EXPECT_TRUE(VerifyCertificate(ca_cert, cert).ok());
  StatusOr<std::string> actual_cn = CertificateCommonName(cert);
  ASSERT_TRUE(actual_cn.ok()) << actual_cn.status();
  EXPECT_EQ(*actual_cn, cn);
  ASSERT_TRUE(fs::exists(dir / kBundleKeyFile));
  EXPECT_EQ(Perms(dir / kBundleKeyFile), kOwnerOnly);
}

TEST(ProvisionTest, InitWritesEverything) {
  TempDir tmp;
  const InitOptions options = Options(tmp, {"site-a", "site_b.2"});
  StatusOr<InitResult> result = InitStudy(options);
  ASSERT_TRUE(result.ok()) << result.status();
  const fs::path out(options.out_dir);

  const std::string ca_cert = Read(out / "ca/ca.crt");
  ASSERT_NE(ca_cert.find("BEGIN CERTIFICATE"), std::string::npos);
  EXPECT_EQ(Perms(out / "ca/ca.key"), kOwnerOnly);

  ExpectBundle(out / "coordinator", ca_cert, "coordinator");
  EXPECT_EQ(result->coordinator_hosts,
            (std::vector<std::string>{"coord.example.org", "127.0.0.1", "localhost"}));
  const std::string coordinator_cert = Read(out / "coordinator" / kBundleCertFile);
  for (const std::string& host : result->coordinator_hosts) {
    EXPECT_TRUE(CertNamesHost(coordinator_cert, host)) << host;
  }
  EXPECT_FALSE(CertNamesHost(coordinator_cert, "elsewhere.example.org"));
  ExpectBundle(out / "operator", ca_cert, kOperatorName);

  for (const std::string& site : options.sites) {
    const fs::path dir = out / "sites" / site;
    ExpectBundle(dir, ca_cert, site);
    StatusOr<SiteConfig> config = LoadSiteConfig((dir / kSiteConfigFile).string());
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->study_id, "demo");
    EXPECT_EQ(config->site_id, site);
    EXPECT_EQ(config->coordinator, "coord.example.org:7443");
    EXPECT_EQ(fs::path(config->tls_dir), dir);
  }

  StatusOr<StudyConfig> study = LoadStudyConfig((out / kStudyFile).string());
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(study->study_id, "demo");
  EXPECT_EQ(study->coordinator, "coord.example.org:7443");
  EXPECT_EQ(study->roster, options.sites);
  EXPECT_TRUE(study->revoked.empty());
  EXPECT_EQ(study->rounds, StudyConfig{}.rounds);  // a default, not written
  EXPECT_EQ(result->study.roster, options.sites);
  EXPECT_FALSE(fs::exists(out / "study.json.tmp"));
}

TEST(ProvisionTest, InitWithCoordinatorHostsAndOneSite) {
  TempDir tmp;
  InitOptions options = Options(tmp, {"only"});
  options.coordinator_hosts = {"10.1.2.3", "coord.internal"};
  StatusOr<InitResult> result = InitStudy(options);
  ASSERT_TRUE(result.ok()) << result.status();
  const std::string cert = Read(fs::path(options.out_dir) / "coordinator" / kBundleCertFile);
  EXPECT_TRUE(CertNamesHost(cert, "10.1.2.3"));
  EXPECT_TRUE(CertNamesHost(cert, "coord.internal"));
  EXPECT_FALSE(CertNamesHost(cert, "localhost"));
  // One site is below the default quorum of 2, so init writes min_sites 1.
  EXPECT_EQ(result->study.min_sites, 1);
}

TEST(ProvisionTest, InitKeepsTheBaseStudysFields) {
  TempDir tmp;
  const std::string base_text = R"({
    "rounds": 8, "min_sites": 2, "roster": ["old-1", "old-2"],
    "train": {"local_epochs": 3, "batch_size": 16},
    "model": {"d_model": 16, "heads": 2}
  })";
  Write(tmp / "base.json", base_text);
  InitOptions options = Options(tmp, {"a", "b", "c"});
  options.base_study_path = tmp / "base.json";
  ASSERT_TRUE(InitStudy(options).ok());

  const std::string text = Read(fs::path(options.out_dir) / kStudyFile);
  StatusOr<StudyConfig> study = ParseStudyConfig(text);
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(study->study_id, "demo");
  EXPECT_EQ(study->rounds, 8);
  EXPECT_EQ(study->train.local_epochs, 3);
  EXPECT_EQ(study->train.batch_size, 16);
  EXPECT_EQ(study->model.d_model, 16);
  EXPECT_EQ(study->roster, (std::vector<std::string>{"a", "b", "c"}));
  // The provisioned fields come first; the base's follow in their order.
  EXPECT_LT(text.find("\"study_id\""), text.find("\"rounds\""));
  EXPECT_LT(text.find("\"rounds\""), text.find("\"train\""));
  EXPECT_NE(text.find("\n  \"rounds\": 8"), std::string::npos) << "not pretty-printed:\n" << text;
  EXPECT_EQ(Read(tmp / "base.json"), base_text);
}

TEST(ProvisionTest, InitRefusesABadBaseAndWritesNothing) {
  TempDir tmp;
  InitOptions options = Options(tmp, {"a", "b"});
  options.base_study_path = tmp / "base.json";
  Write(options.base_study_path, R"({"rounds": 3, "rounds_typo": 4})");
  Status s = InitStudy(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("rounds_typo: unknown field"), std::string::npos) << s;
  EXPECT_NE(s.message().find("base.json"), std::string::npos) << s;

  Write(options.base_study_path, "{\"rounds\": 3,,}");
  s = InitStudy(options).status();
  EXPECT_NE(s.message().find("base.json: not valid JSON"), std::string::npos) << s;

  options.base_study_path = tmp / "missing.json";
  EXPECT_EQ(InitStudy(options).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(options.out_dir));
}

TEST(ProvisionTest, InitRefusesToReplaceTheCa) {
  TempDir tmp;
  InitOptions options = Options(tmp, {"a", "b"});
  ASSERT_TRUE(InitStudy(options).ok());
  const fs::path out(options.out_dir);
  const std::string first_ca = Read(out / "ca/ca.crt");
  const std::string first_study = Read(out / kStudyFile);

  options.sites = {"x", "y"};
  EXPECT_EQ(InitStudy(options).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Read(out / "ca/ca.crt"), first_ca);
  EXPECT_EQ(Read(out / kStudyFile), first_study);
  EXPECT_FALSE(fs::exists(out / "sites/x"));

  options.overwrite = true;
  ASSERT_TRUE(InitStudy(options).ok());
  EXPECT_NE(Read(out / "ca/ca.crt"), first_ca);
  EXPECT_EQ(Perms(out / "ca/ca.key"), kOwnerOnly);
}

TEST(ProvisionTest, InitRejectsBadInputsAndWritesNothing) {
  TempDir tmp;
  InitOptions options = Options(tmp, {"ok-site", "bad/site"});
  Status s = InitStudy(options).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bad/site"), std::string::npos) << s;

  for (const std::vector<std::string>& sites :
       std::vector<std::vector<std::string>>{{".."}, {"a", "a"}, {}, {"coordinator"},
                                             {"attune-operator"}, {std::string(65, 'x')}}) {
    options.sites = sites;
    EXPECT_EQ(InitStudy(options).status().code(), absl::StatusCode::kInvalidArgument)
        << ::testing::PrintToString(sites);
  }
  options.sites = {"a", "b"};
  for (const char* address : {"coord.example.org", "coord:0", ":7443", "::1:7443", "[::1]"}) {
    options.coordinator = address;
    s = InitStudy(options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << address;
    EXPECT_NE(s.message().find("coordinator:"), std::string::npos) << s;
  }
  options.coordinator = "[::1]:7443";
  options.study_id = "has space";
  s = InitStudy(options).status();
  EXPECT_NE(s.message().find("study_id:"), std::string::npos) << s;
  options.study_id.clear();
  EXPECT_EQ(InitStudy(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.study_id = "demo";
  options.valid_days = 0;
  EXPECT_EQ(InitStudy(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.out_dir.clear();
  EXPECT_EQ(InitStudy(options).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(tmp / "pki"));
}

TEST(ProvisionTest, AddSiteExtendsTheRoster) {
  TempDir tmp;
  Write(tmp / "base.json", R"({"rounds": 4, "train": {"batch_size": 8}})");
  InitOptions options = Options(tmp, {"a", "b"});
  options.base_study_path = tmp / "base.json";
  ASSERT_TRUE(InitStudy(options).ok());
  const fs::path out(options.out_dir);

  StatusOr<StudyConfig> study = AddSite(out.string(), "c", 10);
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(study->roster, (std::vector<std::string>{"a", "b", "c"}));

  StatusOr<StudyConfig> on_disk = LoadStudyConfig((out / kStudyFile).string());
  ASSERT_TRUE(on_disk.ok()) << on_disk.status();
  EXPECT_EQ(on_disk->roster, study->roster);
  EXPECT_EQ(on_disk->rounds, 4);
  EXPECT_EQ(on_disk->train.batch_size, 8);
  EXPECT_EQ(on_disk->coordinator, "coord.example.org:7443");

  ExpectBundle(out / "sites/c", Read(out / "ca/ca.crt"), "c");
  StatusOr<SiteConfig> config = LoadSiteConfig((out / "sites/c" / kSiteConfigFile).string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->site_id, "c");
  EXPECT_EQ(config->study_id, "demo");
  EXPECT_EQ(config->coordinator, "coord.example.org:7443");
}

TEST(ProvisionTest, AddSiteRefusesDuplicatesAndBadNames) {
  TempDir tmp;
  const InitOptions options = Options(tmp, {"a", "b"});
  ASSERT_TRUE(InitStudy(options).ok());
  ASSERT_TRUE(RevokeSite(options.out_dir, "b").ok());
  const std::string study = Read(fs::path(options.out_dir) / kStudyFile);

  Status s = AddSite(options.out_dir, "a").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  s = AddSite(options.out_dir, "b").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_NE(s.message().find("revoked"), std::string::npos) << s;
  for (const char* bad : {"coordinator", "attune-operator", "attune-x", "bad/x", "..", ""}) {
    EXPECT_EQ(AddSite(options.out_dir, bad).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(Read(fs::path(options.out_dir) / kStudyFile), study);
  EXPECT_EQ(AddSite((tmp / "nowhere"), "c").status().code(), absl::StatusCode::kNotFound);
}

TEST(ProvisionTest, AddSiteNeedsTheCaKey) {
  TempDir tmp;
  const InitOptions options = Options(tmp, {"a", "b"});
  ASSERT_TRUE(InitStudy(options).ok());
  const fs::path out(options.out_dir);
  const std::string study = Read(out / kStudyFile);
  fs::remove(out / "ca/ca.key");
  Status s = AddSite(options.out_dir, "c").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("ca.key"), std::string::npos) << s;
  EXPECT_FALSE(fs::exists(out / "sites/c"));
  EXPECT_EQ(Read(out / kStudyFile), study);
}

TEST(ProvisionTest, RevokeAddsToRevokedOnce) {
  TempDir tmp;
  Write(tmp / "base.json", R"({"rounds": 6})");
  InitOptions options = Options(tmp, {"a", "b", "c"});
  options.base_study_path = tmp / "base.json";
  ASSERT_TRUE(InitStudy(options).ok());
  const fs::path study_path = fs::path(options.out_dir) / kStudyFile;

  StatusOr<StudyConfig> study = RevokeSite(options.out_dir, "b");
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(study->revoked, std::vector<std::string>{"b"});
  EXPECT_FALSE(study->Admits("b"));
  EXPECT_TRUE(study->Admits("a"));

  StatusOr<StudyConfig> on_disk = LoadStudyConfig(study_path.string());
  ASSERT_TRUE(on_disk.ok()) << on_disk.status();
  EXPECT_EQ(on_disk->revoked, std::vector<std::string>{"b"});
  EXPECT_EQ(on_disk->roster, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(on_disk->rounds, 6);

  const std::string after_first = Read(study_path);
  Status s = RevokeSite(options.out_dir, "b").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_NE(s.message().find("already revoked"), std::string::npos) << s;
  s = RevokeSite(options.out_dir, "zz").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_NE(s.message().find("not on the roster"), std::string::npos) << s;
  EXPECT_EQ(Read(study_path), after_first);

  ASSERT_TRUE(RevokeSite(options.out_dir, "c").ok());
  on_disk = LoadStudyConfig(study_path.string());
  ASSERT_TRUE(on_disk.ok()) << on_disk.status();
  EXPECT_EQ(on_disk->revoked, (std::vector<std::string>{"b", "c"}));
}

TEST(ProvisionTest, RevokeWorksOnAStudyFileWithoutRevoked) {
  TempDir tmp;
  const InitOptions options = Options(tmp, {"a", "b"});
  ASSERT_TRUE(InitStudy(options).ok());
  Write(fs::path(options.out_dir) / kStudyFile, R"({"study_id": "demo", "roster": ["a", "b"]})");
  StatusOr<StudyConfig> study = RevokeSite(options.out_dir, "a");
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(study->revoked, std::vector<std::string>{"a"});
}

TEST(SiteConfigTest, LoadsAndResolvesTlsDir) {
  TempDir tmp;
  fs::create_directories(tmp / "bundle");
  Write(tmp / "bundle/site.json", FormatSiteConfig({"s", "site-1", "[::1]:7443", "."}));
  StatusOr<SiteConfig> c = LoadSiteConfig(tmp / "bundle/site.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->study_id, "s");
  EXPECT_EQ(c->site_id, "site-1");
  EXPECT_EQ(c->coordinator, "[::1]:7443");
  EXPECT_EQ(c->tls_dir, tmp / "bundle");

  Write(tmp / "bundle/site.json",
        R"({"study_id": "s", "site_id": "x", "coordinator": "h:1", "tls_dir": "../tls"})");
  c = LoadSiteConfig(tmp / "bundle/site.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tls_dir, tmp / "tls");

  Write(tmp / "bundle/site.json",
        R"({"study_id": "s", "site_id": "x", "coordinator": "h:1", "tls_dir": "/etc/attune"})");
  c = LoadSiteConfig(tmp / "bundle/site.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tls_dir, "/etc/attune");

  // tls_dir may be left out: the bundle is next to site.json.
  Write(tmp / "bundle/site.json", R"({"study_id": "s", "site_id": "x", "coordinator": "h:1"})");
  c = LoadSiteConfig(tmp / "bundle/site.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tls_dir, tmp / "bundle");
}

TEST(SiteConfigTest, ErrorsNameTheFileAndField) {
  TempDir tmp;
  const std::string path = tmp / "site.json";
  struct Case {
    const char* json;
    const char* expect;
  };
  for (const Case& c : {
           Case{R"({"study_id": "s", "site_id": "x", "coordinator": "h:1", "tls": "."})",
                "site.json: tls: unknown field"},
           Case{R"({"study_id": "s", "site_id": "x"})", "site.json: coordinator: required"},
           Case{R"({"study_id": "s", "site_id": 3, "coordinator": "h:1"})",
                "site.json: site_id: must be a string"},
           Case{R"({"study_id": "s", "site_id": "x", "coordinator": "h"})",
                "site.json: coordinator: 'h' is not host:port"},
           Case{R"({"study_id": "s", "site_id": "x", "coordinator": "h:1",)",
                "site.json: not valid JSON"},
           Case{R"(["s"])", "site.json: must be a JSON object"},
           Case{R"({"study_id": "s", "site_id": "x", "coordinator": "h:1",
                    "policy": {"min_cell": -1}})",
                "site.json: policy.min_cell: must be >= 0"},
           Case{R"({"study_id": "s", "site_id": "x", "coordinator": "h:1",
                    "policy": {"loosen": true}})",
                "site.json: policy.loosen: unknown field"},
       }) {
    Write(path, c.json);
    Status s = LoadSiteConfig(path).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.json;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s << "\nwanted: " << c.expect;
  }
  EXPECT_EQ(LoadSiteConfig(tmp / "missing.json").status().code(), absl::StatusCode::kNotFound);
}

TEST(SiteConfigTest, ThePolicyOnlyTightens) {
  TempDir tmp;
  SiteConfig config{"s", "site-1", "h:1", "."};
  config.policy.min_cell = 20;
  config.policy.epsilon = 3;
  config.policy.exclude_audit_columns = {"ethnicity"};
  Write(tmp / "site.json", FormatSiteConfig(config));
  StatusOr<SiteConfig> c = LoadSiteConfig(tmp / "site.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->policy.min_cell, 20);
  EXPECT_EQ(c->policy.epsilon, 3);
  EXPECT_EQ(c->policy.exclude_audit_columns, std::vector<std::string>{"ethnicity"});
  // With the flags: the larger k, the smaller budget (0 is "the study's"),
  // every column left out by either.
  SitePolicy flags;
  flags.min_cell = 12;
  flags.epsilon = 2;
  flags.exclude_audit_columns = {"sex", "ethnicity"};
  const SitePolicy p = c->policy.Strictest(flags);
  EXPECT_EQ(p.min_cell, 20);
  EXPECT_EQ(p.epsilon, 2);
  EXPECT_EQ(p.exclude_audit_columns, (std::vector<std::string>{"ethnicity", "sex"}));
  EXPECT_EQ(c->policy.Strictest(SitePolicy{}).epsilon, 3);
  EXPECT_EQ(SitePolicy{}.Strictest(SitePolicy{}).epsilon, 0);
  // No policy: none written.
  EXPECT_EQ(FormatSiteConfig({"s", "site-1", "h:1", "."}).find("policy"), std::string::npos);
}

TEST(SiteConfigTest, AddressHost) {
  EXPECT_EQ(AddressHost("coord.example.org:7443").value_or(""), "coord.example.org");
  EXPECT_EQ(AddressHost("10.0.0.1:1").value_or(""), "10.0.0.1");
  EXPECT_EQ(AddressHost("[::1]:65535").value_or(""), "::1");
  for (const char* bad : {"", "host", "host:", "host:0", "host:65536", "host:7x", ":80", "::1:80",
                          "[::1]", "[::1]80", "[]:80"}) {
    EXPECT_EQ(AddressHost(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace attune
