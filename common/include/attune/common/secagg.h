// Secure aggregation: the coordinator learns the sum of the sites' vectors
// and nothing else about any one of them (Bonawitz et al., "Practical
// Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017),
// with the sparse neighbour graph of Bell et al. ("Secure Single-Server
// Aggregation with (Poly)Logarithmic Overhead", CCS 2020, "SecAgg+") as an
// option for many sites. This file is the protocol's state machines and
// math, with no I/O: the worker drives a Client, the coordinator a Server,
// and they exchange the message structs below over the federation RPCs.
//
// One aggregation (a round's update, or its audit sums) among n sites,
// indexed 0..n−1 in the round's roster order, threshold t:
//
//   1. Advertise   each site makes two X25519 key pairs — c (to encrypt
//                  shares) and s (to agree pairwise masks) — and signs
//                  (context, index, c_pk, s_pk) with the key of its mTLS
//                  certificate. The server relays the advertisements.
//   2. ShareKeys   each site checks every neighbour's signature (against
//                  that site's certificate: a coordinator that swaps a key
//                  is detected), draws a 32-byte self-mask seed b, splits
//                  s_sk and b t-of-|N(u) ∪ {u}| with Shamir (shamir.h), and
//                  seals each holder's two shares with AES-256-GCM under
//                  HKDF(X25519(c_sk, c_pk of the holder)). The server
//                  relays the sealed shares (it cannot open them).
//   3. MaskedInput y_u = x_u + PRG(b_u) + Σ_{v ∈ N(u), v > u} PRG(s_uv)
//                  − Σ_{v ∈ N(u), v < u} PRG(s_uv)  (mod 2^32), where s_uv =
//                  HKDF(X25519(s_sk_u, s_pk_v)) and PRG is AES-256-CTR
//                  (crypto.h ExpandSeed). The server adds the y_u into one
//                  running sum: memory O(vector), whatever n.
//   3½. Confirm    the server names the survivors (sent y); each survivor
//                  signs (context, survivors) with its certificate key, once
//                  per aggregation (secure_update.h SecureSite::Confirm).
//   4. Unmask      only when t survivors signed the very survivor set it is
//                  asked about does a site answer: the server names the survivors (sent y) and the dropped
//                  (shared keys, sent no y). Each survivor opens the shares
//                  it holds and reveals, per peer, b for a survivor and s_sk
//                  for a dropped site — never both for one peer, and it
//                  refuses a request that names a peer both ways or asks
//                  about a site twice. With ≥ t answers the server rebuilds
//                  each survivor's b and each dropped site's s_sk (checked
//                  against the advertised s_pk), removes PRG(b_u) and the
//                  dropped sites' pairwise masks, and has Σ x_u over the
//                  survivors. With fewer than t sites at any step the
//                  aggregation aborts cleanly (FailedPrecondition): nothing
//                  is revealed and the caller may retry the round.
//
// Inputs are fixed point in Z_2^32 (Quantizer): each value clipped to
// [−clip, clip] (clipped values are counted, never silent) and scaled so
// that the sum of max_sites inputs cannot wrap.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "attune/common/crypto.h"
#include "attune/common/shamir.h"
#include "attune/common/status.h"

namespace attune::secagg {

// ---- Fixed point ------------------------------------------------------------

class Quantizer {
 public:
  // InvalidArgument unless clip > 0 (finite) and 1 ≤ max_sites ≤ 255.
  static StatusOr<Quantizer> Make(double clip, int max_sites);

  // q = round((clamp(x, −clip, clip) + clip) · scale) ∈ [0, 2·clip·scale].
  // Returns how many values were clipped (NaN and ±inf count as clipped,
  // to 0 and ±clip).
  int64_t Encode(std::span<const float> x, std::span<uint32_t> out) const;

  // The real-valued sum of `n` encoded inputs from their sum mod 2^32.
  void DecodeSum(std::span<const uint32_t> sum, int n, std::span<float> out) const;

  // |decoded − true sum of the clipped inputs| per value, for n inputs
  // (rounding: n / (2·scale), plus float32 rounding of the result).
  double SumErrorBound(int n) const { return n * 0.5 / scale_; }

  double clip() const { return clip_; }
  double scale() const { return scale_; }
  int max_sites() const { return max_sites_; }

