#include "attune/common/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>
#include <string>

#include "absl/strings/str_cat.h"
#include "openssl_util.h"

namespace attune::crypto {
namespace {

using openssl::CipherCtxPtr;
using openssl::MdCtxPtr;
using openssl::PkeyCtxPtr;
using openssl::PkeyPtr;

// OpenSSL lengths are int: larger inputs are refused, not truncated.
Status FitsInt(size_t n, const char* what) {
  if (n > static_cast<size_t>(INT_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", n, " bytes is too large"));
  }
  return absl::OkStatus();
}

Status SizeIs(ByteView b, size_t n, const char* what) {
  if (b.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be ", n, " bytes, not ", b.size()));
  }
  return absl::OkStatus();
}

// The cipher for an AEAD and key size, after checking key and nonce sizes.
StatusOr<const EVP_CIPHER*> AeadCipher(Aead aead, ByteView key, ByteView nonce) {
  if (aead == Aead::kChaCha20Poly1305) {
    ATTUNE_RETURN_IF_ERROR(SizeIs(key, 32, "ChaCha20-Poly1305 key"));
    ATTUNE_RETURN_IF_ERROR(SizeIs(nonce, kAeadNonceBytes, "ChaCha20-Poly1305 nonce"));
    return EVP_chacha20_poly1305();
  }
  ATTUNE_RETURN_IF_ERROR(SizeIs(nonce, kAeadNonceBytes, "AES-GCM nonce"));
  switch (key.size()) {
    case 16: return EVP_aes_128_gcm();
    case 24: return EVP_aes_192_gcm();
    case 32: return EVP_aes_256_gcm();
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("AES-GCM key must be 16, 24 or 32 bytes, not ", key.size()));
  }
}

// Sets up `ctx` for sealing (enc 1) or opening (enc 0) and feeds the AAD.
Status AeadBegin(EVP_CIPHER_CTX* ctx, const EVP_CIPHER* cipher, int enc, ByteView key,
                 ByteView nonce, ByteView aad) {
  ATTUNE_RETURN_IF_ERROR(FitsInt(aad.size(), "associated data"));
  if (EVP_CipherInit_ex(ctx, cipher, nullptr, nullptr, nullptr, enc) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, static_cast<int>(nonce.size()),
                          nullptr) != 1 ||
      EVP_CipherInit_ex(ctx, nullptr, nullptr, key.data(), nonce.data(), enc) != 1) {
    return openssl::Error("AEAD initialisation failed");
  }
  int len = 0;
  if (!aad.empty() &&
      EVP_CipherUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) {
    return openssl::Error("AEAD associated data failed");
  }
  return absl::OkStatus();
}

// The key of a raw X25519 / Ed25519 private or public key.
StatusOr<PkeyPtr> RawKey(int type, bool is_private, ByteView key, const char* what) {
  PkeyPtr pkey(is_private ? EVP_PKEY_new_raw_private_key(type, nullptr, key.data(), key.size())
                          : EVP_PKEY_new_raw_public_key(type, nullptr, key.data(), key.size()));
  if (!pkey) return absl::InvalidArgumentError(openssl::WithErrors(std::string("bad ") + what));
  return pkey;
}

StatusOr<PkeyPtr> Generate(int type, const char* what) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_id(type, nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_keygen_init(ctx.get()) != 1 || EVP_PKEY_keygen(ctx.get(), &raw) != 1) {
    return openssl::Error(std::string(what) + " key generation failed");
  }
  return PkeyPtr(raw);
}

// The raw private and public halves of an X25519 / Ed25519 key.
Status RawHalves(EVP_PKEY* pkey, SecretBytes* priv, Bytes* pub) {
  size_t priv_len = 32, pub_len = 32;
  priv->assign(32, 0);
  pub->assign(32, 0);
  if (EVP_PKEY_get_raw_private_key(pkey, priv->data(), &priv_len) != 1 ||
      EVP_PKEY_get_raw_public_key(pkey, pub->data(), &pub_len) != 1 || priv_len != 32 ||
      pub_len != 32) {
    return openssl::Error("raw key export failed");
  }
  return absl::OkStatus();
}

