// The round driver in one process, on a FakeClock: no gRPC, no processes,
// no waiting for real deadlines. Each site is a thread calling the driver
// as the service would (Join, Subscribe, NextTask, BeginUpdate/FinishUpdate,
// SubmitEval, and in a secure study the SecAgg steps, through the sites'
// real SecureSite with certificates from attune provision); the test moves
// time on, with heartbeats from the sites that are alive, and checks the
// round records in a real StateStore.
#include "attune/coordinator/round_driver.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attune/common/provision.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"
#include "fedsim/fake_site.h"
#include "nlohmann/json.hpp"
#include "support/temp_dir.h"

namespace attune::coordinator {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

const TensorSchema kSchema{{{"w", {8}, "f32"}}};

StatusOr<StudyConfig> Study(int rounds, int min_sites) {
  return ParseStudyConfig(json{{"study_id", "fake-clock"},
                               {"rounds", rounds},
                               {"min_sites", min_sites},
                               {"roster", {"a", "b", "c"}},
                               {"join_timeout_s", 60},
                               {"round_deadline_s", 600},
                               {"heartbeat_timeout_s", 30}}
                              .dump());
}

// What the sites saw, for the test to wait on (real time, bounded).
class Log {
 public:
  // A task as "<task id> <kind>": the steps of a secure aggregation share
  // their TRAIN or EVALUATE task's id.
  void Add(const std::string& site, const Task& t) {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_[site].push_back(absl::StrCat(t.task_id, " ", KindName(t.kind)));
    cv_.notify_all();
  }
  // Waits up to 30 s (real) until `ready` holds over the log.
  bool WaitFor(const std::function<bool(const std::map<std::string, std::vector<std::string>>&)>& ready) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, 30s, [&] { return ready(tasks_); });
  }
  std::vector<std::string> Of(const std::string& site) {
    std::lock_guard<std::mutex> lock(mu_);
    return tasks_[site];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<std::string>> tasks_;
};

using TaskLog = std::map<std::string, std::vector<std::string>>;

// A condition on the log: `site` was sent a task whose "<id> <kind>"
// contains every one of `parts`.
std::function<bool(const TaskLog&)> Sent(std::string site, std::vector<std::string> parts) {
  return [site = std::move(site), parts = std::move(parts)](const TaskLog& log) {
    auto it = log.find(site);
    if (it == log.end()) return false;
    for (const auto& id : it->second) {
      bool all = true;
      for (const auto& p : parts) all = all && absl::StrContains(id, p);
      if (all) return true;
    }
    return false;
  };
}

// How a site answers a task: false to leave it unanswered (a straggler).
using Policy = std::function<bool(const Task&)>;
bool Always(const Task&) { return true; }

class Site {
 public:
  // `tls`: the site's bundle, for a secure aggregation's keys and signatures.
  Site(RoundDriver* driver, Log* log, std::string name, Policy policy,
       std::optional<TlsBundle> tls = std::nullopt)
      : driver_(driver), log_(log), name_(std::move(name)), policy_(std::move(policy)),
        tls_(std::move(tls)) {}
  ~Site() { Stop(); }

