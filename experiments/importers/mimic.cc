// MIMIC-IV Clinical Database Demo v2.2 (hosp/*.csv.gz): one example per
// hospital admission, labelled with hospital_expire_flag (in-hospital
// mortality).
//
//   events   labs (hosp/labevents) charted before admittime + 48 h, as
//            "lab:<d_labitems label>" with valuenum (empty when the value is
//            text, e.g. "NEG", or missing); and the ICD codes of the
//            patient's earlier admissions (hosp/diagnoses_icd), at their
//            discharge time, as "icd<version>:<code>". The admission's own
//            codes are assigned at discharge and would leak the outcome, so
//            they are left out. Times are hours since admittime (negative
//            before it).
//   static   age at admission (anchor_age moved to the admission's year),
//            number of earlier admissions
//   groups   sex, age_band, race (coarse), insurance
//
// An admission's patient (subject_id) is its group: all of a patient's
// admissions go to one split and one hashed site. --site-by
// admission_type or admission_location makes pseudo-sites of that column.
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cohort.h"
#include "csv.h"
#include "readers.h"

namespace attune::importers {
namespace {

constexpr double kWindowHours = 48;

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil).
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// "2196-02-24 14:38:00" → hours since 1970-01-01 00:00; MIMIC's dates are
// shifted into the future, which this does not mind.
StatusOr<double> Hours(const CsvReader& r, const std::string& column, const std::string& text) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  char tail = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2d %2d:%2d:%2d%c", &y, &mo, &d, &h, &mi, &s, &tail) != 6 ||
      mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60) {
    return r.Error(absl::StrCat(column, ": '", text, "' is not a time YYYY-MM-DD HH:MM:SS"));
  }
  return DaysFromCivil(y, mo, d) * 24.0 + h + mi / 60.0 + s / 3600.0;
}

StatusOr<int64_t> Id(const CsvReader& r, const std::string& column, const std::string& text) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(text, &v) || v < 0) {
    return r.Error(absl::StrCat(column, ": '", text, "' is not an id"));
  }
  return v;
}

std::string CoarseRace(const std::string& race) {
  for (const char* group : {"WHITE", "BLACK", "HISPANIC", "ASIAN"}) {
    if (absl::StrContains(race, group)) return group;
  }
  if (race.empty() || absl::StrContains(race, "UNKNOWN") || absl::StrContains(race, "UNABLE") ||
      absl::StrContains(race, "DECLINED")) {
    return "unknown";
  }
  return "other";
}

struct Subject {
  std::string sex;
  double anchor_age = 0;
  int anchor_year = 0;
};

struct Admission {
  int64_t subject = 0;
  double admit = 0, discharge = 0;
  ImportedPatient patient;
};

// Opens <source>/hosp/<table>.csv.gz and checks its header for `columns`.
struct Table {
  Table(const std::string& source, const std::string& name)
      : reader(absl::StrCat(source, "/hosp/", name, ".csv.gz")) {}
  CsvReader reader;
  std::vector<std::string> header;
  std::vector<int> col;

  Status Open(const std::vector<std::string>& columns) {
    if (!reader.ok()) return absl::NotFoundError(absl::StrCat(reader.path(), ": cannot open (--source)"));
    if (!reader.Next(&header)) return reader.Error("empty file");
    ATTUNE_ASSIGN_OR_RETURN(col, ColumnIndexes(reader, header, columns));
    return absl::OkStatus();
  }
  // The next row, checked for the header's field count.
  StatusOr<bool> Next(std::vector<std::string>* f) {
    if (!reader.Next(f)) {
      ATTUNE_RETURN_IF_ERROR(reader.Finish());
      return false;
    }
    if (f->size() != header.size()) {
      return reader.Error(absl::StrCat("expected ", header.size(), " fields, got ", f->size()));
    }
    return true;
  }
};

}  // namespace

