// The federation engine against untrusted and unusual sites, with the real
// attune-coordinator process on 127.0.0.1 over mutual TLS and the test
// acting as the sites, by hand through gRPC or as fake sites (the site
// engine with a synthetic learner, experiments/fedsim): every kind of bad
// update is refused with a clear status and logged, and the round goes on
// with nothing stored and nothing lost; a revoked site is refused without a
// restart; a late update for a closed round is refused; a 1 GiB model makes
// a full round trip.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <signal.h>
#include <condition_variable>
#include <stop_token>
#include <thread>

#include "attune/common/audit_features.h"
#include "attune/common/pki.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"
#include "fedsim/fake_site.h"
#include "nlohmann/json.hpp"
#include "support/process.h"
#include "support/temp_dir.h"

namespace attune::testing {
namespace {

using nlohmann::json;
using std::chrono::seconds;
namespace fs = std::filesystem;

constexpr char kStudy[] = "engine";

TensorSchema SmallSchema() {
  return TensorSchema{{{"a", {3, 4}, "f32"}, {"b", {5}, "f32"}}};
}

class EngineTest : public ::testing::Test {
 protected:
  // Provisions `sites` with a study file made from `base` and starts the
  // coordinator on it.
  void Start(json base, const std::string& sites = "site-1,site-2,site-3") {
    Provision(std::move(base), sites);
    StartCoordinator("state", "out", "127.0.0.1:0");
  }
  void Provision(json base, const std::string& sites) {
    base["study_id"] = kStudy;
    std::ofstream(dir_ / "base.json") << base.dump(2);
    Process prov({ATTUNE_TOOL_BIN, "provision", "init", "--out", dir_ / "pki", "--study-id", kStudy,
                  "--sites", sites, "--study", dir_ / "base.json"},
                 dir_ / "provision.log");
    ASSERT_EQ(prov.Wait(seconds(60)), 0) << prov.Log();
  }

  // (Re)starts the coordinator on data directory `state`, writing to `out`.
  void StartCoordinator(const std::string& state, const std::string& out,
                        const std::string& listen) {
    fs::create_directories(dir_ / out);
    fs::remove(dir_ / "port");
    std::vector<std::string> argv = {ATTUNE_COORDINATOR_BIN, "--study", dir_ / "pki/study.json",
                                     "--listen", listen, "--data-dir", dir_ / state, "--tls-dir",
                                     dir_ / "pki/coordinator", "--out", dir_ / out, "--port-file",
                                     dir_ / "port"};
    argv.insert(argv.end(), coordinator_args_.begin(), coordinator_args_.end());
    coordinator_ = std::make_unique<Process>(
        argv, dir_ / ("coordinator-" + std::to_string(++runs_) + ".log"));
    ASSERT_TRUE(WaitUntil(
        dir_.path(), [&] { return (port_ = std::atoi(ReadText(dir_ / "port").c_str())) > 0; },
        seconds(30)))
        << coordinator_->Log();
  }

  void StartCoordinatorWith(const std::vector<std::string>& extra) {
    coordinator_args_ = extra;
    StartCoordinator("state", "out", "127.0.0.1:0");
  }

  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  std::unique_ptr<v1::Federation::Stub> Stub(const std::string& tls_dir) {
    auto tls = LoadTlsBundle(tls_dir);
    EXPECT_TRUE(tls.ok()) << tls.status();
    return v1::Federation::NewStub(MakeChannel(Address(), *tls));
  }
  std::unique_ptr<v1::Federation::Stub> SiteStub(const std::string& site) {
    return Stub(dir_ / ("pki/sites/" + site));
  }

  // Fake sites: the site engine (site/engine.h) with a synthetic learner,
  // each on its own thread and with its own bundle, until FINISH.
  struct FakeSites {
    std::vector<std::unique_ptr<fedsim::FakeSite>> sites;
    std::vector<Status> results;
    std::vector<std::thread> threads;
    ~FakeSites() {
      for (auto& s : sites) s->Stop();
      for (auto& t : threads) t.join();
    }
    void Join() {
      for (auto& t : threads) t.join();
      threads.clear();
    }
  };
  // Adds `names` to `out` (the n-th fake site of `out` gets seed 100 + n).
  void RunFakeSites(FakeSites* out, const std::vector<std::string>& names,
                    fedsim::FakeSiteOptions options) {
    const size_t first = out->sites.size();
    out->results.resize(first + names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      options.seed = 100 + first + i;
      auto site = fedsim::FakeSite::Open(dir_ / ("pki/sites/" + names[i]), Address(), options);
      ASSERT_TRUE(site.ok()) << site.status();
      out->sites.push_back(*std::move(site));
    }
    for (size_t i = first; i < out->sites.size(); ++i) {
      out->threads.emplace_back([out, i] { out->results[i] = out->sites[i]->Run(); });
    }
  }

  // Fake sites of the small model.
  static fedsim::FakeSiteOptions SmallSites() {
    fedsim::FakeSiteOptions opts;
    opts.study_id = kStudy;
    opts.init_schema = SmallSchema();
    return opts;
  }
  // Waits for the coordinator to end the study well, and for every one of
  // `sites` to end well.
  void ExpectStudyEnds(FakeSites* sites) {
    ASSERT_EQ(coordinator_->Wait(seconds(90)), 0) << coordinator_->Log();
    sites->Join();
    for (const auto& r : sites->results) EXPECT_TRUE(r.ok()) << r;
  }

  json Summary(const std::string& out = "out") {
    return json::parse(ReadText(dir_ / (out + "/summary.json")), nullptr, false);
  }

  TempDir dir_;
  std::vector<std::string> coordinator_args_;  // appended to every start
  std::unique_ptr<Process> coordinator_;
  int port_ = 0;
  int runs_ = 0;
};

// Sends heartbeats for a site until destroyed (as attune-worker's thread does).
class Heartbeater {
 public:
  Heartbeater(v1::Federation::Stub* stub, std::string stage)
      : thread_([this, stub, stage](std::stop_token stop) {
          std::mutex mu;
          std::condition_variable_any cv;
          std::unique_lock<std::mutex> lock(mu);
          while (!stop.stop_requested()) {
            v1::HeartbeatRequest req;
            req.set_study_id(kStudy);
            req.set_stage(stage);
            req.set_round(1);
            req.set_epoch(1);
            req.set_epochs(2);
            req.set_batch(3);
            req.set_batches(9);
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + seconds(5));
            v1::HeartbeatReply reply;
            stub->Heartbeat(&ctx, req, &reply);
            cv.wait_for(lock, stop, std::chrono::milliseconds(200), [] { return false; });
          }
        }) {}

