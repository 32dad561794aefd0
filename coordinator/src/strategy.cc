// Aggregation strategies. See strategy.h for the formulas.
//
// Every strategy is per-coordinate except krum's distances, so "the result
// does not depend on how the model is split into ranges" holds by
// construction: each output coordinate reads only that coordinate of the
// inputs, and sums over sites always run in site order (or sorted order).

#include "attune/coordinator/strategy.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace attune::coordinator {
namespace {

// Shared skeleton: the num_sites bookkeeping of Begin and the shape checks of
// Aggregate, so each strategy only writes its math (Prepare / Combine).
class StrategyBase : public Strategy {
 public:
  explicit StrategyBase(const char* name) : name_(name) {}
  const char* name() const final { return name_; }

  Status Begin(int num_sites) final {
    num_sites_ = 0;  // a failed Begin leaves no round open
    if (num_sites <= 0) return absl::FailedPreconditionError("no updates");
    ATTUNE_RETURN_IF_ERROR(Prepare(num_sites));
    num_sites_ = num_sites;
    return absl::OkStatus();
  }

  void Aggregate(std::span<const SiteDelta> range, std::span<const float> global,
                 std::span<const std::span<float>> state, std::span<float> out) final {
    CheckRange(range, out.size());
    ATTUNE_CHECK(global.size() == out.size());
    ATTUNE_CHECK(state.size() == static_cast<size_t>(StateVectors()));
    for (const auto& s : state) ATTUNE_CHECK(s.size() == out.size());
    Combine(range, global, state, out);
  }

 protected:
  // Per-round set-up after the n > 0 check; resets per-round state.
  virtual Status Prepare(int /*num_sites*/) { return absl::OkStatus(); }
  virtual void Combine(std::span<const SiteDelta> range, std::span<const float> global,
                       std::span<const std::span<float>> state, std::span<float> out) = 0;

  int num_sites() const { return num_sites_; }

  // A range must hold every site of the round, each with `numel` values.
  void CheckRange(std::span<const SiteDelta> range, size_t numel) const {
    ATTUNE_CHECK(num_sites_ > 0);  // Begin succeeded
    ATTUNE_CHECK(range.size() == static_cast<size_t>(num_sites_));
    for (const auto& s : range) ATTUNE_CHECK(s.delta.size() == numel);
  }

 private:
  const char* name_;
  int num_sites_ = 0;
};

// ---------------------------------------------------------------------------
// The fedavg family: a server step on Δ̄, the example-weighted mean.

// mean[c] = Σ n_i Δ_i[c] / Σ n_i in double, summing in site order
// (sum, then one division).
void ExampleWeightedMean(std::span<const SiteDelta> range, std::vector<double>& mean) {
  double total = 0;
  for (const auto& s : range) total += static_cast<double>(s.num_examples);
  ATTUNE_CHECK(total > 0);
  const size_t numel = range.front().delta.size();
  mean.assign(numel, 0.0);
  for (const auto& s : range) {
    const double w = static_cast<double>(s.num_examples);
    for (size_t c = 0; c < numel; ++c) mean[c] += w * s.delta[c];
  }
  for (double& v : mean) v /= total;
}

class MeanStrategy : public StrategyBase {
 public:
  using StrategyBase::StrategyBase;

 protected:
  void Combine(std::span<const SiteDelta> range, std::span<const float> global,
               std::span<const std::span<float>> state, std::span<float> out) final {
    thread_local std::vector<double> mean;  // scratch: ranges may be aggregated in parallel
    ExampleWeightedMean(range, mean);
    Step(mean, global, state, out);
  }
  // out = x + the server step taken on Δ̄ (`mean`), updating `state`.
  virtual void Step(std::span<const double> mean, std::span<const float> global,
                    std::span<const std::span<float>> state, std::span<float> out) = 0;
};

class FedAvg final : public MeanStrategy {
 public:
  // `proximal_mu` > 0: FedProx (Li et al.): the same aggregation, with each
  // site's local objective given the proximal term mu/2 ||w - w_global||^2.
  FedAvg(const char* name, double proximal_mu = 0)
      : MeanStrategy(name), proximal_mu_(proximal_mu) {}

  TrainSettings TrainingFor(const TrainConfig& study, const std::string& site) const override {
    TrainSettings t = Strategy::TrainingFor(study, site);
    t.proximal_mu = proximal_mu_;
    return t;
  }

 private:
  void Step(std::span<const double> mean, std::span<const float> global,
            std::span<const std::span<float>>, std::span<float> out) override {
    for (size_t c = 0; c < out.size(); ++c) out[c] = static_cast<float>(global[c] + mean[c]);
  }

  const double proximal_mu_;
};

class FedAvgM final : public MeanStrategy {
 public:
  FedAvgM(double eta, double momentum) : MeanStrategy("fedavgm"), eta_(eta), momentum_(momentum) {}
  int StateVectors() const override { return 1; }

