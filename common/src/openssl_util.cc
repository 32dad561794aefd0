#include "openssl_util.h"

#include <openssl/err.h>
#include <openssl/pem.h>

#include <climits>

namespace attune::openssl {
namespace {

// A PEM pass-phrase callback that refuses: an encrypted key fails to load
// instead of OpenSSL prompting on the terminal.
int NoPassphrase(char*, int, int, void*) { return 0; }

}  // namespace

std::string DrainErrors() {
  std::string out;
  char buf[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

std::string WithErrors(const std::string& what) {
  std::string errors = DrainErrors();
  return errors.empty() ? what : what + ": " + errors;
}

Status Error(const std::string& what) { return absl::InternalError(WithErrors(what)); }

StatusOr<BioPtr> ReadBio(const std::string& data) {
  if (data.size() > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError("PEM input too large");
  }
  BioPtr bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
  if (!bio) return Error("BIO_new_mem_buf failed");
  return bio;
}

StatusOr<X509Ptr> ParseCert(const std::string& pem, const char* what) {
  ATTUNE_ASSIGN_OR_RETURN(BioPtr bio, ReadBio(pem));
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!cert) {
    return absl::InvalidArgumentError(WithErrors(std::string(what) + " is not a PEM certificate"));
  }
  return cert;
}

StatusOr<PkeyPtr> ParseKey(const std::string& pem, const char* what) {
  ATTUNE_ASSIGN_OR_RETURN(BioPtr bio, ReadBio(pem));
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!key) {
    return absl::InvalidArgumentError(WithErrors(std::string(what) + " is not a PEM private key"));
  }
  return key;
}

}  // namespace attune::openssl
