// attune: study tools.
//   attune provision   make the study PKI (CA, coordinator and site bundles)
//   attune synth       generate a synthetic multi-site cohort
#include <cstdio>

#include <CLI/CLI.hpp>

#include "absl/strings/str_split.h"
#include "attune/common/pki.h"
#include "synth/synth.h"

namespace {

int Fail(const attune::Status& s) {
  std::fprintf(stderr, "attune: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

std::vector<std::string> SplitList(const std::string& csv) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(csv, ',', absl::SkipEmpty())) {
    out.emplace_back(part);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attune: tools for Attune studies"};
  app.require_subcommand(1);

  attune::ProvisionOptions prov;
  std::string sites_csv, hosts_csv = "127.0.0.1,localhost";
  CLI::App* provision = app.add_subcommand(
      "provision",
      "make a study CA, the coordinator's key/certificate and one bundle per site\n"
      "(OUT/ca: keep ca.key offline; OUT/coordinator; OUT/sites/<site>)");
  provision->add_option("--out", prov.out_dir, "output directory")->required();
  provision->add_option("--study-id", prov.study_id, "study name (goes into the CA's name)")
      ->capture_default_str();
  provision->add_option("--sites", sites_csv, "comma-separated site names (certificate CNs)")
      ->required();
  provision->add_option("--coordinator-hosts", hosts_csv,
                        "comma-separated names and IP addresses the coordinator is reached by")
      ->capture_default_str();
  provision->add_option("--days", prov.valid_days, "certificate validity")->capture_default_str();
  provision->add_flag("--overwrite", prov.overwrite, "replace an existing study CA");

  attune::synth::SynthOptions syn;
  CLI::App* synth = app.add_subcommand(
      "synth", "generate a deterministic synthetic multi-site cohort (OUT/site-1 ... OUT/site-N)");
  synth->add_option("--out", syn.out_dir, "output directory")->required();
  synth->add_option("--sites", syn.num_sites, "number of sites")->capture_default_str();
  synth->add_option("--patients", syn.patients_per_site, "patients per site")
      ->capture_default_str();
  synth->add_option("--seed", syn.seed, "random seed")->capture_default_str();
  synth->add_flag("--overwrite", syn.overwrite, "replace existing site directories");

  CLI11_PARSE(app, argc, argv);

  if (provision->parsed()) {
    prov.sites = SplitList(sites_csv);
    prov.coordinator_hosts = SplitList(hosts_csv);
    if (auto s = attune::Provision(prov); !s.ok()) return Fail(s);
    std::printf("study PKI written to %s (CA, coordinator, %zu site bundles)\n",
                prov.out_dir.c_str(), prov.sites.size());
    return 0;
  }
  if (synth->parsed()) {
    if (auto s = attune::synth::Generate(syn); !s.ok()) return Fail(s);
    std::printf("synthetic cohort written to %s (%d sites x %d patients, seed %llu)\n",
                syn.out_dir.c_str(), syn.num_sites, syn.patients_per_site,
                static_cast<unsigned long long>(syn.seed));
    return 0;
  }
  return 0;
}
