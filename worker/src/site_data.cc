#include "attune/worker/site_data.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "attune/common/npy.h"

namespace attune::worker {
namespace {

namespace fs = std::filesystem;
constexpr float kMissing = std::numeric_limits<float>::quiet_NaN();

// Line-by-line reader of a delimited text file: strips a UTF-8 BOM and CR,
// keeps the line number for error messages. Fields are not quoted.
class TableReader {
 public:
  TableReader(std::string path, char sep) : path_(std::move(path)), sep_(sep), in_(path_) {}
  bool ok() const { return static_cast<bool>(in_); }
  const std::string& path() const { return path_; }
  int line() const { return line_; }

  // Next non-empty line split into fields; false at end of file.
  bool Next(std::vector<std::string>* fields) {
    std::string text;
    while (std::getline(in_, text)) {
      ++line_;
      if (line_ == 1 && text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);
      if (!text.empty() && text.back() == '\r') text.pop_back();
      if (text.empty()) continue;
      fields->clear();
      size_t start = 0;
      while (true) {
        size_t pos = text.find(sep_, start);
        fields->push_back(text.substr(start, pos == std::string::npos ? pos : pos - start));
        if (pos == std::string::npos) break;
        start = pos + 1;
      }
      return true;
    }
    return false;
  }

  Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ":", line_, ": ", what));
  }

 private:
  std::string path_;
  char sep_;
  std::ifstream in_;
  int line_ = 0;
};

// Parses a finite float; empty is `kMissing` when allowed.
Status ParseFloat(const TableReader& r, const std::string& text, const std::string& column,
                  bool allow_empty, float* out) {
  if (text.empty()) {
    if (allow_empty) {
      *out = kMissing;
      return absl::OkStatus();
    }
    return r.Error(absl::StrCat("column '", column, "' is empty"));
  }
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !std::isfinite(v)) {
    return r.Error(absl::StrCat("column '", column, "': '", text, "' is not a finite number"));
  }
  *out = static_cast<float>(v);
  return absl::OkStatus();
}

// Standardises column-wise with the training patients' mean and standard
// deviation; missing values become 0 (the training mean).
void Standardise(std::vector<Patient>& patients, std::vector<float> Patient::*field,
                 bool Patient::*present, int width) {
  std::vector<double> sum(width, 0), sq(width, 0), cnt(width, 0);
  for (const Patient& p : patients) {
    if (!(p.*present) || p.split != "train") continue;
    for (int j = 0; j < width; ++j) {
      float v = (p.*field)[j];
      if (std::isnan(v)) continue;
      sum[j] += v;
      sq[j] += double(v) * v;
      cnt[j] += 1;
    }
  }
  for (Patient& p : patients) {
    if (!(p.*present)) continue;
    for (int j = 0; j < width; ++j) {
      float& v = (p.*field)[j];
      if (std::isnan(v) || cnt[j] == 0) {
        v = 0;
        continue;
      }
      double mean = sum[j] / cnt[j];
      double var = std::max(sq[j] / cnt[j] - mean * mean, 0.0);
      v = static_cast<float>((v - mean) / std::sqrt(var + 1e-6));
    }
  }
}

Status LoadCohort(const std::string& dir, SiteData* data,
                  std::unordered_map<std::string, size_t>* index) {
  TableReader r(dir + "/cohort.csv", ',');
  if (!r.ok()) {
    return absl::NotFoundError(absl::StrCat(
        r.path(), ": missing (every site directory needs cohort.csv: patient_id,split,label,...)"));
  }
  std::vector<std::string> f;
  if (!r.Next(&f)) return r.Error("empty file");
  if (f.size() < 3 || f[0] != "patient_id" || f[1] != "split" || f[2] != "label") {
    return r.Error("header must start with patient_id,split,label");
  }
  data->subgroup_columns.assign(f.begin() + 3, f.end());
  const size_t width = f.size();
  while (r.Next(&f)) {
    if (f.size() != width) {
      return r.Error(absl::StrCat("expected ", width, " fields, got ", f.size()));
    }
    Patient p;
    p.id = f[0];
    if (p.id.empty()) return r.Error("empty patient_id");
    p.split = f[1];
    if (p.split != "train" && p.split != "val" && p.split != "test") {
      return r.Error(absl::StrCat("split must be train, val or test (got '", p.split, "')"));
    }
    if (f[2] != "0" && f[2] != "1") {
      return r.Error(absl::StrCat("label must be 0 or 1 (got '", f[2], "')"));
    }
    p.label = f[2] == "1";
    p.groups.assign(f.begin() + 3, f.end());
    if (!index->emplace(p.id, data->patients.size()).second) {
      return r.Error(absl::StrCat("patient '", p.id, "' appears twice"));
    }
    data->patients.push_back(std::move(p));
  }
  if (data->patients.empty()) return r.Error("no patients");
  return absl::OkStatus();
}

