#include "attune/common/privacy.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "attune/common/crypto.h"
#include "nlohmann/json.hpp"

namespace attune::privacy {
namespace {

// log(exp(a) + exp(b)) without overflow.
double LogAdd(double a, double b) {
  if (a == -std::numeric_limits<double>::infinity()) return b;
  if (b == -std::numeric_limits<double>::infinity()) return a;
  const double hi = std::max(a, b), lo = std::min(a, b);
  return hi + std::log1p(std::exp(lo - hi));
}

double LogBinomial(int n, int k) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0);
}

}  // namespace

double ClipToNorm(std::span<float> v, double clip_norm) {
  double sq = 0;
  for (float x : v) sq += static_cast<double>(x) * x;
  const double norm = std::sqrt(sq);
  if (norm > clip_norm) {
    const double f = clip_norm / norm;
    for (float& x : v) x = static_cast<float>(x * f);
  }
  return norm;
}

namespace {

constexpr size_t kPairs = 512;  // values per keystream piece (2 uniforms each: 16 bytes)

// Draws `first` .. first + out.size() of the seed's stream of standard
// normals (Box-Muller on 53-bit uniforms); `first` is a multiple of kPairs.
Status Normals(std::span<const uint8_t> seed, size_t first, std::span<double> out) {
  if (seed.size() != 32) return absl::InvalidArgumentError("noise seed must be 32 bytes");
  std::vector<uint64_t> words(2 * kPairs);
  std::span<uint8_t> bytes(reinterpret_cast<uint8_t*>(words.data()), words.size() * 8);
  auto uniform = [](uint64_t w) {  // (0, 1]: never 0, so log() is finite
    return (static_cast<double>(w >> 11) + 1.0) * 0x1.0p-53;
  };
  for (size_t at = 0, piece = first / kPairs; at < out.size(); at += kPairs, ++piece) {
    ATTUNE_RETURN_IF_ERROR(crypto::ExpandSeed(seed, piece * (bytes.size() / 16), bytes));
    const size_t n = std::min(kPairs, out.size() - at);
    for (size_t i = 0; i < n; ++i) {
      const double r = std::sqrt(-2.0 * std::log(uniform(words[2 * i])));
      out[at + i] = r * std::cos(2.0 * M_PI * uniform(words[2 * i + 1]));
    }
  }
  return absl::OkStatus();
}

}  // namespace

Status StandardNormals(std::span<const uint8_t> seed, std::span<double> out) {
  return Normals(seed, 0, out);
}

Status AddGaussianNoise(std::span<const uint8_t> seed, double stddev, std::span<float> v) {
  if (seed.size() != 32) return absl::InvalidArgumentError("noise seed must be 32 bytes");
  constexpr size_t kChunk = 64 * kPairs;  // bounded scratch, whatever the model's size
  std::vector<double> z(std::min(kChunk, v.size()));
  for (size_t first = 0; first < v.size(); first += kChunk) {
    const size_t n = std::min(kChunk, v.size() - first);
    ATTUNE_RETURN_IF_ERROR(Normals(seed, first, std::span(z.data(), n)));
    for (size_t i = 0; i < n; ++i) v[first + i] = static_cast<float>(v[first + i] + stddev * z[i]);
  }
  return absl::OkStatus();
}

const std::vector<int>& Orders() {
  static const std::vector<int> orders = [] {
    std::vector<int> o;
    for (int a = 2; a <= 64; ++a) o.push_back(a);
    for (int a : {80, 96, 128, 192, 256}) o.push_back(a);
    return o;
  }();
  return orders;
}

