#include "attune/common/audit_features.h"

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "attune/common/text.h"

namespace attune {
namespace {

constexpr int kMaxPatchBins = 16;
constexpr int kMaxRegionSide = 4;

constexpr char kStaticPrefix[] = "ehr_static/";
constexpr char kGenePrefix[] = "genomics/";

// The region grid's side (images), at most kMaxRegionSide.
int64_t RegionSide(const ModelConfig& m) {
  return std::min<int64_t>(AuditGridSide(m), kMaxRegionSide);
}

// The names with every site-named feature left empty (its prefix only).
std::vector<std::string> Skeleton(const ModelConfig& m) {
  return AuditFeatureNames(m, {}, {});
}

bool SiteNamed(const std::string& generic) {
  return absl::StartsWith(generic, kStaticPrefix) || absl::StartsWith(generic, kGenePrefix);
}

std::string PrefixOf(const std::string& generic) {
  return absl::StartsWith(generic, kStaticPrefix) ? kStaticPrefix : kGenePrefix;
}

}  // namespace

int64_t AuditGridSide(const ModelConfig& m) {
  if (m.imaging_encoder == "vit") return m.image_size / m.patch_size;
  if (m.imaging_encoder == "cnn") return m.image_size / 4;
  return 0;
}

int64_t AuditImagingTokens(const ModelConfig& m) {
  const int64_t side = AuditGridSide(m);
  return side > 0 ? side * side : m.imaging_patches;
}

int64_t AuditImagingFeatures(const ModelConfig& m) {
  if (AuditGridSide(m) > 0) return RegionSide(m) * RegionSide(m);
  return std::min<int64_t>(m.imaging_patches, kMaxPatchBins);
}

int64_t AuditImagingBin(const ModelConfig& m, int64_t k) {
  const int64_t side = AuditGridSide(m);
  if (side > 0) {
    const int64_t r = RegionSide(m);
    return ((k / side) * r / side) * r + (k % side) * r / side;
  }
  return k * AuditImagingFeatures(m) / m.imaging_patches;
}

size_t AuditFeatureCount(const ModelConfig& m) {
  size_t n = 0;
  if (m.has_static()) n += static_cast<size_t>(m.static_features);
  if (m.has_events()) n += static_cast<size_t>(m.event_buckets);
  if (m.has_imaging()) n += static_cast<size_t>(AuditImagingFeatures(m));
  if (m.has_genomics()) n += static_cast<size_t>(m.genes);
  return n;
}

std::vector<std::string> AuditFeatureNames(const ModelConfig& m,
                                           std::span<const std::string> static_columns,
                                           std::span<const std::string> gene_columns) {
  std::vector<std::string> out;
  out.reserve(AuditFeatureCount(m));
  if (m.has_static()) {
    for (int j = 0; j < m.static_features; ++j) {
      out.push_back(absl::StrCat(kStaticPrefix, j < static_cast<int>(static_columns.size())
                                                     ? static_columns[j]
                                                     : absl::StrCat("feature ", j)));
    }
  }
  if (m.has_events()) {
    for (int k = 0; k < m.event_buckets; ++k) out.push_back(absl::StrCat("ehr_events/bucket ", k));
  }
  if (m.has_imaging()) {
    const int64_t side = AuditGridSide(m), n = AuditImagingFeatures(m);
    for (int64_t k = 0; k < n; ++k) {
      if (side > 0) {
        const int64_t r = RegionSide(m);
        out.push_back(absl::StrCat("imaging/region row ", k / r, " col ", k % r));
      } else if (n == m.imaging_patches) {
        out.push_back(absl::StrCat("imaging/patch ", k));
      } else {
        const int64_t lo = k * m.imaging_patches / n, hi = (k + 1) * m.imaging_patches / n - 1;
        out.push_back(absl::StrCat("imaging/patches ", lo, "-", hi));
      }
    }
  }
  if (m.has_genomics()) {
    for (int j = 0; j < m.genes; ++j) {
      out.push_back(absl::StrCat(kGenePrefix, j < static_cast<int>(gene_columns.size())
                                                  ? gene_columns[j]
                                                  : absl::StrCat("gene ", j)));
    }
  }
  return out;
}

Status CheckAuditFeatureNames(const ModelConfig& m, std::span<const std::string> names) {
  const size_t want = AuditFeatureCount(m);
  if (names.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        names.size(), " audit features declared; the study's model has ", want));
  }
  const std::vector<std::string> skeleton = Skeleton(m);
  std::set<std::string_view> seen;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(
          absl::StrCat("audit feature #", i, " '", SafeText(name, 64), "' ", why));
    };
    if (!SiteNamed(skeleton[i])) {
      if (name != skeleton[i]) return bad(absl::StrCat("should be '", skeleton[i], "'"));
    } else {
      const std::string prefix = PrefixOf(skeleton[i]);
      if (!absl::StartsWith(name, prefix)) return bad(absl::StrCat("should start with ", prefix));
      const size_t len = name.size() - prefix.size();
      if (len == 0 || len > kMaxFeatureNameBytes) {
        return bad(absl::StrCat("should name its column in 1..", kMaxFeatureNameBytes, " bytes"));
      }
      if (SafeText(name, name.size() + 3) != name) return bad("is not printable UTF-8");
    }
    if (!seen.insert(name).second) return bad("is declared twice");
  }
  return absl::OkStatus();
}

std::vector<std::string> AgreedAuditFeatureNames(
    const ModelConfig& m, std::span<const std::vector<std::string>* const> lists) {
  std::vector<std::string> out, skeleton;
  for (const auto* list : lists) {
    if (list->empty()) continue;
    if (out.empty()) {
      out = *list;
      continue;
    }
    if (skeleton.empty()) skeleton = Skeleton(m);
    for (size_t i = 0; i < out.size() && i < list->size(); ++i) {
      if (out[i] != (*list)[i]) out[i] = skeleton[i];
    }
  }
  return out;
}

}  // namespace attune
