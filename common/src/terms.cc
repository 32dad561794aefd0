#include "attune/common/terms.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "attune/common/crypto.h"
#include "attune/common/tensor_codec.h"
#include "json_fields.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

using Json = nlohmann::ordered_json;
using nlohmann::json;

crypto::Bytes SignedMessage(const std::string& terms_text) {
  // Sized once and filled: growing it by insert() after an exact-size
  // construction makes GCC 12 warn (-Wstringop-overread) about a copy it
  // cannot prove is in bounds.
  const size_t context = sizeof(kTermsContext) - 1;
  crypto::Bytes m(context + terms_text.size());
  std::copy(terms_text.begin(), terms_text.end(),
            std::copy(kTermsContext, kTermsContext + context, m.begin()));
  return m;
}

StatusOr<std::string> FromHex(const std::string& hex) {
  if (hex.size() % 2 != 0) return absl::InvalidArgumentError("odd-length hex");
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      const char c = hex[2 * i + k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return absl::InvalidArgumentError("not lower-case hex");
      v = v * 16 + d;
    }
    out[i] = static_cast<char>(v);
  }
  return out;
}

Status Fail(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("terms: ", field, ": ", why));
}

}  // namespace

bool StudyTerms::Admits(const std::string& site) const {
  return std::find(roster.begin(), roster.end(), site) != roster.end() &&
         std::find(revoked.begin(), revoked.end(), site) == revoked.end();
}

std::string StudyTerms::ModelDigest() const { return ToHex(Sha256(model_config_json)); }

std::string StudyTerms::ToJson() const {
  Json values = Json::object();
  for (const auto& [column, list] : audit_values) values[column] = list;
  Json j = {{"study_id", study_id},
            {"version", version},
            {"roster", roster},
            {"revoked", revoked},
            {"rounds", rounds},
            {"secure_aggregation", {{"enabled", secure_aggregation},
                                    {"min_threshold", min_threshold}}},
            {"privacy", {{"mode", privacy_mode},
                         {"clip_norm", clip_norm},
                         {"noise_multiplier", noise_multiplier},
                         {"epsilon", epsilon},
                         {"delta", delta}}},
            {"audit", {{"columns", audit_columns},
                       {"values", values},
                       {"max_histogram_bins", max_histogram_bins},
                       {"min_cell", min_cell},
                       {"max_releases", max_releases},
                       {"noise_multiplier", audit_noise_multiplier},
                       {"value_clip", audit_value_clip}}},
            {"model", Json::parse(model_config_json)},
            {"seed", seed}};
  return j.dump(2) + "\n";
}

