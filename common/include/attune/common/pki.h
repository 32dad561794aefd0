// Study PKI: a study certificate authority, the coordinator's server
// certificate and one client certificate per site, made with the OpenSSL 3
// C API (no shelling out to the openssl tool). Writing them out as a study
// directory is provision.h's job.
//
// Keys are ECDSA P-256 (what every TLS stack, gRPC's included, accepts).
// Certificates are X.509 v3, SHA-256 signed. A site is identified by its
// certificate's subject CN; the coordinator admits a CN only if it is on the
// study roster.
//
// All functions are thread-compatible; none keeps global state.
#pragma once

#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune {

// A PEM-encoded private key and certificate.
struct KeyAndCert {
  std::string key_pem;   // PKCS#8 "-----BEGIN PRIVATE KEY-----"
  std::string cert_pem;  // "-----BEGIN CERTIFICATE-----"
};

struct CertOptions {
  std::string common_name;              // subject CN (site id, or "coordinator")
  std::vector<std::string> dns_names;   // subjectAltName DNS entries
  std::vector<std::string> ip_addresses;// subjectAltName IP entries (v4 or v6 text)
  int valid_days = 365;
  bool server = false;                  // extendedKeyUsage serverAuth (else clientAuth)
};

// Makes a self-signed CA (basicConstraints CA:TRUE, keyCertSign) whose
// subject is "CN=<common_name>".
StatusOr<KeyAndCert> MakeCertificateAuthority(const std::string& common_name,
                                              int valid_days);

// Makes a fresh key and a leaf certificate signed by `ca`.
// InvalidArgument for an empty CN, an unparsable IP address or a CA whose
// PEM does not parse.
StatusOr<KeyAndCert> IssueCertificate(const KeyAndCert& ca,
                                      const CertOptions& options);

// Checks that `cert_pem` chains to `ca_cert_pem` (X509_verify_cert with the
// CA as the only trust anchor). OK or PermissionDenied with the reason.
Status VerifyCertificate(const std::string& ca_cert_pem,
                         const std::string& cert_pem);

// OK when the certificate's extendedKeyUsage includes clientAuth (sites and
// the operator); PermissionDenied otherwise (the coordinator's certificate
// is serverAuth only).
Status CheckClientCertificate(const std::string& cert_pem);

// The subject CN of a PEM certificate.
StatusOr<std::string> CertificateCommonName(const std::string& cert_pem);

// True for IPv4 or IPv6 address text (what goes into an IP subjectAltName
// rather than a DNS one).
bool IsIpAddress(const std::string& text);

// Names of the files in a bundle directory.
inline constexpr char kBundleCaFile[] = "ca.crt";
inline constexpr char kBundleCertFile[] = "cert.crt";
inline constexpr char kBundleKeyFile[] = "key.pem";

}  // namespace attune
