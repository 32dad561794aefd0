// attune-bench-coordinator: what the federation engine costs, with training
// switched off. For each (sites, parameters) it runs a real attune-coordinator
// process over mutual TLS on 127.0.0.1 with fake sites (experiments/fedsim:
// the site engine, every safety check included, with a synthetic learner)
// for one training round, and reports
//   - the coordinator's peak RSS (getrusage of the child: ru_maxrss),
//   - the round's wall time (TRAIN + aggregation + EVALUATE, from the round
//     record, whose seconds are taken as the commit begins), beside
//   - the time to move the same bytes (per site: the models it fetched in
//     the round -- one: its TRAIN model is the candidate it evaluated the
//     round before, held -- and an update up) over raw TLS 1.3 with the
//     same certificates, in the same run (OpenSSL sockets, one connection
//     per site, no gRPC; the median of three transfers),
//   - the same with the SHA-256 digests the protocol asks for (each model
//     a site receives, each update at both ends) hashed as the bytes move,
//   - the same bytes and digests over gRPC and nothing else (the gRPC
//     floor: the coordinator's server settings, the sites' channel, the
//     round's 1 MiB messages sent without copies and hashed where they
//     lie; no protocol, checks, spool, aggregation or evaluation),
//   - and raw TLS moving the model down twice per site (the baseline of
//     the README's earlier figures, when a site fetched its TRAIN model).
// The ratio round / raw TLS is the engine's overhead over the transport;
// round / (TLS + SHA) its overhead over what the protocol cannot skip;
// round / gRPC floor the engine's own, over what gRPC itself costs.
//
// With --secure it runs every case twice in the same run, plain FedAvg and
// secure aggregation (common/secagg.h), and reports both rounds' wall time,
// their ratio, the coordinator's peak RSS, and per site the bytes sent and
// the seconds spent on the update (plain: encoding, digests and sending;
// secure: keys, shares, quantising, masking and unmasking).
//
//   attune-bench-coordinator --coordinator-bin build/coordinator/attune-coordinator
//       [--sites 2,4,8,16,32] [--params 1000000] [--grid] [--secure] [--json out.json]
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/method_handler.h>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "attune/common/config.h"
#include "attune/common/provision.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/tls.h"
#include "attune/v1/federation.grpc.pb.h"
#include "fedsim/fake_site.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Case {
  int sites = 2;
  int64_t params = 1000000;
};

struct Result {
  Case c;
  double model_mib = 0;
  double peak_rss_mib = 0;
  double round_s = 0;
  double tls_s = 0;
  double tls_sha_s = 0;      // raw TLS with the protocol's digests
  double tls_twice_s = 0;    // raw TLS, the model down twice per site
  double grpc_floor_s = 0;   // gRPC with digests, nothing else (GrpcFloorSeconds)
  double round_down_models = 0;  // models each site fetched in the round
  double coordinator_cpu_s = 0;  // the coordinator process, its whole run
  double sites_cpu_s = 0;        // the fake sites (this process), their whole run
  double site_up_mib = 0;    // mean per site
  double site_update_s = 0;  // mean per site
};

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "attune-bench-coordinator: error: %s\n", why.c_str());
  std::exit(1);
}

void Check(const attune::Status& s, const char* what) {
  if (!s.ok()) Die(absl::StrCat(what, ": ", std::string(s.message())));
}

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Die("bind");
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// ------------------------------------------------------------ raw TLS baseline

using SslCtx = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;

SslCtx MakeCtx(const attune::TlsBundle& b, bool server) {
  SslCtx ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()), SSL_CTX_free);
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION);
  auto load = [](const std::string& pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    return bio;
  };
  BIO* cb = load(b.cert_pem);
  X509* cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  BIO_free(cb);
  BIO* kb = load(b.key_pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
  BIO_free(kb);
  BIO* ab = load(b.ca_pem);
  X509* ca = PEM_read_bio_X509(ab, nullptr, nullptr, nullptr);
  BIO_free(ab);
  if (!cert || !key || !ca) Die("raw TLS: cannot parse the bundle");
  SSL_CTX_use_certificate(ctx.get(), cert);
  SSL_CTX_use_PrivateKey(ctx.get(), key);
  X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), ca);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  X509_free(cert);
  EVP_PKEY_free(key);
  X509_free(ca);
  return ctx;
}

