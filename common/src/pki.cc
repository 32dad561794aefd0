// Study PKI on the OpenSSL 3 C API. Every OpenSSL object is owned by a
// std::unique_ptr with the matching free function (openssl_util.h), so early
// returns never leak; every failure becomes a Status carrying OpenSSL's
// error queue.

#include "attune/common/pki.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <climits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "openssl_util.h"

namespace attune {
namespace {

using namespace openssl;  // the owners of OpenSSL objects

Status OpenSslError(const std::string& what) { return openssl::Error(what); }

StatusOr<std::string> BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len < 0 || (len > 0 && data == nullptr)) {
    return OpenSslError("BIO_get_mem_data failed");
  }
  return std::string(data, static_cast<size_t>(len));
}

// PKCS#8 PEM ("BEGIN PRIVATE KEY"), unencrypted.
StatusOr<std::string> KeyToPem(EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return OpenSslError("BIO_new failed");
  if (PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr,
                               nullptr) != 1) {
    return OpenSslError("PEM_write_bio_PrivateKey failed");
  }
  return BioContents(bio.get());
}

StatusOr<std::string> CertToPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio) return OpenSslError("BIO_new failed");
  if (PEM_write_bio_X509(bio.get(), cert) != 1) {
    return OpenSslError("PEM_write_bio_X509 failed");
  }
  return BioContents(bio.get());
}

StatusOr<PkeyPtr> NewP256Key() {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return OpenSslError("EC P-256 key generation failed");
  return key;
}

// Parses IPv4 or IPv6 text strictly (inet_pton) into 4 or 16 network-order
// bytes. Empty when `text` is not an address.
std::string ParseIp(const std::string& text) {
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, text.c_str(), buf) == 1) {
    return std::string(reinterpret_cast<char*>(buf), 4);
  }
  if (inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    return std::string(reinterpret_cast<char*>(buf), 16);
  }
  return std::string();
}

StatusOr<NamePtr> MakeName(const std::string& common_name) {
  NamePtr name(X509_NAME_new());
  if (!name) return OpenSslError("X509_NAME_new failed");
  if (X509_NAME_add_entry_by_NID(
          name.get(), NID_commonName, MBSTRING_UTF8,
          reinterpret_cast<const unsigned char*>(common_name.data()),
          static_cast<int>(common_name.size()), -1, 0) != 1) {
    return absl::InvalidArgumentError(
        openssl::WithErrors("bad common name '" + common_name + "'"));
  }
  return name;
}

// A random positive 128-bit serial (top bit clear, next bit set, so it is
// never zero and always 16 bytes in DER).
Status SetRandomSerial(X509* cert) {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) {
    return OpenSslError("RAND_bytes failed");
  }
  bytes[0] = (bytes[0] & 0x7f) | 0x40;
  BnPtr bn(BN_bin2bn(bytes, sizeof(bytes), nullptr));
  if (!bn) return OpenSslError("BN_bin2bn failed");
  IntegerPtr serial(BN_to_ASN1_INTEGER(bn.get(), nullptr));
  if (!serial) return OpenSslError("BN_to_ASN1_INTEGER failed");
  if (X509_set_serialNumber(cert, serial.get()) != 1) {
    return OpenSslError("X509_set_serialNumber failed");
  }
  return absl::OkStatus();
}

// Adds one extension from its OpenSSL config-string form, e.g.
// "critical,CA:TRUE".
Status AddExt(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
  if (!ext) {
    return OpenSslError(std::string("cannot build extension ") +
                        OBJ_nid2sn(nid) + "=" + value);
  }
  if (X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslError(std::string("cannot add extension ") +
                        OBJ_nid2sn(nid));
  }
  return absl::OkStatus();
}