StatusOr<Bytes> SignWith(EVP_PKEY* pkey, ByteView message) {
  // Ed25519 signs the message itself (no digest); every other key SHA-256.
  const EVP_MD* md = EVP_PKEY_get_id(pkey) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
  MdCtxPtr ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, pkey) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, message.data(), message.size()) != 1) {
    return openssl::Error("signing failed");
  }
  Bytes sig(len);
  if (EVP_DigestSign(ctx.get(), sig.data(), &len, message.data(), message.size()) != 1) {
    return openssl::Error("signing failed");
  }
  sig.resize(len);
  return sig;
}

Status VerifyWith(EVP_PKEY* pkey, ByteView message, ByteView signature) {
  const EVP_MD* md = EVP_PKEY_get_id(pkey) == EVP_PKEY_ED25519 ? nullptr : EVP_sha256();
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, pkey) != 1) {
    return openssl::Error("signature verification setup failed");
  }
  const int ok = EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                                  message.size());
  openssl::DrainErrors();  // a bad signature's reasons are not the caller's business
  if (ok != 1) return absl::PermissionDeniedError("signature does not verify");
  return absl::OkStatus();
}

}  // namespace

void Wipe(void* p, size_t n) {
  if (p != nullptr && n > 0) OPENSSL_cleanse(p, n);
}

StatusOr<SecretBytes> RandomBytes(size_t n) {
  ATTUNE_RETURN_IF_ERROR(FitsInt(n, "random bytes"));
  SecretBytes out(n);
  if (n > 0 && RAND_bytes(out.data(), static_cast<int>(n)) != 1) {
    return openssl::Error("RAND_bytes failed");
  }
  return out;
}

StatusOr<Bytes> Seal(Aead aead, ByteView key, ByteView nonce, ByteView aad, ByteView plaintext) {
  ATTUNE_ASSIGN_OR_RETURN(const EVP_CIPHER* cipher, AeadCipher(aead, key, nonce));
  ATTUNE_RETURN_IF_ERROR(FitsInt(plaintext.size(), "plaintext"));
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return openssl::Error("EVP_CIPHER_CTX_new failed");
  ATTUNE_RETURN_IF_ERROR(AeadBegin(ctx.get(), cipher, 1, key, nonce, aad));
  Bytes out(plaintext.size() + kAeadTagBytes);
  int len = 0, tail = 0;
  if ((!plaintext.empty() && EVP_CipherUpdate(ctx.get(), out.data(), &len, plaintext.data(),
                                              static_cast<int>(plaintext.size())) != 1) ||
      EVP_CipherFinal_ex(ctx.get(), out.data() + len, &tail) != 1 ||
      static_cast<size_t>(len + tail) != plaintext.size() ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, kAeadTagBytes,
                          out.data() + plaintext.size()) != 1) {
    return openssl::Error("AEAD seal failed");
  }
  return out;
}

StatusOr<SecretBytes> Open(Aead aead, ByteView key, ByteView nonce, ByteView aad,
                           ByteView sealed) {
  ATTUNE_ASSIGN_OR_RETURN(const EVP_CIPHER* cipher, AeadCipher(aead, key, nonce));
  if (sealed.size() < kAeadTagBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("sealed data of ", sealed.size(), " bytes is shorter than its tag"));
  }
  const size_t n = sealed.size() - kAeadTagBytes;
  ATTUNE_RETURN_IF_ERROR(FitsInt(n, "ciphertext"));
  CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return openssl::Error("EVP_CIPHER_CTX_new failed");
  ATTUNE_RETURN_IF_ERROR(AeadBegin(ctx.get(), cipher, 0, key, nonce, aad));
  SecretBytes out(n);
  int len = 0, tail = 0;
  if ((n > 0 && EVP_CipherUpdate(ctx.get(), out.data(), &len, sealed.data(),
                                 static_cast<int>(n)) != 1) ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, kAeadTagBytes,
                          const_cast<uint8_t*>(sealed.data() + n)) != 1) {
    return openssl::Error("AEAD open failed");
  }
  if (EVP_CipherFinal_ex(ctx.get(), out.data() + len, &tail) != 1) {
    openssl::DrainErrors();
    Wipe(out.data(), out.size());
    return absl::PermissionDeniedError(
        "authentication failed: wrong key, nonce or associated data, or the data was changed");
  }
  return out;
}

