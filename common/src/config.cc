#include "attune/common/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "json_fields.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

using nlohmann::json;

Status Range(const std::string& field, double v, double lo, double hi) {
  if (v < lo || v > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": must be in [", lo, ", ", hi, "] (got ", v, ")"));
  }
  return absl::OkStatus();
}

void ReadModel(const json& j, const std::string& prefix, ModelConfig* m,
               Status* s) {
  FieldReader r(j, prefix, s);
  r.Get("d_model", &m->d_model);
  r.Get("heads", &m->heads);
  r.Get("layers", &m->layers);
  r.Get("attention", &m->attention);
  r.Get("fusion", &m->fusion);
  r.Get("static_features", &m->static_features);
  r.Get("event_buckets", &m->event_buckets);
  r.Get("max_events", &m->max_events);
  r.Get("imaging_encoder", &m->imaging_encoder);
  r.Get("imaging_patches", &m->imaging_patches);
  r.Get("imaging_dim", &m->imaging_dim);
  r.Get("image_channels", &m->image_channels);
  r.Get("image_size", &m->image_size);
  r.Get("patch_size", &m->patch_size);
  r.Get("genes", &m->genes);
  r.Get("dropout", &m->dropout);
  r.RejectUnknown();
}

Status OneOf(const std::string& field, const std::string& v, const std::vector<std::string>& names) {
  if (std::find(names.begin(), names.end(), v) != names.end()) return absl::OkStatus();
  std::string list;
  for (const auto& n : names) absl::StrAppend(&list, list.empty() ? "" : ", ", n);
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown value '", v, "' (one of ", list, ")"));
}

Status Prefixed(const std::string& prefix, Status s) {
  if (s.ok()) return s;
  return Status(s.code(), absl::StrCat(prefix, s.message()));
}

}  // namespace

const std::vector<std::string>& ModalityNames() {
  static const std::vector<std::string> names = {"ehr_static", "ehr_events", "imaging",
                                                 "genomics"};
  return names;
}

std::vector<int64_t> ModelConfig::imaging_shape() const {
  if (raw_images()) return {image_channels, image_size, image_size};
  return {imaging_patches, imaging_dim};
}

Status ModelConfig::Validate() const {
  ATTUNE_RETURN_IF_ERROR(Range("model.d_model", d_model, 4, 4096));
  ATTUNE_RETURN_IF_ERROR(Range("model.heads", heads, 1, 64));
  if (d_model % heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.heads: must divide model.d_model (", d_model, " % ", heads,
        " != 0)"));
  }
  ATTUNE_RETURN_IF_ERROR(Range("model.layers", layers, 1, 64));
  ATTUNE_RETURN_IF_ERROR(OneOf("model.attention", attention, {"softmax", "linear"}));
  ATTUNE_RETURN_IF_ERROR(
      OneOf("model.fusion", fusion, {"hierarchical", "cross", "coattention", "persam"}));
  ATTUNE_RETURN_IF_ERROR(Range("model.static_features", static_features, 0, 100000));
  ATTUNE_RETURN_IF_ERROR(Range("model.event_buckets", event_buckets, 1, 10000000));
  ATTUNE_RETURN_IF_ERROR(Range("model.max_events", max_events, 0, 100000));
  ATTUNE_RETURN_IF_ERROR(OneOf("model.imaging_encoder", imaging_encoder,
                               {"patch_features", "mil", "vit", "cnn", "none"}));
  ATTUNE_RETURN_IF_ERROR(Range("model.imaging_patches", imaging_patches, 1, 100000));
  ATTUNE_RETURN_IF_ERROR(Range("model.imaging_dim", imaging_dim, 1, 100000));
  ATTUNE_RETURN_IF_ERROR(Range("model.image_channels", image_channels, 1, 16));
  ATTUNE_RETURN_IF_ERROR(Range("model.image_size", image_size, 4, 4096));
  ATTUNE_RETURN_IF_ERROR(Range("model.patch_size", patch_size, 1, 4096));
  if (imaging_encoder == "vit" && image_size % patch_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model.patch_size: must divide model.image_size (",
                                                   image_size, " % ", patch_size, " != 0)"));
  }
  if (imaging_encoder == "cnn" && image_size % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.image_size: the cnn encoder needs a multiple of 4 (got ", image_size, ")"));
  }
  ATTUNE_RETURN_IF_ERROR(Range("model.genes", genes, 0, 1000000));
  ATTUNE_RETURN_IF_ERROR(Range("model.dropout", dropout, 0, 0.9));
  if (!has_static() && !has_events() && !has_imaging() && !has_genomics()) {
    return absl::InvalidArgumentError(
        "model: no modality (static_features, max_events and genes are 0 and imaging_encoder is "
        "none)");
  }
  if (fusion == "persam" && !has_events() && !has_imaging() && !has_genomics()) {
    return absl::InvalidArgumentError(
        "model.fusion: persam needs an instance modality (events, imaging or genomics)");
  }
  return absl::OkStatus();
}

