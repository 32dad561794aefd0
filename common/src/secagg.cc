#include "attune/common/secagg.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/tensor_codec.h"

namespace attune::secagg {
namespace {

using crypto::ByteView;
using crypto::Bytes;
using crypto::SecretBytes;

static_assert(std::endian::native == std::endian::little,
              "masks read the keystream as little-endian 32-bit words");

constexpr size_t kKey = crypto::kX25519KeyBytes;

void AppendU32(Bytes* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void AppendField(Bytes* out, ByteView field) {
  AppendU32(out, static_cast<uint32_t>(field.size()));
  out->insert(out->end(), field.begin(), field.end());
}

Bytes Label(const std::string& what, int a, int b) {
  Bytes out(what.begin(), what.end());
  AppendU32(&out, static_cast<uint32_t>(a));
  AppendU32(&out, static_cast<uint32_t>(b));
  return out;
}

// The seed both u and v derive for their pairwise mask.
StatusOr<SecretBytes> PairSeed(const std::string& context, ByteView own_private,
                               ByteView peer_public, int u, int v) {
  ATTUNE_ASSIGN_OR_RETURN(SecretBytes agreed, crypto::X25519(own_private, peer_public));
  return crypto::HkdfSha256(agreed, crypto::View(context),
                            Label("attune/secagg/v1/pair-mask", std::min(u, v), std::max(u, v)),
                            crypto::kSeedBytes);
}

// The key that seals `from`'s shares for `to` (distinct per direction, so
// the zero nonce is never used twice under one key).
StatusOr<SecretBytes> ShareKey(const std::string& context, ByteView own_private,
                               ByteView peer_public, int from, int to) {
  ATTUNE_ASSIGN_OR_RETURN(SecretBytes agreed, crypto::X25519(own_private, peer_public));
  return crypto::HkdfSha256(agreed, crypto::View(context),
                            Label("attune/secagg/v1/share-key", from, to), 32);
}

Bytes ShareAad(const std::string& context, int from, int to) {
  Bytes aad(context.begin(), context.end());
  AppendU32(&aad, static_cast<uint32_t>(from));
  AppendU32(&aad, static_cast<uint32_t>(to));
  return aad;
}

const Bytes kZeroNonce(crypto::kAeadNonceBytes, 0);

Status CheckSite(int site, int n, const char* what) {
  if (site < 0 || site >= n) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": site ", site, " is not in 0..", n - 1));
  }
  return absl::OkStatus();
}

Status TooFew(const char* step, size_t have, int threshold) {
  return absl::FailedPreconditionError(
      absl::StrCat("secure aggregation aborted at ", step, ": ", have,
                   " sites, fewer than the threshold ", threshold));
}

Status ValidateOptions(const Options& o) {
  if (o.sites < 2 || o.sites > shamir::kMaxShares) {
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation needs 2 to ", shamir::kMaxShares, " sites, not ", o.sites));
  }
  if (o.length < 0) return absl::InvalidArgumentError("secure aggregation: negative length");
  if (o.context.empty()) return absl::InvalidArgumentError("secure aggregation: empty context");
  return absl::OkStatus();
}

// Checks the threshold against the graph: every site's secrets need t
// holders, and t ≥ 2 (one share would reveal a secret).
Status ValidateThreshold(const Options& o, const Graph& g) {
  size_t smallest = static_cast<size_t>(o.sites);
  for (int u = 0; u < o.sites; ++u) smallest = std::min(smallest, g.Holders(u).size());
  if (o.threshold < 2 || static_cast<size_t>(o.threshold) > smallest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "secure aggregation threshold must be 2 to ", smallest, " (the fewest holders of a site's "
        "shares), not ", o.threshold));
  }
  return absl::OkStatus();
}

}  // namespace

// ---- Quantizer --------------------------------------------------------------

