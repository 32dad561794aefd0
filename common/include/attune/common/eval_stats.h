// Evaluation and audit statistics as sums, so that they add up across sites
// (and can be securely aggregated): counts, Σ loss, score histograms,
// confusion counts, and per subgroup cell -- each value of each audited
// column and each pairwise intersection -- the count, Σ modality attention
// β, the cell's own score histograms, confusion counts and calibration
// sums, Σ attention share per input feature, Σ attention entropy and the
// features' value sums. The coordinator turns summed EvalSums into metrics
// and the audit report (common/audit.h); no per-patient value ever leaves
// a site.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "attune/common/metrics.h"
#include "attune/common/status.h"

namespace attune {

// A subgroup cell: (column, value). An intersection of two columns a < b is
// the cell (a + kCellJoin + b, value_a + kCellJoin + value_b).
using CellKey = std::pair<std::string, std::string>;
inline constexpr char kCellJoin[] = " & ";

// The cells a patient with `values` (one per column, in the order of
// `columns`) belongs to: one per column, then one per pair of columns.
std::vector<CellKey> SubgroupCells(std::span<const std::string> columns,
                                   std::span<const std::string> values);

// The calibration bins for `histogram_bins` score bins: the largest divisor
// of it up to 10 (each calibration bin is whole histogram bins).
int CalibrationBins(int histogram_bins);

// The operating threshold of the confusion counts.
inline constexpr double kOperatingThreshold = 0.5;

struct GroupSums {
  int64_t n = 0;
  int64_t suppressed = 0;                    // sites that held this cell back (SuppressSmallCells)
  std::vector<double> beta_sum;              // one per modality
  Confusion confusion;                       // at kOperatingThreshold
  std::vector<int64_t> pos_hist, neg_hist;   // the cell's score histograms (the split's bins)
  std::vector<double> calib_sum;             // Σ predicted probability per calibration bin
  std::vector<double> attention_sum;         // Σ attention share per feature
  double entropy_sum = 0;                    // Σ entropy (bits) of the attention distributions
  // Σ x⁺, Σ x⁻ (both >= 0, so that secure words can carry them) and Σ x²
  // of each feature's input value x.
  std::vector<double> value_pos_sum, value_neg_sum, value_sq_sum;
};

// One patient's evaluation, as the worker computes it.
struct PatientEval {
  bool label = false;
  double probability = 0;                // predicted
  double loss = 0;                       // binary cross-entropy
  std::span<const double> beta;          // one per modality
  std::span<const double> attention;     // one per feature, summing to 1 (or all 0)
  std::span<const double> values;        // one per feature: the input value
};

struct EvalSums {
  std::string split;                       // "val" or "test"
  int64_t n = 0;
  int64_t suppressed = 0;                  // sites that held the whole split back
  double loss_sum = 0;                     // Σ binary cross-entropy
  std::vector<int64_t> pos_hist, neg_hist; // score histograms, equal bins on [0,1]
  Confusion confusion;                     // at kOperatingThreshold
  std::vector<std::string> modalities;     // names of GroupSums::beta_sum entries
  std::vector<std::string> features;       // names of the per-feature sums
  int calibration_bins = 10;               // divides the histogram bins
  std::map<CellKey, GroupSums> groups;

  // Empty sums shaped for `bins` histogram bins, the modalities and
  // features; calibration_bins 0: CalibrationBins(bins).
  static EvalSums Make(std::string split, int bins, std::vector<std::string> modalities,
                       std::vector<std::string> features, int calibration_bins = 0);
  // A zero cell of this shape.
  GroupSums EmptyGroup() const;
  // Counts one patient in the totals and in each of `cells`. value_clip >
  // 0 (a noised release, EvalNoise): the patient's loss is capped at
  // kNoisedLossClip and its feature values scaled to L2 norm <= value_clip.
  void AddPatient(const PatientEval& p, std::span<const CellKey> cells, double value_clip = 0);

  // Adds `other` into this. InvalidArgument if splits, histogram sizes,
  // modality or feature lists differ, or any count is negative, any sum not
  // finite or any cell inconsistent.
  Status Add(const EvalSums& other);
  // Checks internal consistency of one site's report (same rules as Add).
  Status Validate() const;

  double Loss() const;   // mean BCE; NaN if empty
  double Auc() const;    // from the histograms