// Adds a subjectAltName with the given DNS names and IP addresses (already
// validated). Nothing is added when both lists are empty.
Status AddSubjectAltName(X509* cert, const std::vector<std::string>& dns,
                         const std::vector<std::string>& ip_bytes) {
  if (dns.empty() && ip_bytes.empty()) return absl::OkStatus();
  GenNamesPtr names(sk_GENERAL_NAME_new_null());
  if (!names) return OpenSslError("sk_GENERAL_NAME_new_null failed");
  for (const std::string& d : dns) {
    Ia5Ptr value(ASN1_IA5STRING_new());
    GenNamePtr gen(GENERAL_NAME_new());
    if (!value || !gen ||
        ASN1_STRING_set(value.get(), d.data(), static_cast<int>(d.size())) !=
            1) {
      return OpenSslError("cannot build DNS subjectAltName");
    }
    GENERAL_NAME_set0_value(gen.get(), GEN_DNS, value.release());
    if (sk_GENERAL_NAME_push(names.get(), gen.get()) == 0) {
      return OpenSslError("sk_GENERAL_NAME_push failed");
    }
    gen.release();  // Owned by `names` now.
  }
  for (const std::string& ip : ip_bytes) {
    OctetPtr value(ASN1_OCTET_STRING_new());
    GenNamePtr gen(GENERAL_NAME_new());
    if (!value || !gen ||
        ASN1_OCTET_STRING_set(value.get(),
                              reinterpret_cast<const unsigned char*>(ip.data()),
                              static_cast<int>(ip.size())) != 1) {
      return OpenSslError("cannot build IP subjectAltName");
    }
    GENERAL_NAME_set0_value(gen.get(), GEN_IPADD, value.release());
    if (sk_GENERAL_NAME_push(names.get(), gen.get()) == 0) {
      return OpenSslError("sk_GENERAL_NAME_push failed");
    }
    gen.release();
  }
  if (X509_add1_ext_i2d(cert, NID_subject_alt_name, names.get(), 0,
                        X509V3_ADD_DEFAULT) != 1) {
    return OpenSslError("cannot add subjectAltName");
  }
  return absl::OkStatus();
}

// Fills in version, serial, names, validity and public key of a fresh cert.
// `issuer_name` null means self-issued.
StatusOr<X509Ptr> NewCertSkeleton(const std::string& common_name,
                                  const X509_NAME* issuer_name,
                                  EVP_PKEY* subject_key, int valid_days) {
  X509Ptr cert(X509_new());
  if (!cert) return OpenSslError("X509_new failed");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    return OpenSslError("X509_set_version failed");
  }
  ATTUNE_RETURN_IF_ERROR(SetRandomSerial(cert.get()));
  ATTUNE_ASSIGN_OR_RETURN(NamePtr subject, MakeName(common_name));
  if (X509_set_subject_name(cert.get(), subject.get()) != 1 ||
      X509_set_issuer_name(cert.get(), issuer_name != nullptr
                                           ? issuer_name
                                           : subject.get()) != 1) {
    return OpenSslError("cannot set certificate names");
  }
  // Backdated a little so a peer whose clock runs slightly behind accepts it.
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -5 * 60) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), valid_days, 0,
                       nullptr) == nullptr) {
    return OpenSslError("cannot set certificate validity");
  }
  if (X509_set_pubkey(cert.get(), subject_key) != 1) {
    return OpenSslError("X509_set_pubkey failed");
  }
  return cert;
}

Status SignSha256(X509* cert, EVP_PKEY* issuer_key) {
  if (X509_sign(cert, issuer_key, EVP_sha256()) <= 0) {
    return OpenSslError("X509_sign failed");
  }
  return absl::OkStatus();
}

StatusOr<KeyAndCert> ToPem(EVP_PKEY* key, X509* cert) {
  KeyAndCert out;
  ATTUNE_ASSIGN_OR_RETURN(out.key_pem, KeyToPem(key));
  ATTUNE_ASSIGN_OR_RETURN(out.cert_pem, CertToPem(cert));
  return out;
}

