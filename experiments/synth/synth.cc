// Deterministic synthetic multi-site cohort generator. See synth.h.
//
// Determinism: every random draw comes from std::mt19937_64 (whose output
// sequence is fixed by the C++ standard) through the helpers in `Rng` below;
// no std::*_distribution, std::shuffle or std::sort of ties is used, and
// numbers are printed with std::to_chars (locale-independent, exactly
// rounded). Patients are generated one at a time in id order, so files can be
// streamed.

#include "synth/synth.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "attune/common/npy.h"

namespace attune::synth {
namespace {

namespace fs = std::filesystem;

constexpr double kPi = 3.14159265358979323846;

// ---------------------------------------------------------------------------
// Randomness.

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Seed of the independent stream `stream` (0 = study-wide, i = site i).
uint64_t StreamSeed(uint64_t seed, uint64_t stream) {
  return SplitMix64(SplitMix64(seed) ^ SplitMix64(stream + 0x5151));
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  // Uniform in [0, 1) with 53 random bits.
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n), n > 0.
  int UniformInt(int n) {
    int k = static_cast<int>(Uniform() * n);
    return k < n ? k : n - 1;
  }
  bool Bernoulli(double p) { return Uniform() < p; }
  // Standard normal by Box-Muller (both outputs used).
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = 1.0 - Uniform();  // (0, 1]
    double u2 = Uniform();
    double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * kPi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * kPi * u2);
  }
  // Index drawn with probability proportional to weights[i] (all >= 0,
  // sum > 0).
  template <typename Weights>
  int Categorical(const Weights& weights) {
    double total = 0;
    for (double w : weights) total += w;
    double x = Uniform() * total;
    int n = static_cast<int>(std::size(weights));
    for (int i = 0; i < n; ++i) {
      x -= weights[i];
      if (x < 0) return i;
    }
    return n - 1;
  }
  // Fisher-Yates shuffle.
  template <typename T>
  void Shuffle(std::vector<T>* v) {
    for (int i = static_cast<int>(v->size()) - 1; i > 0; --i) {
      std::swap((*v)[i], (*v)[UniformInt(i + 1)]);
    }
  }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0;
};

// ---------------------------------------------------------------------------
// Cohort model.

struct StaticFeature {
  const char* name;
  double mean;
  double sd;
  double min;
  double max;
  double label_effect;  // shift for positives, in SD units
};

constexpr std::array<StaticFeature, kStaticFeatures> kStatic = {{
    {"age", 58.0, 16.0, 18.0, 90.0, 0.0},
    {"bmi", 27.5, 5.0, 15.0, 55.0, 0.0},
    {"sbp", 124.0, 15.0, 75.0, 210.0, 0.0},
    {"heart_rate", 82.0, 12.0, 40.0, 170.0, 0.7},
    {"creatinine", 1.05, 0.30, 0.30, 6.0, 0.7},
    {"glucose", 112.0, 25.0, 50.0, 450.0, 0.0},
    {"wbc", 8.2, 2.4, 1.0, 35.0, 0.6},
    {"hemoglobin", 13.4, 1.6, 6.0, 19.0, 0.0},
}};
constexpr int kAgeIndex = 0;

constexpr std::array<double, 3> kPrevalence = {0.25, 0.35, 0.45};

constexpr std::array<const char*, 5> kEthnicity = {"white", "black", "asian",
                                                   "hispanic", "other"};
constexpr std::array<double, 5> kEthnicityWeight = {0.55, 0.16, 0.12, 0.12,
                                                    0.05};
constexpr double kFemaleFraction = 0.52;

// Event vocabulary. Values are drawn N(mean, sd) clipped to >= min; DX codes
// have value 1. Positives see `positive_rate` times the base rate.
struct EventCode {
  const char* code;
  double weight;
  double mean;
  double sd;
  double min;
  double positive_rate;
};

