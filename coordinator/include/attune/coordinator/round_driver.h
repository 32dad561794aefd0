// The round driver: the coordinator's core, free of gRPC types, driven by
// Run() on one thread while the service threads call the site-facing
// methods. All methods are thread-safe (one mutex, `mu_`); nothing slow
// (aggregation, disk writes of models) runs under it. The sites (roster,
// sessions, task queues, liveness) are a SiteRegistry, the committed rounds
// a RoundHistory, and time a Clock (DriverOptions::clock): each is tested
// on its own, and the driver's rounds in one process on a FakeClock
// (round_driver_test.cc).
//
// NOTE [Round lifecycle]
// A study is a sequence of rounds; round r turns global model v_{r-1} into
// v_r and is committed to the StateStore in one atomic write batch.
//   0. Wait for sites: every admitted roster site subscribed, or
//      `join_timeout_s` passed with at least `min_sites`.
//   1. Round 0 (only when nothing is committed): the first live site by name
//      gets an INIT task and uploads the initial weights made from the study
//      seed (as Flower asks one client for initial parameters): candidate v_0.
//   2. Round r >= 1, TRAIN phase: `sites_per_round` of the live sites (a
//      sample that depends only on the seed, the round and who is live) get
//      TRAIN{r, v_{r-1}}; each fetches v_{r-1}, trains locally and streams
//      Δ = w_local − v_{r-1}. Each update is checked as it arrives (order,
//      digests, schema, NaN/Inf, norm bound) and spooled to disk, so memory
//      does not grow with the number of sites. The phase closes when every
//      selected site reported or is gone (stream closed, or no heartbeat for
//      `heartbeat_timeout_s`) with >= `min_sites` reports, or at
//      `round_deadline_s` with >= `min_sites` (with straggler_policy
//      "quorum": as soon as `min_sites` reported). A site that is gone, or that
//      subscribes again (a restarted worker), is not waited for in the open
//      phase and takes part from the next one. Then the Strategy folds the
//      spooled updates, in site-name order, range by range, into candidate
//      v_r (aggregate.h): bitwise reproducible whatever the arrival order.
//      With secure_aggregation the TRAIN phase runs secagg.h's four steps
//      instead (secure_round.cc): each selected site gets TRAIN with a
//      SecAggSetup and advertises its keys, trains, and is sent the others'
//      advertisements (SECAGG_SHARE), then the shares sealed to it
//      (SECAGG_MASK); its masked input is folded into one running sum; the
//      survivors sign the survivor set (SECAGG_CONFIRM) and, once t have, are
//      asked for their shares with those signatures (SECAGG_UNMASK), and the sum over
//      the survivors, divided by their weight, is the one update the Strategy
//      sees. Each step waits like a phase; fewer than t sites at any step
//      aborts the round (retried like a missed quorum). Nothing of a
//      secure round is persisted: a restarted coordinator runs it afresh
//      with fresh keys, and since a site's noise is seeded by its key and
//      the round, and a site refuses to unmask the same round for a
//      different set of survivors, a rerun releases nothing new.
//      With differential privacy, the round is first checked against the
//      privacy budget (a round that would exceed it is not run: the study
//      ends there) and charged to the ledger when its sum is unmasked; the
//      ledger is committed with the round.
//   3. EVALUATE phase (every round, round 0 too): live sites fetch the
//      candidate and report sums only (loss, score histograms, confusion
//      counts, and -- every audit.every rounds and in the last -- the
//      subgroup audit sums) on their validation split, and on the test
//      split in the last round. With secure_aggregation these sums take the
//      same four steps as the update (purpose "evaluation"): the EVALUATE
//      task carries the layout of the study's audit cells (audit.values,
//      eval_stats.h) and the coordinator learns only the sum over the
//      survivors, decoded into the round's metrics and audit.
//   4. Commit: model file, strategy state, round record, audit sums and the
//      round's audit-log entry in one batch; summary.json, audit.json and
//      audit.html are rewritten. A round that misses its quorum is logged and tried again
//      (up to kMaxRoundAttempts) once enough sites are live; each attempt's
//      tasks have ids of their own (".../a2/..."), so a site's update for a
//      failed attempt is neither counted again nor taken for the next one.
//   5. After the last round the final model is written to <out>/model.atnm
//      and every site gets FINISH (with serve_audits: only at Stop()).
//   Audit-only rounds (Audit(), `attune audit`) run before a round starts
//   (and, with serve_audits, after the last one): an EVALUATE phase with
//   the subgroup sums on a committed model, numbered as the round to come
//   with a task id of its own, securely summed under a purpose of its own
//   ("audit N of model V"); nothing is committed, the release is counted
//   and logged (audit_released) and the document goes back to the caller.
// A restart on the same data directory reloads v_last and its strategy
// state, clears the spool and starts round last + 1 afresh; tasks carry an id
// unique to the coordinator's run, so a submission addressed to a previous
// run (or a closed round: a straggler) is refused and never folded in.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/privacy.h"
#include "attune/common/secagg.h"
#include "attune/common/status.h"
#include "attune/common/store.h"
#include "attune/common/tensor_codec.h"
#include "attune/coordinator/clock.h"
#include "attune/coordinator/refusal_limiter.h"
#include "attune/coordinator/round_history.h"
#include "attune/coordinator/site_registry.h"
#include "attune/coordinator/strategy.h"
#include "attune/coordinator/update_privacy.h"
#include "attune/common/task.h"
#include "attune/coordinator/update_intake.h"

