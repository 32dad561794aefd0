#include "attune/common/store.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <rocksdb/db.h>

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "attune/common/at_rest.h"
#include "support/temp_dir.h"

namespace attune {
namespace {

std::string ModelBytes(int64_t r) { return std::string(1000 + r, static_cast<char>('a' + r % 26)); }

// `model` must outlive the commit (RoundCommit holds a view).
RoundCommit Commit(int64_t r, const std::string& model = {}) {
  RoundCommit c;
  c.round = r;
  c.model = model;
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
    const std::string m0 = ModelBytes(0), m1 = ModelBytes(1);
    ASSERT_TRUE((*store)->CommitRound(Commit(0, m0)).ok());
    ASSERT_TRUE((*store)->CommitRound(Commit(1, m1)).ok());
    // Not the next round: refused, nothing written.
    EXPECT_EQ((*store)->CommitRound(Commit(3)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*store)->CommitRound(Commit(1)).code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*store)->LoadModel(3).status().code(), absl::StatusCode::kNotFound);
  }
  auto store = StateStore::Open(dir.path(), "study-a");
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->LastCommittedRound(), 1);
  EXPECT_EQ(*(*store)->LoadModel(1), ModelBytes(1));
  EXPECT_EQ(*(*store)->LoadServerState(1), "");
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
      const std::string model = ModelBytes(r);
      if (!(*store)->CommitRound(Commit(r, model)).ok()) _exit(3);
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
    ASSERT_EQ(*(*store)->LoadModel(r), ModelBytes(r)) << "round " << r;
    ASSERT_EQ(*(*store)->LoadRecord(r), Commit(r).record_json);
    ASSERT_EQ(*(*store)->LoadAudit(r), Commit(r).audit_json);
  }
  EXPECT_EQ((*store)->LoadModel(last + 1).status().code(), absl::StatusCode::kNotFound);
  const std::string next = ModelBytes(last + 1);
  EXPECT_TRUE((*store)->CommitRound(Commit(last + 1, next)).ok());
  EXPECT_EQ(*(*store)->VerifyLog(), static_cast<uint64_t>(last + 2));
}

TEST(StateStore, KeepsServerStateAndRefusesACorruptModelFile) {
  testing::TempDir dir;
  auto store = StateStore::Open(dir.path(), "s");
  ASSERT_TRUE(store.ok()) << store.status();
  const std::string model = ModelBytes(0), state = "momentum-bytes";
  RoundCommit c = Commit(0, model);
  c.server_state = state;
  ASSERT_TRUE((*store)->CommitRound(c).ok());
  EXPECT_EQ(*(*store)->LoadServerState(0), state);
  // Flip one byte of the model file: the digest committed with it no longer matches.
  const std::string path = dir.path() + "/models/round-000000000000.atnm";
  FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  std::fseek(f, 10, SEEK_SET);
  std::fputc('#', f);
  std::fclose(f);
  auto loaded = (*store)->LoadModel(0);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(loaded.status().message()).find("round-000000000000.atnm"),
            std::string::npos);
}

TEST(StateStore, AuditLogIsHashChainedAndVerifiable) {
  testing::TempDir dir;
  {
    auto store = StateStore::Open(dir.path(), "s");
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->AppendLog("site_joined", "site-1", "{\"n\":1}").ok());
    const std::string model = ModelBytes(0);
    ASSERT_TRUE((*store)->CommitRound(Commit(0, model)).ok());
    ASSERT_TRUE((*store)->AppendLog("refused", "site-2", "{\"rpc\":\"Join\"}").ok());
    EXPECT_EQ(*(*store)->VerifyLog(), 3u);
    auto entries = (*store)->ReadLog(0, 10);
    ASSERT_TRUE(entries.ok());
    ASSERT_EQ(entries->size(), 3u);
    EXPECT_EQ((*entries)[1].kind, "round_committed");
    EXPECT_EQ((*entries)[2].prev_hash, (*entries)[1].hash);
    EXPECT_EQ((*entries)[0].prev_hash, std::string(64, '0'));
    // A read-only view works while the writer has the directory open.
    auto reader = StateStore::OpenReadOnly(dir.path());
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ(*(*reader)->VerifyLog(), 3u);
    EXPECT_EQ((*reader)->AppendLog("x", "", "{}").code(), absl::StatusCode::kFailedPrecondition);
  }
  // Tamper with entry 1 directly in RocksDB: verification names it.
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir.path(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), "log/0000000000000000", &value).ok());
    const size_t at = value.find("site-1");
    ASSERT_NE(at, std::string::npos);
    value.replace(at, 6, "site-9");
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "log/0000000000000000", value).ok());
  }
  auto store = StateStore::OpenReadOnly(dir.path());
  ASSERT_TRUE(store.ok());
  auto verified = (*store)->VerifyLog();
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(verified.status().message()).find("entry 0"), std::string::npos)
      << verified.status();
}

TEST(StateStore, AuditLogDetectsARemovedEntry) {
  testing::TempDir dir;
  {
    auto store = StateStore::Open(dir.path(), "s");
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*store)->AppendLog("e", "", "{}").ok());
  }
  {
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), dir.path(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), "log/0000000000000002").ok());
  }
  auto store = StateStore::OpenReadOnly(dir.path());
  ASSERT_TRUE(store.ok());
  auto verified = (*store)->VerifyLog();
  EXPECT_EQ(verified.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(verified.status().message()).find("entry 2 is missing"),
            std::string::npos)
      << verified.status();
}

}  // namespace
}  // namespace attune

