// The Federation gRPC service: thin. It authenticates the caller by its
// client-certificate CN, checks the study id, translates between protocol
// messages and domain types at the edge, and calls the RoundDriver, which
// knows nothing of gRPC. Errors cross back through ToGrpcStatus only.
#pragma once

#include <memory>
#include <mutex>
#include <semaphore>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>

#include "attune/common/status.h"
#include "attune/common/tls.h"
#include "attune/coordinator/round_driver.h"
#include "attune/v1/federation.grpc.pb.h"

namespace attune::coordinator {

struct ServiceOptions {
  // Model downloads and update uploads streamed at once; the others wait
  // their turn (gRPC flow control holds their bytes back at the sender).
  // This bounds the coordinator's memory for streams, whatever the number
  // of sites. Sites are authenticated: one that stalls a transfer can be
  // revoked.
  int max_transfers = 4;
};

class FederationService final : public v1::Federation::Service {
 public:
  FederationService(RoundDriver* driver, ServiceOptions options)
      : driver_(driver), transfers_(options.max_transfers) {}

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* req,
                    v1::JoinReply* reply) override;
  grpc::Status Subscribe(grpc::ServerContext* ctx, const v1::SiteHello* req,
                         grpc::ServerWriter<v1::RoundTask>* writer) override;
  grpc::Status FetchModel(grpc::ServerContext* ctx, const v1::ModelRef* req,
                          grpc::ServerWriter<v1::Chunk>* writer) override;
  grpc::Status SubmitUpdate(grpc::ServerContext* ctx, grpc::ServerReader<v1::Chunk>* reader,
                            v1::Receipt* receipt) override;
  grpc::Status SubmitAudit(grpc::ServerContext* ctx, const v1::AuditReport* req,
                           v1::Receipt* receipt) override;
  grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest* req,
                      v1::StudyStatus* reply) override;
  grpc::Status Audit(grpc::ServerContext* ctx, const v1::AuditRequest* req,
                     v1::AuditReply* reply) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatReply* reply) override;
  grpc::Status SecAgg(grpc::ServerContext* ctx, const v1::SecAggMessage* req,
                      v1::Receipt* receipt) override;

 private:
  // The caller's site id, if its certificate is valid, the site admitted
  // (or, with `operator_ok`, the operator) and the study matches.
  StatusOr<std::string> Authorize(grpc::ServerContext* ctx, const std::string& study_id,
                                  bool operator_ok = false);
  // Logs the refusal (audit log included) and maps it to a gRPC status.
  grpc::Status Refuse(grpc::ServerContext* ctx, const std::string& who, const char* rpc,
                      const attune::Status& s);

  // A transfer (a model fetched or an update sent) for the authorised
  // `site`: one at a time per site (ResourceExhausted for a second), then
  // a slot of the max_transfers (waits for one, or the caller's
  // cancellation). Released when the returned guard goes.
  class Transfer;
  StatusOr<std::unique_ptr<Transfer>> BeginTransfer(grpc::ServerContext* ctx,
                                                    const std::string& site);

  RoundDriver* driver_;
  std::counting_semaphore<1024> transfers_;
  std::mutex transfer_mu_;
  std::set<std::string> transferring_;  // sites with a transfer open; guarded by transfer_mu_
};

// A running server on `listen` (host:port; port 0 picks a free one).
struct RunningServer {
  std::unique_ptr<FederationService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};
StatusOr<RunningServer> StartServer(RoundDriver* driver, const std::string& listen,
                                    const TlsBundle& tls, ServiceOptions options = {});

}  // namespace attune::coordinator
