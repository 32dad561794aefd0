// What an importer reads a dataset into, and the writer of site
// directories from it (shared by every importer).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "attune/common/npy.h"
#include "importers.h"

namespace attune::importers {

struct ImportedEvent {
  double hours = 0;            // since the patient's reference time
  std::string code;
  std::optional<double> value;  // empty = no numeric value
};

struct ImportedPatient {
  std::string id;
  int label = 0;
  std::string site_key;                       // the natural site column's value
  // Patients sharing a group_key (one person's admissions or images) go to
  // the same split and hashed site; empty = id.
  std::string group_key;
  std::string split;                          // the publisher's split, or empty = hashed
  std::vector<std::string> groups;            // one per Cohort::subgroup_columns
  std::vector<std::optional<double>> static_values;  // empty = no static row
  std::vector<float> genes;                   // empty = no genomics row
  std::vector<ImportedEvent> events;
  std::optional<NpyArray> image;
};

struct Cohort {
  std::vector<std::string> subgroup_columns;
  std::vector<std::string> static_columns;
  std::vector<std::string> gene_columns;
  std::vector<ImportedPatient> patients;
};

// Assigns splits and sites and writes <out_dir>/<site>/ for every site;
// fills report->sites, patients, positives. Natural sites are named
// "<prefix>-<value>", the value lowercased with other characters as '-'
// ("EW EMER." → "admission_type-ew-emer"). Natural sites with fewer than
// kMinSitePatients patients are pooled into "<prefix>-other" (noted).
inline constexpr int kMinSitePatients = 10;
Status WriteSites(const Cohort& cohort, const ImportOptions& options,
                  const std::string& site_prefix, ImportReport* report);

// Age in years → "<40", "40-59", ">=60"; empty → "unknown".
std::string AgeBand(std::optional<double> years);

}  // namespace attune::importers
