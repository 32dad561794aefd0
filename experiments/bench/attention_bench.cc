// attune-bench-attention: quadratic (softmax) against efficient (linear)
// attention, forward + backward, as the sequence grows: N = 256 … 16 384
// tokens (from --min-n 32, to see the crossover), one sequence, d_model 64, --heads heads, weights not
// materialised by the linear one (need_weights false, as in training).
// Prints each N's median step for both, their ratio, and the crossover:
// the smallest N from which linear attention is faster.
//
//   attune-bench-attention [--threads 1] [--heads 1] [--min-n 32] [--max-n 16384] [--json out.json]
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include <CLI/CLI.hpp>

#include "attune/models/attention.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Median ms of fwd+bwd steps: at least 3, and more while under 2 s in all.
template <typename Step>
double MedianMs(Step step) {
  step();  // warm-up
  std::vector<double> ms;
  const auto start = Clock::now();
  while (ms.size() < 3 || (ms.size() < 50 && Clock::now() - start < std::chrono::seconds(2))) {
    const auto t0 = Clock::now();
    step();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"quadratic against efficient (linear) attention, forward + backward"};
  int threads = 1, heads = 1, min_n = 32, max_n = 16384, d = 64;
  std::string json_path;
  app.add_option("--threads", threads, "LibTorch intra-op threads")->capture_default_str();
  app.add_option("--heads", heads, "attention heads")->capture_default_str();
  app.add_option("--min-n", min_n, "smallest sequence")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-n", max_n, "largest sequence (doubling from --min-n)")->capture_default_str();
  app.add_option("--json", json_path, "write the timings here");
  CLI11_PARSE(app, argc, argv);
  torch::set_num_threads(threads);
  torch::manual_seed(7);
  attune::models::MultiHeadOptions o;
  o.d_model = d;
  o.heads = heads;
  attune::models::MultiHeadAttention quadratic(o);
  attune::models::LinearAttention linear(o);
  nlohmann::json rows = nlohmann::json::array();
  int crossover = 0;
  std::printf("%8s %14s %14s %16s\n", "N", "softmax ms", "linear ms", "softmax/linear");
  for (int n = min_n; n <= max_n; n *= 2) {
    const torch::Tensor x = torch::randn({1, n, d}).requires_grad_(true);
    const double q = MedianMs([&] {
      quadratic->zero_grad();
      quadratic->forward(x, x, x).output.sum().backward();
    });
    const double l = MedianMs([&] {
      linear->zero_grad();
      linear->forward(x).output.sum().backward();
    });
    if (l < q && crossover == 0) crossover = n;
    if (l >= q) crossover = 0;
    std::printf("%8d %14.3f %14.3f %16.2f\n", n, q, l, q / l);
    std::fflush(stdout);
    rows.push_back({{"n", n}, {"softmax_ms", q}, {"linear_ms", l}});
  }
  if (crossover > 0) {
    std::printf("crossover: linear attention is faster from N = %d on (d_model %d, %d head(s), %d thread(s))\n",
                crossover, d, heads, threads);
  } else {
    std::printf("crossover: none up to N = %d\n", max_n);
  }
  if (!json_path.empty()) {
    std::ofstream(json_path) << nlohmann::json{{"rows", rows}, {"crossover", crossover}}.dump();
  }
  return 0;
}