namespace attune::coordinator {


// A model the coordinator serves: its encoding and that encoding's
// SHA-256, computed once and announced with every fetch of it.
struct ServedModel {
  std::shared_ptr<const std::string> bytes;
  std::string sha256;  // 32 raw bytes
  explicit operator bool() const { return bytes != nullptr; }
  // Hashes `bytes`.
  static ServedModel Of(std::string bytes);
};

struct RoundView {
  int64_t round = 0;
  int sites = 0;
  double train_loss = 0, val_loss = 0, val_auc = 0, seconds = 0;  // NaN when absent
};

struct PrivacyView {
  std::string mode;  // empty: no DP
  double epsilon_spent = 0, epsilon_budget = 0, delta = 0, noise_multiplier = 0;
  int releases = 0, audit_releases = 0;
};

struct StatusView {
  int64_t committed_round = -1;
  bool secure_aggregation = false;
  PrivacyView privacy;
  std::string phase;
  std::vector<SiteView> sites;
  std::vector<RoundView> rounds;
  uint64_t log_entries = 0;
};

struct DriverOptions {
  std::string out_dir;     // summary.json, audit.json, model.atnm
  std::string spool_dir;   // scratch for the open round's updates
  std::string study_path;  // re-read when it changes: roster and revocations
  // The study's signed terms (common/terms.h), forwarded with every task and
  // re-read when the file changes; checked against the study CA `ca_pem`
  // and, at Create, against the study. Empty: no terms are forwarded (unit
  // tests of the driver alone; attune-coordinator always has them).
  std::string terms_path;
  std::string ca_pem;
  // After the last round, keep serving audit-only rounds (sites stay
  // connected) until Stop(); otherwise the sites get FINISH at once.
  bool serve_audits = false;
  // The time rounds run by: phases' deadlines, heartbeat timeouts, the
  // join wait, a task stream's long poll. Null: the system's steady clock;
  // tests drive a FakeClock (it must outlive the driver).
  Clock* clock = nullptr;
};

class RoundDriver {
 public:
  // `store` must outlive the driver. Reloads the last committed model.
  static StatusOr<std::unique_ptr<RoundDriver>> Create(StudyConfig study, StateStore* store,
                                                       DriverOptions options);
  ~RoundDriver();

  // The study as started (roster changes are tracked separately).
  const StudyConfig& study() const { return study_; }

