// attune: study tools.
//   attune provision init      make a study directory: CA, bundles, study.json
//   attune provision add-site  issue a bundle for a new site, add it to the roster
//   attune provision revoke    refuse a site's certificate from now on
//   attune provision sign      re-sign the study's terms (terms.h)
//   attune status              a running study: rounds, sites (alive, last seen), metrics
//   attune audit               an audit-only round: audit.json + audit.html
//   attune audit render        audit.html again from an audit.json
//   attune log verify|show     the coordinator's hash-chained audit log
//   attune synth               generate a synthetic multi-site cohort
//   attune explain             what a model attended to, for chosen patients
//   attune import              a public dataset → site directories
// The work is done in common/ (provision.h), experiments/ (synth.h) and
// worker/ (explain.h).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "attune/common/config.h"
#include "attune/common/provision.h"
#include "attune/common/site_config.h"
#include "attune/worker/explain.h"
#include "importers/importers.h"
#include "operate.h"
#include "synth/synth.h"

namespace {

namespace fs = std::filesystem;

int Fail(const attune::Status& s) {
  std::fprintf(stderr, "attune: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

std::string StudyPath(const std::string& dir) { return (fs::path(dir) / attune::kStudyFile).string(); }

// add-site, revoke and sign change study.json and re-sign the terms; the
// coordinator re-reads both.
void PrintReloadNote(const std::string& dir) {
  std::printf(
      "The study terms were re-signed and written to every bundle in %s. A coordinator\n"
      "running with --study %s picks this up without a restart once its copy of\n"
      "%s is replaced by the new one (on this machine it already is); sites get the\n"
      "new terms with their next task.\n",
      dir.c_str(), StudyPath(dir).c_str(),
      (fs::path(dir) / "coordinator" / attune::kTermsFile).c_str());
}

int RunInit(const attune::InitOptions& options, bool coordinator_given) {
  auto result = attune::InitStudy(options);
  if (!result.ok()) return Fail(result.status());
  const fs::path out(options.out_dir);
  std::printf(
      "study '%s' provisioned in %s:\n"
      "  %-24s the study file: roster %s; coordinator %s\n"
      "  %-24s the study CA: keep ca.key offline (add-site needs it)\n"
      "  %-24s the coordinator's bundle, for the names %s\n"
      "  %-24s the operator's bundle (CN %s)\n"
      "  %-24s one bundle per site, with site.json: send each site its own folder\n"
      "  %-24s the study's terms, signed with ca.key; a copy is in every bundle\n",
      options.study_id.c_str(), options.out_dir.c_str(), StudyPath(options.out_dir).c_str(),
      absl::StrJoin(result->study.roster, ", ").c_str(), result->study.coordinator.c_str(),
      (out / "ca/").c_str(), (out / "coordinator/").c_str(),
      absl::StrJoin(result->coordinator_hosts, ", ").c_str(), (out / "operator/").c_str(),
      attune::kOperatorName, (out / "sites/<site>/").c_str(),
      (out / attune::kTermsFile).c_str());
  if (!coordinator_given) {
    std::printf(
        "No --coordinator given: the site files say %s; a worker's --coordinator flag "
        "overrides it.\n",
        options.coordinator.c_str());
  }
  std::printf(
      "Next: attune-coordinator --study %s --tls-dir %s ...\n"
      "      attune-worker --config site.json --site-dir DATA   (at each site)\n",
      StudyPath(options.out_dir).c_str(), (out / "coordinator").c_str());
  return 0;
}

int RunAddSite(const std::string& dir, const std::string& site, int days) {
  auto study = attune::AddSite(dir, site, days);
  if (!study.ok()) return Fail(study.status());
  std::printf(
      "site '%s' added to the roster of %s (now %zu sites).\n"
      "Its bundle is %s: send the whole folder to the site, which runs\n"
      "  attune-worker --config %s/%s --site-dir DATA\n",
      site.c_str(), StudyPath(dir).c_str(), study->roster.size(),
      (fs::path(dir) / "sites" / site).c_str(), site.c_str(), attune::kSiteConfigFile);
  PrintReloadNote(dir);
  return 0;
}

int RunSign(const std::string& dir, const std::string& study_path) {
  auto terms = attune::SignStudy(dir, study_path);
  if (!terms.ok()) return Fail(terms.status());
  std::printf("study '%s' terms version %lld signed (model digest %s, roster %s).\n",
              terms->study_id.c_str(), static_cast<long long>(terms->version),
              terms->ModelDigest().substr(0, 16).c_str(),
              absl::StrJoin(terms->roster, ", ").c_str());
  PrintReloadNote(dir);
  return 0;
}

int RunRevoke(const std::string& dir, const std::string& site) {
  auto study = attune::RevokeSite(dir, site);
  if (!study.ok()) return Fail(study.status());
  std::printf(
      "site '%s' revoked in %s: its certificate is refused from now on (revoked: %s).\n",
      site.c_str(), StudyPath(dir).c_str(), absl::StrJoin(study->revoked, ", ").c_str());
  PrintReloadNote(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attune: tools for Attune studies"};
  app.require_subcommand(1);

  CLI::App* provision = app.add_subcommand(
      "provision", "make and maintain a study directory: PKI, site files and study.json");
  provision->require_subcommand(1);

  attune::InitOptions init_options;
  CLI::App* init = provision->add_subcommand(
      "init", "make a study directory: the study CA, bundles for everyone, study.json");
  init->add_option("--out", init_options.out_dir, "the study directory D")->required();
  init->add_option("--study-id", init_options.study_id,
                   "the study's name (letters, digits, '-', '_', '.')")
      ->required();
  init->add_option("--sites", init_options.sites,
                   "comma-separated site names, which become certificate CNs")
      ->delimiter(',')
      ->required();
  CLI::Option* coordinator =
      init->add_option("--coordinator", init_options.coordinator,
                       "HOST:PORT the sites dial (a worker's --coordinator overrides it)")
          ->capture_default_str();
  init->add_option("--coordinator-hosts", init_options.coordinator_hosts,
                   "comma-separated DNS names and IP addresses for the coordinator's certificate\n"
                   "(default: the host of --coordinator, 127.0.0.1 and localhost)")
      ->delimiter(',');
  init->add_option("--study", init_options.base_study_path,
                   "a study file to start from (e.g. experiments/studies/quickstart.json);\n"
                   "its other fields (rounds, model, train, ...) are kept");
  init->add_option("--days", init_options.valid_days, "certificate validity in days")
      ->capture_default_str();
  init->add_flag("--overwrite", init_options.overwrite,
                 "replace an existing study CA (every old certificate stops working)");
  init->footer(
      "Writes, into the study directory D (do this once, on a trusted machine):\n"
      "  D/ca/            the study CA: ca.crt, ca.key (keep ca.key offline)\n"
      "  D/coordinator/   the coordinator's server bundle: ca.crt, cert.crt, key.pem, and\n"
      "                   at_rest.key (for attune-coordinator --at-rest-key; an existing\n"
      "                   one is kept)\n"
      "  D/operator/      a client bundle with CN attune-operator, for `attune status`\n"
      "  D/sites/<site>/  one bundle per site, plus site.json for `attune-worker --config`\n"
      "  D/study.json     the study file: --study's fields with study_id, coordinator,\n"
      "                   roster (the sites) and revoked ([]) set\n"
      "  D/study.terms    the study's terms (roster, secure aggregation, privacy, audit,\n"
      "                   model), signed with ca.key; a copy goes into every bundle, and\n"
      "                   sites refuse any task they do not allow\n"
      "Key files are mode 0600. Nothing is written unless everything, study.json\n"
      "included, is valid; an existing D/ca is replaced only with --overwrite.\n"
      "\n"
      "Example:\n"
      "  attune provision init --out pki --study-id lung-2026 --sites st-marys,charite \\\n"
      "    --coordinator coord.example.org:7443 --study experiments/studies/quickstart.json");

  std::string add_dir, add_site;
  int add_days = 365;
  CLI::App* add = provision->add_subcommand(
      "add-site", "issue a bundle for a new site and add it to study.json's roster");
  add->footer(
      "Needs D/ca/ca.key. Writes D/sites/<site>/ (ca.crt, cert.crt, key.pem, site.json)\n"
      "and appends the site to D/study.json's roster (rewritten atomically, other fields\n"
      "kept). A coordinator started with --study D/study.json admits the site without a\n"
      "restart. Names already on the roster, revoked ones included, are refused.\n"
      "\n"
      "Example:\n"
      "  attune provision add-site --dir pki --site royal-infirmary");
  add->add_option("--dir", add_dir, "the study directory made by `attune provision init`")
      ->required();
  add->add_option("--site", add_site, "the new site's name (its certificate CN)")->required();
  add->add_option("--days", add_days, "certificate validity in days")->capture_default_str();

  std::string revoke_dir, revoke_site;
  CLI::App* revoke = provision->add_subcommand(
      "revoke", "refuse a site's certificate from now on (adds it to study.json's revoked)");
  revoke->footer(
      "Needs D/ca/ca.key. Adds the site to D/study.json's \"revoked\" list (rewritten\n"
      "atomically) and re-signs the terms, so sites refuse it as a peer too. A\n"
      "coordinator started with --study D/study.json refuses the site's certificate from\n"
      "then on, without a restart. The name stays on the roster and cannot be reused;\n"
      "a site not on the roster, or already revoked, is an error.\n"
      "\n"
      "Example:\n"
      "  attune provision revoke --dir pki --site royal-infirmary");
  revoke->add_option("--dir", revoke_dir, "the study directory made by `attune provision init`")
      ->required();
  revoke->add_option("--site", revoke_site, "the site to revoke")->required();

  std::string sign_dir, sign_study;
  CLI::App* sign = provision->add_subcommand(
      "sign", "re-sign the study's terms after an edit of study.json (or from another file)");
  sign->footer(
      "Needs D/ca/ca.key. Signs the terms of D/study.json -- or of --study FILE, which is\n"
      "then copied to D/study.json -- at the next version, and writes them to D/study.terms\n"
      "and every bundle. A coordinator starts only on a study file whose terms are signed;\n"
      "copy D/coordinator/study.terms to its machine. Sites refuse older terms.\n"
      "\n"
      "Example:\n"
      "  attune provision sign --dir pki --study experiments/studies/quickstart.json");
  sign->add_option("--dir", sign_dir, "the study directory made by `attune provision init`")
      ->required();
  sign->add_option("--study", sign_study,
                   "the study file to sign (same study_id; default D/study.json)");

  attune::tools::StatusOptions status_options;
  CLI::App* status = app.add_subcommand(
      "status", "ask a running coordinator for the study's rounds, sites and metrics");
  status->add_option("--study-dir", status_options.study_dir,
                     "the study directory from `attune provision init` (gives the address,\n"
                     "the study id and the operator's bundle)");
  status->add_option("--coordinator", status_options.coordinator, "HOST:PORT (overrides)");
  status->add_option("--study-id", status_options.study_id, "the study (overrides)");
  status->add_option("--tls-dir", status_options.tls_dir,
                     "a bundle to authenticate with: the operator's or a site's (overrides)");
  status->add_flag("--json", status_options.json, "print JSON instead of tables");
  status->footer(
      "Example:\n"
      "  attune status --study-dir pki --coordinator 127.0.0.1:7443");

  attune::tools::AuditCommand audit_cmd;
  CLI::App* audit = app.add_subcommand(
      "audit",
      "run an audit-only round on a running coordinator: every live site evaluates a\n"
      "committed model with its subgroup sums (no training), and the subgroup bias audit\n"
      "of their sum is written as audit.json and audit.html");
  audit->add_option("--study-dir", audit_cmd.connect.study_dir,
                    "the study directory from `attune provision init` (gives the address,\n"
                    "the study id and the operator's bundle)");
  audit->add_option("--coordinator", audit_cmd.connect.coordinator, "HOST:PORT (overrides)");
  audit->add_option("--study-id", audit_cmd.connect.study_id, "the study (overrides)");
  audit->add_option("--tls-dir", audit_cmd.connect.tls_dir,
                    "the operator's bundle (overrides; sites may not run audits)");
  audit->add_option("--model", audit_cmd.model_version,
                    "the model version (a committed round) to audit; -1: the latest")
      ->capture_default_str();
  audit->add_option("--split", audit_cmd.split, "the split the sites evaluate")
      ->check(CLI::IsMember({"val", "test"}))
      ->capture_default_str();
  audit->add_option("--out", audit_cmd.out_dir, "where audit.json and audit.html go")
      ->capture_default_str();
  audit->add_option("--timeout", audit_cmd.timeout_s,
                    "seconds to wait (an audit waits for the running round to end)")
      ->check(CLI::Range(1, 86400 * 7))
      ->capture_default_str();
  std::string render_in, render_out;
  CLI::App* render = audit->add_subcommand(
      "render", "draw audit.html again from an audit.json (no coordinator needed)");
  render->add_option("--in", render_in, "an audit.json")->required()->check(CLI::ExistingFile);
  render->add_option("--out", render_out, "the page to write (default: audit.html beside --in)");
  audit->footer(
      "The coordinator runs the round between training rounds, or after the study's last\n"
      "round when it was started with --serve-audits. Each audit counts as an audit release\n"
      "in the study's privacy ledger and the audit log.\n"
      "Examples:\n"
      "  attune audit --study-dir pki --coordinator 127.0.0.1:7443 --model 5 --out audit-5\n"
      "  attune audit render --in audit.json");

  CLI::App* log = app.add_subcommand("log", "the coordinator's hash-chained audit log");
  log->require_subcommand(1);
  std::string log_dir;
  uint64_t log_last = 50;
  CLI::App* verify = log->add_subcommand(
      "verify", "recompute the hash chain of the audit log; exit 1 if any entry was altered,\n"
                "removed or reordered (works while the coordinator runs)");
  verify->add_option("--data-dir", log_dir, "the coordinator's --data-dir")->required();
  CLI::App* show = log->add_subcommand("show", "print audit-log entries (rounds, refusals, sites)");
  show->add_option("--data-dir", log_dir, "the coordinator's --data-dir")->required();
  show->add_option("--last", log_last, "how many of the latest entries (0: all)")
      ->capture_default_str();

  attune::synth::SynthOptions syn;
  CLI::App* synth = app.add_subcommand(
      "synth", "generate a deterministic synthetic multi-site cohort (OUT/site-1 ... OUT/site-N)");
  synth->add_option("--out", syn.out_dir, "output directory")->required();
  synth->add_option("--sites", syn.num_sites, "number of sites")->capture_default_str();
  synth->add_option("--patients", syn.patients_per_site, "patients per site")
      ->capture_default_str();
  synth->add_option("--site-patients", syn.site_patients,
                    "patients at each site, comma-separated (one count per site, in place of\n"
                    "--patients), e.g. 600,300,300")
      ->delimiter(',');
  synth->add_option("--seed", syn.seed, "random seed")->capture_default_str();
  synth->add_option("--room-number", syn.room_number,
                    "add the audit's shortcut column ehr/static.csv room_number: none, control\n"
                    "(rooms tell the sexes apart) or planted (and predict the label for\n"
                    "women at site-1 only); the study then has static_features 9")
      ->check(CLI::IsMember({"none", "control", "planted"}))
      ->capture_default_str();
  synth->add_flag("--overwrite", syn.overwrite, "replace existing site directories");

  attune::worker::ExplainOptions ex;
  std::string ex_patients;
  CLI::App* explain = app.add_subcommand(
      "explain",
      "write each layer's and head's attention for chosen patients as JSON (OUT/<patient>.json), "
      "and an imaging heatmap PNG over the patches (OUT/<patient>.imaging.png)");
  explain->add_option("--study", ex.study_path, "the study file (its model config)")->required();
  explain->add_option("--model", ex.model_path, "a model file, e.g. a study's out/model.atnm")
      ->required();
  explain->add_option("--site-dir", ex.site_dir, "the site's data directory")->required();
  explain->add_option("--patients", ex_patients, "comma-separated patient ids (default: the "
                                                 "first --count patients of --split)");
  explain->add_option("--split", ex.split, "split to take patients from")->capture_default_str();
  explain->add_option("--count", ex.count, "patients to take from --split")->capture_default_str();
  explain->add_option("--out", ex.out_dir, "output directory")->required();
  explain->add_option("--threads", ex.threads, "LibTorch threads")->capture_default_str();

  attune::importers::ImportOptions im;
  CLI::App* import = app.add_subcommand(
      "import", "convert a public dataset, as its publisher ships it, into site directories "
                "(OUT/<site>/) and print the study's model config");
  import->footer("datasets:\n" + attune::importers::DatasetHelp());
  import->add_option("--dataset", im.dataset, "dataset (see below)")
      ->required()
      ->check(CLI::IsMember(attune::importers::Datasets()));
  import->add_option("--source", im.source, "the dataset's folder")->required();
  import->add_option("--out", im.out_dir, "output directory")->required();
  import->add_option("--sites", im.sites, "sites, by a seeded hash of the patient")
      ->capture_default_str();
  import->add_option("--site-by", im.site_by,
                     "a natural site column instead of --sites (see below)");
  import->add_option("--seed", im.seed, "seed of the split and site assignment")
      ->capture_default_str();
  import->add_flag("--overwrite", im.overwrite, "replace existing site directories");

  CLI11_PARSE(app, argc, argv);

  if (init->parsed()) return RunInit(init_options, coordinator->count() > 0);
  if (add->parsed()) return RunAddSite(add_dir, add_site, add_days);
  if (revoke->parsed()) return RunRevoke(revoke_dir, revoke_site);
  if (sign->parsed()) return RunSign(sign_dir, sign_study);
  if (status->parsed()) return attune::tools::RunStatus(status_options);
  if (render->parsed()) {
    if (render_out.empty())
      render_out = (fs::path(render_in).parent_path() / "audit.html").string();
    return attune::tools::RunAuditRender(render_in, render_out);
  }
  if (audit->parsed()) return attune::tools::RunAudit(audit_cmd);
  if (verify->parsed()) return attune::tools::RunLogVerify(log_dir);
  if (show->parsed()) return attune::tools::RunLogShow(log_dir, log_last);
  if (synth->parsed()) {
    if (auto s = attune::synth::Generate(syn); !s.ok()) return Fail(s);
    const std::string sizes =
        syn.site_patients.empty()
            ? absl::StrCat(syn.num_sites, " sites x ", syn.patients_per_site, " patients")
            : absl::StrCat(syn.num_sites, " sites of ", absl::StrJoin(syn.site_patients, ", "),
                           " patients");
    std::printf("synthetic cohort written to %s (%s, seed %llu)\n", syn.out_dir.c_str(),
                sizes.c_str(), static_cast<unsigned long long>(syn.seed));
    return 0;
  }
  if (import->parsed()) {
    auto report = attune::importers::Import(im);
    if (!report.ok()) return Fail(report.status());
    std::printf("imported %lld patients (%lld positive) into %zu sites in %s: %s\n",
                static_cast<long long>(report->patients),
                static_cast<long long>(report->positives), report->sites.size(),
                im.out_dir.c_str(), absl::StrJoin(report->sites, ", ").c_str());
    for (const auto& n : report->notes) std::printf("note: %s\n", n.c_str());
    std::printf("study file \"model\": %s\n", report->model_json.c_str());
    return 0;
  }
  if (explain->parsed()) {
    if (!ex_patients.empty()) ex.patients = absl::StrSplit(ex_patients, ',', absl::SkipEmpty());
    auto result = attune::worker::Explain(ex);
    if (!result.ok()) return Fail(result.status());
    for (const auto& f : result->files) std::printf("%s\n", f.c_str());
    std::printf("explained %zu patient(s) into %s\n", result->patients, ex.out_dir.c_str());
    return 0;
  }
  return 0;
}
