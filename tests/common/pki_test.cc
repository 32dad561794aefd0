#include "attune/common/pki.h"

#include <string>

#include "gtest/gtest.h"

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

TEST(PkiTest, IsIpAddress) {
  EXPECT_TRUE(attune::IsIpAddress("10.1.2.3"));
  EXPECT_TRUE(attune::IsIpAddress("::1"));
  EXPECT_FALSE(attune::IsIpAddress("coord.example.org"));
  EXPECT_FALSE(attune::IsIpAddress("1.2.3.4junk"));
  EXPECT_FALSE(attune::IsIpAddress(""));
}
