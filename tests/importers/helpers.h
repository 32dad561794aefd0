// Shared by the importer tests: file reading, options, cohort.csv rows.
#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_split.h"
#include "attune/worker/site_data.h"
#include "importers/importers.h"

namespace attune::importers {

inline std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline ImportOptions Options(const std::string& dataset, const std::string& source,
                             const std::string& out) {
  ImportOptions o;
  o.dataset = dataset;
  o.source = source;
  o.out_dir = out;
  return o;
}

// cohort.csv of every site in `out`: patient_id → its fields (split, label, groups...).
inline std::map<std::string, std::vector<std::string>> CohortRows(
    const std::string& out, const std::vector<std::string>& sites) {
  std::map<std::string, std::vector<std::string>> rows;
  for (const auto& site : sites) {
    std::vector<std::string> lines =
        absl::StrSplit(Slurp(out + "/" + site + "/cohort.csv"), '\n', absl::SkipEmpty());
    for (size_t i = 1; i < lines.size(); ++i) {
      std::vector<std::string> f = absl::StrSplit(lines[i], ',');
      const std::string id = f[0];
      f.erase(f.begin());
      rows[id] = f;
    }
  }
  return rows;
}

// Every site of an import, loaded by the worker's loader with `model`; a
// site that does not load is a test failure (and is left out).
inline std::vector<worker::SiteData> LoadSites(const std::string& out,
                                               const std::vector<std::string>& sites,
                                               const ModelConfig& model) {
  std::vector<worker::SiteData> loaded;
  for (const auto& site : sites) {
    auto data = worker::LoadSiteData(out + "/" + site, model);
    if (!data.ok()) {
      ADD_FAILURE() << site << ": " << data.status();
      continue;
    }
    loaded.push_back(std::move(*data));
  }
  return loaded;
}

}  // namespace attune::importers