StatusOr<Patient*> Lookup(const TableReader& r, const std::string& id, SiteData* data,
                          const std::unordered_map<std::string, size_t>& index) {
  auto it = index.find(id);
  if (it == index.end()) {
    return r.Error(absl::StrCat("patient '", id, "' is not in cohort.csv"));
  }
  return &data->patients[it->second];
}

// ehr/static.csv and genomics/expression.tsv share one shape: an id column
// and `width` numeric columns.
Status LoadMatrix(const std::string& path, char sep, int width, const char* what,
                  std::vector<float> Patient::*field, bool Patient::*present, SiteData* data,
                  const std::unordered_map<std::string, size_t>& index,
                  std::vector<std::string>* columns) {
  if (!fs::exists(path)) return absl::OkStatus();  // optional modality
  TableReader r(path, sep);
  if (!r.ok()) return absl::InternalError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> header, f;
  if (!r.Next(&header)) return r.Error("empty file");
  if (header.empty() || header[0] != "patient_id") return r.Error("first column must be patient_id");
  if (static_cast<int>(header.size()) - 1 != width) {
    return r.Error(absl::StrCat("the study's model expects ", width, " ", what, " columns, the file has ",
                                header.size() - 1));
  }
  columns->assign(header.begin() + 1, header.end());
  while (r.Next(&f)) {
    if (f.size() != header.size()) {
      return r.Error(absl::StrCat("expected ", header.size(), " fields, got ", f.size()));
    }
    ATTUNE_ASSIGN_OR_RETURN(Patient * p, Lookup(r, f[0], data, index));
    if (p->*present) return r.Error(absl::StrCat("patient '", f[0], "' appears twice"));
    std::vector<float> values(width);
    for (int j = 0; j < width; ++j) {
      ATTUNE_RETURN_IF_ERROR(ParseFloat(r, f[j + 1], header[j + 1], true, &values[j]));
    }
    p->*field = std::move(values);
    p->*present = true;
  }
  return absl::OkStatus();
}

Status LoadEvents(const std::string& path, const ModelConfig& m, SiteData* data,
                  const std::unordered_map<std::string, size_t>& index) {
  if (!fs::exists(path)) return absl::OkStatus();
  TableReader r(path, ',');
  if (!r.ok()) return absl::InternalError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> f;
  if (!r.Next(&f)) return r.Error("empty file");
  if (f != std::vector<std::string>{"patient_id", "time", "code", "value"}) {
    return r.Error("header must be patient_id,time,code,value");
  }
  while (r.Next(&f)) {
    if (f.size() != 4) return r.Error(absl::StrCat("expected 4 fields, got ", f.size()));
    ATTUNE_ASSIGN_OR_RETURN(Patient * p, Lookup(r, f[0], data, index));
    Event e;
    ATTUNE_RETURN_IF_ERROR(ParseFloat(r, f[1], "time", false, &e.time));
    if (f[2].empty()) return r.Error("column 'code' is empty");
    e.bucket = HashCode(f[2], m.event_buckets);
    e.code = f[2];
    ATTUNE_RETURN_IF_ERROR(ParseFloat(r, f[3], "value", true, &e.value));
    p->events.push_back(e);
  }
  // Standardise values per bucket on the training split; keep the latest events.
  std::unordered_map<int32_t, std::pair<double, double>> sum;  // Σv, Σv²
  std::unordered_map<int32_t, double> cnt;
  for (const Patient& p : data->patients) {
    if (p.split != "train") continue;
    for (const Event& e : p.events) {
      if (std::isnan(e.value)) continue;
      sum[e.bucket].first += e.value;
      sum[e.bucket].second += double(e.value) * e.value;
      cnt[e.bucket] += 1;
    }
  }
  for (Patient& p : data->patients) {
    for (Event& e : p.events) {
      auto c = cnt.find(e.bucket);
      if (std::isnan(e.value) || c == cnt.end()) {
        e.value = 0;
        continue;
      }
      double mean = sum[e.bucket].first / c->second;
      double var = std::max(sum[e.bucket].second / c->second - mean * mean, 0.0);
      e.value = static_cast<float>((e.value - mean) / std::sqrt(var + 1e-6));
    }
    std::stable_sort(p.events.begin(), p.events.end(),
                     [](const Event& a, const Event& b) { return a.time < b.time; });
    if (static_cast<int>(p.events.size()) > m.max_events) {
      p.events.erase(p.events.begin(), p.events.end() - m.max_events);
    }
  }
  return absl::OkStatus();
}

