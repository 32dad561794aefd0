#include "cohort.h"

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "attune/common/config.h"

namespace attune::importers {
namespace {

namespace fs = std::filesystem;

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t Hash(uint64_t seed, const std::string& s, uint64_t salt) {
  uint64_t h = 1469598103934665603ull ^ Mix(seed) ^ Mix(salt);
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return Mix(h);
}

const std::string& Key(const ImportedPatient& p) { return p.group_key.empty() ? p.id : p.group_key; }

// The split of every group (Key) without a publisher's split: groups are
// stratified by whether any of their examples is positive and, within a
// stratum, ordered by a seeded hash; the first 60% go to train, the next
// 20% to val, the rest to test. Small, skewed cohorts (15 deaths in the
// MIMIC demo) thus get positives in every split.
std::map<std::string, std::string> GroupSplits(const Cohort& cohort, uint64_t seed) {
  std::map<std::string, int> positive;  // group → any positive
  for (const auto& p : cohort.patients) {
    if (p.split.empty()) positive[Key(p)] |= p.label;
  }
  std::vector<std::pair<uint64_t, std::string>> strata[2];
  for (const auto& [key, pos] : positive) strata[pos].emplace_back(Hash(seed, key, 1), key);
  std::map<std::string, std::string> out;
  for (auto& stratum : strata) {
    std::sort(stratum.begin(), stratum.end());
    const size_t n = stratum.size();
    for (size_t i = 0; i < n; ++i) {
      out[stratum[i].second] = i < (6 * n + 5) / 10 ? "train" : i < (8 * n + 5) / 10 ? "val" : "test";
    }
  }
  return out;
}

// A cell for the site files' CSV (which has no quoting): commas become ';'.
std::string Cell(std::string s) {
  for (char& c : s) {
    if (c == ',' || c == '\n' || c == '\r' || c == '\t') c = ';';
  }
  return s;
}

// A site name from a column value: [a-z0-9] kept (lowercased), runs of
// anything else become one '-' ("EW EMER." → "ew-emer").
std::string Slug(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c)) {
      out += static_cast<char>(std::tolower(c));
    } else if (!out.empty() && out.back() != '-') {
      out += '-';
    }
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "blank" : out;
}

std::string Number(std::optional<double> v) {
  return v && std::isfinite(*v) ? absl::StrCat(*v) : std::string();
}

Status WriteText(const std::string& path, const std::string& text) {
  return WriteFileAtomic(path, text);
}

}  // namespace

std::string AgeBand(std::optional<double> years) {
  if (!years) return "unknown";
  return *years < 40 ? "<40" : *years < 60 ? "40-59" : ">=60";
}

Status WriteSites(const Cohort& cohort, const ImportOptions& o, const std::string& prefix,
                  ImportReport* report) {
  // Site of every patient.
  std::map<std::string, std::vector<const ImportedPatient*>> sites;
  if (!o.site_by.empty()) {
    std::map<std::string, int> counts;
    for (const auto& p : cohort.patients) counts[p.site_key]++;
    std::vector<std::string> pooled;
    for (const auto& p : cohort.patients) {
      const bool small = counts[p.site_key] < kMinSitePatients;
      sites[absl::StrCat(prefix, "-", small ? "other" : Slug(p.site_key))].push_back(&p);
    }
    for (const auto& [key, n] : counts) {
      if (n < kMinSitePatients) pooled.push_back(key);
    }
    if (!pooled.empty()) {
      report->notes.push_back(absl::StrCat(pooled.size(), " ", o.site_by, " values with fewer than ",
                                           kMinSitePatients, " patients pooled into ", prefix,
                                           "-other: ", absl::StrJoin(pooled, " ")));
    }
  } else {
    for (const auto& p : cohort.patients) {
      const int s = static_cast<int>(Hash(o.seed, Key(p), 2) % static_cast<uint64_t>(o.sites));
      sites[absl::StrCat("site-", s + 1)].push_back(&p);
    }
  }
  for (const auto& [name, members] : sites) {
    const fs::path dir = fs::path(o.out_dir) / name;
    if (fs::exists(dir) && !o.overwrite) {
      return absl::AlreadyExistsError(
          absl::StrCat(dir.string(), ": exists (use --overwrite to replace it)"));
    }
  }
  const std::map<std::string, std::string> splits = GroupSplits(cohort, o.seed);
  report->sites.clear();
  for (const auto& [name, members] : sites) {
    const fs::path dir = fs::path(o.out_dir) / name;
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
    std::string co = absl::StrCat("patient_id,split,label",
                                  cohort.subgroup_columns.empty() ? "" : ",",
                                  absl::StrJoin(cohort.subgroup_columns, ","), "\n");
    std::string st = absl::StrCat("patient_id,", absl::StrJoin(cohort.static_columns, ","), "\n");
    std::string ev = "patient_id,time,code,value\n";
    std::string ge = absl::StrCat("patient_id\t", absl::StrJoin(cohort.gene_columns, "\t"), "\n");
    bool any_static = false, any_events = false, any_genes = false;
    for (const ImportedPatient* p : members) {
      absl::StrAppend(&co, Cell(p->id), ",", (p->split.empty() ? splits.at(Key(*p)) : p->split), ",", p->label);
      for (const auto& g : p->groups) absl::StrAppend(&co, ",", Cell(g));
      co += "\n";
      if (!p->static_values.empty()) {
        any_static = true;
        absl::StrAppend(&st, Cell(p->id));
        for (const auto& v : p->static_values) absl::StrAppend(&st, ",", Number(v));
        st += "\n";
      }
      for (const auto& e : p->events) {
        any_events = true;
        absl::StrAppend(&ev, Cell(p->id), ",", e.hours, ",", Cell(e.code), ",", Number(e.value),
                        "\n");
      }
      if (!p->genes.empty()) {
        any_genes = true;
        absl::StrAppend(&ge, Cell(p->id), "\t", absl::StrJoin(p->genes, "\t"), "\n");
      }
      if (p->image) {
        fs::create_directories(dir / "imaging", ec);
        ATTUNE_RETURN_IF_ERROR(WriteNpy((dir / "imaging" / (p->id + ".npy")).string(), *p->image));
      }
      report->patients += 1;
      report->positives += p->label;
    }
    ATTUNE_RETURN_IF_ERROR(WriteText((dir / "cohort.csv").string(), co));
    if (any_static || any_events) fs::create_directories(dir / "ehr", ec);
    if (any_static) ATTUNE_RETURN_IF_ERROR(WriteText((dir / "ehr/static.csv").string(), st));
    if (any_events) ATTUNE_RETURN_IF_ERROR(WriteText((dir / "ehr/events.csv").string(), ev));
    if (any_genes) {
      fs::create_directories(dir / "genomics", ec);
      ATTUNE_RETURN_IF_ERROR(WriteText((dir / "genomics/expression.tsv").string(), ge));
    }
    report->sites.push_back(name);
  }
  return absl::OkStatus();
}

}  // namespace attune::importers
