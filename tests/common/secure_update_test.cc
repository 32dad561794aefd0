// The site's side of a secure TRAIN task over the wire (secure_update.h):
// three sites with real certificates from one study CA run all four steps
// through the protobuf messages against a secagg::Server, and a coordinator
// that relays the wrong certificate is caught.
#include "attune/common/secure_update.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "attune/common/pki.h"

namespace attune::secagg {
namespace {

constexpr int kSites = 3;
constexpr int64_t kParams = 1000;

class SecureUpdateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ca = MakeCertificateAuthority("study CA", 30);
    ASSERT_TRUE(ca.ok()) << ca.status();
    ca_ = *ca;
    for (int i = 0; i < kSites; ++i) {
      CertOptions o;
      o.common_name = "site-" + std::to_string(i + 1);
      auto kc = IssueCertificate(ca_, o);
      ASSERT_TRUE(kc.ok()) << kc.status();
      sites_.push_back(*kc);
    }
    options_.context = "test|round 1|update";
    options_.sites = kSites;
    options_.threshold = 2;
    options_.length = InputLength(kParams);
  }

  v1::RoundTask TrainTask(int index) const {
    v1::RoundTask t;
    t.set_kind(v1::RoundTask::TRAIN);
    t.set_round(1);
    t.set_task_id("task-" + std::to_string(index));
    v1::SecAggSetup* s = t.mutable_secagg();
    s->set_context(options_.context);
    s->set_index(index);
    for (int i = 0; i < kSites; ++i) s->add_sites("site-" + std::to_string(i + 1));
    s->set_threshold(options_.threshold);
    s->set_length(options_.length);
    s->set_value_clip(1.0);
    s->set_weight(1.0 / kSites);
    return t;
  }

  void RunToMasked(Server* server, std::vector<std::unique_ptr<SecureSite>>* clients);

  KeyAndCert ca_;
  std::vector<KeyAndCert> sites_;
  Options options_;
};

std::vector<float> Update(int site) {
  std::vector<float> u(kParams);
  for (int64_t i = 0; i < kParams; ++i) u[i] = 0.001f * static_cast<float>((i * (site + 3)) % 97);
  return u;
}

// Steps 1 to 3 over the wire messages, every site sending Update(i): the
// sites, each ready to confirm; `server` holds every masked input.
void SecureUpdateTest::RunToMasked(Server* server,
                                   std::vector<std::unique_ptr<SecureSite>>* clients) {
  for (int i = 0; i < kSites; ++i) {
    auto c = SecureSite::Start(TrainTask(i), sites_[i].key_pem, ca_.cert_pem);
    ASSERT_TRUE(c.ok()) << c.status();
    ASSERT_TRUE(server->AddAdvertisement(FromProto((*c)->Advertisement())).ok());
    auto clipped = (*c)->SetInput(Update(i), 0.25 * (i + 1));
    ASSERT_TRUE(clipped.ok()) << clipped.status();
    EXPECT_EQ(*clipped, 0);
    clients->push_back(*std::move(c));
  }
  auto ads = server->Advertisements();
  ASSERT_TRUE(ads.ok());
  for (int i = 0; i < kSites; ++i) {
    v1::RoundTask share = TrainTask(i);
    share.set_kind(v1::RoundTask::SECAGG_SHARE);
    // The coordinator relays each site's own certificate.
    for (const auto& a : *ads) *share.add_advertisements() = ToProto(a, sites_[a.site].cert_pem);
    auto shares = (*clients)[i]->ShareKeys(share);
    ASSERT_TRUE(shares.ok()) << shares.status();
    std::vector<SealedShares> out;
    for (const auto& p : shares->shares()) out.push_back(FromProto(p));
    ASSERT_TRUE(server->AddSealedShares(i, out).ok());
  }
  for (int i = 0; i < kSites; ++i) {
    auto inbox = server->SharesFor(i);
    ASSERT_TRUE(inbox.ok());
    v1::RoundTask mask = TrainTask(i);
    mask.set_kind(v1::RoundTask::SECAGG_MASK);
    for (const auto& s : *inbox) *mask.add_shares() = ToProto(s);
    auto payload = (*clients)[i]->MaskedPayload(mask);
    ASSERT_TRUE(payload.ok()) << payload.status();
    ASSERT_EQ(payload->size(), static_cast<size_t>(options_.length) * 4);
    std::vector<uint32_t> y(options_.length);
    for (size_t w = 0; w < y.size(); ++w) {
      const auto* b = reinterpret_cast<const uint8_t*>(payload->data()) + 4 * w;
      y[w] = uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
    }
    ASSERT_TRUE(server->AddMaskedInput(i, y).ok());
  }
}

