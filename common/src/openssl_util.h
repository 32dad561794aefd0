// Private to attune_common: ownership of OpenSSL objects and OpenSSL's
// error queue as a Status, shared by the PKI (pki.cc) and the crypto
// wrappers (crypto.cc). Every OpenSSL object is owned by a std::unique_ptr
// with the matching free function, so early returns never leak.
#pragma once

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

#include "attune/common/status.h"

namespace attune::openssl {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
template <typename T, void (*Free)(T*)>
using Owned = std::unique_ptr<T, Deleter<T, Free>>;

inline void FreeBio(BIO* b) { BIO_free_all(b); }

// One owner type per OpenSSL type Attune uses.
using BioPtr = Owned<BIO, FreeBio>;
using PkeyPtr = Owned<EVP_PKEY, EVP_PKEY_free>;
using PkeyCtxPtr = Owned<EVP_PKEY_CTX, EVP_PKEY_CTX_free>;
using CipherCtxPtr = Owned<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>;
using MdCtxPtr = Owned<EVP_MD_CTX, EVP_MD_CTX_free>;
using KdfCtxPtr = Owned<EVP_KDF_CTX, EVP_KDF_CTX_free>;
using X509Ptr = Owned<X509, X509_free>;
using NamePtr = Owned<X509_NAME, X509_NAME_free>;
using ExtPtr = Owned<X509_EXTENSION, X509_EXTENSION_free>;
using StorePtr = Owned<X509_STORE, X509_STORE_free>;
using StoreCtxPtr = Owned<X509_STORE_CTX, X509_STORE_CTX_free>;
using BnPtr = Owned<BIGNUM, BN_free>;
using IntegerPtr = Owned<ASN1_INTEGER, ASN1_INTEGER_free>;
using OctetPtr = Owned<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>;
using Ia5Ptr = Owned<ASN1_IA5STRING, ASN1_IA5STRING_free>;
using GenNamePtr = Owned<GENERAL_NAME, GENERAL_NAME_free>;
using GenNamesPtr = Owned<GENERAL_NAMES, GENERAL_NAMES_free>;

// Drains OpenSSL's thread-local error queue into one string.
std::string DrainErrors();

// `what` plus the pending OpenSSL errors (the queue is cleared).
std::string WithErrors(const std::string& what);

// Internal error: `what` plus the pending OpenSSL errors.
Status Error(const std::string& what);

// A read-only memory BIO over `data`.
StatusOr<BioPtr> ReadBio(const std::string& data);

// Parses the first certificate in `pem`. InvalidArgument when none parses;
// `what` names the input in the message.
StatusOr<X509Ptr> ParseCert(const std::string& pem, const char* what);

// Parses an unencrypted PEM private key (an encrypted one fails instead of
// prompting for a pass phrase). InvalidArgument when it fails.
StatusOr<PkeyPtr> ParseKey(const std::string& pem, const char* what);

}  // namespace attune::openssl
