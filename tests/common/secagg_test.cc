// Secure aggregation (common/secagg.h) run in memory, as the coordinator and
// the workers run it over the network: real X25519 / AES-GCM / AES-CTR,
// advertisements signed with certificates of a real study PKI. The
// unmasked sum is checked against the plain sum of the same inputs.
#include "attune/common/secagg.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <map>
#include <set>

#include "attune/common/pki.h"

namespace attune::secagg {
namespace {

using crypto::Bytes;
using crypto::ByteView;

// One certificate per site, issued by a throw-away study CA.
class Pki {
 public:
  explicit Pki(int sites) {
    ca_ = *MakeCertificateAuthority("secagg test CA", 1);
    for (int i = 0; i < sites; ++i) {
      CertOptions o;
      o.common_name = "site-" + std::to_string(i);
      sites_.push_back(*IssueCertificate(ca_, o));
    }
  }
  Signer SignerFor(int site) const {
    std::string key = sites_[site].key_pem;
    return [key](ByteView m) { return crypto::SignWithKeyPem(key, m); };
  }
  Verifier Verify() const {
    return [this](int site, ByteView m, ByteView sig) {
      return crypto::VerifyWithCertificatePem(sites_.at(site).cert_pem, m, sig);
    };
  }

 private:
  KeyAndCert ca_;
  std::vector<KeyAndCert> sites_;
};

struct Scenario {
  int sites = 3, threshold = 2, degree = 0;
  int64_t length = 1000;
  std::set<int> silent_after_keys;    // share keys, then never send input
  std::set<int> silent_after_input;   // send input, then never answer the unmask request
  // responder -> the site whose revealed share it alters (a self-mask seed
  // share of a survivor, or a mask key share of a dropped site).
  std::map<int, int> wrong_share;
};

struct Outcome {
  Status status;                  // of the first step that failed, or OK
  std::vector<float> sum, plain;  // decoded secure sum, plain sum of the survivors' inputs
  double bound = 0;
  std::vector<std::string> faults;  // Server::faults
};

Options MakeOptions(const Scenario& r) {
  Options o;
  o.context = "study s1 round 4 update";
  o.sites = r.sites;
  o.threshold = r.threshold;
  o.degree = r.degree;
  o.length = r.length;
  return o;
}

Outcome Aggregate(const Scenario& r, const Pki& pki) {
  Outcome out;
  const Options o = MakeOptions(r);
  std::mt19937 rng(static_cast<uint32_t>(r.sites * 1000 + r.threshold));
  std::normal_distribution<float> normal(0, 0.3f);
  Quantizer q = *Quantizer::Make(2.0, r.sites);

  StatusOr<Server> server = Server::Make(o);
  if (!server.ok()) return {server.status()};
  std::vector<Client> clients;
  for (int u = 0; u < r.sites; ++u) {
    StatusOr<Client> c = Client::Make(o, u, pki.SignerFor(u));
    if (!c.ok()) return {c.status()};
    clients.push_back(std::move(*c));
    if (Status s = server->AddAdvertisement(clients.back().advertisement()); !s.ok()) return {s};
  }
  StatusOr<std::vector<Advertisement>> ads = server->Advertisements();
  if (!ads.ok()) return {ads.status()};
  for (int u = 0; u < r.sites; ++u) {
    StatusOr<std::vector<SealedShares>> shares = clients[u].ShareKeys(*ads, pki.Verify());
    if (!shares.ok()) return {shares.status()};
    if (Status s = server->AddSealedShares(u, *shares); !s.ok()) return {s};
  }
  out.plain.assign(r.length, 0);
  for (int u = 0; u < r.sites; ++u) {
    StatusOr<std::vector<SealedShares>> inbox = server->SharesFor(u);
    if (!inbox.ok()) return {inbox.status()};
    if (r.silent_after_keys.count(u)) continue;
    std::vector<float> x(r.length);
    for (float& v : x) v = normal(rng);
    std::vector<uint32_t> encoded(r.length);
    q.Encode(x, encoded);
    StatusOr<std::vector<uint32_t>> y = clients[u].MaskInput(*inbox, encoded);
    if (!y.ok()) return {y.status()};
    if (Status s = server->AddMaskedInput(u, *y); !s.ok()) return {s};
    for (int64_t i = 0; i < r.length; ++i) out.plain[i] += x[i];
  }
  StatusOr<UnmaskRequest> request = server->Request();
  if (!request.ok()) return {request.status()};
  for (int u : request->survivors) {
    if (r.silent_after_input.count(u)) continue;
    StatusOr<UnmaskResponse> resp = clients[u].Unmask(*request);
    if (!resp.ok()) return {resp.status()};
    if (auto w = r.wrong_share.find(u); w != r.wrong_share.end()) {
      for (auto* list : {&resp->self_mask_seeds, &resp->mask_keys}) {
        for (RevealedShare& s : *list) {
          if (s.of == w->second) s.share.y[0] ^= 0x5a;
        }
      }
    }
    if (Status s = server->AddUnmaskResponse(*resp); !s.ok()) return {s};
  }
  StatusOr<std::vector<uint32_t>> sum = server->Finish();
  if (!sum.ok()) return {sum.status()};
  out.faults = server->faults();
  out.sum.assign(r.length, 0);
  q.DecodeSum(*sum, server->survivors(), out.sum);
  // Rounding of the quantiser, plus float32 rounding of sums of size ~n.
  out.bound = q.SumErrorBound(server->survivors()) + 1e-6 * r.sites;
  return out;
}

void ExpectSumsAgree(const Outcome& o, const std::string& what) {
  ASSERT_TRUE(o.status.ok()) << what << ": " << o.status;
  double worst = 0;
  for (size_t i = 0; i < o.sum.size(); ++i) worst = std::max(worst, std::fabs(double(o.sum[i]) - o.plain[i]));
  EXPECT_LE(worst, o.bound) << what;
  std::printf("%s: max |secure - plain| = %.3g (bound %.3g)\n", what.c_str(), worst, o.bound);
}

std::set<int> FirstSites(int k, int from = 0) {
  std::set<int> s;
  for (int i = 0; i < k; ++i) s.insert(from + i);
  return s;
}

// A server and its clients after step 1 (advertised, relayed), and after
// step 2 too when `share` is set.
struct Started {
  Server server;
  std::vector<Client> clients;
  std::vector<Advertisement> ads;
};

Started Start(const Options& o, const Pki& pki, bool share) {
  Started s{*Server::Make(o), {}, {}};
  for (int u = 0; u < o.sites; ++u) {
    s.clients.push_back(*Client::Make(o, u, pki.SignerFor(u)));
    EXPECT_TRUE(s.server.AddAdvertisement(s.clients.back().advertisement()).ok());
  }
  s.ads = *s.server.Advertisements();
  for (int u = 0; share && u < o.sites; ++u) {
    EXPECT_TRUE(s.server.AddSealedShares(u, *s.clients[u].ShareKeys(s.ads, pki.Verify())).ok());
  }
  return s;
}

TEST(SecAggTest, UnmaskedSumEqualsThePlainSumWithDropouts) {
  for (int n : {2, 3, 5, 10, 20}) {
    const int t = std::min(n, std::max(2, n * 2 / 3 + 1));
    Pki pki(n);
    const int tolerated = n - t;
    std::set<int> dropouts = {0};
    if (tolerated >= 1) dropouts.insert(1);
    dropouts.insert(tolerated);
    for (int d : dropouts) {
      Scenario r;
      r.sites = n;
      r.threshold = t;
      r.silent_after_keys = FirstSites(d, n - d);  // the last d sites drop before their input
      ExpectSumsAgree(Aggregate(r, pki), "n=" + std::to_string(n) + " t=" + std::to_string(t) +
                                             " dropped=" + std::to_string(d));
    }
    // One more dropout than tolerated: a clean abort.
    Scenario r;
    r.sites = n;
    r.threshold = t;
    r.silent_after_keys = FirstSites(tolerated + 1);
    Outcome o = Aggregate(r, pki);
    EXPECT_EQ(o.status.code(), absl::StatusCode::kFailedPrecondition) << n << ": " << o.status;
  }
}

TEST(SecAggTest, SitesSilentAtUnmaskingAreToleratedDownToTheThreshold) {
  Pki pki(7);
  Scenario r;
  r.sites = 7;
  r.threshold = 4;
  r.silent_after_keys = {6};
  r.silent_after_input = {0, 1};  // 6 survivors, 4 answer: enough
  ExpectSumsAgree(Aggregate(r, pki), "7 sites, 1 dropped, 2 silent at unmasking");
  r.silent_after_input = {0, 1, 2};  // 3 answer: fewer than t, abort
  EXPECT_EQ(Aggregate(r, pki).status.code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SecAggTest, SparseNeighbourGraph) {
  Pki pki(20);
  Scenario r;
  r.sites = 20;
  r.degree = 6;
  r.threshold = 4;
  r.length = 5000;
  ExpectSumsAgree(Aggregate(r, pki), "SecAgg+ 20 sites degree 6");
  r.silent_after_keys = {3, 11};
  ExpectSumsAgree(Aggregate(r, pki), "SecAgg+ 20 sites degree 6, 2 dropped");
}

TEST(SecAggTest, GraphIsSymmetricWithTheDegreeAskedAndDependsOnTheSeed) {
  Graph a = *Graph::Make(30, 6, Bytes{1});
  Graph b = *Graph::Make(30, 6, Bytes{2});
  bool differ = false;
  for (int u = 0; u < 30; ++u) {
    EXPECT_EQ(a.Neighbours(u).size(), 6u) << u;
    for (int v : a.Neighbours(u)) {
      EXPECT_NE(u, v);
      EXPECT_TRUE(a.Adjacent(v, u));
    }
    differ |= a.Neighbours(u) != b.Neighbours(u);
  }
  EXPECT_TRUE(differ);
  EXPECT_EQ(Graph::Make(5, 0, {})->Neighbours(2), (std::vector<int>{0, 1, 3, 4}));
}

// The coordinator relays site 1's advertisement with a mask key of its own:
// every other site refuses to share keys, naming site 1.
TEST(SecAggTest, ACoordinatorThatSwapsAnAdvertisedKeyIsDetected) {
  Pki pki(4);
  Started st = Start(MakeOptions(Scenario{.sites = 4, .threshold = 3}), pki, false);
  std::vector<Client>& clients = st.clients;
  std::vector<Advertisement> ads = st.ads;
  ads[1].mask_public_key = crypto::GenerateX25519()->public_key;
  for (int u : {0, 2, 3}) {
    StatusOr<std::vector<SealedShares>> s = clients[u].ShareKeys(ads, pki.Verify());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_NE(s.status().message().find("site 1"), std::string::npos) << s.status();
  }
  // Site 1 itself sees its own advertisement altered.
  EXPECT_EQ(clients[1].ShareKeys(ads, pki.Verify()).status().code(),
            absl::StatusCode::kPermissionDenied);
}

// What the coordinator sees of one site, y = x + masks, is uniform on
// Z_2^32 even for a constant x: chi-square of the top byte over 2^16 words
// (255 degrees of freedom; 0.999 quantile about 330), and the low byte too.
// All masks in one pass are each whole keystream added in turn (mod 2^32), over
// lengths that end inside a slice and span several.
TEST(SecAggTest, MasksInOnePassAreTheMasksInTurn) {
  std::vector<crypto::SecretBytes> seeds;
  for (int k = 0; k < 3; ++k) seeds.push_back(*crypto::RandomBytes(crypto::kSeedBytes));
  const std::vector<Mask> masks = {{seeds[0], 1}, {seeds[1], -1}, {seeds[2], 1}};
  for (size_t len : {size_t{1}, size_t{16384}, size_t{40000}}) {
    std::vector<uint32_t> once(len), in_turn(len);
    for (size_t i = 0; i < len; ++i) once[i] = in_turn[i] = static_cast<uint32_t>(i * 2654435761u);
    ASSERT_TRUE(ApplyMasks(masks, once).ok());
    for (const Mask& m : masks) {  // each keystream whole, from the one-shot PRG
      std::vector<uint32_t> stream(len);
      ASSERT_TRUE(crypto::ExpandSeed(m.seed, 0, {reinterpret_cast<uint8_t*>(stream.data()), len * 4})
                      .ok());
      for (size_t i = 0; i < len; ++i) in_turn[i] += static_cast<uint32_t>(m.sign) * stream[i];
    }
    EXPECT_EQ(once, in_turn) << len << " words";
    // And the masks come off again.
    std::vector<Mask> undo = masks;
    for (Mask& m : undo) m.sign = -m.sign;
    ASSERT_TRUE(ApplyMasks(undo, once).ok());
    for (size_t i = 0; i < len; ++i) ASSERT_EQ(once[i], static_cast<uint32_t>(i * 2654435761u));
  }
  std::vector<uint32_t> some(4);
  EXPECT_EQ(ApplyMasks(std::vector<Mask>{{seeds[0], 2}}, some).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SecAggTest, OneMaskedInputLooksUniform) {
  Pki pki(3);
  const Options o = MakeOptions(Scenario{.sites = 3, .threshold = 2, .length = 1 << 16});
  Started st = Start(o, pki, true);
  std::vector<uint32_t> constant(o.length, 0x80000000u);
  std::vector<uint32_t> y = *st.clients[0].MaskInput(*st.server.SharesFor(0), constant);
  for (int shift : {24, 0}) {
    std::vector<double> counts(256, 0);
    for (uint32_t w : y) counts[(w >> shift) & 0xff]++;
    const double expected = o.length / 256.0;
    double chi2 = 0;
    for (double c : counts) chi2 += (c - expected) * (c - expected) / expected;
    EXPECT_LT(chi2, 330.0) << "byte at bit " << shift;
    std::printf("masked input, byte at bit %d: chi-square %.1f (255 d.o.f.)\n", shift, chi2);
  }
}

TEST(SecAggTest, ASiteNeverRevealsBothSecretsOfAPeer) {
  Pki pki(3);
  Started st = Start(MakeOptions(Scenario{.sites = 3, .threshold = 2, .length = 8}), pki, true);
  std::vector<Client>& clients = st.clients;
  std::vector<uint32_t> x(8, 1);
  ASSERT_TRUE(clients[0].MaskInput(*st.server.SharesFor(0), x).ok());
  auto code = [&](UnmaskRequest r) { return clients[0].Unmask(r).status().code(); };
  EXPECT_EQ(code({{0, 1, 2}, {2}}), absl::StatusCode::kPermissionDenied);   // 2 both ways
  EXPECT_EQ(code({{1, 2}, {0}}), absl::StatusCode::kPermissionDenied);      // we are "dropped"
  EXPECT_EQ(code({{0, 0, 1}, {}}), absl::StatusCode::kPermissionDenied);    // a site twice
  EXPECT_EQ(code({{0}, {1, 2}}), absl::StatusCode::kFailedPrecondition);    // fewer than t
  StatusOr<UnmaskResponse> first = clients[0].Unmask({{0, 1}, {2}});
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->self_mask_seeds.size(), 2u);
  EXPECT_EQ(first->mask_keys.size(), 1u);
  // A second request (say, naming 2 as a survivor now) is refused.
  EXPECT_EQ(code({{0, 1, 2}, {}}), absl::StatusCode::kPermissionDenied);
}

TEST(SecAggTest, QuantizerSumsWithoutWrapping) {
  Quantizer q = *Quantizer::Make(1.5, 10);
  std::vector<float> x = {-1.5f, 1.5f, 0.f, 2.f, -7.f, NAN, 0.3f};
  std::vector<uint32_t> e(x.size());
  EXPECT_EQ(q.Encode(x, e), 3);  // 2, -7 and NaN
  // Ten inputs at the top of the range sum to at most 2^32 − 1.
  std::vector<uint32_t> sum(x.size(), 0);
  for (int i = 0; i < 10; ++i)
    for (size_t j = 0; j < x.size(); ++j) {
      ASSERT_GE(uint64_t{sum[j]} + e[j], uint64_t{sum[j]});
      ASSERT_LT(uint64_t{sum[j]} + e[j], uint64_t{1} << 32) << "wraps";
      sum[j] += e[j];
    }
  std::vector<float> d(x.size());
  q.DecodeSum(sum, 10, d);
  const float expect[] = {-15.f, 15.f, 0.f, 15.f, -15.f, 0.f, 3.f};
  for (size_t j = 0; j < x.size(); ++j) EXPECT_NEAR(d[j], expect[j], q.SumErrorBound(10) + 1e-5) << j;
  EXPECT_FALSE(Quantizer::Make(0, 3).ok());
  EXPECT_FALSE(Quantizer::Make(1, 0).ok());
  EXPECT_FALSE(Quantizer::Make(1, 256).ok());
}

TEST(SecAggTest, AWrongShareIsLeftOutAndItsHolderNamedOrTheAggregationAborts) {
  Pki pki(5);
  // Site 4 alters its share of survivor 0's self-mask seed; five answers for
  // t = 3: the others rebuild the seed (checked against 0's commitment).
  Scenario seed;
  seed.sites = 5;
  seed.threshold = 3;
  seed.wrong_share = {{4, 0}};
  Outcome o = Aggregate(seed, pki);
  ASSERT_TRUE(o.status.ok()) << o.status;
  for (int64_t i = 0; i < seed.length; ++i) ASSERT_NEAR(o.sum[i], o.plain[i], o.bound) << i;
  EXPECT_EQ(o.faults, std::vector<std::string>{"site 4's share of site 0's self-mask seed"});
  // The same for a dropped site's mask key (checked against its public key).
  Scenario key = seed;
  key.silent_after_keys = {1};
  key.wrong_share = {{2, 1}};
  o = Aggregate(key, pki);
  ASSERT_TRUE(o.status.ok()) << o.status;
  for (int64_t i = 0; i < key.length; ++i) ASSERT_NEAR(o.sum[i], o.plain[i], o.bound) << i;
  EXPECT_EQ(o.faults, std::vector<std::string>{"site 2's share of site 1's mask key"});
  // With exactly t answers a wrong share is detected but cannot be outvoted:
  // nothing is unmasked.
  Scenario tight = seed;
  tight.silent_after_input = {1, 2};
  o = Aggregate(tight, pki);
  EXPECT_EQ(o.status.code(), absl::StatusCode::kDataLoss) << o.status;
  EXPECT_NE(o.status.message().find("self-mask seed rebuilt for site 0 does not match"),
            std::string::npos)
      << o.status;
  // A commitment that is not the advertised one is refused by peers (it is signed).
  const Options opts = MakeOptions(seed);
  Client c = *Client::Make(opts, 0, pki.SignerFor(0));
  Advertisement forged = c.advertisement();
  forged.seed_commitment[0] ^= 1;
  Client peer = *Client::Make(opts, 1, pki.SignerFor(1));
  std::vector<Advertisement> relayed = {forged, peer.advertisement()};
  Client third = *Client::Make(opts, 2, pki.SignerFor(2));
  relayed.push_back(third.advertisement());
  EXPECT_EQ(peer.ShareKeys(relayed, pki.Verify()).status().code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace attune::secagg
