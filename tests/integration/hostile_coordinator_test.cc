// A hostile coordinator against a real attune-worker: a gRPC server built
// on the project's own protocol, holding the study's real coordinator
// bundle (so the worker's TLS handshake succeeds), that sends crafted tasks.
// Every attack must be refused by the site on the strength of its signed
// study terms (common/site_guard.h), with a message naming the term, and
// must get nothing out of it; a well-formed task sent the same way is
// carried out (the control: the refusals are the attacks', not the
// harness's).
#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <signal.h>

#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/pki.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/terms.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"
#include "attune/v1/federation.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "support/process.h"
#include "support/temp_dir.h"

namespace attune::testing {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr char kStudy[] = "hostile";

// The coordinator an attacker would run: it answers Join with what it is
// told to, streams the tasks it is given, and records what the site sends.
class HostileCoordinator final : public v1::Federation::Service {
 public:
  // What Join answers; the test may change it before the worker starts.
  v1::JoinReply join;

  void Push(v1::RoundTask task) {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
    cv_.notify_all();
  }
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    finish_ = true;
    cv_.notify_all();
  }
  // Waits up to `timeout` for `done` (checked under the lock whenever a
  // call arrives).
  bool WaitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, done);
  }
  int subscribed() const { return subscribed_; }
  // What the site sent (read under mu()).
  const std::vector<std::string>& features() const { return features_; }
  const std::vector<std::string>& payloads() const { return payloads_; }
  const std::vector<v1::SecAggMessage>& secagg() const { return secagg_; }
  int secagg_messages() const { return static_cast<int>(secagg_.size()); }
  int uploads() const { return uploads_; }
  int audits() const { return audits_; }
  std::mutex& mu() { return mu_; }

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* req,
                    v1::JoinReply* reply) override {
    std::lock_guard<std::mutex> lock(mu_);
    features_.assign(req->audit_features().begin(), req->audit_features().end());
    *reply = join;
    auto cn = PeerCommonName(*ctx);
    reply->set_site_id(cn.ok() ? *cn : "");
    cv_.notify_all();
    return grpc::Status::OK;
  }
  grpc::Status Subscribe(grpc::ServerContext* ctx, const v1::SiteHello*,
                         grpc::ServerWriter<v1::RoundTask>* writer) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++subscribed_;
    cv_.notify_all();
    while (!ctx->IsCancelled()) {
      cv_.wait_for(lock, std::chrono::milliseconds(200),
                   [&] { return !tasks_.empty() || finish_; });
      if (!tasks_.empty()) {
        v1::RoundTask t = std::move(tasks_.front());
        tasks_.pop_front();
        lock.unlock();
        writer->Write(t);
        lock.lock();
      } else if (finish_) {
        v1::RoundTask t;
        t.set_kind(v1::RoundTask::FINISH);
        t.set_study_id(kStudy);
        lock.unlock();
        writer->Write(t);
        return grpc::Status::OK;
      }
    }
    return grpc::Status::OK;
  }
  grpc::Status SecAgg(grpc::ServerContext*, const v1::SecAggMessage* msg,
                      v1::Receipt*) override {
    std::lock_guard<std::mutex> lock(mu_);
    secagg_.push_back(*msg);
    cv_.notify_all();
    return grpc::Status::OK;
  }
  grpc::Status SubmitUpdate(grpc::ServerContext*, grpc::ServerReader<v1::Chunk>* reader,
                            v1::Receipt*) override {
    v1::Chunk c;
    std::string payload;
    while (reader->Read(&c)) payload += c.data();
    std::lock_guard<std::mutex> lock(mu_);
    payloads_.push_back(std::move(payload));
    ++uploads_;
    cv_.notify_all();
    return grpc::Status::OK;
  }
  grpc::Status SubmitAudit(grpc::ServerContext*, const v1::AuditReport*, v1::Receipt*) override {
    std::lock_guard<std::mutex> lock(mu_);
    ++audits_;
    cv_.notify_all();
    return grpc::Status::OK;
  }
  grpc::Status FetchModel(grpc::ServerContext*, const v1::ModelRef*,
                          grpc::ServerWriter<v1::Chunk>* writer) override {
    std::string blob;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blob = model_;
    }
    if (!held_reply_.empty()) {  // "you hold it already", whatever the site holds
      v1::Chunk c;
      c.mutable_meta()->set_total_bytes(blob.size());
      c.mutable_meta()->set_total_sha256(held_reply_);
      c.mutable_meta()->set_held(true);
      c.set_last(true);
      writer->Write(c);
      return grpc::Status::OK;
    }
    if (blob.empty()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no model here");
    WriteChunks(blob, v1::UpdateMeta(), [&](const v1::Chunk& c) { return writer->Write(c); });
    return grpc::Status::OK;
  }
  // FetchModel answers "held" with this digest from now on.
  void SetHeldReply(std::string sha256) {
    std::lock_guard<std::mutex> lock(mu_);
    held_reply_ = std::move(sha256);
  }
  // The encoded model FetchModel serves ("": none).
  void SetModel(std::string blob) {
    std::lock_guard<std::mutex> lock(mu_);
    SetModelLocked(std::move(blob));
  }
  void SetModelLocked(std::string blob) { model_ = std::move(blob); }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*,
                         v1::HeartbeatReply*) override {
    return grpc::Status::OK;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::RoundTask> tasks_;
  bool finish_ = false;
  std::string model_, held_reply_;
  std::vector<std::string> features_, payloads_;
  int subscribed_ = 0, uploads_ = 0, audits_ = 0;
  std::vector<v1::SecAggMessage> secagg_;
};

class HostileCoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Secure aggregation with central DP, an audit of sex only (50 bins),
    // and site-4 revoked after the first terms were signed.
    json study = json::parse(ReadText(ATTUNE_STUDY_JSON));
    study["study_id"] = kStudy;
    study["rounds"] = 3;
    study["min_sites"] = 3;
    study["secure_aggregation"] = true;
    study["privacy"] = {{"mode", "central"}, {"clip_norm", 1.0}, {"noise_multiplier", 1.0},
                        {"epsilon", 50.0}, {"delta", 1e-5}};
    study["audit"] = {{"columns", {"sex"}}, {"values", {{"sex", {"F", "M"}}}},
                      {"histogram_bins", 50}, {"min_cell", 10}};
    std::ofstream(dir_ / "base.json") << study.dump(2);
    Process prov({ATTUNE_TOOL_BIN, "provision", "init", "--out", dir_ / "pki", "--study-id",
                  kStudy, "--sites", "site-1,site-2,site-3,site-4", "--study", dir_ / "base.json"},
                 dir_ / "provision.log");
    ASSERT_EQ(prov.Wait(seconds(60)), 0) << prov.Log();
    old_terms_ = ReadText(dir_ / "pki/study.terms");
    Process revoke({ATTUNE_TOOL_BIN, "provision", "revoke", "--dir", dir_ / "pki", "--site",
                    "site-4"},
                   dir_ / "revoke.log");
    ASSERT_EQ(revoke.Wait(seconds(60)), 0) << revoke.Log();
    terms_ = ReadText(dir_ / "pki/study.terms");
    Process syn({ATTUNE_TOOL_BIN, "synth", "--out", dir_ / "data", "--sites", "1", "--patients",
                 "60", "--seed", "5"},
                dir_ / "synth.log");
    ASSERT_EQ(syn.Wait(seconds(60)), 0) << syn.Log();

    auto tls = LoadTlsBundle(dir_ / "pki/coordinator");
    ASSERT_TRUE(tls.ok()) << tls.status();
    auto terms = VerifyTerms(terms_, tls->ca_pem);
    ASSERT_TRUE(terms.ok()) << terms.status();
    ASSERT_EQ(terms->version, 2);
    coordinator_cert_ = tls->cert_pem;
    operator_cert_ = ReadText(dir_ / "pki/operator/cert.crt");

    // An honest Join reply; tests change it to attack.
    hostile_.join.set_study_id(kStudy);
    hostile_.join.set_total_rounds(3);
    hostile_.join.set_committed_round(0);
    hostile_.join.set_model_config_json(terms->model_config_json);
    hostile_.join.add_audit_columns("sex");
    hostile_.join.set_histogram_bins(50);
    hostile_.join.set_heartbeat_interval_ms(60000);
    hostile_.join.set_terms(terms_);

    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", MakeServerCredentials(*tls), &port_);
    builder.RegisterService(&hostile_);
    server_ = builder.BuildAndStart();
    ASSERT_TRUE(server_ && port_ > 0);
  }

  void TearDown() override {
    hostile_.Finish();
    if (worker_) worker_->Wait(seconds(30));
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }

  void LaunchWorker() {
    worker_ = std::make_unique<Process>(
        std::vector<std::string>{ATTUNE_WORKER_BIN, "--coordinator",
                                 "127.0.0.1:" + std::to_string(port_), "--study-id", kStudy,
                                 "--site-dir", dir_ / "data/site-1", "--tls-dir",
                                 dir_ / "pki/sites/site-1", "--reconnect-timeout", "10"},
        dir_ / "worker.log");
  }
  void StartWorker() {
    LaunchWorker();
    ASSERT_TRUE(hostile_.WaitFor([&] { return hostile_.subscribed() > 0; }, seconds(120)))
        << worker_->Log();
  }

  // The worker's log lines about task `id`, oldest first.
  std::vector<std::string> TaskLines(const std::string& id) const {
    const std::string log = worker_->Log();
    const std::string tag = "(task " + id + "): ";
    std::vector<std::string> lines;
    for (size_t at = log.find(tag); at != std::string::npos; at = log.find(tag, at + 1)) {
      const size_t end = log.find('\n', at);
      lines.push_back(log.substr(at, end == std::string::npos ? std::string::npos : end - at));
    }
    return lines;
  }

  // A secure TRAIN task the terms allow: site-1 of three admitted sites,
  // threshold 2 of 3, clip 1 and each site's share of σ·C.
  // An INIT task: the worker uploads the real initial model (payloads()[0]).
  void AskForTheInitialModel() {
    v1::RoundTask init;
    init.set_kind(v1::RoundTask::INIT);
    init.set_study_id(kStudy);
    init.set_model_version(-1);
    init.set_task_id("init");
    init.set_terms(terms_);
    hostile_.Push(init);
    ASSERT_TRUE(hostile_.WaitFor([&] { return hostile_.uploads() == 1; }, seconds(60)))
        << worker_->Log();
  }

  v1::RoundTask HonestTrain(const std::string& id) const {
    v1::RoundTask t;
    t.set_kind(v1::RoundTask::TRAIN);
    t.set_study_id(kStudy);
    t.set_round(1);
    t.set_model_version(0);
    t.set_task_id(id);
    t.mutable_hyper()->set_local_epochs(1);
    t.mutable_hyper()->set_batch_size(16);
    t.mutable_hyper()->set_learning_rate(0.001f);
    v1::SecAggSetup* s = t.mutable_secagg();
    s->set_context(std::string(kStudy) + "|" + id);
    s->set_index(0);
    for (const char* site : {"site-1", "site-2", "site-3"}) s->add_sites(site);
    s->set_threshold(2);
    s->set_length(1000);
    s->set_value_clip(1.0);
    s->set_weight(0.5);
    t.mutable_dp()->set_clip_norm(1.0);
    t.mutable_dp()->set_noise_stddev(1.0 / std::sqrt(2.0));
    t.set_terms(terms_);
    return t;
  }

  // Sends `task` and requires the site to refuse it with `message` in its
  // log, sending nothing: no secure-aggregation message, update or audit.
  void ExpectRefused(const v1::RoundTask& task, const std::string& message) {
    int secagg, uploads, audits;
    {
      std::lock_guard<std::mutex> lock(hostile_.mu());
      secagg = hostile_.secagg_messages();
      uploads = hostile_.uploads();
      audits = hostile_.audits();
    }
    const size_t lines = TaskLines(task.task_id()).size();
    hostile_.Push(task);
    EXPECT_TRUE(WaitUntil(
        dir_.path(), [&] { return TaskLines(task.task_id()).size() > lines; }, seconds(60)))
        << "task " << task.task_id() << " was neither done nor refused:\n"
        << worker_->Log();
    const auto now = TaskLines(task.task_id());
    EXPECT_NE(now.empty() ? std::string::npos : now.back().find(message), std::string::npos)
        << "task " << task.task_id() << " should be refused with '" << message << "':\n"
        << worker_->Log();
    std::lock_guard<std::mutex> lock(hostile_.mu());
    EXPECT_EQ(hostile_.secagg_messages(), secagg) << task.task_id() << " revealed something";
    EXPECT_EQ(hostile_.uploads(), uploads) << task.task_id();
    EXPECT_EQ(hostile_.audits(), audits) << task.task_id();
  }

  // Attacks on the honest TRAIN task, one parameter each: every one refused.
  struct Attack {
    std::string id;
    std::function<void(v1::RoundTask*)> change;
    std::string message;
  };
  void ExpectEachRefused(const std::vector<Attack>& attacks) {
    for (const Attack& a : attacks) {
      v1::RoundTask t = HonestTrain(a.id);
      a.change(&t);
      ExpectRefused(t, a.message);
    }
  }

  // The control: an honest secure TRAIN task gets the site's advertisement.
  void ExpectHonestTaskAccepted(const std::string& id) {
    int before;
    {
      std::lock_guard<std::mutex> lock(hostile_.mu());
      before = hostile_.secagg_messages();
    }
    hostile_.Push(HonestTrain(id));
    EXPECT_TRUE(
        hostile_.WaitFor([&] { return hostile_.secagg_messages() > before; }, seconds(60)))
        << worker_->Log();
    // Then it asks for the model, which this coordinator does not have.
    EXPECT_TRUE(WaitUntil(
        dir_.path(), [&] { return !TaskLines(id).empty(); }, seconds(60)))
        << worker_->Log();
    EXPECT_NE(TaskLines(id).back().find("no model here"), std::string::npos) << worker_->Log();
  }

  TempDir dir_;
  HostileCoordinator hostile_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<Process> worker_;
  std::string terms_, old_terms_, coordinator_cert_, operator_cert_;
};

