// Data-parallel training across real ranks: run under `mpirun -np N` (CTest
// runs it with 2 and 3). Every rank runs every test; a failure on any rank
// fails the run. Rank-unique values throughout, expected values in closed
// form, tolerances scaled by the world size.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "attune/parallel/mpi_communicator.h"
#include "attune/parallel/trainer.h"
#include "parallel/toy.h"

namespace attune::parallel {
namespace {

using testing::ToyData;
using testing::ToyNet;
constexpr auto kTimeout = std::chrono::seconds(60);

// The ranks' communicator, made once in main() (MPI is initialised once).
Communicator* comm = nullptr;

// max - min over ranks of every element: zero where all ranks agree.
torch::Tensor SpreadOverRanks(const torch::Tensor& t) {
  torch::Tensor hi = t.to(torch::kDouble).contiguous(), lo = -hi.clone();
  comm->AllReduce(hi, ReduceOp::kMax, "spread max")->Wait(kTimeout);
  comm->AllReduce(lo, ReduceOp::kMax, "spread min")->Wait(kTimeout);
  return hi + lo;
}

class AllReduceTest : public ::testing::TestWithParam<std::tuple<int64_t, c10::ScalarType>> {};

TEST_P(AllReduceTest, SumsMinsAndMaxesRankUniqueValues) {
  auto [numel, dtype] = GetParam();
  const int64_t w = comm->size(), r = comm->rank();
  torch::Tensor base = torch::arange(numel, torch::kInt64);
  torch::Tensor t = (base * w + r).to(dtype);
  comm->AllReduce(t, ReduceOp::kSum, "sum")->Wait(kTimeout);
  EXPECT_TRUE(torch::equal(t, (base * w * w + w * (w - 1) / 2).to(dtype)));
  torch::Tensor hi = (base * w + r).to(dtype), lo = hi.clone();
  comm->AllReduce(hi, ReduceOp::kMax, "max")->Wait(kTimeout);
  comm->AllReduce(lo, ReduceOp::kMin, "min")->Wait(kTimeout);
  EXPECT_TRUE(torch::equal(hi, (base * w + w - 1).to(dtype)));
  EXPECT_TRUE(torch::equal(lo, (base * w).to(dtype)));
}

INSTANTIATE_TEST_SUITE_P(CountsAndTypes, AllReduceTest,
                         ::testing::Combine(::testing::Values(0, 1, 7, 1000, 1 << 20),
                                            ::testing::Values(torch::kFloat, torch::kDouble,
                                                              torch::kLong)));

TEST(Mpi, BroadcastsFromEveryRootAndPassesBarriers) {
  for (int root = 0; root < comm->size(); ++root) {
    torch::Tensor t = torch::full({13}, comm->rank() * 10 + 1, torch::kLong);
    comm->Broadcast(t, root, "bcast")->Wait(kTimeout);
    EXPECT_TRUE(torch::equal(t, torch::full({13}, root * 10 + 1, torch::kLong)));
    comm->Barrier("barrier")->Wait(kTimeout);
  }
  torch::Tensor t = torch::zeros({2});
  EXPECT_THROW(comm->Broadcast(t, comm->size(), "bad root"), CollectiveError);
  torch::Tensor cuda_like = torch::zeros({2}, torch::kBFloat16);
  EXPECT_THROW(comm->AllReduce(cuda_like, ReduceOp::kSum, "bfloat16"), CollectiveError);
}

// Bucket caps: one bucket for everything (DDP's defaults) and buckets of a
// few parameters each (so hooks start all-reduces during backward).
class TrainerTest : public ::testing::TestWithParam<int64_t> {};

TEST_P(TrainerTest, RanksStayIdenticalAndEqualOneProcessOnTheConcatenatedBatches) {
  const int world = comm->size();
  ToyData data(41);
  DataParallelOptions o;
  o.batch_size = 3;
  o.epochs = 2;
  o.seed = 11;
  o.reducer.bucket_bytes = GetParam();
  o.reducer.first_bucket_bytes = std::min<int64_t>(GetParam(), 1 << 20);
  // Each rank starts from its own weights: BroadcastState must give rank 0's.
  ToyNet net(100 + comm->rank());
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  DataParallelTrainer trainer(*net, opt, *comm, o);
  trainer.BroadcastState();
  const torch::Tensor unused_before = net->unused.detach().clone();
  TrainSummary s = trainer.Train(data.size(), testing::ToyLossFn(net, data));
  const int64_t steps = 2 * (((41 + world - 1) / world + 2) / 3);
  EXPECT_EQ(s.steps, steps);
  // With 8-byte buckets the last layer's bucket starts during backward (the
  // unused parameter's bucket, next, holds the rest until backward ends).
  if (GetParam() == 8) EXPECT_GT(s.launched_in_backward, 0);

  torch::Tensor mine = testing::Flatten(*net);
  EXPECT_EQ(SpreadOverRanks(mine).abs().max().item<double>(), 0.0) << "ranks differ";
  EXPECT_TRUE(torch::equal(net->unused.detach(), unused_before)) << "unused parameter moved";
  EXPECT_FALSE(net->unused.grad().defined());

  ToyNet ref(100);  // rank 0's initial weights
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  testing::TrainConcatenated(ref, ref_opt, data, world, o, steps);
  torch::Tensor want = testing::Flatten(*ref);
  EXPECT_FALSE(torch::equal(want, testing::Flatten(*ToyNet(100))));  // it trained
  const double tol = 1e-5 * world;
  EXPECT_LT((mine - want).abs().max().item<double>(), tol);
  // The rarely used parameter trained too.
  EXPECT_FALSE(torch::equal(net->rare.detach(), ToyNet(100)->rare.detach()));
}

INSTANTIATE_TEST_SUITE_P(BucketCaps, TrainerTest, ::testing::Values(25 << 20, 8, 40));

TEST(Mpi, CheckpointWrittenByRankZeroResumesEveryRank) {
  // A path every rank sees: rank 0 names it.
  torch::Tensor id = torch::tensor({static_cast<int64_t>(::getpid())}, torch::kLong);
  comm->Broadcast(id, 0, "checkpoint id")->Wait(kTimeout);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("attune-mpi-ckpt-" + std::to_string(id.item<int64_t>())))
                               .string();
  ToyData data(40);
  DataParallelOptions o;
  o.batch_size = 4;
  o.epochs = 2;
  o.checkpoint_every = 3;
  auto run = [&](int64_t max_steps, const std::string& ckpt) {
    return testing::TrainToyWithCheckpoints(*comm, data, o, 5, max_steps, ckpt);
  };
  auto [straight, s1] = run(0, "");
  auto [half, s2] = run(4, path);
  auto [resumed, s3] = run(0, path);
  EXPECT_EQ(s2.steps, 4);
  EXPECT_FALSE(torch::equal(half, straight));
  EXPECT_EQ(s3.resumed_from, 4);
  EXPECT_TRUE(torch::equal(resumed, straight));
  comm->Barrier("done")->Wait(kTimeout);
  if (comm->rank() == 0) std::filesystem::remove(path);
}

}  // namespace
}  // namespace attune::parallel

// Ranks other than 0 print only failures, prefixed with their rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed()) {
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
    }
  }

 private:
  int rank_;
};

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  torch::set_num_threads(1);
  auto comm = attune::parallel::MakeMpiCommunicator();
  attune::parallel::comm = comm.get();
  if (comm->rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(comm->rank()));
  }
  int rc = RUN_ALL_TESTS();
  // Every rank's verdict: the job fails if any rank failed.
  torch::Tensor failed = torch::tensor({static_cast<int64_t>(rc != 0)}, torch::kLong);
  comm->AllReduce(failed, attune::parallel::ReduceOp::kMax, "verdict")->Wait(std::chrono::seconds(60));
  return failed.item<int64_t>() != 0 ? 1 : 0;
}
