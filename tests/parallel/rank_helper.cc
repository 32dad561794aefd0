// A data-parallel job for the rank fault tests (rank_fault_test.cc), run
// under mpirun: trains the toy model for --steps steps, printing each rank's
// pid once and rank 0's steps, so that the test can kill or stop a rank
// mid-training. A collective error is printed and ends the rank with 1.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#include "attune/parallel/mpi_communicator.h"
#include "attune/parallel/trainer.h"
#include "parallel/toy.h"

int main(int argc, char** argv) {
  int64_t steps = 1000;
  int64_t timeout_ms = 60000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--timeout-ms") == 0) timeout_ms = std::atoll(argv[i + 1]);
  }
  torch::set_num_threads(1);
  int rank = -1;
  try {
    auto comm = attune::parallel::MakeMpiCommunicator();
    rank = comm->rank();
    std::printf("rank %d pid %d\n", rank, static_cast<int>(::getpid()));
    std::fflush(stdout);
    attune::testing::ToyData data(64);
    attune::parallel::DataParallelOptions o;
    o.batch_size = 4;
    o.epochs = 1 << 20;
    o.max_steps = steps;
    o.reducer.timeout = std::chrono::milliseconds(timeout_ms);
    o.reducer.bucket_bytes = o.reducer.first_bucket_bytes = 16;
    attune::testing::ToyNet net(1);
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.01));
    attune::parallel::DataParallelTrainer trainer(*net, opt, *comm, o);
    trainer.BroadcastState();
    trainer.Train(data.size(), attune::testing::ToyLossFn(net, data),
                  [&](const attune::parallel::StepInfo& s) {
                    if (rank == 0 && s.global_step % 100 == 0) {
                      std::printf("rank 0 step %lld\n", static_cast<long long>(s.global_step));
                      std::fflush(stdout);
                    }
                  });
  } catch (const attune::parallel::CollectiveError& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    return 1;
  }
  return 0;
}
