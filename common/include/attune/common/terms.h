// The study's terms: what every site defends itself with against a
// coordinator it does not have to trust (DESIGN.md, "Security";
// docs/threat-model.md).
//
// The terms are the part of the study file that decides what a site may be
// asked to reveal -- who the peers are, how secure aggregation and
// differential privacy must be run, what the audit may ask for, which model
// is trained -- taken out of study.json by `attune provision` and signed
// with the study CA's key, which stays with the study's owner and never on
// the coordinator's machine. Each site's bundle carries them
// (<bundle>/study.terms); the coordinator forwards the current signed terms
// with every task, so roster changes reach live sites; a site checks each
// task against the newest terms it has verified and refuses what they do not
// allow, naming the term. A version number, raised by every re-signing
// (add-site, revoke, sign), makes older terms stale: a site never goes back.
//
// The signed file is JSON:
//   {"format": "attune.terms/1", "terms": "<the terms' JSON text>",
//    "signature": "<hex: the CA key's signature over kTermsContext + text>"}
// The terms' text is signed byte for byte, so no canonical form is needed.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/status.h"

namespace attune {

inline constexpr char kTermsFile[] = "study.terms";  // in every bundle folder
inline constexpr char kTermsFormat[] = "attune.terms/1";
// Domain separation: the CA key signs certificates too.
inline constexpr char kTermsContext[] = "attune study terms v1\n";
// A signed terms file larger than this is refused before it is parsed.
inline constexpr size_t kMaxTermsBytes = 1 << 20;

struct StudyTerms {
  std::string study_id;
  int64_t version = 1;                // raised by every re-signing
  std::vector<std::string> roster;    // the only names a site takes as peers
  std::vector<std::string> revoked;   // never peers, whatever the roster says
  int rounds = 0;                     // training rounds after round 0

  // Secure aggregation: when on, a site sends no update or evaluation in
  // the clear, and takes part only with a threshold of at least
  // max(min_threshold, the site's own minimum; secagg.h MinimumThreshold).
  bool secure_aggregation = false;
  int min_threshold = 0;

  // Differential privacy (privacy.h): with a mode, a TRAIN task must clip
  // to at most clip_norm and add at least the noise noise_multiplier implies.
  std::string privacy_mode = "off";   // off, central, local
  double clip_norm = 0;
  double noise_multiplier = 0;
  double epsilon = 0;                 // the study's budget
  double delta = 0;

  // The audit: the columns (and their values) a site may be asked to
  // count patients by, the most score-histogram bins, and k.
  std::vector<std::string> audit_columns;
  std::map<std::string, std::vector<std::string>> audit_values;
  int max_histogram_bins = 0;
  int min_cell = 0;
  int max_releases = 0;  // evaluation releases per model and split (site_releases.h)
  // > 0: every evaluation release is noised (eval_stats.h EvalNoise) and
  // charged to the site's ledger against epsilon and delta above.
  double audit_noise_multiplier = 0;
  double audit_value_clip = 0;

  // The model every site trains: its configuration (ModelConfig::ToJson)
  // and the seed its initial weights are drawn from.
  std::string model_config_json;
  uint64_t seed = 0;

  bool privacy_enabled() const { return privacy_mode != "off"; }
  bool audit_noised() const { return audit_noise_multiplier > 0; }
  // On the roster and not revoked.
  bool Admits(const std::string& site) const;
  // SHA-256 (hex) of model_config_json.
  std::string ModelDigest() const;

  std::string ToJson() const;
  // Unknown fields are refused: a site never accepts terms it cannot check.
  static StatusOr<StudyTerms> FromJson(const std::string& text);
};

// The terms of a validated study file, at `version`.
StudyTerms TermsOf(const StudyConfig& study, int64_t version);

// "" when `a` and `b` say the same (the version aside); otherwise the name
// of the first term in which they differ, e.g. "roster" or "privacy.clip_norm".
std::string TermsDifference(const StudyTerms& a, const StudyTerms& b);

// The signed terms file of `terms`, signed with the CA's PEM private key.
StatusOr<std::string> SignTerms(const StudyTerms& terms, const std::string& ca_key_pem);

// Checks a signed terms file against the study CA's certificate and returns
// its terms. PermissionDenied for a bad signature (forged or altered
// terms), InvalidArgument for a file that is not signed terms at all.
StatusOr<StudyTerms> VerifyTerms(const std::string& signed_text, const std::string& ca_cert_pem);

// Reads and verifies <path>; errors name the file.
StatusOr<StudyTerms> LoadTerms(const std::string& path, const std::string& ca_cert_pem);

}  // namespace attune