 private:
  std::jthread thread_;
};

// A site driven by hand: joins, subscribes and reads its tasks one by one.
class ManualSite {
 public:
  explicit ManualSite(std::unique_ptr<v1::Federation::Stub> stub) : stub_(std::move(stub)) {
    v1::JoinRequest join;
    join.set_study_id(kStudy);
    (*join.mutable_samples())["train"] = 100;
    grpc::ClientContext ctx;
    status_ = stub_->Join(&ctx, join, &reply_);
    if (!status_.ok()) return;
    ctx_.set_deadline(std::chrono::system_clock::now() + seconds(240));
    v1::SiteHello hello;
    hello.set_study_id(kStudy);
    stream_ = stub_->Subscribe(&ctx_, hello);
  }
  ~ManualSite() { ctx_.TryCancel(); }
  const grpc::Status& join_status() const { return status_; }
  v1::RoundTask Next() {
    v1::RoundTask t;
    EXPECT_TRUE(stream_->Read(&t)) << "the task stream ended";
    return t;
  }
  v1::Federation::Stub* stub() { return stub_.get(); }
  void Evaluate(const v1::RoundTask& task) {
    ASSERT_EQ(task.kind(), v1::RoundTask::EVALUATE);
    for (const auto& split : task.splits()) {
      v1::AuditReport report = fedsim::TrivialAuditReport(split, reply_.histogram_bins());
      report.set_study_id(kStudy);
      report.set_round(task.round());
      report.set_task_id(task.task_id());
      grpc::ClientContext ctx;
      v1::Receipt receipt;
      grpc::Status s = stub_->SubmitAudit(&ctx, report, &receipt);
      ASSERT_TRUE(s.ok()) << s.error_message();
    }
  }

 private:
  std::unique_ptr<v1::Federation::Stub> stub_;
  grpc::Status status_;
  v1::JoinReply reply_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::RoundTask>> stream_;
};

v1::UpdateMeta MetaFor(const v1::RoundTask& task) {
  v1::UpdateMeta m;
  m.set_study_id(kStudy);
  m.set_round(task.round());
  m.set_task_id(task.task_id());
  m.set_num_examples(100);
  return m;
}

// Chunks of `payload`, `piece` bytes each, correctly made; tests then break them.
std::vector<v1::Chunk> Chunks(const std::string& payload, v1::UpdateMeta meta, size_t piece) {
  meta.set_total_bytes(payload.size());
  meta.set_total_sha256(Sha256(payload));
  std::vector<v1::Chunk> out;
  for (size_t off = 0, seq = 0; off < payload.size(); off += piece, ++seq) {
    v1::Chunk c;
    if (seq == 0) *c.mutable_meta() = meta;
    c.set_seq(seq);
    c.set_data(payload.substr(off, piece));
    c.set_sha256(Sha256(c.data()));
    c.set_last(off + piece >= payload.size());
    out.push_back(c);
  }
  return out;
}

std::string Encode(const TensorSchema& schema, const fedsim::ValueFn& value) {
  return EncodeModel(fedsim::SyntheticModel(schema, value));
}

struct Expect {
  const char* what;
  grpc::StatusCode code;
  const char* message;
};

void ExpectRefused(const grpc::Status& s, const Expect& e) {
  EXPECT_EQ(s.error_code(), e.code) << e.what << ": " << s.error_message();
  EXPECT_NE(s.error_message().find(e.message), std::string::npos)
      << e.what << ": got '" << s.error_message() << "'";
}

// The refusals `attune log show` accounts for: one per "refused" entry,
// plus those it says were left out (not_logged_before, and the final
// refusals_not_logged entry's counts).
int64_t RefusalsAccountedFor(const std::string& log) {
  int64_t n = 0;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    const size_t brace = line.find('{');
    json detail = brace == std::string::npos ? json() : json::parse(line.substr(brace), nullptr, false);
    if (line.find(" refused ") != std::string::npos) {
      ++n;
      if (detail.is_object()) n += detail.value("not_logged_before", int64_t{0});
    } else if (line.find(" refusals_not_logged ") != std::string::npos && detail.is_object()) {
      for (const auto& [caller, count] : detail.items()) n += count.get<int64_t>();
    }
  }
  return n;
}

// An update stream opened and left idle: no chunk, no WritesDone.
struct IdleUpload {
  explicit IdleUpload(std::unique_ptr<v1::Federation::Stub> s) : stub(std::move(s)) {
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(60));
    writer = stub->SubmitUpdate(&ctx, &receipt);
  }
  std::unique_ptr<v1::Federation::Stub> stub;
  grpc::ClientContext ctx;
  v1::Receipt receipt;
  std::unique_ptr<grpc::ClientWriter<v1::Chunk>> writer;
};

size_t SpoolFiles(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.is_regular_file() ? 1 : 0;
  return n;
}

