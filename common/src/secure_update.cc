#include "attune/common/secure_update.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "attune/common/pki.h"

namespace attune::secagg {
namespace {

crypto::Bytes ToBytes(const std::string& s) { return crypto::Bytes(s.begin(), s.end()); }
template <typename B>
std::string ToString(const B& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

void ToProto(const std::vector<RevealedShare>& in,
             google::protobuf::RepeatedPtrField<v1::SecAggRevealed>* out) {
  for (const auto& r : in) {
    v1::SecAggRevealed* p = out->Add();
    p->set_of(r.of);
    p->set_x(r.share.x);
    p->set_y(ToString(r.share.y));
  }
}

std::vector<RevealedShare> FromProto(
    const google::protobuf::RepeatedPtrField<v1::SecAggRevealed>& in) {
  std::vector<RevealedShare> out;
  for (const auto& p : in) {
    RevealedShare r;
    r.of = p.of();
    r.share.x = static_cast<uint8_t>(std::clamp(p.x(), 0, 255));
    r.share.y.assign(p.y().begin(), p.y().end());
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

Options OptionsFromSetup(const v1::SecAggSetup& setup) {
  Options o;
  o.context = setup.context();
  o.sites = setup.sites_size();
  o.threshold = setup.threshold();
  o.degree = setup.degree();
  o.length = setup.length();
  return o;
}

v1::SecAggAdvertisement ToProto(const Advertisement& a, const std::string& certificate_pem) {
  v1::SecAggAdvertisement p;
  p.set_site(a.site);
  p.set_cipher_public_key(ToString(a.cipher_public_key));
  p.set_mask_public_key(ToString(a.mask_public_key));
  p.set_seed_commitment(ToString(a.seed_commitment));
  p.set_signature(ToString(a.signature));
  p.set_certificate_pem(certificate_pem);
  return p;
}

Advertisement FromProto(const v1::SecAggAdvertisement& p) {
  Advertisement a;
  a.site = p.site();
  a.cipher_public_key = ToBytes(p.cipher_public_key());
  a.mask_public_key = ToBytes(p.mask_public_key());
  a.seed_commitment = ToBytes(p.seed_commitment());
  a.signature = ToBytes(p.signature());
  return a;
}

v1::SecAggSealedShares ToProto(const SealedShares& s) {
  v1::SecAggSealedShares p;
  p.set_from(s.from);
  p.set_to(s.to);
  p.set_sealed(ToString(s.sealed));
  return p;
}

SealedShares FromProto(const v1::SecAggSealedShares& p) {
  return SealedShares{p.from(), p.to(), ToBytes(p.sealed())};
}

v1::SecAggUnmask ToProto(const UnmaskResponse& r) {
  v1::SecAggUnmask p;
  ToProto(r.self_mask_seeds, p.mutable_self_mask_seeds());
  ToProto(r.mask_keys, p.mutable_mask_keys());
  return p;
}

UnmaskResponse FromProto(int site, const v1::SecAggUnmask& p) {
  UnmaskResponse r;
  r.site = site;
  r.self_mask_seeds = FromProto(p.self_mask_seeds());
  r.mask_keys = FromProto(p.mask_keys());
  return r;
}

std::string EncodeWords(std::span<const uint32_t> words) {
  std::string out(words.size() * 4, '\0');
  for (size_t i = 0; i < words.size(); ++i) {
    const uint32_t w = words[i];
    out[4 * i] = static_cast<char>(w & 0xff);
    out[4 * i + 1] = static_cast<char>((w >> 8) & 0xff);
    out[4 * i + 2] = static_cast<char>((w >> 16) & 0xff);
    out[4 * i + 3] = static_cast<char>(w >> 24);
  }
  return out;
}

StatusOr<std::unique_ptr<SecureSite>> SecureSite::Start(const v1::RoundTask& train,
                                                        std::string key_pem, std::string ca_pem) {
  const v1::SecAggSetup& setup = train.secagg();
  if (setup.index() < 0 || setup.index() >= setup.sites_size()) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation: index ", setup.index(),
                                                   " of ", setup.sites_size(), " sites"));
  }
  if (!(setup.weight() > 0 && setup.weight() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("secure aggregation: weight ", setup.weight(), " is not in (0, 1]"));
  }
  std::unique_ptr<SecureSite> s(new SecureSite());
  s->task_id_ = train.task_id();
  s->purpose_ = train.kind() == v1::RoundTask::EVALUATE ? "evaluation" : "update";
  s->ca_pem_ = std::move(ca_pem);
  s->sites_.assign(setup.sites().begin(), setup.sites().end());
  s->weight_ = setup.weight();
  s->length_ = setup.length();
  ATTUNE_ASSIGN_OR_RETURN(Quantizer q, Quantizer::Make(setup.value_clip(), setup.sites_size()));
  s->quantizer_.emplace(q);
  // The certificate goes with the advertisement: peers check it against
  // the CA. It is the public half of what signs.
  auto key = std::make_shared<const std::string>(std::move(key_pem));
  Signer sign = [key](crypto::ByteView message) { return crypto::SignWithKeyPem(*key, message); };
  s->sign_ = sign;
  s->context_ = setup.context();
  s->threshold_ = setup.threshold();
  s->index_ = setup.index();
  ATTUNE_ASSIGN_OR_RETURN(Client c, Client::Make(OptionsFromSetup(setup), setup.index(), sign));
  s->client_.emplace(std::move(c));
  return s;
}

v1::SecAggAdvertisement SecureSite::Advertisement() const {
  // The certificate is filled in by the coordinator from the TLS session:
  // it relays what authenticated the caller, not what the caller claims.
  return ToProto(client_->advertisement(), "");
}

StatusOr<int64_t> SecureSite::SetInput(std::span<const float> update, double train_loss) {
  if (InputLength(static_cast<int64_t>(update.size())) != length_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "secure aggregation of ", length_, " words, but the update has ", update.size(),
        " values"));
  }
  std::vector<float> x(update.size() + 1);
  for (size_t i = 0; i < update.size(); ++i) x[i] = static_cast<float>(weight_ * update[i]);
  x.back() = static_cast<float>(weight_ * train_loss / kLossScale);
  input_.assign(x.size(), 0);
  const int64_t clipped = quantizer_->Encode(x, input_);
  have_input_ = true;
  return clipped;
}

