// The coordinator's durable state: an embedded RocksDB plus model files.
//
// A round is committed by exactly one atomic, synced write batch holding the
// round record, the audit sums, the digests of the model (and strategy state)
// files, the pointer `meta/last_round` and the round's audit-log entry. The
// model files are written and fsynced first under their round's name, so a
// crash before the batch leaves at most an orphan file that the next commit
// of that round replaces; a crash after it loses nothing. Reopening the
// directory resumes from LastCommittedRound(). Models live beside RocksDB,
// not in it, because they can be gigabytes (RocksDB would copy them through
// its WAL and memtable).
//
// Layout of <dir>: RocksDB files, models/round-<r>.atnm and
// models/round-<r>.state. Keys: meta/study_id, meta/last_round,
// meta/log_head, round/<r>/{record,audit,model_sha256,state_sha256},
// log/<seq> (numbers zero-padded so keys sort).
//
// Encryption at rest (at_rest.h), when the store is opened with a key: the
// model and strategy-state files and the audit sums are sealed with
// AES-256-GCM, each bound to the study, its round and what it is; round
// records and the audit log stay readable (they hold metrics and digests,
// and `attune log verify` needs no key). meta/at_rest holds a sealed check
// value, so a store made with a key refuses to open without it (and with
// another key), and a store that already holds rounds in the clear is not
// mixed with sealed ones. The SHA-256 digests are of the plain bytes.
//
// The audit log is append-only and hash-chained: entry n stores
// hash_n = SHA-256(hash_{n-1} || "\n" || canonical JSON of entry n), with
// hash_{-1} = 64 zeros, so editing, dropping or reordering any entry breaks
// every later link. VerifyLog() recomputes the chain.
//
// Thread-safe: appends and commits are serialised by an internal mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "attune/common/crypto.h"
#include "attune/common/status.h"

namespace rocksdb {
class DB;
}

namespace attune {

struct RoundCommit {
  int64_t round = 0;             // must be LastCommittedRound() + 1
  std::string_view model;        // encoded global model after this round
  std::string_view model_sha256; // its SHA-256 (32 raw bytes), when known; else computed
  std::string_view server_state; // encoded strategy state (may be empty)
  std::string record_json;       // sites, metrics, timings
  std::string audit_json;        // summed audit statistics (may be empty)
  std::string log_detail_json = "{}";  // detail of the round's log entry
};

struct LogEntry {
  uint64_t seq = 0;
  int64_t unix_ms = 0;
  std::string kind;         // e.g. round_committed, refused, site_joined
  std::string site;         // may be empty
  std::string detail_json;  // a JSON object
  std::string prev_hash;    // hex
  std::string hash;         // hex
};

struct StoreOptions {
  // Seal models, strategy states and audit sums under this key (32 bytes).
  std::optional<crypto::SecretBytes> at_rest_key;
};

class StateStore {
 public:
  // Opens (creating if needed) the store in `dir` for `study_id`. A directory
  // that belongs to another study is refused with FailedPrecondition, and
  // so are an encrypted one opened without its key and a clear one that
  // already holds rounds opened with a key; PermissionDenied for the wrong
  // key.
  static StatusOr<std::unique_ptr<StateStore>> Open(const std::string& dir,
                                                    const std::string& study_id,
                                                    StoreOptions options = {});
  // Opens an existing store for reading only (works while a coordinator has
  // it open): for `attune log verify`. Writes fail with FailedPrecondition,
  // and so do loads of sealed items (no key).
  static StatusOr<std::unique_ptr<StateStore>> OpenReadOnly(const std::string& dir);
  ~StateStore();
  StateStore(const StateStore&) = delete;
  StateStore& operator=(const StateStore&) = delete;

  const std::string& study_id() const { return study_id_; }

  // Model files, then one atomic, synced batch. FailedPrecondition if
  // c.round is not next.
  Status CommitRound(const RoundCommit& c);
  // -1 when nothing is committed yet.
  int64_t LastCommittedRound() const;

  // DataLoss when a model file does not match the digest committed for it.
  StatusOr<std::string> LoadModel(int64_t round) const;
  // Empty when the round committed no strategy state.
  StatusOr<std::string> LoadServerState(int64_t round) const;
  StatusOr<std::string> LoadRecord(int64_t round) const;
  StatusOr<std::string> LoadAudit(int64_t round) const;

  // Appends one synced entry to the hash-chained audit log.
  Status AppendLog(const std::string& kind, const std::string& site,
                   const std::string& detail_json);
  // Number of entries in the audit log.
  uint64_t LogEntries() const;
  // Entries with seq >= from, at most `max`.
  StatusOr<std::vector<LogEntry>> ReadLog(uint64_t from, size_t max) const;
  // Recomputes every link; the number of entries, or DataLoss naming the
  // first entry that does not verify.
  StatusOr<uint64_t> VerifyLog() const;

 private:
  StateStore(rocksdb::DB* db, std::string dir, std::string study_id, bool read_only);
  static StatusOr<std::unique_ptr<StateStore>> OpenImpl(const std::string& dir,
                                                        const std::string* study_id,
                                                        StoreOptions options);
  // Sets up encryption at rest on a freshly opened store (requires nothing
  // else to be running on it).
  Status InitAtRest(std::optional<crypto::SecretBytes> key);
  // What the at-rest envelope of an item is bound to.
  std::string AtRestAad(int64_t round, const char* what) const;
  // `plain` sealed when a key is set, else as is.
  StatusOr<std::string> ToStored(int64_t round, const char* what, std::string_view plain) const;
  // The plain bytes of a stored item (opened when sealed).
  StatusOr<std::string> FromStored(int64_t round, const char* what, std::string stored) const;
  StatusOr<std::string> Load(int64_t round, const char* what) const;
  StatusOr<std::string> LoadFile(int64_t round, const char* suffix, const char* key) const;
  // Makes the next log entry (requires mu_); `value` is what to store.
  LogEntry NextLogEntry(const std::string& kind, const std::string& site,
                        const std::string& detail_json, std::string* key, std::string* value);

  std::unique_ptr<rocksdb::DB> db_;
  const std::string dir_;
  const std::string study_id_;
  const bool read_only_;
  bool sealed_ = false;                      // the store is encrypted at rest
  std::optional<crypto::SecretBytes> key_;   // its key (absent: read-only, no key)
  mutable std::mutex mu_;
  int64_t last_round_ = -1;   // guarded by mu_
  uint64_t log_next_ = 0;     // guarded by mu_
  std::string log_head_;      // hex hash of the last entry; guarded by mu_
};

}  // namespace attune
