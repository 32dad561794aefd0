// Study configuration: one JSON file, parsed once (in main) into typed,
// validated structs. Every validation error names the offending field by its
// JSON path, e.g. `study.json: train.batch_size: must be >= 1 (got 0)`.
//
// A minimal example (experiments/studies/quickstart.json is a complete one;
// docs/study-file.md lists every field):
//   {
//     "study_id": "quickstart", "rounds": 5, "min_sites": 2,
//     "roster": ["site-1", "site-2", "site-3"],
//     "train": {"local_epochs": 2, "batch_size": 32, "learning_rate": 0.003},
//     "model": {"d_model": 32, "heads": 4},
//     "audit": {"columns": ["sex", "age_band", "ethnicity"]}
//   }
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "attune/common/status.h"
#include "attune/common/audit.h"

namespace attune {

// The model's four modality slots, in order: ehr_static, ehr_events,
// imaging, genomics (β, the weight fusion gives each modality, is reported
// per slot, 0 for a modality the model does not have).
const std::vector<std::string>& ModalityNames();

// The multimodal attention model's shape. Sites and coordinator must agree;
// the coordinator ships this section with every task.
// The model a study trains (worker/models; DESIGN.md, "Models"). A modality
// whose size is 0 (or imaging_encoder "none") is not part of the model.
struct ModelConfig {
  int d_model = 32;            // token width; a multiple of heads
  int heads = 4;               // attention heads per block
  int layers = 1;              // transformer blocks per modality encoder
  // Self-attention within a modality: "softmax" (exact, O(N²)) or "linear"
  // (efficient attention, O(N·d²): long gene or patch sequences).
  std::string attention = "softmax";
  // Fusion across modalities: "hierarchical" (α within, β across),
  // "cross" (one transformer over every modality's tokens with token-type
  // embeddings), "coattention" (EHR ↔ imaging/genomics, both directions) or
  // "persam" (class tokens, class-wise/exploratory/explanatory attention).
  std::string fusion = "hierarchical";
  int static_features = 8;     // columns of ehr/static.csv after patient_id
  int event_buckets = 256;     // event codes are feature-hashed into this many
  int max_events = 32;         // most recent events kept per patient; 0 = no events
  // Imaging: "patch_features" (precomputed features [imaging_patches,
  // imaging_dim] as tokens), "mil" (the same, gated attention-MIL pooling),
  // "vit" (images [image_channels, image_size, image_size], ViT patch
  // embedding), "cnn" (the same images, hybrid CNN + transformer), "none".
  std::string imaging_encoder = "patch_features";
  int imaging_patches = 16;    // rows of imaging/<patient>.npy (patch_features, mil)
  int imaging_dim = 32;        // columns of imaging/<patient>.npy (patch_features, mil)
  int image_channels = 1;      // vit, cnn
  int image_size = 28;         // vit, cnn: square images
  int patch_size = 7;          // vit: divides image_size
  int genes = 64;              // columns of genomics/expression.tsv after patient_id
  double dropout = 0.1;        // in [0, 0.9]

  bool has_static() const { return static_features > 0; }
  bool has_events() const { return max_events > 0; }
  bool has_imaging() const { return imaging_encoder != "none"; }
  bool has_genomics() const { return genes > 0; }
  bool raw_images() const { return imaging_encoder == "vit" || imaging_encoder == "cnn"; }
  // Shape of imaging/<patient>.npy this model reads.
  std::vector<int64_t> imaging_shape() const;

  Status Validate() const;
  std::string ToJson() const;
  static StatusOr<ModelConfig> FromJson(const std::string& json);
};

struct TrainConfig {
  int local_epochs = 2;        // passes over the site's train split per round
  int batch_size = 32;
  double learning_rate = 3e-3; // the worker's local optimiser step size
  uint64_t seed = 7;           // initial model, local training (seed + round) and
                               // the sites_per_round sample
};

// How the coordinator turns the round's site updates into the next global
// model (coordinator/strategy.h). Names: fedavg, fedavgm, fedprox, fedadam,
// fedyogi, fedadagrad (server optimisers on the averaged update, Reddi et al.
// 2021), and the robust median, trimmed_mean and krum, which need every
// site's update in the clear and so cannot run with secure aggregation.
struct StrategyConfig {
  std::string name = "fedavg";
  double server_learning_rate = 1.0;  // η: fedavgm, fedadam, fedyogi, fedadagrad
  double momentum = 0.9;              // fedavgm's server momentum
  double beta1 = 0.9;                 // fedadam / fedyogi / fedadagrad
  double beta2 = 0.99;                // fedadam / fedyogi
  double tau = 1e-3;                  // adaptivity: fedadam / fedyogi / fedadagrad
  double proximal_mu = 0.01;          // fedprox: μ of the worker's proximal term
  double trim_fraction = 0.1;         // trimmed_mean: fraction cut at each end
  int krum_byzantine = 1;             // krum: f, the Byzantine sites tolerated
  int krum_select = 1;                // krum: m; 1 = Krum, > 1 = Multi-Krum

