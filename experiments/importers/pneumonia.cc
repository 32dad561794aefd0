// PneumoniaMNIST (MedMNIST v2), pneumoniamnist.npz: {train,val,test}_images
// (N, 28, 28) uint8 and {train,val,test}_labels (N, 1), 1 = pneumonia.
// The publisher's split is kept (this copy's train split lacks 826 of the
// official normals, so val and test are the fair held-out sets); images
// are hashed to --sites sites. MedMNIST has no demographics, so there are
// no subgroups: a negative control for the audit.
#include "absl/strings/str_cat.h"
#include "cohort.h"
#include "npz.h"
#include "readers.h"

namespace attune::importers {

StatusOr<Cohort> ReadPneumoniaMnist(const ImportOptions& o, ImportReport* report) {
  const std::string path = o.source + "/pneumoniamnist.npz";
  ATTUNE_ASSIGN_OR_RETURN(auto arrays, ReadNpz(path));
  Cohort c;
  for (const std::string split : {"train", "val", "test"}) {
    auto images = arrays.find(split + "_images");
    auto labels = arrays.find(split + "_labels");
    if (images == arrays.end() || labels == arrays.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": no ", split, "_images or ", split, "_labels array"));
    }
    const auto& is = images->second.shape;
    const auto& ls = labels->second.shape;
    if (is.size() != 3 || is[1] != is[2] || is[1] < 4 || ls.empty() || ls[0] != is[0] ||
        labels->second.data.size() != static_cast<size_t>(is[0])) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", split, "_images must be (N, S, S) and ", split, "_labels (N,) or (N, 1)"));
    }
    const int64_t pixels = is[1] * is[2];
    int positives = 0;
    for (int64_t i = 0; i < is[0]; ++i) {
      const float label = labels->second.data[i];
      if (label != 0 && label != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", split, "_labels[", i, "] is ", label, ", not 0 or 1"));
      }
      ImportedPatient p;
      p.id = absl::StrCat(split, "-", i);
      p.split = split;
      p.label = static_cast<int>(label);
      positives += p.label;
      NpyArray a;
      a.shape = {is[1], is[2]};
      const float* from = images->second.data.data() + i * pixels;
      a.data.assign(from, from + pixels);
      for (float& v : a.data) v /= 255.0f;
      p.image = std::move(a);
      c.patients.push_back(std::move(p));
    }
    report->notes.push_back(absl::StrCat(split, ": ", is[0], " images (", is[0] - positives,
                                         " normal, ", positives, " pneumonia), publisher's split kept"));
  }
  return c;
}

}  // namespace attune::importers