 private:
  void Step(std::span<const double> mean, std::span<const float> global,
            std::span<const std::span<float>> state, std::span<float> out) override {
    std::span<float> m = state[0];
    for (size_t c = 0; c < out.size(); ++c) {
      const double mc = momentum_ * m[c] + mean[c];
      m[c] = static_cast<float>(mc);
      out[c] = static_cast<float>(global[c] + eta_ * mc);
    }
  }
  double eta_, momentum_;
};

// fedadagrad, fedadam and fedyogi share m and the step; only v differs.
class Adaptive final : public MeanStrategy {
 public:
  enum class Kind { kAdagrad, kAdam, kYogi };
  Adaptive(const char* name, Kind kind, const StrategyConfig& c)
      : MeanStrategy(name), kind_(kind), eta_(c.server_learning_rate), beta1_(c.beta1),
        beta2_(c.beta2), tau_(c.tau) {}
  int StateVectors() const override { return 2; }
  float StateInit(int index) const override {
    return index == 1 ? static_cast<float>(tau_ * tau_) : 0.f;
  }

 private:
  double NextV(double v, double g2) const {
    switch (kind_) {
      case Kind::kAdagrad:
        return v + g2;
      case Kind::kAdam:
        return beta2_ * v + (1 - beta2_) * g2;
      case Kind::kYogi: {
        // Yogi moves v towards g² by an additive (1−β2)·g², not a multiplicative
        // blend, so v cannot collapse after a few small updates.
        const double sign = (v > g2) - (v < g2);
        return v - (1 - beta2_) * g2 * sign;
      }
    }
    return v;
  }

  void Step(std::span<const double> mean, std::span<const float> global,
            std::span<const std::span<float>> state, std::span<float> out) override {
    std::span<float> m = state[0], v = state[1];
    for (size_t c = 0; c < out.size(); ++c) {
      const double g = mean[c];
      const double mc = beta1_ * m[c] + (1 - beta1_) * g;
      const double vc = NextV(v[c], g * g);
      m[c] = static_cast<float>(mc);
      v[c] = static_cast<float>(vc);
      out[c] = static_cast<float>(global[c] + eta_ * mc / (std::sqrt(vc) + tau_));
    }
  }

  Kind kind_;
  double eta_, beta1_, beta2_, tau_;
};

// ---------------------------------------------------------------------------
// Robust strategies: unweighted, on every site's update in the clear.

// median and trimmed_mean: mean of the sorted column with `trim` values cut at
// each end. The median is the special case trim = ⌊(n−1)/2⌋ (one value left
// for odd n, the middle two for even n).
class TrimmedMean final : public StrategyBase {
 public:
  // No trim_fraction: the median.
  TrimmedMean(const char* name, std::optional<double> trim_fraction)
      : StrategyBase(name), trim_fraction_(trim_fraction) {}

 private:
  Status Prepare(int n) override {
    // The 1e-9 slack: 0.29 * 100 is 28.999999999999996 in binary.
    trim_ = trim_fraction_ ? static_cast<int>(std::floor(*trim_fraction_ * n + 1e-9))
                           : (n - 1) / 2;
    if (trim_ < 0 || n - 2 * trim_ < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          name(), ": trim_fraction ", trim_fraction_.value_or(0), " cuts ", trim_, " of ", n,
          " updates at each end and leaves none"));
    }
    return absl::OkStatus();
  }

  void Combine(std::span<const SiteDelta> range, std::span<const float> global,
               std::span<const std::span<float>>, std::span<float> out) override {
    const int n = num_sites(), kept = n - 2 * trim_;
    thread_local std::vector<float> column;  // scratch: ranges may be aggregated in parallel
    column.resize(n);
    for (size_t c = 0; c < out.size(); ++c) {
      for (int i = 0; i < n; ++i) column[i] = range[i].delta[c];
      std::sort(column.begin(), column.end());
      double sum = 0;  // ascending order: deterministic whatever the site order
      for (int i = trim_; i < n - trim_; ++i) sum += column[i];
      out[c] = static_cast<float>(global[c] + sum / kept);
    }
  }

  std::optional<double> trim_fraction_;
  int trim_ = 0;
};

class Krum final : public StrategyBase {
 public:
  Krum(int byzantine, int select) : StrategyBase("krum"), f_(byzantine), m_(select) {}
  bool TwoPass() const override { return true; }

  void Observe(std::span<const SiteDelta> range) override {
    CheckRange(range, range.empty() ? 0 : range.front().delta.size());
    if (sites_.empty()) {
      for (const auto& s : range) sites_.emplace_back(s.site);
    }
    const int n = num_sites();
    // Each pair's running sum absorbs one coordinate at a time, so the sum is
    // the same sequence of double additions however the ranges are cut.
    for (int i = 0; i < n; ++i) {
      for (int j = i + 1; j < n; ++j) {
        double acc = dist_[i * n + j];
        const auto a = range[i].delta, b = range[j].delta;
        for (size_t c = 0; c < a.size(); ++c) {
          const double d = static_cast<double>(a[c]) - b[c];
          acc += d * d;
        }
        dist_[i * n + j] = acc;
      }
    }
  }