  // Joins and subscribes (again: a restarted worker, whose old stream the
  // new subscription ends), then serves tasks.
  void Start() {
    ASSERT_TRUE(driver_->Join(name_, 100).ok());
    auto gen = driver_->Subscribe(name_);
    ASSERT_TRUE(gen.ok());
    if (thread_.joinable()) thread_.join();
    stop_ = false;
    thread_ = std::thread([this, g = *gen] { Serve(g); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void set_policy(Policy p) {
    std::lock_guard<std::mutex> lock(mu_);
    policy_ = std::move(p);
  }
  bool finished() const { return finished_; }

 private:
  void Serve(uint64_t generation) {
    while (!stop_) {
      // A long poll in fake time: woken by the task, or by time moving on.
      auto next = driver_->NextTask(name_, generation, 1h);
      if (!next.ok()) return;  // replaced or shut down
      if (!next->has_value()) continue;
      const Task& task = **next;
      log_->Add(name_, task);
      Policy policy;
      {
        std::lock_guard<std::mutex> lock(mu_);
        policy = policy_;
      }
      if (task.kind == Task::Kind::kFinish) {
        finished_ = true;
        return;
      }
      if (!policy(task)) continue;
      Answer(task);
    }
  }

  // What the service and the site engine would do, without either: the
  // secure steps through secure_update.h's SecureSite, on the tasks as the
  // wire carries them (ToProto).
  void Answer(const Task& task) {
    const bool secure = task.secure && task.secure->setup;
    auto sums = [&](const std::string& split) {
      return fedsim::SyntheticEvalSums(split, driver_->study().audit.histogram_bins, 50);
    };
    switch (task.kind) {
      case Task::Kind::kInit:
        Upload(task,
               EncodeModel(fedsim::SyntheticModel(kSchema, [](uint64_t i) { return 0.5f * i; })),
               /*full_weights=*/true);
        break;
      case Task::Kind::kTrain: {
        const FlatModel delta = fedsim::SyntheticModel(kSchema, [this](uint64_t i) {
          return 0.01f * static_cast<float>(i) + (name_ == "a" ? 0.1f : 0.0f);
        });
        if (!secure) {
          Upload(task, EncodeModel(delta), false);
          break;
        }
        if (!StartSecure(task)) break;
        auto clipped = secure_->SetInput(delta.values, 0.5);
        EXPECT_TRUE(clipped.ok() && *clipped == 0) << name_ << ": " << clipped.status();
        break;
      }
      case Task::Kind::kEvaluate: {
        if (!secure) {
          for (const std::string& split : task.splits) {
            Status s = driver_->SubmitEval(name_, task.task_id, task.round, sums(split));
            EXPECT_TRUE(s.ok()) << name_ << ": " << s;
          }
          break;
        }
        if (!StartSecure(task)) break;
        std::vector<EvalSums> splits;
        for (const std::string& split : task.splits) splits.push_back(sums(split));
        auto words = EncodeEvalWords(splits, LayoutFromProto(Wire(task)),
                                     static_cast<int>(task.secure->setup->sites.size()));
        ASSERT_TRUE(words.ok()) << name_ << ": " << words.status();
        ASSERT_TRUE(secure_->SetWords(*std::move(words)).ok());
        break;
      }
      case Task::Kind::kSecAggShare: {
        auto shares = secure_->ShareKeys(Wire(task));
        ASSERT_TRUE(shares.ok()) << name_ << ": " << shares.status();
        std::vector<secagg::SealedShares> sealed;
        for (const auto& p : shares->shares()) sealed.push_back(secagg::FromProto(p));
        Expect(driver_->SecAggShares(name_, task.task_id, task.round, sealed));
        break;
      }
      case Task::Kind::kSecAggMask: {
        auto payload = secure_->MaskedPayload(Wire(task));
        ASSERT_TRUE(payload.ok()) << name_ << ": " << payload.status();
        Upload(task, *payload, false, /*masked=*/true);
        break;
      }
      case Task::Kind::kSecAggConfirm: {
        auto confirm = secure_->Confirm(Wire(task));
        ASSERT_TRUE(confirm.ok()) << name_ << ": " << confirm.status();
        Expect(driver_->SecAggConfirm(name_, task.task_id, task.round, confirm->signature()));
        break;
      }
      case Task::Kind::kSecAggUnmask: {
        auto unmask = secure_->Unmask(Wire(task));
        ASSERT_TRUE(unmask.ok()) << name_ << ": " << unmask.status();
        Expect(driver_->SecAggUnmask(name_, task.task_id, task.round,
                                     secagg::FromProto(-1, *unmask)));
        break;
      }
      default:
        break;
    }
  }

  v1::RoundTask Wire(const Task& task) const {
    return ToProto(task, driver_->study().study_id, TrainSettings{}, "");
  }
  void Expect(const Status& s) { EXPECT_TRUE(s.ok()) << name_ << ": " << s; }

  // This site's part of the task's aggregation, its keys advertised.
  bool StartSecure(const Task& task) {
    EXPECT_TRUE(tls_.has_value()) << name_ << ": a secure task for a site without keys";
    if (!tls_) return false;
    auto started = secagg::SecureSite::Start(Wire(task), tls_->key_pem, tls_->ca_pem);
    EXPECT_TRUE(started.ok()) << name_ << ": " << started.status();
    if (!started.ok()) return false;
    secure_ = *std::move(started);
    Expect(driver_->SecAggAdvertise(name_, task.task_id, task.round,
                                    secagg::FromProto(secure_->Advertisement()), tls_->cert_pem));
    return true;
  }

  void Upload(const Task& task, const std::string& blob, bool full_weights, bool masked = false) {
    UpdateHeader h;
    h.task_id = task.task_id;
    h.round = task.round;
    h.num_examples = 100;
    h.full_weights = full_weights;
    h.masked = masked;
    h.total_bytes = blob.size();
    h.total_sha256 = Sha256(blob);
    auto intake = driver_->BeginUpdate(name_, h);
    ASSERT_TRUE(intake.ok()) << name_ << ": " << intake.status();
    ASSERT_NE(*intake, nullptr);
    ASSERT_TRUE((*intake)->AddChunk(0, blob, "").ok());
    Status s = driver_->FinishUpdate(name_, *std::move(intake));
    EXPECT_TRUE(s.ok()) << name_ << ": " << s;
  }

  RoundDriver* driver_;
  Log* log_;
  const std::string name_;
  std::mutex mu_;
  Policy policy_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};
  std::thread thread_;
  const std::optional<TlsBundle> tls_;
  std::unique_ptr<secagg::SecureSite> secure_;  // the open aggregation (Serve's thread only)
};

class FakeClockStudy : public ::testing::Test {
 protected:
  // A driver of `study` on the fake clock, over a real StateStore.
  void Drive(const StudyConfig& study) {
    auto store = StateStore::Open(dir_.path() + "/state", "fake-clock");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    DriverOptions o;
    o.out_dir = dir_.path() + "/out";
    o.spool_dir = dir_.path() + "/spool";
    o.clock = &clock_;
    auto driver = RoundDriver::Create(study, store_.get(), o);
    ASSERT_TRUE(driver.ok()) << driver.status();
    driver_ = *std::move(driver);
  }
  void Open(int rounds, int min_sites) {
    auto study = Study(rounds, min_sites);
    ASSERT_TRUE(study.ok()) << study.status();
    ASSERT_NO_FATAL_FAILURE(Drive(*study));
    for (const char* name : {"a", "b", "c"}) {
      sites_[name] = std::make_unique<Site>(driver_.get(), &log_, name, Always);
    }
  }
  // A secure study of four sites with real certificates (attune
  // provision's PKI): each site signs and seals with its own key.
  void OpenSecure(int rounds, int min_sites) {
    const std::string base = dir_.path() + "/base.json";
    std::ofstream(base) << json{{"rounds", rounds},
                                {"min_sites", min_sites},
                                {"secure_aggregation", true},
                                {"join_timeout_s", 60},
                                {"round_deadline_s", 600},
                                {"heartbeat_timeout_s", 30},
                                {"audit", {{"columns", json::array()}}}}
                               .dump();
    InitOptions init;
    init.out_dir = dir_.path() + "/pki";
    init.study_id = "fake-clock";
    init.sites = {"a", "b", "c", "d"};
    init.base_study_path = base;
    auto pki = InitStudy(init);
    ASSERT_TRUE(pki.ok()) << pki.status();
    ASSERT_NO_FATAL_FAILURE(Drive(pki->study));
    for (const std::string& name : init.sites) {
      auto tls = LoadTlsBundle(init.out_dir + "/sites/" + name);
      ASSERT_TRUE(tls.ok()) << tls.status();
      sites_[name] = std::make_unique<Site>(driver_.get(), &log_, name, Always, *std::move(tls));
    }
  }
  void Run() {
    runner_ = std::thread([this] { result_ = driver_->Run(); });
  }
  Status Finish() {
    runner_.join();
    return result_;
  }
  void TearDown() override {
    if (driver_) driver_->Shutdown();
    if (runner_.joinable()) runner_.join();
    sites_.clear();
  }
  // Moves fake time on by `total` in steps, the `alive` sites heartbeating
  // before each step (the others fall silent).
  void Pass(Clock::duration total, const std::vector<std::string>& alive) {
    for (Clock::duration passed{}; passed < total; passed += 5s) {
      for (const auto& s : alive) driver_->Heartbeat(s, "");
      clock_.Advance(5s);
    }
  }
  json Record(int64_t round) {
    auto text = store_->LoadRecord(round);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? json::parse(*text) : json();
  }

  testing::TempDir dir_;
  FakeClock clock_;
  std::unique_ptr<StateStore> store_;
  std::unique_ptr<RoundDriver> driver_;
  std::map<std::string, std::unique_ptr<Site>> sites_;
  Log log_;
  std::thread runner_;
  Status result_;
};

TEST_F(FakeClockStudy, AStudyRunsWithoutTimeMoving) {
  Open(/*rounds=*/2, /*min_sites=*/2);
  for (auto& [name, site] : sites_) site->Start();
  Run();
  ASSERT_TRUE(Finish().ok()) << result_;
  EXPECT_EQ(store_->LastCommittedRound(), 2);
  for (int64_t r = 0; r <= 2; ++r) {
    EXPECT_EQ(Record(r)["sites_reported"], r == 0 ? 1 : 3) << r;
    EXPECT_EQ(Record(r)["seconds"], 0.0) << "no time passed in round " << r;
  }
  for (const auto& [name, site] : sites_) {
    EXPECT_TRUE(log_.WaitFor([&](const auto&) { return site->finished(); })) << name;
  }
}

TEST_F(FakeClockStudy, AStragglerIsDroppedAtItsHeartbeatTimeoutAndTheRoundGoesOn) {
  Open(/*rounds=*/1, /*min_sites=*/2);
  // c takes round 1's TRAIN task and goes silent.
  sites_["c"]->set_policy([](const Task& t) { return t.kind != Task::Kind::kTrain; });
  for (auto& [name, site] : sites_) site->Start();
  Run();
  for (const char* s : {"a", "b", "c"}) {
    ASSERT_TRUE(log_.WaitFor(Sent(s, {"/r1/", "/train/"}))) << s;
  }
  // a and b have answered (their updates are in before the tasks returned
  // to their threads' loops); without time moving, the phase stays open.
  EXPECT_EQ(store_->LastCommittedRound(), 0);
  // 35 s of silence from c: past heartbeat_timeout_s = 30 s, far short of
  // the round's 600 s deadline.
  Pass(35s, {"a", "b"});
  ASSERT_TRUE(log_.WaitFor(Sent("a", {"/r1/", "/evaluate/"})));
  ASSERT_TRUE(Finish().ok()) << result_;
  const json r1 = Record(1);
  EXPECT_EQ(r1["sites_reported"], 2);
  EXPECT_EQ(r1["sites"], json({"a", "b"}));
  EXPECT_GE(r1["seconds"].get<double>(), 30.0);
  EXPECT_LT(r1["seconds"].get<double>(), 600.0);
}

TEST_F(FakeClockStudy, ARoundThatMissesItsQuorumCompletesOnItsNextAttempt) {
  Open(/*rounds=*/1, /*min_sites=*/3);
  // c leaves the first attempt's TRAIN task unanswered and answers every
  // other. The policy is fixed before the sites start: changing it while
  // c's old stream still holds that task would race (the old thread could
  // read the new policy and answer the task it was meant to leave).
  sites_["c"]->set_policy([](const Task& t) {
    return !(t.kind == Task::Kind::kTrain && absl::StrContains(t.task_id, "/a1/"));
  });
  for (auto& [name, site] : sites_) site->Start();
  Run();
  for (const char* s : {"a", "b", "c"}) ASSERT_TRUE(log_.WaitFor(Sent(s, {"/r1/a1/train/"}))) << s;
  // c restarts: it subscribes again, so the first attempt cannot reach its
  // quorum of 3 and fails; the second has task ids of its own, which a and
  // b answer again (the same updates would have been refused as already
  // accepted, were the ids the same) and c now answers too.
  sites_["c"]->Start();
  for (const char* s : {"a", "b", "c"}) ASSERT_TRUE(log_.WaitFor(Sent(s, {"/r1/a2/train/"}))) << s;
  ASSERT_TRUE(Finish().ok()) << result_;
  const json r1 = Record(1);
  EXPECT_EQ(r1["sites_reported"], 3);
  EXPECT_EQ(r1["sites"], json({"a", "b", "c"}));
  auto log = store_->ReadLog(0, 1000);
  ASSERT_TRUE(log.ok());
  int failed = 0;
  for (const LogEntry& e : *log) failed += e.kind == "round_failed" ? 1 : 0;
  EXPECT_EQ(failed, 1);
}

TEST_F(FakeClockStudy, TooFewSitesAtTheJoinDeadlineEndTheStudyInFakeTime) {
  Open(/*rounds=*/1, /*min_sites=*/2);
  sites_["a"]->Start();
  ASSERT_TRUE(clock_.AwaitWaiters(1, 30s));  // a's task stream
  Run();
  ASSERT_TRUE(clock_.AwaitWaiters(2, 30s));  // and the driver, waiting for sites
  // join_timeout_s = 60: a heartbeats throughout, b and c never come.
  Pass(65s, {"a"});
  const Status s = Finish();
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_NE(s.message().find("only 1 of the roster's 3 sites"), std::string::npos) << s;
}

// A secure round in fake time: d advertises its keys in round 1 and then
// falls silent. The share step waits for it until its heartbeat timeout
// (30 s of fake time, far short of the 600 s deadline), then masks,
// confirms and unmasks with the three others, whose sum (divided by their
// weight) is the update; the secure evaluation runs without d too.
TEST_F(FakeClockStudy, ASecureRoundGoesOnWithoutASiteThatDropsAfterAdvertising) {
  OpenSecure(/*rounds=*/1, /*min_sites=*/3);
  sites_["d"]->set_policy(
      [](const Task& t) { return !(t.round == 1 && t.kind == Task::Kind::kSecAggShare); });
  for (auto& [name, site] : sites_) site->Start();
  Run();
  auto saw = [&](const std::string& site, const std::string& kind) {
    return Sent(site, {"/r1/", kind})(TaskLog{{site, log_.Of(site)}});
  };
  for (const char* s : {"a", "b", "c", "d"}) {
    ASSERT_TRUE(log_.WaitFor(Sent(s, {"/r1/", " secagg-share"}))) << s;
  }
  // Without time moving, the share step waits for d.
  EXPECT_EQ(store_->LastCommittedRound(), 0);
  EXPECT_FALSE(saw("a", " secagg-mask"));
  Pass(35s, {"a", "b", "c"});
  ASSERT_TRUE(Finish().ok()) << result_;
  const json r1 = Record(1);
  EXPECT_EQ(r1["sites"], json({"a", "b", "c"}));
  EXPECT_EQ(r1["secure_aggregation"]["selected"], 4);
  EXPECT_EQ(r1["secure_aggregation"]["survivors"], 3);
  EXPECT_EQ(r1["secure_aggregation"]["evaluation"]["survivors"], 3);
  EXPECT_GE(r1["seconds"].get<double>(), 30.0);
  EXPECT_LT(r1["seconds"].get<double>(), 600.0);
  for (const char* s : {"a", "b", "c"}) EXPECT_TRUE(saw(s, " secagg-unmask")) << s;
  EXPECT_FALSE(saw("d", " secagg-mask"));
  // The model: round 0's (0.5 i) plus the mean of a's, b's and c's deltas
  // (0.01 i, and 0.1 more for a), up to the fixed-point encoding's step.
  auto blob = store_->LoadModel(1);
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto model = DecodeModel(*blob);
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->values.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(model->values[i], 0.5 * i + 0.01 * i + 0.1 / 3, 1e-6) << i;
  }
}

}  // namespace
}  // namespace attune::coordinator
