// common/crypto.h against the Wycheproof vectors (tests/data/wycheproof, a
// copy of the files in ../shared/data/wycheproof: see its SOURCE.txt): every
// valid case is accepted with the expected output, every invalid one is
// refused; then properties the vectors do not cover (tampering, the PRG's
// counter layout against AES-256-ECB, signatures with the study PKI's keys).
#include "attune/common/crypto.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "attune/common/pki.h"
#include "nlohmann/json.hpp"

namespace attune::crypto {
namespace {

using nlohmann::json;

json LoadVectors(const std::string& name) {
  const std::string path = std::string(ATTUNE_WYCHEPROOF_DIR) + "/" + name;
  std::ifstream f(path);
  if (!f) ADD_FAILURE() << "cannot read " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return json::parse(ss.str());
}

Bytes Hex(const std::string& hex) {
  Bytes out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

template <typename A>
Bytes Plain(const std::vector<uint8_t, A>& b) {
  return Bytes(b.begin(), b.end());
}

Bytes Concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Tallies of one file: how many cases of each result, and the failures.
struct Tally {
  std::map<std::string, int> seen;
  int cases = 0;
  void Count(const json& t) {
    ++cases;
    ++seen[t["result"].get<std::string>()];
  }
  void Report(const char* what, const json& file) {
    EXPECT_EQ(cases, file["numberOfTests"].get<int>()) << what << ": every vector is run";
    std::printf("%s: %d vectors (%d valid, %d invalid, %d acceptable)\n", what, cases,
                seen["valid"], seen["invalid"], seen["acceptable"]);
  }
};

std::string Id(const json& t) {
  return "tcId " + std::to_string(t["tcId"].get<int>()) + " (" + t["comment"].get<std::string>() +
         ")";
}

// Attune's AEADs take 96-bit nonces only (NIST SP 800-38D §8.2's
// recommendation; RFC 8439 for ChaCha20-Poly1305). Vectors with another
// nonce size, valid or not for AES-GCM itself, must be refused with
// InvalidArgument, and are counted apart.
void RunAead(Aead aead, const std::string& file) {
  const json v = LoadVectors(file);
  Tally tally;
  int other_nonce_sizes = 0, of_them_valid = 0;
  for (const json& g : v["testGroups"]) {
    ASSERT_EQ(g["tagSize"].get<int>(), 128);
    for (const json& t : g["tests"]) {
      tally.Count(t);
      const Bytes key = Hex(t["key"]), iv = Hex(t["iv"]), aad = Hex(t["aad"]), msg = Hex(t["msg"]);
      const Bytes sealed = Concat(Hex(t["ct"]), Hex(t["tag"]));
      StatusOr<SecretBytes> opened = Open(aead, key, iv, aad, sealed);
      if (iv.size() != kAeadNonceBytes) {
        ++other_nonce_sizes;
        of_them_valid += t["result"] == "valid";
        EXPECT_EQ(opened.status().code(), absl::StatusCode::kInvalidArgument) << file << " " << Id(t);
        EXPECT_EQ(Seal(aead, key, iv, aad, msg).status().code(), absl::StatusCode::kInvalidArgument);
        continue;
      }
      if (t["result"] == "valid") {
        ASSERT_TRUE(opened.ok()) << file << " " << Id(t) << ": " << opened.status();
        EXPECT_EQ(Plain(*opened), msg) << file << " " << Id(t);
        StatusOr<Bytes> resealed = Seal(aead, key, iv, aad, msg);
        ASSERT_TRUE(resealed.ok()) << file << " " << Id(t) << ": " << resealed.status();
        EXPECT_EQ(*resealed, sealed) << file << " " << Id(t);
      } else {
        EXPECT_FALSE(opened.ok()) << file << " " << Id(t) << " must be refused";
      }
    }
  }
  std::printf("%s: %d vectors (%d of them valid) with a nonce other than 96 bits refused by design\n",
              file.c_str(), other_nonce_sizes, of_them_valid);
  tally.Report(file.c_str(), v);
}

TEST(WycheproofTest, AesGcm) { RunAead(Aead::kAesGcm, "aes_gcm_test.json"); }

TEST(WycheproofTest, ChaCha20Poly1305) {
  RunAead(Aead::kChaCha20Poly1305, "chacha20_poly1305_test.json");
}

TEST(WycheproofTest, X25519) {
  const json v = LoadVectors("x25519_test.json");
  Tally tally;
  int low_order_refused = 0;
  for (const json& g : v["testGroups"]) {
    for (const json& t : g["tests"]) {
      tally.Count(t);
      const Bytes shared = Hex(t["shared"]);
      StatusOr<SecretBytes> got = X25519(Hex(t["private"]), Hex(t["public"]));
      const bool zero = shared == Bytes(32, 0);
      if (zero) {
        // Attune's policy: a low-order peer key is refused (acceptable
        // either way for Wycheproof, required for key agreement here).
        EXPECT_EQ(got.status().code(), absl::StatusCode::kPermissionDenied) << Id(t);
        ++low_order_refused;
      } else if (t["result"] == "invalid") {
        EXPECT_FALSE(got.ok()) << Id(t) << " must be refused";
      } else {
        // valid, and acceptable ones (non-canonical or twist points) with a
        // non-zero secret: RFC 7748 computes them, and so do we.
        ASSERT_TRUE(got.ok()) << Id(t) << ": " << got.status();
        EXPECT_EQ(Plain(*got), shared) << Id(t);
      }
    }
  }
  EXPECT_GT(low_order_refused, 0);
  std::printf("x25519: %d low-order public keys refused\n", low_order_refused);
  tally.Report("x25519_test.json", v);
}

TEST(WycheproofTest, Ed25519) {
  const json v = LoadVectors("ed25519_test.json");
  Tally tally;
  for (const json& g : v["testGroups"]) {
    const Bytes pk = Hex(g["publicKey"]["pk"]);
    for (const json& t : g["tests"]) {
      tally.Count(t);
      Status s = Ed25519Verify(pk, Hex(t["msg"]), Hex(t["sig"]));
      if (t["result"] == "valid") {
        EXPECT_TRUE(s.ok()) << Id(t) << ": " << s;
      } else {
        EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << Id(t) << " must be refused";
      }
    }
  }
  tally.Report("ed25519_test.json", v);
}

TEST(WycheproofTest, HkdfSha256) {
  const json v = LoadVectors("hkdf_sha256_test.json");
  Tally tally;
  for (const json& g : v["testGroups"]) {
    for (const json& t : g["tests"]) {
      tally.Count(t);
      StatusOr<SecretBytes> okm =
          HkdfSha256(Hex(t["ikm"]), Hex(t["salt"]), Hex(t["info"]), t["size"].get<size_t>());
      if (t["result"] == "valid") {
        ASSERT_TRUE(okm.ok()) << Id(t) << ": " << okm.status();
        EXPECT_EQ(Plain(*okm), Hex(t["okm"])) << Id(t);
      } else {
        EXPECT_FALSE(okm.ok()) << Id(t) << " must be refused";
      }
    }
  }
  tally.Report("hkdf_sha256_test.json", v);
}

TEST(CryptoTest, SealedDataOpensOnlyUnchanged) {
  for (Aead aead : {Aead::kAesGcm, Aead::kChaCha20Poly1305}) {
    SecretBytes key = *RandomBytes(32), nonce = *RandomBytes(kAeadNonceBytes);
    const std::string aad = "study s1 round 3", text = "the coordinator sees only sums";
    StatusOr<Bytes> sealed = Seal(aead, key, nonce, View(aad), View(text));
    ASSERT_TRUE(sealed.ok()) << sealed.status();
    ASSERT_EQ(sealed->size(), text.size() + kAeadTagBytes);
    StatusOr<SecretBytes> opened = Open(aead, key, nonce, View(aad), *sealed);
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_EQ(std::string(opened->begin(), opened->end()), text);
    // Every single flipped bit, in the ciphertext or the tag, is refused.
    for (size_t i = 0; i < sealed->size(); ++i) {
      Bytes bad = *sealed;
      bad[i] ^= 0x01;
      EXPECT_EQ(Open(aead, key, nonce, View(aad), bad).status().code(),
                absl::StatusCode::kPermissionDenied)
          << "byte " << i;
    }
    SecretBytes other = *RandomBytes(32);
    EXPECT_EQ(Open(aead, other, nonce, View(aad), *sealed).status().code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(Open(aead, key, nonce, View(std::string("study s1 round 4")), *sealed).status().code(),
              absl::StatusCode::kPermissionDenied);
    EXPECT_EQ(Open(aead, key, nonce, View(aad), ByteView(sealed->data(), 15)).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(Seal(aead, ByteView(key.data(), 31), nonce, {}, {}).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Seal(Aead::kAesGcm, *RandomBytes(32), {}, {}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CryptoTest, X25519AgreesBothWays) {
  X25519KeyPair a = *GenerateX25519(), b = *GenerateX25519();
  EXPECT_EQ(*X25519PublicKey(a.private_key), a.public_key);
  StatusOr<SecretBytes> ab = X25519(a.private_key, b.public_key);
  StatusOr<SecretBytes> ba = X25519(b.private_key, a.public_key);
  ASSERT_TRUE(ab.ok() && ba.ok());
  EXPECT_EQ(Plain(*ab), Plain(*ba));
  EXPECT_NE(Plain(*ab), Bytes(32, 0));
  EXPECT_EQ(X25519(a.private_key, Bytes(31, 9)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// The PRG's keystream is AES-256 of the counter blocks 0 ‖ block, block + 1,
// ...: computed here independently, block by block, with AES-256-ECB.
TEST(CryptoTest, ExpandSeedIsAes256OfTheCounterBlocks) {
  SecretBytes seed = *RandomBytes(kSeedBytes);
  const uint64_t first = 0xfffffffffffffffeULL;  // the low 64 bits wrap
  Bytes stream(5 * 16 + 7);
  ASSERT_TRUE(ExpandSeed(seed, first, stream).ok());
  EVP_CIPHER_CTX* ecb = EVP_CIPHER_CTX_new();
  ASSERT_EQ(EVP_EncryptInit_ex(ecb, EVP_aes_256_ecb(), nullptr, seed.data(), nullptr), 1);
  EVP_CIPHER_CTX_set_padding(ecb, 0);
  for (size_t blk = 0; blk * 16 < stream.size(); ++blk) {
    // A 128-bit big-endian counter: 0 ‖ first + blk, carrying into the high half.
    uint8_t counter[16] = {0};
    unsigned __int128 c = static_cast<unsigned __int128>(first) + blk;
    for (int i = 0; i < 16; ++i) counter[15 - i] = static_cast<uint8_t>(c >> (8 * i));
    uint8_t expect[16];
    int len = 0;
    ASSERT_EQ(EVP_EncryptUpdate(ecb, expect, &len, counter, 16), 1);
    for (size_t i = 0; i < 16 && blk * 16 + i < stream.size(); ++i) {
      ASSERT_EQ(stream[blk * 16 + i], expect[i]) << "block " << blk << " byte " << i;
    }
  }
  EVP_CIPHER_CTX_free(ecb);
  // A later range expanded on its own equals the same range of a longer one.
  Bytes whole(10 * 16), tail(3 * 16 + 5);
  ASSERT_TRUE(ExpandSeed(seed, 5, whole).ok());
  ASSERT_TRUE(ExpandSeed(seed, 7, tail).ok());
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), whole.begin() + 32));
  EXPECT_EQ(ExpandSeed(Bytes(16, 1), 0, tail).code(), absl::StatusCode::kInvalidArgument);
}

// Pieces of a KeyStream (multiples of the block, then any tail) are the
// one-shot keystream, from any starting block.
TEST(CryptoTest, AKeyStreamInPiecesIsTheExpandedSeed) {
  SecretBytes seed = *RandomBytes(kSeedBytes);
  for (uint64_t first : {uint64_t{0}, uint64_t{3}, uint64_t{0xfffffffffffffffe}}) {
    Bytes whole(16 * 9 + 5);
    ASSERT_TRUE(ExpandSeed(seed, first, whole).ok());
    auto ks = KeyStream::Make(seed, first);
    ASSERT_TRUE(ks.ok()) << ks.status();
    Bytes pieces;
    for (size_t n : {size_t{16}, size_t{64}, size_t{48}, size_t{16} + 5}) {
      Bytes piece(n);
      ASSERT_TRUE(ks->Next(piece).ok());
      pieces.insert(pieces.end(), piece.begin(), piece.end());
    }
    EXPECT_EQ(pieces, whole) << "from block " << first;
  }
  EXPECT_EQ(KeyStream::Make(Bytes(31, 1)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CryptoTest, Ed25519SignsAndVerifies) {
  Ed25519KeyPair kp = *GenerateEd25519();
  const std::string msg = "round 7 keys";
  StatusOr<Bytes> sig = Ed25519Sign(kp.private_key, View(msg));
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(Ed25519Verify(kp.public_key, View(msg), *sig).ok());
  EXPECT_EQ(Ed25519Verify(kp.public_key, View(std::string("round 8 keys")), *sig).code(),
            absl::StatusCode::kPermissionDenied);
}

// A site signs with the key of its mTLS certificate; the signature verifies
// against that certificate only.
TEST(CryptoTest, SignaturesWithTheStudyPkiKeys) {
  StatusOr<KeyAndCert> ca = MakeCertificateAuthority("study CA", 30);
  ASSERT_TRUE(ca.ok()) << ca.status();
  CertOptions o;
  o.common_name = "site-1";
  KeyAndCert site1 = *IssueCertificate(*ca, o);
  o.common_name = "site-2";
  KeyAndCert site2 = *IssueCertificate(*ca, o);
  const std::string adv = "site-1 advertises its round keys";
  StatusOr<Bytes> sig = SignWithKeyPem(site1.key_pem, View(adv));
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_TRUE(VerifyWithCertificatePem(site1.cert_pem, View(adv), *sig).ok());
  EXPECT_EQ(VerifyWithCertificatePem(site2.cert_pem, View(adv), *sig).code(),
            absl::StatusCode::kPermissionDenied);
  Bytes bad = *sig;
  bad[bad.size() / 2] ^= 0x40;
  EXPECT_EQ(VerifyWithCertificatePem(site1.cert_pem, View(adv), bad).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(SignWithKeyPem("not a key", View(adv)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune::crypto
