// attune-worker: one site's process in a federated study. It joins the
// coordinator over mutual TLS, loads the site directory for the study's
// model, and trains and evaluates on the coordinator's tasks until the study
// finishes. See README.md ("Run a study across machines").
#include <cstdio>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "attune/common/logging.h"
#include "attune/common/tls.h"
#include "attune/worker/client.h"
#include "attune/worker/learner.h"

int main(int argc, char** argv) {
  attune::worker::ClientOptions client;
  attune::worker::LearnerOptions learner;
  std::string tls_dir, log_level = "info";
  double reconnect_s = 60;
  CLI::App app{
      "attune-worker: trains the study's model on this site's data; only model updates\n"
      "and aggregate statistics leave the site."};
  app.add_option("--coordinator", client.coordinator, "the coordinator's host:port")->required();
  app.add_option("--study-id", client.study_id, "the study to join (must match the coordinator's)")
      ->required();
  app.add_option("--site-dir", learner.site_dir, "this site's data directory (cohort.csv, ehr/, ...)")
      ->required();
  app.add_option("--tls-dir", tls_dir,
                 "this site's bundle from `attune provision` (ca.crt, cert.crt, key.pem)")
      ->required();
  app.add_option("--threads", learner.threads, "LibTorch intra-op threads")->capture_default_str();
  app.add_option("--reconnect-timeout", reconnect_s,
                 "seconds to keep retrying an unreachable coordinator")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto fail = [](const attune::Status& s) {
    std::fprintf(stderr, "attune-worker: error: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  if (auto s = attune::InitLogging("worker", log_level); !s.ok()) return fail(s);
  if (reconnect_s < 0) return fail(absl::InvalidArgumentError("--reconnect-timeout: must be >= 0"));
  client.reconnect_timeout = std::chrono::milliseconds(static_cast<int64_t>(reconnect_s * 1000));
  auto tls = attune::LoadTlsBundle(tls_dir);
  if (!tls.ok()) return fail(tls.status());

  attune::worker::FederationClient fc(
      client, attune::worker::MakeChannel(client.coordinator, *tls),
      [&](const attune::ModelConfig& model) {
        return attune::worker::MakeTorchLearner(model, learner);
      });
  attune::Status s = fc.Run();
  if (!s.ok()) return fail(s);
  return 0;
}
