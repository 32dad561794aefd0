// NIH ChestX-ray14, the 1000-image 64×64 subset: metadata_nih1000.csv (one
// row per image: image_path, folder_label 0_normal | 1_abnormal, the NIH
// columns Finding Labels, Patient ID, Patient Age, Patient Gender, View
// Position) and images/<split>/<label>/<Image Index> (8-bit PNG, RGB or
// RGBA, read as gray).
//
// One example per image, labelled by its folder (abnormal = 1). The
// upstream split is not patient-disjoint, so it is ignored: an image's
// patient (Patient ID) is its group, and all of a patient's images go to
// one split and one hashed site. --site-by view makes a site of each view
// position (PA, AP): an acquisition shift between sites.
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "attune/common/png.h"
#include "cohort.h"
#include "csv.h"
#include "readers.h"

namespace attune::importers {

StatusOr<Cohort> ReadNihChestXray(const ImportOptions& o, ImportReport* report) {
  const std::string path = o.source + "/metadata_nih1000.csv";
  CsvReader r(path);
  if (!r.ok()) return absl::NotFoundError(absl::StrCat(path, ": cannot open (--source)"));
  std::vector<std::string> header, f;
  if (!r.Next(&header)) return r.Error("empty file");
  ATTUNE_ASSIGN_OR_RETURN(
      std::vector<int> col,
      ColumnIndexes(r, header, {"image_path", "Image Index", "split", "folder_label",
                                "Finding Labels", "Patient ID", "Patient Age", "Patient Gender",
                                "View Position"}));
  enum { kPath, kIndex, kSplit, kFolder, kFindings, kPatient, kAge, kSex, kView };
  Cohort c;
  c.subgroup_columns = {"sex", "age_band", "view"};
  std::set<std::string> seen;
  std::map<std::string, std::set<std::string>> upstream_splits;  // patient → splits
  int disagreements = 0, width = 0;
  while (r.Next(&f)) {
    if (f.size() != header.size()) {
      return r.Error(absl::StrCat("expected ", header.size(), " fields, got ", f.size()));
    }
    ImportedPatient p;
    p.id = f[col[kIndex]];
    if (p.id.size() > 4 && p.id.substr(p.id.size() - 4) == ".png") p.id.resize(p.id.size() - 4);
    if (p.id.empty() || !seen.insert(p.id).second) {
      return r.Error(absl::StrCat("Image Index: '", f[col[kIndex]], "' is empty or appears twice"));
    }
    const std::string& folder = f[col[kFolder]];
    if (folder != "0_normal" && folder != "1_abnormal") {
      return r.Error(absl::StrCat("folder_label: '", folder, "' is neither 0_normal nor 1_abnormal"));
    }
    p.label = folder == "1_abnormal";
    disagreements += p.label == (f[col[kFindings]] == "No Finding");
    p.group_key = f[col[kPatient]];
    if (p.group_key.empty()) return r.Error("Patient ID: empty");
    upstream_splits[p.group_key].insert(f[col[kSplit]]);
    double age = 0;
    if (!absl::SimpleAtod(f[col[kAge]], &age) || age < 0 || age > 130) {
      return r.Error(absl::StrCat("Patient Age: '", f[col[kAge]], "' is not an age in years"));
    }
    const std::string& sex = f[col[kSex]];
    if (sex != "M" && sex != "F") return r.Error(absl::StrCat("Patient Gender: '", sex, "' is neither M nor F"));
    p.site_key = f[col[kView]];
    p.groups = {sex, AgeBand(age), p.site_key.empty() ? "unknown" : p.site_key};
    ATTUNE_ASSIGN_OR_RETURN(GrayImage image, ReadPngGray(o.source + "/" + f[col[kPath]]));
    if (width == 0) width = image.width;
    if (image.width != width || image.height != width) {
      return r.Error(absl::StrCat(f[col[kPath]], ": ", image.width, "x", image.height,
                                  " (the other images are ", width, "x", width, ")"));
    }
    NpyArray a;
    a.shape = {image.height, image.width};
    a.data.reserve(image.pixels.size());
    for (uint8_t v : image.pixels) a.data.push_back(v / 255.0f);
    p.image = std::move(a);
    c.patients.push_back(std::move(p));
  }
  if (c.patients.empty()) return r.Error("no images listed");
  int straddling = 0;
  for (const auto& [patient, splits] : upstream_splits) straddling += splits.size() > 1;
  report->notes.push_back(absl::StrCat(
      straddling, " of ", upstream_splits.size(),
      " patients had images in more than one upstream split; re-split by Patient ID"));
  if (disagreements > 0) {
    report->notes.push_back(absl::StrCat(disagreements, " images whose folder label disagrees with "
                                         "NIH's Finding Labels; the folder label is used"));
  }
  report->notes.push_back(absl::StrCat("images read as ", width, "x", width,
                                       " gray (RGB and RGBA alike), scaled to [0, 1]"));
  return c;
}

}  // namespace attune::importers
