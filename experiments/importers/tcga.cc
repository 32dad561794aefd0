// TCGA GBM/LGG glioma mutations (UCI #759), TCGA_GBM_LGG_Mutations_all.csv:
// a UTF-8 BOM, CRLF line ends, quoted diagnoses with commas, ages written
// "51 years 108 days" (or "87 years", or "--"), and 20 genes coded
// MUTATED / NOT_MUTATED.
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cohort.h"
#include "csv.h"
#include "readers.h"

namespace attune::importers {
namespace {

constexpr char kFile[] = "TCGA_GBM_LGG_Mutations_all.csv";

// "51 years 108 days" → 51.2957; "87 years" → 87; "--" → empty.
StatusOr<std::optional<double>> ParseAge(const CsvReader& r, const std::string& text) {
  if (text == "--" || text.empty()) return std::optional<double>();
  std::vector<std::string> w = absl::StrSplit(text, ' ', absl::SkipEmpty());
  double years = 0, days = 0;
  const bool ok = (w.size() == 2 || w.size() == 4) && absl::SimpleAtod(w[0], &years) &&
                  w[1] == "years" &&
                  (w.size() == 2 || (absl::SimpleAtod(w[2], &days) && w[3] == "days"));
  if (!ok || years < 0 || years > 130 || days < 0 || days > 366) {
    return r.Error(absl::StrCat("Age_at_diagnosis: '", text,
                                "' is not of the form 'N years' or 'N years M days'"));
  }
  return std::optional<double>(years + days / 365.25);
}

std::string Known(const std::string& v) {
  return v == "--" || v == "not reported" || v.empty() ? "unknown" : v;
}

}  // namespace

StatusOr<Cohort> ReadTcgaGlioma(const ImportOptions& o, ImportReport* report) {
  const std::string path = o.source + "/" + kFile;
  CsvReader r(path);
  if (!r.ok()) return absl::NotFoundError(absl::StrCat(path, ": cannot open (--source)"));
  std::vector<std::string> header, f;
  if (!r.Next(&header)) return r.Error("empty file");
  ATTUNE_ASSIGN_OR_RETURN(std::vector<int> col,
                          ColumnIndexes(r, header, {"Grade", "Case_ID", "Gender",
                                                    "Age_at_diagnosis", "Race", "IDH1"}));
  enum { kGrade, kCase, kGender, kAge, kRace, kFirstGene };
  Cohort c;
  c.subgroup_columns = {"sex", "age_band", "race"};
  c.static_columns = {"age_years"};
  c.gene_columns.assign(header.begin() + col[kFirstGene], header.end());
  std::set<std::string> seen;
  int missing_age = 0;
  while (r.Next(&f)) {
    if (f.size() != header.size()) {
      return r.Error(absl::StrCat("expected ", header.size(), " fields, got ", f.size()));
    }
    ImportedPatient p;
    p.id = f[col[kCase]];
    std::vector<std::string> barcode = absl::StrSplit(p.id, '-');
    if (barcode.size() != 3 || barcode[0] != "TCGA") {
      return r.Error(absl::StrCat("Case_ID: '", p.id, "' is not a TCGA barcode (TCGA-TSS-ID)"));
    }
    if (!seen.insert(p.id).second) return r.Error(absl::StrCat("Case_ID '", p.id, "' appears twice"));
    p.site_key = barcode[1];
    const std::string& grade = f[col[kGrade]];
    if (grade != "GBM" && grade != "LGG") {
      return r.Error(absl::StrCat("Grade: '", grade, "' is neither GBM nor LGG"));
    }
    p.label = grade == "GBM";
    ATTUNE_ASSIGN_OR_RETURN(std::optional<double> age, ParseAge(r, f[col[kAge]]));
    missing_age += !age;
    const std::string& sex = f[col[kGender]];
    p.groups = {sex == "Male" ? "M" : sex == "Female" ? "F" : "unknown", AgeBand(age),
                Known(f[col[kRace]])};
    p.static_values = {age};
    for (size_t g = col[kFirstGene]; g < f.size(); ++g) {
      if (f[g] != "MUTATED" && f[g] != "NOT_MUTATED") {
        return r.Error(absl::StrCat(header[g], ": '", f[g], "' is neither MUTATED nor NOT_MUTATED"));
      }
      p.genes.push_back(f[g] == "MUTATED" ? 1.0f : 0.0f);
    }
    c.patients.push_back(std::move(p));
  }
  if (missing_age > 0) {
    report->notes.push_back(absl::StrCat(missing_age, " cases with age '--': age left missing "
                                                      "(imputed by the worker), age band 'unknown'"));
  }
  if (o.site_by == "tss") {
    report->notes.push_back(
        "sites by tissue-source site: each TSS contributed only GBM or only LGG cases, so these "
        "sites are label-pure (a label-skew stress test)");
  }
  return c;
}

}  // namespace attune::importers
