// The Federation gRPC service: thin. It authenticates the caller by its
// client-certificate CN, checks the study id, translates between protocol
// messages and domain types at the edge, and calls the RoundDriver, which
// knows nothing of gRPC. Errors cross back through ToGrpcStatus only.
//
// Every method is served from raw bytes (the constructor marks each one),
// so that nothing a caller sends is parsed before the caller is authorised
// by its certificate and the bytes are measured: each request or chunk is
// held to its method's byte bound and to the study's counts on the wire
// (wire.h CheckWireBounds) before protobuf builds it. Each call is watched
// (StreamWatch): a read or write that waits longer than the idle limit, or
// a transfer open longer than its total limit, cancels the call. An
// allocation failure inside a call refuses that call (RESOURCE_EXHAUSTED).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <semaphore>
#include <set>
#include <string>

#include <grpcpp/grpcpp.h>

#include "attune/common/status.h"
#include "attune/common/tls.h"
#include "attune/common/wire.h"
#include "attune/coordinator/round_driver.h"
#include "attune/coordinator/stream_watch.h"
#include "attune/v1/federation.grpc.pb.h"

namespace attune::coordinator {

struct ServiceOptions {
  // Model downloads, update uploads, evaluation reports and joins handled
  // at once; the others wait their turn (gRPC flow control holds their
  // bytes back at the sender). This bounds the coordinator's memory for
  // requests, whatever the number of sites. Each site has one at a time.
  int max_transfers = 4;
  // The longest one read or write of a call may wait (a caller that stops
  // sending or reading loses its call), and the longest a model or update
  // transfer may last (0: the study's round_deadline_s).
  std::chrono::milliseconds idle_limit{60'000};
  std::chrono::milliseconds transfer_limit{0};
};

class FederationService final : public v1::Federation::Service {
 public:
  FederationService(RoundDriver* driver, ServiceOptions options);

  // What one method may be sent.
  struct Limits {
    const char* rpc = "";
    size_t max_bytes = 4096;   // one request (or chunk), serialised
    WireBounds wire;           // counts on the wire
    bool operator_ok = false;  // the operator's certificate may call it
    bool counted = false;      // takes the caller's turn and a transfer slot
    bool transfer = false;     // a model or update stream: transfer_limit applies
  };

 private:
  // A server stream's writer: messages, and chunks whose data lies in
  // `owner`'s bytes, sent from there (referenced, not copied, until gRPC has
  // written them out).
  struct Writer {
    std::function<bool(const google::protobuf::Message&)> message;
    std::function<bool(const ChunkFrame&, const std::shared_ptr<const std::string>& owner)> frame;
    bool operator()(const google::protobuf::Message& m) const { return message(m); }
  };
  // The next chunk of an upload: false at the end of the stream.
  using ChunkReader = std::function<StatusOr<bool>(ChunkPieces*)>;

  // The methods, called by the raw handlers with parsed requests.
  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest& req, v1::JoinReply* reply);
  grpc::Status Subscribe(grpc::ServerContext* ctx, const v1::SiteHello& req, const Writer& write);
  grpc::Status FetchModel(grpc::ServerContext* ctx, const v1::ModelRef& req, const Writer& write);
  grpc::Status SubmitUpdate(grpc::ServerContext* ctx, const ChunkReader& read,
                            v1::Receipt* receipt);
  grpc::Status SubmitAudit(grpc::ServerContext* ctx, const v1::AuditReport& req,
                           v1::Receipt* receipt);
  grpc::Status Status(grpc::ServerContext* ctx, const v1::StatusRequest& req,
                      v1::StudyStatus* reply);
  grpc::Status Audit(grpc::ServerContext* ctx, const v1::AuditRequest& req,
                     v1::AuditReply* reply);
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest& req,
                         v1::HeartbeatReply* reply);
  grpc::Status SecAgg(grpc::ServerContext* ctx, const v1::SecAggMessage& req,
                      v1::Receipt* receipt);

  // Raw handlers: admit the caller (Admit), read and check its bytes
  // (ReadRequest), call the method and write its reply.
  template <typename Req, typename Resp>
  void ServeUnary(int index, Limits limits,
                  grpc::Status (FederationService::*method)(grpc::ServerContext*, const Req&,
                                                            Resp*));
  template <typename Req>
  void ServeStream(int index, Limits limits,
                   grpc::Status (FederationService::*method)(grpc::ServerContext*, const Req&,
                                                             const Writer&));
  void ServeUpload(int index, Limits limits);

  // A call let in: its caller, its watch and (when counted) its turn.
  class Transfer;
  struct Admission {
    std::string caller;
    std::unique_ptr<StreamWatch::Call> watch;
    std::unique_ptr<Transfer> transfer;
  };
  StatusOr<Admission> Admit(grpc::ServerContext* ctx, const Limits& limits);
  template <typename Stream>
  attune::Status ReadRequest(Stream* stream, StreamWatch::Call& watch, const Limits& limits,
                             google::protobuf::Message* out);
  // Refuse(), but a caller that went away (Cancelled) is not logged.
  grpc::Status RefuseRead(grpc::ServerContext* ctx, const std::string& caller, const char* rpc,
                          const attune::Status& s);
  // One message's bytes, checked against `limits` and parsed into `out`.
  attune::Status ReadMessage(const grpc::ByteBuffer& in, const Limits& limits,
                             google::protobuf::Message* out);
  // An update chunk, read where it lies in `in` (its slices, kept in
  // `slices` for as long as `out` is used), with ReadMessage's checks.
  attune::Status ReadChunk(const grpc::ByteBuffer& in, const Limits& limits,
                           std::vector<grpc::Slice>* slices, ChunkPieces* out);
  // Runs `call`, turning an allocation failure into RESOURCE_EXHAUSTED.
  grpc::Status Guarded(grpc::ServerContext* ctx, const char* rpc,
                       const std::function<grpc::Status()>& call);

  // The caller's site id, if its certificate is valid, the site admitted
  // (or, with `operator_ok`, the operator) and the study matches.
  StatusOr<std::string> Authorize(grpc::ServerContext* ctx, const std::string& study_id,
                                  bool operator_ok = false);
  // Logs the refusal (audit log included, at a bounded rate) and maps it
  // to a gRPC status.
  grpc::Status Refuse(grpc::ServerContext* ctx, const std::string& who, const char* rpc,
                      const attune::Status& s);

  // A transfer for the authorised `site`: one at a time per site (a second
  // model or update stream is refused with ResourceExhausted; with
  // `wait_turn`, as for reports and joins, it waits its turn), then a slot
  // of the max_transfers (waits for one, or the caller's cancellation).
  // Released when the returned guard goes.
  StatusOr<std::unique_ptr<Transfer>> BeginTransfer(grpc::ServerContext* ctx,
                                                    const std::string& site, bool wait_turn);

  RoundDriver* driver_;
  ServiceOptions options_;
  StreamWatch watch_;
  std::counting_semaphore<1024> transfers_;
  std::mutex transfer_mu_;
  std::condition_variable transfer_cv_;  // a site's turn given back
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
