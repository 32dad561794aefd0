#include "attune/common/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace attune {
namespace {

constexpr char kStudyKey[] = "meta/study_id";
constexpr char kLastRoundKey[] = "meta/last_round";

std::string RoundKey(int64_t round, const char* what) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "round/%012lld/%s", static_cast<long long>(round), what);
  return buf;
}

Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  if (s.IsNotFound()) return absl::NotFoundError(absl::StrCat(what, ": not found"));
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", s.ToString(),
        " (is another coordinator using this data directory?)"));
  }
  if (s.IsCorruption()) return absl::DataLossError(absl::StrCat(what, ": ", s.ToString()));
  return absl::InternalError(absl::StrCat(what, ": ", s.ToString()));
}

}  // namespace

StateStore::StateStore(rocksdb::DB* db, int64_t last_round)
    : db_(db), last_round_(last_round) {}

StateStore::~StateStore() = default;

StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& dir,
                                                       const std::string& study_id) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  rocksdb::DB* raw = nullptr;
  ATTUNE_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(options, dir, &raw),
                                   absl::StrCat("state store ", dir)));
  std::unique_ptr<rocksdb::DB> db(raw);

  std::string stored_study;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kStudyKey, &stored_study);
  if (s.IsNotFound()) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    ATTUNE_RETURN_IF_ERROR(FromRocks(db->Put(wo, kStudyKey, study_id), dir));
  } else {
    ATTUNE_RETURN_IF_ERROR(FromRocks(s, dir));
    if (stored_study != study_id) {
      return absl::FailedPreconditionError(absl::StrCat(
          "state store ", dir, " belongs to study '", stored_study,
          "', not '", study_id, "': use another --data-dir"));
    }
  }
  int64_t last = -1;
  std::string last_text;
  s = db->Get(rocksdb::ReadOptions(), kLastRoundKey, &last_text);
  if (s.ok()) {
    if (!absl::SimpleAtoi(last_text, &last)) {
      return absl::DataLossError(absl::StrCat(dir, ": corrupt ", kLastRoundKey));
    }
  } else if (!s.IsNotFound()) {
    return FromRocks(s, dir);
  }
  return std::unique_ptr<StateStore>(new StateStore(db.release(), last));
}

Status StateStore::CommitRound(const RoundCommit& c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (c.round != last_round_ + 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "commit of round ", c.round, " but the last committed round is ", last_round_));
  }
  rocksdb::WriteBatch batch;
  batch.Put(RoundKey(c.round, "model"), c.model);
  batch.Put(RoundKey(c.round, "record"), c.record_json);
  batch.Put(RoundKey(c.round, "audit"), c.audit_json);
  batch.Put(kLastRoundKey, std::to_string(c.round));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ATTUNE_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch),
                                   absl::StrCat("commit of round ", c.round)));
  last_round_ = c.round;
  return absl::OkStatus();
}

int64_t StateStore::LastCommittedRound() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_round_;
}

StatusOr<std::string> StateStore::Load(int64_t round, const char* what) const {
  std::string value;
  ATTUNE_RETURN_IF_ERROR(FromRocks(db_->Get(rocksdb::ReadOptions(), RoundKey(round, what), &value),
                                   absl::StrCat(what, " of round ", round)));
  return value;
}

StatusOr<std::string> StateStore::LoadModel(int64_t round) const { return Load(round, "model"); }
StatusOr<std::string> StateStore::LoadRecord(int64_t round) const { return Load(round, "record"); }
StatusOr<std::string> StateStore::LoadAudit(int64_t round) const { return Load(round, "audit"); }

}  // namespace attune
