// attune-bench-parallel: data-parallel training throughput and all-reduce
// bandwidth, run as ranks under mpirun (one rank alone without it), for
// experiments/bench/parallel_bench.py, which runs PyTorch DDP (Gloo) on the
// same model and batch in the same run and prints the ratios.
//
//   mpirun -np N attune-bench-parallel train [--batch 32] [--threads 1] [--independent]
//                                            [--steps 30] [--warmup 5] [--json out.json]
//   mpirun -np N attune-bench-parallel allreduce [--mib 1,4,16,64] [--iters 20]
//                                                [--param-kib 256] [--json out.json]
//
// train: the quickstart's model (bench/study_model.h: the very parameters
// and batch `attune-bench-model --dump` writes) trained by the
// DataParallelTrainer itself (DDP's buckets, no clipping, Adam): each step
// zeroes the gradients, arms the bucketed reducer, runs forward, binary
// cross-entropy plus the fusion's auxiliary loss and backward (buckets
// all-reduced from the autograd hooks), waits for the buckets and steps.
// Every rank's batch is that same batch (throughput is what is measured). Rank 0 prints the median step time
// and samples/s = ranks × batch / step; --json writes them with the first
// step's loss (the driver checks it against Python's).
//
// allreduce: for each size S, S bytes of float parameters of --param-kib
// each get gradients from a backward pass: timed alone ("backward") and with
// GradientReducer (DDP's default buckets, Prepare to Finish), whose extra
// time is the reducer's ("reducer": copies into and out of the buckets and
// the all-reduces not hidden behind the backward); beside them the MPI
// communicator's all-reduce of one S-byte buffer ("comm") and one raw
// blocking MPI_Allreduce on MPI_COMM_WORLD ("raw"). Medians over --iters;
// algbw = S / time and busbw = algbw × 2(n−1)/n (nccl-tests' definitions).
#include <torch/torch.h>

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "attune/parallel/communicator.h"
#include "attune/parallel/mpi_communicator.h"
#include "attune/parallel/reducer.h"
#include "attune/parallel/trainer.h"
#include "bench/study_model.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;
namespace par = attune::parallel;

double Ms(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct TrainArgs {
  int batch = 32, threads = 1, steps = 30, warmup = 5;
  bool independent = false;
};

nlohmann::json Train(par::Communicator& comm, const TrainArgs& a) {
  torch::set_num_threads(a.threads);
  attune::bench::StudyModel study =
      attune::bench::MakeStudyModel(*attune::bench::FindModelVariant("model"), a.batch);
  auto& net = study.net;
  const attune::worker::Batch& x = study.batch;
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-3));
  par::DataParallelOptions o;  // DDP's buckets, no clipping
  o.batch_size = a.batch;
  o.epochs = 1;
  par::DataParallelTrainer trainer(*net, opt, comm, o);
  trainer.BroadcastState();
  // One epoch of warmup + steps batches per rank; every batch is `x`.
  const int64_t steps = a.warmup + a.steps;
  auto loss = [&](const torch::Tensor&) {
    attune::worker::ModelOutput out = net->forward(x);
    torch::Tensor l = torch::binary_cross_entropy_with_logits(out.logits, x.label);
    if (out.aux_loss.defined()) l = l + out.aux_loss;
    return par::StepLoss{l, l.item<double>()};
  };
  double first_loss = 0;
  std::vector<double> ms;
  auto t0 = Clock::now();
  const par::TrainSummary summary =
      trainer.Train(steps * a.batch * comm.size(), loss, [&](const par::StepInfo& s) {
        if (s.global_step == 1) first_loss = s.loss;
        if (s.global_step > a.warmup) ms.push_back(Ms(t0));
        t0 = Clock::now();
      });
  int64_t params = 0;
  for (const auto& p : net->parameters()) params += p.numel();
  const double median = Median(ms);
  return {{"ranks", comm.size()},
          {"independent", false},
          {"batch", a.batch},
          {"threads", a.threads},
          {"parameters", params},
          {"steps", summary.steps},
          {"first_loss", first_loss},
          {"step_ms", median},
          {"steps_ms", ms},
          {"samples_per_s", comm.size() * a.batch * 1000.0 / median}};
}