Status SecureSite::SetWords(std::vector<uint32_t> words) {
  if (static_cast<int64_t>(words.size()) != length_) {
    return absl::InvalidArgumentError(absl::StrCat("secure aggregation of ", length_,
                                                   " words, but the input has ", words.size()));
  }
  input_ = std::move(words);
  have_input_ = true;
  return absl::OkStatus();
}

Status SecureSite::CheckTask(const v1::RoundTask& task) const {
  if (task.task_id() != task_id_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "secure aggregation step for task '", task.task_id(), "' but the open one is '",
        task_id_, "'"));
  }
  return absl::OkStatus();
}

StatusOr<v1::SecAggShares> SecureSite::ShareKeys(const v1::RoundTask& task) {
  ATTUNE_RETURN_IF_ERROR(CheckTask(task));
  std::vector<secagg::Advertisement> relayed;
  std::map<int, std::string> certs;
  for (const auto& p : task.advertisements()) {
    if (p.site() < 0 || p.site() >= static_cast<int>(sites_.size())) {
      return absl::PermissionDeniedError(
          absl::StrCat("relayed advertisement for unknown index ", p.site()));
    }
    const std::string& name = sites_[p.site()];
    // The certificate must be one our CA issued, to the site at that index.
    if (Status s = VerifyCertificate(ca_pem_, p.certificate_pem()); !s.ok()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the certificate relayed for site ", name, " is not from the study CA: ", s.message()));
    }
    // A site's: the coordinator's certificate (serverAuth) cannot stand in
    // for a peer.
    if (Status s = CheckClientCertificate(p.certificate_pem()); !s.ok()) {
      return absl::PermissionDeniedError(
          absl::StrCat("the certificate relayed for site ", name, ": ", s.message()));
    }
    ATTUNE_ASSIGN_OR_RETURN(std::string cn, CertificateCommonName(p.certificate_pem()));
    if (cn != name) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the certificate relayed for site ", name, " (index ", p.site(), ") belongs to '", cn,
          "'"));
    }
    certs[p.site()] = p.certificate_pem();
    relayed.push_back(FromProto(p));
  }
  Verifier verify = [&](int site, crypto::ByteView message, crypto::ByteView sig) -> Status {
    auto it = certs.find(site);
    if (it == certs.end()) return absl::PermissionDeniedError("no certificate for the signer");
    return crypto::VerifyWithCertificatePem(it->second, message, sig);
  };
  ATTUNE_ASSIGN_OR_RETURN(std::vector<SealedShares> out, client_->ShareKeys(relayed, verify));
  peer_certificates_ = std::move(certs);
  v1::SecAggShares msg;
  for (const auto& s : out) *msg.add_shares() = ToProto(s);
  return msg;
}