TEST_F(HostileCoordinatorTest, SecureAggregationPeersAndThresholdComeFromTheTerms) {
  StartWorker();
  auto sites = [](std::vector<std::string> names) {
    return [names](v1::RoundTask* t) {
      t->mutable_secagg()->clear_sites();
      for (const auto& n : names) t->mutable_secagg()->add_sites(n);
    };
  };
  ExpectEachRefused({
      {"coordinator-as-peer", sites({"site-1", "site-2", "coordinator"}),
       "'coordinator' is not a site"},
      {"operator-as-peer", sites({"site-1", kOperatorName, "site-3"}),
       "'attune-operator' is not a site"},
      // The issue's attack: the coordinator and one site, t = 2 of 2.
      {"two-of-two", sites({"site-1", "coordinator"}), "a secure aggregation among 2 sites"},
      {"off-roster", sites({"site-1", "site-2", "site-9"}), "peer 'site-9' is not on the roster"},
      {"revoked-peer", sites({"site-1", "site-2", "site-4"}), "peer 'site-4' is revoked"},
      {"low-threshold", [](v1::RoundTask* t) { t->mutable_secagg()->set_threshold(1); },
       "threshold 1 among 3 sites; this site needs at least 2"},
      {"not-our-index", [](v1::RoundTask* t) { t->mutable_secagg()->set_index(1); },
       "does not give this site (site-1) its own index"},
      {"in-the-clear", [](v1::RoundTask* t) { t->clear_secagg(); },
       "task without secure aggregation; the terms require it"},
  });
  ExpectHonestTaskAccepted("honest");
  // Its share step, with the coordinator's certificate relayed as site-2's
  // (it chains to the study CA, but is for server authentication only).
  v1::RoundTask share;
  share.set_kind(v1::RoundTask::SECAGG_SHARE);
  share.set_study_id(kStudy);
  share.set_round(1);
  share.set_task_id("honest");
  share.set_terms(terms_);
  v1::SecAggAdvertisement* ad = share.add_advertisements();
  ad->set_site(1);
  ad->set_cipher_public_key(std::string(32, 'c'));
  ad->set_mask_public_key(std::string(32, 'm'));
  ad->set_certificate_pem(coordinator_cert_);
  ExpectRefused(share, "the certificate relayed for site site-2: the certificate is not for "
                       "client authentication");
}