TEST_F(EngineTest, EveryBadUpdateIsRefusedLoggedAndTheRoundGoesOn) {
  Start({{"rounds", 2}, {"min_sites", 1}, {"join_timeout_s", 1}, {"round_deadline_s", 120},
         {"max_update_norm", 10}});
  ManualSite site(SiteStub("site-1"));
  ASSERT_TRUE(site.join_status().ok()) << site.join_status().error_message();
  const TensorSchema schema = SmallSchema();
  auto init_value = [](uint64_t i) { return fedsim::SyntheticValue(1, i); };
  v1::Receipt receipt;

  // Round 0: the initial model, and its evaluation.
  v1::RoundTask init = site.Next();
  ASSERT_EQ(init.kind(), v1::RoundTask::INIT);
  v1::UpdateMeta init_meta = MetaFor(init);
  init_meta.set_full_weights(true);
  ASSERT_TRUE(fedsim::Upload(site.stub(), init_meta, fedsim::SyntheticModel(schema, init_value), &receipt).ok());
  {
    // Reports are held to the study's shape, not to the first one that
    // came: a report shaped otherwise is refused and fixes nothing.
    const v1::RoundTask eval = site.Next();
    auto submit = [&](int bins, auto change) {
      v1::AuditReport report = fedsim::TrivialAuditReport("val", bins);
      report.set_study_id(kStudy);
      report.set_round(eval.round());
      report.set_task_id(eval.task_id());
      change(report);
      grpc::ClientContext ctx;
      return site.stub()->SubmitAudit(&ctx, report, &receipt);
    };
    ExpectRefused(submit(10, [](auto&) {}), {"report bins", grpc::StatusCode::INVALID_ARGUMENT,
                                             "10 score bins; the study has 200"});
    ExpectRefused(submit(200, [](auto& r) { r.add_features("ehr_static/age"); }),
                  {"report features", grpc::StatusCode::INVALID_ARGUMENT,
                   "1 audit features, not the 0 this site declared at Join"});
    ExpectRefused(submit(200,
                         [](auto& r) {
                           v1::GroupStats* g = r.add_groups();
                           g->set_column("zip code");
                           g->set_value("12345");
                           for (int i = 0; i < 200; ++i) {
                             g->add_pos_hist(0);
                             g->add_neg_hist(0);
                           }
                           for (size_t i = 0; i < ModalityNames().size(); ++i) g->add_beta_sum(0);
                           for (int i = 0; i < CalibrationBins(200); ++i) g->add_calib_sum(0);
                         }),
                  {"report column", grpc::StatusCode::INVALID_ARGUMENT,
                   "which this evaluation does not audit"});
    site.Evaluate(eval);
  }

  // Round 1: everything that must be refused, then the real update.
  const v1::RoundTask train = site.Next();
  ASSERT_EQ(train.kind(), v1::RoundTask::TRAIN);
  ASSERT_EQ(train.round(), 1);
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  const fedsim::ValueFn d1 = fedsim::DeltaValues(opts, 1), d2 = fedsim::DeltaValues(opts, 2);
  const v1::UpdateMeta meta = MetaFor(train);
  auto upload = [&](const TensorSchema& s, const fedsim::ValueFn& v, v1::UpdateMeta m) {
    return fedsim::Upload(site.stub(), m, fedsim::SyntheticModel(s, v), &receipt);
  };
  auto with = [&](auto change) {
    v1::UpdateMeta m = meta;
    change(m);
    return m;
  };
  const std::string good = Encode(schema, d1);
  int refusals = 0;
  auto refused = [&](const grpc::Status& s, const Expect& e) {
    ExpectRefused(s, e);
    ++refusals;
  };

  refused(upload(TensorSchema{{{"a", {4, 3}, "f32"}, {"b", {5}, "f32"}}}, d1, meta),
          {"wrong shape", grpc::StatusCode::INVALID_ARGUMENT, "wrong shape or dtype: tensor 0"});
  refused(upload(TensorSchema{{{"a", {3, 4}, "f32"}}}, d1, meta),
          {"missing tensor", grpc::StatusCode::INVALID_ARGUMENT, "wrong shape or dtype"});
  refused(upload(TensorSchema{{{"a", {3, 4}, "f16"}, {"b", {5}, "f32"}}}, d1, meta),
          {"wrong dtype", grpc::StatusCode::INVALID_ARGUMENT, "unsupported dtype 'f16'"});
  refused(upload(schema, [&](uint64_t i) { return i == 7 ? std::nanf("") : d1(i); }, meta),
          {"NaN", grpc::StatusCode::INVALID_ARGUMENT, "update value 7 is NaN"});
  refused(upload(schema,
                 [&](uint64_t i) { return i == 3 ? std::numeric_limits<float>::infinity() : d1(i); },
                 meta),
          {"Inf", grpc::StatusCode::INVALID_ARGUMENT, "update value 3 is Inf"});
  refused(upload(schema, [](uint64_t) { return 100.0f; }, meta),
          {"norm bound", grpc::StatusCode::INVALID_ARGUMENT, "max_update_norm = 10"});
  refused(upload(schema, d1, with([](auto& m) { m.set_study_id("other"); })),
          {"wrong study", grpc::StatusCode::FAILED_PRECONDITION, "runs study 'engine', not 'other'"});
  refused(upload(schema, d1, with([](auto& m) { m.set_round(5); })),
          {"wrong round", grpc::StatusCode::FAILED_PRECONDITION, "round 1 is open"});
  refused(upload(schema, d1, with([](auto& m) { m.set_task_id("forged"); })),
          {"wrong task", grpc::StatusCode::FAILED_PRECONDITION, "task 'forged' is not open"});
  refused(upload(schema, d1, with([](auto& m) { m.set_held(true); })),
          {"held mark", grpc::StatusCode::INVALID_ARGUMENT, "an update marked held"});
  refused(upload(schema, d1, with([](auto& m) { m.set_num_examples(0); })),
          {"no examples", grpc::StatusCode::INVALID_ARGUMENT, "num_examples must be >= 1"});
  refused(upload(schema, d1,
                 with([](auto& m) { m.set_num_examples(std::numeric_limits<int64_t>::max()); })),
          {"more examples than declared", grpc::StatusCode::INVALID_ARGUMENT,
           "is more than the 100 training patients site site-1 declared when it joined"});
  {  // chunk out of order
    auto chunks = Chunks(good, meta, 16);
    std::swap(chunks[1], chunks[2]);
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"chunk order", grpc::StatusCode::INVALID_ARGUMENT, "chunk out of order: got 2"});
  }
  {  // a chunk's checksum
    auto chunks = Chunks(good, meta, 16);
    chunks[2].set_sha256(Sha256("something else"));
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"chunk checksum", grpc::StatusCode::DATA_LOSS, "chunk 2 checksum mismatch"});
  }
  {  // the whole payload's checksum
    v1::UpdateMeta m = meta;
    auto chunks = Chunks(good, m, 16);
    chunks[0].mutable_meta()->set_total_sha256(Sha256("something else"));
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"payload checksum", grpc::StatusCode::DATA_LOSS, "payload checksum mismatch"});
  }
  {  // a payload shorter than announced
    auto chunks = Chunks(good, meta, 16);
    chunks.pop_back();
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"short payload", grpc::StatusCode::DATA_LOSS, "payload short"});
  }
  {  // an empty chunk (a stream of them cost the coordinator a read each)
    auto chunks = Chunks(good, meta, 16);
    chunks[1].set_data("");
    chunks[1].set_sha256(Sha256(""));
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"empty chunk", grpc::StatusCode::INVALID_ARGUMENT, "chunk 1 is empty"});
  }
  {  // first chunk without metadata
    auto chunks = Chunks(good, meta, 16);
    chunks[0].clear_meta();
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"no metadata", grpc::StatusCode::INVALID_ARGUMENT, "must carry the update's metadata"});
  }
  {  // a chunk over 1 MiB that still fits a gRPC message: refused by Attune
    const std::string big(kMaxChunkBytes + 16, 'x');
    refused(fedsim::SendChunks(site.stub(), Chunks(big, meta, big.size()), &receipt),
            {"oversize chunk", grpc::StatusCode::INVALID_ARGUMENT, "bytes exceeds 1048576"});
  }
  {  // a message over gRPC's limit: refused by the transport
    const std::string huge(kMaxMessageBytes + 16, 'x');
    ExpectRefused(fedsim::SendChunks(site.stub(), Chunks(huge, meta, huge.size()), &receipt),
                  {"oversize message", grpc::StatusCode::RESOURCE_EXHAUSTED, ""});
  }
  {  // announced size over the limit
    auto chunks = Chunks(good, meta, 16);
    chunks[0].mutable_meta()->set_total_bytes(uint64_t{1} << 40);
    refused(fedsim::SendChunks(site.stub(), chunks, &receipt),
            {"announced size", grpc::StatusCode::INVALID_ARGUMENT, "exceeds the limit"});
  }
  {  // an evaluation while the round expects updates
    v1::AuditReport report = fedsim::TrivialAuditReport("val", 200);
    report.set_study_id(kStudy);
    report.set_round(1);
    report.set_task_id(train.task_id());
    grpc::ClientContext ctx;
    refused(site.stub()->SubmitAudit(&ctx, report, &receipt),
            {"evaluation in a train phase", grpc::StatusCode::FAILED_PRECONDITION,
             "expects an update"});
  }
  {  // a Join that declares an impossible number of training patients
    v1::JoinRequest join;
    join.set_study_id(kStudy);
    (*join.mutable_samples())["train"] = -5;
    grpc::ClientContext ctx;
    v1::JoinReply reply;
    refused(SiteStub("site-2")->Join(&ctx, join, &reply),
            {"join samples", grpc::StatusCode::INVALID_ARGUMENT,
             "train samples must be in [0, 1000000000] (got -5)"});
  }
  {  // Join's audit features: the study's model fixes them
    auto join_with = [&](std::vector<std::string> features) {
      v1::JoinRequest join;
      join.set_study_id(kStudy);
      for (auto& f : features) join.add_audit_features(std::move(f));
      grpc::ClientContext ctx;
      v1::JoinReply reply;
      return SiteStub("site-2")->Join(&ctx, join, &reply);
    };
    ModelConfig model;  // the study's: the defaults
    std::vector<std::string> names = AuditFeatureNames(model, {}, {});
    names[9] = "ehr_events/bucket 0";  // the model's #9 is bucket 1
    refused(join_with(names), {"feature layout", grpc::StatusCode::INVALID_ARGUMENT,
                               "audit feature #9 'ehr_events/bucket 0' should be"});
    names = AuditFeatureNames(model, {}, {});
    names.push_back("genomics/one too many");
    refused(join_with(names), {"feature count", grpc::StatusCode::INVALID_ARGUMENT,
                               "JoinRequest.audit_features: more than"});
  }
  {  // a certificate of this study's CA whose CN is not on the roster
    auto ca_key = ReadText(dir_ / "pki/ca/ca.key"), ca_crt = ReadText(dir_ / "pki/ca/ca.crt");
    CertOptions o;
    o.common_name = "site-z";
    auto leaf = IssueCertificate({ca_key, ca_crt}, o);
    ASSERT_TRUE(leaf.ok()) << leaf.status();
    fs::create_directories(dir_ / "rogue");
    std::ofstream(dir_ / "rogue/ca.crt") << ca_crt;
    std::ofstream(dir_ / "rogue/cert.crt") << leaf->cert_pem;
    std::ofstream(dir_ / "rogue/key.pem") << leaf->key_pem;
    auto rogue = Stub(dir_ / "rogue");
    refused(fedsim::Upload(rogue.get(), meta, fedsim::SyntheticModel(schema, d1), &receipt),
            {"unknown site", grpc::StatusCode::PERMISSION_DENIED, "'site-z' is not on the roster"});
    auto op = Stub(dir_ / "pki/operator");
    refused(fedsim::Upload(op.get(), meta, fedsim::SyntheticModel(schema, d1), &receipt),
            {"operator", grpc::StatusCode::PERMISSION_DENIED, "may only read the study's status"});
  }
  // Nothing refused left anything behind.
  EXPECT_EQ(SpoolFiles(dir_ / "state/spool"), 0u);

  // The real update; the same again is idempotent; a different one is refused.
  ASSERT_TRUE(upload(schema, d1, meta).ok());
  grpc::Status again = upload(schema, d1, meta);
  EXPECT_TRUE(again.ok()) << again.error_message();
  EXPECT_EQ(receipt.detail(), "already accepted; not folded in twice");
  refused(upload(schema, d2, meta),
          {"duplicate", grpc::StatusCode::ALREADY_EXISTS, "already submitted a different update"});

  // Round 1 evaluates and commits; round 2 opens. A late round-1 update is refused.
  site.Evaluate(site.Next());
  const v1::RoundTask train2 = site.Next();
  ASSERT_EQ(train2.round(), 2);
  refused(upload(schema, d2, meta),
          {"straggler", grpc::StatusCode::FAILED_PRECONDITION, "round 1 is closed"});
  EXPECT_TRUE(upload(schema, d1, meta).ok()) << "the accepted update again stays idempotent";

  // A site revoked in the study file is refused from then on, without a restart.
  {
    auto site2 = SiteStub("site-2");
    v1::StatusRequest req;
    req.set_study_id(kStudy);
    v1::StudyStatus st;
    grpc::ClientContext before;
    ASSERT_TRUE(site2->Status(&before, req, &st).ok());
    Process revoke({ATTUNE_TOOL_BIN, "provision", "revoke", "--dir", dir_ / "pki", "--site", "site-2"},
                   dir_ / "revoke.log");
    ASSERT_EQ(revoke.Wait(seconds(30)), 0) << revoke.Log();
    grpc::ClientContext after;
    refused(site2->Status(&after, req, &st),
            {"revoked", grpc::StatusCode::PERMISSION_DENIED, "'site-2' was revoked"});
  }

  // Round 2 and the end: the model is exactly initial + d1 + d2.
  ASSERT_TRUE(upload(schema, d2, MetaFor(train2)).ok());
  site.Evaluate(site.Next());
  EXPECT_EQ(site.Next().kind(), v1::RoundTask::FINISH);
  ASSERT_EQ(coordinator_->Wait(seconds(60)), 0) << coordinator_->Log();
  auto final_model = DecodeModel(ReadText(dir_ / "out/model.atnm"));
  ASSERT_TRUE(final_model.ok()) << final_model.status();
  ASSERT_EQ(final_model->schema, schema);
  for (uint64_t i = 0; i < final_model->values.size(); ++i) {
    EXPECT_EQ(final_model->values[i], (init_value(i) + d1(i)) + d2(i)) << "value " << i;
  }

  // Every refusal is in the hash-chained audit log, and the chain verifies.
  Process verify({ATTUNE_TOOL_BIN, "log", "verify", "--data-dir", dir_ / "state"},
                 dir_ / "verify.log");
  EXPECT_EQ(verify.Wait(seconds(30)), 0) << verify.Log();
  EXPECT_NE(verify.Log().find("hash chain intact"), std::string::npos) << verify.Log();
  Process show({ATTUNE_TOOL_BIN, "log", "show", "--data-dir", dir_ / "state", "--last", "0"},
               dir_ / "show.log");
  ASSERT_EQ(show.Wait(seconds(30)), 0) << show.Log();
  const std::string log = show.Log();
  // Every refusal is accounted for: logged, or counted in a later entry
  // (a caller's refusals past the rate limit, RefusalLimiter).
  EXPECT_GE(RefusalsAccountedFor(log), refusals) << log;
  EXPECT_NE(log.find("site_revoked"), std::string::npos) << log;
  EXPECT_NE(log.find("round_committed"), std::string::npos) << log;
}