StatusOr<Quantizer> Quantizer::Make(double clip, int max_sites) {
  if (!(clip > 0) || !std::isfinite(clip)) {
    return absl::InvalidArgumentError(absl::StrCat("quantizer clip must be > 0, not ", clip));
  }
  if (max_sites < 1 || max_sites > shamir::kMaxShares) {
    return absl::InvalidArgumentError(
        absl::StrCat("quantizer max_sites must be 1 to 255, not ", max_sites));
  }
  // n values, each in [0, 2·clip·scale], sum to at most 2^32 − 1.
  const double scale = std::floor(4294967295.0 / max_sites) / (2 * clip);
  return Quantizer(clip, max_sites, scale);
}

int64_t Quantizer::Encode(std::span<const float> x, std::span<uint32_t> out) const {
  ATTUNE_CHECK(x.size() == out.size());
  const double top = std::floor(4294967295.0 / max_sites_);
  int64_t clipped = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double v = x[i];
    if (std::isnan(v)) {
      v = 0;
      ++clipped;
    } else if (v > clip_ || v < -clip_) {
      v = v > 0 ? clip_ : -clip_;
      ++clipped;
    }
    out[i] = static_cast<uint32_t>(std::min(top, std::nearbyint((v + clip_) * scale_)));
  }
  return clipped;
}

void Quantizer::DecodeSum(std::span<const uint32_t> sum, int n, std::span<float> out) const {
  ATTUNE_CHECK(sum.size() == out.size());
  for (size_t i = 0; i < sum.size(); ++i) {
    out[i] = static_cast<float>(sum[i] / scale_ - n * clip_);
  }
}

// ---- Masks ------------------------------------------------------------------

Status ApplyMask(ByteView seed, int sign, std::span<uint32_t> vec) {
  const Mask mask{seed, sign};
  return ApplyMasks({&mask, 1}, vec);
}

Status ApplyMasks(std::span<const Mask> masks, std::span<uint32_t> vec) {
  std::vector<crypto::KeyStream> streams;
  for (const Mask& m : masks) {
    if (m.sign != 1 && m.sign != -1) return absl::InvalidArgumentError("mask sign must be +1 or -1");
    ATTUNE_ASSIGN_OR_RETURN(crypto::KeyStream ks, crypto::KeyStream::Make(m.seed));
    streams.push_back(std::move(ks));
  }
  // Expands and adds in slices that stay in cache: one pass over vec.
  constexpr size_t kWords = 16384;  // 64 KiB, a multiple of the 16-byte block
  std::vector<uint32_t> stream(std::min(kWords, vec.size()));
  for (size_t at = 0; at < vec.size(); at += kWords) {
    const size_t n = std::min(kWords, vec.size() - at);
    std::span<uint8_t> bytes(reinterpret_cast<uint8_t*>(stream.data()), n * 4);
    uint32_t* v = vec.data() + at;
    for (size_t k = 0; k < streams.size(); ++k) {
      ATTUNE_RETURN_IF_ERROR(streams[k].Next(bytes));
      if (masks[k].sign > 0) {
        for (size_t i = 0; i < n; ++i) v[i] += stream[i];
      } else {
        for (size_t i = 0; i < n; ++i) v[i] -= stream[i];
      }
    }
  }
  crypto::Wipe(stream.data(), stream.size() * 4);
  return absl::OkStatus();
}

// ---- Graph ------------------------------------------------------------------

StatusOr<Graph> Graph::Make(int sites, int degree, ByteView seed) {
  if (sites < 1 || sites > shamir::kMaxShares) {
    return absl::InvalidArgumentError(absl::StrCat("graph: ", sites, " sites"));
  }
  if (degree < 0) return absl::InvalidArgumentError("graph: negative degree");
  Graph g;
  g.neighbours_.assign(sites, {});
  if (degree == 0 || degree >= sites - 1) {
    for (int u = 0; u < sites; ++u)
      for (int v = 0; v < sites; ++v)
        if (u != v) g.neighbours_[u].push_back(v);
    return g;
  }
  // A permutation from the public seed: sort the sites by a keystream word.
  const int half = (degree + 1) / 2;
  std::vector<uint32_t> keys(sites);
  ATTUNE_ASSIGN_OR_RETURN(SecretBytes graph_key,
                          crypto::HkdfSha256(seed, {}, crypto::View(std::string("attune/secagg/v1/graph")),
                                             crypto::kSeedBytes));
  ATTUNE_RETURN_IF_ERROR(crypto::ExpandSeed(
      graph_key, 0, {reinterpret_cast<uint8_t*>(keys.data()), keys.size() * sizeof(uint32_t)}));
  std::vector<int> order(sites);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return keys[a] < keys[b]; });
  // Harary graph: position p is joined to positions p ± 1 … p ± half.
  std::vector<std::set<int>> sets(sites);
  for (int p = 0; p < sites; ++p) {
    for (int k = 1; k <= half; ++k) {
      const int q = (p + k) % sites;
      sets[order[p]].insert(order[q]);
      sets[order[q]].insert(order[p]);
    }
  }
  for (int u = 0; u < sites; ++u) g.neighbours_[u].assign(sets[u].begin(), sets[u].end());
  return g;
}