  bool robust() const;  // median, trimmed_mean, krum
};

struct AuditConfig {
  std::vector<std::string> columns = {"sex", "age_band", "ethnicity"};  // cohort.csv columns
  // The values of each column, e.g. {"sex": ["F", "M"]}. Required with
  // secure aggregation (every site must lay out the same subgroup cells;
  // eval_stats.h): a value not listed is counted under "(other)".
  std::map<std::string, std::vector<std::string>> values;
  int histogram_bins = 200;   // score histogram resolution for AUC
  // Subgroup sums are counted every `every` rounds and in the last; the
  // other rounds evaluate the whole split only (smaller, cheaper).
  int every = 1;
  // How many times each site releases the evaluation sums of one model on
  // one split (a round's evaluation and audit-only rounds alike; a repeat
  // over the same survivors and layout, which sums the same values, is not
  // another release). Part of the signed terms: sites enforce it.
  int max_releases = 2;
  // > 0: every evaluation release is the Gaussian mechanism over patients
  // with this noise multiplier (eval_stats.h EvalNoise), charged to the
  // study's privacy ledger (privacy.epsilon, privacy.delta) at every site
  // and at the coordinator, whatever privacy.mode is. value_clip bounds one
  // patient's audit feature values (L2, in the standardised units the
  // audit sums). Part of the signed terms.
  double noise_multiplier = 0;
  double value_clip = 5.0;
  // min_cell (k), top_k, the flag thresholds and the defining features.
  AuditOptions report;

  bool noised() const { return noise_multiplier > 0; }

  // Every `values` key is an audited column, each list non-empty without
  // repeats (nor "(other)"); with `secure` every column has a list.
  Status Validate(bool secure) const;
};

// Secure aggregation of each round's updates (common/secagg.h): the
// coordinator learns only the sum over the round's sites.
struct SecAggConfig {
  int threshold = 0;       // t sites needed to finish; 0: max(min_sites, n/2 + 1)
  int neighbours = 0;      // SecAgg+ graph degree; 0: every pair masks (Bonawitz)
  double value_clip = 1.0; // each weighted update value is clipped to [-clip, clip]
                           // (counted, never silent) before fixed-point encoding
};

// Client-level differential privacy (common/privacy.h): each site's update
// is clipped to L2 norm clip_norm and Gaussian noise of standard deviation
// noise_multiplier · clip_norm is added -- to the sum under secure
// aggregation ("central": each site adds its share of it) or to each
// site's own update ("local"). A round that would take ε past the budget
// is not run.
struct PrivacyConfig {
  std::string mode = "off";      // off, central, local
  double clip_norm = 1.0;
  double noise_multiplier = 1.0;
  double epsilon = 10.0;         // the study's budget
  double delta = 1e-5;

  bool enabled() const { return mode != "off"; }
};

// Certificate CNs that are not sites: the operator's bundle (`attune status`)
// carries kOperatorName; site names may not start with kReservedPrefix.
inline constexpr char kReservedPrefix[] = "attune-";
inline constexpr char kOperatorName[] = "attune-operator";

struct StudyConfig {
  std::string study_id;              // required: letters, digits, '-', '_', '.'
  std::string coordinator;           // host:port sites dial (provisioning)
  int rounds = 5;                    // training rounds after round 0 (the initial model)
  int min_sites = 2;                 // quorum for a round to close
  std::vector<std::string> roster;   // certificate CNs allowed to join
  std::vector<std::string> revoked;  // refused from now on (a subset of roster)
  double sites_per_round = 1.0;      // fraction of live sites asked to train
  double join_timeout_s = 120;       // wait this long for the whole roster
  double round_deadline_s = 600;     // a round closes at this deadline with >= min_sites
  // When a round's training phase closes: "wait" for every live selected
  // site (up to round_deadline_s), or "quorum": as soon as min_sites have
  // reported. Updates that arrive after the phase closed are stragglers:
  // refused, never folded into a later round.
  std::string straggler_policy = "wait";
  double heartbeat_timeout_s = 30;   // a site silent this long is taken as gone
  double max_update_norm = 1000;     // L2 bound on a site's update (delta)
  bool secure_aggregation = false;   // sites send masked updates (SecAggConfig)
  SecAggConfig secagg;
  PrivacyConfig privacy;
  StrategyConfig strategy;
  TrainConfig train;
  ModelConfig model;
  AuditConfig audit;

  Status Validate() const;
  // Sites that may take part now: roster minus revoked.
  bool Admits(const std::string& site) const;
};

// Parses and validates; errors start with `path: `.
StatusOr<StudyConfig> ParseStudyConfig(const std::string& json_text,
                                       const std::string& path = "study");
StatusOr<StudyConfig> LoadStudyConfig(const std::string& path);

// Reads a whole file; NotFound / Internal name the path.
StatusOr<std::string> ReadFile(const std::string& path);
// Writes atomically (temp file + rename).
Status WriteFileAtomic(const std::string& path, const std::string& content);

}  // namespace attune
