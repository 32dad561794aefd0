// The study's signed terms (terms.h), their provisioning (provision.h) and
// the site's checks against them (site_guard.h).
#include "attune/common/terms.h"

#include <cmath>
#include <filesystem>
#include <functional>
#include <optional>

#include "attune/common/pki.h"
#include "attune/common/provision.h"
#include "attune/common/site_guard.h"
#include "attune/common/site_releases.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "support/temp_dir.h"

namespace attune {
namespace {

namespace fs = std::filesystem;
using ::attune::testing::TempDir;
using nlohmann::json;

std::string Read(const fs::path& path) {
  StatusOr<std::string> text = ReadFile(path.string());
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : std::string();
}

// A study directory whose study has secure aggregation and central DP.
struct Study {
  TempDir tmp;
  fs::path dir = tmp / "pki";
  std::string ca_cert;
  Study() {
    json base = {{"secure_aggregation", true},
                 {"privacy", {{"mode", "central"}, {"clip_norm", 2.0},
                              {"noise_multiplier", 0.5}, {"epsilon", 8.0}}},
                 {"audit", {{"columns", {"sex"}}, {"values", {{"sex", {"F", "M"}}}},
                            {"histogram_bins", 40}}}};
    EXPECT_TRUE(WriteFileAtomic(tmp / "base.json", base.dump()).ok());
    InitOptions o;
    o.out_dir = dir.string();
    o.study_id = "demo";
    o.sites = {"a", "b", "c", "d"};
    o.base_study_path = tmp / "base.json";
    StatusOr<InitResult> r = InitStudy(o);
    EXPECT_TRUE(r.ok()) << r.status();
    ca_cert = Read(dir / "ca/ca.crt");
  }
  StudyTerms Terms(const std::string& where = "study.terms") const {
    StatusOr<StudyTerms> t = LoadTerms((dir / where).string(), ca_cert);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : StudyTerms();
  }
};

TEST(TermsTest, ProvisionSignsTheStudyIntoEveryBundle) {
  Study s;
  const StudyTerms t = s.Terms();
  EXPECT_EQ(t.study_id, "demo");
  EXPECT_EQ(t.version, 1);
  EXPECT_EQ(t.roster, (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_TRUE(t.secure_aggregation);
  EXPECT_EQ(t.privacy_mode, "central");
  EXPECT_EQ(t.clip_norm, 2.0);
  EXPECT_EQ(t.noise_multiplier, 0.5);
  EXPECT_EQ(t.epsilon, 8.0);
  EXPECT_EQ(t.max_histogram_bins, 40);
  EXPECT_EQ(t.audit_columns, std::vector<std::string>{"sex"});
  StatusOr<StudyConfig> study = LoadStudyConfig((s.dir / kStudyFile).string());
  ASSERT_TRUE(study.ok()) << study.status();
  EXPECT_EQ(TermsDifference(TermsOf(*study, 1), t), "");
  EXPECT_EQ(t.ModelDigest().size(), 64u);
  const std::string text = Read(s.dir / kTermsFile);
  for (const char* bundle : {"coordinator", "operator", "sites/a", "sites/d"}) {
    EXPECT_EQ(Read(s.dir / bundle / kTermsFile), text) << bundle;
  }
}

TEST(TermsTest, RosterChangesAndSignRaiseTheVersion) {
  Study s;
  ASSERT_TRUE(RevokeSite(s.dir.string(), "d").ok());
  StudyTerms t = s.Terms("sites/a/study.terms");
  EXPECT_EQ(t.version, 2);
  EXPECT_FALSE(t.Admits("d"));
  EXPECT_TRUE(t.Admits("a"));
  ASSERT_TRUE(AddSite(s.dir.string(), "e", 10).ok());
  t = s.Terms("sites/e/study.terms");
  EXPECT_EQ(t.version, 3);
  EXPECT_TRUE(t.Admits("e"));
  // sign --study: the file becomes the study's, and its terms are signed.
  json edited = json::parse(Read(s.dir / kStudyFile));
  edited["privacy"]["noise_multiplier"] = 1.5;
  ASSERT_TRUE(WriteFileAtomic(s.tmp / "edited.json", edited.dump()).ok());
  StatusOr<StudyTerms> signed_terms = SignStudy(s.dir.string(), s.tmp / "edited.json");
  ASSERT_TRUE(signed_terms.ok()) << signed_terms.status();
  EXPECT_EQ(signed_terms->version, 4);
  EXPECT_EQ(s.Terms("coordinator/study.terms").noise_multiplier, 1.5);
  EXPECT_NE(Read(s.dir / kStudyFile).find("1.5"), std::string::npos);
  // Another study's file is not this CA's to sign.
  edited["study_id"] = "other";
  ASSERT_TRUE(WriteFileAtomic(s.tmp / "other.json", edited.dump()).ok());
  EXPECT_EQ(SignStudy(s.dir.string(), s.tmp / "other.json").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TermsTest, AlteredOrForeignTermsDoNotVerify) {
  Study s;
  const std::string text = Read(s.dir / kTermsFile);
  // One changed term under the old signature.
  json file = json::parse(text);
  std::string inner = file["terms"];
  const size_t at = inner.find("\"central\"");
  ASSERT_NE(at, std::string::npos);
  inner.replace(at, 9, "\"off\"");
  file["terms"] = inner;
  EXPECT_EQ(VerifyTerms(file.dump(), s.ca_cert).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Signed by another CA.
  StatusOr<KeyAndCert> other = MakeCertificateAuthority("other", 1);
  ASSERT_TRUE(other.ok());
  StatusOr<std::string> foreign = SignTerms(s.Terms(), other->key_pem);
  ASSERT_TRUE(foreign.ok());
  EXPECT_EQ(VerifyTerms(*foreign, s.ca_cert).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(VerifyTerms(*foreign, other->cert_pem).ok());
  // Not terms at all, too big, or with a field a site cannot check.
  EXPECT_EQ(VerifyTerms("[]", s.ca_cert).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(VerifyTerms(std::string(kMaxTermsBytes + 1, ' '), s.ca_cert).status().code(),
            absl::StatusCode::kInvalidArgument);
  json extra = json::parse(s.Terms().ToJson());
  extra["trust_me"] = true;
  EXPECT_EQ(StudyTerms::FromJson(extra.dump()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TermsTest, AuditNoiseIsATermWithTheStudysBudget) {
  // A study without DP on its updates whose audits are noised: the terms
  // carry the noise, the clip and the budget they are charged to.
  StatusOr<StudyConfig> study = ParseStudyConfig(
      json{{"study_id", "noised"}, {"roster", {"a", "b"}},
           {"privacy", {{"epsilon", 4.0}, {"delta", 1e-6}}},
           {"audit", {{"noise_multiplier", 3.0}, {"value_clip", 2.0}, {"histogram_bins", 20}}}}
          .dump());
  ASSERT_TRUE(study.ok()) << study.status();
  const StudyTerms t = TermsOf(*study, 1);
  EXPECT_TRUE(t.audit_noised());
  EXPECT_FALSE(t.privacy_enabled());
  EXPECT_EQ(t.audit_noise_multiplier, 3.0);
  EXPECT_EQ(t.audit_value_clip, 2.0);
  EXPECT_EQ(t.epsilon, 4.0);
  EXPECT_EQ(t.delta, 1e-6);
  StatusOr<StudyTerms> back = StudyTerms::FromJson(t.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(TermsDifference(t, *back), "");
  StudyTerms weaker = t;
  weaker.audit_noise_multiplier = 1.0;
  EXPECT_EQ(TermsDifference(t, weaker), "audit.noise_multiplier");
  // Noise needs a clip, an even number of bins and a budget.
  json j = json::parse(t.ToJson());
  j["audit"]["value_clip"] = 0;
  EXPECT_EQ(StudyTerms::FromJson(j.dump()).status().code(), absl::StatusCode::kInvalidArgument);
  j = json::parse(t.ToJson());
  j["privacy"]["epsilon"] = 0;
  EXPECT_EQ(StudyTerms::FromJson(j.dump()).status().code(), absl::StatusCode::kInvalidArgument);
  j = json::parse(t.ToJson());
  j["audit"]["noise_multiplier"] = -1;
  EXPECT_EQ(StudyTerms::FromJson(j.dump()).status().code(), absl::StatusCode::kInvalidArgument);
  // And the study file says why an odd number of bins is refused.
  StatusOr<StudyConfig> odd = ParseStudyConfig(
      json{{"study_id", "noised"}, {"roster", {"a", "b"}},
           {"audit", {{"noise_multiplier", 3.0}, {"histogram_bins", 21}}}}
          .dump());
  ASSERT_FALSE(odd.ok());
  EXPECT_NE(std::string(odd.status().message()).find("even number of bins"), std::string::npos)
      << odd.status();
}

TEST(TermsTest, MinimumThresholdIsMoreThanHalfOfEachSecretsHolders) {
  EXPECT_EQ(MinimumThreshold(3, 0), 2);
  EXPECT_EQ(MinimumThreshold(4, 0), 3);
  EXPECT_EQ(MinimumThreshold(5, 0), 3);
  EXPECT_EQ(MinimumThreshold(100, 0), 51);
  // SecAgg+: degree 6 -> 7 holders; an odd degree is rounded up to even.
  EXPECT_EQ(MinimumThreshold(100, 6), 4);
  EXPECT_EQ(MinimumThreshold(100, 5), 4);
  EXPECT_EQ(MinimumThreshold(8, 7), 5);  // degree n - 1: everyone
  EXPECT_TRUE(IsReservedName("coordinator"));
  EXPECT_TRUE(IsReservedName(kOperatorName));
  EXPECT_FALSE(IsReservedName("site-1"));
}

// The guard on its own (the hostile-coordinator test drives it through a
// real worker).
class GuardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StatusOr<SiteGuard> g = SiteGuard::Load((s_.dir / "sites/a" / kTermsFile).string(),
                                            s_.ca_cert, "a", "demo");
    ASSERT_TRUE(g.ok()) << g.status();
    guard_.emplace(*std::move(g));
  }
  v1::RoundTask Train() const {
    v1::RoundTask t;
    t.set_kind(v1::RoundTask::TRAIN);
    t.set_study_id("demo");
    t.set_round(1);
    v1::SecAggSetup* s = t.mutable_secagg();
    for (const char* site : {"a", "b", "c"}) s->add_sites(site);
    s->set_index(0);
    s->set_threshold(2);
    t.mutable_dp()->set_clip_norm(2.0);
    t.mutable_dp()->set_noise_stddev(0.5 * 2.0 / std::sqrt(2.0));
    return t;
  }
  Status Check(const v1::RoundTask& t) { return guard_->CheckTask(t); }

  Study s_;
  std::optional<SiteGuard> guard_;
};

TEST_F(GuardTest, AnHonestTaskPasses) {
  EXPECT_TRUE(Check(Train()).ok()) << Check(Train());
  // A smaller clip with its (smaller) noise, and a higher threshold, are tighter.
  v1::RoundTask t = Train();
  t.mutable_dp()->set_clip_norm(1.0);
  t.mutable_dp()->set_noise_stddev(0.5 / std::sqrt(3.0));
  t.mutable_secagg()->set_threshold(3);
  EXPECT_TRUE(Check(t).ok()) << Check(t);
}

TEST_F(GuardTest, EachLoosenedParameterIsRefusedNamingItsTerm) {
  struct Case {
    const char* term;
    std::function<void(v1::RoundTask*)> loosen;
  };
  const std::vector<Case> cases = {
      {"(roster)", [](v1::RoundTask* t) { t->mutable_secagg()->set_sites(2, "coordinator"); }},
      {"(roster)", [](v1::RoundTask* t) { t->mutable_secagg()->set_sites(2, "z"); }},
      {"(roster)", [](v1::RoundTask* t) { t->mutable_secagg()->set_sites(2, "b"); }},
      {"(secure_aggregation.min_threshold)",
       [](v1::RoundTask* t) { t->mutable_secagg()->set_threshold(1); }},
      {"(secure_aggregation.min_threshold)",
       [](v1::RoundTask* t) { t->mutable_secagg()->set_threshold(4); }},
      {"(secure_aggregation)",
       [](v1::RoundTask* t) {
         t->mutable_secagg()->clear_sites();
         t->mutable_secagg()->add_sites("a");
         t->mutable_secagg()->add_sites("b");
       }},
      {"(secure_aggregation)", [](v1::RoundTask* t) { t->clear_secagg(); }},
      {"(privacy.clip_norm)", [](v1::RoundTask* t) { t->mutable_dp()->set_clip_norm(0); }},
      {"(privacy.clip_norm)", [](v1::RoundTask* t) { t->mutable_dp()->set_clip_norm(2.5); }},
      {"(privacy.noise_multiplier)",
       [](v1::RoundTask* t) { t->mutable_dp()->set_noise_stddev(0.7); }},
      {"(rounds)", [](v1::RoundTask* t) { t->set_round(99); }},
      {"(study_id)", [](v1::RoundTask* t) { t->set_study_id("other"); }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    v1::RoundTask t = Train();
    cases[i].loosen(&t);
    Status st = Check(t);
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << "case " << i;
    EXPECT_NE(st.message().find(cases[i].term), std::string::npos) << "case " << i << ": " << st;
  }
}

TEST_F(GuardTest, NewerTermsAreAdoptedAndKeptOlderOnesAreStale) {
  const std::string v1 = Read(s_.dir / kTermsFile);
  ASSERT_TRUE(RevokeSite(s_.dir.string(), "c").ok());
  // The site's own copy is still version 1 (as if the bundle were
  // elsewhere); the coordinator forwards version 2.
  ASSERT_TRUE(WriteFileAtomic((s_.dir / "sites/a" / kTermsFile).string(), v1).ok());
  StatusOr<SiteGuard> g = SiteGuard::Load((s_.dir / "sites/a" / kTermsFile).string(), s_.ca_cert,
                                          "a", "demo");
  ASSERT_TRUE(g.ok());
  guard_.emplace(*std::move(g));
  EXPECT_TRUE(Check(Train()).ok());  // c still admitted at version 1
  v1::RoundTask t = Train();
  t.set_terms(Read(s_.dir / kTermsFile));
  Status st = Check(t);
  EXPECT_NE(st.message().find("peer 'c' is revoked"), std::string::npos) << st;
  EXPECT_EQ(guard_->terms().version, 2);
  // Kept on disk: a restarted site starts from version 2.
  EXPECT_EQ(Read(s_.dir / "sites/a" / kTermsFile), Read(s_.dir / kTermsFile));
  t.set_terms(v1);
  st = Check(t);
  EXPECT_NE(st.message().find("stale: version 1, but this site holds version 2"),
            std::string::npos)
      << st;
}

Release Evaluation(const std::string& model, std::vector<std::string> splits,
                   std::vector<std::string> survivors, const std::string& layout = "L") {
  return Release{"evaluation", model, std::move(splits), layout, std::move(survivors), 3};
}

TEST(SiteReleasesTest, TheSameSumAgainIsFineOtherSurvivorsAndTooManyReleasesAreNot) {
  const ReleaseLimits kTwo{.max_releases = 2};
  TempDir tmp;
  StatusOr<SiteReleases> r = SiteReleases::Open(tmp / "state");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->Record(Evaluation("m1", {"val"}, {"a", "b", "c"}), kTwo).ok());
  // A retried round: the same sum over the same sites, not counted again.
  ASSERT_TRUE(r->Record(Evaluation("m1", {"val"}, {"a", "b", "c"}), kTwo).ok());
  EXPECT_EQ(r->size(), 1u);
  // The same release over other survivors: the difference would be c's.
  Status s = r->Check(Evaluation("m1", {"val"}, {"a", "b"}), kTwo);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(s.message().find("already released it for {a, b, c}"), std::string::npos) << s;
  // Another layout of the same model and split is a second release, a
  // third is over the limit of 2; other splits and models count apart.
  ASSERT_TRUE(r->Record(Evaluation("m1", {"val"}, {"a", "b"}, "audit"), kTwo).ok());
  s = r->Check(Evaluation("m1", {"val", "test"}, {"a", "b"}, "audit2"), kTwo);
  EXPECT_NE(s.message().find("(audit.max_releases)"), std::string::npos) << s;
  EXPECT_TRUE(r->Check(Evaluation("m1", {"test"}, {"a"}, "x"), kTwo).ok());
  EXPECT_TRUE(r->Check(Evaluation("m2", {"val"}, {"a"}), kTwo).ok());
  // Updates: one model's update over one set of survivors only.
  Release update{"update", "m1", {}, "", {"a", "b", "c"}, 2};
  ASSERT_TRUE(r->Record(update, kTwo).ok());
  update.survivors = {"a", "c"};
  EXPECT_EQ(r->Check(update, kTwo).code(), absl::StatusCode::kPermissionDenied);

  // A restarted site remembers all of it.
  StatusOr<SiteReleases> again = SiteReleases::Open(tmp / "state");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->size(), 3u);
  EXPECT_EQ(again->Check(Evaluation("m1", {"val"}, {"a", "b"}), kTwo).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(again->Check(update, kTwo).code(), absl::StatusCode::kPermissionDenied);
  // A damaged ledger is an error, not an empty one.
  ASSERT_TRUE(WriteFileAtomic(tmp / "state/releases.json", "{\"releases\": [{}]}").ok());
  EXPECT_EQ(SiteReleases::Open(tmp / "state").status().code(), absl::StatusCode::kDataLoss);
}

TEST(SiteReleasesTest, PrivateReleasesAreChargedOnceAndNeverPastTheSitesBudget) {
  TempDir tmp;
  StatusOr<SiteReleases> r = SiteReleases::Open(tmp / "state");
  ASSERT_TRUE(r.ok()) << r.status();
  // sigma 2, delta 1e-5: one release costs epsilon 2.1680, two 3.1904
  // (min over integer orders a of n a / 8 + log((a-1)/a) - (log delta +
  // log a)/(a-1), computed by hand in Python), so a budget of 3 allows one.
  ReleaseLimits limits{.max_releases = 2, .noise_multiplier = 2, .epsilon = 3, .delta = 1e-5};
  const double one = 2.168010636783972, two = 3.190351872825228;
  Release update{"update", "m1", {}, "", {"a"}, 1};
  ASSERT_TRUE(r->Record(update, limits).ok());
  EXPECT_NEAR(r->epsilon(), one, 1e-9);
  // The same release again (a retried upload: the same noise) is free.
  ASSERT_TRUE(r->Record(update, limits).ok());
  EXPECT_EQ(r->dp_releases(), 1);
  // A release that is not private is charged nothing.
  ASSERT_TRUE(r->Record(Evaluation("m1", {"val"}, {"a"}), ReleaseLimits{.max_releases = 2}).ok());
  EXPECT_EQ(r->dp_releases(), 1);
  // The next model's update would pass the budget: refused, nothing spent,
  // and a restarted site still counts what it spent.
  Release next{"update", "m2", {}, "", {"a"}, 2};
  Status s = r->Record(next, limits);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("past its budget of 3"), std::string::npos) << s;
  EXPECT_EQ(r->size(), 2u);
  StatusOr<SiteReleases> again = SiteReleases::Open(tmp / "state");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NEAR(again->epsilon(), one, 1e-9);
  EXPECT_EQ(again->Check(next, limits).code(), absl::StatusCode::kResourceExhausted);
  // A larger budget (re-signed terms) lets it through and charges it.
  limits.epsilon = 10;
  ASSERT_TRUE(again->Record(next, limits).ok());
  EXPECT_NEAR(again->epsilon(), two, 1e-9);
  // The ledger's delta is fixed once anything is charged.
  limits.delta = 1e-6;
  EXPECT_EQ(again->Check(Release{"update", "m3", {}, "", {"a"}, 3}, limits).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace attune