// Moves `bytes`, hashing them with SHA-256 as they go when `hash`.
void Pump(SSL* ssl, uint64_t bytes, bool send, bool hash) {
  std::vector<char> buf(1 << 20, 'x');
  attune::Sha256Stream sha;
  while (bytes > 0) {
    const int n = static_cast<int>(std::min<uint64_t>(bytes, buf.size()));
    const int r = send ? SSL_write(ssl, buf.data(), n) : SSL_read(ssl, buf.data(), n);
    if (r <= 0) Die("raw TLS: transfer failed");
    if (hash) sha.Update(std::string_view(buf.data(), static_cast<size_t>(r)));
    bytes -= static_cast<uint64_t>(r);
  }
  if (hash) (void)sha.Final();
}

// One site's share of a round: `down` models down, an update up. With
// `digests`, the hashing the protocol asks for besides TLS: a site checks
// the digest of each model it receives; an update is hashed by the site
// that sends it and by the coordinator that receives it. (The coordinator
// hashes each model it serves once, not per site: left out.)
void Exchange(SSL* ssl, uint64_t model, int down, bool server, bool digests) {
  for (int i = 0; i < down; ++i) Pump(ssl, model, /*send=*/server, /*hash=*/digests && !server);
  Pump(ssl, model, /*send=*/!server, /*hash=*/digests);
  SSL_shutdown(ssl);
  SSL_free(ssl);
}

// Each of `sites` clients downloads `down` x `model` bytes and uploads
// `model` bytes over its own mutual-TLS connection, all at once. Returns
// seconds.
double RawTlsSeconds(const fs::path& pki, int sites, uint64_t model, int down, bool digests) {
  auto server_bundle = attune::LoadTlsBundle((pki / "coordinator").string());
  auto client_bundle = attune::LoadTlsBundle((pki / "sites/bench-1").string());
  if (!server_bundle.ok() || !client_bundle.ok()) Die("raw TLS: bundles");
  SslCtx sctx = MakeCtx(*server_bundle, true), cctx = MakeCtx(*client_bundle, false);
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(lfd, 64) != 0) {
    Die("raw TLS: listen");
  }
  socklen_t len = sizeof(a);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &len);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < sites; ++i) {
    threads.emplace_back([&] {  // server side of one connection
      int fd = accept(lfd, nullptr, nullptr);
      SSL* ssl = SSL_new(sctx.get());
      SSL_set_fd(ssl, fd);
      if (SSL_accept(ssl) != 1) Die("raw TLS: accept");
      Exchange(ssl, model, down, /*server=*/true, digests);
      close(fd);
    });
    threads.emplace_back([&] {  // a site
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) Die("raw TLS: connect");
      SSL* ssl = SSL_new(cctx.get());
      SSL_set_fd(ssl, fd);
      if (SSL_connect(ssl) != 1) Die("raw TLS: handshake");
      Exchange(ssl, model, down, /*server=*/false, digests);
      close(fd);
    });
  }
  for (auto& t : threads) t.join();
  close(lfd);
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---------------------------------------------------------- gRPC floor
//
// The least any engine on gRPC does with the round's bytes: the
// coordinator's TLS credentials and server settings, the sites' channel
// (MakeChannel), the same 1 MiB messages on the same two methods, each
// sent from one copy (the messages are slices of a payload, as the
// coordinator serves its model) and hashed where it lies on receipt, with
// the digests of the TLS + SHA baseline -- and nothing else: no protocol
// fields, no parsing, no checks, no spool, no aggregation, no evaluation.
// What a round costs beyond this is the engine's own.

constexpr char kFetchMethod[] = "/attune.v1.Federation/FetchModel";
constexpr char kSubmitMethod[] = "/attune.v1.Federation/SubmitUpdate";
constexpr size_t kFloorChunk = size_t{1} << 20;

void HashSlices(const grpc::ByteBuffer& in, attune::Sha256Stream* sha) {
  std::vector<grpc::Slice> slices;
  if (!in.Dump(&slices).ok()) Die("gRPC floor: a message");
  for (const grpc::Slice& s : slices) {
    sha->Update(std::string_view(reinterpret_cast<const char*>(s.begin()), s.size()));
  }
}

