// A site's worker as many ranks (one per GPU or node, under mpirun or srun):
// rank 0 is the site's federation client: it joins, fetches each round's
// global model and submits the site's update; the ranks train together,
// each on its own shard of the site's data, all-reducing their gradients
// (worker/parallel). Evaluation runs on rank 0 alone (one pass, no
// gradients). The other ranks never talk to the coordinator:
//
//   rank 0                                   ranks 1..n-1: Serve()
//   joins; factory(model config) ─ load ─▶   load the site data too
//         ◀─ every rank's outcome ─┘         (a rank that fails fails the site)
//   a TRAIN task: Train(global, hyper) ─ train ─▶ Train(global, hyper): together
//   the study ends: Stop(ok) ─ stop ─▶       Serve() returns
//
// Without a launcher there is one rank and no messages. No LibTorch here.
#pragma once

#include <memory>

#include "attune/common/status.h"
#include "attune/site/engine.h"
#include "attune/worker/learner.h"

namespace attune::worker {

class SiteRanks {
 public:
  // MPI's ranks when a launcher started several, else this process alone.
  static StatusOr<std::unique_ptr<SiteRanks>> Create();
  ~SiteRanks();  // rank 0: tells the others to stop, if Stop() was not called

  int rank() const;
  int size() const;

  // Rank 0: the learner factory for the site engine; its learners train
  // on every rank.
  site::LearnerFactory Factory(LearnerOptions options);
  // Ranks > 0: follow rank 0 until it stops. Errors: rank 0 stopped with a
  // failure, or this rank failed.
  Status Serve(LearnerOptions options);
  // Rank 0: the study is over (`ok`: whether rank 0 succeeded).
  void Stop(bool ok);

  struct Impl;

 private:
  explicit SiteRanks(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace attune::worker