StatusOr<std::string> SecureSite::MaskedPayload(const v1::RoundTask& task) {
  ATTUNE_RETURN_IF_ERROR(CheckTask(task));
  if (!have_input_) return absl::FailedPreconditionError("no input to mask yet");
  std::vector<SealedShares> inbox;
  for (const auto& p : task.shares()) inbox.push_back(FromProto(p));
  ATTUNE_ASSIGN_OR_RETURN(std::vector<uint32_t> y, client_->MaskInput(inbox, input_));
  std::fill(input_.begin(), input_.end(), 0);
  return EncodeWords(y);
}

StatusOr<v1::SecAggConfirm> SecureSite::Confirm(const v1::RoundTask& task) {
  ATTUNE_RETURN_IF_ERROR(CheckTask(task));
  std::vector<int> survivors(task.survivors().begin(), task.survivors().end());
  std::sort(survivors.begin(), survivors.end());
  if (std::adjacent_find(survivors.begin(), survivors.end()) != survivors.end()) {
    return absl::PermissionDeniedError("a survivor set that names a site twice");
  }
  if (!std::binary_search(survivors.begin(), survivors.end(), index_)) {
    return absl::PermissionDeniedError("a survivor set without this site");
  }
  if (static_cast<int>(survivors.size()) < threshold_) {
    return absl::PermissionDeniedError(absl::StrCat("a survivor set of ", survivors.size(),
                                                    " sites, under the threshold ", threshold_));
  }
  for (int v : survivors) {
    if (!peer_certificates_.count(v)) {
      return absl::PermissionDeniedError(
          absl::StrCat("survivor ", v, " did not take part in the share step"));
    }
  }
  if (confirmed_ && *confirmed_ != survivors) {
    return absl::PermissionDeniedError(
        "this site already confirmed another survivor set of this aggregation (a split view)");
  }
  ATTUNE_ASSIGN_OR_RETURN(crypto::Bytes sig,
                          sign_(SurvivorBytes(context_, client_->aggregation(), survivors)));
  confirmed_ = std::move(survivors);
  v1::SecAggConfirm out;
  out.set_signature(ToString(sig));
  return out;
}

StatusOr<v1::SecAggUnmask> SecureSite::Unmask(const v1::RoundTask& task) {
  ATTUNE_RETURN_IF_ERROR(CheckTask(task));
  std::vector<int> survivors(task.survivors().begin(), task.survivors().end());
  std::sort(survivors.begin(), survivors.end());
  if (!confirmed_ || *confirmed_ != survivors) {
    return absl::PermissionDeniedError(
        "an unmask request for a survivor set this site did not confirm");
  }
  // At least t of the survivors signed this very set: no two disjoint
  // views of who survived can each be unmasked (t > n/2).
  const crypto::Bytes signed_set = SurvivorBytes(context_, client_->aggregation(), survivors);
  std::set<int> confirmed_by;
  for (const auto& c : task.confirmations()) {
    if (!std::binary_search(survivors.begin(), survivors.end(), c.site())) continue;
    auto cert = peer_certificates_.find(c.site());
    if (cert == peer_certificates_.end()) continue;
    if (crypto::VerifyWithCertificatePem(cert->second, signed_set, crypto::View(c.signature()))
            .ok()) {
      confirmed_by.insert(c.site());
    }
  }
  if (static_cast<int>(confirmed_by.size()) < threshold_) {
    return absl::PermissionDeniedError(absl::StrCat(
        "the survivor set was confirmed by ", confirmed_by.size(), " of its sites; ",
        threshold_, " must sign it before this site reveals anything"));
  }
  UnmaskRequest req;
  req.survivors.assign(task.survivors().begin(), task.survivors().end());
  req.dropped.assign(task.dropped().begin(), task.dropped().end());
  ATTUNE_ASSIGN_OR_RETURN(UnmaskResponse r, client_->Unmask(req));
  return ToProto(r);
}

}  // namespace attune::secagg
