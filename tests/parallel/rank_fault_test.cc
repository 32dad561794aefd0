// Real ranks killed or stopped mid-training under `mpirun -np 2`: the job
// must end within a deadline with an error that says what happened, never
// hang.
#include <gtest/gtest.h>

#include <signal.h>

#include <regex>

#include "support/process.h"
#include "support/temp_dir.h"

namespace attune::testing {
namespace {

constexpr auto kDeadline = std::chrono::seconds(90);

struct Job {
  TempDir dir;
  std::unique_ptr<Process> mpirun;
  pid_t rank1 = -1;

  explicit Job(int timeout_ms) {
    mpirun = std::make_unique<Process>(
        std::vector<std::string>{ATTUNE_MPIEXEC, "--allow-run-as-root", "--oversubscribe",
                                 "--mca", "btl", "self,vader", "-np", "2", ATTUNE_RANK_HELPER,
                                 "--steps", "100000000", "--timeout-ms",
                                 std::to_string(timeout_ms)},
        dir / "job.log");
  }
  ~Job() {
    if (rank1 > 0) ::kill(rank1, SIGKILL);  // a stopped rank is not left behind
  }
  // Waits until rank 0 has trained a while and rank 1 told its pid.
  void WaitForTraining() {
    std::smatch m;
    std::string log;
    ASSERT_TRUE(WaitUntil(
        dir.path(),
        [&] {
          log = mpirun->Log();
          return std::regex_search(log, m, std::regex("rank 1 pid (\\d+)")) &&
                 log.find("rank 0 step 300") != std::string::npos;
        },
        kDeadline))
        << log;
    rank1 = std::stoi(m[1]);
  }
};

TEST(RankFaults, ARankKilledMidTrainingEndsTheJobNamingIt) {
  Job job(/*timeout_ms=*/20000);
  job.WaitForTraining();
  ASSERT_EQ(::kill(job.rank1, SIGKILL), 0);
  std::optional<int> rc = job.mpirun->Wait(kDeadline);
  ASSERT_TRUE(rc.has_value()) << "the job hung after rank 1 died:\n" << job.mpirun->Log();
  EXPECT_NE(*rc, 0);
  EXPECT_TRUE(std::regex_search(job.mpirun->Log(), std::regex("rank 1 .*signal 9")))
      << job.mpirun->Log();
}

TEST(RankFaults, AStuckRankMakesTheOthersFailNamingTheCollective) {
  Job job(/*timeout_ms=*/3000);
  job.WaitForTraining();
  ASSERT_EQ(::kill(job.rank1, SIGSTOP), 0);
  std::optional<int> rc = job.mpirun->Wait(kDeadline);
  ASSERT_TRUE(rc.has_value()) << "the job hung with rank 1 stopped:\n" << job.mpirun->Log();
  EXPECT_NE(*rc, 0);
  const std::string log = job.mpirun->Log();
  EXPECT_TRUE(std::regex_search(
      log, std::regex("rank 0: error: MPI (all-reduce|broadcast|barrier) '[^']+' \\(#\\d+.*\\) "
                      "did not complete within 3(\\.0+)? s on rank 0 of 2")))
      << log;
}

}  // namespace
}  // namespace attune::testing
