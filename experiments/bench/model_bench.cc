// attune-bench-model: forward + backward step time of the study model
// (worker/model.h) in C++, for experiments/bench/model_bench.py, which times
// the same model driven from Python (tests/worker/parity_oracle.py's
// reference, on the same LibTorch, the same parameters and batch) in the
// same run and prints the ratio.
//
//   attune-bench-model [--threads 1] [--batch 32] [--iters 50] [--warmup 5]
//                      [--dump model.pt] [--json out.json]
//
// The model is the quickstart's (experiments/studies/quickstart.json) with
// dropout 0 (the Python reference has none). A step: zero the gradients,
// forward, binary cross-entropy on the logits, backward (no optimiser).
// --dump writes the parameters, the batch and the logits for the Python side.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>

#include <CLI/CLI.hpp>

#include "attune/common/config.h"
#include "attune/worker/model.h"
#include "bench/random_batch.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// ModelConfig's defaults are the quickstart's sizes.
attune::ModelConfig QuickstartModel() {
  attune::ModelConfig m;
  m.dropout = 0;
  return m;
}

void Dump(const std::string& path, attune::worker::MultimodalAttentionNet& net,
          const attune::worker::Batch& x, const torch::Tensor& logits, int64_t layers, int64_t heads) {
  c10::Dict<std::string, torch::Tensor> d;
  for (const auto& p : net->named_parameters()) d.insert("param." + p.key(), p.value().detach().clone());
  const std::pair<const char*, const torch::Tensor*> inputs[] = {
      {"static_x", &x.static_x},   {"event_bucket", &x.event_bucket}, {"event_value", &x.event_value},
      {"event_time", &x.event_time}, {"event_pad", &x.event_pad},     {"imaging", &x.imaging},
      {"genomics", &x.genomics},   {"present", &x.present},           {"label", &x.label}};
  for (const auto& [name, t] : inputs) d.insert(std::string("input.") + name, t->clone());
  d.insert("output.logits", logits.detach().clone());
  d.insert("config.layers", torch::scalar_tensor(layers, torch::kInt64));
  d.insert("config.heads", torch::scalar_tensor(heads, torch::kInt64));
  auto bytes = torch::pickle_save(c10::IValue(d));
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forward + backward step time of the study model in C++"};
  int threads = 1, batch = 32, iters = 50, warmup = 5;
  std::string dump, json_path;
  app.add_option("--threads", threads, "LibTorch intra-op threads")->capture_default_str();
  app.add_option("--batch", batch, "patients per step")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--iters", iters, "timed steps")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--dump", dump, "write parameters, batch and logits here (.pt)");
  app.add_option("--json", json_path, "write the timings here");
  CLI11_PARSE(app, argc, argv);

  try {
    torch::set_num_threads(threads);
    torch::manual_seed(7);
    const attune::ModelConfig m = QuickstartModel();
    attune::worker::MultimodalAttentionNet net(m);
    net->train();
    const attune::worker::Batch x = attune::bench::RandomBatch(m, batch, {.pad_events = true, .no_imaging_patient = 1});
    if (!dump.empty()) {
      torch::NoGradGuard no_grad;
      Dump(dump, net, x, net->forward(x).logits, m.layers, m.heads);
    }
    std::vector<double> ms;
    for (int i = 0; i < warmup + iters; ++i) {
      const auto t0 = Clock::now();
      net->zero_grad();
      attune::worker::ModelOutput out = net->forward(x);
      torch::Tensor loss = torch::binary_cross_entropy_with_logits(out.logits, x.label);
      if (out.aux_loss.defined()) loss = loss + out.aux_loss;
      loss.backward();
      const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (i >= warmup) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    int64_t params = 0;
    for (const auto& p : net->parameters()) params += p.numel();
    std::printf("C++    step %.3f ms (median of %d; batch %d, %d thread(s), %lld parameters)\n", median,
                iters, batch, threads, static_cast<long long>(params));
    if (!json_path.empty()) {
      std::ofstream(json_path) << nlohmann::json{{"median_ms", median}, {"steps_ms", ms},
                                                 {"batch", batch}, {"threads", threads},
                                                 {"parameters", params}}
                                      .dump();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attune-bench-model: %s\n", e.what());
    return 1;
  }
  return 0;
}