TEST_F(EngineTest, AOneGigabyteModelMakesAFullRoundTrip) {
  constexpr uint64_t kSeed = 11;  // the study's train.seed: initial model and training
  Start({{"rounds", 1}, {"min_sites", 1}, {"join_timeout_s", 1}, {"round_deadline_s", 600},
         {"max_update_norm", 1e6}, {"train", {{"seed", kSeed}}}});
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  const int64_t numel = (int64_t{1} << 30) / 4;  // 1 GiB of float32
  opts.init_schema = TensorSchema{{{"w", {numel}, "f32"}}};
  FakeSites sites;
  RunFakeSites(&sites, {"site-1"}, opts);
  auto code = coordinator_->Wait(seconds(900));
  if (!code.has_value()) sites.sites[0]->Stop();
  sites.Join();
  ASSERT_EQ(code, 0) << coordinator_->Log();
  ASSERT_TRUE(sites.results[0].ok()) << sites.results[0];
  EXPECT_EQ(sites.sites[0]->stats().updates_sent, 2);  // the initial model and one update

  // The final model is the initial one plus the update, every one of its values.
  const std::string blob = ReadText(dir_ / "out/model.atnm");
  auto view = ViewModel(blob);
  ASSERT_TRUE(view.ok()) << view.status();
  ASSERT_EQ(view->values.size(), static_cast<size_t>(numel));
  // Site-1 (RunFakeSites' seed 100) trained round 1 with seed kSeed + 1.
  opts.seed = 100;
  const fedsim::ValueFn delta = fedsim::DeltaValues(opts, kSeed + 1);
  int64_t wrong = 0;
  for (int64_t i = 0; i < numel; ++i) {
    wrong += view->values[i] != fedsim::SyntheticValue(kSeed, i) + delta(i);
  }
  EXPECT_EQ(wrong, 0);
}

