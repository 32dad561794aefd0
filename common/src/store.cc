#include "attune/common/store.h"

#include <fcntl.h>
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "attune/common/at_rest.h"
#include "attune/common/config.h"
#include "attune/common/tensor_codec.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kStudyKey[] = "meta/study_id";
constexpr char kLastRoundKey[] = "meta/last_round";
constexpr char kLogHeadKey[] = "meta/log_head";  // "<next seq> <hex hash>"
constexpr char kAtRestKey[] = "meta/at_rest";    // a sealed check value
constexpr char kAtRestCheck[] = "attune at-rest key check v1";
const std::string kGenesisHash(64, '0');

std::string RoundKey(int64_t round, const char* what) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "round/%012lld/%s", static_cast<long long>(round), what);
  return buf;
}

std::string LogKey(uint64_t seq) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "log/%016llu", static_cast<unsigned long long>(seq));
  return buf;
}

// The hash of an entry covers its fields and the previous hash.
std::string EntryHash(const LogEntry& e) {
  json body = {{"seq", e.seq}, {"unix_ms", e.unix_ms}, {"kind", e.kind},
               {"site", e.site}, {"detail", e.detail_json}};
  return ToHex(Sha256(absl::StrCat(e.prev_hash, "\n", body.dump())));
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

Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

// Writes `data` to `path` so that it survives a crash: temp file, fsync,
// rename, fsync of the folder.
Status WriteFileDurable(const std::string& path, std::string_view data) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create", tmp);
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return Errno("write", tmp);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return Errno("fsync", tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Errno("rename", path);
  const std::string dir = fs::path(path).parent_path().string();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return Errno("cannot open", dir);
  const int rc = ::fsync(dfd);
  ::close(dfd);
  if (rc != 0) return Errno("fsync", dir);
  return absl::OkStatus();
}

std::string ModelFile(const std::string& dir, int64_t round, const char* suffix) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "round-%012lld.%s", static_cast<long long>(round), suffix);
  return (fs::path(dir) / "models" / buf).string();
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

StateStore::StateStore(rocksdb::DB* db, std::string dir, std::string study_id, bool read_only)
    : db_(db), dir_(std::move(dir)), study_id_(std::move(study_id)), read_only_(read_only) {}

StateStore::~StateStore() = default;

StatusOr<std::unique_ptr<StateStore>> StateStore::Open(const std::string& dir,
                                                       const std::string& study_id,
                                                       StoreOptions options) {
  return OpenImpl(dir, &study_id, std::move(options));
}

StatusOr<std::unique_ptr<StateStore>> StateStore::OpenReadOnly(const std::string& dir) {
  return OpenImpl(dir, nullptr, {});
}