// Messages of `payload`, kFloorChunk bytes each, as slices that do not copy
// it (it outlives every call).
grpc::ByteBuffer FloorMessage(const std::string& payload, size_t off) {
  grpc::Slice s(const_cast<char*>(payload.data()) + off,
                std::min(kFloorChunk, payload.size() - off), grpc::Slice::STATIC_SLICE);
  return grpc::ByteBuffer(&s, 1);
}

class FloorService final : public attune::v1::Federation::Service {
 public:
  // `uploaded` is called as each upload ends.
  FloorService(const std::string* model, std::function<void()> uploaded) {
    using Split = grpc::ServerSplitStreamer<grpc::ByteBuffer, grpc::ByteBuffer>;
    MarkMethodStreamed(2, new grpc::internal::SplitServerStreamingHandler<grpc::ByteBuffer,
                                                                          grpc::ByteBuffer>(
                              [model](grpc::ServerContext*, Split* stream) {
                                grpc::ByteBuffer ref;
                                stream->Read(&ref);
                                for (size_t off = 0; off < model->size(); off += kFloorChunk) {
                                  if (!stream->Write(FloorMessage(*model, off))) break;
                                }
                                return grpc::Status::OK;
                              }));
    using Bidi = grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;
    MarkMethodStreamed(
        3, new grpc::internal::BidiStreamingHandler<FloorService, grpc::ByteBuffer,
                                                    grpc::ByteBuffer>(
               [uploaded](FloorService*, grpc::ServerContext*, Bidi* stream) {
                 attune::Sha256Stream sha;  // the coordinator checks each update's digest
                 grpc::ByteBuffer in;
                 while (stream->Read(&in)) HashSlices(in, &sha);
                 (void)sha.Final();
                 grpc::Slice none("");
                 stream->Write(grpc::ByteBuffer(&none, 1));
                 uploaded();
                 return grpc::Status::OK;
               },
               this));
  }
};

// The floor's server, in a process of its own as the coordinator is (the
// bench run as `attune-bench-coordinator --floor-server PKI BYTES SITES
// PORT_FILE`, through the Launcher): serves a model of BYTES, writes its
// port to PORT_FILE once it listens, and exits once SITES uploads are in.
int ServeFloor(const fs::path& pki, uint64_t model_bytes, int sites, const fs::path& port_file) {
  auto bundle = attune::LoadTlsBundle((pki / "coordinator").string());
  if (!bundle.ok()) Die("gRPC floor: the coordinator's bundle");
  const std::string model(model_bytes, 'x');
  std::mutex mu;
  std::condition_variable cv;
  int uploads = 0;
  FloorService service(&model, [&] {
    std::lock_guard<std::mutex> lock(mu);
    ++uploads;
    cv.notify_all();
  });
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", attune::MakeServerCredentials(*bundle), &port);
  builder.RegisterService(&service);
  attune::ApplyServerTransportLimits(&builder);  // as the coordinator's
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) Die("gRPC floor: cannot listen");
  {
    const fs::path tmp = port_file.string() + ".tmp";
    std::ofstream(tmp) << port;
    fs::rename(tmp, port_file);
  }
  {
    std::unique_lock<std::mutex> lock(mu);
    if (!cv.wait_for(lock, std::chrono::minutes(30), [&] { return uploads >= sites; })) {
      Die("gRPC floor: the uploads did not all arrive");
    }
  }
  server->Shutdown();
  return 0;
}

