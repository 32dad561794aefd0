// `attune import`: public medical datasets, as their publishers ship them,
// converted into site directories (worker/site_data.h's format), one per
// site. Torch-free.
//
//   mimic_iv_demo    MIMIC-IV Clinical Database Demo v2.2: one example per
//                    admission; lab and earlier-ICD events, age; label
//                    in-hospital death (mimic.cc)
//   nih_chestxray    NIH ChestX-ray14 1000-image 64×64 subset: gray images;
//                    label abnormal (nih.cc)
//   pneumoniamnist   PneumoniaMNIST .npz: 28×28 gray images; label
//                    pneumonia; the publisher's split (pneumonia.cc)
//   tcga_glioma      TCGA GBM/LGG mutations (UCI #759): gene tokens (0/1
//                    mutation flags), age; label GBM (1) vs LGG (0) (tcga.cc)
//
// Examples are assigned to a split (60/20/20 train/val/test, stratified by
// label) and to a site by a seeded hash of their patient, so the same
// options always give the same files and one patient's admissions or
// images never straddle splits;
// --site-by names a natural site column instead (Datasets' help lists
// them). Bad input is an error naming file and line.
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
// One line per dataset: name, summary, its --site-by columns.
std::string DatasetHelp();

StatusOr<ImportReport> Import(const ImportOptions& options);

}  // namespace attune::importers