std::string ModelConfig::ToJson() const {
  json j = {{"d_model", d_model},
            {"heads", heads},
            {"layers", layers},
            {"attention", attention},
            {"fusion", fusion},
            {"static_features", static_features},
            {"event_buckets", event_buckets},
            {"max_events", max_events},
            {"imaging_encoder", imaging_encoder},
            {"imaging_patches", imaging_patches},
            {"imaging_dim", imaging_dim},
            {"image_channels", image_channels},
            {"image_size", image_size},
            {"patch_size", patch_size},
            {"genes", genes},
            {"dropout", dropout}};
  return j.dump();
}

StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("model: not a JSON object");
  }
  ModelConfig m;
  Status s;
  ReadModel(j, "model.", &m, &s);
  ATTUNE_RETURN_IF_ERROR(s);
  ATTUNE_RETURN_IF_ERROR(m.Validate());
  return m;
}

bool StrategyConfig::robust() const {
  return name == "median" || name == "trimmed_mean" || name == "krum";
}

bool StudyConfig::Admits(const std::string& site) const {
  return std::find(roster.begin(), roster.end(), site) != roster.end() &&
         std::find(revoked.begin(), revoked.end(), site) == revoked.end();
}

Status AuditConfig::Validate(bool secure) const {
  std::vector<std::string> missing;
  for (const auto& c : columns) {
    if (!values.count(c)) missing.push_back(c);
  }
  for (const auto& [column, listed] : values) {
    const std::string field = absl::StrCat("audit.values.", column);
    if (std::find(columns.begin(), columns.end(), column) == columns.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": not one of audit.columns (", absl::StrJoin(columns, ", "), ")"));
    }
    if (listed.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": empty list"));
    std::set<std::string> seen;
    for (const auto& v : listed) {
      if (v == "(other)") {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ": \"(other)\" is the cell of the values not listed; do not list it"));
      }
      if (!seen.insert(v).second) {
        return absl::InvalidArgumentError(absl::StrCat(field, ": \"", v, "\" listed twice"));
      }
    }
  }
  if (secure && !missing.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "audit.values: with secure_aggregation every audit column needs its list of values "
        "(sites add their subgroup sums word by word, so all must lay out the same cells; "
        "a value not listed is counted under \"(other)\"), e.g. \"values\": {\"sex\": "
        "[\"F\", \"M\"]}; missing: ",
        absl::StrJoin(missing, ", ")));
  }
  return absl::OkStatus();
}

static Status StrategyValidate(const StrategyConfig& st) {
  static const std::set<std::string> kNames = {"fedavg",  "fedavgm",    "fedprox",
                                               "fedadam", "fedyogi",    "fedadagrad",
                                               "median",  "trimmed_mean", "krum"};
  if (!kNames.count(st.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "strategy.name: unknown strategy '", st.name,
        "' (one of fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, median, "
        "trimmed_mean, krum)"));
  }
  ATTUNE_RETURN_IF_ERROR(Range("strategy.server_learning_rate", st.server_learning_rate, 1e-9, 1e3));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.momentum", st.momentum, 0, 0.999999));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.beta1", st.beta1, 0, 0.999999));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.beta2", st.beta2, 0, 0.999999));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.tau", st.tau, 1e-12, 10));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.proximal_mu", st.proximal_mu, 0, 1e3));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.trim_fraction", st.trim_fraction, 0, 0.4999));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.krum_byzantine", st.krum_byzantine, 0, 1e6));
  ATTUNE_RETURN_IF_ERROR(Range("strategy.krum_select", st.krum_select, 1, 1e6));
  return absl::OkStatus();
}

