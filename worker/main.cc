// attune-worker: one site's process in a federated study. It joins the
// coordinator over mutual TLS, loads the site directory for the study's
// model, and trains and evaluates on the coordinator's tasks until the study
// finishes. See README.md ("Run a study across machines").
//
// `attune-worker train` trains without a coordinator (worker/central.h),
// alone or as many ranks under mpirun (README, "Data-parallel training").
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/logging.h"
#include "attune/common/site_config.h"
#include "attune/common/tls.h"
#include "attune/worker/central.h"
#include "attune/site/engine.h"
#include "attune/worker/learner.h"
#include "attune/worker/site_ranks.h"

namespace {

int RunTrain(attune::worker::CentralOptions o) {
  o.progress = [](const attune::worker::TrainProgress& p) {
    if (p.batch == p.batches) {
      spdlog::info("epoch {}/{}: {} steps, mean loss {:.4f}", p.epoch, p.epochs, p.batches,
                   p.loss);
    }
  };
  auto result = attune::worker::TrainCentral(o);
  if (!result.ok()) {
    std::fprintf(stderr, "attune-worker train: error: %s\n",
                 std::string(result.status().message()).c_str());
    return 1;
  }
  if (result->rank == 0) {
    std::printf("trained on %lld patients with %d rank%s: final loss %.4f\nval  %s\ntest %s\n"
                "model: %s\n",
                static_cast<long long>(result->examples), result->world,
                result->world == 1 ? "" : "s", result->train_loss, result->val_metrics.c_str(),
                result->test_metrics.c_str(), result->model_path.c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  attune::site::EngineOptions client;
  attune::worker::LearnerOptions learner;
  std::string config_path, tls_dir, log_level = "info";
  double reconnect_s = 60;
  CLI::App app{
      "attune-worker: trains the study's model on this site's data; only model updates\n"
      "and aggregate statistics leave the site."};
  app.add_option("--config", config_path,
                 "this site's site.json from `attune provision` (study, coordinator, TLS\n"
                 "bundle); the flags below override its values");
  app.add_option("--coordinator", client.coordinator,
                 "the coordinator's host:port (required without --config)");
  app.add_option("--study-id", client.study_id,
                 "the study to join, as the coordinator's (required without --config)");
  app.add_option("--site-dir", learner.site_dir,
                 "this site's data directory (cohort.csv, ehr/, ...; required)");
  app.add_option("--tls-dir", tls_dir,
                 "this site's bundle from `attune provision` (ca.crt, cert.crt, key.pem;\n"
                 "required without --config)");
  app.add_option("--terms", client.terms_path,
                 "the study's signed terms, which every task is checked against (default:\n"
                 "study.terms in --tls-dir; newer terms from the coordinator are kept there)");
  app.add_option("--state-dir", client.state_dir,
                 "where the site records what it has released, so that a restarted worker\n"
                 "never releases one model's sums over other sites (default: state/ in\n"
                 "--tls-dir)");
  attune::SitePolicy flags_policy;  // with site.json's "policy": the strictest of each
  app.add_option("--min-cell", flags_policy.min_cell,
                 "no audit cell of fewer patients leaves this site (the study's audit.min_cell\n"
                 "if that is larger: a site may only tighten the study's terms)");
  app.add_option("--epsilon", flags_policy.epsilon,
                 "this site's own privacy budget: it sends no differentially private release\n"
                 "that would take its epsilon past the smaller of this and the terms' budget")
      ->check(CLI::PositiveNumber);
  app.add_option("--exclude-audit-column", flags_policy.exclude_audit_columns,
                 "an audit column this site never reports (repeatable): its cells leave the\n"
                 "site held back, as if too small");
  app.add_option("--threads", learner.threads, "LibTorch intra-op threads")->capture_default_str();
  app.add_option("--reconnect-timeout", reconnect_s,
                 "seconds to keep retrying an unreachable coordinator")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();

  attune::worker::CentralOptions central;
  CLI::App* train = app.add_subcommand(
      "train",
      "train without a coordinator on this site's (or a pooled) data: the centralised\n"
      "baseline; as many ranks under `mpirun -np N attune-worker train ...`");
  train->add_option("--config", central.study_path, "the study file (model and train.*)")
      ->required();
  train->add_option("--site-dir", central.site_dir, "the data directory (every rank reads it)")
      ->required();
  train->add_option("--out", central.out_dir,
                    "output directory: model.atnm, metrics.json, train.ckpt")
      ->required();
  train->add_option("--epochs", central.epochs,
                    "passes over the training split (default: rounds x train.local_epochs)");
  train->add_option("--checkpoint-every", central.checkpoint_every,
                    "write <out>/train.ckpt every N steps and at the end (0 = never); a rerun\n"
                    "resumes from it")
      ->capture_default_str();
  train->add_option("--threads", central.threads, "LibTorch intra-op threads per rank")
      ->capture_default_str();
  train->add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (train->parsed()) {
    if (auto s = attune::InitLogging("worker", log_level); !s.ok()) {
      std::fprintf(stderr, "attune-worker: error: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    return RunTrain(central);
  }

  auto fail = [](const attune::Status& s) {
    std::fprintf(stderr, "attune-worker: error: %s\n", std::string(s.message()).c_str());
    return 1;
  };
  if (auto s = attune::InitLogging("worker", log_level); !s.ok()) return fail(s);
  if (reconnect_s < 0) return fail(absl::InvalidArgumentError("--reconnect-timeout: must be >= 0"));

  // Under mpirun, rank 0 is the site's client and the other ranks train
  // with it (site_ranks.h); they need only the site directory.
  auto ranks = attune::worker::SiteRanks::Create();
  if (!ranks.ok()) return fail(ranks.status());
  if ((*ranks)->rank() != 0) {
    if (learner.site_dir.empty()) return fail(absl::InvalidArgumentError("--site-dir: required"));
    attune::Status s = (*ranks)->Serve(learner);
    if (!s.ok()) return fail(s);
    return 0;
  }
  client.ranks = (*ranks)->size();
  client.reconnect_timeout = std::chrono::milliseconds(static_cast<int64_t>(reconnect_s * 1000));

  // site.json gives what a flag does not.
  std::string site_id;
  if (!config_path.empty()) {
    auto site = attune::LoadSiteConfig(config_path);
    if (!site.ok()) return fail(site.status());
    if (client.coordinator.empty()) client.coordinator = site->coordinator;
    if (client.study_id.empty()) client.study_id = site->study_id;
    if (tls_dir.empty()) tls_dir = site->tls_dir;
    site_id = site->site_id;
    client.policy = site->policy;
  }
  client.policy = client.policy.Strictest(flags_policy);
  if (!client.policy.empty()) {
    spdlog::info("this site's policy: min_cell {}, epsilon {}, audit columns left out: {}",
                 client.policy.min_cell > 0 ? std::to_string(client.policy.min_cell)
                                            : "the study's",
                 client.policy.epsilon > 0 ? absl::StrCat(client.policy.epsilon) : "the study's",
                 client.policy.exclude_audit_columns.empty()
                     ? "none"
                     : absl::StrJoin(client.policy.exclude_audit_columns, ", "));
  }
  std::vector<std::string> missing;
  if (learner.site_dir.empty()) missing.push_back("--site-dir");
  if (client.coordinator.empty()) missing.push_back("--coordinator");
  if (client.study_id.empty()) missing.push_back("--study-id");
  if (tls_dir.empty()) missing.push_back("--tls-dir");
  if (!missing.empty()) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        absl::StrJoin(missing, ", "), ": required (or give --config site.json from "
        "`attune provision`)")));
  }

  auto tls = attune::site::LoadSiteBundle(tls_dir, &client);
  if (!tls.ok()) return fail(tls.status());
  if (!site_id.empty() && client.site_id != site_id) {
    // The coordinator knows a site by its certificate; a site.json beside
    // another site's bundle would join under the wrong name.
    return fail(absl::InvalidArgumentError(absl::StrCat(config_path, ": site_id: '", site_id,
                                                        "' but the certificate in ", tls_dir,
                                                        " is for '", client.site_id, "'")));
  }
  spdlog::info("connecting to {} for study '{}' (TLS bundle {}; {} rank{})", client.coordinator,
               client.study_id, tls_dir, client.ranks, client.ranks == 1 ? "" : "s");

  attune::site::SiteEngine fc(
      client, attune::MakeChannel(client.coordinator, *tls),
      (*ranks)->Factory(learner));
  attune::Status s = fc.Run();
  (*ranks)->Stop(s.ok());
  if (!s.ok()) return fail(s);
  return 0;
}
