// `attune import`: public medical datasets, as their publishers ship them,
// converted into site directories (worker/site_data.h's format), one per
// site. Torch-free.
//
//   tcga_glioma      TCGA GBM/LGG mutations (UCI #759): gene tokens (0/1
//                    mutation flags), age; label GBM (1) vs LGG (0)
//
// Patients are assigned to a split (60/20/20 train/val/test) and to a site
// by a seeded hash of the patient id, so the same options always give the
// same files; --site-by names a natural site column instead (tcga: "tss",
// the tissue-source site). Bad input is an error naming file and line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::importers {

struct ImportOptions {
  std::string dataset;    // one of Datasets()
  std::string source;     // the dataset's folder
  std::string out_dir;    // writes <out_dir>/<site>/
  int sites = 3;          // hash-partitioned sites (ignored with site_by)
  std::string site_by;    // a natural site column, or empty
  uint64_t seed = 7;
  bool overwrite = false; // AlreadyExists if a site directory exists and !overwrite
};

struct ImportReport {
  std::vector<std::string> sites;  // site directory names, sorted
  int64_t patients = 0;
  int64_t positives = 0;
  std::string model_json;          // the "model" a study on these sites needs
  std::vector<std::string> notes;  // quirks handled (rows skipped and why, ...)
};

const std::vector<std::string>& Datasets();

StatusOr<ImportReport> Import(const ImportOptions& options);

}  // namespace attune::importers