// A round's candidate, once evaluated, is the next round's global model: a
// site that evaluated it trains on the copy it holds, and the coordinator
// sends only the metadata. Each site fetches one model per round (its
// evaluation), not two, and the study's result is what it was.
TEST_F(EngineTest, AModelTheSiteEvaluatedIsNotFetchedAgainToTrainOn) {
  constexpr int kRounds = 3;
  Start({{"rounds", kRounds}, {"min_sites", 2}, {"round_deadline_s", 120}}, "site-1,site-2");
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  opts.init_schema = TensorSchema{{{"w", {5000}, "f32"}}};
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2"}, opts);
  auto code = coordinator_->Wait(seconds(120));
  if (!code.has_value()) {
    for (auto& s : sites.sites) s->Stop();
  }
  sites.Join();
  ASSERT_EQ(code, 0) << coordinator_->Log();
  const int64_t model_bytes = static_cast<int64_t>(EncodedModelSize(
      FlatModel{opts.init_schema, std::vector<float>(5000)}));
  for (size_t i = 0; i < sites.sites.size(); ++i) {
    ASSERT_TRUE(sites.results[i].ok()) << sites.results[i];
    const site::EngineStats st = sites.sites[i]->stats();
    // TRAIN of rounds 1..3 on the model evaluated the round before; the
    // evaluations of rounds 0..3 fetched (round 0's by the site that did
    // not make the initial model, and by the one that did: it holds no
    // fetched copy of it).
    EXPECT_EQ(st.models_held, kRounds) << i;
    EXPECT_EQ(st.bytes_down, (kRounds + 1) * model_bytes) << i;
  }
  const std::string summary = ReadText(dir_ / "out/summary.json");
  EXPECT_EQ(json::parse(summary)["history"].size(), static_cast<size_t>(kRounds + 1)) << summary;
}

TEST_F(EngineTest, ASiteThatStopsHeartbeatingIsNotWaitedFor) {
  Start({{"rounds", 1}, {"min_sites", 1}, {"join_timeout_s", 1}, {"round_deadline_s", 120},
         {"heartbeat_timeout_s", 1.5}});
  ManualSite one(SiteStub("site-1")), two(SiteStub("site-2"));
  ASSERT_TRUE(one.join_status().ok() && two.join_status().ok());
  Heartbeater beat_one(one.stub(), "training");
  // Site-2's stage is long and not ASCII: the coordinator cuts it at a
  // character boundary (a cut inside one made `attune status --json` fail).
  std::string long_stage = "a";
  for (int i = 0; i < 40; ++i) long_stage += "\xc3\xa9";  // é
  auto beat_two = std::make_unique<Heartbeater>(two.stub(), long_stage);
  const TensorSchema schema = SmallSchema();
  v1::Receipt receipt;
  v1::RoundTask init = one.Next();
  ASSERT_EQ(init.kind(), v1::RoundTask::INIT);
  v1::UpdateMeta m = MetaFor(init);
  m.set_full_weights(true);
  const auto init_value = [](uint64_t i) { return fedsim::SyntheticValue(1, i); };
  ASSERT_TRUE(fedsim::Upload(one.stub(), m, fedsim::SyntheticModel(schema, init_value), &receipt).ok());
  one.Evaluate(one.Next());
  two.Evaluate(two.Next());
  // Round 1: both sites are asked to train; site-2 stays connected but falls silent.
  const v1::RoundTask train_one = one.Next(), train_two = two.Next();
  ASSERT_EQ(train_two.kind(), v1::RoundTask::TRAIN);
  beat_two.reset();

  // The operator sees both sites and site-1's progress.
  Process status({ATTUNE_TOOL_BIN, "status", "--study-dir", dir_ / "pki", "--coordinator", Address(),
                  "--json"},
                 dir_ / "status.log");
  ASSERT_EQ(status.Wait(seconds(30)), 0) << status.Log();
  json st = json::parse(status.Log(), nullptr, false);
  ASSERT_FALSE(st.is_discarded()) << status.Log();
  EXPECT_EQ(st["study_id"], kStudy);
  EXPECT_EQ(st["committed_round"], 0);
  ASSERT_EQ(st["rounds"].size(), 1u);
  bool saw_one = false;
  for (const auto& s : st["sites"]) {
    if (s["site"] == "site-2") {
      const std::string progress = s["progress"];
      EXPECT_EQ(progress.rfind("a\xc3\xa9\xc3\xa9", 0), 0u) << progress;
      EXPECT_LE(progress.size(), 32 + std::string(" round 1").size()) << progress;
    }
    if (s["site"] != "site-1") continue;
    saw_one = true;
    EXPECT_TRUE(s["alive"].get<bool>());
    EXPECT_EQ(s["progress"], "training round 1: epoch 1/2, batch 3/9");
    EXPECT_EQ(s["train_samples"], 100);
  }
  EXPECT_TRUE(saw_one) << st.dump(2);
  Process table({ATTUNE_TOOL_BIN, "status", "--study-dir", dir_ / "pki", "--coordinator", Address()},
                dir_ / "status-table.log");
  ASSERT_EQ(table.Wait(seconds(30)), 0) << table.Log();
  EXPECT_NE(table.Log().find("site-3"), std::string::npos) << table.Log();

  fedsim::FakeSiteOptions opts;
  ASSERT_TRUE(fedsim::Upload(one.stub(), MetaFor(train_one),
                             fedsim::SyntheticModel(schema, fedsim::DeltaValues(opts, 1)), &receipt)
                  .ok());
  // The round closes without site-2 once its heartbeats stop, and evaluates with site-1.
  one.Evaluate(one.Next());
  EXPECT_EQ(one.Next().kind(), v1::RoundTask::FINISH);
  ASSERT_EQ(coordinator_->Wait(seconds(60)), 0) << coordinator_->Log();
  EXPECT_NE(coordinator_->Log().find("site site-2 is gone"), std::string::npos)
      << coordinator_->Log();
  EXPECT_EQ(Summary()["history"][1]["sites_reported"], 1);
}