// --independent: every process trains alone (a local communicator, no
// collective), all at once, each on its own core: what N processes get on
// this machine with no communication at all, the ceiling of N ranks'
// throughput. Rank 0 reports the sum of the processes' samples/s, and as
// step time the batch-weighted harmonic mean.
nlohmann::json TrainIndependently(par::Communicator& world, const TrainArgs& a) {
  std::unique_ptr<par::Communicator> alone = par::MakeLocalCommunicator();
  world.Barrier("start")->Wait(std::chrono::minutes(1));
  nlohmann::json j = Train(*alone, a);
  double mine = j["samples_per_s"].get<double>();
  std::vector<double> all(world.size());
  if (MPI_Allgather(&mine, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD) != MPI_SUCCESS)
    throw std::runtime_error("MPI_Allgather failed");
  double total = 0;
  for (double v : all) total += v;
  j["ranks"] = world.size();
  j["independent"] = true;
  j["samples_per_s"] = total;
  j["step_ms"] = world.size() * a.batch * 1000.0 / total;
  return j;
}

struct AllReduceArgs {
  std::vector<int> mib = {1, 4, 16, 64};
  int iters = 20;
  int param_kib = 256;
};

nlohmann::json AllReduce(par::Communicator& comm, const AllReduceArgs& a) {
  const int n = comm.size();
  const double bus = n > 1 ? 2.0 * (n - 1) / n : 0.0;
  nlohmann::json rows = nlohmann::json::array();
  for (int mib : a.mib) {
    const int64_t bytes = int64_t{mib} << 20;
    const int64_t per = std::min<int64_t>(int64_t{a.param_kib} << 10, bytes) / 4;
    std::vector<torch::Tensor> params;
    for (int64_t left = bytes / 4; left > 0; left -= per)
      params.push_back(torch::full({std::min(per, left)}, comm.rank() + 1.0).requires_grad_(true));
    auto backward = [&] {
      torch::Tensor loss = torch::zeros({});
      for (const auto& p : params) loss = loss + p.sum();
      loss.backward();
    };
    auto zero = [&] {
      for (auto& p : params) p.mutable_grad() = torch::Tensor();
    };
    std::vector<double> backward_ms, bucketed_ms, raw_ms, comm_ms;
    {
      par::GradientReducer reducer(params, comm, par::ReducerOptions{});
      for (int i = 0; i < a.iters + 2; ++i) {
        zero();
        MPI_Barrier(MPI_COMM_WORLD);
        auto t0 = Clock::now();
        backward();
        if (i >= 2) backward_ms.push_back(Ms(t0));
        zero();
        MPI_Barrier(MPI_COMM_WORLD);
        t0 = Clock::now();
        reducer.Prepare();
        backward();
        reducer.Finish();
        if (i >= 2) bucketed_ms.push_back(Ms(t0));
      }
      // Every gradient is the mean of ones: a check that the bytes moved.
      for (const auto& p : params) {
        if (!p.grad().defined() || !torch::allclose(p.grad(), torch::ones_like(p)))
          throw std::runtime_error("the bucketed all-reduce gave a wrong gradient");
      }
    }
    torch::Tensor buf = torch::full({bytes / 4}, comm.rank() + 1.0);
    for (int i = 0; i < a.iters + 2; ++i) {
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t0 = Clock::now();
      if (MPI_Allreduce(MPI_IN_PLACE, buf.data_ptr<float>(), static_cast<int>(buf.numel()), MPI_FLOAT,
                        MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
        throw std::runtime_error("MPI_Allreduce failed");
      if (i >= 2) raw_ms.push_back(Ms(t0));
      MPI_Barrier(MPI_COMM_WORLD);
      const auto t1 = Clock::now();
      comm.AllReduce(buf, par::ReduceOp::kSum, "bench")->Wait(std::chrono::minutes(1));
      if (i >= 2) comm_ms.push_back(Ms(t1));
    }
    const double gib = static_cast<double>(bytes) / (1 << 30);
    const double back_ms = Median(backward_ms), b_ms = Median(bucketed_ms);
    // What the reducer adds to the backward: copies in and out and the
    // all-reduces, less what they overlap.
    const double reducer_ms = std::max(b_ms - back_ms, 1e-3);
    const double c_ms = Median(comm_ms), r_ms = Median(raw_ms);
    rows.push_back({{"bytes", bytes},
                    {"params", params.size()},
                    {"backward_ms", back_ms},
                    {"bucketed_ms", b_ms},
                    {"reducer_ms", reducer_ms},
                    {"comm_ms", c_ms},
                    {"raw_ms", r_ms},
                    {"reducer_algbw", gib / (reducer_ms / 1e3)},
                    {"reducer_busbw", gib / (reducer_ms / 1e3) * bus},
                    {"comm_algbw", gib / (c_ms / 1e3)},
                    {"comm_busbw", gib / (c_ms / 1e3) * bus},
                    {"raw_algbw", gib / (r_ms / 1e3)},
                    {"raw_busbw", gib / (r_ms / 1e3) * bus}});
  }
  return {{"ranks", n}, {"rows", rows}};
}

void PrintTrain(const nlohmann::json& j) {
  std::printf("attune  %d %s: step %.3f ms (median of %zu), %.1f samples/s (batch %d per rank, %d thread(s), %lld parameters)\n",
              j["ranks"].get<int>(), j["independent"].get<bool>() ? "independent process(es)" : "rank(s)",
              j["step_ms"].get<double>(), j["steps_ms"].size(),
              j["samples_per_s"].get<double>(), j["batch"].get<int>(), j["threads"].get<int>(),
              static_cast<long long>(j["parameters"].get<int64_t>()));
}

void PrintAllReduce(const nlohmann::json& j) {
  std::printf(
      "%d rank(s), median ms and GiB/s (bus = alg x 2(n-1)/n). backward: the backward pass alone; "
      "reducer: what GradientReducer adds to it (bucket copies + all-reduces); comm: the MPI "
      "communicator's all-reduce of one buffer; raw: one blocking MPI_Allreduce\n",
      j["ranks"].get<int>());
  std::printf("%10s %6s %9s %9s %9s %9s %9s %9s %9s\n", "bytes", "params", "backward", "reducer",
              "comm", "raw", "red. bus", "comm bus", "raw bus");
  for (const auto& r : j["rows"]) {
    std::printf("%10lld %6zu %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f %9.3f\n",
                static_cast<long long>(r["bytes"].get<int64_t>()), r["params"].get<size_t>(),
                r["backward_ms"].get<double>(), r["reducer_ms"].get<double>(), r["comm_ms"].get<double>(),
                r["raw_ms"].get<double>(), r["reducer_busbw"].get<double>(), r["comm_busbw"].get<double>(),
                r["raw_busbw"].get<double>());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"data-parallel training throughput and all-reduce bandwidth (run under mpirun)"};
  app.require_subcommand(1);
  std::string json_path;
  TrainArgs t;
  CLI::App* train = app.add_subcommand("train", "samples/s of the main model's training step");
  train->add_option("--batch", t.batch, "patients per rank per step")->capture_default_str()->check(CLI::Range(1, 4096));
  train->add_option("--threads", t.threads, "LibTorch intra-op threads per rank")->capture_default_str()->check(CLI::Range(1, 256));
  train->add_option("--steps", t.steps, "timed steps")->capture_default_str()->check(CLI::Range(1, 100000));
  train->add_option("--warmup", t.warmup, "untimed steps first")->capture_default_str()->check(CLI::Range(1, 1000));
  train->add_option("--json", json_path, "rank 0 writes the figures here");
  train->add_flag("--independent", t.independent,
                  "every process trains alone at the same time (no all-reduce): the machine's ceiling for N ranks");
  AllReduceArgs r;
  CLI::App* allreduce = app.add_subcommand("allreduce", "bucketed gradient all-reduce beside raw MPI_Allreduce");
  allreduce->add_option("--mib", r.mib, "sizes in MiB")->delimiter(',')->capture_default_str()->check(CLI::Range(1, 4096));
  allreduce->add_option("--iters", r.iters, "timed repetitions per size")->capture_default_str()->check(CLI::Range(1, 100000));
  allreduce->add_option("--param-kib", r.param_kib, "bytes per parameter tensor (KiB)")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  allreduce->add_option("--json", json_path, "rank 0 writes the figures here");
  CLI11_PARSE(app, argc, argv);

  try {
    // MakeMpiCommunicator initialises MPI (also for one process without
    // mpirun) and finalises it at exit.
    std::unique_ptr<par::Communicator> comm = par::MakeMpiCommunicator();
    const nlohmann::json j = !train->parsed() ? AllReduce(*comm, r)
                             : t.independent  ? TrainIndependently(*comm, t)
                                              : Train(*comm, t);
    if (comm->rank() == 0) {
      if (train->parsed()) PrintTrain(j);
      else PrintAllReduce(j);
      if (!json_path.empty()) {
        std::ofstream f(json_path);
        f << j.dump() << "\n";
        if (!f) throw std::runtime_error("cannot write " + json_path);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attune-bench-parallel: %s\n", e.what());
    return 1;
  }
  return 0;
}