StatusOr<X25519KeyPair> GenerateX25519() {
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr pkey, Generate(EVP_PKEY_X25519, "X25519"));
  X25519KeyPair kp;
  ATTUNE_RETURN_IF_ERROR(RawHalves(pkey.get(), &kp.private_key, &kp.public_key));
  return kp;
}

StatusOr<Bytes> X25519PublicKey(ByteView private_key) {
  ATTUNE_RETURN_IF_ERROR(SizeIs(private_key, kX25519KeyBytes, "X25519 private key"));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr pkey,
                          RawKey(EVP_PKEY_X25519, true, private_key, "X25519 private key"));
  Bytes pub(kX25519KeyBytes);
  size_t len = pub.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), pub.data(), &len) != 1 || len != pub.size()) {
    return openssl::Error("X25519 public key export failed");
  }
  return pub;
}

StatusOr<SecretBytes> X25519(ByteView private_key, ByteView peer_public_key) {
  ATTUNE_RETURN_IF_ERROR(SizeIs(private_key, kX25519KeyBytes, "X25519 private key"));
  ATTUNE_RETURN_IF_ERROR(SizeIs(peer_public_key, kX25519KeyBytes, "X25519 public key"));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr own,
                          RawKey(EVP_PKEY_X25519, true, private_key, "X25519 private key"));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr peer,
                          RawKey(EVP_PKEY_X25519, false, peer_public_key, "X25519 public key"));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new(own.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer(ctx.get(), peer.get()) != 1) {
    return openssl::Error("X25519 setup failed");
  }
  SecretBytes secret(kX25519KeyBytes);
  size_t len = secret.size();
  // OpenSSL fails the derivation when the result is all zero (a low-order
  // peer key); the explicit check below does not depend on that.
  const bool derived = EVP_PKEY_derive(ctx.get(), secret.data(), &len) == 1;
  openssl::DrainErrors();
  uint8_t any = 0;
  for (uint8_t b : secret) any |= b;
  if (!derived || len != kX25519KeyBytes || any == 0) {
    return absl::PermissionDeniedError("X25519: the peer's public key is of low order");
  }
  return secret;
}

StatusOr<SecretBytes> HkdfSha256(ByteView ikm, ByteView salt, ByteView info, size_t length) {
  if (length == 0 || length > 255 * 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("HKDF-SHA256 output must be 1 to 8160 bytes, not ", length));
  }
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  if (kdf == nullptr) return openssl::Error("HKDF is not available");
  openssl::KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf));
  EVP_KDF_free(kdf);
  if (!ctx) return openssl::Error("EVP_KDF_CTX_new failed");
  // OSSL_PARAM wants non-const pointers; OpenSSL only reads these.
  auto octets = [](const char* key, ByteView b) {
    static uint8_t empty = 0;
    return OSSL_PARAM_construct_octet_string(
        key, b.empty() ? &empty : const_cast<uint8_t*>(b.data()), b.size());
  };
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      octets(OSSL_KDF_PARAM_KEY, ikm),
      octets(OSSL_KDF_PARAM_SALT, salt),
      octets(OSSL_KDF_PARAM_INFO, info),
      OSSL_PARAM_construct_end(),
  };
  SecretBytes out(length);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return openssl::Error("HKDF-SHA256 failed");
  }
  return out;
}

struct KeyStream::State {
  CipherCtxPtr ctx;
};

KeyStream::KeyStream(std::unique_ptr<State> state) : state_(std::move(state)) {}
KeyStream::KeyStream(KeyStream&&) noexcept = default;
KeyStream& KeyStream::operator=(KeyStream&&) noexcept = default;
KeyStream::~KeyStream() = default;