double SampledGaussianRdp(double q, double sigma, int alpha) {
  if (q <= 0) return 0;
  if (q >= 1) return alpha / (2 * sigma * sigma);
  // log A_α = log Σ_i C(α, i) q^i (1 − q)^(α−i) exp((i² − i) / (2σ²)).
  double log_a = -std::numeric_limits<double>::infinity();
  for (int i = 0; i <= alpha; ++i) {
    const double term = LogBinomial(alpha, i) + i * std::log(q) + (alpha - i) * std::log1p(-q) +
                        (static_cast<double>(i) * i - i) / (2 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a / (alpha - 1);
}

double Epsilon(std::span<const double> rdp, double delta, int* order) {
  const std::vector<int>& orders = Orders();
  double best = std::numeric_limits<double>::infinity();
  int best_order = orders.front();
  for (size_t i = 0; i < orders.size() && i < rdp.size(); ++i) {
    const double a = orders[i];
    const double eps = rdp[i] + std::log1p(-1 / a) - (std::log(delta) + std::log(a)) / (a - 1);
    if (eps < best) {
      best = eps;
      best_order = orders[i];
    }
  }
  if (order != nullptr) *order = best_order;
  return std::max(0.0, best);
}

Accountant::Accountant(double budget, double delta)
    : budget_(budget), delta_(delta), rdp_(Orders().size(), 0.0) {}

StatusOr<Accountant> Accountant::Make(double epsilon_budget, double delta) {
  if (!(delta > 0 && delta < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("privacy delta must be in (0, 1), not ", delta));
  }
  Accountant a(1, delta);
  ATTUNE_RETURN_IF_ERROR(a.SetBudget(epsilon_budget));
  return a;
}

double Accountant::EpsilonAfter(double q, double sigma, int releases) const {
  std::vector<double> rdp = rdp_;
  for (size_t i = 0; i < rdp.size(); ++i) {
    rdp[i] += releases * SampledGaussianRdp(q, sigma, Orders()[i]);
  }
  return Epsilon(rdp, delta_);
}

Status Accountant::Spend(double q, double sigma, const std::string& what) {
  if (!(sigma > 0) || !(q >= 0 && q <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": noise multiplier must be > 0 and q in [0, 1]"));
  }
  const double after = EpsilonAfter(q, sigma);
  if (after > budget_) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " refused: it would take the privacy loss to epsilon = ", after,
        " (delta = ", delta_, "), over the study's budget of ", budget_, "; spent so far ",
        epsilon()));
  }
  for (size_t i = 0; i < rdp_.size(); ++i) rdp_[i] += SampledGaussianRdp(q, sigma, Orders()[i]);
  ++releases_;
  return absl::OkStatus();
}

Status Accountant::SetBudget(double epsilon_budget) {
  if (!(epsilon_budget > 0) || !std::isfinite(epsilon_budget)) {
    return absl::InvalidArgumentError(
        absl::StrCat("privacy epsilon budget must be > 0, not ", epsilon_budget));
  }
  budget_ = epsilon_budget;
  return absl::OkStatus();
}

double Accountant::epsilon() const { return releases_ == 0 ? 0.0 : Epsilon(rdp_, delta_); }

std::string Accountant::ToJson() const {
  return nlohmann::json{{"budget", budget_}, {"delta", delta_}, {"releases", releases_},
                        {"orders", Orders()},  {"rdp", rdp_},     {"epsilon", epsilon()}}
      .dump();
}

StatusOr<Accountant> Accountant::FromJson(const std::string& text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  try {
    if (j.is_discarded()) throw std::runtime_error("not JSON");
    ATTUNE_ASSIGN_OR_RETURN(Accountant a, Make(j.at("budget").get<double>(),
                                               j.at("delta").get<double>()));
    if (j.at("orders").get<std::vector<int>>() != Orders()) {
      throw std::runtime_error("its Renyi orders differ from this version's");
    }
    a.rdp_ = j.at("rdp").get<std::vector<double>>();
    a.releases_ = j.at("releases").get<int>();
    if (a.rdp_.size() != Orders().size()) throw std::runtime_error("rdp has the wrong length");
    return a;
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("privacy ledger: ", e.what()));
  }
}

}  // namespace attune::privacy