StatusOr<std::unique_ptr<StateStore>> StateStore::OpenImpl(const std::string& dir,
                                                           const std::string* study_id,
                                                           StoreOptions store_options) {
  const bool read_only = study_id == nullptr;
  rocksdb::Options options;
  options.paranoid_checks = true;
  rocksdb::DB* raw = nullptr;
  if (read_only) {
    std::error_code ec;
    if (!fs::exists(fs::path(dir) / "CURRENT", ec)) {
      return absl::NotFoundError(absl::StrCat(dir, ": not a coordinator data directory"));
    }
    ATTUNE_RETURN_IF_ERROR(FromRocks(rocksdb::DB::OpenForReadOnly(options, dir, &raw),
                                     absl::StrCat("state store ", dir)));
  } else {
    options.create_if_missing = true;
    ATTUNE_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(options, dir, &raw),
                                     absl::StrCat("state store ", dir)));
  }
  std::unique_ptr<rocksdb::DB> db(raw);

  std::string stored_study;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), kStudyKey, &stored_study);
  if (s.IsNotFound() && !read_only) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    ATTUNE_RETURN_IF_ERROR(FromRocks(db->Put(wo, kStudyKey, *study_id), dir));
    stored_study = *study_id;
  } else {
    ATTUNE_RETURN_IF_ERROR(FromRocks(s, dir));
    if (!read_only && stored_study != *study_id) {
      return absl::FailedPreconditionError(absl::StrCat(
          "state store ", dir, " belongs to study '", stored_study,
          "', not '", *study_id, "': use another --data-dir"));
    }
  }
  std::unique_ptr<StateStore> store(new StateStore(db.release(), dir, stored_study, read_only));
  std::string text;
  s = store->db_->Get(rocksdb::ReadOptions(), kLastRoundKey, &text);
  if (s.ok()) {
    if (!absl::SimpleAtoi(text, &store->last_round_)) {
      return absl::DataLossError(absl::StrCat(dir, ": corrupt ", kLastRoundKey));
    }
  } else if (!s.IsNotFound()) {
    return FromRocks(s, dir);
  }
  store->log_head_ = kGenesisHash;
  s = store->db_->Get(rocksdb::ReadOptions(), kLogHeadKey, &text);
  if (s.ok()) {
    const size_t space = text.find(' ');
    if (space == std::string::npos ||
        !absl::SimpleAtoi(text.substr(0, space), &store->log_next_)) {
      return absl::DataLossError(absl::StrCat(dir, ": corrupt ", kLogHeadKey));
    }
    store->log_head_ = text.substr(space + 1);
  } else if (!s.IsNotFound()) {
    return FromRocks(s, dir);
  }
  ATTUNE_RETURN_IF_ERROR(store->InitAtRest(std::move(store_options.at_rest_key)));
  if (!read_only) {
    std::error_code ec;
    fs::create_directories(fs::path(dir) / "models", ec);
    if (ec) return absl::InternalError(absl::StrCat(dir, "/models: ", ec.message()));
  }
  return store;
}

std::string StateStore::AtRestAad(int64_t round, const char* what) const {
  return absl::StrCat("attune/at-rest/v1/", study_id_, "/", RoundKey(round, what));
}

Status StateStore::InitAtRest(std::optional<crypto::SecretBytes> key) {
  std::string check;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kAtRestKey, &check);
  if (!s.ok() && !s.IsNotFound()) return FromRocks(s, dir_);
  const std::string aad = AtRestAad(-1, "at_rest");
  if (s.ok()) {
    sealed_ = true;
    if (!key) {
      if (read_only_) return absl::OkStatus();  // the log needs no key
      return absl::FailedPreconditionError(absl::StrCat(
          "state store ", dir_, " is encrypted at rest: start the coordinator with its "
          "--at-rest-key"));
    }
    StatusOr<std::string> opened = at_rest::Open(*key, aad, check);
    if (!opened.ok() || *opened != kAtRestCheck) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the at-rest key does not open state store ", dir_, " (the wrong key file?)"));
    }
    key_ = std::move(key);
    return absl::OkStatus();
  }
  if (!key) return absl::OkStatus();  // a store in the clear
  if (read_only_) return absl::FailedPreconditionError("state store opened read-only");
  if (last_round_ >= 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state store ", dir_, " holds rounds stored in the clear; it cannot be encrypted in "
        "place: start without --at-rest-key, or on a new --data-dir"));
  }
  ATTUNE_ASSIGN_OR_RETURN(std::string sealed_check, at_rest::Seal(*key, aad, kAtRestCheck));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ATTUNE_RETURN_IF_ERROR(FromRocks(db_->Put(wo, kAtRestKey, sealed_check), dir_));
  sealed_ = true;
  key_ = std::move(key);
  return absl::OkStatus();
}

StatusOr<std::string> StateStore::ToStored(int64_t round, const char* what,
                                           std::string_view plain) const {
  if (!sealed_) return std::string(plain);
  return at_rest::Seal(*key_, AtRestAad(round, what), plain);
}

StatusOr<std::string> StateStore::FromStored(int64_t round, const char* what,
                                             std::string stored) const {
  if (!sealed_) return stored;
  if (!key_) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " of round ", round, " is encrypted at rest and this store was opened without "
        "its key"));
  }
  return at_rest::Open(*key_, AtRestAad(round, what), stored);
}