 private:
  Quantizer(double clip, int max_sites, double scale)
      : clip_(clip), max_sites_(max_sites), scale_(scale) {}
  double clip_;
  int max_sites_;
  double scale_;
};

// ---- Masks ------------------------------------------------------------------

// vec += sign · PRG(seed) (mod 2^32), the keystream read as little-endian
// 32-bit words; sign is +1 or −1.
Status ApplyMask(crypto::ByteView seed, int sign, std::span<uint32_t> vec);
// Every mask at once: vec += Σ sign_k · PRG(seed_k), in one pass over vec
// (each slice of it takes every keystream while it is in cache).
struct Mask {
  crypto::ByteView seed;
  int sign = 1;
};
Status ApplyMasks(std::span<const Mask> masks, std::span<uint32_t> vec);

// ---- Neighbour graph ----------------------------------------------------------

// Who masks with whom. degree 0 (or ≥ n − 1): everyone (Bonawitz). Else
// SecAgg+: a Harary graph of that (even, rounded up) degree over a
// permutation of the sites drawn from `seed` (GraphSeed: public, per
// aggregation), so no one chooses their neighbours. Neighbours(u) excludes u.
class Graph {
 public:
  static StatusOr<Graph> Make(int sites, int degree, crypto::ByteView seed);
  int sites() const { return static_cast<int>(neighbours_.size()); }
  const std::vector<int>& Neighbours(int u) const { return neighbours_[u]; }
  bool Adjacent(int u, int v) const;
  // u and its neighbours: the holders of u's shares, ascending.
  std::vector<int> Holders(int u) const;

 private:
  std::vector<std::vector<int>> neighbours_;  // ascending
};

// ---- Messages -----------------------------------------------------------------

struct Advertisement {
  int site = -1;
  crypto::Bytes cipher_public_key;  // c_pk, 32 bytes
  crypto::Bytes mask_public_key;    // s_pk, 32 bytes
  crypto::Bytes seed_commitment;    // SeedCommitment of b, 32 bytes
  crypto::Bytes signature;          // by the site's certificate key over SignedBytes()
};

// The commitment to a self-mask seed b that a site advertises (signed):
// SHA-256 of the context, the site's index and b. A rebuilt b is checked
// against it, so a wrong share is detected, and named when there are
// shares to spare (Server::faults).
crypto::Bytes SeedCommitment(const std::string& context, int site, crypto::ByteView seed);

// What an advertisement's signature covers: the context, the index, both
// keys and the seed commitment, length-prefixed.
crypto::Bytes SignedBytes(const std::string& context, const Advertisement& a);

// Shares of `from`'s two secrets for holder `to`, sealed so only `to` can
// open them.
struct SealedShares {
  int from = -1;
  int to = -1;
  crypto::Bytes sealed;
};

struct UnmaskRequest {
  std::vector<int> survivors;  // sent their masked input
  std::vector<int> dropped;    // shared keys but sent no masked input
};

struct RevealedShare {
  int of = -1;             // whose secret
  shamir::Share share;     // the responder's share of it
};

struct UnmaskResponse {
  int site = -1;
  std::vector<RevealedShare> self_mask_seeds;  // b_v shares, v a survivor
  std::vector<RevealedShare> mask_keys;        // s_sk_v shares, v dropped
};

// Checks a site's signature over `message` (the coordinator's roster
// knows each site's certificate: crypto::VerifyWithCertificatePem).
using Verifier = std::function<Status(int site, crypto::ByteView message, crypto::ByteView sig)>;
// Signs with this site's certificate key (crypto::SignWithKeyPem).
using Signer = std::function<StatusOr<crypto::Bytes>(crypto::ByteView message)>;

struct Options {
  std::string context;  // binds everything to one aggregation: study, round, purpose
  int sites = 0;        // n, at most shamir::kMaxShares
  int threshold = 0;    // t: 2 ≤ t ≤ the smallest |N(u) ∪ {u}|
  int degree = 0;       // neighbour graph degree; 0 = everyone; the graph's
                        // permutation comes from GraphSeed of the advertisements
  int64_t length = 0;   // the vector's number of 32-bit words
};

// The neighbour graph's seed: SHA-256 of the context and every
// advertisement (index, keys, commitment), in index order. Every site's keys
// are fresh, so neither the coordinator nor a site picks the graph; sites
// compute it from the relayed advertisements, whose signatures they check.
crypto::Bytes GraphSeed(const std::string& context, const std::vector<Advertisement>& ads);

// What a survivor signs in the consistency step: the context, the
// aggregation's GraphSeed (the digest of every advertisement, fresh keys
// included, so that a signature of one aggregation is worth nothing in
// another, whatever context the coordinator gives them) and the
// survivors' indices, ascending, length-prefixed.
crypto::Bytes SurvivorBytes(const std::string& context, crypto::ByteView aggregation,
                            const std::vector<int>& survivors);

// ---- Site side ------------------------------------------------------------------

class Client {
 public:
  static StatusOr<Client> Make(const Options& options, int site, Signer sign);