TEST_F(EngineTest, AFractionOfSitesTrainsEachRound) {
  Start({{"rounds", 3}, {"min_sites", 1}, {"sites_per_round", 0.5}, {"join_timeout_s", 30},
         {"round_deadline_s", 120}},
        "site-1,site-2,site-3,site-4");
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  opts.init_schema = SmallSchema();
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2", "site-3", "site-4"}, opts);
  ASSERT_EQ(coordinator_->Wait(seconds(120)), 0) << coordinator_->Log();
  sites.Join();
  for (const auto& r : sites.results) EXPECT_TRUE(r.ok()) << r;
  json summary = Summary();
  std::set<std::string> chosen;
  for (int r = 1; r <= 3; ++r) {
    const json& h = summary["history"][r];
    EXPECT_EQ(h["sites_selected"], 2) << h.dump(2);
    EXPECT_EQ(h["sites_reported"], 2) << h.dump(2);
    chosen.insert(h["sites"].dump());
  }
  EXPECT_GT(chosen.size(), 1u) << "every round chose the same sites";
}

// straggler_policy "quorum": a training phase closes at min_sites reports;
// a site that reports later is told it is late and its update never used.
TEST_F(EngineTest, UnderTheQuorumPolicyLateUpdatesAreRefused) {
  Start({{"rounds", 2}, {"min_sites", 1}, {"straggler_policy", "quorum"}, {"join_timeout_s", 30},
         {"round_deadline_s", 120}},
        "site-1,site-2");
  ManualSite fast(SiteStub("site-1")), slow(SiteStub("site-2"));
  ASSERT_TRUE(fast.join_status().ok() && slow.join_status().ok());
  Heartbeater beat_fast(fast.stub(), "idle"), beat_slow(slow.stub(), "idle");
  const TensorSchema schema = SmallSchema();
  v1::Receipt receipt;
  v1::RoundTask init = fast.Next();
  v1::UpdateMeta m = MetaFor(init);
  m.set_full_weights(true);
  const auto init_value = [](uint64_t i) { return fedsim::SyntheticValue(1, i); };
  ASSERT_TRUE(fedsim::Upload(fast.stub(), m, fedsim::SyntheticModel(schema, init_value), &receipt).ok());
  fast.Evaluate(fast.Next());
  slow.Evaluate(slow.Next());
  const v1::RoundTask t_fast = fast.Next(), t_slow = slow.Next();
  ASSERT_EQ(t_slow.kind(), v1::RoundTask::TRAIN);
  fedsim::FakeSiteOptions opts;
  ASSERT_TRUE(fedsim::Upload(fast.stub(), MetaFor(t_fast),
                             fedsim::SyntheticModel(schema, fedsim::DeltaValues(opts, 1)), &receipt)
                  .ok());
  // The phase closed with site-1's update: the next task both get is EVALUATE.
  fast.Evaluate(fast.Next());
  const v1::RoundTask eval_slow = slow.Next();
  ASSERT_EQ(eval_slow.kind(), v1::RoundTask::EVALUATE);
  ExpectRefused(fedsim::Upload(slow.stub(), MetaFor(t_slow),
                               fedsim::SyntheticModel(schema, fedsim::DeltaValues(opts, 7)),
                               &receipt),
                {"straggler", grpc::StatusCode::FAILED_PRECONDITION, "(a straggler)"});
  slow.Evaluate(eval_slow);
  EXPECT_EQ(fast.Next().round(), 2);
  coordinator_->Kill(SIGTERM);
  EXPECT_TRUE(coordinator_->Wait(seconds(30)).has_value());
  json summary = Summary();
  EXPECT_EQ(summary["history"][1]["sites_reported"], 1) << summary.dump(2);
  EXPECT_EQ(summary["history"][1]["sites_selected"], 2) << summary.dump(2);
}

TEST_F(EngineTest, ASiteAddedWhileRunningIsAdmittedWithoutARestart) {
  Start({{"rounds", 1}, {"min_sites", 1}, {"join_timeout_s", 60}, {"round_deadline_s", 120}},
        "site-1");
  // site-1 never joins here, so the coordinator waits for sites meanwhile.
  Process add({ATTUNE_TOOL_BIN, "provision", "add-site", "--dir", dir_ / "pki", "--site", "site-9"},
              dir_ / "add.log");
  ASSERT_EQ(add.Wait(seconds(30)), 0) << add.Log();
  auto stub = SiteStub("site-9");
  v1::StatusRequest req;
  req.set_study_id(kStudy);
  v1::StudyStatus st;
  grpc::ClientContext ctx;
  grpc::Status s = stub->Status(&ctx, req, &st);
  EXPECT_TRUE(s.ok()) << s.error_message();
  bool listed = false;
  for (const auto& site : st.sites()) listed = listed || site.site_id() == "site-9";
  EXPECT_TRUE(listed);
  // A site sees its own row only (the operator sees every site).
  EXPECT_EQ(st.sites_size(), 1) << st.DebugString();
  coordinator_->Kill(SIGTERM);
  EXPECT_TRUE(coordinator_->Wait(seconds(30)).has_value());
}

// Transfer slots (max_transfers, 4) go only to authorised sites, one at a
// time each: idle upload streams opened by the operator, a certificate off
// the roster or a second stream of one site are refused at once, and hold
// nothing, so a site's FetchModel is served while they stay open.
TEST_F(EngineTest, IdleStreamsOfUnauthorisedCallersHoldNoTransferSlot) {
  Start({{"rounds", 1}, {"min_sites", 1}, {"join_timeout_s", 1}, {"round_deadline_s", 120}},
        "site-1,site-2");
  ManualSite one(SiteStub("site-1"));
  ASSERT_TRUE(one.join_status().ok());
  Heartbeater beat(one.stub(), "idle");
  const v1::RoundTask init = one.Next();
  v1::UpdateMeta m = MetaFor(init);
  m.set_full_weights(true);
  v1::Receipt receipt;
  ASSERT_TRUE(fedsim::Upload(one.stub(), m,
                             fedsim::SyntheticModel(SmallSchema(),
                                                    [](uint64_t i) { return fedsim::SyntheticValue(1, i); }),
                             &receipt)
                  .ok());
  // Streams opened and left idle (no chunk, no WritesDone).
  std::vector<std::unique_ptr<IdleUpload>> idle;
  auto open = [&](std::unique_ptr<v1::Federation::Stub> stub) {
    idle.push_back(std::make_unique<IdleUpload>(std::move(stub)));
  };
  for (int i = 0; i < 4; ++i) open(Stub(dir_ / "pki/operator"));
  open(SiteStub("site-2"));  // site-2's first stream: a slot, idle
  open(SiteStub("site-2"));  // and a second: refused
  // The operator's and site-2's second stream end at once, refused.
  for (size_t i : {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{5}}) {
    const grpc::Status s = idle[i]->writer->Finish();
    EXPECT_TRUE(s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
                s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
        << i << ": " << s.error_message();
    if (i == 5) {
      EXPECT_NE(s.error_message().find("already has a model or update transfer open"),
                std::string::npos)
          << s.error_message();
    }
  }
  // Site-1 fetches the initial model while site-2's idle stream holds one slot.
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(20));
  v1::ModelRef ref;
  ref.set_study_id(kStudy);
  ref.set_version(0);
  auto reader = one.stub()->FetchModel(&ctx, ref);
  v1::Chunk chunk;
  int chunks = 0;
  while (reader->Read(&chunk)) ++chunks;
  const grpc::Status fetched = reader->Finish();
  EXPECT_TRUE(fetched.ok()) << fetched.error_message();
  EXPECT_GE(chunks, 1);
  idle[4]->ctx.TryCancel();
  coordinator_->Kill(SIGTERM);
  EXPECT_TRUE(coordinator_->Wait(seconds(30)).has_value());
}