Status StudyConfig::Validate() const {
  if (study_id.empty()) return absl::InvalidArgumentError("study_id: required");
  for (char c : study_id) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' &&
        c != '.') {
      return absl::InvalidArgumentError(
          "study_id: only letters, digits, '-', '_' and '.' are allowed");
    }
  }
  ATTUNE_RETURN_IF_ERROR(Range("rounds", rounds, 1, 100000));
  if (roster.empty()) {
    return absl::InvalidArgumentError("roster: must list at least one site");
  }
  std::set<std::string> unique(roster.begin(), roster.end());
  if (unique.size() != roster.size()) {
    return absl::InvalidArgumentError("roster: a site is listed twice");
  }
  for (const auto& s : roster) {
    if (s.empty()) return absl::InvalidArgumentError("roster: empty site name");
    if (s.rfind(kReservedPrefix, 0) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "roster: '", s, "': names starting with '", kReservedPrefix,
          "' are reserved (e.g. ", kOperatorName, ")"));
    }
  }
  for (const auto& s : revoked) {
    if (std::find(roster.begin(), roster.end(), s) == roster.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("revoked: '", s, "' is not on the roster"));
    }
  }
  ATTUNE_RETURN_IF_ERROR(
      Range("min_sites", min_sites, 1, static_cast<double>(roster.size())));
  ATTUNE_RETURN_IF_ERROR(Range("sites_per_round", sites_per_round, 1e-6, 1));
  ATTUNE_RETURN_IF_ERROR(Range("heartbeat_timeout_s", heartbeat_timeout_s, 0.5, 86400));
  ATTUNE_RETURN_IF_ERROR(Range("max_update_norm", max_update_norm, 1e-12, 1e30));
  ATTUNE_RETURN_IF_ERROR(StrategyValidate(strategy));
  if (strategy.name == "krum" && min_sites < 2 * strategy.krum_byzantine + 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "strategy.krum_byzantine: Krum tolerates f Byzantine sites only with at least 2f + 3 "
        "updates, so min_sites must be >= ", 2 * strategy.krum_byzantine + 3, " (it is ",
        min_sites, ")"));
  }
  if (strategy.name == "krum" && strategy.krum_select > min_sites) {
    return absl::InvalidArgumentError(absl::StrCat(
        "strategy.krum_select: must be <= min_sites (", min_sites, ")"));
  }
  if (secure_aggregation && strategy.robust()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "strategy.name: '", strategy.name,
        "' needs every site's update in the clear, so it cannot run with "
        "secure_aggregation on; use fedavg, fedavgm, fedprox, fedadam, fedyogi or "
        "fedadagrad, or turn secure_aggregation off"));
  }
  if (secure_aggregation) {
    if (min_sites < 2) {
      return absl::InvalidArgumentError(
          "min_sites: secure aggregation needs at least 2 sites per round (a sum of one "
          "update is that update)");
    }
    if (roster.size() > 255) {
      return absl::InvalidArgumentError("roster: secure aggregation supports at most 255 sites");
    }
    ATTUNE_RETURN_IF_ERROR(Range("secagg.threshold", secagg.threshold, 0, 255));
    if (secagg.threshold == 1) {
      return absl::InvalidArgumentError("secagg.threshold: must be 0 (automatic) or >= 2");
    }
    ATTUNE_RETURN_IF_ERROR(Range("secagg.neighbours", secagg.neighbours, 0, 254));
    ATTUNE_RETURN_IF_ERROR(Range("secagg.value_clip", secagg.value_clip, 1e-6, 1e6));
  }
  if (privacy.mode != "off" && privacy.mode != "central" && privacy.mode != "local") {
    return absl::InvalidArgumentError(absl::StrCat(
        "privacy.mode: must be \"off\", \"central\" or \"local\" (got \"", privacy.mode,
        "\")"));
  }
  if (privacy.enabled()) {
    ATTUNE_RETURN_IF_ERROR(Range("privacy.clip_norm", privacy.clip_norm, 1e-9, 1e9));
    ATTUNE_RETURN_IF_ERROR(Range("privacy.noise_multiplier", privacy.noise_multiplier, 1e-6, 1e6));
    ATTUNE_RETURN_IF_ERROR(Range("privacy.epsilon", privacy.epsilon, 1e-6, 1e9));
    ATTUNE_RETURN_IF_ERROR(Range("privacy.delta", privacy.delta, 1e-300, 0.5));
    if (privacy.mode == "central" && !secure_aggregation) {
      return absl::InvalidArgumentError(
          "privacy.mode: \"central\" noise is added by the sites under secure aggregation; "
          "set secure_aggregation to true, or use \"local\"");
    }
  }
  ATTUNE_RETURN_IF_ERROR(Range("join_timeout_s", join_timeout_s, 0.1, 86400 * 7));
  ATTUNE_RETURN_IF_ERROR(Range("round_deadline_s", round_deadline_s, 0.1, 86400 * 7));
  if (straggler_policy != "wait" && straggler_policy != "quorum") {
    return absl::InvalidArgumentError(absl::StrCat(
        "straggler_policy: must be \"wait\" or \"quorum\" (got \"", straggler_policy, "\")"));
  }
  ATTUNE_RETURN_IF_ERROR(Range("train.local_epochs", train.local_epochs, 1, 10000));
  ATTUNE_RETURN_IF_ERROR(Range("train.batch_size", train.batch_size, 1, 1 << 20));
  ATTUNE_RETURN_IF_ERROR(Range("train.learning_rate", train.learning_rate, 1e-9, 10));
  ATTUNE_RETURN_IF_ERROR(model.Validate());
  ATTUNE_RETURN_IF_ERROR(Range("audit.histogram_bins", audit.histogram_bins, 2, 100000));
  ATTUNE_RETURN_IF_ERROR(Range("audit.every", audit.every, 1, 1e9));
  ATTUNE_RETURN_IF_ERROR(Range("audit.max_releases", audit.max_releases, 1, 1e6));
  ATTUNE_RETURN_IF_ERROR(Range("audit.noise_multiplier", audit.noise_multiplier, 0, 1e6));
  if (audit.noised()) {
    ATTUNE_RETURN_IF_ERROR(Range("audit.value_clip", audit.value_clip, 1e-6, 1e6));
    if (audit.histogram_bins % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "audit.histogram_bins: a noised audit (audit.noise_multiplier > 0) needs an even "
          "number of bins, so that the confusion counts follow from the noisy histograms (got ",
          audit.histogram_bins, ")"));
    }
    // Noised audits are charged to the study's ledger: its budget and δ.
    ATTUNE_RETURN_IF_ERROR(Range("privacy.epsilon", privacy.epsilon, 1e-6, 1e9));
    ATTUNE_RETURN_IF_ERROR(Range("privacy.delta", privacy.delta, 1e-300, 0.5));
  }
  ATTUNE_RETURN_IF_ERROR(Prefixed("audit.", audit.report.Validate()));
  ATTUNE_RETURN_IF_ERROR(audit.Validate(secure_aggregation));
  return absl::OkStatus();
}