TEST_F(HostileCoordinatorTest, DifferentialPrivacyComesFromTheTerms) {
  StartWorker();
  auto dp = [](double clip, double noise) {
    return [clip, noise](v1::RoundTask* t) {
      t->mutable_dp()->set_clip_norm(clip);
      t->mutable_dp()->set_noise_stddev(noise);
    };
  };
  ExpectEachRefused({
      {"no-clip", dp(0, 1), "(privacy.clip_norm): clip norm 0"},
      {"loose-clip", dp(5, 5), "(privacy.clip_norm): clip norm 5"},
      {"little-noise", dp(1, 0.1), "(privacy.noise_multiplier): noise stddev 0.1"},
      // Each site's share as if three were needed, when two are.
      {"noise-for-more-sites", dp(1, 1 / std::sqrt(3.0)), "(privacy.noise_multiplier)"},
      {"past-the-last-round", [](v1::RoundTask* t) { t->set_round(4); },
       "(rounds): a TRAIN task for round 4"},
  });
  ExpectHonestTaskAccepted("honest");
}

TEST_F(HostileCoordinatorTest, TheAuditAsksOnlyForWhatTheTermsAllow) {
  StartWorker();
  auto evaluate = [&](const std::string& id) {
    v1::RoundTask t = HonestTrain(id);
    t.set_kind(v1::RoundTask::EVALUATE);
    t.clear_dp();
    t.add_splits("val");
    t.set_audit(true);
    t.mutable_secagg()->set_weight(1);
    v1::EvalLayout* l = t.mutable_eval_layout();
    l->set_bins(50);
    for (const char* v : {"F", "M", "(other)"}) {
      v1::AuditCell* c = l->add_cells();
      c->set_column("sex");
      c->set_value(v);
    }
    return t;
  };
  {
    auto t = evaluate("fine-histogram");
    t.mutable_eval_layout()->set_bins(100000);
    ExpectRefused(t, "(audit.histogram_bins): 100000 score bins asked, at most 50");
  }
  {
    auto t = evaluate("other-column");
    v1::AuditCell* c = t.mutable_eval_layout()->add_cells();
    c->set_column("zip_code");
    c->set_value("02139");
    ExpectRefused(t, "an audit cell zip_code = 02139 the terms do not define");
  }
  {
    auto t = evaluate("other-value");
    v1::AuditCell* c = t.mutable_eval_layout()->add_cells();
    c->set_column("sex");
    c->set_value("patient s1-p0001");
    ExpectRefused(t, "an audit cell sex = patient s1-p0001");
  }
  {
    auto t = evaluate("evaluate-in-the-clear");
    t.clear_secagg();
    ExpectRefused(t, "EVALUATE task without secure aggregation");
  }
}