LogEntry StateStore::NextLogEntry(const std::string& kind, const std::string& site,
                                  const std::string& detail_json, std::string* key,
                                  std::string* value) {
  LogEntry e;
  e.seq = log_next_;
  e.unix_ms = NowUnixMs();
  e.kind = kind;
  e.site = site;
  e.detail_json = detail_json;
  e.prev_hash = log_head_;
  e.hash = EntryHash(e);
  *key = LogKey(e.seq);
  *value = json{{"seq", e.seq},           {"unix_ms", e.unix_ms}, {"kind", e.kind},
                {"site", e.site},         {"detail", e.detail_json},
                {"prev", e.prev_hash},    {"hash", e.hash}}
               .dump();
  return e;
}

Status StateStore::AppendLog(const std::string& kind, const std::string& site,
                             const std::string& detail_json) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return absl::FailedPreconditionError("state store opened read-only");
  std::string key, value;
  LogEntry e = NextLogEntry(kind, site, detail_json, &key, &value);
  rocksdb::WriteBatch batch;
  batch.Put(key, value);
  batch.Put(kLogHeadKey, absl::StrCat(e.seq + 1, " ", e.hash));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ATTUNE_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch), "audit log append"));
  log_next_ = e.seq + 1;
  log_head_ = e.hash;
  return absl::OkStatus();
}

Status StateStore::CommitRound(const RoundCommit& c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (read_only_) return absl::FailedPreconditionError("state store opened read-only");
  if (c.round != last_round_ + 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "commit of round ", c.round, " but the last committed round is ", last_round_));
  }
  rocksdb::WriteBatch batch;
  {
    // Written as it is unless sealed (no copy of what may be GiBs); the
    // sealed copy is freed at once.
    std::string sealed;
    if (sealed_) {
      ATTUNE_ASSIGN_OR_RETURN(sealed, ToStored(c.round, "model", c.model));
    }
    ATTUNE_RETURN_IF_ERROR(
        WriteFileDurable(ModelFile(dir_, c.round, "atnm"), sealed_ ? sealed : c.model));
  }
  const std::string model_sha256 =
      ToHex(c.model_sha256.size() == 32 ? std::string(c.model_sha256) : Sha256(c.model));
  batch.Put(RoundKey(c.round, "model_sha256"), model_sha256);
  if (!c.server_state.empty()) {
    ATTUNE_ASSIGN_OR_RETURN(std::string stored, ToStored(c.round, "state", c.server_state));
    ATTUNE_RETURN_IF_ERROR(WriteFileDurable(ModelFile(dir_, c.round, "state"), stored));
    batch.Put(RoundKey(c.round, "state_sha256"), ToHex(Sha256(c.server_state)));
  }
  batch.Put(RoundKey(c.round, "record"), c.record_json);
  ATTUNE_ASSIGN_OR_RETURN(std::string audit, ToStored(c.round, "audit", c.audit_json));
  batch.Put(RoundKey(c.round, "audit"), audit);
  batch.Put(kLastRoundKey, std::to_string(c.round));
  std::string key, value;
  json detail = json::parse(c.log_detail_json, nullptr, false);
  if (detail.is_discarded() || !detail.is_object()) detail = json::object();
  detail["round"] = c.round;
  detail["model_sha256"] = model_sha256;
  LogEntry e = NextLogEntry("round_committed", "", detail.dump(), &key, &value);
  batch.Put(key, value);
  batch.Put(kLogHeadKey, absl::StrCat(e.seq + 1, " ", e.hash));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  ATTUNE_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch),
                                   absl::StrCat("commit of round ", c.round)));
  last_round_ = c.round;
  log_next_ = e.seq + 1;
  log_head_ = e.hash;
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

