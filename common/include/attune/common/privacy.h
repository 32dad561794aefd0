// Client-level differential privacy (DP-FedAvg, McMahan et al., "Learning
// Differentially Private Recurrent Language Models", ICLR 2018): each
// site's update is clipped to L2 norm C and Gaussian noise of standard
// deviation σ·C is added to the sum of a round's updates. The privacy loss
// is tracked by a Rényi-DP accountant (Mironov, "Rényi Differential
// Privacy", CSF 2017) for the sampled Gaussian mechanism (Mironov, Talwar,
// Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
// 2019), converted to (ε, δ) with Balle et al. 2020's bound (as Opacus and
// TensorFlow Privacy do). Integer orders 2..256 are tracked.
//
// This file is the math (no I/O); the coordinator keeps the ledger with
// the round state and refuses a release that would exceed the budget.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::privacy {

// Scales `v` down to L2 norm ≤ clip_norm (unchanged when already within);
// returns the norm before clipping.
double ClipToNorm(std::span<float> v, double clip_norm);

// v[i] += N(0, stddev²), drawn from the AES-256-CTR keystream of the 32-byte
// `seed` (Box-Muller on 53-bit uniforms): the same seed gives the same noise,
// so a retried round releases the same value, not a fresh sample.
// InvalidArgument for a seed that is not 32 bytes.
Status AddGaussianNoise(std::span<const uint8_t> seed, double stddev, std::span<float> v);
// The standard normal draws AddGaussianNoise adds (scaled), one per `out`
// value, from the same keystream.
Status StandardNormals(std::span<const uint8_t> seed, std::span<double> out);

// The Rényi orders tracked.
const std::vector<int>& Orders();

// RDP at integer order alpha ≥ 2 of one release of the Gaussian mechanism
// with noise multiplier sigma (> 0), each record (site) taking part with
// probability q ∈ [0, 1]: log A_α / (α − 1), with A_α the binomial
// expansion of Mironov et al. 2019 (exact for integer α). q = 1 gives
// α / (2σ²).
double SampledGaussianRdp(double q, double sigma, int alpha);

// The smallest ε such that the RDP curve `rdp` (one value per Orders())
// gives (ε, δ)-DP: min over α of rdp(α) + log((α−1)/α) − (log δ + log α)/(α−1).
// Writes the minimising order to *order when given.
double Epsilon(std::span<const double> rdp, double delta, int* order = nullptr);

// A privacy ledger: every release (a round's noisy sum, an audit release)
// adds its RDP; nothing is spent that would take ε past the budget.
class Accountant {
 public:
  // InvalidArgument unless 0 < delta < 1 and budget > 0.
  static StatusOr<Accountant> Make(double epsilon_budget, double delta);

  // ε after `releases` more releases of (q, sigma), without spending.
  double EpsilonAfter(double q, double sigma, int releases = 1) const;

  // Spends one release of (q, sigma). FailedPrecondition, with nothing
  // spent, when ε would exceed the budget.
  Status Spend(double q, double sigma, const std::string& what);

  // The budget now in force (re-signed terms, or a site's own tighter
  // one); what was spent stays. InvalidArgument unless > 0.
  Status SetBudget(double epsilon_budget);

  double epsilon() const;  // spent so far
  double delta() const { return delta_; }
  double budget() const { return budget_; }
  int releases() const { return releases_; }

  // The ledger as JSON (RDP per order, releases, budget) and back.
  std::string ToJson() const;
  static StatusOr<Accountant> FromJson(const std::string& json);

 private:
  Accountant(double budget, double delta);
  double budget_, delta_;
  int releases_ = 0;
  std::vector<double> rdp_;  // per Orders()
};

}  // namespace attune::privacy