TEST_F(HostileCoordinatorTest, ForgedAndStaleTermsAreRefused) {
  StartWorker();
  {
    // The coordinator rewrites the terms (privacy off) and keeps the old
    // signature.
    json file = json::parse(terms_);
    json inner = json::parse(file["terms"].get<std::string>());
    inner["privacy"]["mode"] = "off";
    file["terms"] = inner.dump(2) + "\n";
    auto t = HonestTrain("forged-terms");
    t.set_terms(file.dump());
    ExpectRefused(t, "not signed by the study CA");
  }
  {
    // Terms signed by another study's CA.
    Process other({ATTUNE_TOOL_BIN, "provision", "init", "--out", dir_ / "other", "--study-id",
                   kStudy, "--sites", "site-1,site-2,site-3", "--study", dir_ / "base.json"},
                  dir_ / "other.log");
    ASSERT_EQ(other.Wait(seconds(60)), 0) << other.Log();
    auto t = HonestTrain("other-ca-terms");
    t.set_terms(ReadText(dir_ / "other/study.terms"));
    ExpectRefused(t, "not signed by the study CA");
  }
  {
    // Version 1, from before site-4 was revoked: with it site-4 would pass.
    auto t = HonestTrain("stale-terms");
    t.set_terms(old_terms_);
    t.mutable_secagg()->set_sites(2, "site-4");
    ExpectRefused(t, "stale: version 1, but this site holds version 2");
  }
  ExpectHonestTaskAccepted("honest");
}