StatusOr<StudyTerms> StudyTerms::FromJson(const std::string& text) {
  ATTUNE_ASSIGN_OR_RETURN(json j, ParseJsonObject(text, "terms"));
  StudyTerms t;
  Status s;
  FieldReader r(j, "terms: ", &s);
  r.Get("study_id", &t.study_id);
  r.Get("version", &t.version);
  r.Get("roster", &t.roster);
  r.Get("revoked", &t.revoked);
  r.Get("rounds", &t.rounds);
  if (const json* sa = r.Object("secure_aggregation")) {
    FieldReader q(*sa, "terms: secure_aggregation.", &s);
    q.Get("enabled", &t.secure_aggregation);
    q.Get("min_threshold", &t.min_threshold);
    q.RejectUnknown();
  }
  if (const json* p = r.Object("privacy")) {
    FieldReader q(*p, "terms: privacy.", &s);
    q.Get("mode", &t.privacy_mode);
    q.Get("clip_norm", &t.clip_norm);
    q.Get("noise_multiplier", &t.noise_multiplier);
    q.Get("epsilon", &t.epsilon);
    q.Get("delta", &t.delta);
    q.RejectUnknown();
  }
  const json* values = nullptr;
  if (const json* a = r.Object("audit")) {
    FieldReader q(*a, "terms: audit.", &s);
    q.Get("columns", &t.audit_columns);
    values = q.Object("values");
    q.Get("max_histogram_bins", &t.max_histogram_bins);
    q.Get("min_cell", &t.min_cell);
    q.Get("max_releases", &t.max_releases);
    q.Get("noise_multiplier", &t.audit_noise_multiplier);
    q.Get("value_clip", &t.audit_value_clip);
    q.RejectUnknown();
  }
  const json* model = r.Object("model");
  r.Get("seed", &t.seed);
  r.RejectUnknown();
  ATTUNE_RETURN_IF_ERROR(s);
  if (values) {
    for (auto it = values->begin(); it != values->end(); ++it) {
      std::vector<std::string>& list = t.audit_values[it.key()];
      if (!it.value().is_array()) return Fail("audit.values." + it.key(), "must be an array");
      for (const json& v : it.value()) {
        if (!v.is_string()) return Fail("audit.values." + it.key(), "must be strings");
        list.push_back(v.get<std::string>());
      }
    }
  }
  if (t.study_id.empty()) return Fail("study_id", "missing");
  if (t.version < 1) return Fail("version", "must be >= 1");
  if (t.roster.empty()) return Fail("roster", "missing or empty");
  if (t.rounds < 0) return Fail("rounds", "must be >= 0");
  if (t.min_threshold < 0) return Fail("secure_aggregation.min_threshold", "must be >= 0");
  if (t.privacy_mode != "off" && t.privacy_mode != "central" && t.privacy_mode != "local") {
    return Fail("privacy.mode", "must be off, central or local");
  }
  if (t.privacy_enabled() && !(t.clip_norm > 0 && t.noise_multiplier > 0)) {
    return Fail("privacy", "clip_norm and noise_multiplier must be > 0 with a mode");
  }
  if (t.max_histogram_bins < 2) return Fail("audit.max_histogram_bins", "must be >= 2");
  if (t.min_cell < 1) return Fail("audit.min_cell", "must be >= 1");
  if (t.max_releases < 1) return Fail("audit.max_releases", "must be >= 1");
  if (!(t.audit_noise_multiplier >= 0)) return Fail("audit.noise_multiplier", "must be >= 0");
  if (t.audit_noised()) {
    if (!(t.audit_value_clip > 0)) return Fail("audit.value_clip", "must be > 0 with noise");
    if (t.max_histogram_bins % 2 != 0) {
      return Fail("audit.max_histogram_bins", "must be even with noise");
    }
  }
  if ((t.privacy_enabled() || t.audit_noised()) &&
      !(t.epsilon > 0 && t.delta > 0 && t.delta < 1)) {
    return Fail("privacy", "a budget epsilon > 0 and 0 < delta < 1 are needed with noise");
  }
  if (!model) return Fail("model", "missing");
  ATTUNE_ASSIGN_OR_RETURN(ModelConfig m, ModelConfig::FromJson(model->dump()));
  t.model_config_json = m.ToJson();  // the canonical text, whatever the file's spacing
  return t;
}

StudyTerms TermsOf(const StudyConfig& study, int64_t version) {
  StudyTerms t;
  t.study_id = study.study_id;
  t.version = version;
  t.roster = study.roster;
  t.revoked = study.revoked;
  t.rounds = study.rounds;
  t.secure_aggregation = study.secure_aggregation;
  t.min_threshold = study.secure_aggregation ? study.secagg.threshold : 0;
  t.privacy_mode = study.privacy.mode;
  if (study.privacy.enabled()) {
    t.clip_norm = study.privacy.clip_norm;
    t.noise_multiplier = study.privacy.noise_multiplier;
  }
  if (study.privacy.enabled() || study.audit.noised()) {  // one ledger for both
    t.epsilon = study.privacy.epsilon;
    t.delta = study.privacy.delta;
  }
  if (study.audit.noised()) {
    t.audit_noise_multiplier = study.audit.noise_multiplier;
    t.audit_value_clip = study.audit.value_clip;
  }
  t.audit_columns = study.audit.columns;
  t.audit_values = study.audit.values;
  t.max_histogram_bins = study.audit.histogram_bins;
  t.min_cell = study.audit.report.min_cell;
  t.max_releases = study.audit.max_releases;
  t.model_config_json = study.model.ToJson();
  t.seed = study.train.seed;
  return t;
}

std::string TermsDifference(const StudyTerms& a, const StudyTerms& b) {
  if (a.study_id != b.study_id) return "study_id";
  if (a.roster != b.roster) return "roster";
  if (a.revoked != b.revoked) return "revoked";
  if (a.rounds != b.rounds) return "rounds";
  if (a.secure_aggregation != b.secure_aggregation) return "secure_aggregation";
  if (a.min_threshold != b.min_threshold) return "secagg.threshold";
  if (a.privacy_mode != b.privacy_mode) return "privacy.mode";
  if (a.clip_norm != b.clip_norm) return "privacy.clip_norm";
  if (a.noise_multiplier != b.noise_multiplier) return "privacy.noise_multiplier";
  if (a.epsilon != b.epsilon) return "privacy.epsilon";
  if (a.delta != b.delta) return "privacy.delta";
  if (a.audit_columns != b.audit_columns) return "audit.columns";
  if (a.audit_values != b.audit_values) return "audit.values";
  if (a.max_histogram_bins != b.max_histogram_bins) return "audit.histogram_bins";
  if (a.min_cell != b.min_cell) return "audit.min_cell";
  if (a.max_releases != b.max_releases) return "audit.max_releases";
  if (a.audit_noise_multiplier != b.audit_noise_multiplier) return "audit.noise_multiplier";
  if (a.audit_value_clip != b.audit_value_clip) return "audit.value_clip";
  if (a.model_config_json != b.model_config_json) return "model";
  if (a.seed != b.seed) return "train.seed";
  return "";
}

StatusOr<std::string> SignTerms(const StudyTerms& terms, const std::string& ca_key_pem) {
  const std::string text = terms.ToJson();
  ATTUNE_ASSIGN_OR_RETURN(crypto::Bytes sig,
                          crypto::SignWithKeyPem(ca_key_pem, SignedMessage(text)));
  Json file = {{"format", kTermsFormat},
               {"terms", text},
               {"signature", ToHex(std::string_view(reinterpret_cast<const char*>(sig.data()),
                                                    sig.size()))}};
  return file.dump(2) + "\n";
}

StatusOr<StudyTerms> VerifyTerms(const std::string& signed_text, const std::string& ca_cert_pem) {
  if (signed_text.size() > kMaxTermsBytes) {
    return absl::InvalidArgumentError(absl::StrCat("signed terms of ", signed_text.size(),
                                                   " bytes, over the limit of ", kMaxTermsBytes));
  }
  ATTUNE_ASSIGN_OR_RETURN(json j, ParseJsonObject(signed_text, "signed terms"));
  std::string format, text, signature_hex;
  Status s;
  FieldReader r(j, "signed terms: ", &s);
  r.Get("format", &format);
  r.Get("terms", &text);
  r.Get("signature", &signature_hex);
  r.RejectUnknown();
  ATTUNE_RETURN_IF_ERROR(s);
  if (format != kTermsFormat) {
    return absl::InvalidArgumentError(
        absl::StrCat("signed terms: format '", format, "', expected '", kTermsFormat, "'"));
  }
  ATTUNE_ASSIGN_OR_RETURN(std::string signature, FromHex(signature_hex));
  Status verified = crypto::VerifyWithCertificatePem(
      ca_cert_pem, SignedMessage(text), crypto::View(signature));
  if (!verified.ok()) {
    return absl::PermissionDeniedError(
        "the study terms are not signed by the study CA (forged or altered terms)");
  }
  return StudyTerms::FromJson(text);
}

StatusOr<StudyTerms> LoadTerms(const std::string& path, const std::string& ca_cert_pem) {
  ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  StatusOr<StudyTerms> terms = VerifyTerms(text, ca_cert_pem);
  if (!terms.ok()) {
    return Status(terms.status().code(), absl::StrCat(path, ": ", terms.status().message()));
  }
  return terms;
}

}  // namespace attune