Status LoadImaging(const std::string& dir, const ModelConfig& m, SiteData* data) {
  if (!fs::is_directory(dir)) return absl::OkStatus();
  for (Patient& p : data->patients) {
    const std::string path = absl::StrCat(dir, "/", p.id, ".npy");
    if (!fs::exists(path)) continue;
    ATTUNE_ASSIGN_OR_RETURN(NpyArray a, ReadNpy(path));
    const std::vector<int64_t> want = m.imaging_shape();
    // A one-channel image may also be stored as [size, size].
    const bool plain_image = m.raw_images() && m.image_channels == 1 &&
                             a.shape == std::vector<int64_t>{want[1], want[2]};
    if (a.shape != want && !plain_image) {
      auto join = [](const std::vector<int64_t>& v) {
        std::string out;
        for (int64_t d : v) absl::StrAppend(&out, out.empty() ? "" : ",", d);
        return out;
      };
      return absl::InvalidArgumentError(absl::StrCat(path, ": shape [", join(a.shape),
                                                     "], the study's model (imaging_encoder ",
                                                     m.imaging_encoder, ") expects [", join(want),
                                                     "]"));
    }
    for (float v : a.data) {
      if (!std::isfinite(v)) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": contains NaN or Inf"));
      }
    }
    p.imaging = std::move(a.data);
    p.has_imaging = true;
  }
  return absl::OkStatus();
}

}  // namespace

int64_t SiteData::Count(const std::string& split) const {
  return std::count_if(patients.begin(), patients.end(),
                       [&](const Patient& p) { return p.split == split; });
}

int32_t HashCode(const std::string& code, int buckets) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : code) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return static_cast<int32_t>(h % static_cast<uint64_t>(buckets));
}

StatusOr<SiteData> LoadSiteData(const std::string& dir, const ModelConfig& m) {
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a directory (--site-dir)"));
  }
  SiteData data;
  std::unordered_map<std::string, size_t> index;
  ATTUNE_RETURN_IF_ERROR(LoadCohort(dir, &data, &index));
  // Files of a modality the model does not have are not read.
  if (m.has_static()) {
    ATTUNE_RETURN_IF_ERROR(LoadMatrix(dir + "/ehr/static.csv", ',', m.static_features,
                                      "static feature", &Patient::static_features,
                                      &Patient::has_static, &data, index,
                                      &data.static_columns));
  }
  if (m.has_events()) {
    ATTUNE_RETURN_IF_ERROR(LoadEvents(dir + "/ehr/events.csv", m, &data, index));
  }
  if (m.has_imaging()) ATTUNE_RETURN_IF_ERROR(LoadImaging(dir + "/imaging", m, &data));
  if (m.has_genomics()) {
    ATTUNE_RETURN_IF_ERROR(LoadMatrix(dir + "/genomics/expression.tsv", '\t', m.genes, "gene",
                                      &Patient::genomics, &Patient::has_genomics, &data, index,
                                      &data.gene_columns));
  }
  Standardise(data.patients, &Patient::static_features, &Patient::has_static, m.static_features);
  Standardise(data.patients, &Patient::genomics, &Patient::has_genomics, m.genes);
  if (data.Count("train") == 0) {
    return absl::InvalidArgumentError(absl::StrCat(dir, "/cohort.csv: no patient in split 'train'"));
  }
  return data;
}

}  // namespace attune::worker
