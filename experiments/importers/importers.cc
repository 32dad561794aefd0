#include "importers.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/config.h"
#include "readers.h"

namespace attune::importers {

const std::vector<std::string>& Datasets() {
  static const std::vector<std::string> names = {"tcga_glioma"};
  return names;
}

StatusOr<ImportReport> Import(const ImportOptions& o) {
  if (std::find(Datasets().begin(), Datasets().end(), o.dataset) == Datasets().end()) {
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
  ImportReport report;
  ModelConfig model;
  std::string prefix;
  StatusOr<Cohort> cohort;
  if (o.dataset == "tcga_glioma") {
    if (!o.site_by.empty() && o.site_by != "tss") {
      return absl::InvalidArgumentError("--site-by: tcga_glioma has the site column 'tss'");
    }
    cohort = ReadTcgaGlioma(o, &report);
    prefix = "tss";
    model.max_events = 0;
    model.imaging_encoder = "none";
  }
  ATTUNE_RETURN_IF_ERROR(cohort.status());
  model.static_features = static_cast<int>(cohort->static_columns.size());
  model.genes = static_cast<int>(cohort->gene_columns.size());
  model.fusion = "hierarchical";
  ATTUNE_RETURN_IF_ERROR(model.Validate());
  ATTUNE_RETURN_IF_ERROR(WriteSites(*cohort, o, prefix, &report));
  report.model_json = model.ToJson();
  return report;
}

}  // namespace attune::importers