  // --- called by the service (never blocks for long) ---
  // The caller's site id. PermissionDenied for a CN that is not an admitted
  // roster site (revoked included) -- except the operator when
  // `operator_ok`; FailedPrecondition for another study. Picks up changes of
  // the study file first.
  StatusOr<std::string> Authorize(const std::string& cn, const std::string& study_id,
                                  bool operator_ok);
  // `ranks`: the processes that train at the site (logged and journalled).
  // `features`: the names of the site's model input features, which its
  // evaluation sums have per-feature entries for (eval_stats.h).
  Status Join(const std::string& site, int64_t train_samples, int ranks = 1,
              std::vector<std::string> features = {});
  // Opens the site's task stream; returns its generation.
  StatusOr<uint64_t> Subscribe(const std::string& site);
  // The next task for the stream, waiting up to `wait`; nullopt on timeout.
  // Cancelled once the stream was replaced, the site revoked, or the driver
  // shut down.
  StatusOr<std::optional<Task>> NextTask(const std::string& site, uint64_t generation,
                                         std::chrono::milliseconds wait);
  void Unsubscribe(const std::string& site, uint64_t generation);
  // Records a sign of life; returns the open round (-1 if none).
  int64_t Heartbeat(const std::string& site, const std::string& progress);
  // The encoded model of `version` (committed global or current candidate).
  StatusOr<ServedModel> Model(int64_t version);
  // Starts receiving an update: the task must be open for the site. A
  // resubmission of an update already accepted (same digest) returns
  // AlreadyAccepted; a different one AlreadyExists.
  StatusOr<std::unique_ptr<UpdateIntake>> BeginUpdate(const std::string& site,
                                                      const UpdateHeader& header);
  // Completes the intake and folds it into the open phase (checked again:
  // the round may have closed while the bytes were arriving).
  Status FinishUpdate(const std::string& site, std::unique_ptr<UpdateIntake> intake);
  Status SubmitEval(const std::string& site, const std::string& task_id, int64_t round,
                    EvalSums sums);
  // Secure aggregation steps of the site's open TRAIN task. The
  // advertisement is relayed with `certificate_pem`, the certificate the
  // site authenticated with.
  Status SecAggAdvertise(const std::string& site, const std::string& task_id, int64_t round,
                         secagg::Advertisement ad, std::string certificate_pem);
  Status SecAggShares(const std::string& site, const std::string& task_id, int64_t round,
                      const std::vector<secagg::SealedShares>& shares);
  // The consistency step: the site's signature of the survivor set
  // (checked against the certificate it advertised with).
  Status SecAggConfirm(const std::string& site, const std::string& task_id, int64_t round,
                       std::string signature);
  Status SecAggUnmask(const std::string& site, const std::string& task_id, int64_t round,
                      secagg::UnmaskResponse response);
  StatusView GetStatus();
  // Logs a refused request and appends it to the audit log, at a bounded
  // rate per caller (RefusalLimiter: the next entry counts those left out).
  void RecordRefusal(const std::string& who, const char* rpc, const Status& status);
  // Logs how many refusals of each caller were left out since its last
  // logged one (one "refusals_not_logged" entry), when the server stops.
  void FlushRefusals();
  int64_t heartbeat_interval_ms() const;
  // The current signed terms, as the owner signed them ("" without any).
  std::shared_ptr<const std::string> SignedTerms();
  // The local training the study's strategy asks of `site` (sent with
  // every task).
  TrainSettings TrainingFor(const std::string& site) const;

  // --- for the operator ---
  // An audit-only round over every live site: model `version` (a committed
  // round; -1 for the latest) evaluated on `split` ("val" or "test") with
  // the subgroup sums, and the audit document (audit.h) of their sum.
  // Queued and run by Run() between training rounds, or at once while a
  // finished study serves audits; waits until `deadline` (DeadlineExceeded
  // if it has not run by then; `deadline` is on the system's steady clock:
  // the caller's RPC deadline). Counted as an audit release.
  StatusOr<std::string> Audit(int64_t version, std::string split,
                              std::chrono::steady_clock::time_point deadline);

