// The coordinator's durable state, in an embedded RocksDB.
//
// A round is committed by exactly one atomic, synced write batch holding the
// new global model, the round record and the audit sums, plus the pointer
// `meta/last_round`. A crash before the batch loses nothing committed; a
// crash after it loses nothing at all. Reopening the directory resumes from
// LastCommittedRound().
//
// Keys: meta/study_id, meta/last_round, round/<r>/{model,record,audit}
// (r zero-padded to 12 digits so keys sort by round).
//
// Thread-safe: RocksDB serialises writers; CommitRound checks and writes
// under an internal mutex so rounds commit strictly in order.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "attune/common/status.h"

namespace rocksdb {
class DB;
}

namespace attune {

struct RoundCommit {
  int64_t round = 0;          // must be LastCommittedRound() + 1
  std::string model;          // encoded global model after this round
  std::string record_json;    // sites, metrics, timings
  std::string audit_json;     // summed audit statistics (may be empty)
};

class StateStore {
 public:
  // Opens (creating if needed) the store in `dir` for `study_id`. A directory
  // that belongs to another study is refused with FailedPrecondition.
  static StatusOr<std::unique_ptr<StateStore>> Open(const std::string& dir,
                                                    const std::string& study_id);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  // One atomic, synced batch. FailedPrecondition if c.round is not next.
  Status CommitRound(const RoundCommit& c);
  // -1 when nothing is committed yet.
  int64_t LastCommittedRound() const;

  StatusOr<std::string> LoadModel(int64_t round) const;
  StatusOr<std::string> LoadRecord(int64_t round) const;
  StatusOr<std::string> LoadAudit(int64_t round) const;

 private:
  explicit StateStore(rocksdb::DB* db, int64_t last_round);
  StatusOr<std::string> Load(int64_t round, const char* what) const;

  std::unique_ptr<rocksdb::DB> db_;
  mutable std::mutex mu_;
  int64_t last_round_;  // guarded by mu_
};

}  // namespace attune
