#include "attune/common/store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "support/temp_dir.h"

namespace attune {
namespace {

RoundCommit Commit(int64_t r) {
  RoundCommit c;
  c.round = r;
  c.model = std::string(1000 + r, static_cast<char>('a' + r % 26));
  c.record_json = "{\"round\": " + std::to_string(r) + "}";
  c.audit_json = "audit-" + std::to_string(r);
  return c;
}

TEST(StateStore, CommitsRoundsInOrderAndReopens) {
  testing::TempDir dir;
  {
    auto store = StateStore::Open(dir.path(), "study-a");
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->LastCommittedRound(), -1);
    ASSERT_TRUE((*store)->CommitRound(Commit(0)).ok());
    ASSERT_TRUE((*store)->CommitRound(Commit(1)).ok());
    // Not the next round: refused, nothing written.
    EXPECT_EQ((*store)->CommitRound(Commit(3)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*store)->CommitRound(Commit(1)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*store)->LoadModel(3).status().code(), absl::StatusCode::kNotFound);
  }
  auto store = StateStore::Open(dir.path(), "study-a");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->LastCommittedRound(), 1);
  EXPECT_EQ(*(*store)->LoadModel(1), Commit(1).model);
  EXPECT_EQ(*(*store)->LoadRecord(0), Commit(0).record_json);
  EXPECT_EQ(*(*store)->LoadAudit(1), Commit(1).audit_json);
}

TEST(StateStore, RefusesAnotherStudysDirectory) {
  testing::TempDir dir;
  ASSERT_TRUE(StateStore::Open(dir.path(), "study-a").ok());
  auto other = StateStore::Open(dir.path(), "study-b");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(other.status().message()).find("study-a"), std::string::npos);
}

TEST(StateStore, RefusesASecondOpenOfTheSameDirectory) {
  testing::TempDir dir;
  auto first = StateStore::Open(dir.path(), "s");
  ASSERT_TRUE(first.ok());
  auto second = StateStore::Open(dir.path(), "s");
  EXPECT_FALSE(second.ok());
}

// A child process commits rounds as fast as it can and is SIGKILLed in the
// middle; every round the reopened store reports as committed must be whole.
TEST(StateStore, KilledWriterLeavesOnlyWholeRounds) {
  testing::TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  if (child == 0) {
    close(fds[0]);
    auto store = StateStore::Open(dir.path(), "crash");
    if (!store.ok()) _exit(2);
    for (int64_t r = 0; r < 100000; ++r) {
      if (!(*store)->CommitRound(Commit(r)).ok()) _exit(3);
      char c = 'x';
      if (write(fds[1], &c, 1) != 1) _exit(4);
    }
    _exit(0);
  }
  close(fds[1]);
  // Wait (bounded by the child's progress) for 20 commits, then kill it mid-write.
  int seen = 0;
  char c;
  while (seen < 20 && read(fds[0], &c, 1) == 1) ++seen;
  ASSERT_EQ(seen, 20);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  close(fds[0]);

  auto store = StateStore::Open(dir.path(), "crash");
  ASSERT_TRUE(store.ok()) << store.status();
  const int64_t last = (*store)->LastCommittedRound();
  EXPECT_GE(last, 19);
  for (int64_t r = 0; r <= last; ++r) {
    ASSERT_EQ(*(*store)->LoadModel(r), Commit(r).model) << "round " << r;
    ASSERT_EQ(*(*store)->LoadRecord(r), Commit(r).record_json);
    ASSERT_EQ(*(*store)->LoadAudit(r), Commit(r).audit_json);
  }
  EXPECT_EQ((*store)->LoadModel(last + 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE((*store)->CommitRound(Commit(last + 1)).ok());
}

}  // namespace
}  // namespace attune
