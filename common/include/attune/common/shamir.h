// Shamir t-of-n secret sharing (Shamir 1979) of byte strings, byte by byte
// over GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1): each byte of the
// secret is the constant term of its own random polynomial of degree t − 1,
// and share x holds the polynomials' values at x (1 ≤ x ≤ 255). Any t
// shares give the secret back (Lagrange interpolation at 0); t − 1 shares
// are independent of it. Field arithmetic is constant-time (no tables), and
// the coefficients come from the OpenSSL DRBG.
//
// Secure aggregation shares each site's mask secret and self-mask seed this
// way (secagg.h); a study has at most 255 sites per round.
#pragma once

#include <cstdint>
#include <vector>

#include "attune/common/crypto.h"
#include "attune/common/status.h"

namespace attune::shamir {

inline constexpr int kMaxShares = 255;

struct Share {
  uint8_t x = 0;              // the evaluation point, 1..255 (a site's share index)
  crypto::SecretBytes y;      // one byte per secret byte
};

// n shares of `secret`, at x = 1..n; any `threshold` of them recover it.
// InvalidArgument unless 1 ≤ threshold ≤ n ≤ 255 and the secret is not
// empty.
StatusOr<std::vector<Share>> Split(crypto::ByteView secret, int threshold, int n);

// The secret from at least `threshold` shares (only the first `threshold`
// are used). InvalidArgument for too few shares, a zero or repeated x, or
// shares of different lengths. With shares of another secret, or altered
// ones, the result is wrong, not an error: callers authenticate secrets
// (secagg.h checks a recovered key against the advertised public key).
StatusOr<crypto::SecretBytes> Combine(const std::vector<Share>& shares, int threshold);

// GF(2^8) arithmetic, exposed for the tests.
uint8_t GfMul(uint8_t a, uint8_t b);
uint8_t GfInv(uint8_t a);  // a ≠ 0

}  // namespace attune::shamir
