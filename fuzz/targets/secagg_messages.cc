// Secure aggregation's messages (secagg.h, secure_update.h FromProto), on
// both sides, in a real three-site aggregation where site 0 (or, for the
// site side, the coordinator) says what the input says:
//   0  site 0's advertisement, as the coordinator takes it
//   1  site 0's sealed shares, as the coordinator takes them
//   2  site 0's unmask response, as the coordinator takes it (then Finish)
//   3  the relayed advertisements, as site 1 takes them (one replaced)
//   4  site 1's inbox of sealed shares (one replaced)
//   5  the unmask request, as site 1 takes it
// Every message is refused with a status or used; nothing may crash, and
// a request that names a peer as both survivor and dropped is refused.
#include <cstdlib>

#include "attune/common/crypto.h"
#include "attune/common/pki.h"
#include "attune/common/secagg.h"
#include "attune/common/secure_update.h"
#include "attune/v1/federation.pb.h"
#include "fuzz_util.h"

namespace {

using namespace attune;
using namespace attune::secagg;

constexpr int kSites = 3;

struct Pki {
  KeyAndCert ca;
  std::vector<KeyAndCert> sites;
  Pki() {
    ca = *MakeCertificateAuthority("fuzz CA", 1);
    for (int i = 0; i < kSites; ++i) {
      CertOptions o;
      o.common_name = "site-" + std::to_string(i);
      sites.push_back(*IssueCertificate(ca, o));
    }
  }
};

const Pki& Keys() {
  static const Pki* pki = new Pki();
  return *pki;
}

Signer SignerFor(int site) {
  const std::string key = Keys().sites[site].key_pem;
  return [key](crypto::ByteView m) { return crypto::SignWithKeyPem(key, m); };
}

Status Verify(int site, crypto::ByteView m, crypto::ByteView sig) {
  if (site < 0 || site >= kSites) return absl::InvalidArgumentError("no such site");
  return crypto::VerifyWithCertificatePem(Keys().sites[site].cert_pem, m, sig);
}

template <typename Message>
bool Parse(std::string_view bytes, Message* m) {
  return m->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Cursor in(data, size);
  const int step = in.Byte() % 6;
  const std::string_view bytes = in.rest();
  Options o;
  o.context = "fuzz study round 1 update";
  o.sites = kSites;
  o.threshold = 2;
  o.length = 8;
  StatusOr<Server> server = Server::Make(o);
  if (!server.ok()) std::abort();
  std::vector<Client> clients;
  for (int u = 0; u < kSites; ++u) clients.push_back(*Client::Make(o, u, SignerFor(u)));

  // Step 1: advertisements.
  for (int u = 0; u < kSites; ++u) {
    Advertisement a = clients[u].advertisement();
    if (u == 0 && step == 0) {
      v1::SecAggAdvertisement m;
      if (!Parse(bytes, &m)) return 0;
      a = FromProto(m);
    }
    (void)server->AddAdvertisement(a);
  }
  StatusOr<std::vector<Advertisement>> ads = server->Advertisements();
  if (!ads.ok()) return 0;
  if (step == 3) {
    v1::SecAggAdvertisement m;
    if (!Parse(bytes, &m)) return 0;
    std::vector<Advertisement> relayed = *ads;
    relayed[m.site() >= 0 && m.site() < kSites ? m.site() : 0] = FromProto(m);
    (void)clients[1].ShareKeys(relayed, Verify);
    return 0;
  }
  // Step 2: sealed shares.
  for (int u = 0; u < kSites; ++u) {
    StatusOr<std::vector<SealedShares>> shares = clients[u].ShareKeys(*ads, Verify);
    if (!shares.ok()) return 0;
    if (u == 0 && step == 1) {
      v1::SecAggShares m;
      if (!Parse(bytes, &m)) return 0;
      shares->clear();
      for (const auto& s : m.shares()) shares->push_back(FromProto(s));
    }
    (void)server->AddSealedShares(u, *shares);
  }
  // Step 3: masked inputs.
  const std::vector<uint32_t> input(o.length, 7);
  for (int u = 0; u < kSites; ++u) {
    StatusOr<std::vector<SealedShares>> inbox = server->SharesFor(u);
    if (!inbox.ok()) return 0;
    if (u == 1 && step == 4) {
      v1::SecAggSealedShares m;
      if (!Parse(bytes, &m)) return 0;
      if (!inbox->empty()) inbox->front() = FromProto(m);
      (void)clients[u].MaskInput(*inbox, input);
      return 0;
    }
    StatusOr<std::vector<uint32_t>> y = clients[u].MaskInput(*inbox, input);
    if (!y.ok()) return 0;
    (void)server->AddMaskedInput(u, *y);
  }
  StatusOr<UnmaskRequest> request = server->Request();
  if (!request.ok()) return 0;
  if (step == 5) {
    UnmaskRequest r;
    fuzz::Cursor req(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    const int survivors = req.Byte() % 5, dropped = req.Byte() % 3;
    for (int i = 0; i < survivors; ++i) r.survivors.push_back(static_cast<int8_t>(req.Byte()) % 4);
    for (int i = 0; i < dropped; ++i) r.dropped.push_back(static_cast<int8_t>(req.Byte()) % 4);
    StatusOr<UnmaskResponse> resp = clients[1].Unmask(r);
    if (resp.ok()) {
      for (int s : r.survivors) {
        for (int d : r.dropped) {
          if (s == d && s != 1) std::abort();  // both secrets of a peer revealed
        }
      }
    }
    return 0;
  }
  // Step 4: unmasking.
  for (int u : request->survivors) {
    StatusOr<UnmaskResponse> resp = clients[u].Unmask(*request);
    if (!resp.ok()) return 0;
    if (u == 0 && step == 2) {
      v1::SecAggUnmask m;
      if (!Parse(bytes, &m)) return 0;
      *resp = FromProto(0, m);
    }
    (void)server->AddUnmaskResponse(*resp);
  }
  (void)server->Finish();
  return 0;
}