bool Graph::Adjacent(int u, int v) const {
  return std::binary_search(neighbours_[u].begin(), neighbours_[u].end(), v);
}

std::vector<int> Graph::Holders(int u) const {
  std::vector<int> out = neighbours_[u];
  out.insert(std::lower_bound(out.begin(), out.end(), u), u);
  return out;
}

// ---- Messages ---------------------------------------------------------------

Bytes SignedBytes(const std::string& context, const Advertisement& a) {
  Bytes out;
  AppendField(&out, crypto::View(std::string("attune/secagg/v1/advertisement")));
  AppendField(&out, crypto::View(context));
  AppendU32(&out, static_cast<uint32_t>(a.site));
  AppendField(&out, a.cipher_public_key);
  AppendField(&out, a.mask_public_key);
  AppendField(&out, a.seed_commitment);
  return out;
}

namespace {
// SHA-256 of `m`, as bytes.
Bytes DigestOf(const Bytes& m) {
  const std::string d = Sha256(std::string_view(reinterpret_cast<const char*>(m.data()), m.size()));
  return Bytes(d.begin(), d.end());
}
}  // namespace

Bytes SeedCommitment(const std::string& context, int site, ByteView seed) {
  Bytes m;
  AppendField(&m, crypto::View(std::string("attune/secagg/v1/seed-commitment")));
  AppendField(&m, crypto::View(context));
  AppendU32(&m, static_cast<uint32_t>(site));
  AppendField(&m, seed);
  return DigestOf(m);
}

Bytes GraphSeed(const std::string& context, const std::vector<Advertisement>& ads) {
  std::vector<const Advertisement*> sorted;
  for (const Advertisement& a : ads) sorted.push_back(&a);
  std::sort(sorted.begin(), sorted.end(),
            [](const Advertisement* a, const Advertisement* b) { return a->site < b->site; });
  Bytes m;
  AppendField(&m, crypto::View(std::string("attune/secagg/v1/graph-seed")));
  AppendField(&m, crypto::View(context));
  for (const Advertisement* a : sorted) {
    AppendU32(&m, static_cast<uint32_t>(a->site));
    AppendField(&m, a->cipher_public_key);
    AppendField(&m, a->mask_public_key);
    AppendField(&m, a->seed_commitment);
  }
  return DigestOf(m);
}

Bytes SurvivorBytes(const std::string& context, ByteView aggregation,
                    const std::vector<int>& survivors) {
  Bytes out;
  AppendField(&out, crypto::View(std::string("attune/secagg/v2/survivors")));
  AppendField(&out, crypto::View(context));
  AppendField(&out, aggregation);
  AppendU32(&out, static_cast<uint32_t>(survivors.size()));
  for (int v : survivors) AppendU32(&out, static_cast<uint32_t>(v));
  return out;
}

// ---- Client -----------------------------------------------------------------