StatusOr<Cohort> ReadMimicIvDemo(const ImportOptions& o, ImportReport* report) {
  std::vector<std::string> f;
  // Patients.
  std::map<int64_t, Subject> subjects;
  {
    Table t(o.source, "patients");
    ATTUNE_RETURN_IF_ERROR(t.Open({"subject_id", "gender", "anchor_age", "anchor_year"}));
    for (;;) {
      ATTUNE_ASSIGN_OR_RETURN(bool more, t.Next(&f));
      if (!more) break;
      ATTUNE_ASSIGN_OR_RETURN(int64_t id, Id(t.reader, "subject_id", f[t.col[0]]));
      Subject s;
      s.sex = f[t.col[1]];
      if (s.sex != "M" && s.sex != "F") return t.reader.Error(absl::StrCat("gender: '", s.sex, "' is neither M nor F"));
      if (!absl::SimpleAtod(f[t.col[2]], &s.anchor_age) || !absl::SimpleAtoi(f[t.col[3]], &s.anchor_year)) {
        return t.reader.Error("anchor_age and anchor_year must be numbers");
      }
      if (!subjects.emplace(id, s).second) return t.reader.Error(absl::StrCat("subject_id ", id, " appears twice"));
    }
  }
  // Admissions.
  std::map<int64_t, Admission> admissions;
  {
    Table t(o.source, "admissions");
    ATTUNE_RETURN_IF_ERROR(t.Open({"subject_id", "hadm_id", "admittime", "dischtime",
                                   "admission_type", "admission_location", "insurance", "race",
                                   "hospital_expire_flag"}));
    enum { kSubject, kHadm, kAdmit, kDisch, kType, kLocation, kInsurance, kRace, kDied };
    for (;;) {
      ATTUNE_ASSIGN_OR_RETURN(bool more, t.Next(&f));
      if (!more) break;
      Admission a;
      ATTUNE_ASSIGN_OR_RETURN(a.subject, Id(t.reader, "subject_id", f[t.col[kSubject]]));
      ATTUNE_ASSIGN_OR_RETURN(int64_t hadm, Id(t.reader, "hadm_id", f[t.col[kHadm]]));
      auto s = subjects.find(a.subject);
      if (s == subjects.end()) {
        return t.reader.Error(absl::StrCat("subject_id ", a.subject, " is not in patients.csv.gz"));
      }
      ATTUNE_ASSIGN_OR_RETURN(a.admit, Hours(t.reader, "admittime", f[t.col[kAdmit]]));
      ATTUNE_ASSIGN_OR_RETURN(a.discharge, Hours(t.reader, "dischtime", f[t.col[kDisch]]));
      const std::string& died = f[t.col[kDied]];
      if (died != "0" && died != "1") {
        return t.reader.Error(absl::StrCat("hospital_expire_flag: '", died, "' is neither 0 nor 1"));
      }
      ImportedPatient& p = a.patient;
      p.id = absl::StrCat(hadm);
      p.group_key = absl::StrCat(a.subject);
      p.label = died == "1";
      p.site_key = o.site_by == "admission_location" ? f[t.col[kLocation]] : f[t.col[kType]];
      const int year = f[t.col[kAdmit]].empty() ? 0 : std::atoi(f[t.col[kAdmit]].c_str());
      const double age = s->second.anchor_age + (year - s->second.anchor_year);
      const std::string& insurance = f[t.col[kInsurance]];
      p.groups = {s->second.sex, AgeBand(age), CoarseRace(f[t.col[kRace]]),
                  insurance.empty() ? "unknown" : insurance};
      p.static_values = {age, 0.0};
      if (!admissions.emplace(hadm, std::move(a)).second) {
        return t.reader.Error(absl::StrCat("hadm_id ", hadm, " appears twice"));
      }
    }
  }
  std::map<int64_t, std::vector<int64_t>> by_subject;  // hadm_ids
  for (const auto& [hadm, a] : admissions) by_subject[a.subject].push_back(hadm);
  for (auto& [hadm, a] : admissions) {
    int earlier = 0;
    for (int64_t other : by_subject[a.subject]) earlier += admissions[other].discharge <= a.admit;
    a.patient.static_values[1] = earlier;
  }
  // Lab names.
  std::map<std::string, std::string> lab_names;  // itemid → label
  {
    Table t(o.source, "d_labitems");
    ATTUNE_RETURN_IF_ERROR(t.Open({"itemid", "label"}));
    for (;;) {
      ATTUNE_ASSIGN_OR_RETURN(bool more, t.Next(&f));
      if (!more) break;
      lab_names[f[t.col[0]]] = f[t.col[1]].empty() ? f[t.col[0]] : f[t.col[1]];
    }
  }
  // Labs in the first 48 hours.
  int64_t no_admission = 0, late = 0, text_values = 0, kept = 0;
  {
    Table t(o.source, "labevents");
    ATTUNE_RETURN_IF_ERROR(t.Open({"hadm_id", "itemid", "charttime", "value", "valuenum"}));
    for (;;) {
      ATTUNE_ASSIGN_OR_RETURN(bool more, t.Next(&f));
      if (!more) break;
      if (f[t.col[0]].empty()) {  // outpatient labs belong to no admission
        ++no_admission;
        continue;
      }
      ATTUNE_ASSIGN_OR_RETURN(int64_t hadm, Id(t.reader, "hadm_id", f[t.col[0]]));
      auto a = admissions.find(hadm);
      if (a == admissions.end()) {
        ++no_admission;
        continue;
      }
      ATTUNE_ASSIGN_OR_RETURN(double when, Hours(t.reader, "charttime", f[t.col[2]]));
      const double hours = when - a->second.admit;
      if (hours >= kWindowHours) {
        ++late;
        continue;
      }
      auto name = lab_names.find(f[t.col[1]]);
      ImportedEvent e;
      e.hours = hours;
      e.code = absl::StrCat("lab:", name == lab_names.end() ? f[t.col[1]] : name->second);
      double v = 0;
      if (absl::SimpleAtod(f[t.col[4]], &v)) {
        e.value = v;
      } else {
        text_values += !f[t.col[3]].empty() || !f[t.col[4]].empty();
      }
      a->second.patient.events.push_back(std::move(e));
      ++kept;
    }
  }
  // Diagnoses of earlier admissions.
  int64_t diagnoses = 0;
  {
    Table t(o.source, "diagnoses_icd");
    ATTUNE_RETURN_IF_ERROR(t.Open({"hadm_id", "icd_code", "icd_version"}));
    for (;;) {
      ATTUNE_ASSIGN_OR_RETURN(bool more, t.Next(&f));
      if (!more) break;
      ATTUNE_ASSIGN_OR_RETURN(int64_t hadm, Id(t.reader, "hadm_id", f[t.col[0]]));
      auto source = admissions.find(hadm);
      if (source == admissions.end()) continue;
      for (int64_t later : by_subject[source->second.subject]) {
        Admission& a = admissions[later];
        if (source->second.discharge > a.admit) continue;
        a.patient.events.push_back(ImportedEvent{source->second.discharge - a.admit,
                                                 absl::StrCat("icd", f[t.col[2]], ":", f[t.col[1]]),
                                                 std::nullopt});
        ++diagnoses;
      }
    }
  }
  Cohort c;
  c.subgroup_columns = {"sex", "age_band", "race", "insurance"};
  c.static_columns = {"age_years", "earlier_admissions"};
  for (auto& [hadm, a] : admissions) c.patients.push_back(std::move(a.patient));
  report->notes.push_back(absl::StrCat(kept, " lab events in the first ", kWindowHours,
                                       " h of an admission kept (", late, " later ones left out, ",
                                       no_admission, " outpatient ones belong to no admission); ",
                                       text_values, " had a text value and keep no number"));
  report->notes.push_back(absl::StrCat(diagnoses, " ICD codes of earlier admissions kept; an "
                                       "admission's own codes are assigned at discharge and left out"));
  return c;
}

}  // namespace attune::importers