  // --- the study ---
  // Drives rounds until the study is done (OK) or cannot go on; with
  // serve_audits, then serves audits until Stop().
  Status Run();
  // Ends a finished study that serves audits (the sites get FINISH and Run
  // returns OK); otherwise the same as Shutdown().
  void Stop();
  // Makes Run() and every waiting stream return (Cancelled).
  void Shutdown();

  static constexpr int kMaxRoundAttempts = 3;
  // The most training patients a site may declare at Join (and so the
  // largest FedAvg weight of one update).
  static constexpr int64_t kMaxTrainSamples = 1'000'000'000;

 private:
  struct Accepted {
    std::string path;     // spool file (TRAIN)
    std::string sha256;   // payload digest, for idempotent resubmission
    int64_t num_examples = 0;
    double train_loss = 0;
  };
  // A secure TRAIN phase's protocol state (secure_round.cc).
  struct Secure {
    std::optional<secagg::Server> server;
    int step = 1;                              // 1 advertise .. 4 confirm, 5 unmask
    std::vector<std::string> sites;            // index -> site
    std::map<std::string, int> index;
    std::map<int, std::string> certificates;   // relayed with the advertisements
    std::map<std::string, std::string> masked_sha256;
    std::string context;
    std::vector<int> survivors;                // step 4: the set each survivor signs
    std::map<int, std::string> confirmations;  // survivor -> its signature of it
    int64_t length = 0;
  };
  struct Phase {
    Task::Kind kind = Task::Kind::kTrain;
    int64_t round = 0;
    std::map<std::string, std::string> task_ids;  // selected site -> task id
    std::set<std::string> done;
    std::set<std::string> dropped;  // gone (or re-subscribed): not waited for
    std::vector<std::string> splits;
    // EVALUATE: also the subgroup audit sums; an audit-only round's number
    // (0 for a round's own evaluation) and the model version it scores.
    bool audit = false;
    int audit_id = 0;
    int64_t audit_model = -1;
    // TRAIN / INIT
    std::map<std::string, Accepted> accepted;     // by site name: aggregation order
    ServedModel init_model;
    // EVALUATE
    std::vector<std::string> features;                    // the audit's, as the sites agree
    std::map<std::string, EvalSums> eval;                 // split -> sums
    std::map<std::string, std::set<std::string>> got;     // site -> splits
    // Secure TRAIN
    std::optional<Secure> secure;
  };

  RoundDriver(StudyConfig study, StateStore* store, DriverOptions options,
              std::unique_ptr<Strategy> strategy);

  // All of these require mu_.
  // FailedPrecondition when `round` is over (a straggler's update).
  Status RoundClosedLocked(int64_t round) const;
  Status CheckOpenTaskLocked(const std::string& site, const std::string& task_id,
                             int64_t round);
  void ReloadRosterLocked();
  // The audit features' names for `selected` (AgreedAuditFeatureNames).
  std::vector<std::string> AgreedFeaturesLocked(const std::vector<std::string>& selected) const;
  // Picks up re-signed terms (a newer version that verifies).
  void ReloadTermsLocked();
  void LogLocked(const std::string& kind, const std::string& site, const std::string& detail);

  struct AuditJob {
    int64_t version = -1;
    std::string split;
    bool done = false;
    StatusOr<std::string> result = absl::UnknownError("not run");
  };
  // Runs the queued audit-only rounds (requires mu_, held through `lock`).
  void RunPendingAudits(std::unique_lock<std::mutex>& lock);
  StatusOr<std::string> RunAuditRound(std::unique_lock<std::mutex>& lock, const AuditJob& job);

