// attune-coordinator: runs one federated study. See README.md ("Run a study
// across machines") and NOTE [Round lifecycle] in round_driver.h.
#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "attune/common/at_rest.h"
#include "attune/common/config.h"
#include "attune/common/logging.h"
#include "attune/common/store.h"
#include "attune/common/terms.h"
#include "attune/common/tls.h"
#include "attune/coordinator/round_driver.h"
#include "attune/coordinator/service.h"

namespace {

struct Options {
  std::string study_path;
  std::string listen = "127.0.0.1:7443";
  std::string data_dir;
  std::string tls_dir;
  std::string terms_path;
  std::string at_rest_key;
  std::string out_dir;
  std::string port_file;
  std::string log_level = "info";
  int max_transfers = 4;
  double idle_limit_s = 60;
  double transfer_limit_s = 0;
  bool serve_audits = false;
};

int Fail(const attune::Status& s) {
  std::fprintf(stderr, "attune-coordinator: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

// Signals only set a flag (async-signal-safe); a watcher thread turns it
// into an orderly shutdown.
volatile std::sig_atomic_t g_signal = 0;
extern "C" void OnSignal(int sig) { g_signal = sig; }

}  // namespace

int main(int argc, char** argv) {
  // Memory that does not grow with the number of sites: few malloc arenas
  // (one per stream thread would each keep freed chunk buffers), and chunk-
  // sized buffers always mmapped, so they go back to the system when freed.
  mallopt(M_ARENA_MAX, 2);
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  Options o;
  CLI::App app{
      "attune-coordinator: runs a federated study. Sites connect over mutual TLS; the\n"
      "coordinator drives the rounds, aggregates updates with the study's strategy, commits\n"
      "each round to its data directory (RocksDB + model files, with a hash-chained audit\n"
      "log) and writes summary.json, audit.json, audit.html and, at the end, model.atnm.\n"
      "Changes to the study file's roster and revoked lists take effect without a restart."};
  app.add_option("--study", o.study_path, "study configuration (JSON)")->required();
  app.add_option("--listen", o.listen, "address to serve on, host:port (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--data-dir", o.data_dir,
                 "RocksDB state directory; restarting on the same directory resumes the study")
      ->required();
  app.add_option("--tls-dir", o.tls_dir,
                 "the coordinator's bundle from `attune provision` (ca.crt, cert.crt, key.pem)")
      ->required();
  app.add_option("--terms", o.terms_path,
                 "the study's signed terms, forwarded to the sites with every task and checked\n"
                 "against --study at start (default: study.terms in --tls-dir; re-read when the\n"
                 "study's owner replaces it)");
  app.add_option("--at-rest-key", o.at_rest_key,
                 "encrypt the models and audit sums in --data-dir with AES-256-GCM under this\n"
                 "key file (`attune provision init` writes D/coordinator/at_rest.key); a data\n"
                 "directory made with a key opens only with it");
  app.add_option(
      "--out", o.out_dir,
      "where summary.json, audit.json, audit.html and model.atnm go (default: --data-dir)");
  app.add_option("--port-file", o.port_file, "write the bound port to this file once serving");
  app.add_option("--log-level", o.log_level, "debug, info, warn or error")->capture_default_str();
  app.add_option("--max-transfers", o.max_transfers,
                 "model downloads and update uploads streamed at once (bounds memory)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--idle-limit", o.idle_limit_s,
                 "seconds one read or write of a call may wait before the call is cut off "
                 "(a caller that stops sending or reading)")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  app.add_option("--transfer-limit", o.transfer_limit_s,
                 "seconds a model download or update upload may last (0: the study's "
                 "round_deadline_s)")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_flag("--serve-audits", o.serve_audits,
               "after the last round, keep the sites connected and serve audit-only rounds\n"
               "(`attune audit`) until SIGINT/SIGTERM, which then ends the study normally");
  CLI11_PARSE(app, argc, argv);
  if (o.out_dir.empty()) o.out_dir = o.data_dir;

  if (auto s = attune::InitLogging("coordinator", o.log_level); !s.ok()) return Fail(s);
  auto study = attune::LoadStudyConfig(o.study_path);
  if (!study.ok()) return Fail(study.status());
  auto tls = attune::LoadTlsBundle(o.tls_dir);
  if (!tls.ok()) return Fail(tls.status());
  std::error_code ec;
  std::filesystem::create_directories(o.data_dir, ec);
  if (ec) return Fail(absl::InternalError(o.data_dir + ": " + ec.message()));
  attune::StoreOptions store_options;
  if (!o.at_rest_key.empty()) {
    auto key = attune::at_rest::LoadKeyFile(o.at_rest_key);
    if (!key.ok()) return Fail(key.status());
    store_options.at_rest_key = std::move(*key);
  }
  auto store = attune::StateStore::Open(o.data_dir, study->study_id, std::move(store_options));
  if (!store.ok()) return Fail(store.status());
  attune::coordinator::DriverOptions dopt;
  dopt.out_dir = o.out_dir;
  dopt.spool_dir = (std::filesystem::path(o.data_dir) / "spool").string();
  dopt.study_path = o.study_path;
  dopt.terms_path = o.terms_path.empty()
                        ? (std::filesystem::path(o.tls_dir) / attune::kTermsFile).string()
                        : o.terms_path;
  dopt.ca_pem = tls->ca_pem;
  dopt.serve_audits = o.serve_audits;
  auto driver = attune::coordinator::RoundDriver::Create(*study, store->get(), dopt);
  if (!driver.ok()) return Fail(driver.status());
  auto server = attune::coordinator::StartServer(driver->get(), o.listen, *tls,
      {.max_transfers = o.max_transfers,
       .idle_limit = std::chrono::milliseconds(static_cast<int64_t>(o.idle_limit_s * 1000)),
       .transfer_limit =
           std::chrono::milliseconds(static_cast<int64_t>(o.transfer_limit_s * 1000))});
  if (!server.ok()) return Fail(server.status());
  spdlog::info("study '{}' serving on port {} ({} rounds, roster of {})", study->study_id,
               server->port, study->rounds, study->roster.size());
  if (!o.port_file.empty()) {
    auto s = attune::WriteFileAtomic(o.port_file, std::to_string(server->port) + "\n");
    if (!s.ok()) return Fail(s);
  }

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::atomic<bool> done{false};
  std::thread watcher([&] {
    while (!done.load()) {
      if (g_signal != 0) {
        spdlog::warn("signal {}: stopping (committed rounds are kept)", int(g_signal));
        (*driver)->Stop();  // a finished study serving audits ends normally
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });

  attune::Status result = (*driver)->Run();
  // Streams deliver what is queued (FINISH after the last round) and end;
  // then the server stops, giving in-flight calls up to 1 s (nothing in
  // flight matters any more: an interrupted round is redone on restart).
  (*driver)->Shutdown();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  (*driver)->FlushRefusals();
  done = true;
  watcher.join();
  if (absl::IsCancelled(result) && g_signal != 0) {
    std::fprintf(stderr,
                 "attune-coordinator: stopped by signal %d; committed rounds are kept, and a\n"
                 "restart on the same --data-dir resumes the study\n",
                 int(g_signal));
    return 128 + int(g_signal);
  }
  if (!result.ok()) return Fail(result);
  return 0;
}
