// The round driver in one process, on a FakeClock: no gRPC, no processes,
// no waiting for real deadlines. Each site is a thread calling the driver
// as the service would (Join, Subscribe, NextTask, BeginUpdate/FinishUpdate,
// SubmitEval); the test moves time on, with heartbeats from the sites that
// are alive, and checks the round records in a real StateStore.
#include "attune/coordinator/round_driver.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "attune/common/tensor_codec.h"
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
  void Add(const std::string& site, const Task& t) {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_[site].push_back(t.task_id);
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

// How a site answers a task: false to leave it unanswered (a straggler).
using Policy = std::function<bool(const Task&)>;
bool Always(const Task&) { return true; }

class Site {
 public:
  Site(RoundDriver* driver, Log* log, std::string name, Policy policy)
      : driver_(driver), log_(log), name_(std::move(name)), policy_(std::move(policy)) {}
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

  void Answer(const Task& task) {
    switch (task.kind) {
      case Task::Kind::kInit:
        Upload(task, fedsim::SyntheticModel(kSchema, [](uint64_t i) { return 0.5f * i; }), true);
        break;
      case Task::Kind::kTrain:
        Upload(task, fedsim::SyntheticModel(kSchema, [this](uint64_t i) {
                 return 0.01f * static_cast<float>(i) + (name_ == "a" ? 0.1f : 0.0f);
               }),
               false);
        break;
      case Task::Kind::kEvaluate:
        for (const std::string& split : task.splits) {
          Status s = driver_->SubmitEval(
              name_, task.task_id, task.round,
              fedsim::SyntheticEvalSums(split, driver_->study().audit.histogram_bins, 50));
          EXPECT_TRUE(s.ok()) << name_ << ": " << s;
        }
        break;
      default:
        break;
    }
  }

  void Upload(const Task& task, const FlatModel& model, bool full_weights) {
    const std::string blob = EncodeModel(model);
    UpdateHeader h;
    h.task_id = task.task_id;
    h.round = task.round;
    h.num_examples = 100;
    h.full_weights = full_weights;
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
};

class FakeClockStudy : public ::testing::Test {
 protected:
  void Open(int rounds, int min_sites) {
    auto study = Study(rounds, min_sites);
    ASSERT_TRUE(study.ok()) << study.status();
    auto store = StateStore::Open(dir_.path() + "/state", "fake-clock");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    DriverOptions o;
    o.out_dir = dir_.path() + "/out";
    o.spool_dir = dir_.path() + "/spool";
    o.clock = &clock_;
    auto driver = RoundDriver::Create(*study, store_.get(), o);
    ASSERT_TRUE(driver.ok()) << driver.status();
    driver_ = *std::move(driver);
    for (const char* name : {"a", "b", "c"}) {
      sites_[name] = std::make_unique<Site>(driver_.get(), &log_, name, Always);
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
  auto trained = [](const std::string& site) {
    return [site](const auto& log) {
      auto it = log.find(site);
      if (it == log.end()) return false;
      for (const auto& id : it->second) {
        if (absl::StrContains(id, "/r1/") && absl::StrContains(id, "/train/")) return true;
      }
      return false;
    };
  };
  for (const char* s : {"a", "b", "c"}) ASSERT_TRUE(log_.WaitFor(trained(s))) << s;
  // a and b have answered (their updates are in before the tasks returned
  // to their threads' loops); without time moving, the phase stays open.
  EXPECT_EQ(store_->LastCommittedRound(), 0);
  // 35 s of silence from c: past heartbeat_timeout_s = 30 s, far short of
  // the round's 600 s deadline.
  Pass(35s, {"a", "b"});
  ASSERT_TRUE(log_.WaitFor([](const auto& log) {
    for (const auto& id : log.at("a")) {
      if (absl::StrContains(id, "/r1/") && absl::StrContains(id, "/evaluate/")) return true;
    }
    return false;
  }));
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
  auto has = [](const std::string& site, const std::string& what) {
    return [site, what](const auto& log) {
      auto it = log.find(site);
      if (it == log.end()) return false;
      for (const auto& id : it->second) {
        if (absl::StrContains(id, what)) return true;
      }
      return false;
    };
  };
  for (const char* s : {"a", "b", "c"}) ASSERT_TRUE(log_.WaitFor(has(s, "/r1/a1/train/"))) << s;
  // c restarts: it subscribes again, so the first attempt cannot reach its
  // quorum of 3 and fails; the second has task ids of its own, which a and
  // b answer again (the same updates would have been refused as already
  // accepted, were the ids the same) and c now answers too.
  sites_["c"]->Start();
  for (const char* s : {"a", "b", "c"}) ASSERT_TRUE(log_.WaitFor(has(s, "/r1/a2/train/"))) << s;
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

}  // namespace
}  // namespace attune::coordinator