StatusOr<KeyStream> KeyStream::Make(ByteView seed, uint64_t block) {
  ATTUNE_RETURN_IF_ERROR(SizeIs(seed, kSeedBytes, "PRG seed"));
  // The counter block: 64 zero bits, then `block` big-endian.
  uint8_t iv[16] = {0};
  for (int i = 0; i < 8; ++i) iv[15 - i] = static_cast<uint8_t>(block >> (8 * i));
  auto state = std::make_unique<State>();
  state->ctx.reset(EVP_CIPHER_CTX_new());
  if (!state->ctx ||
      EVP_EncryptInit_ex(state->ctx.get(), EVP_aes_256_ctr(), nullptr, seed.data(), iv) != 1) {
    return openssl::Error("AES-256-CTR initialisation failed");
  }
  return KeyStream(std::move(state));
}

Status KeyStream::Next(std::span<uint8_t> out) {
  // The keystream is the encryption of zeros, done in place in slices.
  constexpr size_t kSlice = size_t{1} << 30;
  for (size_t at = 0; at < out.size(); at += kSlice) {
    const size_t n = std::min(kSlice, out.size() - at);
    std::fill(out.begin() + at, out.begin() + at + n, 0);
    int len = 0;
    if (EVP_EncryptUpdate(state_->ctx.get(), out.data() + at, &len, out.data() + at,
                          static_cast<int>(n)) != 1 ||
        static_cast<size_t>(len) != n) {
      return openssl::Error("AES-256-CTR failed");
    }
  }
  return absl::OkStatus();
}

Status ExpandSeed(ByteView seed, uint64_t block, std::span<uint8_t> out) {
  ATTUNE_ASSIGN_OR_RETURN(KeyStream stream, KeyStream::Make(seed, block));
  return stream.Next(out);
}

StatusOr<Ed25519KeyPair> GenerateEd25519() {
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr pkey, Generate(EVP_PKEY_ED25519, "Ed25519"));
  Ed25519KeyPair kp;
  ATTUNE_RETURN_IF_ERROR(RawHalves(pkey.get(), &kp.private_key, &kp.public_key));
  return kp;
}

StatusOr<Bytes> Ed25519Sign(ByteView private_key, ByteView message) {
  ATTUNE_RETURN_IF_ERROR(SizeIs(private_key, 32, "Ed25519 private key"));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr pkey,
                          RawKey(EVP_PKEY_ED25519, true, private_key, "Ed25519 private key"));
  return SignWith(pkey.get(), message);
}

Status Ed25519Verify(ByteView public_key, ByteView message, ByteView signature) {
  ATTUNE_RETURN_IF_ERROR(SizeIs(public_key, kEd25519PublicKeyBytes, "Ed25519 public key"));
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr pkey,
                          RawKey(EVP_PKEY_ED25519, false, public_key, "Ed25519 public key"));
  if (signature.size() != kEd25519SignatureBytes) {
    return absl::PermissionDeniedError(absl::StrCat(
        "signature does not verify: ", signature.size(), " bytes, not ", kEd25519SignatureBytes));
  }
  return VerifyWith(pkey.get(), message, signature);
}

StatusOr<Bytes> SignWithKeyPem(const std::string& key_pem, ByteView message) {
  ATTUNE_ASSIGN_OR_RETURN(PkeyPtr pkey, openssl::ParseKey(key_pem, "signing key"));
  return SignWith(pkey.get(), message);
}

Status VerifyWithCertificatePem(const std::string& cert_pem, ByteView message,
                                ByteView signature) {
  ATTUNE_ASSIGN_OR_RETURN(openssl::X509Ptr cert, openssl::ParseCert(cert_pem, "certificate"));
  EVP_PKEY* pkey = X509_get0_pubkey(cert.get());
  if (pkey == nullptr) return absl::InvalidArgumentError("certificate has no usable public key");
  return VerifyWith(pkey, message, signature);
}

}  // namespace attune::crypto
