// Mutual-TLS credentials from a provisioned bundle directory
// (ca.crt, cert.crt, key.pem; see pki.h), and the one mapping between
// attune::Status and grpc::Status.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include "attune/common/status.h"
#include "attune/common/wire.h"

namespace attune {

struct TlsBundle {
  std::string ca_pem;
  std::string cert_pem;
  std::string key_pem;
};

// Reads <dir>/ca.crt, <dir>/cert.crt, <dir>/key.pem. Errors name the file
// and say how to make one (`attune provision`).
StatusOr<TlsBundle> LoadTlsBundle(const std::string& dir);

// Server credentials that require and verify a client certificate signed by
// the bundle's CA.
std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsBundle& b);
std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsBundle& b);

// The largest gRPC message either side sends or accepts. Updates and models
// travel in chunks of 1 MiB (kMaxChunkBytes, checked by Attune); a split's
// evaluation sums (AuditReport) are one message of four sums per feature
// per audit cell: about 1.4 MB for the MIMIC-IV study's 1026 features and
// 41 cells.
inline constexpr int kMaxMessageBytes = 32 << 20;

// A coordinator's transport settings on `builder`: kMaxMessageBytes both
// ways (anything larger is refused by gRPC itself), read buffers of at most
// 256 KiB per connection and BDP probing off, so that neither grows with
// the number of connected sites (an upload waiting for its transfer slot
// parks no more than gRPC's fixed 64 KiB window).
void ApplyServerTransportLimits(grpc::ServerBuilder* builder);

// A channel to a coordinator over mutual TLS, with Attune's message limit
// and quick reconnection backoff.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, const TlsBundle& tls);

// The verified client certificate's subject CN, or Unauthenticated.
StatusOr<std::string> PeerCommonName(const grpc::ServerContextBase& ctx);
// The peer's verified client certificate, PEM.
StatusOr<std::string> PeerCertificatePem(const grpc::ServerContextBase& ctx);

grpc::Status ToGrpcStatus(const Status& s);
Status FromGrpcStatus(const grpc::Status& s);

// A chunk's frame (WriteChunkFrames) as one gRPC message: head and tail
// copied (a few bytes), the data a slice that keeps `owner` alive until
// gRPC lets go of it -- or copied, when the frame is transient or there is
// no owner.
grpc::ByteBuffer ChunkFrameBuffer(const ChunkFrame& f, const std::shared_ptr<const void>& owner);

// A chunk read where it lies in a raw gRPC message (ReadChunkPieces over
// its slices, kept in `slices` for as long as `out` is used).
Status ReadChunkBuffer(const grpc::ByteBuffer& in, const WireBounds& bounds,
                       std::vector<grpc::Slice>* slices, ChunkPieces* out);

}  // namespace attune