  Status EndObserve() override {
    if (sites_.empty()) return absl::FailedPreconditionError("krum: EndObserve before Observe");
    const int n = num_sites(), neighbours = n - f_ - 2;
    scores_.assign(n, 0.0);
    std::vector<double> d;
    for (int i = 0; i < n; ++i) {
      d.clear();
      for (int j = 0; j < n; ++j) {
        if (j != i) d.push_back(dist_[std::min(i, j) * n + std::max(i, j)]);
      }
      std::sort(d.begin(), d.end());
      scores_[i] = std::accumulate(d.begin(), d.begin() + neighbours, 0.0);
    }
    selected_.resize(n);
    std::iota(selected_.begin(), selected_.end(), 0);
    std::stable_sort(selected_.begin(), selected_.end(),
                     [&](int a, int b) { return scores_[a] < scores_[b]; });
    selected_.resize(m_);
    return absl::OkStatus();
  }

  std::string Describe() const override {
    if (selected_.empty()) return "{}";
    nlohmann::json j = {{"selected", nlohmann::json::array()}, {"scores", nlohmann::json::object()}};
    for (int i : selected_) j["selected"].push_back(sites_[i]);
    for (size_t i = 0; i < sites_.size(); ++i) j["scores"][sites_[i]] = scores_[i];
    return j.dump();
  }

 private:
  Status Prepare(int n) override {
    if (f_ < 0 || m_ < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "krum: needs krum_byzantine >= 0 and krum_select >= 1 (got ", f_, " and ", m_, ")"));
    }
    if (n < 2 * f_ + 3) {
      return absl::InvalidArgumentError(absl::StrCat("krum: tolerating f = ", f_,
                                                     " Byzantine sites needs n >= 2f + 3 = ",
                                                     2 * f_ + 3, " updates, got ", n));
    }
    if (m_ > n) {
      return absl::InvalidArgumentError(
          absl::StrCat("krum: cannot select m = ", m_, " of ", n, " updates"));
    }
    dist_.assign(static_cast<size_t>(n) * n, 0.0);
    sites_.clear();
    scores_.clear();
    selected_.clear();
    return absl::OkStatus();
  }

  void Combine(std::span<const SiteDelta> range, std::span<const float> global,
               std::span<const std::span<float>>, std::span<float> out) override {
    ATTUNE_CHECK(!selected_.empty());  // EndObserve ran
    for (size_t c = 0; c < out.size(); ++c) {
      double sum = 0;
      for (int i : selected_) sum += range[i].delta[c];
      out[c] = static_cast<float>(global[c] + sum / m_);
    }
  }

  int f_, m_;
  std::vector<double> dist_;  // n×n, upper triangle: ‖Δ_i − Δ_j‖² so far
  std::vector<std::string> sites_;
  std::vector<double> scores_;
  std::vector<int> selected_;  // site indices, best score first
};

}  // namespace

TrainSettings Strategy::TrainingFor(const TrainConfig& study, const std::string&) const {
  TrainSettings t;
  t.local_epochs = study.local_epochs;
  t.batch_size = study.batch_size;
  t.learning_rate = study.learning_rate;
  t.seed = study.seed;
  return t;
}

StatusOr<std::unique_ptr<Strategy>> MakeStrategy(const StrategyConfig& c) {
  using Kind = Adaptive::Kind;
  const std::string& n = c.name;
  if (n == "fedavg") return std::make_unique<FedAvg>("fedavg");
  if (n == "fedprox") return std::make_unique<FedAvg>("fedprox", c.proximal_mu);
  if (n == "fedavgm") return std::make_unique<FedAvgM>(c.server_learning_rate, c.momentum);
  if (n == "fedadagrad") return std::make_unique<Adaptive>("fedadagrad", Kind::kAdagrad, c);
  if (n == "fedadam") return std::make_unique<Adaptive>("fedadam", Kind::kAdam, c);
  if (n == "fedyogi") return std::make_unique<Adaptive>("fedyogi", Kind::kYogi, c);
  if (n == "median") return std::make_unique<TrimmedMean>("median", std::nullopt);
  if (n == "trimmed_mean") return std::make_unique<TrimmedMean>("trimmed_mean", c.trim_fraction);
  if (n == "krum") return std::make_unique<Krum>(c.krum_byzantine, c.krum_select);
  return absl::InvalidArgumentError(absl::StrCat("unknown strategy '", n, "'"));
}

}  // namespace attune::coordinator
