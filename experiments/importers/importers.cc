#include "importers.h"

#include <algorithm>
#include <filesystem>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/config.h"
#include "readers.h"

namespace attune::importers {
namespace {

struct Dataset {
  std::string name;
  std::string summary;
  std::vector<std::string> site_columns;  // accepted --site-by values
  std::function<StatusOr<Cohort>(const ImportOptions&, ImportReport*)> read;
  // The modalities' encoders; static_features and genes come from the cohort.
  std::function<void(ModelConfig*)> model;
};

void NoEvents(ModelConfig* m) { m->max_events = 0; }
void NoImaging(ModelConfig* m) { m->imaging_encoder = "none"; }
void GrayCnn(ModelConfig* m, int size) {
  m->imaging_encoder = "cnn";
  m->image_channels = 1;
  m->image_size = size;
}

const std::vector<Dataset>& Table() {
  static const std::vector<Dataset> table = {
      {"mimic_iv_demo", "MIMIC-IV demo: admissions, lab and ICD events; in-hospital mortality",
       {"admission_type", "admission_location"}, ReadMimicIvDemo,
       [](ModelConfig* m) {
         NoImaging(m);
         m->max_events = 256;
         m->event_buckets = 1024;
       }},
      {"nih_chestxray", "NIH ChestX-ray14 1000-image subset: 64x64 X-rays; normal vs abnormal",
       {"view"}, ReadNihChestXray,
       [](ModelConfig* m) {
         NoEvents(m);
         GrayCnn(m, 64);
       }},
      {"pneumoniamnist", "PneumoniaMNIST: 28x28 X-rays; normal vs pneumonia", {},
       ReadPneumoniaMnist,
       [](ModelConfig* m) {
         NoEvents(m);
         GrayCnn(m, 28);
       }},
      {"tcga_glioma", "TCGA GBM/LGG: 20 gene mutation flags and age; GBM vs LGG", {"tss"},
       ReadTcgaGlioma,
       [](ModelConfig* m) {
         NoEvents(m);
         NoImaging(m);
       }},
  };
  return table;
}

}  // namespace

const std::vector<std::string>& Datasets() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& d : Table()) n.push_back(d.name);
    return n;
  }();
  return names;
}

std::string DatasetHelp() {
  std::string s;
  for (const auto& d : Table()) {
    absl::StrAppend(&s, "  ", d.name, ": ", d.summary);
    if (!d.site_columns.empty()) absl::StrAppend(&s, " (--site-by ", absl::StrJoin(d.site_columns, " | "), ")");
    s += "\n";
  }
  return s;
}

StatusOr<ImportReport> Import(const ImportOptions& o) {
  auto d = std::find_if(Table().begin(), Table().end(),
                        [&](const Dataset& t) { return t.name == o.dataset; });
  if (d == Table().end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown dataset '", o.dataset, "' (one of ",
                                                   absl::StrJoin(Datasets(), ", "), ")"));
  }
  if (!std::filesystem::is_directory(o.source)) {
    return absl::NotFoundError(absl::StrCat(o.source, ": not a directory (--source)"));
  }
  if (o.out_dir.empty()) return absl::InvalidArgumentError("--out: required");
  if (o.sites < 1 || o.sites > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("--sites: must be in [1, 1000] (got ", o.sites, ")"));
  }
  if (!o.site_by.empty() &&
      std::find(d->site_columns.begin(), d->site_columns.end(), o.site_by) == d->site_columns.end()) {
    return absl::InvalidArgumentError(
        d->site_columns.empty()
            ? absl::StrCat("--site-by: ", d->name, " has no site column (use --sites)")
            : absl::StrCat("--site-by: ", d->name, " has the site column(s) ",
                           absl::StrJoin(d->site_columns, ", ")));
  }
  ImportReport report;
  ATTUNE_ASSIGN_OR_RETURN(Cohort cohort, d->read(o, &report));
  ModelConfig model;
  d->model(&model);
  model.static_features = static_cast<int>(cohort.static_columns.size());
  model.genes = static_cast<int>(cohort.gene_columns.size());
  ATTUNE_RETURN_IF_ERROR(model.Validate());
  ATTUNE_RETURN_IF_ERROR(WriteSites(cohort, o, o.site_by.empty() ? "" : o.site_by, &report));
  report.model_json = model.ToJson();
  return report;
}

}  // namespace attune::importers