  // {"n", "loss", "auc", "accuracy", "tpr", "fpr"}
  std::string MetricsJson() const;
};

// ---- One site's report, as the coordinator accepts it -----------------------
//
// In the clear a site reports the values its patients have: a column whose
// values the study lists (audit.values) may have others besides, and a
// column it does not list any. Each column may bring at most
// kMaxUnlistedValues values the study does not list, each of
// 1..kMaxValueBytes bytes of printable UTF-8.
inline constexpr int64_t kMaxUnlistedValues = 32;
inline constexpr size_t kMaxValueBytes = 64;
// No count in a report may exceed this (so that sums cannot overflow).
inline constexpr int64_t kMaxReportCount = int64_t{1} << 40;

// The most cells a report may have when `columns` are audited with the
// listed `values`: each column's listed values, "(other)" and the
// unlisted ones, and every pair of two columns' cells.
int64_t MaxReportCells(const std::vector<std::string>& columns,
                       const std::map<std::string, std::vector<std::string>>& values);

// What the study lets one site report for a split.
struct EvalReportSpec {
  int bins = 0;
  std::vector<std::string> modalities;
  std::vector<std::string> features;   // as the site declared them at Join
  std::vector<std::string> columns;    // audited; empty: the split's totals only
  std::map<std::string, std::vector<std::string>> values;
};

// OK if `report` (already Validate()d or about to be) is shaped as `spec`
// says -- bins, calibration bins, modalities and features, and cells only
// of the audited columns and their pairs (SubgroupCells' order), within
// MaxReportCells and the value bounds. InvalidArgument names the first
// difference.
Status CheckEvalReport(const EvalSums& report, const EvalReportSpec& spec);

// Adds cell `g` into `into` (same shape).
void AddGroup(GroupSums* into, const GroupSums& g);

// A site's own small-cell suppression, before anything leaves it: every
// cell of 0 < n < min_cell patients, and the cells that would let it be
// worked out from the site's totals (audit.h SuppressedCells), becomes
// zero with `suppressed` = 1; a split of fewer than min_cell patients is
// held back whole (all zero, `suppressed` = 1). Returns how many cells (the split counting as one)
// were held back. A cell of one patient would otherwise carry that
// patient's label, score and feature values.
int64_t SuppressSmallCells(EvalSums* sums, int min_cell);

// A site's own policy (site_config.h SitePolicy): every cell of `columns`
// and every intersection with one of them becomes zero with `suppressed`
// raised, as if held back for its size; `also` adds such held-back cells
// the site does not have (a secure layout's, so that every site marks the
// same cells). Returns how many cells were held back.
int64_t HoldBackColumns(EvalSums* sums, const std::vector<std::string>& columns,
                        std::span<const CellKey> also = {});

// ---- Noised releases (audit.noise_multiplier) -------------------------------
//
// When the terms say so, an evaluation release is the Gaussian mechanism
// over patients: each statistic gets Gaussian noise scaled to what one
// patient can change it by, so that adding or removing one patient moves
// the whole release (every split, the totals and every cell the patient is
// in) by L2 norm at most 1/σ in units of the noise -- sensitivity 1 against
// noise σ -- and the release costs the RDP of one Gaussian release of
// noise multiplier σ: α / (2σ²).
//
// One patient changes, in its split's totals and in each of its cells, G
// statistic groups in all: the score histograms (one bin, by 1), Σ loss (by
// at most kNoisedLossClip), and per cell the histograms, Σ β (L2 <= 1), the
// calibration sums (<= 1), Σ attention share (L2 <= 1), Σ entropy (<= log2
// of the feature count), Σ |x| (L2 <= value_clip) and Σ x² (<= value_clip²).
// Each group gets noise of stddev σ · √G · (its bound), an equal part of
// the sensitivity each. Counts get integer noise (rounded draws), sums of
// reals noise at the secure words' resolution, so that what is added never
// depends on the data. n and the confusion counts are not released: they
// are derived from the noisy histograms (with an even number of bins, the
// operating threshold falls between bins), and the released values are
// clamped to >= 0 (SettleNoised) -- post-processing, which DP allows.
//
// In the clear a site adds all the noise (shares = 1); under secure
// aggregation each site adds 1/t of the variance, t the threshold, so that
// any t survivors' sum carries all of it (as central DP does with updates).
// Cells a site holds back (SuppressSmallCells) are decided on exact counts
// before the noise: which cells are held back is outside the DP guarantee,
// and is protected by k alone (docs/threat-model.md).
inline constexpr double kNoisedLossClip = 5.0;  // nats: one patient's Σ loss share

struct EvalNoise {
  double multiplier = 0;   // σ; 0: exact sums
  double value_clip = 0;   // L2 bound on one patient's feature values (> 0 when noised)
  int shares = 1;          // sites that each add 1/shares of the variance

