// `attune explain`: what the model looked at, for chosen patients. No
// LibTorch in this interface (the attune tool includes it).
//
// For each patient, <out>/<patient_id>.json (schema "attune.explain/1"):
// the label, the predicted probability, each modality's presence and weight
// β, the tokens of each modality (what each attention index refers to) and
// every attention module's weights for this patient — each layer, each head
// ("ehr_events/layer0/self": [heads][query][key], ...). With imaging,
// <out>/<patient_id>.imaging.png is a heatmap of the imaging class token's
// attention over the patches in the last layer (mean over heads; gated
// attention-MIL weights for the mil encoder), drawn over the image itself
// for raw images (vit, cnn).
#pragma once

#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::worker {

struct ExplainOptions {
  std::string study_path;             // study.json: the model config
  std::string model_path;             // a model file (.atnm), e.g. <out>/model.atnm
  std::string site_dir;               // the site's data directory
  std::vector<std::string> patients;  // patient ids; empty = the first `count` of `split`
  std::string split = "test";
  int count = 3;
  std::string out_dir;
  int threads = 1;
};

struct ExplainResult {
  size_t patients = 0;
  std::vector<std::string> files;  // written, in order
};

StatusOr<ExplainResult> Explain(const ExplainOptions& options);

}  // namespace attune::worker