// Waits (bounded) for a server's port file; the port.
int AwaitPort(const fs::path& port_file, const std::string& what) {
  const auto by = Clock::now() + std::chrono::seconds(60);
  while (!fs::exists(port_file) || fs::file_size(port_file) == 0) {
    if (Clock::now() > by) Die(what + " did not start");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int port = 0;
  std::ifstream(port_file) >> port;
  return port;
}

// --------------------------------------------------------------- the engine

// Starts coordinators on the bench's behalf. Linux carries a process's peak
// RSS across exec from the address space it replaced, so a coordinator
// spawned by this (by then large) process would report the bench's peak,
// not its own. The launcher is forked at the start of main(), while the
// bench is small: it reads a command line (NUL-separated arguments, then an
// empty one) from a pipe, runs it with stdout and stderr to the log file
// given first, and answers with the exit status and ru_maxrss in KiB.
class Launcher {
 public:
  Launcher() {
    int to[2], from[2];
    if (pipe(to) != 0 || pipe(from) != 0) Die("launcher pipes");
    pid_ = fork();
    if (pid_ < 0) Die("fork launcher");
    if (pid_ == 0) {
      close(to[1]);
      close(from[0]);
      Serve(to[0], from[1]);
      _exit(0);
    }
    close(to[0]);
    close(from[1]);
    out_ = to[1];
    in_ = from[0];
  }
  ~Launcher() {
    close(out_);
    close(in_);
    waitpid(pid_, nullptr, 0);
  }
  struct Exit {
    int status = -1;
    long peak_rss_kib = 0;
    double cpu_s = 0;  // user + system
  };
  // Runs `args` (log file first) to completion.
  Exit Run(const std::vector<std::string>& args) {
    std::string msg;
    for (const auto& a : args) msg.append(a).push_back('\0');
    msg.push_back('\0');
    if (write(out_, msg.data(), msg.size()) != static_cast<ssize_t>(msg.size())) Die("launcher");
    long reply[3];
    if (read(in_, reply, sizeof(reply)) != sizeof(reply)) Die("launcher died");
    return {static_cast<int>(reply[0]), reply[1], reply[2] / 1e6};
  }

 private:
  static void Serve(int in, int out) {
    std::string buf;
    char c;
    while (read(in, &c, 1) == 1) {
      buf.push_back(c);
      if (buf.size() < 2 || buf[buf.size() - 1] != '\0' || buf[buf.size() - 2] != '\0') continue;
      std::vector<std::string> args;
      for (size_t i = 0; i + 1 < buf.size(); i = buf.find('\0', i) + 1) args.push_back(buf.c_str() + i);
      buf.clear();
      std::vector<char*> argv;
      for (size_t i = 1; i < args.size(); ++i) argv.push_back(args[i].data());
      argv.push_back(nullptr);
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      posix_spawn_file_actions_addopen(&fa, 1, args[0].c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&fa, 1, 2);
      pid_t pid = 0;
      long reply[3] = {-1, 0, 0};  // status, ru_maxrss KiB, CPU microseconds
      if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) == 0) {
        int status = 0;
        rusage usage{};
        wait4(pid, &status, 0, &usage);
        reply[0] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        reply[1] = usage.ru_maxrss;
        reply[2] = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000L +
                   usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
      }
      posix_spawn_file_actions_destroy(&fa);
      if (write(out, reply, sizeof(reply)) != sizeof(reply)) return;
    }
  }

  pid_t pid_ = -1;
  int out_ = -1, in_ = -1;
};

// Like RawTlsSeconds, over gRPC, with the server in a process of its own
// (ServeFloor): each site fetches `down` models (hashing them) and uploads
// one (hashed as it is sent), all at once; timed from when the server
// listens to the last upload's end.
double GrpcFloorSeconds(Launcher& launcher, const fs::path& dir, int sites, uint64_t model_bytes,
                        int down) {
  auto client_bundle = attune::LoadTlsBundle((dir / "pki/sites/bench-1").string());
  if (!client_bundle.ok()) Die("gRPC floor: the site's bundle");
  const fs::path port_file = dir / "floor-port";
  fs::remove(port_file);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  Launcher::Exit exit;
  std::thread server([&] {
    exit = launcher.Run({(dir / "floor.log").string(), self, "--floor-server",
                         (dir / "pki").string(), absl::StrCat(model_bytes), absl::StrCat(sites),
                         port_file.string()});
  });
  const std::string addr = absl::StrCat("127.0.0.1:", AwaitPort(port_file, "the gRPC floor server"));
  const std::string update(model_bytes, 'u');
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < sites; ++i) {
    threads.emplace_back([&] {
      std::shared_ptr<grpc::Channel> channel = attune::MakeChannel(addr, *client_bundle);
      for (int d = 0; d < down; ++d) {
        grpc::ClientContext ctx;
        const grpc::internal::RpcMethod method(kFetchMethod,
                                               grpc::internal::RpcMethod::SERVER_STREAMING, channel);
        grpc::Slice empty("");
        std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
            grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
                channel.get(), method, &ctx, grpc::ByteBuffer(&empty, 1)));
        attune::Sha256Stream sha;  // a site checks each model's digest
        grpc::ByteBuffer in;
        uint64_t got = 0;
        while (reader->Read(&in)) {
          got += in.Length();
          HashSlices(in, &sha);
        }
        (void)sha.Final();
        if (!reader->Finish().ok() || got != model_bytes) Die("gRPC floor: download");
      }
      grpc::ClientContext ctx;
      const grpc::internal::RpcMethod method(kSubmitMethod,
                                             grpc::internal::RpcMethod::CLIENT_STREAMING, channel);
      grpc::ByteBuffer reply;
      std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
          grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel.get(), method,
                                                                        &ctx, &reply));
      attune::Sha256Stream sha;  // a site announces its update's digest
      for (size_t off = 0; off < update.size(); off += kFloorChunk) {
        sha.Update(std::string_view(update).substr(off, kFloorChunk));
        if (!writer->Write(FloorMessage(update, off))) break;
      }
      (void)sha.Final();
      writer->WritesDone();
      if (!writer->Finish().ok()) Die("gRPC floor: upload");
    });
  }
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  server.join();
  if (exit.status != 0) Die("the gRPC floor server failed; see " + (dir / "floor.log").string());
  return seconds;
}

