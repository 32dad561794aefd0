#include "attune/common/pki.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

namespace fs = std::filesystem;

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ = fs::temp_directory_path() /
            ("attune_pki_test_" + std::to_string(::getpid()) + "_" +
             std::to_string(stamp));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

fs::perms Perms(const fs::path& path) {
  return fs::status(path).permissions() & fs::perms::mask;
}

}  // namespace

TEST(PkiTest, CaAndLeafVerify) {
  auto ca = attune::MakeCertificateAuthority("Test CA", 30);
  ASSERT_TRUE(ca.ok()) << ca.status();
  EXPECT_NE(ca->key_pem.find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  EXPECT_NE(ca->cert_pem.find("-----BEGIN CERTIFICATE-----"),
            std::string::npos);

  attune::CertOptions opts;
  opts.common_name = "coordinator";
  opts.dns_names = {"localhost"};
  opts.ip_addresses = {"127.0.0.1", "::1"};
  opts.server = true;
  auto leaf = attune::IssueCertificate(*ca, opts);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  EXPECT_TRUE(attune::VerifyCertificate(ca->cert_pem, leaf->cert_pem).ok());
  // The CA is its own trust anchor.
  EXPECT_TRUE(attune::VerifyCertificate(ca->cert_pem, ca->cert_pem).ok());
}

TEST(PkiTest, LeafFromOtherCaIsRejected) {
  auto ca1 = attune::MakeCertificateAuthority("CA one", 30);
  auto ca2 = attune::MakeCertificateAuthority("CA two", 30);
  ASSERT_TRUE(ca1.ok() && ca2.ok());
  attune::CertOptions opts;
  opts.common_name = "site-a";
  auto leaf = attune::IssueCertificate(*ca2, opts);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  attune::Status s = attune::VerifyCertificate(ca1->cert_pem, leaf->cert_pem);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  s = attune::VerifyCertificate(ca1->cert_pem, "not a certificate");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
}

TEST(PkiTest, CommonNameRoundTrip) {
  auto ca = attune::MakeCertificateAuthority("Round Trip CA", 30);
  ASSERT_TRUE(ca.ok());
  auto ca_cn = attune::CertificateCommonName(ca->cert_pem);
  ASSERT_TRUE(ca_cn.ok()) << ca_cn.status();
  EXPECT_EQ(*ca_cn, "Round Trip CA");

  attune::CertOptions opts;
  opts.common_name = "hospital_7.example-site";
  auto leaf = attune::IssueCertificate(*ca, opts);
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  auto cn = attune::CertificateCommonName(leaf->cert_pem);
  ASSERT_TRUE(cn.ok()) << cn.status();
  EXPECT_EQ(*cn, "hospital_7.example-site");

  EXPECT_FALSE(attune::CertificateCommonName("garbage").ok());
}

TEST(PkiTest, BadInputsAreInvalidArgument) {
  auto ca = attune::MakeCertificateAuthority("CA", 30);
  ASSERT_TRUE(ca.ok());
  attune::CertOptions opts;
  opts.common_name = "coordinator";
  opts.ip_addresses = {"300.1.2.3"};
  EXPECT_EQ(attune::IssueCertificate(*ca, opts).status().code(),
            absl::StatusCode::kInvalidArgument);
  opts.ip_addresses = {"1.2.3.4junk"};
  EXPECT_EQ(attune::IssueCertificate(*ca, opts).status().code(),
            absl::StatusCode::kInvalidArgument);

  opts.ip_addresses.clear();
  opts.common_name = "";
  EXPECT_EQ(attune::IssueCertificate(*ca, opts).status().code(),
            absl::StatusCode::kInvalidArgument);

  opts.common_name = "site";
  attune::KeyAndCert bad = *ca;
  bad.cert_pem = "not pem";
  EXPECT_EQ(attune::IssueCertificate(bad, opts).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PkiTest, ProvisionWritesBundles) {
  TempDir tmp;
  attune::ProvisionOptions opts;
  opts.out_dir = (tmp.path() / "pki").string();
  opts.study_id = "demo";
  opts.sites = {"site-a", "site_b.2"};
  ASSERT_TRUE(attune::Provision(opts).ok());

  const fs::path out(opts.out_dir);
  const std::string ca_cert = ReadAll(out / "ca" / "ca.crt");
  ASSERT_FALSE(ca_cert.empty());
  ASSERT_TRUE(fs::exists(out / "ca" / "ca.key"));
  EXPECT_EQ(Perms(out / "ca" / "ca.key"),
            fs::perms::owner_read | fs::perms::owner_write);

  std::vector<fs::path> bundles = {out / "coordinator"};
  for (const auto& site : opts.sites) bundles.push_back(out / "sites" / site);
  for (const fs::path& dir : bundles) {
    SCOPED_TRACE(dir.string());
    EXPECT_EQ(ReadAll(dir / attune::kBundleCaFile), ca_cert);
    ASSERT_TRUE(fs::exists(dir / attune::kBundleCertFile));
    ASSERT_TRUE(fs::exists(dir / attune::kBundleKeyFile));
    EXPECT_EQ(Perms(dir / attune::kBundleKeyFile),
              fs::perms::owner_read | fs::perms::owner_write);
    const std::string cert = ReadAll(dir / attune::kBundleCertFile);
    EXPECT_TRUE(attune::VerifyCertificate(ca_cert, cert).ok());
    auto cn = attune::CertificateCommonName(cert);
    ASSERT_TRUE(cn.ok()) << cn.status();
    EXPECT_EQ(*cn, dir.filename().string());
  }
}

TEST(PkiTest, ProvisionRefusesToReplaceCa) {
  TempDir tmp;
  attune::ProvisionOptions opts;
  opts.out_dir = tmp.path().string();
  opts.sites = {"site-a"};
  ASSERT_TRUE(attune::Provision(opts).ok());
  const std::string first_ca = ReadAll(tmp.path() / "ca" / "ca.crt");
  EXPECT_EQ(attune::Provision(opts).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadAll(tmp.path() / "ca" / "ca.crt"), first_ca);

  opts.overwrite = true;
  ASSERT_TRUE(attune::Provision(opts).ok());
  EXPECT_NE(ReadAll(tmp.path() / "ca" / "ca.crt"), first_ca);
}

TEST(PkiTest, ProvisionRejectsBadSites) {
  TempDir tmp;
  attune::ProvisionOptions opts;
  opts.out_dir = tmp.path().string();

  opts.sites = {"ok-site", "bad/site"};
  attune::Status s = attune::Provision(opts);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("bad/site"), std::string::npos) << s;

  opts.sites = {".."};
  EXPECT_EQ(attune::Provision(opts).code(),
            absl::StatusCode::kInvalidArgument);
  opts.sites = {"a", "a"};
  EXPECT_EQ(attune::Provision(opts).code(),
            absl::StatusCode::kInvalidArgument);
  opts.sites.clear();
  EXPECT_EQ(attune::Provision(opts).code(),
            absl::StatusCode::kInvalidArgument);
  opts.sites = {"a"};
  opts.out_dir.clear();
  EXPECT_EQ(attune::Provision(opts).code(),
            absl::StatusCode::kInvalidArgument);
  // Nothing was written by the rejected calls.
  EXPECT_FALSE(fs::exists(tmp.path() / "ca"));
}