TEST_F(SecureUpdateTest, ThreeSitesOverTheWireGiveTheWeightedMeanAndTheLoss) {
  auto server = Server::Make(options_);
  ASSERT_TRUE(server.ok()) << server.status();
  std::vector<std::unique_ptr<SecureSite>> clients;
  ASSERT_NO_FATAL_FAILURE(RunToMasked(&*server, &clients));
  auto request = server->Request();
  ASSERT_TRUE(request.ok());
  // The consistency step: every survivor signs the survivor set.
  std::vector<v1::SecAggConfirmation> confirmations;
  for (int i = 0; i < kSites; ++i) {
    v1::RoundTask confirm = TrainTask(i);
    confirm.set_kind(v1::RoundTask::SECAGG_CONFIRM);
    for (int v : request->survivors) confirm.add_survivors(v);
    // Before confirming, no unmask: the set is not confirmed.
    v1::RoundTask early = confirm;
    early.set_kind(v1::RoundTask::SECAGG_UNMASK);
    EXPECT_EQ(clients[i]->Unmask(early).status().code(), absl::StatusCode::kPermissionDenied);
    auto c = clients[i]->Confirm(confirm);
    ASSERT_TRUE(c.ok()) << c.status();
    v1::SecAggConfirmation signed_set;
    signed_set.set_site(i);
    signed_set.set_signature(c->signature());
    confirmations.push_back(signed_set);
    // A split view: another survivor set for the same aggregation.
    v1::RoundTask other = confirm;
    other.clear_survivors();
    for (int v : {0, 1, 2}) {
      if (v != (i + 1) % kSites) other.add_survivors(v);
    }
    if (std::find(other.survivors().begin(), other.survivors().end(), i) !=
        other.survivors().end()) {
      Status split = clients[i]->Confirm(other).status();
      EXPECT_NE(split.message().find("already confirmed another survivor set"), std::string::npos)
          << split;
    }
  }
  for (int i = 0; i < kSites; ++i) {
    v1::RoundTask unmask = TrainTask(i);
    unmask.set_kind(v1::RoundTask::SECAGG_UNMASK);
    for (int v : request->survivors) unmask.add_survivors(v);
    // With its own signature only (under t = 2), or a forged one, nothing.
    *unmask.add_confirmations() = confirmations[i];
    v1::SecAggConfirmation forged = confirmations[(i + 1) % kSites];
    forged.set_signature(confirmations[i].signature());
    *unmask.add_confirmations() = forged;
    Status few = clients[i]->Unmask(unmask).status();
    EXPECT_NE(few.message().find("confirmed by 1 of its sites; 2 must sign it"), std::string::npos)
        << few;
    unmask.clear_confirmations();
    for (const auto& c : confirmations) *unmask.add_confirmations() = c;
    auto r = clients[i]->Unmask(unmask);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(server->AddUnmaskResponse(FromProto(i, *r)).ok());
  }
  auto sum = server->Finish();
  ASSERT_TRUE(sum.ok()) << sum.status();
  auto q = Quantizer::Make(1.0, kSites);
  ASSERT_TRUE(q.ok());
  std::vector<float> mean(sum->size());
  q->DecodeSum(*sum, kSites, mean);
  const double bound = q->SumErrorBound(kSites) + 1e-6;
  for (int64_t i = 0; i < kParams; ++i) {
    double want = 0;
    for (int s = 0; s < kSites; ++s) want += Update(s)[i] / static_cast<double>(kSites);
    ASSERT_NEAR(mean[i], want, bound) << i;
  }
  // The loss word: the mean of 0.25, 0.5, 0.75, scaled down by kLossScale.
  EXPECT_NEAR(mean.back() * kLossScale, 0.5, bound * kLossScale);
}