Result RunCase(Launcher& launcher, const Case& c, const std::string& coordinator_bin,
               const fs::path& work, bool secure, bool raw_tls) {
  Result r;
  r.c = c;
  const fs::path dir = work / absl::StrCat("s", c.sites, "-p", c.params, secure ? "-secure" : "");
  fs::remove_all(dir);
  fs::create_directories(dir);
  json base = {{"rounds", 1},          {"min_sites", c.sites}, {"join_timeout_s", 120},
               {"round_deadline_s", 1800}, {"heartbeat_timeout_s", 60},
               {"max_update_norm", 1e12}, {"secure_aggregation", secure},
               {"audit", {{"columns", json::array()}}}};  // fake sites report no subgroups
  {
    std::ofstream(dir / "base.json") << base.dump();
  }
  attune::InitOptions init;
  init.out_dir = (dir / "pki").string();
  init.study_id = "bench";
  for (int i = 1; i <= c.sites; ++i) init.sites.push_back(absl::StrCat("bench-", i));
  init.base_study_path = (dir / "base.json").string();
  Check(attune::InitStudy(init).status(), "provision");

  const int port = FreePort();
  const std::string addr = absl::StrCat("127.0.0.1:", port);
  const std::string log = (dir / "coordinator.log").string();
  std::vector<std::string> args = {log, coordinator_bin, "--study", (dir / "pki/study.json").string(),
                                   "--listen", addr, "--data-dir", (dir / "state").string(),
                                   "--tls-dir", (dir / "pki/coordinator").string(), "--out",
                                   (dir / "out").string(), "--log-level", "warn",
                                   "--port-file", (dir / "port").string()};
  Launcher::Exit exit;
  std::thread coordinator([&] { exit = launcher.Run(args); });
  // The sites start once it listens (it writes the port file then).
  AwaitPort(dir / "port", "the coordinator (see " + log + ")");

  attune::fedsim::FakeSiteOptions opts;
  opts.study_id = "bench";
  opts.init_schema = attune::TensorSchema{{{"w", {c.params}, "f32"}}};
  std::vector<std::unique_ptr<attune::fedsim::FakeSite>> sites;
  std::vector<attune::Status> results(c.sites);
  for (int i = 1; i <= c.sites; ++i) {
    opts.seed = 100 + i;
    auto site = attune::fedsim::FakeSite::Open(
        (dir / "pki/sites" / absl::StrCat("bench-", i)).string(), addr, opts);
    Check(site.status(), "site bundle");
    sites.push_back(*std::move(site));
  }
  const double cpu_before = ProcessCpuSeconds();
  std::vector<std::thread> threads;
  for (int i = 0; i < c.sites; ++i) threads.emplace_back([&, i] { results[i] = sites[i]->Run(); });
  coordinator.join();
  for (auto& t : threads) t.join();
  const double sites_cpu = ProcessCpuSeconds() - cpu_before;
  if (exit.status != 0) Die("coordinator failed; see " + log);
  for (const auto& s : results) Check(s, "fake site");

  json summary = json::parse(std::ifstream(dir / "out/summary.json"));
  r.round_s = summary["history"][1]["seconds"].get<double>();
  r.peak_rss_mib = exit.peak_rss_kib / 1024.0;
  r.coordinator_cpu_s = exit.cpu_s;
  r.sites_cpu_s = sites_cpu;
  const uint64_t model_bytes = static_cast<uint64_t>(c.params) * sizeof(float);
  r.model_mib = model_bytes / 1048576.0;
  int64_t down = 0;
  for (const auto& s : sites) {
    const attune::site::EngineStats st = s->stats();
    r.site_up_mib += st.bytes_up / 1048576.0 / c.sites;
    r.site_update_s += st.update_seconds / c.sites;
    down += st.bytes_down;
  }
  // What round 1 fetched: every site fetches the initial model once to
  // evaluate it in round 0; the rest is round 1's (its TRAIN model is that
  // one, held, and its candidate).
  r.round_down_models =
      static_cast<double>(down) / c.sites / static_cast<double>(model_bytes) - 1.0;
  if (raw_tls) {
    // The median of three: one transfer of a few hundred MiB on a shared
    // 2-core machine varies by half from run to run.
    auto median_of_3 = [&](int down, bool digests) {
      std::vector<double> tls;
      for (int i = 0; i < 3; ++i) {
        tls.push_back(RawTlsSeconds(dir / "pki", c.sites, model_bytes, down, digests));
      }
      std::sort(tls.begin(), tls.end());
      return tls[1];
    };
    // The same bytes as the round moved (models down, rounded), then the
    // bytes of a round that fetches the model twice (the earlier baseline).
    const int round_down = static_cast<int>(std::lround(r.round_down_models));
    r.tls_s = median_of_3(round_down, false);
    r.tls_sha_s = median_of_3(round_down, true);
    r.tls_twice_s = round_down == 2 ? r.tls_s : median_of_3(2, false);
    std::vector<double> floor;
    for (int i = 0; i < 3; ++i) {
      floor.push_back(GrpcFloorSeconds(launcher, dir, c.sites, model_bytes, round_down));
    }
    std::sort(floor.begin(), floor.end());
    r.grpc_floor_s = floor[1];
  }
  fs::remove_all(dir);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 6 && std::string(argv[1]) == "--floor-server") {  // GrpcFloorSeconds' server
    return ServeFloor(argv[2], std::stoull(argv[3]), std::stoi(argv[4]), argv[5]);
  }
  spdlog::set_level(spdlog::level::warn);  // the fake sites' engines: their warnings only
  std::string coordinator_bin, json_out, work = (fs::temp_directory_path() / "attune-bench").string();
  std::vector<int> site_counts = {2, 4, 8, 16, 32};
  std::vector<int64_t> params = {1000000};
  bool grid = false, secure = false, no_baseline = false;
  CLI::App app{
      "attune-bench-coordinator: the coordinator's peak RSS and round overhead with training\n"
      "off, beside raw TLS and a bare gRPC server (the gRPC floor) moving the same bytes in\n"
      "the same run"};
  app.add_option("--coordinator-bin", coordinator_bin, "the attune-coordinator binary")->required();
  app.add_option("--sites", site_counts, "site counts")->delimiter(',')->capture_default_str();
  app.add_option("--params", params, "model sizes (float32 parameters)")->delimiter(',');
  app.add_flag("--grid", grid,
               "the README's grid: 2..32 sites at 1M and 10M parameters, and 1M/10M/100M at 2 sites");
  app.add_flag("--secure", secure,
               "run each case plain and with secure aggregation, and compare them; with "
               "--grid: 4..32 sites at 1M and 10M parameters, and 4 and 8 sites at 25M");
  app.add_flag("--no-baseline", no_baseline,
               "run the rounds only, without the TLS and gRPC baselines (for profiling a round)");
  app.add_option("--json", json_out, "also write the results here");
  app.add_option("--work-dir", work, "scratch directory (needs ~4x the largest model on disk)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  Launcher launcher;  // before anything large is allocated

  std::vector<Case> cases;
  if (grid && secure) {
    for (int64_t p : {int64_t{1000000}, int64_t{10000000}}) {
      for (int s : {4, 8, 16, 32}) cases.push_back({s, p});
    }
    for (int s : {4, 8}) cases.push_back({s, 25000000});
  } else if (grid) {
    for (int64_t p : {int64_t{1000000}, int64_t{10000000}}) {
      for (int s : {2, 4, 8, 16, 32}) cases.push_back({s, p});
    }
    cases.push_back({2, 100000000});
  } else {
    for (int64_t p : params) {
      for (int s : site_counts) cases.push_back({s, p});
    }
  }
  if (secure) {
    std::printf("%6s %10s | %8s %8s %6s | %9s %9s | %10s %10s | %9s %9s\n", "sites", "params",
                "plain s", "secure s", "ratio", "plain RSS", "secure RSS", "plain MiB",
                "secure MiB", "plain s", "secure s");
    std::printf("%6s %10s | %24s | %19s | %21s | %19s\n", "", "", "round (wall)",
                "coordinator MiB", "sent per site", "per site (update)");
    std::fflush(stdout);
    json all = json::array();
    for (const Case& c : cases) {
      const Result p = RunCase(launcher, c, coordinator_bin, work, false, false);
      const Result s = RunCase(launcher, c, coordinator_bin, work, true, false);
      std::printf("%6d %10lld | %8.2f %8.2f %6.2f | %9.1f %9.1f | %10.2f %10.2f | %9.3f %9.3f\n",
                  c.sites, static_cast<long long>(c.params), p.round_s, s.round_s,
                  s.round_s / p.round_s, p.peak_rss_mib, s.peak_rss_mib, p.site_up_mib,
                  s.site_up_mib, p.site_update_s, s.site_update_s);
      std::fflush(stdout);
      all.push_back({{"sites", c.sites}, {"params", c.params}, {"plain_round_s", p.round_s},
                     {"secure_round_s", s.round_s}, {"plain_rss_mib", p.peak_rss_mib},
                     {"secure_rss_mib", s.peak_rss_mib}, {"plain_site_mib", p.site_up_mib},
                     {"secure_site_mib", s.site_up_mib}, {"plain_site_s", p.site_update_s},
                     {"secure_site_s", s.site_update_s}});
    }
    if (!json_out.empty()) std::ofstream(json_out) << all.dump(2) << "\n";
    return 0;
  }
  std::printf("%6s %10s %7s %8s %6s | %7s %5s | %7s %6s | %7s %6s | %7s %6s %6s | %7s %6s | "
              "%6s %6s\n",
              "sites", "params", "model", "RSS MiB", "/model", "round s", "down", "TLS s", "ratio",
              "+SHA s", "ratio", "gRPC s", "ratio", "/TLS", "2 down", "ratio", "coord", "sites");
  std::printf("%6s %10s %7s %8s %6s | %7s %5s | %14s | %14s | %21s | %14s | %13s\n", "", "",
              "MiB", "coord", "", "", "/site", "raw TLS", "TLS + digests",
              "gRPC + digests (floor)", "TLS, down 2x", "CPU s (run)");
  std::fflush(stdout);
  json all = json::array();
  for (const Case& c : cases) {
    Result r = RunCase(launcher, c, coordinator_bin, work, false, !no_baseline);
    std::printf("%6d %10lld %7.1f %8.1f %6.2f | %7.2f %5.2f | %7.2f %6.2f | %7.2f %6.2f | %7.2f "
                "%6.2f %6.2f | %7.2f %6.2f | %6.2f %6.2f\n",
                c.sites, static_cast<long long>(c.params), r.model_mib, r.peak_rss_mib,
                r.peak_rss_mib / r.model_mib, r.round_s, r.round_down_models, r.tls_s,
                r.round_s / r.tls_s, r.tls_sha_s, r.round_s / r.tls_sha_s, r.grpc_floor_s,
                r.round_s / r.grpc_floor_s, r.grpc_floor_s / r.tls_s, r.tls_twice_s,
                r.round_s / r.tls_twice_s, r.coordinator_cpu_s, r.sites_cpu_s);
    std::fflush(stdout);
    all.push_back({{"sites", c.sites},
                   {"params", c.params},
                   {"model_mib", r.model_mib},
                   {"peak_rss_mib", r.peak_rss_mib},
                   {"round_s", r.round_s},
                   {"models_down_per_site", r.round_down_models},
                   {"raw_tls_s", r.tls_s},
                   {"raw_tls_sha256_s", r.tls_sha_s},
                   {"raw_tls_down_twice_s", r.tls_twice_s},
                   {"grpc_sha256_floor_s", r.grpc_floor_s},
                   {"coordinator_cpu_s", r.coordinator_cpu_s},
                   {"sites_cpu_s", r.sites_cpu_s}});
  }
  if (!json_out.empty()) std::ofstream(json_out) << all.dump(2) << "\n";
  return 0;
}