// A site started before its coordinator (a hospital's worker is often up
// first) joins as soon as the coordinator listens: between attempts the
// engine watches the channel, which reconnects it (gRPC alone would poll an
// idle channel only every few seconds, and the sites gave up first).
TEST_F(EngineTest, SitesStartedBeforeTheCoordinatorJoinOnceItListens) {
  Provision({{"rounds", 1}, {"min_sites", 2}, {"join_timeout_s", 30}, {"round_deadline_s", 60}},
            "site-1,site-2");
  port_ = FreeLoopbackPort();
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  opts.init_schema = SmallSchema();
  opts.reconnect_timeout = std::chrono::seconds(8);
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2"}, opts);
  // The sites' first attempts are refused; then the coordinator comes up.
  ASSERT_TRUE(WaitUntil(
      dir_ / "pki/sites/site-2", [&] { return fs::exists(dir_ / "pki/sites/site-2/state"); },
      seconds(30)));
  StartCoordinator("state", "out", Address());
  ASSERT_EQ(coordinator_->Wait(seconds(60)), 0) << coordinator_->Log();
  sites.Join();
  for (const auto& r : sites.results) EXPECT_TRUE(r.ok()) << r;
  EXPECT_EQ(Summary()["history"][1]["sites_reported"], 2);
}