  bool enabled() const { return multiplier > 0; }
};

// The statistic groups of a release, for the noise each gets.
enum class EvalStat { kCount, kHist, kLoss, kBeta, kCalib, kAttention, kEntropy, kValue, kValueSq };

// The noise stddev of one `stat` value, for a release whose patients are
// each in `cells_per_patient` cells (0: the whole split only), with
// `features` audit features. 0 for kCount (n, confusion: derived, not
// released; `suppressed`: not noised).
double NoiseStddev(const EvalNoise& noise, EvalStat stat, int64_t cells_per_patient,
                   size_t features);

// The cells each patient is in when `columns` are audited: one per column
// and one per pair of columns.
int64_t CellsPerPatient(int64_t columns);

// Adds the noise to one site's sums in the clear, one per split of the
// release (every split total and cell this site does not hold back), from
// one stream drawn from `seed` (32 bytes) -- never the same draws on two
// splits, whose difference would cancel them -- and settles each
// (SettleNoised(split, 1)).
Status AddEvalNoise(std::span<const uint8_t> seed, const EvalNoise& noise,
                    std::span<EvalSums> splits);

// After noise: negative histogram bins and sums become 0, n and the
// confusion counts are derived from the histograms, and a split or cell
// held back by at least `sites` sites (all of them) is empty. The result is
// consistent (Validate). A noised release needs an even number of bins.
void SettleNoised(EvalSums* sums, int64_t sites);

// ---- Secure evaluation: the sums as words ----------------------------------
//
// Under secure aggregation each site's sums are one vector of 32-bit words,
// added mod 2^32, so every site must lay them out the same way. The layout
// fixes it: for each split, n, Σ loss, the two histograms and the confusion
// counts; then for each cell -- the study's audit.values, plus (column,
// kOtherValue) for values a site has that are not listed, and every pair of
// two columns' cells -- every statistic of GroupSums in its order. Every statistic is a
// fixed-point number (counts at scale 1, sums of reals at scale 2^16)
// carried in two words, its low 16 bits and the rest (a signed 32-bit
// word: a noised share may be negative), so that adding the words of up to
// `sites` sites can never carry out of a word: a site refuses (OutOfRange)
// a statistic whose high word's magnitude exceeds (2^31 − 1) / sites.
// Counts come out exact; a real sum within sites · 2^-17 of the true one.
inline constexpr char kOtherValue[] = "(other)";

struct EvalLayout {
  std::vector<std::string> splits;
  int bins = 0;
  int calibration_bins = 10;
  std::vector<std::string> modalities;
  std::vector<std::string> features;
  std::vector<CellKey> cells;

  // The cells of `values` (column -> listed values): each column's listed
  // values and its kOtherValue cell, then for each pair of columns a < b
  // every pair of their cells.
  static EvalLayout Make(std::vector<std::string> splits, int bins,
                         std::vector<std::string> modalities, std::vector<std::string> features,
                         const std::map<std::string, std::vector<std::string>>& values,
                         int calibration_bins = 0);  // 0: CalibrationBins(bins)
  int64_t Words() const;
};

// One site's words: `sums` has one entry per layout split, in order. A
// group whose value is not a cell is counted in its column's kOtherValue
// cell (in an intersection, each unlisted side is kOtherValue); a column
// the layout does not have is left out. Then the laid-out cells under
// `min_cell` are held back (SuppressSmallCells). With `noise` enabled,
// this site's share of the noise (drawn from `seed`) is added to every
// statistic, held-back cells included, and n and the confusion counts are
// sent as 0.
StatusOr<std::vector<uint32_t>> EncodeEvalWords(const std::vector<EvalSums>& sums,
                                                const EvalLayout& layout, int sites,
                                                int min_cell = 1, const EvalNoise& noise = {},
                                                std::span<const uint8_t> seed = {});
// The sums of the summed words, one per split; cells with n = 0 are left
// out. InvalidArgument if the words' length does not match, or if the
// result is inconsistent (EvalSums::Validate). `noised_sites` > 0: the
// words carry noise (EncodeEvalWords with noise) from that many sites, and
// are settled (SettleNoised) before they are checked.
StatusOr<std::vector<EvalSums>> DecodeEvalWords(std::span<const uint32_t> sum,
                                                const EvalLayout& layout,
                                                int64_t noised_sites = 0);

}  // namespace attune