StatusOr<Client> Client::Make(const Options& options, int site, Signer sign) {
  ATTUNE_RETURN_IF_ERROR(ValidateOptions(options));
  ATTUNE_RETURN_IF_ERROR(CheckSite(site, options.sites, "secure aggregation client"));
  Client c;
  c.options_ = options;
  c.site_ = site;
  // The graph's shape is known now (its permutation only at ShareKeys): a
  // Harary graph is regular, so the threshold can be checked already.
  ATTUNE_ASSIGN_OR_RETURN(c.graph_, Graph::Make(options.sites, options.degree, {}));
  ATTUNE_RETURN_IF_ERROR(ValidateThreshold(options, c.graph_));
  ATTUNE_ASSIGN_OR_RETURN(crypto::X25519KeyPair cipher, crypto::GenerateX25519());
  ATTUNE_ASSIGN_OR_RETURN(crypto::X25519KeyPair mask, crypto::GenerateX25519());
  ATTUNE_ASSIGN_OR_RETURN(c.self_seed_, crypto::RandomBytes(crypto::kSeedBytes));
  c.cipher_private_key_ = std::move(cipher.private_key);
  c.mask_private_key_ = std::move(mask.private_key);
  c.advertisement_.site = site;
  c.advertisement_.cipher_public_key = cipher.public_key;
  c.advertisement_.mask_public_key = mask.public_key;
  c.advertisement_.seed_commitment = SeedCommitment(options.context, site, c.self_seed_);
  ATTUNE_ASSIGN_OR_RETURN(c.advertisement_.signature,
                          sign(SignedBytes(options.context, c.advertisement_)));
  return c;
}

StatusOr<std::vector<SealedShares>> Client::ShareKeys(const std::vector<Advertisement>& relayed,
                                                      const Verifier& verify) {
  if (!peers_.empty()) return absl::FailedPreconditionError("keys were already shared");
  // Every relayed advertisement is checked, neighbour or not: together they
  // seed the graph, so none may be the coordinator's invention.
  std::map<int, Advertisement> all;
  for (const Advertisement& a : relayed) {
    ATTUNE_RETURN_IF_ERROR(CheckSite(a.site, options_.sites, "relayed advertisement"));
    if (all.count(a.site)) {
      return absl::PermissionDeniedError(absl::StrCat("two advertisements for site ", a.site));
    }
    if (a.site == site_) {
      if (a.cipher_public_key != advertisement_.cipher_public_key ||
          a.mask_public_key != advertisement_.mask_public_key ||
          a.seed_commitment != advertisement_.seed_commitment) {
        return absl::PermissionDeniedError(
            "the coordinator relayed an advertisement for this site with other keys");
      }
      all[a.site] = a;
      continue;
    }
    if (a.cipher_public_key.size() != kKey || a.mask_public_key.size() != kKey ||
        a.seed_commitment.size() != kKey) {
      return absl::PermissionDeniedError(absl::StrCat("site ", a.site, " advertised a bad key"));
    }
    if (Status s = verify(a.site, SignedBytes(options_.context, a), a.signature); !s.ok()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the advertisement of site ", a.site,
          " does not carry that site's signature (keys swapped in transit?): ", s.message()));
    }
    all[a.site] = a;
  }
  if (!all.count(site_)) {
    return absl::PermissionDeniedError("the relayed advertisements leave this site out");
  }
  std::vector<Advertisement> listed;
  for (const auto& [v, a] : all) listed.push_back(a);
  aggregation_ = GraphSeed(options_.context, listed);
  ATTUNE_ASSIGN_OR_RETURN(graph_, Graph::Make(options_.sites, options_.degree, aggregation_));
  std::map<int, Advertisement> peers;
  for (const auto& [v, a] : all) {
    if (v != site_ && graph_.Adjacent(site_, v)) peers[v] = a;
  }
  if (peers.size() + 1 < static_cast<size_t>(options_.threshold)) {
    return TooFew("ShareKeys", peers.size() + 1, options_.threshold);
  }
  // Shares at x = holder + 1; only the holders' are used.
  ATTUNE_ASSIGN_OR_RETURN(std::vector<shamir::Share> key_shares,
                          shamir::Split(mask_private_key_, options_.threshold, options_.sites));
  ATTUNE_ASSIGN_OR_RETURN(std::vector<shamir::Share> seed_shares,
                          shamir::Split(self_seed_, options_.threshold, options_.sites));
  auto plaintext = [&](int holder) {
    SecretBytes p(key_shares[holder].y.begin(), key_shares[holder].y.end());
    p.insert(p.end(), seed_shares[holder].y.begin(), seed_shares[holder].y.end());
    return p;
  };
  std::vector<SealedShares> out;
  for (const auto& [v, a] : peers) {
    ATTUNE_ASSIGN_OR_RETURN(SecretBytes key,
                            ShareKey(options_.context, cipher_private_key_, a.cipher_public_key,
                                     site_, v));
    SecretBytes p = plaintext(v);
    ATTUNE_ASSIGN_OR_RETURN(Bytes sealed, crypto::Seal(crypto::Aead::kAesGcm, key, kZeroNonce,
                                                       ShareAad(options_.context, site_, v), p));
    out.push_back({site_, v, std::move(sealed)});
  }
  inbox_[site_] = plaintext(site_);
  peers_ = std::move(peers);
  return out;
}

