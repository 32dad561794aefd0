#include "attune/common/tls.h"

#include <grpcpp/create_channel.h>

#include "absl/strings/str_cat.h"
#include "attune/common/config.h"
#include "attune/common/pki.h"

namespace attune {

StatusOr<TlsBundle> LoadTlsBundle(const std::string& dir) {
  TlsBundle b;
  struct Part { const char* file; std::string* out; };
  for (const Part& p : {Part{kBundleCaFile, &b.ca_pem}, Part{kBundleCertFile, &b.cert_pem},
                        Part{kBundleKeyFile, &b.key_pem}}) {
    const std::string path = absl::StrCat(dir, "/", p.file);
    auto text = ReadFile(path);
    if (!text.ok()) {
      return Status(text.status().code(),
                    absl::StrCat("TLS bundle: ", text.status().message(),
                                 " (make bundles with `attune provision init`)"));
    }
    if (text->find("-----BEGIN") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("TLS bundle: ", path, ": not a PEM file"));
    }
    *p.out = *std::move(text);
  }
  return b;
}

std::shared_ptr<grpc::ServerCredentials> MakeServerCredentials(const TlsBundle& b) {
  grpc::SslServerCredentialsOptions opts(
      GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  opts.pem_root_certs = b.ca_pem;
  opts.pem_key_cert_pairs.push_back({b.key_pem, b.cert_pem});
  return grpc::SslServerCredentials(opts);
}

std::shared_ptr<grpc::ChannelCredentials> MakeChannelCredentials(const TlsBundle& b) {
  grpc::SslCredentialsOptions opts;
  opts.pem_root_certs = b.ca_pem;
  opts.pem_private_key = b.key_pem;
  opts.pem_cert_chain = b.cert_pem;
  return grpc::SslCredentials(opts);
}

StatusOr<std::string> PeerCommonName(const grpc::ServerContextBase& ctx) {
  auto auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("no verified client certificate");
  }
  auto cns = auth->FindPropertyValues("x509_common_name");
  if (cns.empty()) return absl::UnauthenticatedError("client certificate has no CN");
  return std::string(cns.front().data(), cns.front().size());
}

StatusOr<std::string> PeerCertificatePem(const grpc::ServerContextBase& ctx) {
  auto auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) {
    return absl::UnauthenticatedError("no verified client certificate");
  }
  auto pem = auth->FindPropertyValues("x509_pem_cert");
  if (pem.empty()) return absl::UnauthenticatedError("no client certificate in the session");
  return std::string(pem.front().data(), pem.front().size());
}

grpc::Status ToGrpcStatus(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

Status ReadChunkBuffer(const grpc::ByteBuffer& in, const WireBounds& bounds,
                       std::vector<grpc::Slice>* slices, ChunkPieces* out) {
  slices->clear();
  if (!in.Dump(slices).ok()) return absl::InvalidArgumentError("unreadable message");
  std::vector<std::string_view> pieces;
  pieces.reserve(slices->size());
  for (const auto& slice : *slices) {
    pieces.emplace_back(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return ReadChunkPieces(pieces, bounds, out);
}

grpc::ByteBuffer ChunkFrameBuffer(const ChunkFrame& f, const std::shared_ptr<const void>& owner) {
  grpc::Slice parts[3];
  size_t n = 0;
  parts[n++] = grpc::Slice(f.head);
  if (!f.data.empty() && (f.transient || !owner)) {
    parts[n++] = grpc::Slice(f.data.data(), f.data.size());
  } else if (!f.data.empty()) {
    auto* keep = new std::shared_ptr<const void>(owner);
    parts[n++] = grpc::Slice(
        const_cast<char*>(f.data.data()), f.data.size(),
        [](void* p) { delete static_cast<std::shared_ptr<const void>*>(p); }, keep);
  }
  if (!f.tail.empty()) parts[n++] = grpc::Slice(f.tail.data(), f.tail.size());
  return grpc::ByteBuffer(parts, n);
}

Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

void ApplyServerTransportLimits(grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder->SetMaxSendMessageSize(kMaxMessageBytes);
  builder->AddChannelArgument(GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 256 << 10);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target, const TlsBundle& tls) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Fail fast on a dead coordinator instead of waiting minutes between tries.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // The site's receive windows grow with BDP probes: at gRPC's fixed 64 KiB
  // a model download is a ping-pong of window updates, and this gRPC
  // (1.51) cannot fix a larger window without them. What the coordinator
  // sends is paced by its transfer slots, one chunk per write, so its
  // memory does not grow with these windows (attune-bench-coordinator).
  // The coordinator keeps its own windows fixed (service.cc): there,
  // uploads waiting for a slot would otherwise park megabytes each.
  args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 1);
  return grpc::CreateCustomChannel(target, MakeChannelCredentials(tls), args);
}

}  // namespace attune