// A coordinator that gives two aggregations the same context cannot carry
// the survivors' signatures of one into the other: they sign the
// aggregation's advertisements (fresh keys) too, so a split view of the
// second is not unmasked with the first one's confirmations.
TEST_F(SecureUpdateTest, ConfirmationsOfAnotherAggregationWithTheSameContextAreRefused) {
  auto confirm_task = [&](int i, const std::vector<int>& survivors) {
    v1::RoundTask t = TrainTask(i);
    t.set_kind(v1::RoundTask::SECAGG_CONFIRM);
    for (int v : survivors) t.add_survivors(v);
    return t;
  };
  const std::vector<int> all = {0, 1, 2};
  auto first = Server::Make(options_);
  ASSERT_TRUE(first.ok());
  std::vector<std::unique_ptr<SecureSite>> a;
  ASSERT_NO_FATAL_FAILURE(RunToMasked(&*first, &a));
  std::vector<v1::SecAggConfirmation> old;
  for (int i = 0; i < kSites; ++i) {
    auto c = a[i]->Confirm(confirm_task(i, all));
    ASSERT_TRUE(c.ok()) << c.status();
    old.emplace_back();
    old.back().set_site(i);
    old.back().set_signature(c->signature());
  }
  auto second = Server::Make(options_);
  ASSERT_TRUE(second.ok());
  std::vector<std::unique_ptr<SecureSite>> b;
  ASSERT_NO_FATAL_FAILURE(RunToMasked(&*second, &b));
  auto mine = b[0]->Confirm(confirm_task(0, all));
  ASSERT_TRUE(mine.ok()) << mine.status();
  v1::RoundTask unmask = confirm_task(0, all);
  unmask.set_kind(v1::RoundTask::SECAGG_UNMASK);
  v1::SecAggConfirmation own;
  own.set_site(0);
  own.set_signature(mine->signature());
  *unmask.add_confirmations() = own;
  for (int i = 1; i < kSites; ++i) *unmask.add_confirmations() = old[i];
  Status replayed = b[0]->Unmask(unmask).status();
  EXPECT_EQ(replayed.code(), absl::StatusCode::kPermissionDenied) << replayed;
  EXPECT_NE(replayed.message().find("confirmed by 1 of its sites"), std::string::npos) << replayed;
  // The first aggregation's own confirmations still unmask it.
  unmask.clear_confirmations();
  for (const auto& c : old) *unmask.add_confirmations() = c;
  EXPECT_TRUE(a[0]->Unmask(unmask).ok());
}

TEST_F(SecureUpdateTest, ARelayedCertificateOfAnotherSiteOrAnotherCaIsRefused) {
  auto server = Server::Make(options_);
  ASSERT_TRUE(server.ok());
  std::vector<std::unique_ptr<SecureSite>> clients;
  for (int i = 0; i < kSites; ++i) {
    auto c = SecureSite::Start(TrainTask(i), sites_[i].key_pem, ca_.cert_pem);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(server->AddAdvertisement(FromProto((*c)->Advertisement())).ok());
    clients.push_back(*std::move(c));
  }
  auto ads = server->Advertisements();
  ASSERT_TRUE(ads.ok());
  auto relay = [&](const std::vector<std::string>& certs) {
    v1::RoundTask share = TrainTask(0);
    share.set_kind(v1::RoundTask::SECAGG_SHARE);
    for (const auto& a : *ads) *share.add_advertisements() = ToProto(a, certs[a.site]);
    return clients[0]->ShareKeys(share).status();
  };
  // Site 2's certificate relayed for site 3's keys: the names differ.
  auto swapped = relay({sites_[0].cert_pem, sites_[1].cert_pem, sites_[1].cert_pem});
  EXPECT_TRUE(absl::IsPermissionDenied(swapped)) << swapped;
  EXPECT_NE(std::string(swapped.message()).find("belongs to 'site-2'"), std::string::npos)
      << swapped;
  // A certificate named site-3 from a CA the coordinator made up.
  auto other_ca = MakeCertificateAuthority("study CA", 30);
  ASSERT_TRUE(other_ca.ok());
  CertOptions o;
  o.common_name = "site-3";
  auto forged = IssueCertificate(*other_ca, o);
  ASSERT_TRUE(forged.ok());
  auto foreign = relay({sites_[0].cert_pem, sites_[1].cert_pem, forged->cert_pem});
  EXPECT_TRUE(absl::IsPermissionDenied(foreign)) << foreign;
  EXPECT_NE(std::string(foreign.message()).find("not from the study CA"), std::string::npos)
      << foreign;
  // The right certificates, but a key swapped under one of them: the
  // signature does not verify.
  ads->at(2).mask_public_key = ads->at(1).mask_public_key;
  auto key_swap = relay({sites_[0].cert_pem, sites_[1].cert_pem, sites_[2].cert_pem});
  EXPECT_FALSE(key_swap.ok());
  // A step of another task.
  v1::RoundTask other = TrainTask(0);
  other.set_task_id("another");
  EXPECT_TRUE(absl::IsFailedPrecondition(clients[0]->ShareKeys(other).status()));
}

}  // namespace
}  // namespace attune::secagg