// The coordinator's peak resident memory (VmHWM), in MiB.
double PeakRssMiB(pid_t pid) {
  std::istringstream in(ReadText("/proc/" + std::to_string(pid) + "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return -1;
}

// Requests are measured and counted from their bytes before anything is
// built from them: a Join naming 8 M features, an evaluation report of
// 1.4 M tiny cells or of 30 MiB, and fields the protocol does not define,
// are each refused with a clear status, the coordinator's peak memory
// hardly moves, and the study then runs to its end with honest sites.
TEST_F(EngineTest, RequestsAreMeasuredAndCountedBeforeTheyAreParsed) {
  Start({{"rounds", 1}, {"min_sites", 2}, {"join_timeout_s", 30}, {"round_deadline_s", 60},
         {"audit", {{"columns", json::array()}}}},
        "site-1,site-2,site-3");
  auto bad = SiteStub("site-3");
  const double before = PeakRssMiB(coordinator_->pid());
  ASSERT_GT(before, 0);
  {
    v1::JoinRequest join;
    join.set_study_id(kStudy);
    for (int i = 0; i < 8'000'000; ++i) join.add_audit_features("x");
    grpc::ClientContext ctx;
    v1::JoinReply reply;
    ExpectRefused(bad->Join(&ctx, join, &reply),
                  {"8 M features", grpc::StatusCode::RESOURCE_EXHAUSTED, "a Join message of"});
  }
  auto audit = [&](const v1::AuditReport& report) {
    grpc::ClientContext ctx;
    v1::Receipt receipt;
    return bad->SubmitAudit(&ctx, report, &receipt);
  };
  {
    v1::AuditReport report;
    report.set_study_id(kStudy);
    for (int i = 0; i < 1'400'000; ++i) report.add_groups();
    ExpectRefused(audit(report), {"1.4 M cells", grpc::StatusCode::INVALID_ARGUMENT,
                                  "AuditReport.groups: more than 0"});
  }
  {
    v1::AuditReport report;
    report.set_study_id(kStudy);
    v1::GroupStats* g = report.add_groups();
    for (int i = 0; i < (30 << 20) / 8; ++i) g->add_attention_sum(1.0);
    ExpectRefused(audit(report), {"30 MiB report", grpc::StatusCode::INVALID_ARGUMENT,
                                  "more than"});
  }
  {
    v1::HeartbeatRequest req;
    req.set_study_id(kStudy);
    req.GetReflection()->MutableUnknownFields(&req)->AddVarint(99, 1);
    grpc::ClientContext ctx;
    v1::HeartbeatReply reply;
    ExpectRefused(bad->Heartbeat(&ctx, req, &reply),
                  {"unknown field", grpc::StatusCode::INVALID_ARGUMENT,
                   "field 99 is not a field of HeartbeatRequest"});
  }
  const double after = PeakRssMiB(coordinator_->pid());
  // Before these bounds the same calls raised the peak by 256-642 MiB.
  EXPECT_LT(after - before, 160) << before << " MiB before, " << after << " MiB after";
  std::printf("coordinator peak RSS: %.0f MiB before the calls, %.0f MiB after\n", before, after);

  // Still serving: the study runs to its end (site-3 too, honest now).
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2", "site-3"}, SmallSites());
  ExpectStudyEnds(&sites);
  EXPECT_EQ(Summary()["history"][1]["sites_reported"], 3);
}

// An authorised site that opens a stream and then sends nothing holds its
// slot only until the idle limit: four such streams (every transfer slot)
// are cut off, and the honest sites' fetches and
// uploads, which waited for a slot, go through.
TEST_F(EngineTest, AStalledStreamIsCutOffAtTheIdleLimit) {
  Provision({{"rounds", 1}, {"min_sites", 2}, {"join_timeout_s", 3}, {"round_deadline_s", 60},
             {"audit", {{"columns", json::array()}}}},
            "site-1,site-2,site-3,site-4,site-5,site-6");
  StartCoordinatorWith({"--idle-limit", "1", "--max-transfers", "4"});
  std::vector<std::unique_ptr<IdleUpload>> idle;
  for (const char* name : {"site-3", "site-4", "site-5", "site-6"}) {
    idle.push_back(std::make_unique<IdleUpload>(SiteStub(name)));
  }
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2"}, SmallSites());
  const auto start = std::chrono::steady_clock::now();
  // The coordinator cancels the call (gRPC can end a blocked read no
  // other way): the caller sees CANCELLED, the log says why.
  for (auto& s : idle) {
    const grpc::Status st = s->writer->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::CANCELLED) << st.error_message();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(30));
  ExpectStudyEnds(&sites);
  EXPECT_NE(coordinator_->Log().find("nothing was sent or taken for"), std::string::npos)
      << coordinator_->Log();
  EXPECT_EQ(Summary()["history"][1]["sites_reported"], 2);
}

// A caller refused again and again fills neither the log nor the disk:
// of 400 refusals in a burst, at most the limiter's burst and rate are
// entries, and every one is accounted for when the coordinator stops.
TEST_F(EngineTest, RefusalsAreLoggedAtABoundedRate) {
  Start({{"rounds", 1}, {"min_sites", 2}, {"join_timeout_s", 30}, {"round_deadline_s", 60},
         {"audit", {{"columns", json::array()}}}},
        "site-1,site-2,site-3");
  auto bad = SiteStub("site-3");
  const auto start = std::chrono::steady_clock::now();
  constexpr int kCalls = 400;
  for (int i = 0; i < kCalls; ++i) {
    v1::HeartbeatRequest req;
    req.set_study_id("another study " + std::string(3000, 'x'));
    grpc::ClientContext ctx;
    v1::HeartbeatReply reply;
    ASSERT_FALSE(bad->Heartbeat(&ctx, req, &reply).ok());
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2", "site-3"}, SmallSites());
  ExpectStudyEnds(&sites);
  Process show({ATTUNE_TOOL_BIN, "log", "show", "--data-dir", dir_ / "state", "--last", "0"},
               dir_ / "show.log");
  ASSERT_EQ(show.Wait(seconds(30)), 0) << show.Log();
  const std::string log = show.Log();
  int entries = 0;
  for (size_t at = log.find(" refused "); at != std::string::npos; at = log.find(" refused ", at + 1)) {
    ++entries;
  }
  // RefusalLimiter's defaults: a burst of 20, then one a second.
  EXPECT_LE(entries, 20 + static_cast<int>(elapsed) + 2) << log;
  EXPECT_GE(entries, 20);
  EXPECT_EQ(RefusalsAccountedFor(log), kCalls) << log;
  EXPECT_LT(log.size(), 200u << 10);
}

// A round that misses its quorum is tried again, and the next attempt
// completes: its tasks have new ids, so nothing of the failed attempt (an
// accepted update, a closed task, a secure step) is taken for it. Site-3's
// first local training fails, so attempt 1 of round 1 has 2 of the 3
// updates it needs; plain and with secure aggregation.
class RetryTest : public EngineTest, public ::testing::WithParamInterface<bool> {};

TEST_P(RetryTest, ARoundThatMissesItsQuorumOnceCompletesOnItsNextAttempt) {
  const bool secure = GetParam();
  Start({{"rounds", 2}, {"min_sites", 3}, {"join_timeout_s", 30}, {"round_deadline_s", 3},
         {"secure_aggregation", secure},
         {"audit", {{"columns", json::array()}}}},  // fake sites report no subgroups
        "site-1,site-2,site-3");
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  opts.init_schema = SmallSchema();
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2"}, opts);
  opts.fail_trainings = 1;
  RunFakeSites(&sites, {"site-3"}, opts);
  ASSERT_EQ(coordinator_->Wait(seconds(120)), 0) << coordinator_->Log();
  sites.Join();
  for (const auto& r : sites.results) EXPECT_TRUE(r.ok()) << r;
  const std::string log = coordinator_->Log();
  EXPECT_NE(log.find("round 1 failed (attempt 1 of 3)"), std::string::npos) << log;
  EXPECT_EQ(log.find("round 1 failed (attempt 2"), std::string::npos) << log;
  json summary = Summary();
  ASSERT_EQ(summary["rounds"], 2) << summary.dump(2);
  EXPECT_EQ(summary["history"][1]["sites_reported"], 3) << summary.dump(2);
  EXPECT_EQ(summary["history"][2]["sites_reported"], 3) << summary.dump(2);
  // The update of every site counted once in round 1, site-3's too.
  for (const auto& s : sites.sites) EXPECT_EQ(s->stats().updates_late, 0);
}

INSTANTIATE_TEST_SUITE_P(PlainAndSecure, RetryTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Secure" : "Plain"; });

// Adaptive strategies keep server state (FedAdam's m and v) across rounds;
// it is committed with each round, so a coordinator SIGKILLed mid-round
// resumes with it and ends with the bitwise-same model.
TEST_F(EngineTest, ServerOptimizerStateSurvivesACoordinatorCrash) {
  constexpr int kRounds = 6;
  Start({{"rounds", kRounds}, {"min_sites", 2}, {"join_timeout_s", 30}, {"round_deadline_s", 120},
         {"strategy", {{"name", "fedadam"}, {"server_learning_rate", 0.05}}}},
        "site-1,site-2");
  fedsim::FakeSiteOptions opts;
  opts.study_id = kStudy;
  opts.init_schema = TensorSchema{{{"w", {200000}, "f32"}}};  // rounds of some milliseconds
  {
    FakeSites sites;
    RunFakeSites(&sites, {"site-1", "site-2"}, opts);
    ASSERT_EQ(coordinator_->Wait(seconds(120)), 0) << coordinator_->Log();
    sites.Join();
    for (const auto& r : sites.results) EXPECT_TRUE(r.ok()) << r;
  }
  // Again on a fresh data directory, killed after round 2's first update.
  StartCoordinator("state-2", "out-2", "127.0.0.1:0");
  const std::string listen = Address();
  FakeSites sites;
  RunFakeSites(&sites, {"site-1", "site-2"}, opts);
  ASSERT_TRUE(WaitUntil(
      dir_.path(),
      [&] { return coordinator_->Log().find("round 2: train from") != std::string::npos; },
      seconds(60)))
      << coordinator_->Log();
  coordinator_->Kill(SIGKILL);
  ASSERT_TRUE(coordinator_->Wait(seconds(10)).has_value());
  StartCoordinator("state-2", "out-2", listen);
  const std::optional<int> rc = coordinator_->Wait(seconds(120));
  if (!rc) coordinator_->Kill(SIGKILL);  // the sites' sessions then end
  sites.Join();
  for (const auto& r : sites.results) EXPECT_TRUE(r.ok()) << r;  // why a site went, if one did
  ASSERT_EQ(rc, 0) << coordinator_->Log();
  // Killed mid-study: the restart resumed before the last round.
  const std::string resumed = "resuming study 'engine' after committed round ";
  const size_t at = coordinator_->Log().find(resumed);
  ASSERT_NE(at, std::string::npos) << coordinator_->Log();
  EXPECT_LT(std::atoi(coordinator_->Log().c_str() + at + resumed.size()), kRounds);
  const std::string reference = ReadText(dir_ / "out/model.atnm");
  ASSERT_FALSE(reference.empty());
  EXPECT_TRUE(reference == ReadText(dir_ / "out-2/model.atnm")) << "the final models differ";
  // And FedAdam really moved the model (the state is not a no-op).
  EXPECT_EQ(Summary("out-2")["strategy"], "fedadam");
}

}  // namespace
}  // namespace attune::testing