constexpr int kLactate = 0;
constexpr std::array<EventCode, 40> kEvents = {{
    {"LAB:lactate", 1.2, 1.4, 0.5, 0.3, 1.8},
    {"LAB:creatinine", 1.2, 1.0, 0.3, 0.2, 1.0},
    {"LAB:sodium", 1.2, 139.0, 3.5, 110.0, 1.0},
    {"LAB:potassium", 1.2, 4.2, 0.5, 2.0, 1.0},
    {"LAB:glucose", 1.2, 115.0, 30.0, 30.0, 1.0},
    {"LAB:wbc", 1.2, 8.5, 2.8, 0.5, 1.0},
    {"LAB:hemoglobin", 1.2, 12.8, 1.8, 4.0, 1.0},
    {"LAB:platelets", 1.0, 240.0, 60.0, 10.0, 1.0},
    {"LAB:bilirubin", 0.6, 0.9, 0.4, 0.1, 1.0},
    {"LAB:troponin", 0.5, 0.02, 0.01, 0.0, 1.0},
    {"LAB:crp", 0.6, 25.0, 20.0, 0.5, 1.0},
    {"LAB:bun", 1.0, 18.0, 6.0, 2.0, 1.0},
    {"VITAL:heart_rate", 2.0, 84.0, 14.0, 30.0, 1.0},
    {"VITAL:sbp", 2.0, 122.0, 17.0, 60.0, 1.0},
    {"VITAL:dbp", 2.0, 72.0, 11.0, 30.0, 1.0},
    {"VITAL:resp_rate", 1.5, 18.0, 4.0, 6.0, 1.0},
    {"VITAL:spo2", 2.0, 96.0, 2.0, 70.0, 1.0},
    {"VITAL:temp", 1.5, 37.0, 0.6, 34.0, 1.0},
    {"DX:I50", 0.4, 1.0, 0.0, 1.0, 1.0},
    {"DX:A41", 0.25, 1.0, 0.0, 1.0, 2.6},
    {"DX:N17", 0.3, 1.0, 0.0, 1.0, 2.0},
    {"DX:J18", 0.4, 1.0, 0.0, 1.0, 1.0},
    {"DX:E11", 0.5, 1.0, 0.0, 1.0, 1.0},
    {"DX:I10", 0.6, 1.0, 0.0, 1.0, 1.0},
    {"DX:J44", 0.3, 1.0, 0.0, 1.0, 1.0},
    {"DX:N18", 0.3, 1.0, 0.0, 1.0, 1.0},
    {"DX:I48", 0.3, 1.0, 0.0, 1.0, 1.0},
    {"DX:E87", 0.3, 1.0, 0.0, 1.0, 1.0},
    {"MED:furosemide", 0.5, 40.0, 15.0, 10.0, 1.0},
    {"MED:norepinephrine", 0.25, 0.08, 0.04, 0.01, 2.6},
    {"MED:vancomycin", 0.4, 1250.0, 250.0, 500.0, 1.0},
    {"MED:piperacillin", 0.4, 4.5, 0.0, 4.5, 1.0},
    {"MED:insulin", 0.6, 6.0, 3.0, 1.0, 1.0},
    {"MED:metoprolol", 0.5, 25.0, 12.0, 12.5, 1.0},
    {"MED:heparin", 0.6, 5000.0, 0.0, 5000.0, 1.0},
    {"MED:acetaminophen", 0.8, 650.0, 150.0, 325.0, 1.0},
    {"MED:ondansetron", 0.4, 4.0, 0.0, 4.0, 1.0},
    {"MED:pantoprazole", 0.5, 40.0, 0.0, 40.0, 1.0},
    {"PROC:intubation", 0.12, 1.0, 0.0, 1.0, 1.0},
    {"PROC:dialysis", 0.12, 1.0, 0.0, 1.0, 1.0},
}};
constexpr int kMaxEvents = 30;
constexpr double kZeroEventFraction = 0.05;
constexpr double kMaxHours = 72.0;
// Lactate: a per-patient level (SD kLactateSd, shifted by kLactateEffect SDs
// for positives) plus per-measurement noise.
constexpr double kLactateSd = 0.6;
constexpr double kLactateEffect = 0.6;
constexpr double kLactateNoise = 0.3;

constexpr double kImagingFraction = 0.85;
constexpr int kSignalPatches = 3;
constexpr double kImagingSignal = 1.5;

constexpr double kGenomicsFraction = 0.80;
constexpr double kGeneMean = 5.0;
constexpr int kSignalGenes = 5;
constexpr double kGeneEffect = 0.55;

// Site heterogeneity: per-feature shifts N(0, kSiteShiftSd) in SD units, and
// a genomics batch offset N(0, kBatchSd) common to all genes of a site.
constexpr double kSiteShiftSd = 0.25;
constexpr double kBatchSd = 0.3;

// ---------------------------------------------------------------------------
// Output helpers.

void AppendFixed(double v, int digits, std::string* out) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v,
                                 std::chars_format::fixed, digits);
  std::string_view s(buf, ec == std::errc() ? end - buf : 0);
  // Never print "-0.0000".
  if (!s.empty() && s[0] == '-' &&
      s.find_first_not_of("-0.") == std::string_view::npos) {
    s.remove_prefix(1);
  }
  out->append(s);
}