StatusOr<std::vector<uint32_t>> Client::MaskInput(const std::vector<SealedShares>& inbox,
                                                  std::span<const uint32_t> input) {
  if (inbox_.empty()) return absl::FailedPreconditionError("ShareKeys first");
  if (masked_) return absl::FailedPreconditionError("input was already masked");
  if (static_cast<int64_t>(input.size()) != options_.length) {
    return absl::InvalidArgumentError(
        absl::StrCat("input has ", input.size(), " words, not ", options_.length));
  }
  for (const SealedShares& s : inbox) {
    auto peer = peers_.find(s.from);
    if (s.to != site_ || peer == peers_.end() || inbox_.count(s.from)) {
      return absl::PermissionDeniedError(
          absl::StrCat("unexpected shares from site ", s.from, " to site ", s.to));
    }
    ATTUNE_ASSIGN_OR_RETURN(SecretBytes key,
                            ShareKey(options_.context, cipher_private_key_,
                                     peer->second.cipher_public_key, s.from, site_));
    StatusOr<SecretBytes> opened = crypto::Open(crypto::Aead::kAesGcm, key, kZeroNonce,
                                                ShareAad(options_.context, s.from, site_), s.sealed);
    if (!opened.ok() || opened->size() != 2 * crypto::kSeedBytes) {
      return absl::PermissionDeniedError(
          absl::StrCat("the shares from site ", s.from, " do not open"));
    }
    inbox_[s.from] = std::move(*opened);
  }
  if (inbox_.size() < static_cast<size_t>(options_.threshold)) {
    return TooFew("MaskedInput", inbox_.size(), options_.threshold);
  }
  // y = x + PRG(b_u) + Σ_{v > u} PRG(s_uv) − Σ_{v < u} PRG(s_uv), in one pass.
  // (The masks view the seeds' heap buffers, which moves keep in place.)
  std::vector<SecretBytes> pair_seeds;
  std::vector<Mask> masks = {{self_seed_, 1}};
  for (const auto& [v, unused] : inbox_) {
    if (v == site_) continue;
    ATTUNE_ASSIGN_OR_RETURN(SecretBytes seed,
                            PairSeed(options_.context, mask_private_key_,
                                     peers_.at(v).mask_public_key, site_, v));
    pair_seeds.push_back(std::move(seed));
    masks.push_back({pair_seeds.back(), v > site_ ? 1 : -1});
  }
  std::vector<uint32_t> y(input.begin(), input.end());
  ATTUNE_RETURN_IF_ERROR(ApplyMasks(masks, y));
  masked_ = true;
  return y;
}

StatusOr<UnmaskResponse> Client::Unmask(const UnmaskRequest& request) {
  if (!masked_) return absl::FailedPreconditionError("MaskInput first");
  if (unmasked_) {
    return absl::PermissionDeniedError("already answered an unmask request for this aggregation");
  }
  std::set<int> survivors(request.survivors.begin(), request.survivors.end());
  std::set<int> dropped(request.dropped.begin(), request.dropped.end());
  if (survivors.size() != request.survivors.size() || dropped.size() != request.dropped.size()) {
    return absl::PermissionDeniedError("unmask request names a site twice");
  }
  for (int v : dropped) {
    if (survivors.count(v)) {
      return absl::PermissionDeniedError(absl::StrCat(
          "unmask request names site ", v, " as both survivor and dropped (it would reveal both "
          "of its secrets)"));
    }
  }
  if (!survivors.count(site_) || dropped.count(site_)) {
    return absl::PermissionDeniedError("unmask request does not name this site as a survivor");
  }
  if (survivors.size() < static_cast<size_t>(options_.threshold)) {
    return TooFew("Unmask", survivors.size(), options_.threshold);
  }
  UnmaskResponse r;
  r.site = site_;
  const uint8_t x = static_cast<uint8_t>(site_ + 1);
  for (const auto& [v, plain] : inbox_) {
    if (survivors.count(v)) {
      r.self_mask_seeds.push_back(
          {v, {x, SecretBytes(plain.begin() + crypto::kSeedBytes, plain.end())}});
    } else if (dropped.count(v)) {
      r.mask_keys.push_back({v, {x, SecretBytes(plain.begin(), plain.begin() + kKey)}});
    }
  }
  unmasked_ = true;
  return r;
}