StatusOr<StudyConfig> ParseStudyConfig(const std::string& text,
                                       const std::string& path) {
  const std::string prefix = path + ": ";
  ATTUNE_ASSIGN_OR_RETURN(const json j, ParseJsonObject(text, path));
  StudyConfig c;
  Status s;
  FieldReader r(j, prefix, &s);
  r.Get("study_id", &c.study_id);
  r.Get("rounds", &c.rounds);
  r.Get("min_sites", &c.min_sites);
  r.Get("coordinator", &c.coordinator);
  r.Get("roster", &c.roster);
  r.Get("revoked", &c.revoked);
  r.Get("sites_per_round", &c.sites_per_round);
  r.Get("join_timeout_s", &c.join_timeout_s);
  r.Get("round_deadline_s", &c.round_deadline_s);
  r.Get("straggler_policy", &c.straggler_policy);
  r.Get("heartbeat_timeout_s", &c.heartbeat_timeout_s);
  r.Get("max_update_norm", &c.max_update_norm);
  r.Get("secure_aggregation", &c.secure_aggregation);
  if (const json* sa = r.Object("secagg")) {
    FieldReader sr(*sa, prefix + "secagg.", &s);
    sr.Get("threshold", &c.secagg.threshold);
    sr.Get("neighbours", &c.secagg.neighbours);
    sr.Get("value_clip", &c.secagg.value_clip);
    sr.RejectUnknown();
  }
  if (const json* pv = r.Object("privacy")) {
    FieldReader pr(*pv, prefix + "privacy.", &s);
    pr.Get("mode", &c.privacy.mode);
    pr.Get("clip_norm", &c.privacy.clip_norm);
    pr.Get("noise_multiplier", &c.privacy.noise_multiplier);
    pr.Get("epsilon", &c.privacy.epsilon);
    pr.Get("delta", &c.privacy.delta);
    pr.RejectUnknown();
  }
  if (const json* st = r.Object("strategy")) {
    FieldReader sr(*st, prefix + "strategy.", &s);
    StrategyConfig& g = c.strategy;
    sr.Get("name", &g.name);
    sr.Get("server_learning_rate", &g.server_learning_rate);
    sr.Get("momentum", &g.momentum);
    sr.Get("beta1", &g.beta1);
    sr.Get("beta2", &g.beta2);
    sr.Get("tau", &g.tau);
    sr.Get("proximal_mu", &g.proximal_mu);
    sr.Get("trim_fraction", &g.trim_fraction);
    sr.Get("krum_byzantine", &g.krum_byzantine);
    sr.Get("krum_select", &g.krum_select);
    sr.RejectUnknown();
  }
  if (const json* t = r.Object("train")) {
    FieldReader tr(*t, prefix + "train.", &s);
    tr.Get("local_epochs", &c.train.local_epochs);
    tr.Get("batch_size", &c.train.batch_size);
    tr.Get("learning_rate", &c.train.learning_rate);
    tr.Get("seed", &c.train.seed);
    tr.RejectUnknown();
  }
  if (const json* m = r.Object("model")) ReadModel(*m, prefix + "model.", &c.model, &s);
  if (const json* a = r.Object("audit")) {
    FieldReader ar(*a, prefix + "audit.", &s);
    ar.Get("columns", &c.audit.columns);
    ar.Get("min_cell", &c.audit.report.min_cell);
    ar.Get("histogram_bins", &c.audit.histogram_bins);
    ar.Get("every", &c.audit.every);
    ar.Get("max_releases", &c.audit.max_releases);
    ar.Get("noise_multiplier", &c.audit.noise_multiplier);
    ar.Get("value_clip", &c.audit.value_clip);
    ar.Get("top_k", &c.audit.report.top_k);
    ar.Get("flag_jsd_bits", &c.audit.report.flag_jsd);
    ar.Get("flag_membership_auc", &c.audit.report.flag_membership_auc);
    if (const json* d = ar.Object("defining_features")) {
      FieldReader dr(*d, prefix + "audit.defining_features.", &s);
      for (auto it = d->begin(); it != d->end(); ++it) {
        dr.Get(it.key().c_str(), &c.audit.report.defining_features[it.key()]);
      }
    }
    if (const json* v = ar.Object("values")) {
      FieldReader vr(*v, prefix + "audit.values.", &s);
      for (auto it = v->begin(); it != v->end(); ++it) {
        vr.Get(it.key().c_str(), &c.audit.values[it.key()]);
      }
    }
    ar.RejectUnknown();
  }
  r.RejectUnknown();
  ATTUNE_RETURN_IF_ERROR(s);
  ATTUNE_RETURN_IF_ERROR(Prefixed(prefix, c.Validate()));
  return c;
}

StatusOr<StudyConfig> LoadStudyConfig(const std::string& path) {
  ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseStudyConfig(text, path);
}

StatusOr<std::string> ReadFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InternalError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error"));
  return ss.str();
}

Status WriteFileAtomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat(tmp, ": cannot create"));
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!out) return absl::InternalError(absl::StrCat(tmp, ": write error"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace attune
