// Data-parallel training in one process: bucket assignment, sharding, the
// local communicator, and resuming from a checkpoint. The multi-rank cases
// run under mpirun (mpi_test.cc).
#include <gtest/gtest.h>

#include <set>

#include "attune/parallel/communicator.h"
#include "attune/parallel/reducer.h"
#include "attune/parallel/trainer.h"
#include "parallel/toy.h"
#include "support/temp_dir.h"

namespace attune::parallel {
namespace {

using testing::ToyData;
using testing::ToyNet;

TEST(AssignBuckets, ReverseOrderWithASmallFirstBucket) {
  ReducerOptions o;
  o.first_bucket_bytes = 8;
  o.bucket_bytes = 20;
  // Sizes in registration order; 0- and 4-byte parameters among them.
  auto b = AssignBuckets({12, 0, 4, 40, 8, 8, 4}, {0, 0, 0, 0, 0, 0, 0}, o);
  std::vector<std::vector<size_t>> want = {{6, 5}, {4, 3}, {2, 1, 0}};
  EXPECT_EQ(b, want);
}

TEST(AssignBuckets, EveryParameterOnceAndKeysNeverMixed) {
  ReducerOptions o;
  o.first_bucket_bytes = 3;
  o.bucket_bytes = 7;
  std::vector<int64_t> sizes;
  std::vector<int> keys;
  for (int i = 0; i < 41; ++i) {
    sizes.push_back((i * 5) % 11);
    keys.push_back(i % 3 == 0 ? 1 : 0);
  }
  std::multiset<size_t> seen;
  for (const auto& bucket : AssignBuckets(sizes, keys, o)) {
    ASSERT_FALSE(bucket.empty());
    for (size_t i : bucket) {
      seen.insert(i);
      EXPECT_EQ(keys[i], keys[bucket.front()]);
    }
    for (size_t j = 1; j < bucket.size(); ++j) EXPECT_LT(bucket[j], bucket[j - 1]);
  }
  EXPECT_EQ(seen.size(), sizes.size());
  EXPECT_EQ(std::set<size_t>(seen.begin(), seen.end()).size(), sizes.size());
}

TEST(ShardIndices, RanksCoverEveryExampleAndTakeEqualShares) {
  for (int world : {1, 2, 3, 4}) {
    for (int64_t n : {0, 1, 5, 10, 11}) {
      std::multiset<int64_t> all;
      int64_t len = -1;
      for (int r = 0; r < world; ++r) {
        torch::Tensor s = ShardIndices(n, world, r, 7, 2);
        if (len < 0) len = s.size(0);
        EXPECT_EQ(s.size(0), len) << "world " << world << " n " << n;
        for (int64_t i = 0; i < s.size(0); ++i) all.insert(s[i].item<int64_t>());
      }
      EXPECT_EQ(len, (n + world - 1) / world);
      EXPECT_EQ(std::set<int64_t>(all.begin(), all.end()).size(), static_cast<size_t>(n));
      for (int64_t v : all) EXPECT_TRUE(v >= 0 && v < n);
    }
  }
  // A new order each epoch, the same on every call.
  EXPECT_TRUE(torch::equal(ShardIndices(50, 2, 1, 7, 3), ShardIndices(50, 2, 1, 7, 3)));
  EXPECT_FALSE(torch::equal(ShardIndices(50, 2, 1, 7, 3), ShardIndices(50, 2, 1, 7, 4)));
}

TEST(LocalCommunicator, IsOneRankWhoseCollectivesAreDone) {
  auto comm = MakeLocalCommunicator();
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  torch::Tensor t = torch::arange(5, torch::kFloat);
  auto w = comm->AllReduce(t, ReduceOp::kSum, "t");
  EXPECT_TRUE(w->IsCompleted());
  EXPECT_TRUE(torch::equal(t, torch::arange(5, torch::kFloat)));
  EXPECT_THROW(comm->Broadcast(t, 1, "t"), CollectiveError);
}

// One rank trains as a plain loop over its batches would.
TEST(DataParallelTrainer, OneRankEqualsThePlainLoop) {
  ToyData data(23);
  DataParallelOptions o;
  o.batch_size = 4;
  o.epochs = 3;
  auto comm = MakeLocalCommunicator();
  ToyNet net(1), ref(1);
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  torch::optim::SGD ref_opt(ref->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  DataParallelTrainer trainer(*net, opt, *comm, o);
  TrainSummary s = trainer.Train(data.size(), testing::ToyLossFn(net, data));
  testing::TrainConcatenated(ref, ref_opt, data, 1, o, 1 << 30);
  EXPECT_EQ(s.steps, 3 * 6);
  EXPECT_TRUE(torch::equal(testing::Flatten(*net), testing::Flatten(*ref)));
}

// Stopped at a checkpoint and resumed, training ends exactly where an
// uninterrupted run does: model, Adam's state, data position and the
// per-step random stream (dropout) all come back.
TEST(DataParallelTrainer, ResumesFromACheckpointExactly) {
  testing::TempDir dir;
  ToyData data(30);
  auto comm = MakeLocalCommunicator();
  DataParallelOptions o;
  o.batch_size = 4;
  o.epochs = 3;
  o.checkpoint_every = 5;
  auto run = [&](int64_t max_steps, const std::string& checkpoint) {
    return testing::TrainToyWithCheckpoints(*comm, data, o, 3, max_steps, checkpoint);
  };
  auto [straight, s1] = run(0, "");
  const std::string ckpt = dir.path() + "/train.ckpt";
  auto [first_half, s2] = run(13, ckpt);
  EXPECT_EQ(s2.steps, 13);
  EXPECT_FALSE(torch::equal(first_half, straight));
  auto [resumed, s3] = run(0, ckpt);
  EXPECT_EQ(s3.resumed_from, 13);
  EXPECT_EQ(s3.steps, s1.steps);
  EXPECT_TRUE(torch::equal(resumed, straight));
  EXPECT_DOUBLE_EQ(s3.loss, s1.loss);
}

TEST(DataParallelTrainer, RefusesACheckpointOfAnotherLayout) {
  testing::TempDir dir;
  ToyData data(30);
  auto comm = MakeLocalCommunicator();
  const std::string ckpt = dir.path() + "/train.ckpt";
  for (int64_t batch : {4, 5}) {
    DataParallelOptions o;
    o.batch_size = batch;
    o.max_steps = 2;
    o.checkpoint_path = ckpt;
    ToyNet net(3);
    torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.01));
    DataParallelTrainer trainer(*net, opt, *comm, o);
    if (batch == 4) {
      trainer.Train(data.size(), testing::ToyLossFn(net, data));
    } else {
      try {
        trainer.Train(data.size(), testing::ToyLossFn(net, data));
        FAIL() << "resumed a checkpoint of batch size 4 with batch size 5";
      } catch (const c10::Error& e) {
        EXPECT_NE(std::string(e.what()).find("batch size 4"), std::string::npos) << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace attune::parallel