// ---- Server -----------------------------------------------------------------

StatusOr<Server> Server::Make(const Options& options) {
  ATTUNE_RETURN_IF_ERROR(ValidateOptions(options));
  Server s;
  s.options_ = options;
  ATTUNE_ASSIGN_OR_RETURN(s.graph_, Graph::Make(options.sites, options.degree, {}));
  ATTUNE_RETURN_IF_ERROR(ValidateThreshold(options, s.graph_));
  s.sum_.assign(static_cast<size_t>(options.length), 0);
  return s;
}

Status Server::AddAdvertisement(const Advertisement& a) {
  ATTUNE_RETURN_IF_ERROR(CheckSite(a.site, options_.sites, "advertisement"));
  if (step_ != Step::kAdvertise) return absl::FailedPreconditionError("advertisements are closed");
  if (ads_.count(a.site)) {
    return absl::AlreadyExistsError(absl::StrCat("site ", a.site, " already advertised"));
  }
  if (a.cipher_public_key.size() != kKey || a.mask_public_key.size() != kKey ||
      a.seed_commitment.size() != kKey) {
    return absl::InvalidArgumentError(absl::StrCat("site ", a.site, " advertised a bad key"));
  }
  ads_[a.site] = a;
  return absl::OkStatus();
}

StatusOr<std::vector<Advertisement>> Server::Advertisements() {
  if (ads_.size() < static_cast<size_t>(options_.threshold)) {
    return TooFew("Advertise", ads_.size(), options_.threshold);
  }
  std::vector<Advertisement> out;
  for (const auto& [site, a] : ads_) out.push_back(a);
  if (step_ == Step::kAdvertise) {
    aggregation_ = GraphSeed(options_.context, out);
    ATTUNE_ASSIGN_OR_RETURN(graph_, Graph::Make(options_.sites, options_.degree, aggregation_));
    step_ = Step::kShareKeys;
  }
  return out;
}

Status Server::AddSealedShares(int from, const std::vector<SealedShares>& shares) {
  ATTUNE_RETURN_IF_ERROR(CheckSite(from, options_.sites, "shares"));
  if (step_ != Step::kShareKeys) return absl::FailedPreconditionError("key sharing is not open");
  if (!ads_.count(from)) {
    return absl::FailedPreconditionError(absl::StrCat("site ", from, " did not advertise keys"));
  }
  if (shares_from_.count(from)) {
    return absl::AlreadyExistsError(absl::StrCat("site ", from, " already shared its keys"));
  }
  std::set<int> to;
  for (const SealedShares& s : shares) {
    if (s.from != from || !graph_.Adjacent(from, s.to) || !ads_.count(s.to) ||
        !to.insert(s.to).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("site ", from, " sent shares addressed to ", s.to, " (not a holder)"));
    }
  }
  for (int v : graph_.Neighbours(from)) {
    if (ads_.count(v) && !to.count(v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("site ", from, " sent no shares for its neighbour ", v));
    }
  }
  shares_from_[from] = shares;
  return absl::OkStatus();
}

