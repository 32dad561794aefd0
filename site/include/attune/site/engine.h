// The site engine: the site side of the federation protocol, once, torch-
// free, for attune-worker (its LibTorch learner) and the fake sites of
// experiments/fedsim (a synthetic learner) alike.
// It joins the study, subscribes to the coordinator's
// task stream and carries out each task with the site's Learner (see
// NOTE [Round lifecycle] in coordinator/round_driver.h for the other side).
//
//   Join -> (load data for the study's model) -> Subscribe -> for each task:
//     INIT      build the initial model from the study seed, upload weights
//     TRAIN     fetch v_{r-1}, train locally, upload Δ and the sample count
//     EVALUATE  fetch v_r, upload sums (metrics + subgroup audit) per split
//     (with secure aggregation, TRAIN and EVALUATE advertise keys first and
//     hold their input for the SECAGG_SHARE / _MASK / _UNMASK steps)
//     FINISH    return OK
// While joined, a background thread sends a Heartbeat with the site's
// progress (stage, round, epoch, batch) every JoinReply.heartbeat_interval_ms,
// so the coordinator knows the site is alive even during long local training.
// Before any of it the site checks what it is asked against the study's
// signed terms (common/site_guard.h): the Join reply's model and audit
// settings (a refusal ends the worker) and each task (a refused task is
// logged and not done; the round goes on without this site).
// When the coordinator goes away (restart, network), the client reconnects
// with exponential backoff for up to `reconnect_timeout`; a refusal
// (certificate not on the roster, wrong study, TLS failure) ends it at once.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>

#include "attune/common/crypto.h"
#include "attune/common/eval_stats.h"
#include "attune/common/secure_update.h"
#include "attune/common/site_config.h"
#include "attune/common/site_guard.h"
#include "attune/common/site_releases.h"
#include "attune/common/status.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"
#include "attune/v1/federation.grpc.pb.h"
#include "attune/site/learner.h"

namespace attune::site {

struct EngineOptions {
  std::string coordinator;  // host:port
  std::string study_id;
  std::chrono::milliseconds reconnect_timeout{60000};
  std::chrono::milliseconds rpc_timeout{600000};  // per model transfer
  // This site's TLS key and the study CA: secure aggregation signs its
  // keys with the one and checks peers' certificates against the other;
  // differential privacy seeds the site's noise from the key.
  std::string key_pem;
  std::string ca_pem;
  int ranks = 1;  // the processes training together at this site (declared at Join)
  // This site's certificate CN, and its bundle's signed study terms
  // (common/terms.h): every task is checked against them (site_guard.h).
  std::string site_id;
  std::string terms_path;
  // Where the site keeps what it has released (site_releases.h).
  std::string state_dir;
  // This site's own policy (site.json "policy" and the flags, strictest
  // of each): its k (the terms' min_cell if larger), its privacy budget ε
  // (0: the terms'; the smaller is kept) and the audit columns it never
  // reports. A site may only tighten the study's terms.
  SitePolicy policy;
};

using LearnerFactory = std::function<StatusOr<std::unique_ptr<Learner>>(const ModelConfig&)>;

// Fills in `options` what a site's bundle folder (from `attune provision`)
// says: its key and the study CA, its name (the certificate's CN) and,
// unless already set, the signed terms (study.terms there) and the state
// folder (state/ there). Returns the bundle, for the channel.
StatusOr<TlsBundle> LoadSiteBundle(const std::string& tls_dir, EngineOptions* options);

// What a site has sent, for logs and benchmarks.
struct EngineStats {
  int64_t updates_sent = 0;  // initial model, updates and masked inputs accepted
  int64_t updates_late = 0;  // refused as late: the round went on without this site
  int64_t bytes_up = 0;      // update payloads and secure aggregation messages
                             // (not the initial model)
  int64_t bytes_down = 0;    // model payloads fetched
  int64_t models_held = 0;   // fetches answered "held": the site had the model already
  // Seconds spent on the updates themselves: encoding, digests and sending
  // for a plain one; key agreement, sharing, quantising, masking and
  // unmasking for a secure one (training and the initial model not counted).
  double update_seconds = 0;
};

class SiteEngine {
 public:
  SiteEngine(EngineOptions options, std::shared_ptr<grpc::Channel> channel,
                   LearnerFactory make_learner);
  // Runs until the study finishes (OK), cannot go on, or Stop() (Cancelled).
  Status Run();
  // From any thread: ends Run() at its next step (an open call is cancelled).
  void Stop();
  EngineStats stats() const;

