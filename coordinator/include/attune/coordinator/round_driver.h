// The round driver: the coordinator's core, free of gRPC types, driven by
// Run() on one thread while the service threads call the site-facing
// methods. All methods are thread-safe (one mutex, `mu_`).
//
// NOTE [Round lifecycle]
// A study is a sequence of rounds; round r turns global model v_{r-1} into
// v_r and is committed to the StateStore in one atomic write batch.
//   0. Wait for sites: every roster site subscribed, or `join_timeout_s`
//      passed with at least `min_sites`.
//   1. Round 0 (only when nothing is committed): one site gets an INIT task
//      and uploads the initial weights made from the study seed (as Flower
//      asks one client for initial parameters). They become candidate v_0.
//   2. Round r >= 1, TRAIN phase: every subscribed site gets TRAIN{r, v_{r-1}};
//      each fetches v_{r-1}, trains locally and submits Δ = w_local − v_{r-1}
//      with its sample count. Updates are folded into a running weighted sum
//      as they arrive (O(model) memory). The phase closes when every selected
//      site reported, or at `round_deadline_s` with >= `min_sites` reports;
//      FedAvg gives candidate v_r.
//   3. EVALUATE phase (every round, round 0 too): sites fetch candidate v_r
//      and report sums only (loss, score histograms, confusion counts,
//      per-subgroup attention and confusion sums) on their validation split,
//      and on the test split in the last round.
//   4. Commit: model v_r, the round record and the audit sums in one batch;
//      summary.json and audit.json in the output directory are rewritten.
//   5. After the last round every site gets FINISH.
// A restart on the same data directory reloads v_last and continues at round
// last + 1; tasks carry an id unique to the coordinator's run, so a
// submission addressed to a previous run is refused.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/status.h"
#include "attune/common/store.h"
#include "attune/common/tensor_codec.h"
#include "attune/coordinator/fedavg.h"

namespace attune::coordinator {

struct Task {
  enum class Kind { kInit, kTrain, kEvaluate, kFinish };
  Kind kind = Kind::kTrain;
  int64_t round = 0;
  int64_t model_version = -1;
  std::vector<std::string> splits;  // EVALUATE only
  std::string task_id;
};
const char* KindName(Task::Kind k);

struct UpdateSubmission {
  std::string task_id;
  int64_t round = 0;
  int64_t num_examples = 0;
  std::map<std::string, double> metrics;
  bool full_weights = false;
  FlatModel model;
};

struct SiteView {
  std::string site;
  bool subscribed = false;
  int64_t train_samples = 0;
};

struct StatusView {
  int64_t committed_round = -1;
  std::string phase;
  std::vector<SiteView> sites;
};

class RoundDriver {
 public:
  // `store` must outlive the driver. Reloads the last committed model.
  static StatusOr<std::unique_ptr<RoundDriver>> Create(StudyConfig study,
                                                       StateStore* store,
                                                       std::string out_dir);

  const StudyConfig& study() const { return study_; }

  // --- called by the service (never blocks for long) ---
  // PermissionDenied for a site not on the roster.
  Status Join(const std::string& site, int64_t train_samples);
  // Opens the site's task stream; returns its generation.
  StatusOr<uint64_t> Subscribe(const std::string& site);
  // The next task for the stream, waiting up to `wait`; nullopt on timeout.
  // Cancelled once the stream was replaced or the driver shuts down.
  StatusOr<std::optional<Task>> NextTask(const std::string& site, uint64_t generation,
                                         std::chrono::milliseconds wait);
  void Unsubscribe(const std::string& site, uint64_t generation);
  // The encoded model of `version` (committed global or current candidate).
  StatusOr<std::shared_ptr<const std::string>> Model(int64_t version);
  // Cheap check before a payload is read: is this task open for the site?
  Status CheckOpenTask(const std::string& site, const std::string& task_id, int64_t round);
  Status SubmitUpdate(const std::string& site, UpdateSubmission update);
  Status SubmitEval(const std::string& site, const std::string& task_id, int64_t round,
                    EvalSums sums);
  StatusView GetStatus();
  // The largest update payload accepted now (bytes).
  uint64_t MaxPayloadBytes();

  // --- the study ---
  // Drives rounds until the study is done (OK) or cannot go on.
  Status Run();
  // Makes Run() and every waiting stream return (Cancelled).
  void Shutdown();

 private:
  struct SiteState {
    bool joined = false;
    bool subscribed = false;
    uint64_t generation = 0;
    int64_t train_samples = 0;
    std::deque<Task> queue;
    std::optional<Task> pending;  // the open phase's task, re-sent on resubscribe
  };
  struct Phase {
    Task::Kind kind = Task::Kind::kTrain;
    int64_t round = 0;
    std::map<std::string, std::string> task_ids;  // selected site -> task id
    std::set<std::string> done;
    std::vector<std::string> splits;
    // TRAIN / INIT
    std::unique_ptr<StreamingFedAvg> fedavg;
    std::optional<FlatModel> init_model;
    double train_loss_sum = 0;   // Σ n_i · loss_i
    // EVALUATE
    std::map<std::string, EvalSums> eval;                 // split -> sums
    std::map<std::string, std::set<std::string>> got;     // site -> splits
  };

  RoundDriver(StudyConfig study, StateStore* store, std::string out_dir);

  Status CheckOpenTaskLocked(const std::string& site, const std::string& task_id,
                             int64_t round);  // requires mu_
  Status WaitForSites();
  Status RunInitRound();
  Status RunTrainRound(int64_t round);
  // Sends one task per selected site and waits for the phase to close.
  Status RunPhase(std::unique_lock<std::mutex>& lock, Phase* phase,
                  const std::vector<std::string>& selected, int64_t model_version,
                  int quorum);
  Status CommitRound(int64_t round, FlatModel model, const Phase& train,
                     const Phase& eval, double seconds);
  Status WriteOutputs();
  std::vector<std::string> SubscribedSites() const;  // requires mu_
  std::string NewTaskId(Task::Kind kind, int64_t round, const std::string& site);

  const StudyConfig study_;
  StateStore* const store_;
  const std::string out_dir_;
  const std::string run_nonce_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;
  std::map<std::string, SiteState> sites_;
  std::string phase_name_ = "waiting for sites";
  Phase* phase_ = nullptr;  // the open phase, owned by Run()'s stack
  // Committed global model v_{committed} and the candidate being evaluated.
  int64_t global_version_ = -1;
  std::optional<FlatModel> global_;
  std::shared_ptr<const std::string> global_blob_;
  int64_t candidate_version_ = -1;
  std::shared_ptr<const std::string> candidate_blob_;
};

}  // namespace attune::coordinator