StatusOr<std::vector<SealedShares>> Server::SharesFor(int site) {
  ATTUNE_RETURN_IF_ERROR(CheckSite(site, options_.sites, "inbox"));
  if (step_ == Step::kAdvertise) return absl::FailedPreconditionError("key sharing has not begun");
  if (shares_from_.size() < static_cast<size_t>(options_.threshold)) {
    return TooFew("ShareKeys", shares_from_.size(), options_.threshold);
  }
  if (step_ == Step::kShareKeys) step_ = Step::kMaskedInput;
  std::vector<SealedShares> out;
  for (const auto& [from, list] : shares_from_) {
    for (const SealedShares& s : list)
      if (s.to == site) out.push_back(s);
  }
  return out;
}

Status Server::AddMaskedInput(int site, std::span<const uint32_t> y) {
  ATTUNE_RETURN_IF_ERROR(CheckSite(site, options_.sites, "masked input"));
  if (step_ != Step::kMaskedInput) return absl::FailedPreconditionError("masked input is not open");
  if (!shares_from_.count(site)) {
    return absl::FailedPreconditionError(absl::StrCat("site ", site, " did not share keys"));
  }
  if (inputs_.count(site)) {
    return absl::AlreadyExistsError(absl::StrCat("site ", site, " already sent its input"));
  }
  if (static_cast<int64_t>(y.size()) != options_.length) {
    return absl::InvalidArgumentError(absl::StrCat("site ", site, " sent ", y.size(),
                                                   " words, not ", options_.length));
  }
  for (size_t i = 0; i < y.size(); ++i) sum_[i] += y[i];
  inputs_.insert(site);
  return absl::OkStatus();
}

StatusOr<UnmaskRequest> Server::Request() {
  if (step_ == Step::kAdvertise || step_ == Step::kShareKeys) {
    return absl::FailedPreconditionError("masked input has not begun");
  }
  if (inputs_.size() < static_cast<size_t>(options_.threshold)) {
    return TooFew("MaskedInput", inputs_.size(), options_.threshold);
  }
  step_ = Step::kUnmask;
  UnmaskRequest r;
  for (const auto& [site, unused] : shares_from_) {
    (inputs_.count(site) ? r.survivors : r.dropped).push_back(site);
  }
  return r;
}

Status Server::AddUnmaskResponse(const UnmaskResponse& r) {
  ATTUNE_RETURN_IF_ERROR(CheckSite(r.site, options_.sites, "unmask response"));
  if (step_ != Step::kUnmask) return absl::FailedPreconditionError("unmasking is not open");
  if (!inputs_.count(r.site)) {
    return absl::FailedPreconditionError(absl::StrCat("site ", r.site, " is not a survivor"));
  }
  if (responses_.count(r.site)) {
    return absl::AlreadyExistsError(absl::StrCat("site ", r.site, " already answered"));
  }
  const uint8_t x = static_cast<uint8_t>(r.site + 1);
  for (const auto* list : {&r.self_mask_seeds, &r.mask_keys}) {
    for (const RevealedShare& s : *list) {
      if (s.share.x != x || s.share.y.size() != crypto::kSeedBytes || s.of < 0 ||
          s.of >= options_.sites || (s.of != r.site && !graph_.Adjacent(r.site, s.of))) {
        return absl::InvalidArgumentError(
            absl::StrCat("site ", r.site, " answered with a malformed share of site ", s.of));
      }
    }
  }
  responses_[r.site] = r;
  return absl::OkStatus();
}