 private:
  Status Join(v1::JoinReply* reply);
  bool stopped() const;
  Status Session(bool* joined);
  Status HandleTask(const v1::RoundTask& task);
  // Verifies the chunks and parses the values as they arrive (the payload
  // is never held whole); `digest` is then ModelDigest of the bytes
  // received (their verified SHA-256, in hex: hashed once, as they came).
  // The model held already when the coordinator says it is the one.
  StatusOr<std::shared_ptr<const FlatModel>> FetchModel(int64_t version, std::string* digest);
  // Checks a reply marked `held` against what this site holds.
  Status HeldModelReply(const ChunkPieces& chunk, int64_t version) const;
  // `train_loss`: none for the initial model, and in a DP release. The
  // chunks are sent from `model`'s values where they lie: gRPC holds it
  // until it has sent them.
  Status SubmitUpdate(const v1::RoundTask& task, std::shared_ptr<const FlatModel> model,
                      int64_t num_examples, std::optional<double> train_loss, bool full_weights);
  // Streams `payload` in chunks with `meta` (task fields filled in here).
  Status SubmitPayload(const v1::RoundTask& task, std::shared_ptr<const std::string> payload,
                       v1::UpdateMeta meta);
  // One SubmitUpdate of `bytes` whose chunks `chunks` writes as frames
  // (WriteChunkFrames or WriteModelFrames) of data that `owner` keeps
  // alive; counted in stats_.
  using FrameWriter = std::function<bool(const ChunkFrame&)>;
  Status SubmitChunks(const v1::RoundTask& task, v1::UpdateMeta meta, uint64_t bytes,
                      std::shared_ptr<const void> owner,
                      const std::function<bool(v1::UpdateMeta, const FrameWriter&)>& chunks);
  Status SendSecAgg(const v1::RoundTask& task, v1::SecAggMessage msg);
  // A TRAIN or EVALUATE task with a SecAggSetup: starts this site's part
  // and advertises its keys (otherwise: nothing).
  Status StartSecure(const v1::RoundTask& task);
  // Version 0 must be the initial model this site builds itself from the
  // terms' model and seed: a coordinator cannot substitute its own start.
  // `digest`: ModelDigest of the model fetched.
  Status CheckInitialModel(int64_t version, const std::string& digest);
  // The learner's initial model's digest and schema (built once).
  Status KnowOwnModel();
  // The k this site suppresses below: max(terms, --min-cell).
  int MinCell() const;
  // What the terms, tightened by this site's options, allow `r`.
  ReleaseLimits Limits(const Release& r) const;
  void LogPrivacySpent(int64_t round) const;
  // Secure aggregation steps after TRAIN (SECAGG_SHARE, _MASK, _UNMASK).
  Status HandleSecureStep(const v1::RoundTask& task);
  // DP: clips the update and adds this site's noise, seeded by its key, the
  // round and the digest of the model trained from: a rerun of the same
  // round on the same model adds the same noise, any other release fresh noise.
  Status Privatize(const v1::RoundTask& task, const std::string& model_digest, FlatModel* delta);
  // A noise seed secret to everyone but this site (derived from its key),
  // fixed by `what` -- the release it noises -- within this study.
  StatusOr<crypto::SecretBytes> NoiseSeed(std::string_view context, const std::string& what) const;
  // The terms' audit noise for this task (none unless the terms say so).
  EvalNoise AuditNoise(const v1::RoundTask& task) const;
  // Progress, shared between the task loop and the heartbeat thread.
  void SetStage(const char* stage, int64_t round);
  void OnTrainProgress(const TrainProgress& p);
  void HeartbeatLoop(std::stop_token stop, std::chrono::milliseconds interval);

  EngineOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Federation::Stub> coordinator_;
  LearnerFactory make_learner_;
  std::optional<SiteGuard> guard_;  // loaded by Run()
  std::unique_ptr<Learner> learner_;
  std::string initial_digest_;  // of the model from the terms' seed, once known
  std::optional<TensorSchema> own_schema_;  // its schema: every model fetched must have it
  // The last model fetched and the SHA-256 it was verified against. The
  // coordinator is told of it (ModelRef.held_sha256) and sends only its
  // metadata when it is still the model asked for (a round's candidate,
  // evaluated, is the next round's global model); otherwise its storage is
  // filled with the new one instead of faulting in fresh pages.
  std::shared_ptr<FlatModel> held_;
  std::string held_sha256_;
  EvalOptions eval_options_;
  std::string site_id_;
  // The open secure TRAIN or EVALUATE task and the release it will be once
  // unmasked; what was released, on disk (never the same sum for another
  // set of survivors: the difference of two sums would be one site's input).
  std::unique_ptr<secagg::SecureSite> secure_;
  std::optional<Release> pending_;
  std::optional<SiteReleases> releases_;

  // Run's open task stream, Stop() and the counters, shared with other threads.
  mutable std::mutex mu_;
  grpc::ClientContext* stream_ctx_ = nullptr;  // guarded by mu_
  bool stopped_ = false;                       // guarded by mu_
  EngineStats stats_;                          // guarded by mu_
  // Adds to stats_ (under mu_).
  void Count(int64_t sent, int64_t late, int64_t bytes, std::chrono::steady_clock::duration spent);

  std::mutex progress_mu_;
  v1::HeartbeatRequest progress_;          // guarded by progress_mu_
  std::chrono::steady_clock::time_point last_progress_log_;
};

}  // namespace attune::site
