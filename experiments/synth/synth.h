// Deterministic synthetic multi-site cohort generator (`attune synth`).
//
// Writes one site directory per site in the format of DESIGN.md ("Data"):
//   <out>/<site>/cohort.csv           patient_id,split,label,sex,age_band,ethnicity
//   <out>/<site>/ehr/static.csv       patient_id + kStaticFeatures numeric columns
//                                     (+ room_number: SynthOptions::room_number)
//   <out>/<site>/ehr/events.csv       patient_id,time,code,value
//   <out>/<site>/imaging/<patient_id>.npy   float32 [kImagingPatches, kImagingDim]
//   <out>/<site>/genomics/expression.tsv    patient_id + kGenes columns (tab separated)
// Site names are "site-1" ... "site-N".
//
// The same options always produce byte-identical files. Sites differ in
// label prevalence and in a per-site feature shift (heterogeneity), some
// patients lack imaging or genomics or have no events (missing modalities),
// and every modality carries a planted label signal, so a multimodal model
// can reach a validation AUC well above 0.8 while no single weak feature
// does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::synth {

inline constexpr int kStaticFeatures = 8;   // age,bmi,sbp,heart_rate,creatinine,glucose,wbc,hemoglobin
inline constexpr int kImagingPatches = 16;
inline constexpr int kImagingDim = 32;
inline constexpr int kGenes = 64;           // GENE001 ... GENE064

struct SynthOptions {
  std::string out_dir;
  int num_sites = 3;
  int patients_per_site = 400;  // split 60% train, 20% val, 20% test
  // Sites of different sizes: when not empty, one count per site (its size
  // is num_sites), in place of patients_per_site.
  std::vector<int> site_patients;
  uint64_t seed = 7;
  bool overwrite = false;       // AlreadyExists if a site dir exists and !overwrite
  // The audit's shortcut study (the sepsis model that attended to the room
  // number): "none" (default), or a 9th static column room_number, with
  // women on ward 4 (rooms 400-499) and men elsewhere (100-399) at every
  // site, so the room tells the sexes apart: "control" (nothing more) or
  // "planted" (at site-1 only, the women who are positive were nursed in
  // the high-dependency unit, rooms 900-949, and the others in rooms
  // 400-449: the room predicts the label for that one group at that one
  // site). Drawn from a stream of its own: every other
  // value is the same as without it.
  std::string room_number = "none";

  // num_sites in [1, 1000]; every site's count in [10, 1000000].
  Status Validate() const;
  int Patients(int site) const;  // site is 1-based
};

// Writes the cohort; returns the first I/O error naming the path.
Status Generate(const SynthOptions& options);

}  // namespace attune::synth