Status CheckValidDays(int valid_days) {
  if (valid_days <= 0) {
    return absl::InvalidArgumentError("valid_days must be positive, got " +
                                      std::to_string(valid_days));
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<KeyAndCert> MakeCertificateAuthority(const std::string& common_name,
                                              int valid_days) {
  ERR_clear_error();
  if (common_name.empty()) {
    return absl::InvalidArgumentError("CA common name is empty");
  }
  ATTUNE_RETURN_IF_ERROR(CheckValidDays(valid_days));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr key, NewP256Key());
  ATTUNE_ASSIGN_OR_RETURN(
      X509Ptr cert,
      NewCertSkeleton(common_name, nullptr, key.get(), valid_days));

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  // subjectKeyIdentifier must precede authorityKeyIdentifier, which copies it.
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE"));
  ATTUNE_RETURN_IF_ERROR(AddExt(cert.get(), &ctx, NID_key_usage,
                                "critical,keyCertSign,cRLSign"));
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  ATTUNE_RETURN_IF_ERROR(SignSha256(cert.get(), key.get()));
  return ToPem(key.get(), cert.get());
}

StatusOr<KeyAndCert> IssueCertificate(const KeyAndCert& ca,
                                      const CertOptions& options) {
  ERR_clear_error();
  if (options.common_name.empty()) {
    return absl::InvalidArgumentError("certificate common name is empty");
  }
  ATTUNE_RETURN_IF_ERROR(CheckValidDays(options.valid_days));
  std::vector<std::string> ip_bytes;
  for (const std::string& ip : options.ip_addresses) {
    std::string bytes = ParseIp(ip);
    if (bytes.empty()) {
      return absl::InvalidArgumentError("not an IP address: '" + ip + "'");
    }
    ip_bytes.push_back(std::move(bytes));
  }
  for (const std::string& dns : options.dns_names) {
    if (dns.empty()) return absl::InvalidArgumentError("empty DNS name");
  }

  ATTUNE_ASSIGN_OR_RETURN(X509Ptr ca_cert, ParseCert(ca.cert_pem, "CA cert"));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr ca_key, ParseKey(ca.key_pem, "CA key"));
  if (X509_check_private_key(ca_cert.get(), ca_key.get()) != 1) {
    return absl::InvalidArgumentError(
        openssl::WithErrors("CA key does not match CA certificate"));
  }

  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr key, NewP256Key());
  ATTUNE_ASSIGN_OR_RETURN(
      X509Ptr cert,
      NewCertSkeleton(options.common_name,
                      X509_get_subject_name(ca_cert.get()), key.get(),
                      options.valid_days));

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, ca_cert.get(), cert.get(), nullptr, nullptr, 0);
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE"));
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature"));
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_ext_key_usage,
             options.server ? "serverAuth" : "clientAuth"));
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_subject_key_identifier, "hash"));
  ATTUNE_RETURN_IF_ERROR(
      AddExt(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always"));
  ATTUNE_RETURN_IF_ERROR(
      AddSubjectAltName(cert.get(), options.dns_names, ip_bytes));
  ATTUNE_RETURN_IF_ERROR(SignSha256(cert.get(), ca_key.get()));
  return ToPem(key.get(), cert.get());
}

Status VerifyCertificate(const std::string& ca_cert_pem,
                         const std::string& cert_pem) {
  ERR_clear_error();
  StatusOr<X509Ptr> ca = ParseCert(ca_cert_pem, "CA cert");
  if (!ca.ok()) return absl::PermissionDeniedError(ca.status().message());
  StatusOr<X509Ptr> cert = ParseCert(cert_pem, "certificate");
  if (!cert.ok()) return absl::PermissionDeniedError(cert.status().message());

  StorePtr store(X509_STORE_new());
  if (!store || X509_STORE_add_cert(store.get(), ca->get()) != 1) {
    return OpenSslError("cannot build X509_STORE");
  }
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx ||
      X509_STORE_CTX_init(ctx.get(), store.get(), cert->get(), nullptr) != 1) {
    return OpenSslError("cannot init X509_STORE_CTX");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    int err = X509_STORE_CTX_get_error(ctx.get());
    ERR_clear_error();
    return absl::PermissionDeniedError(
        std::string("certificate verification failed: ") +
        X509_verify_cert_error_string(err));
  }
  return absl::OkStatus();
}

StatusOr<std::string> CertificateCommonName(const std::string& cert_pem) {
  ERR_clear_error();
  ATTUNE_ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem, "certificate"));
  X509_NAME* subject = X509_get_subject_name(cert.get());
  int len = X509_NAME_get_text_by_NID(subject, NID_commonName, nullptr, 0);
  if (len < 0) {
    ERR_clear_error();
    return absl::NotFoundError("certificate subject has no CN");
  }
  std::string cn(static_cast<size_t>(len) + 1, '\0');
  len = X509_NAME_get_text_by_NID(subject, NID_commonName, cn.data(),
                                  static_cast<int>(cn.size()));
  if (len < 0) return OpenSslError("X509_NAME_get_text_by_NID failed");
  cn.resize(static_cast<size_t>(len));
  return cn;
}

Status CheckClientCertificate(const std::string& cert_pem) {
  ERR_clear_error();
  ATTUNE_ASSIGN_OR_RETURN(X509Ptr cert, ParseCert(cert_pem, "certificate"));
  // X509_get_extension_flags caches the parsed extensions first.
  const uint32_t flags = X509_get_extension_flags(cert.get());
  if ((flags & EXFLAG_XKUSAGE) == 0 || (X509_get_extended_key_usage(cert.get()) & XKU_SSL_CLIENT) == 0) {
    return absl::PermissionDeniedError(
        "the certificate is not for client authentication (extendedKeyUsage lacks clientAuth)");
  }
  return absl::OkStatus();
}

bool IsIpAddress(const std::string& text) { return !ParseIp(text).empty(); }

}  // namespace attune