// A buffered text file; Close() reports any write error naming the path.
class OutFile {
 public:
  Status Open(const fs::path& path) {
    path_ = path.string();
    out_.open(path, std::ios::binary | std::ios::trunc);
    if (!out_) {
      return absl::InternalError(absl::StrCat("cannot create ", path_));
    }
    return absl::OkStatus();
  }
  std::string& buffer() { return buffer_; }
  // Writes out the buffer once it is large.
  Status MaybeFlush() {
    if (buffer_.size() < (1 << 20)) return absl::OkStatus();
    return Flush();
  }
  Status Close() {
    ATTUNE_RETURN_IF_ERROR(Flush());
    out_.close();
    if (!out_) return absl::InternalError(absl::StrCat("cannot write ", path_));
    return absl::OkStatus();
  }

 private:
  Status Flush() {
    out_.write(buffer_.data(), static_cast<std::streamsize>(buffer_.size()));
    buffer_.clear();
    if (!out_) return absl::InternalError(absl::StrCat("cannot write ", path_));
    return absl::OkStatus();
  }

  std::string path_;
  std::ofstream out_;
  std::string buffer_;
};

Status MakeDirs(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create directory ",
                                            dir.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

std::string PatientId(int site, int index, int width) {
  std::string digits = std::to_string(index);
  if (static_cast<int>(digits.size()) < width) {
    digits.insert(0, width - digits.size(), '0');
  }
  return absl::StrCat("s", site, "-p", digits);
}

const char* AgeBand(double age) {
  if (age < 40) return "18-39";
  if (age < 65) return "40-64";
  return "65+";
}

// Study-wide choices shared by all sites: the imaging signal direction and
// which genes carry the label signal.
struct StudyPlan {
  std::array<double, kImagingDim> direction{};
  std::array<bool, kGenes> signal_gene{};
};

StudyPlan MakeStudyPlan(uint64_t seed) {
  Rng rng(StreamSeed(seed, 0));
  StudyPlan plan;
  double norm2 = 0;
  for (double& d : plan.direction) {
    d = rng.Normal();
    norm2 += d * d;
  }
  double norm = std::sqrt(norm2);
  for (double& d : plan.direction) d /= norm;
  std::vector<int> genes(kGenes);
  for (int g = 0; g < kGenes; ++g) genes[g] = g;
  rng.Shuffle(&genes);
  for (int k = 0; k < kSignalGenes; ++k) plan.signal_gene[genes[k]] = true;
  return plan;
}

// Writes site `site` (1-based) into `dir`, which exists and is empty.
Status GenerateSite(const SynthOptions& options, const StudyPlan& plan,
                    int site, const fs::path& dir) {
  Rng rng(StreamSeed(options.seed, static_cast<uint64_t>(site)));
  Rng rooms(StreamSeed(options.seed, 1000003 + static_cast<uint64_t>(site)));
  const bool room_column = options.room_number != "none";
  const bool planted = options.room_number == "planted" && site == 1;
  const int n = options.Patients(site);

  // Site heterogeneity.
  std::array<double, kStaticFeatures> static_shift{};
  for (double& s : static_shift) s = kSiteShiftSd * rng.Normal();
  std::array<double, kGenes> gene_shift{};
  double batch = kBatchSd * rng.Normal();
  for (double& s : gene_shift) s = batch + kSiteShiftSd * rng.Normal();

  // Labels (exact prevalence) and splits (stratified by label: within each
  // label, positions cycle train,train,val,train,test), then shuffled over
  // patient ids.
  double prevalence = kPrevalence[(site - 1) % kPrevalence.size()];
  int positives = static_cast<int>(std::lround(prevalence * n));
  positives = std::clamp(positives, 1, n - 1);
  static constexpr std::array<const char*, 5> kSplitCycle = {
      "train", "train", "val", "train", "test"};
  std::vector<std::pair<int, const char*>> assignment;
  assignment.reserve(n);
  for (int k = 0; k < n; ++k) {
    assignment.emplace_back(k < positives ? 1 : 0, kSplitCycle[k % 5]);
  }
  rng.Shuffle(&assignment);

  ATTUNE_RETURN_IF_ERROR(MakeDirs(dir / "ehr"));
  ATTUNE_RETURN_IF_ERROR(MakeDirs(dir / "imaging"));
  ATTUNE_RETURN_IF_ERROR(MakeDirs(dir / "genomics"));
  OutFile cohort, statics, events, expression;
  ATTUNE_RETURN_IF_ERROR(cohort.Open(dir / "cohort.csv"));
  ATTUNE_RETURN_IF_ERROR(statics.Open(dir / "ehr" / "static.csv"));
  ATTUNE_RETURN_IF_ERROR(events.Open(dir / "ehr" / "events.csv"));
  ATTUNE_RETURN_IF_ERROR(expression.Open(dir / "genomics" / "expression.tsv"));

  cohort.buffer() = "patient_id,split,label,sex,age_band,ethnicity\n";
  statics.buffer() = "patient_id";
  for (const StaticFeature& f : kStatic) {
    absl::StrAppend(&statics.buffer(), ",", f.name);
  }
  if (room_column) statics.buffer() += ",room_number";
  statics.buffer() += "\n";
  events.buffer() = "patient_id,time,code,value\n";
  expression.buffer() = "patient_id";
  for (int g = 1; g <= kGenes; ++g) {
    absl::StrAppend(&expression.buffer(), g < 10 ? "\tGENE00" : "\tGENE0", g);
  }
  expression.buffer() += "\n";

  int width = std::max<int>(4, static_cast<int>(std::to_string(n).size()));
  std::array<double, kEvents.size()> event_weight[2];
  for (size_t c = 0; c < kEvents.size(); ++c) {
    event_weight[0][c] = kEvents[c].weight;
    event_weight[1][c] = kEvents[c].weight * kEvents[c].positive_rate;
  }

  for (int p = 0; p < n; ++p) {
    const std::string id = PatientId(site, p + 1, width);
    const int label = assignment[p].first;
    const char* split = assignment[p].second;

    // Demographics and static features.
    const char* sex = rng.Bernoulli(kFemaleFraction) ? "F" : "M";
    const char* ethnicity = kEthnicity[rng.Categorical(kEthnicityWeight)];
    std::array<double, kStaticFeatures> values{};
    for (int f = 0; f < kStaticFeatures; ++f) {
      const StaticFeature& sf = kStatic[f];
      double z = rng.Normal() + static_shift[f] + label * sf.label_effect;
      values[f] = std::clamp(sf.mean + sf.sd * z, sf.min, sf.max);
    }
    values[kAgeIndex] = std::round(values[kAgeIndex]);  // whole years

    absl::StrAppend(&cohort.buffer(), id, ",", split, ",", label, ",", sex, ",",
                    AgeBand(values[kAgeIndex]), ",", ethnicity, "\n");
    statics.buffer() += id;
    for (double v : values) {
      statics.buffer() += ',';
      AppendFixed(v, 4, &statics.buffer());
    }
    if (room_column) {
      // Ward 4 is the women's ward; at the planted site the women who are
      // positive were nursed in the high-dependency unit (rooms 900-949).
      const bool woman = sex[0] == 'F';
      const int room = !woman   ? 100 + rooms.UniformInt(300)
                       : planted ? (label ? 900 : 400) + rooms.UniformInt(50)
                                 : 400 + rooms.UniformInt(100);
      absl::StrAppend(&statics.buffer(), ",", room);
    }
    statics.buffer() += '\n';

    // Events.
    int num_events =
        rng.Bernoulli(kZeroEventFraction) ? 0 : 1 + rng.UniformInt(kMaxEvents);
    double lactate_level = kEvents[kLactate].mean +
                           kLactateSd * (rng.Normal() + label * kLactateEffect);
    struct Event {
      double time;
      int code;
      double value;
    };
    std::vector<Event> patient_events;
    patient_events.reserve(num_events);
    for (int e = 0; e < num_events; ++e) {
      Event ev;
      ev.time = rng.Uniform() * kMaxHours;
      ev.code = rng.Categorical(event_weight[label]);
      const EventCode& ec = kEvents[ev.code];
      double mean = ev.code == kLactate ? lactate_level : ec.mean;
      double sd = ev.code == kLactate ? kLactateNoise : ec.sd;
      ev.value = std::max(ec.min, mean + sd * rng.Normal());
      patient_events.push_back(ev);
    }
    std::stable_sort(
        patient_events.begin(), patient_events.end(),
        [](const Event& a, const Event& b) { return a.time < b.time; });
    for (const Event& ev : patient_events) {
      absl::StrAppend(&events.buffer(), id, ",");
      AppendFixed(ev.time, 4, &events.buffer());
      absl::StrAppend(&events.buffer(), ",", kEvents[ev.code].code, ",");
      AppendFixed(ev.value, 4, &events.buffer());
      events.buffer() += '\n';
    }

    // Imaging.
    if (rng.Bernoulli(kImagingFraction)) {
      NpyArray image;
      image.shape = {kImagingPatches, kImagingDim};
      std::vector<double> pixels(kImagingPatches * kImagingDim);
      for (double& x : pixels) x = rng.Normal();
      if (label == 1) {
        std::vector<int> patches(kImagingPatches);
        for (int k = 0; k < kImagingPatches; ++k) patches[k] = k;
        rng.Shuffle(&patches);
        for (int k = 0; k < kSignalPatches; ++k) {
          for (int d = 0; d < kImagingDim; ++d) {
            pixels[patches[k] * kImagingDim + d] +=
                kImagingSignal * plan.direction[d];
          }
        }
      }
      image.data.assign(pixels.begin(), pixels.end());
      fs::path npy = dir / "imaging" / (id + ".npy");
      Status s = WriteNpy(npy.string(), image);
      if (!s.ok()) {
        return absl::InternalError(
            absl::StrCat("cannot write ", npy.string(), ": ", s.message()));
      }
    }

    // Genomics.
    if (rng.Bernoulli(kGenomicsFraction)) {
      expression.buffer() += id;
      for (int g = 0; g < kGenes; ++g) {
        double v = kGeneMean + gene_shift[g] + rng.Normal() +
                   (plan.signal_gene[g] ? label * kGeneEffect : 0.0);
        expression.buffer() += '\t';
        AppendFixed(v, 4, &expression.buffer());
      }
      expression.buffer() += '\n';
    }

    ATTUNE_RETURN_IF_ERROR(cohort.MaybeFlush());
    ATTUNE_RETURN_IF_ERROR(statics.MaybeFlush());
    ATTUNE_RETURN_IF_ERROR(events.MaybeFlush());
    ATTUNE_RETURN_IF_ERROR(expression.MaybeFlush());
  }

  ATTUNE_RETURN_IF_ERROR(cohort.Close());
  ATTUNE_RETURN_IF_ERROR(statics.Close());
  ATTUNE_RETURN_IF_ERROR(events.Close());
  ATTUNE_RETURN_IF_ERROR(expression.Close());
  return absl::OkStatus();
}

}  // namespace