// Round 1 trains from version 0: a coordinator that serves its own start
// instead of the one the study's seed gives is refused.
TEST_F(HostileCoordinatorTest, ASubstitutedInitialModelIsRefused) {
  StartWorker();
  // The real initial model (an INIT task), one value changed: the same
  // architecture, another start.
  ASSERT_NO_FATAL_FAILURE(AskForTheInitialModel());
  {
    std::lock_guard<std::mutex> lock(hostile_.mu());
    auto real = DecodeModel(hostile_.payloads().at(0));
    ASSERT_TRUE(real.ok()) << real.status();
    real->values[0] += 0.25f;
    hostile_.SetModelLocked(EncodeModel(*real));
  }
  hostile_.Push(HonestTrain("substituted"));
  EXPECT_TRUE(WaitUntil(
      dir_.path(), [&] { return !TaskLines("substituted").empty(); }, seconds(60)))
      << worker_->Log();
  EXPECT_NE(TaskLines("substituted").back().find(
                "(seed): the coordinator's initial model (version 0) is not the one"),
            std::string::npos)
      << worker_->Log();
  std::lock_guard<std::mutex> lock(hostile_.mu());
  EXPECT_EQ(hostile_.uploads(), 1);  // the initial model only
}

// A later model of another architecture than the terms' model section is
// refused as soon as its header arrives: the site keeps nothing of it (a
// model announced as large as the coordinator likes reserved that much).
TEST_F(HostileCoordinatorTest, AModelOfAnotherArchitectureIsRefused) {
  StartWorker();
  FlatModel other{TensorSchema{{{"w", {1 << 20}, "f32"}}}, std::vector<float>(1 << 20, 0.5f)};
  hostile_.SetModel(EncodeModel(other));
  v1::RoundTask t = HonestTrain("other-architecture");
  t.set_round(3);
  t.set_model_version(2);
  hostile_.Push(t);
  EXPECT_TRUE(WaitUntil(
      dir_.path(), [&] { return !TaskLines("other-architecture").empty(); }, seconds(60)))
      << worker_->Log();
  EXPECT_NE(TaskLines("other-architecture").back().find(
                "(model): the coordinator's model version 2 has 1 tensors of 1048576 values"),
            std::string::npos)
      << worker_->Log();
  std::lock_guard<std::mutex> lock(hostile_.mu());
  EXPECT_EQ(hostile_.uploads(), 0);
}

// A coordinator that says the site holds the model already (FetchModel's
// `held`) with a digest the site holds no model of: nothing is trained on
// and nothing sent; the site's own copy is the only one it would use.
TEST_F(HostileCoordinatorTest, AHeldMarkForAModelTheSiteDoesNotHoldIsRefused) {
  StartWorker();
  hostile_.SetHeldReply(Sha256("a model this site never fetched"));
  v1::RoundTask t = HonestTrain("held-mark");
  t.set_round(3);
  t.set_model_version(2);
  hostile_.Push(t);
  EXPECT_TRUE(WaitUntil(dir_.path(), [&] { return !TaskLines("held-mark").empty(); }, seconds(60)))
      << worker_->Log();
  EXPECT_NE(TaskLines("held-mark").back().find(
                "the coordinator says this site holds model version 2 already, but the model it "
                "holds has another digest"),
            std::string::npos)
      << worker_->Log();
  std::lock_guard<std::mutex> lock(hostile_.mu());
  EXPECT_EQ(hostile_.uploads(), 0);
}

