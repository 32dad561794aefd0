// The NCCL communicator, on GPUs: built only with the CUDA toolkit and NCCL,
// skipped where no GPU is visible. Run under mpirun (one GPU per rank, the
// MPI communicator bootstraps NCCL's id), or alone as one rank.
#include <gtest/gtest.h>

#include "attune/parallel/mpi_communicator.h"
#include "attune/parallel/nccl_communicator.h"

namespace attune::parallel {
namespace {

constexpr auto kTimeout = std::chrono::seconds(60);

class NcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int gpus = CudaDeviceCount();
    if (gpus == 0 || !torch::cuda::is_available()) {
      GTEST_SKIP() << "no GPU visible (or a CPU-only LibTorch): NCCL tests skipped";
    }
    boot_ = MakeMpiCommunicator();
    comm_ = MakeNcclCommunicator(*boot_, boot_->rank() % gpus);
  }
  std::unique_ptr<Communicator> boot_, comm_;
};

TEST_F(NcclTest, AllReducesAndBroadcastsRankUniqueValuesOnTheGpu) {
  const int64_t w = comm_->size(), r = comm_->rank();
  const auto cuda = torch::TensorOptions().device(torch::kCUDA, boot_->rank() %
                                                                    CudaDeviceCount());
  for (int64_t n : {0, 1, 7, 1000, 1 << 22}) {
    torch::Tensor base = torch::arange(n, torch::kLong);
    torch::Tensor t = (base * w + r).to(cuda.dtype(torch::kFloat));
    comm_->AllReduce(t, ReduceOp::kSum, "sum")->Wait(kTimeout);
    EXPECT_TRUE(torch::equal(t.cpu(), (base * w * w + w * (w - 1) / 2).to(torch::kFloat)));
    torch::Tensor b = torch::full({n}, r + 1, cuda.dtype(torch::kLong));
    comm_->Broadcast(b, 0, "bcast")->Wait(kTimeout);
    EXPECT_TRUE(torch::equal(b.cpu(), torch::full({n}, 1, torch::kLong)));
  }
  torch::Tensor host = torch::zeros({3});
  EXPECT_THROW(comm_->AllReduce(host, ReduceOp::kSum, "cpu tensor"), CollectiveError);
}

}  // namespace
}  // namespace attune::parallel