namespace attune {
namespace {

crypto::SecretBytes KeyOf(const std::string& path) {
  auto key = at_rest::LoadKeyFile(path);
  EXPECT_TRUE(key.ok()) << key.status();
  return key.ok() ? *key : crypto::SecretBytes(32, 0);
}

std::string Slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Models, strategy states and audit sums are sealed on disk; the store
// opens only with its key; an altered model file is refused.
TEST(StateStore, EncryptedAtRestOpensOnlyWithItsKey) {
  testing::TempDir dir;
  const std::string key_path = dir.path() + "/at_rest.key", other_path = dir.path() + "/other.key";
  ASSERT_TRUE(at_rest::MakeKeyFile(key_path).ok());
  ASSERT_TRUE(at_rest::MakeKeyFile(other_path).ok());
  EXPECT_EQ(at_rest::MakeKeyFile(key_path).code(), absl::StatusCode::kAlreadyExists);
  const std::string data = dir.path() + "/state";
  const std::string model = "MODEL-PLAINTEXT-" + std::string(5000, 'w');
  {
    auto store = StateStore::Open(data, "study-a", {.at_rest_key = KeyOf(key_path)});
    ASSERT_TRUE(store.ok()) << store.status();
    RoundCommit c = Commit(0, model);
    c.server_state = "STATE-PLAINTEXT";
    c.audit_json = "{\"AUDIT-PLAINTEXT\": 1}";
    ASSERT_TRUE((*store)->CommitRound(c).ok());
    ASSERT_TRUE((*store)->CommitRound(Commit(1, model)).ok());
  }
  // On disk: no plain bytes of the model or the state.
  const std::string model_file = data + "/models/round-000000000000.atnm";
  EXPECT_EQ(Slurp(model_file).find("MODEL-PLAINTEXT"), std::string::npos);
  EXPECT_EQ(Slurp(data + "/models/round-000000000000.state").find("STATE-PLAINTEXT"),
            std::string::npos);
  EXPECT_TRUE(at_rest::IsSealed(Slurp(model_file)));

  auto none = StateStore::Open(data, "study-a");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(none.status().message()).find("--at-rest-key"), std::string::npos);
  auto wrong = StateStore::Open(data, "study-a", {.at_rest_key = KeyOf(other_path)});
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  {
    // The log needs no key; sealed items do.
    auto reader = StateStore::OpenReadOnly(data);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_TRUE((*reader)->VerifyLog().ok());
    EXPECT_EQ((*reader)->LoadAudit(0).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ((*reader)->LoadModel(0).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  {
    auto store = StateStore::Open(data, "study-a", {.at_rest_key = KeyOf(key_path)});
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(*(*store)->LoadModel(0), model);
    EXPECT_EQ(*(*store)->LoadServerState(0), "STATE-PLAINTEXT");
    EXPECT_EQ(*(*store)->LoadAudit(0), "{\"AUDIT-PLAINTEXT\": 1}");
    EXPECT_EQ(*(*store)->LoadAudit(1), Commit(1).audit_json);
  }
  // A flipped byte in a sealed model: DataLoss naming the file.
  std::string bytes = Slurp(model_file);
  bytes[bytes.size() / 2] ^= 0x10;
  std::ofstream(model_file, std::ios::binary) << bytes;
  auto store = StateStore::Open(data, "study-a", {.at_rest_key = KeyOf(key_path)});
  ASSERT_TRUE(store.ok()) << store.status();
  auto loaded = (*store)->LoadModel(0);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(loaded.status().message()).find("round-000000000000.atnm"),
            std::string::npos);
  // A sealed model cannot stand in for another round's: round 1's file
  // copied over round 0's does not open (the envelope names its round).
  std::ofstream(model_file, std::ios::binary) << Slurp(data + "/models/round-000000000001.atnm");
  EXPECT_EQ((*store)->LoadModel(0).status().code(), absl::StatusCode::kDataLoss);
}

TEST(StateStore, AClearStoreWithRoundsIsNotEncryptedInPlace) {
  testing::TempDir dir;
  const std::string key_path = dir.path() + "/k";
  ASSERT_TRUE(at_rest::MakeKeyFile(key_path).ok());
  const std::string data = dir.path() + "/state", m = ModelBytes(0);
  ASSERT_TRUE((*StateStore::Open(data, "s"))->CommitRound(Commit(0, m)).ok());
  auto store = StateStore::Open(data, "s", {.at_rest_key = KeyOf(key_path)});
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
}

TEST(AtRestKeyFile, IsPrivateAndWellFormed) {
  testing::TempDir dir;
  const std::string path = dir.path() + "/k";
  EXPECT_EQ(at_rest::LoadKeyFile(path).status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(at_rest::MakeKeyFile(path).ok());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(Slurp(path).size(), 65u);  // 64 hex digits and a newline
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  EXPECT_EQ(at_rest::LoadKeyFile(path).status().code(), absl::StatusCode::kPermissionDenied);
  const std::string bad = dir.path() + "/bad";
  { std::ofstream(bad) << "not hex\n"; }
  ASSERT_EQ(::chmod(bad.c_str(), 0600), 0);
  EXPECT_EQ(at_rest::LoadKeyFile(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune
