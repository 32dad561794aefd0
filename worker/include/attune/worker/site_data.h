// A site's data directory (DESIGN.md, "Data"), loaded and validated. No
// LibTorch here: the loader produces plain per-patient records, which the
// trainer turns into tensors.
//
//   cohort.csv              patient_id,split,label,<subgroup columns...>  (required)
//   ehr/static.csv          patient_id,<model.static_features numeric columns>
//   ehr/events.csv          patient_id,time,code,value
//   imaging/<patient>.npy   float32 [model.imaging_patches, model.imaging_dim]
//                           (patch features), or [image_channels, image_size,
//                           image_size] (raw images: imaging_encoder vit, cnn)
//   genomics/expression.tsv patient_id<TAB><model.genes numeric columns>
//
// Every modality file is optional; a patient may lack any modality. Files of
// a modality the model does not have (size 0) are not read. Event
// codes are feature-hashed into model.event_buckets buckets so sites need
// not share vocabularies. A bad row is an error that names file and line —
// never silently dropped. Empty numeric cells are missing values (imputed
// with the training mean after standardisation).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/status.h"

namespace attune::worker {

struct Event {
  float time = 0;     // hours
  int32_t bucket = 0; // hashed code
  std::string code;   // as written in events.csv
  float value = 0;    // standardised per bucket
};

struct Patient {
  std::string id;
  std::string split;  // "train", "val" or "test"
  int label = 0;
  std::vector<std::string> groups;  // one value per SiteData::subgroup_columns
  bool has_static = false;
  std::vector<float> static_features;  // standardised; missing cells -> 0
  std::vector<Event> events;           // the latest max_events, by time
  bool has_imaging = false;
  std::vector<float> imaging;          // patches x dim, row-major
  bool has_genomics = false;
  std::vector<float> genomics;         // standardised
};

struct SiteData {
  std::vector<std::string> subgroup_columns;
  std::vector<std::string> static_columns;  // ehr/static.csv's header (when read)
  std::vector<std::string> gene_columns;    // genomics/expression.tsv's header (when read)
  std::vector<Patient> patients;

  int64_t Count(const std::string& split) const;
};

// 64-bit FNV-1a of the code, modulo `buckets`.
int32_t HashCode(const std::string& code, int buckets);

StatusOr<SiteData> LoadSiteData(const std::string& dir, const ModelConfig& model);

}  // namespace attune::worker