  const Advertisement& advertisement() const { return advertisement_; }
  // After ShareKeys: GraphSeed of the advertisements (what SurvivorBytes binds).
  const crypto::Bytes& aggregation() const { return aggregation_; }

  // Step 2: every advertisement the server relayed (ours included). Needs
  // at least t of our share holders; verifies each neighbour's signature;
  // refuses a relayed copy of our own that differs from ours. Returns
  // the sealed shares for each holder that advertised.
  StatusOr<std::vector<SealedShares>> ShareKeys(const std::vector<Advertisement>& relayed,
                                                const Verifier& verify);

  // Step 3: the sealed shares addressed to us, and our input (already
  // quantised). Returns y. Masks with the neighbours that shared keys.
  StatusOr<std::vector<uint32_t>> MaskInput(const std::vector<SealedShares>& inbox,
                                            std::span<const uint32_t> input);

  // Step 4: our share of each survivor's self-mask seed and of each dropped
  // site's mask key, for the peers whose shares we hold. PermissionDenied
  // for a request that names a site twice or both ways (that would reveal
  // both secrets of a peer), that does not name us as a survivor, or comes
  // a second time; FailedPrecondition (abort) for fewer than t survivors.
  StatusOr<UnmaskResponse> Unmask(const UnmaskRequest& request);

 private:
  Client() = default;
  Options options_;
  int site_ = -1;
  Graph graph_;
  crypto::Bytes aggregation_;
  crypto::SecretBytes cipher_private_key_, mask_private_key_, self_seed_;
  Advertisement advertisement_;
  std::map<int, Advertisement> peers_;        // neighbours that advertised (verified)
  std::map<int, crypto::SecretBytes> inbox_;  // from (us too) -> opened shares: whose we hold
  bool masked_ = false, unmasked_ = false;
};

// ---- Coordinator side ------------------------------------------------------------

class Server {
 public:
  static StatusOr<Server> Make(const Options& options);

  // Step 1. Refuses a second advertisement from a site (AlreadyExists).
  Status AddAdvertisement(const Advertisement& a);
  // Closes step 1 and returns the advertisements to relay to every site.
  // FailedPrecondition (abort) with fewer than t.
  StatusOr<std::vector<Advertisement>> Advertisements();

  // Step 2. Refuses shares from a site that did not advertise or sends
  // twice, and a set that is not exactly one sealed share for each of its
  // neighbours that advertised.
  Status AddSealedShares(int from, const std::vector<SealedShares>& shares);
  // Closes step 2 and returns what to relay to `site`. FailedPrecondition
  // (abort) when fewer than t sites shared keys.
  StatusOr<std::vector<SealedShares>> SharesFor(int site);

  // Step 3: folds y into the running sum. Refuses a site that did not
  // share keys, a second input and a wrong length.
  Status AddMaskedInput(int site, std::span<const uint32_t> y);

  // Closes step 3 and names the survivors and the dropped.
  // FailedPrecondition (abort) when fewer than t sites sent input.
  StatusOr<UnmaskRequest> Request();
  Status AddUnmaskResponse(const UnmaskResponse& r);

  // The unmasked sum over the survivors. FailedPrecondition (abort: nothing
  // revealed beyond what was already sent) when some secret lacks t shares;
  // each rebuilt secret is checked (a self-mask seed against its
  // commitment, a mask key against the advertised public key): a wrong
  // share is left out and its holder named in faults() when the other
  // shares still rebuild it; DataLoss, naming the secret's holders, when
  // they do not.
  StatusOr<std::vector<uint32_t>> Finish();

  int survivors() const { return static_cast<int>(inputs_.size()); }
  // After Advertisements(): GraphSeed of the advertisements relayed.
  const crypto::Bytes& aggregation() const { return aggregation_; }
  // After Finish: the holders whose revealed shares were wrong (and left
  // out of the rebuilt secrets), e.g. "site 2's share of site 0's
  // self-mask seed".
  const std::vector<std::string>& faults() const { return faults_; }

 private:
  enum class Step { kAdvertise, kShareKeys, kMaskedInput, kUnmask, kDone };
  Server() = default;
  Options options_;
  Graph graph_;
  crypto::Bytes aggregation_;
  Step step_ = Step::kAdvertise;
  std::map<int, Advertisement> ads_;
  std::map<int, std::vector<SealedShares>> shares_from_;
  std::set<int> inputs_;
  std::vector<uint32_t> sum_;
  std::map<int, UnmaskResponse> responses_;
  std::vector<std::string> faults_;
};

}  // namespace attune::secagg
