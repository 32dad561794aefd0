// The federation client: joins the study, subscribes to the coordinator's
// task stream and carries out each task with the site's Learner (see
// NOTE [Round lifecycle] in coordinator/round_driver.h for the other side).
//
//   Join -> (load data for the study's model) -> Subscribe -> for each task:
//     INIT      build the initial model from the study seed, upload weights
//     TRAIN     fetch v_{r-1}, train locally, upload Δ and the sample count
//     EVALUATE  fetch v_r, upload sums (metrics + subgroup audit) per split
//     FINISH    return OK
// While joined, a background thread sends a Heartbeat with the site's
// progress (stage, round, epoch, batch) every JoinReply.heartbeat_interval_ms,
// so the coordinator knows the site is alive even during long local training.
// When the coordinator goes away (restart, network), the client reconnects
// with exponential backoff for up to `reconnect_timeout`; a refusal
// (certificate not on the roster, wrong study, TLS failure) ends it at once.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>

#include <grpcpp/grpcpp.h>

#include "attune/common/status.h"
#include "attune/common/tls.h"
#include "attune/v1/federation.grpc.pb.h"
#include "attune/worker/learner.h"

namespace attune::worker {

struct ClientOptions {
  std::string coordinator;  // host:port
  std::string study_id;
  std::chrono::milliseconds reconnect_timeout{60000};
  std::chrono::milliseconds rpc_timeout{600000};  // per model transfer
};

using LearnerFactory = std::function<StatusOr<std::unique_ptr<Learner>>(const ModelConfig&)>;


class FederationClient {
 public:
  FederationClient(ClientOptions options, std::shared_ptr<grpc::Channel> channel,
                   LearnerFactory make_learner);
  // Runs until the study finishes (OK) or cannot go on.
  Status Run();

 private:
  Status Session(bool* joined);
  Status HandleTask(const v1::RoundTask& task);
  StatusOr<FlatModel> FetchModel(int64_t version);
  Status SubmitUpdate(const v1::RoundTask& task, const FlatModel& payload, int64_t num_examples,
                      double train_loss, bool full_weights);
  // Progress, shared between the task loop and the heartbeat thread.
  void SetStage(const char* stage, int64_t round);
  void OnTrainProgress(const TrainProgress& p);
  void HeartbeatLoop(std::stop_token stop, std::chrono::milliseconds interval);

  ClientOptions options_;
  std::unique_ptr<v1::Federation::Stub> coordinator_;
  LearnerFactory make_learner_;
  std::unique_ptr<Learner> learner_;
  EvalOptions eval_options_;
  std::string site_id_;

  std::mutex progress_mu_;
  v1::HeartbeatRequest progress_;          // guarded by progress_mu_
  std::chrono::steady_clock::time_point last_progress_log_;
};

}  // namespace attune::worker
