// attune-bench-model: forward + backward step time of the study model
// (worker/model.h) in C++, for experiments/bench/model_bench.py, which times
// the same model driven from Python (tests/worker/parity_oracle.py's
// reference, on the same LibTorch, the same parameters and batch) in the
// same run and prints the ratio.
//
//   attune-bench-model [--variant model] [--threads 1] [--batch 32]
//                      [--iters 50] [--warmup 5] [--dump model.pt]
//                      [--json out.json] [--serve]
//
// The model is the quickstart's (experiments/studies/quickstart.json) with
// dropout 0 (the Python reference has none), or one of the variants of
// bench/model_variants.h (an encoder alone, another fusion). A step: zero
// the gradients, forward, binary cross-entropy on the logits plus the
// fusion's auxiliary loss (PersAM's MIL term), backward (no optimiser).
// --dump writes the parameters, the batch, the logits and the model
// configuration for the Python side. --serve, for the interleaved
// comparison: after the warm-up it prints "ready", then for each line N read
// from stdin runs N steps and prints {"steps_ms": [...]} on one line; it ends
// at end of input.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "attune/common/config.h"
#include "attune/worker/model.h"
#include "bench/model_variants.h"
#include "bench/study_model.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

void Dump(const std::string& path, attune::worker::MultimodalAttentionNet& net,
          const attune::worker::Batch& x, const torch::Tensor& logits, const attune::ModelConfig& m) {
  c10::Dict<std::string, torch::Tensor> d;
  for (const auto& p : net->named_parameters()) d.insert("param." + p.key(), p.value().detach().clone());
  const std::pair<const char*, const torch::Tensor*> inputs[] = {
      {"static_x", &x.static_x},   {"event_bucket", &x.event_bucket}, {"event_value", &x.event_value},
      {"event_time", &x.event_time}, {"event_pad", &x.event_pad},     {"imaging", &x.imaging},
      {"genomics", &x.genomics},   {"present", &x.present},           {"label", &x.label}};
  for (const auto& [name, t] : inputs) {
    if (t->defined()) d.insert(std::string("input.") + name, t->clone());
  }
  d.insert("output.logits", logits.detach().clone());
  // The configuration as JSON bytes (the Python reference reads it).
  const std::string json = m.ToJson();
  d.insert("config.model", torch::tensor(std::vector<uint8_t>(json.begin(), json.end()), torch::kUInt8));
  auto bytes = torch::pickle_save(c10::IValue(d));
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

// One training step without the optimiser, in milliseconds.
double Step(attune::worker::MultimodalAttentionNet& net, const attune::worker::Batch& x) {
  const auto t0 = Clock::now();
  net->zero_grad();
  attune::worker::ModelOutput out = net->forward(x);
  torch::Tensor loss = torch::binary_cross_entropy_with_logits(out.logits, x.label);
  if (out.aux_loss.defined()) loss = loss + out.aux_loss;
  loss.backward();
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

std::vector<double> Steps(attune::worker::MultimodalAttentionNet& net, const attune::worker::Batch& x,
                          int n) {
  std::vector<double> ms;
  for (int i = 0; i < n; ++i) ms.push_back(Step(net, x));
  return ms;
}

std::string VariantHelp() {
  std::string s = "variants:\n";
  for (const auto& v : attune::bench::ModelVariants()) {
    s += "  " + std::string(v.name) + std::string(20 - std::min<size_t>(v.name.size(), 19), ' ') +
         std::string(v.what) + "\n";
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"forward + backward step time of the study model in C++"};
  app.footer(VariantHelp());
  int threads = 1, batch = 32, iters = 50, warmup = 5;
  std::string variant_name = "model", dump, json_path;
  bool serve = false;
  app.add_option("--variant", variant_name, "model configuration (below)")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads")->capture_default_str();
  app.add_option("--batch", batch, "patients per step")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--iters", iters, "timed steps")->capture_default_str()->check(CLI::Range(1, 100000));
  app.add_option("--warmup", warmup, "untimed steps first")->capture_default_str();
  app.add_option("--dump", dump, "write parameters, batch, logits and configuration here (.pt)");
  app.add_option("--json", json_path, "write the timings here");
  app.add_flag("--serve", serve, "after the warm-up, run N steps per line N on stdin (model_bench.py)");
  CLI11_PARSE(app, argc, argv);
  const attune::bench::ModelVariant* variant = attune::bench::FindModelVariant(variant_name);
  if (variant == nullptr) {
    std::fprintf(stderr, "attune-bench-model: --variant: unknown '%s'\n%s", variant_name.c_str(),
                 VariantHelp().c_str());
    return 2;
  }

  try {
    torch::set_num_threads(threads);
    // ModelConfig's defaults are the quickstart's sizes.
    attune::bench::StudyModel study = attune::bench::MakeStudyModel(*variant, batch);
    const attune::ModelConfig& m = study.config;
    attune::worker::MultimodalAttentionNet& net = study.net;
    const attune::worker::Batch& x = study.batch;
    if (!dump.empty()) {
      torch::NoGradGuard no_grad;
      Dump(dump, net, x, net->forward(x).logits, m);
    }
    Steps(net, x, warmup);
    if (serve) {
      std::printf("ready\n");
      std::fflush(stdout);
      for (std::string line; std::getline(std::cin, line);) {
        std::printf("%s\n", nlohmann::json{{"steps_ms", Steps(net, x, std::stoi(line))}}.dump().c_str());
        std::fflush(stdout);
      }
      return 0;
    }
    std::vector<double> ms = Steps(net, x, iters);
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    int64_t params = 0;
    for (const auto& p : net->parameters()) params += p.numel();
    std::printf("C++    %s step %.3f ms (median of %d; batch %d, %d thread(s), %lld parameters)\n",
                variant_name.c_str(), median, iters, batch, threads, static_cast<long long>(params));
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