  // Waits on cv_ until `ready()` or the driver's clock reaches `deadline`;
  // returns ready().
  bool WaitLocked(std::unique_lock<std::mutex>& lock, Clock::time_point deadline,
                  const std::function<bool()>& ready);
  Status WaitForSites();
  // Waits up to the round deadline for `min_sites` live sites.
  Status WaitForQuorum(std::unique_lock<std::mutex>& lock, int64_t round);
  Status RunInitRound();
  Status RunTrainRound(int64_t round);
  // Sends one task per selected site (with its `secure` fields, when
  // given) and waits for the phase to close.
  Status RunPhase(std::unique_lock<std::mutex>& lock, Phase* phase,
                  const std::vector<std::string>& selected, int64_t model_version,
                  int quorum,
                  const std::map<std::string, std::shared_ptr<const SecureTaskParts>>& secure = {});
  // The parts of RunPhase: queue the tasks (with `secure` fields per site
  // when given) and open the phase; wait until each of `expected` is done
  // or gone (OK with at least `quorum` done); close it.
  void OpenPhase(Phase* p, const std::vector<std::string>& selected, int64_t model_version,
                 const std::map<std::string, std::shared_ptr<const SecureTaskParts>>& secure = {});
  Status AwaitReports(std::unique_lock<std::mutex>& lock, Phase* p,
                      const std::vector<std::string>& expected, int quorum,
                      std::chrono::steady_clock::time_point deadline);
  void ClosePhase(Phase* p);
  // One secure aggregation over `selected` as the open phase `p` (TRAIN or
  // EVALUATE; secure_round.cc): secagg.h's four steps, each waited for like
  // a phase; fewer than t sites at any step aborts (Unavailable: retried).
  struct SecureSpec {
    std::string purpose;           // "update", "evaluation": bound into the keys' context
    int64_t length = 0;            // 32-bit words per site's input
    std::vector<double> weight;    // per selected site, sent in the setup (empty: 1)
    // Adds the kind's fields to each site's first task, given the threshold.
    std::function<void(int threshold, SecureTaskParts*)> fill;
  };
  struct SecureSum {
    std::vector<uint32_t> words;       // the survivors' inputs summed mod 2^32
    std::vector<int> survivors, dropped;  // indexes into `selected`
    int sites = 0;
  };
  StatusOr<SecureSum> RunSecureAggregation(std::unique_lock<std::mutex>& lock, Phase* p,
                                           const std::vector<std::string>& selected,
                                           const SecureSpec& spec);
  // The secure TRAIN phase (secure_round.cc): on success, the survivors'
  // weighted mean update spooled at `spool_path`, and the weighted train loss.
  Status RunSecureTrainPhase(std::unique_lock<std::mutex>& lock, Phase* p,
                             const std::vector<std::string>& selected, const std::string& spool_path,
                             double* train_loss);
  // The secure EVALUATE phase: the sites' sums laid out as the study's
  // audit cells (eval_stats.h), into p->eval.
  Status RunSecureEvalPhase(std::unique_lock<std::mutex>& lock, Phase* p,
                            const std::vector<std::string>& selected);
  // Secure step bookkeeping: the open phase must be a secure phase at
  // `step` with this task open for the site.
  StatusOr<Phase*> SecureStepLocked(const std::string& site, const std::string& task_id,
                                    int64_t round, int step);
  // DP: the noise per site, and whether one more round fits the budget.
  // Charges one release of the study's noise multiplier to the ledger and
  // writes the ledger to the audit log at once: a release is spent when it
  // reaches the coordinator, whether or not its round is ever committed,
  // and a restarted coordinator resumes from the latest entry.
  Status SpendLocked(const std::string& what, double sigma);
  // Charges a noised evaluation (audit.noise_multiplier) once anything of
  // it was released; returns `phase`, or the charge's refusal.
  Status ChargeEvaluationLocked(const Phase& eval, Status phase);
  // The audit of `sums` from `sites`, as published: the disclosure check
  // counts what earlier releases of the same patients (split and sites)
  // published as known, and this release's published cells are logged for
  // the next (and for a restarted coordinator).
  StatusOr<std::string> PublishAuditLocked(const EvalSums& sums,
                                           const std::vector<std::string>& sites);
  PrivacyView PrivacyLocked() const;
  // Evaluates `model` (served as candidate `round`), then commits it.
  Status EvaluateAndCommit(std::unique_lock<std::mutex>& lock, int64_t round,
                           ServedModel model, std::string server_state,
                           const Phase& train, std::string describe_json,
                           std::chrono::steady_clock::time_point start);
  Status CommitRound(int64_t round, ServedModel model,
                     std::string server_state, const Phase& train, const Phase& eval,
                     const std::string& describe_json, double seconds);
  Status WriteOutputs(bool final_model);
  std::vector<std::string> SelectForTraining(int64_t round,
                                             std::vector<std::string> live) const;
  std::string NewTaskId(Task::Kind kind, int64_t round, const std::string& site);
  Task FinishTask(const std::string& site);
  void ClearSpool();

