#include "attune/common/shamir.h"

#include <array>

#include "absl/strings/str_cat.h"

namespace attune::shamir {

uint8_t GfMul(uint8_t a, uint8_t b) {
  // Shift-and-add with masks instead of branches: constant time.
  uint8_t p = 0;
  for (int i = 0; i < 8; ++i) {
    p ^= static_cast<uint8_t>(-(b & 1)) & a;
    const uint8_t carry = static_cast<uint8_t>(-(a >> 7));
    a = static_cast<uint8_t>((a << 1) ^ (0x1B & carry));
    b >>= 1;
  }
  return p;
}

uint8_t GfInv(uint8_t a) {
  // a^254 = a^-1 in GF(2^8)* (order 255): square-and-multiply over the
  // fixed exponent 0b11111110.
  uint8_t result = 1, base = a;
  for (int bit = 0; bit < 8; ++bit) {
    if ((254 >> bit) & 1) result = GfMul(result, base);
    base = GfMul(base, base);
  }
  return result;
}

StatusOr<std::vector<Share>> Split(crypto::ByteView secret, int threshold, int n) {
  if (secret.empty()) return absl::InvalidArgumentError("Shamir: empty secret");
  if (n < 1 || n > kMaxShares || threshold < 1 || threshold > n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Shamir: need 1 <= threshold <= shares <= ", kMaxShares, " (threshold ", threshold,
        ", shares ", n, ")"));
  }
  // coefficients[k][i]: the x^(k+1) coefficient of byte i's polynomial.
  ATTUNE_ASSIGN_OR_RETURN(crypto::SecretBytes coefficients,
                          crypto::RandomBytes(static_cast<size_t>(threshold - 1) * secret.size()));
  std::vector<Share> shares(n);
  for (int s = 0; s < n; ++s) {
    const uint8_t x = static_cast<uint8_t>(s + 1);
    Share& share = shares[s];
    share.x = x;
    share.y.assign(secret.size(), 0);
    for (size_t i = 0; i < secret.size(); ++i) {
      // Horner: ((c_{t-1} x + c_{t-2}) x + ... + c_1) x + secret.
      uint8_t y = 0;
      for (int k = threshold - 2; k >= 0; --k) {
        y = GfMul(y, x) ^ coefficients[static_cast<size_t>(k) * secret.size() + i];
      }
      share.y[i] = GfMul(y, x) ^ secret[i];
    }
  }
  return shares;
}

StatusOr<crypto::SecretBytes> Combine(const std::vector<Share>& shares, int threshold) {
  if (threshold < 1 || static_cast<int>(shares.size()) < threshold) {
    return absl::InvalidArgumentError(absl::StrCat("Shamir: ", shares.size(),
                                                   " shares, fewer than the threshold ", threshold));
  }
  const size_t len = shares[0].y.size();
  std::array<bool, 256> seen{};
  for (int s = 0; s < threshold; ++s) {
    const Share& share = shares[s];
    if (share.x == 0 || seen[share.x]) {
      return absl::InvalidArgumentError(
          absl::StrCat("Shamir: share point x = ", share.x, " is zero or repeated"));
    }
    seen[share.x] = true;
    if (share.y.size() != len || len == 0) {
      return absl::InvalidArgumentError("Shamir: shares of different or zero length");
    }
  }
  crypto::SecretBytes secret(len, 0);
  for (int s = 0; s < threshold; ++s) {
    // Lagrange basis at 0: Π_{j≠s} x_j / (x_j − x_s); − is ⊕ in GF(2^8).
    uint8_t num = 1, den = 1;
    for (int j = 0; j < threshold; ++j) {
      if (j == s) continue;
      num = GfMul(num, shares[j].x);
      den = GfMul(den, shares[j].x ^ shares[s].x);
    }
    const uint8_t basis = GfMul(num, GfInv(den));
    for (size_t i = 0; i < len; ++i) secret[i] ^= GfMul(shares[s].y[i], basis);
  }
  return secret;
}

}  // namespace attune::shamir
