// Attune's cryptography: thin, checked wrappers over OpenSSL 3's EVP API for
// what secure aggregation and encryption at rest need, and nothing else
// (no hand-written primitives). Tested against the Wycheproof vectors
// (tests/common/wycheproof_test.cc).
//
//   AEAD        AES-GCM (AES-256 in Attune; 128/192-bit keys work too) and
//               ChaCha20-Poly1305, both with 12-byte nonces only (NIST
//               SP 800-38D's recommendation; RFC 8439): sealed =
//               ciphertext ‖ 16-byte tag; a wrong key, nonce, associated
//               data or any changed byte fails to open, never garbage
//   X25519      key pairs and Diffie–Hellman; a low-order peer key (an
//               all-zero shared secret) is refused
//   HKDF        HKDF-SHA256 (RFC 5869)
//   PRG         a 32-byte seed expanded by AES-256-CTR: the masks of secure
//               aggregation
//   signatures  Ed25519 on raw keys, and with a PEM key / certificate
//               (ECDSA P-256 with SHA-256, as the study's mTLS certificates
//               have, or Ed25519): a site signs its key advertisement with
//               the key of its certificate
//
// Every function is thread-safe and keeps no state. Secrets (private keys,
// shared secrets, seeds) are SecretBytes, wiped when freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::crypto {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;

// Overwrites `n` bytes at `p` in a way the compiler cannot elide.
void Wipe(void* p, size_t n);

// An allocator that wipes memory before it is returned to the heap.
template <typename T>
struct WipingAllocator {
  using value_type = T;
  WipingAllocator() = default;
  template <typename U>
  WipingAllocator(const WipingAllocator<U>&) {}
  T* allocate(size_t n) { return std::allocator<T>().allocate(n); }
  void deallocate(T* p, size_t n) {
    Wipe(p, n * sizeof(T));
    std::allocator<T>().deallocate(p, n);
  }
  friend bool operator==(const WipingAllocator&, const WipingAllocator&) { return true; }
};
using SecretBytes = std::vector<uint8_t, WipingAllocator<uint8_t>>;

inline ByteView View(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Cryptographically secure random bytes (the OpenSSL DRBG).
StatusOr<SecretBytes> RandomBytes(size_t n);

// ---- AEAD -----------------------------------------------------------------

enum class Aead {
  kAesGcm,            // key 16, 24 or 32 bytes
  kChaCha20Poly1305,  // key 32 bytes
};
inline constexpr size_t kAeadTagBytes = 16;
inline constexpr size_t kAeadNonceBytes = 12;  // the only nonce size either takes

// ciphertext ‖ tag. InvalidArgument for a bad key or nonce size.
StatusOr<Bytes> Seal(Aead aead, ByteView key, ByteView nonce, ByteView aad, ByteView plaintext);

// The plaintext, or PermissionDenied when the tag does not verify (wrong
// key, nonce or associated data, or the data was changed); InvalidArgument
// for a bad key or nonce size or input shorter than the tag.
StatusOr<SecretBytes> Open(Aead aead, ByteView key, ByteView nonce, ByteView aad, ByteView sealed);

// ---- X25519 ---------------------------------------------------------------

inline constexpr size_t kX25519KeyBytes = 32;

struct X25519KeyPair {
  SecretBytes private_key;  // 32 bytes
  Bytes public_key;         // 32 bytes
};

StatusOr<X25519KeyPair> GenerateX25519();

// The public key of a private key.
StatusOr<Bytes> X25519PublicKey(ByteView private_key);

// The 32-byte shared secret. InvalidArgument for keys that are not 32
// bytes; PermissionDenied when the peer's key is of low order (the secret
// would be all zero: a peer could force a known key).
StatusOr<SecretBytes> X25519(ByteView private_key, ByteView peer_public_key);

// ---- HKDF -----------------------------------------------------------------

// HKDF-SHA256 (RFC 5869) of `length` bytes. InvalidArgument when `length`
// is 0 or over 255 × 32.
StatusOr<SecretBytes> HkdfSha256(ByteView ikm, ByteView salt, ByteView info, size_t length);

// ---- PRG ------------------------------------------------------------------

inline constexpr size_t kSeedBytes = 32;

// Fills `out` with the AES-256-CTR keystream under the 32-byte `seed`
// (counter block starting at `block` × 16 bytes of keystream, so that
// disjoint ranges can be expanded independently). InvalidArgument for a
// seed that is not 32 bytes.
Status ExpandSeed(ByteView seed, uint64_t block, std::span<uint8_t> out);

// The same keystream in consecutive pieces, the cipher keyed once:
//   ATTUNE_ASSIGN_OR_RETURN(KeyStream ks, KeyStream::Make(seed));
//   ks.Next(a); ks.Next(b);   // == ExpandSeed(seed, 0, a ++ b)
// Pieces other than the last should be multiples of 16 bytes (a partial
// block's unused keystream is dropped, as CTR mode does).
class KeyStream {
 public:
  static StatusOr<KeyStream> Make(ByteView seed, uint64_t block = 0);
  KeyStream(KeyStream&&) noexcept;
  KeyStream& operator=(KeyStream&&) noexcept;
  ~KeyStream();
  Status Next(std::span<uint8_t> out);

 private:
  struct State;
  explicit KeyStream(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

// ---- Signatures -----------------------------------------------------------

inline constexpr size_t kEd25519PublicKeyBytes = 32;
inline constexpr size_t kEd25519SignatureBytes = 64;

struct Ed25519KeyPair {
  SecretBytes private_key;  // 32-byte seed
  Bytes public_key;         // 32 bytes
};

StatusOr<Ed25519KeyPair> GenerateEd25519();
StatusOr<Bytes> Ed25519Sign(ByteView private_key, ByteView message);

// OK, or PermissionDenied when the signature does not verify (including a
// malformed or non-canonical signature); InvalidArgument for a public key
// that is not 32 bytes.
Status Ed25519Verify(ByteView public_key, ByteView message, ByteView signature);

// Signs with an unencrypted PEM private key: ECDSA keys sign SHA-256 (DER
// signature), Ed25519 keys sign the message itself.
StatusOr<Bytes> SignWithKeyPem(const std::string& key_pem, ByteView message);

// Verifies against the public key of a PEM certificate (the same rules).
// PermissionDenied when the signature does not verify.
Status VerifyWithCertificatePem(const std::string& cert_pem, ByteView message,
                                ByteView signature);

}  // namespace attune::crypto