StatusOr<std::string> StateStore::LoadFile(int64_t round, const char* suffix,
                                           const char* key) const {
  ATTUNE_ASSIGN_OR_RETURN(std::string want, Load(round, key));
  const std::string path = ModelFile(dir_, round, suffix);
  ATTUNE_ASSIGN_OR_RETURN(std::string stored, ReadFile(path));
  StatusOr<std::string> opened =
      FromStored(round, std::string_view(suffix) == "atnm" ? "model" : "state", std::move(stored));
  if (!opened.ok() && opened.status().code() == absl::StatusCode::kDataLoss) {
    return absl::DataLossError(absl::StrCat(path, ": ", opened.status().message()));
  }
  ATTUNE_ASSIGN_OR_RETURN(std::string data, std::move(opened));
  if (ToHex(Sha256(data)) != want) {
    return absl::DataLossError(absl::StrCat(
        path, ": does not match the SHA-256 committed for round ", round, " (", want, ")"));
  }
  return data;
}

StatusOr<std::string> StateStore::LoadModel(int64_t round) const {
  return LoadFile(round, "atnm", "model_sha256");
}

StatusOr<std::string> StateStore::LoadServerState(int64_t round) const {
  std::string probe;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RoundKey(round, "state_sha256"), &probe);
  if (s.IsNotFound()) return std::string();
  ATTUNE_RETURN_IF_ERROR(FromRocks(s, absl::StrCat("state of round ", round)));
  return LoadFile(round, "state", "state_sha256");
}

StatusOr<std::string> StateStore::LoadRecord(int64_t round) const { return Load(round, "record"); }
StatusOr<std::string> StateStore::LoadAudit(int64_t round) const {
  ATTUNE_ASSIGN_OR_RETURN(std::string stored, Load(round, "audit"));
  return FromStored(round, "audit", std::move(stored));
}

uint64_t StateStore::LogEntries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_next_;
}

StatusOr<std::vector<LogEntry>> StateStore::ReadLog(uint64_t from, size_t max) const {
  std::vector<LogEntry> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(LogKey(from)); it->Valid() && out.size() < max; it->Next()) {
    if (!it->key().starts_with("log/")) break;
    json j = json::parse(it->value().ToString(), nullptr, false);
    LogEntry e;
    try {
      if (j.is_discarded()) throw std::runtime_error("not JSON");
      e.seq = j.at("seq").get<uint64_t>();
      e.unix_ms = j.at("unix_ms").get<int64_t>();
      e.kind = j.at("kind").get<std::string>();
      e.site = j.at("site").get<std::string>();
      e.detail_json = j.at("detail").get<std::string>();
      e.prev_hash = j.at("prev").get<std::string>();
      e.hash = j.at("hash").get<std::string>();
    } catch (const std::exception& ex) {
      return absl::DataLossError(
          absl::StrCat("audit log entry ", it->key().ToString(), " is malformed: ", ex.what()));
    }
    out.push_back(std::move(e));
  }
  ATTUNE_RETURN_IF_ERROR(FromRocks(it->status(), "audit log"));
  return out;
}

StatusOr<uint64_t> StateStore::VerifyLog() const {
  std::string prev = kGenesisHash;
  uint64_t expect = 0;
  while (true) {
    ATTUNE_ASSIGN_OR_RETURN(std::vector<LogEntry> batch, ReadLog(expect, 4096));
    for (const LogEntry& e : batch) {
      if (e.seq != expect) {
        return absl::DataLossError(absl::StrCat("audit log: entry ", expect,
                                                " is missing (next is ", e.seq, ")"));
      }
      if (e.prev_hash != prev) {
        return absl::DataLossError(absl::StrCat(
            "audit log: entry ", e.seq, " does not link to entry ", e.seq - 1,
            " (its previous hash is ", e.prev_hash, ", the chain has ", prev, ")"));
      }
      if (EntryHash(e) != e.hash) {
        return absl::DataLossError(absl::StrCat("audit log: entry ", e.seq, " (", e.kind,
                                                ") was altered: its hash does not match"));
      }
      prev = e.hash;
      ++expect;
    }
    if (batch.size() < 4096) break;
  }
  std::string head;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kLogHeadKey, &head);
  if (s.ok() && head != absl::StrCat(expect, " ", prev)) {
    return absl::DataLossError(absl::StrCat("audit log: the head (", head,
                                            ") does not match the last entry (", expect, " ",
                                            prev, "): entries were removed from the end"));
  }
  return expect;
}

}  // namespace attune