StatusOr<std::vector<uint32_t>> Server::Finish() {
  if (step_ != Step::kUnmask) return absl::FailedPreconditionError("unmasking is not open");
  // The shares of each secret, with who revealed them.
  struct Held {
    int holder;
    shamir::Share share;
  };
  std::map<int, std::vector<Held>> seeds, keys;
  for (const auto& [site, r] : responses_) {
    for (const RevealedShare& s : r.self_mask_seeds)
      if (inputs_.count(s.of)) seeds[s.of].push_back({site, s.share});
    for (const RevealedShare& s : r.mask_keys)
      if (shares_from_.count(s.of) && !inputs_.count(s.of)) keys[s.of].push_back({site, s.share});
  }
  const int t = options_.threshold;
  // Rebuilds site's secret from t of its shares such that `valid` holds; a
  // share that does not lie on the same polynomial as t valid ones is wrong.
  auto rebuild = [&](std::map<int, std::vector<Held>>& from, int site, const char* what,
                     const std::function<bool(const SecretBytes&)>& valid) -> StatusOr<SecretBytes> {
    std::vector<Held>& held = from[site];
    if (held.size() < static_cast<size_t>(t)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "secure aggregation aborted: ", held.size(), " shares of site ", site, "'s ", what,
          ", fewer than the threshold ", t));
    }
    auto combine = [&](const std::vector<size_t>& pick) -> std::optional<SecretBytes> {
      std::vector<shamir::Share> shares;
      for (size_t i : pick) shares.push_back(held[i].share);
      StatusOr<SecretBytes> secret = shamir::Combine(shares, t);
      if (!secret.ok() || !valid(*secret)) return std::nullopt;
      return *std::move(secret);
    };
    // The first t shares, else the first t without share `skip`.
    std::vector<size_t> good;
    std::optional<SecretBytes> secret;
    for (size_t skip = held.size(); !secret; --skip) {
      good.clear();
      for (size_t i = 0; i < held.size() && good.size() < static_cast<size_t>(t); ++i) {
        if (i != skip) good.push_back(i);
      }
      if (good.size() == static_cast<size_t>(t)) secret = combine(good);
      if (skip == 0) break;
    }
    if (!secret) {
      std::vector<std::string> holders;
      for (const Held& h : held) holders.push_back(absl::StrCat(h.holder));
      return absl::DataLossError(absl::StrCat(
          "the ", what, " rebuilt for site ", site, " does not match its advertisement, and the "
          "shares revealed by sites {", absl::StrJoin(holders, ", "),
          "} cannot tell which of them is wrong"));
    }
    // Every other share, in place of one known-good one, must give it too.
    for (size_t k = 0; k < held.size(); ++k) {
      if (std::find(good.begin(), good.end(), k) != good.end()) continue;
      std::vector<size_t> pick = good;
      pick.back() = k;
      if (!combine(pick)) {
        faults_.push_back(absl::StrCat("site ", held[k].holder, "'s share of site ", site, "'s ",
                                       what));
      }
    }
    return *std::move(secret);
  };
  // Check every secret can be rebuilt before removing any mask.
  std::map<int, SecretBytes> self_seeds, mask_keys;
  for (int u : inputs_) {
    const Bytes& commitment = ads_.at(u).seed_commitment;
    ATTUNE_ASSIGN_OR_RETURN(
        self_seeds[u], rebuild(seeds, u, "self-mask seed", [&](const SecretBytes& b) {
          return SeedCommitment(options_.context, u, b) == commitment;
        }));
  }
  for (const auto& [v, unused] : shares_from_) {
    if (inputs_.count(v)) continue;
    const Bytes& pub = ads_.at(v).mask_public_key;
    ATTUNE_ASSIGN_OR_RETURN(
        mask_keys[v], rebuild(keys, v, "mask key", [&](const SecretBytes& key) {
          StatusOr<Bytes> p = crypto::X25519PublicKey(key);
          return p.ok() && *p == pub;
        }));
  }
  // Every survivor's self mask and every dropped site's pair masks off, in
  // one pass over the sum.
  // (The masks view the seeds' heap buffers, which moves keep in place.)
  std::vector<Mask> masks;
  for (const auto& [u, seed] : self_seeds) masks.push_back({seed, -1});
  std::vector<SecretBytes> pair_seeds;
  for (const auto& [v, key] : mask_keys) {
    for (int u : inputs_) {
      if (!graph_.Adjacent(u, v)) continue;
      ATTUNE_ASSIGN_OR_RETURN(SecretBytes seed,
                              PairSeed(options_.context, key, ads_.at(u).mask_public_key, v, u));
      pair_seeds.push_back(std::move(seed));
      // u added +PRG(s_uv) when v > u, −PRG when v < u: undo it.
      masks.push_back({pair_seeds.back(), v > u ? -1 : 1});
    }
  }
  std::vector<uint32_t> sum = sum_;
  ATTUNE_RETURN_IF_ERROR(ApplyMasks(masks, sum));
  step_ = Step::kDone;
  return sum;
}

}  // namespace attune::secagg