Status SynthOptions::Validate() const {
  if (out_dir.empty()) {
    return absl::InvalidArgumentError("out_dir must not be empty");
  }
  if (num_sites < 1 || num_sites > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_sites must be in [1, 1000], got ", num_sites));
  }
  if (!site_patients.empty() && static_cast<int>(site_patients.size()) != num_sites) {
    return absl::InvalidArgumentError(absl::StrCat("site_patients has ", site_patients.size(),
                                                   " counts for ", num_sites, " sites"));
  }
  for (int site = 1; site <= num_sites; ++site) {
    if (Patients(site) < 10 || Patients(site) > 1000000) {
      return absl::InvalidArgumentError(absl::StrCat(
          "patients at site-", site, " must be in [10, 1000000], got ", Patients(site)));
    }
  }
  if (room_number != "none" && room_number != "control" && room_number != "planted") {
    return absl::InvalidArgumentError(absl::StrCat(
        "room_number must be none, control or planted, got '", room_number, "'"));
  }
  return absl::OkStatus();
}

int SynthOptions::Patients(int site) const {
  return site_patients.empty() ? patients_per_site : site_patients[site - 1];
}

Status Generate(const SynthOptions& options) {
  ATTUNE_RETURN_IF_ERROR(options.Validate());
  const fs::path out(options.out_dir);

  // Check every site dir before touching anything.
  std::vector<fs::path> site_dirs;
  for (int site = 1; site <= options.num_sites; ++site) {
    fs::path dir = out / absl::StrCat("site-", site);
    std::error_code ec;
    fs::file_status st = fs::symlink_status(dir, ec);
    if (ec && st.type() != fs::file_type::not_found) {
      return absl::InternalError(
          absl::StrCat("cannot stat ", dir.string(), ": ", ec.message()));
    }
    if (fs::exists(st) && !options.overwrite) {
      return absl::AlreadyExistsError(absl::StrCat(
          "site directory ", dir.string(), " already exists (use overwrite)"));
    }
    site_dirs.push_back(std::move(dir));
  }

  const StudyPlan plan = MakeStudyPlan(options.seed);
  for (int site = 1; site <= options.num_sites; ++site) {
    const fs::path& dir = site_dirs[site - 1];
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot remove ", dir.string(), ": ", ec.message()));
    }
    ATTUNE_RETURN_IF_ERROR(MakeDirs(dir));
    ATTUNE_RETURN_IF_ERROR(GenerateSite(options, plan, site, dir));
  }
  return absl::OkStatus();
}

}  // namespace attune::synth