  const StudyConfig study_;
  StateStore* const store_;
  const DriverOptions options_;
  const std::string run_nonce_;
  const std::unique_ptr<Strategy> strategy_;
  const UpdatePrivacy privacy_;  // DP around the strategy: task terms, weights, charges
  SystemClock system_clock_;
  Clock* const clock_;

  std::mutex mu_;
  std::mutex refusals_mu_;
  RefusalLimiter refusals_{RefusalLimiter::Options{}};  // guarded by refusals_mu_
  std::condition_variable cv_;
  bool shutdown_ = false;
  bool finished_ = false;  // FINISH is queued for every (re)subscribing site
  // Roster, sessions, task queues and liveness (on clock_).
  SiteRegistry sites_;
  std::string study_file_stamp_;     // inode/mtime/size of the study file last read
  std::string terms_file_stamp_;     // the same, of the terms file
  int64_t terms_version_ = 0;
  std::shared_ptr<const std::string> signed_terms_ = std::make_shared<const std::string>();
  std::string phase_name_ = "waiting for sites";
  Phase* phase_ = nullptr;  // the open phase, owned by Run()'s stack
  // The attempt of the round being run (1 .. kMaxRoundAttempts): in every
  // task id and secure context, so that nothing of a failed attempt (an
  // accepted update, a closed task, a secure step) counts in the next.
  int attempt_ = 1;
  struct AcceptedTask {
    std::string site;
    int64_t round = 0;
    std::string sha256;
  };
  // Updates accepted in this and the previous round, by task id: what makes
  // a resubmission idempotent.
  std::map<std::string, AcceptedTask> accepted_tasks_;
  // Tasks of this and the previous round whose phase closed without them:
  // a straggler's submission gets a message that says so.
  std::map<std::string, int64_t> closed_tasks_;
  // Committed global model v_{committed} (blob + view) and the candidate.
  int64_t global_version_ = -1;
  ServedModel global_model_;
  ModelView global_;
  std::string server_state_;  // strategy state committed with v_{committed}
  // The privacy ledger (committed with each round's record) and the audit
  // releases counted beside it.
  std::optional<privacy::Accountant> ledger_;
  int audit_releases_ = 0;
  // The cells each population ("split|site,site,...") has had published.
  std::map<std::string, std::set<CellKey>> published_cells_;
  std::string stop_reason_;  // why the study ended before its last round
  // The committed rounds' records and latest audit (status, summary.json).
  RoundHistory history_;
  int64_t candidate_version_ = -1;
  ServedModel candidate_model_;
  // Audit-only rounds: the queue, how many ran, whether a finished study
  // stops serving them, and the model being audited (served to the sites).
  std::deque<std::shared_ptr<AuditJob>> audit_jobs_;
  int audits_run_ = 0;
  bool stop_serving_ = false;
  int64_t audit_version_ = -1;
  ServedModel audit_served_;
};

}  // namespace attune::coordinator