// The issue's audit attack: two releases of one model's evaluation over
// different survivors, the second after the worker restarted. The honest
// peers (site-2 and site-3) are run in the test with their own bundles; the
// coordinator drops site-3 the second time. The site remembers what it
// released, on disk, and refuses to unmask the second. Then a split view:
// the survivor set is signed by the site alone, and it reveals nothing.
TEST_F(HostileCoordinatorTest, ASecondReleaseOrASplitViewOfTheSurvivorsIsNotUnmasked) {
  StartWorker();
  // The real initial model, as the site makes it (an INIT task).
  ASSERT_NO_FATAL_FAILURE(AskForTheInitialModel());
  std::vector<std::string> features;
  {
    std::lock_guard<std::mutex> lock(hostile_.mu());
    hostile_.SetModelLocked(hostile_.payloads().at(0));
    features = hostile_.features();
  }
  const EvalLayout layout =
      EvalLayout::Make({"val"}, 50, ModalityNames(), features, {{"sex", {"F", "M"}}});
  const std::vector<std::string> names = {"site-1", "site-2", "site-3"};

  // One secure evaluation of model 0 up to the unmask step, with the
  // survivors given; returns whether site-1 sent its unmask response (waits
  // for it when it is expected, for site-1's log line otherwise).
  auto release = [&](const std::string& id, std::vector<int> survivors, std::vector<int> dropped,
                     bool expect_unmask, bool peers_sign = true) {
    v1::RoundTask eval;
    eval.set_kind(v1::RoundTask::EVALUATE);
    eval.set_study_id(kStudy);
    eval.set_round(1);
    eval.set_model_version(0);
    eval.set_task_id(id);
    eval.add_splits("val");
    eval.set_audit(true);
    eval.set_terms(terms_);
    *eval.mutable_eval_layout() = ToProto(layout);
    v1::SecAggSetup* s = eval.mutable_secagg();
    s->set_context(std::string(kStudy) + "|" + id);
    for (const auto& n : names) s->add_sites(n);
    s->set_threshold(2);
    s->set_length(layout.Words());
    s->set_value_clip(1.0);
    s->set_weight(1.0);
    // The honest peers.
    std::vector<std::unique_ptr<secagg::SecureSite>> peers;
    std::vector<v1::SecAggAdvertisement> ads(3);
    for (int i = 1; i <= 2; ++i) {
      auto tls = LoadTlsBundle(dir_ / ("pki/sites/" + names[i]));
      EXPECT_TRUE(tls.ok()) << tls.status();
      v1::RoundTask mine = eval;
      mine.mutable_secagg()->set_index(i);
      auto peer = secagg::SecureSite::Start(mine, tls->key_pem, tls->ca_pem);
      EXPECT_TRUE(peer.ok()) << peer.status();
      EXPECT_TRUE((*peer)->SetWords(std::vector<uint32_t>(layout.Words(), 0)).ok());
      ads[i] = (*peer)->Advertisement();
      ads[i].set_certificate_pem(tls->cert_pem);
      peers.push_back(*std::move(peer));
    }
    // site-1's advertisement, relayed with its certificate.
    auto sent = [&](const std::string& task, auto has) {
      return hostile_.WaitFor(
          [&] {
            for (const auto& m : hostile_.secagg()) {
              if (m.task_id() == task && has(m)) return true;
            }
            return false;
          },
          seconds(60));
    };
    auto find = [&](const std::string& task, auto has) {
      std::lock_guard<std::mutex> lock(hostile_.mu());
      for (const auto& m : hostile_.secagg()) {
        if (m.task_id() == task && has(m)) return m;
      }
      return v1::SecAggMessage();
    };
    auto is_ad = [](const v1::SecAggMessage& m) { return m.has_advertisement(); };
    auto is_shares = [](const v1::SecAggMessage& m) { return m.has_shares(); };
    auto is_unmask = [](const v1::SecAggMessage& m) { return m.has_unmask(); };
    hostile_.Push(eval);
    EXPECT_TRUE(sent(id, is_ad)) << worker_->Log();
    ads[0] = find(id, is_ad).advertisement();
    ads[0].set_certificate_pem(ReadText(dir_ / "pki/sites/site-1/cert.crt"));

    v1::RoundTask share;
    share.set_kind(v1::RoundTask::SECAGG_SHARE);
    share.set_study_id(kStudy);
    share.set_round(1);
    share.set_task_id(id);
    share.set_terms(terms_);
    for (const auto& a : ads) *share.add_advertisements() = a;
    std::vector<v1::SecAggSealedShares> all;
    for (auto& peer : peers) {
      auto shares = peer->ShareKeys(share);
      EXPECT_TRUE(shares.ok()) << shares.status();
      if (shares.ok()) all.insert(all.end(), shares->shares().begin(), shares->shares().end());
    }
    hostile_.Push(share);
    EXPECT_TRUE(sent(id, is_shares)) << worker_->Log();
    const v1::SecAggMessage mine = find(id, is_shares);
    all.insert(all.end(), mine.shares().shares().begin(), mine.shares().shares().end());

    v1::RoundTask mask = share;
    mask.set_kind(v1::RoundTask::SECAGG_MASK);
    mask.clear_advertisements();
    for (const auto& sealed : all) {
      if (sealed.to() == 0) *mask.add_shares() = sealed;
    }
    int uploads;
    {
      std::lock_guard<std::mutex> lock(hostile_.mu());
      uploads = hostile_.uploads();
    }
    hostile_.Push(mask);
    EXPECT_TRUE(hostile_.WaitFor([&] { return hostile_.uploads() > uploads; }, seconds(60)))
        << worker_->Log();

    // The consistency step: each survivor signs the survivor set.
    v1::RoundTask confirm = mask;
    confirm.set_kind(v1::RoundTask::SECAGG_CONFIRM);
    confirm.clear_shares();
    for (int v : survivors) confirm.add_survivors(v);
    std::vector<v1::SecAggConfirmation> signatures;
    for (int i = 1; i <= 2 && peers_sign; ++i) {
      if (std::find(survivors.begin(), survivors.end(), i) == survivors.end()) continue;
      auto c = peers[i - 1]->Confirm(confirm);
      EXPECT_TRUE(c.ok()) << c.status();
      v1::SecAggConfirmation sig;
      sig.set_site(i);
      sig.set_signature(c.ok() ? c->signature() : "");
      signatures.push_back(sig);
    }
    auto is_confirm = [](const v1::SecAggMessage& m) { return m.has_confirm(); };
    hostile_.Push(confirm);
    EXPECT_TRUE(sent(id, is_confirm)) << worker_->Log();
    v1::SecAggConfirmation own;
    own.set_site(0);
    own.set_signature(find(id, is_confirm).confirm().signature());
    signatures.push_back(own);

    v1::RoundTask unmask = confirm;
    unmask.set_kind(v1::RoundTask::SECAGG_UNMASK);
    for (int v : dropped) unmask.add_dropped(v);
    for (const auto& sig : signatures) *unmask.add_confirmations() = sig;
    const size_t lines = TaskLines(id).size();
    hostile_.Push(unmask);
    if (expect_unmask) {
      EXPECT_TRUE(sent(id, is_unmask)) << worker_->Log();
    } else {
      EXPECT_TRUE(WaitUntil(
          dir_.path(), [&] { return TaskLines(id).size() > lines; }, seconds(60)))
          << worker_->Log();
    }
    return find(id, is_unmask).has_unmask();
  };

  ASSERT_TRUE(release("audit-a", {0, 1, 2}, {}, true)) << worker_->Log();
  EXPECT_TRUE(std::filesystem::exists(dir_ / "pki/sites/site-1/state/releases.json"));

  // Restarted, on the same bundle: it remembers.
  worker_->Kill(SIGKILL);
  ASSERT_TRUE(worker_->Wait(seconds(10)).has_value());
  const int before = hostile_.subscribed();
  LaunchWorker();
  ASSERT_TRUE(hostile_.WaitFor([&] { return hostile_.subscribed() > before; }, seconds(120)))
      << worker_->Log();
  EXPECT_FALSE(release("audit-b", {0, 1}, {2}, false));
  ASSERT_FALSE(TaskLines("audit-b").empty()) << worker_->Log();
  EXPECT_NE(TaskLines("audit-b").back().find(
                "already released it for {site-1, site-2, site-3}"),
            std::string::npos)
      << worker_->Log();

  // A split view: the other sites were shown another survivor set and did
  // not sign this one, so the site's confirmation stands alone (1 < t = 2).
  EXPECT_FALSE(release("split-view", {0, 1, 2}, {}, false, /*peers_sign=*/false));
  ASSERT_FALSE(TaskLines("split-view").empty()) << worker_->Log();
  EXPECT_NE(TaskLines("split-view").back().find(
                "the survivor set was confirmed by 1 of its sites; 2 must sign it"),
            std::string::npos)
      << worker_->Log();
}

TEST_F(HostileCoordinatorTest, AModelTheTermsDoNotSignEndsTheWorker) {
  hostile_.join.set_model_config_json(R"({"d_model": 64, "heads": 4})");
  LaunchWorker();
  auto code = worker_->Wait(seconds(60));
  ASSERT_TRUE(code.has_value()) << worker_->Log();
  EXPECT_NE(*code, 0);
  EXPECT_NE(worker_->Log().find("refused by the study terms (model)"), std::string::npos)
      << worker_->Log();
}

TEST_F(HostileCoordinatorTest, AnAuditColumnTheTermsDoNotListEndsTheWorker) {
  hostile_.join.add_audit_columns("ethnicity");
  LaunchWorker();
  auto code = worker_->Wait(seconds(120));
  ASSERT_TRUE(code.has_value()) << worker_->Log();
  EXPECT_NE(*code, 0);
  EXPECT_NE(worker_->Log().find("(audit.columns): the coordinator asks to audit column "
                                "'ethnicity'"),
            std::string::npos)
      << worker_->Log();
}

}  // namespace
}  // namespace attune::testing
