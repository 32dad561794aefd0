#include "attune/coordinator/round_driver.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "attune/common/audit_features.h"
#include "attune/common/audit.h"
#include "attune/common/audit_html.h"
#include "attune/common/terms.h"
#include "attune/common/text.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "attune/coordinator/aggregate.h"
#include "nlohmann/json.hpp"

namespace attune::coordinator {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// The patients a release sums: its split at these sites.
std::string Population(const std::string& split, std::vector<std::string> sites) {
  std::sort(sites.begin(), sites.end());
  return absl::StrCat(split, "|", absl::StrJoin(sites, ","));
}

// The study keeps a privacy ledger when anything it releases is noised:
// updates (privacy.mode) or evaluations (audit.noise_multiplier).
bool UsesLedger(const StudyConfig& study) {
  return study.privacy.enabled() || study.audit.noised();
}

// The noise multiplier of one Gaussian release that costs what a round
// does -- its update (when `train` and DP is on) and its evaluation (when
// noised) -- at q = 1, where RDP α/(2σ²) adds: 1/σ² = Σ 1/σᵢ².
double RoundSigma(const StudyConfig& study, bool train) {
  double inverse = 0;
  if (train && study.privacy.enabled()) {
    inverse += 1 / (study.privacy.noise_multiplier * study.privacy.noise_multiplier);
  }
  if (study.audit.noised()) {
    inverse += 1 / (study.audit.noise_multiplier * study.audit.noise_multiplier);
  }
  return 1 / std::sqrt(inverse);
}

std::string RandomHex() {
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return absl::StrFormat("%016x", v);
}

std::chrono::milliseconds Seconds(double s) {
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

json NumOrNull(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// SplitMix64: a small, fully specified generator, so the sample of sites a
// round trains on is the same on every platform and standard library.
uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string FileStamp(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return absl::StrCat(st.st_ino, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, ":",
                      st.st_size);
}

}  // namespace

ServedModel ServedModel::Of(std::string bytes) {
  ServedModel m;
  m.sha256 = Sha256(bytes);
  m.bytes = std::make_shared<const std::string>(std::move(bytes));
  return m;
}

RoundDriver::RoundDriver(StudyConfig study, StateStore* store, DriverOptions options,
                         std::unique_ptr<Strategy> strategy)
    : study_(std::move(study)), store_(store), options_(std::move(options)),
      run_nonce_(RandomHex()), strategy_(std::move(strategy)), privacy_(study_.privacy),
      clock_(options_.clock ? options_.clock : &system_clock_),
      sites_(clock_, Seconds(study_.heartbeat_timeout_s), study_.roster, study_.revoked) {
  if (!options_.study_path.empty()) study_file_stamp_ = FileStamp(options_.study_path);
}

RoundDriver::~RoundDriver() = default;

StatusOr<std::unique_ptr<RoundDriver>> RoundDriver::Create(StudyConfig study, StateStore* store,
                                                           DriverOptions options) {
  ATTUNE_ASSIGN_OR_RETURN(std::unique_ptr<Strategy> strategy, MakeStrategy(study.strategy));
  std::unique_ptr<RoundDriver> d(
      new RoundDriver(std::move(study), store, std::move(options), std::move(strategy)));
  if (!d->options_.terms_path.empty()) {
    // Sites refuse what the study's owner did not sign: a coordinator whose
    // study file says otherwise would only see its tasks refused.
    const std::string& path = d->options_.terms_path;
    ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    StatusOr<StudyTerms> terms = VerifyTerms(text, d->options_.ca_pem);
    if (!terms.ok()) {
      return Status(terms.status().code(), absl::StrCat(path, ": ", terms.status().message()));
    }
    const std::string differs = TermsDifference(TermsOf(d->study_, terms->version), *terms);
    if (!differs.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the study file and its signed terms (", path, ", version ", terms->version,
          ") differ in ", differs, ": sites refuse what the study's owner did not sign. "
          "The owner signs this study file with `attune provision sign --dir D --study FILE` "
          "and the new D/coordinator/study.terms goes beside the coordinator's bundle"));
    }
    d->terms_version_ = terms->version;
    d->signed_terms_ = std::make_shared<const std::string>(std::move(text));
    d->terms_file_stamp_ = FileStamp(path);
  }
  ATTUNE_ASSIGN_OR_RETURN(d->history_, RoundHistory::Load(*store));
  const int64_t last = store->LastCommittedRound();
  if (last >= 0) {
    ATTUNE_ASSIGN_OR_RETURN(std::string blob, store->LoadModel(last));
    d->global_model_ = ServedModel::Of(std::move(blob));
    ATTUNE_ASSIGN_OR_RETURN(d->global_, ViewModel(*d->global_model_.bytes));
    ATTUNE_ASSIGN_OR_RETURN(d->server_state_, store->LoadServerState(last));
    d->global_version_ = last;
    // The last round's record: the privacy ledger and the audit releases
    // committed with it (RoundHistory::Load read it: a JSON object).
    const json rec = json::parse(d->history_.rounds().back().json);
    if (UsesLedger(d->study_) && rec.contains("privacy") && rec["privacy"].contains("ledger")) {
      ATTUNE_ASSIGN_OR_RETURN(privacy::Accountant a,
                              privacy::Accountant::FromJson(rec["privacy"]["ledger"].dump()));
      d->ledger_.emplace(std::move(a));
    }
    d->audit_releases_ = rec.value("audit_releases", 0);
    // Audit-only rounds after that commit are counted in the audit log.
    for (uint64_t from = 0;;) {
      ATTUNE_ASSIGN_OR_RETURN(std::vector<LogEntry> entries, store->ReadLog(from, 4096));
      if (entries.empty()) break;
      for (const LogEntry& e : entries) {
        if (e.kind != "audit_released" && e.kind != "privacy_spent" && e.kind != "audit_cells") {
          continue;
        }
        json detail = json::parse(e.detail_json, nullptr, false);
        if (detail.is_discarded()) continue;
        if (e.kind == "audit_cells") {
          // What the study published, for the disclosure check of the next.
          try {
            std::set<CellKey>& known = d->published_cells_[Population(
                detail.at("split").get<std::string>(),
                detail.at("sites").get<std::vector<std::string>>())];
            for (const json& c : detail.at("published")) {
              known.insert({c.at(0).get<std::string>(), c.at(1).get<std::string>()});
            }
          } catch (const json::exception& ex) {
            return absl::DataLossError(
                absl::StrCat("audit log entry ", e.seq, " (audit_cells): ", ex.what()));
          }
        } else if (e.kind == "audit_released") {
          d->audit_releases_ = std::max(d->audit_releases_, detail.value("audit_releases", 0));
        } else if (UsesLedger(d->study_) && detail.contains("ledger")) {
          // Spent after the last commit (a failed or unfinished round).
          ATTUNE_ASSIGN_OR_RETURN(privacy::Accountant a,
                                  privacy::Accountant::FromJson(detail["ledger"].dump()));
          if (!d->ledger_ || a.releases() > d->ledger_->releases()) d->ledger_.emplace(std::move(a));
        }
      }
      from = entries.back().seq + 1;
    }
    spdlog::info("resuming study '{}' after committed round {}", d->study_.study_id, last);
  }
  if (UsesLedger(d->study_) && !d->ledger_) {
    ATTUNE_ASSIGN_OR_RETURN(privacy::Accountant a,
                            privacy::Accountant::Make(d->study_.privacy.epsilon,
                                                      d->study_.privacy.delta));
    d->ledger_.emplace(std::move(a));
  }
  if (d->ledger_) {
    const double planned = d->ledger_->EpsilonAfter(
        1.0, RoundSigma(d->study_, /*train=*/d->study_.privacy.enabled()),
        static_cast<int>(d->study_.rounds - std::max<int64_t>(last, 0)));
    spdlog::info("privacy: {} DP, epsilon {:.4g} spent of {:.4g} (delta {:.3g}); all {} rounds "
                 "would take it to {:.4g}",
                 d->study_.privacy.mode, d->ledger_->epsilon(), d->study_.privacy.epsilon,
                 d->study_.privacy.delta, d->study_.rounds, planned);
  }
  d->ClearSpool();
  ATTUNE_RETURN_IF_ERROR(store->AppendLog(
      "coordinator_started", "",
      json{{"run", d->run_nonce_}, {"last_committed_round", last},
           {"strategy", d->strategy_->name()}}
          .dump()));
  return d;
}

void RoundDriver::ClearSpool() {
  std::error_code ec;
  fs::remove_all(options_.spool_dir, ec);
  fs::create_directories(options_.spool_dir, ec);
}

// ---------------------------------------------------------------- service side

void RoundDriver::LogLocked(const std::string& kind, const std::string& site,
                            const std::string& detail) {
  if (Status s = store_->AppendLog(kind, site, detail); !s.ok()) {
    spdlog::error("audit log: {}", std::string(s.message()));
  }
}

StatusOr<std::string> RoundDriver::PublishAuditLocked(const EvalSums& sums,
                                                      const std::vector<std::string>& sites) {
  const std::string population = Population(sums.split, sites);
  AuditOptions options = study_.audit.report;
  options.published_before = published_cells_[population];
  options.noise_multiplier = study_.audit.noise_multiplier;
  options.value_clip = study_.audit.noised() ? study_.audit.value_clip : 0;
  ATTUNE_ASSIGN_OR_RETURN(std::string text, AuditJson(sums, options));
  const json doc = json::parse(text);
  json cells = json::array();
  for (const json& column : doc["columns"]) {
    for (const json& cell : column["cells"]) {
      if (cell.value("suppressed", false)) continue;
      const CellKey key{column["column"].get<std::string>(), cell["value"].get<std::string>()};
      if (published_cells_[population].insert(key).second) cells.push_back({key.first, key.second});
    }
  }
  if (!cells.empty()) {
    LogLocked("audit_cells", "",
              json{{"split", sums.split}, {"sites", sites}, {"published", cells}}.dump());
  }
  return text;
}

Status RoundDriver::SpendLocked(const std::string& what, double sigma) {
  ATTUNE_RETURN_IF_ERROR(ledger_->Spend(1.0, sigma, what));
  return store_->AppendLog(
      "privacy_spent", "",
      json{{"what", what}, {"epsilon", ledger_->epsilon()}, {"ledger", json::parse(ledger_->ToJson())}}
          .dump());
}

Status RoundDriver::ChargeEvaluationLocked(const Phase& eval, Status phase) {
  // A noised evaluation is charged once anything of it reached the
  // coordinator (a report in the clear, or an unmasked sum), even when the
  // phase then failed.
  if (!study_.audit.noised() || (!phase.ok() && eval.eval.empty() && eval.done.empty())) {
    return phase;
  }
  Status spent = SpendLocked(
      eval.audit_id > 0 ? absl::StrCat("audit ", eval.audit_id, " of model ", eval.audit_model)
                        : absl::StrCat("round ", eval.round, " evaluation"),
      study_.audit.noise_multiplier);
  return phase.ok() ? spent : phase;
}


void RoundDriver::ReloadTermsLocked() {
  if (options_.terms_path.empty()) return;
  const std::string stamp = FileStamp(options_.terms_path);
  if (stamp == terms_file_stamp_) return;
  terms_file_stamp_ = stamp;
  StatusOr<std::string> text = ReadFile(options_.terms_path);
  StatusOr<StudyTerms> terms =
      text.ok() ? VerifyTerms(*text, options_.ca_pem) : StatusOr<StudyTerms>(text.status());
  if (!terms.ok()) {
    spdlog::warn("the terms file changed but cannot be used (still forwarding version {}): {}",
                 terms_version_, std::string(terms.status().message()));
    return;
  }
  if (terms->study_id != study_.study_id || terms->version <= terms_version_) {
    spdlog::warn("the terms file now holds study '{}' version {}; still forwarding version {}",
                 terms->study_id, terms->version, terms_version_);
    return;
  }
  spdlog::info("forwarding the study terms of version {} (was {})", terms->version,
               terms_version_);
  LogLocked("terms_updated", "", absl::StrCat("{\"version\": ", terms->version, "}"));
  terms_version_ = terms->version;
  signed_terms_ = std::make_shared<const std::string>(*std::move(text));
}

std::shared_ptr<const std::string> RoundDriver::SignedTerms() {
  std::lock_guard<std::mutex> lock(mu_);
  ReloadTermsLocked();
  return signed_terms_;
}

void RoundDriver::ReloadRosterLocked() {
  ReloadTermsLocked();
  if (options_.study_path.empty()) return;
  const std::string stamp = FileStamp(options_.study_path);
  if (stamp == study_file_stamp_) return;
  study_file_stamp_ = stamp;
  auto next = LoadStudyConfig(options_.study_path);
  if (!next.ok()) {
    spdlog::warn("study file changed but cannot be used (roster unchanged): {}",
                 std::string(next.status().message()));
    return;
  }
  if (next->study_id != study_.study_id) {
    spdlog::warn("study file now names study '{}', not '{}'; roster unchanged", next->study_id,
                 study_.study_id);
    return;
  }
  const SiteRegistry::RosterChange change = sites_.Apply(*next);
  for (const auto& site : change.added) {
    spdlog::info("site {} added to the roster", site);
    LogLocked("site_added", site, "{}");
  }
  for (const auto& site : change.revoked) {
    // Its task stream ended; it is no longer waited for in the open phase.
    if (phase_ && phase_->task_ids.count(site)) phase_->dropped.insert(site);
    spdlog::warn("site {} revoked: refused from now on", site);
    LogLocked("site_revoked", site, "{}");
  }
  for (const auto& site : change.reinstated) {
    spdlog::info("site {} reinstated", site);
    LogLocked("site_reinstated", site, "{}");
  }
  cv_.notify_all();
}

StatusOr<std::string> RoundDriver::Authorize(const std::string& cn, const std::string& study_id,
                                             bool operator_ok) {
  std::lock_guard<std::mutex> lock(mu_);
  ReloadRosterLocked();
  if (cn == kOperatorName) {
    if (!operator_ok) {
      return absl::PermissionDeniedError(absl::StrCat(
          "the ", kOperatorName, " certificate may only read the study's status and run audits"));
    }
  } else {
    ATTUNE_RETURN_IF_ERROR(sites_.Authorize(cn, study_.study_id));
  }
  if (study_id != study_.study_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "this coordinator runs study '", study_.study_id, "', not '", study_id, "'"));
  }
  sites_.Touch(cn);
  return cn;
}

Status RoundDriver::Join(const std::string& site, int64_t train_samples, int ranks,
                         std::vector<std::string> features) {
  if (train_samples < 0 || train_samples > kMaxTrainSamples) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train samples must be in [0, ", kMaxTrainSamples, "] (got ", train_samples, ")"));
  }
  if (!features.empty()) {
    // The model fixes the features; the site only names its columns.
    ATTUNE_RETURN_IF_ERROR(CheckAuditFeatureNames(study_.model, features));
  }
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n_features = features.size();
  sites_.Join(site, train_samples, std::move(features));
  if (train_samples == 0 && n_features == 0) {
    spdlog::info("site {} joined; it is loading its data", site);
  } else {
    spdlog::info("site {} joined ({} training samples, {} rank{}, {} audit features)", site,
                 train_samples, ranks, ranks == 1 ? "" : "s", n_features);
  }
  LogLocked("site_joined", site,
            json{{"train_samples", train_samples},
                 {"ranks", ranks},
                 {"audit_features", n_features}}
                .dump());
  return absl::OkStatus();
}

StatusOr<uint64_t> RoundDriver::Subscribe(const std::string& site) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!sites_.Joined(site)) return absl::FailedPreconditionError("call Join before Subscribe");
  // A site that (re)subscribes while its task is open starts afresh at the
  // next phase: a restarted worker has lost its work, and a reconnected one
  // may still submit under its old task id while the phase is open.
  if (phase_ && phase_->task_ids.count(site) && !phase_->done.count(site)) {
    phase_->dropped.insert(site);
  }
  const uint64_t generation =
      sites_.Subscribe(site, finished_ ? std::optional<Task>(FinishTask(site)) : std::nullopt);
  cv_.notify_all();
  return generation;
}

StatusOr<std::optional<Task>> RoundDriver::NextTask(const std::string& site, uint64_t gen,
                                                    std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  WaitLocked(lock, clock_->Now() + wait, [&] { return shutdown_ || sites_.Ready(site, gen); });
  ATTUNE_ASSIGN_OR_RETURN(std::optional<Task> task, sites_.Take(site, gen));
  if (task) return task;
  if (shutdown_) return absl::CancelledError("coordinator is shutting down");
  return std::optional<Task>();
}

void RoundDriver::Unsubscribe(const std::string& site, uint64_t gen) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sites_.Unsubscribe(site, gen)) {
    spdlog::info("site {} disconnected", site);
    cv_.notify_all();
  }
}

int64_t RoundDriver::Heartbeat(const std::string& site, const std::string& progress) {
  std::lock_guard<std::mutex> lock(mu_);
  sites_.Heartbeat(site, progress);
  return phase_ ? phase_->round : -1;
}

int64_t RoundDriver::heartbeat_interval_ms() const {
  return std::max<int64_t>(100, static_cast<int64_t>(study_.heartbeat_timeout_s * 1000 / 4));
}

TrainSettings RoundDriver::TrainingFor(const std::string& site) const {
  return strategy_->TrainingFor(study_.train, site);
}

StatusOr<ServedModel> RoundDriver::Model(int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  if (version == candidate_version_ && candidate_model_) return candidate_model_;
  if (version == audit_version_ && audit_served_) return audit_served_;
  if (version == global_version_ && global_model_) return global_model_;
  return absl::NotFoundError(absl::StrCat("model version ", version,
                                          " is not being served (current: ", global_version_, ")"));
}

Status RoundDriver::RoundClosedLocked(int64_t round) const {
  const int64_t open = phase_ ? phase_->round : -1;
  if (round < open || (!phase_ && round <= global_version_)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", round, " is closed (the study is at round ",
        std::max(open, global_version_ + 1), "): a late update is never used"));
  }
  return absl::OkStatus();
}

Status RoundDriver::CheckOpenTaskLocked(const std::string& site, const std::string& task_id,
                                        int64_t round) {
  ATTUNE_RETURN_IF_ERROR(RoundClosedLocked(round));
  if (auto closed = closed_tasks_.find(task_id); closed != closed_tasks_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task '", task_id, "' of round ", closed->second,
        " closed before this site reported (a straggler): a late update is never used"));
  }
  const int64_t open = phase_ ? phase_->round : -1;
  if (!phase_) {
    return absl::FailedPreconditionError(
        absl::StrCat("no round is open (submission for round ", round, ")"));
  }
  if (round != open) {
    return absl::FailedPreconditionError(absl::StrCat(
        "submission for round ", round, " but round ", open, " is open"));
  }
  auto it = phase_->task_ids.find(site);
  if (it == phase_->task_ids.end() || it->second != task_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task '", task_id, "' is not open for site ", site,
        " (a task of an earlier coordinator run, or another phase)"));
  }
  if (phase_->done.count(site)) {
    return absl::AlreadyExistsError(
        absl::StrCat("site ", site, " already submitted for round ", round));
  }
  return absl::OkStatus();
}

StatusOr<std::unique_ptr<UpdateIntake>> RoundDriver::BeginUpdate(const std::string& site,
                                                                 const UpdateHeader& h) {
  std::lock_guard<std::mutex> lock(mu_);
  // Idempotent per study, round and site: the update already accepted for
  // this task, sent again, is acknowledged and not folded in twice.
  auto acc = accepted_tasks_.find(h.task_id);
  if (acc != accepted_tasks_.end() && acc->second.site == site) {
    if (acc->second.sha256 == h.total_sha256) return std::unique_ptr<UpdateIntake>();
    ATTUNE_RETURN_IF_ERROR(RoundClosedLocked(h.round));
    return absl::AlreadyExistsError(absl::StrCat(
        "site ", site, " already submitted a different update for round ", h.round,
        "; one update per site and round"));
  }
  Status open = CheckOpenTaskLocked(site, h.task_id, h.round);
  ATTUNE_RETURN_IF_ERROR(open);
  // An update's weight is at most what the site declared at Join (its
  // training patients), so that no site takes the others' weight.
  if (const int64_t declared = sites_.TrainSamples(site); h.num_examples > declared) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_examples ", h.num_examples, " is more than the ", declared,
        " training patients site ", site, " declared when it joined"));
  }
  if (phase_->kind == Task::Kind::kInit) {
    return UpdateIntake::ForInitialModel(h, uint64_t{4} << 30);
  }
  if (phase_->secure) {  // a secure TRAIN's or EVALUATE's masked input
    ATTUNE_RETURN_IF_ERROR(SecureStepLocked(site, h.task_id, h.round, 3).status());
    return UpdateIntake::ForMasked(h, phase_->secure->length);
  }
  if (phase_->kind != Task::Kind::kTrain) {
    return absl::FailedPreconditionError("the open phase expects an evaluation, not an update");
  }
  if (h.masked) {
    return absl::InvalidArgumentError(
        "a masked input, but this study's rounds do not use secure aggregation");
  }
  const std::string path =
      (fs::path(options_.spool_dir) / absl::StrCat("r", h.round, "-", site, "-", RandomHex()))
          .string();
  return UpdateIntake::ForDelta(h, global_.schema, study_.max_update_norm, path,
                                global_model_.bytes->size() + (1 << 20));
}

Status RoundDriver::FinishUpdate(const std::string& site, std::unique_ptr<UpdateIntake> intake) {
  ATTUNE_RETURN_IF_ERROR(intake->Finish());
  const UpdateHeader& h = intake->header();
  std::lock_guard<std::mutex> lock(mu_);
  Status open = CheckOpenTaskLocked(site, h.task_id, h.round);
  if (!open.ok()) {
    std::error_code ec;
    if (!intake->spool_path().empty()) fs::remove(intake->spool_path(), ec);
    auto acc = accepted_tasks_.find(h.task_id);
    if (acc != accepted_tasks_.end() && acc->second.sha256 == h.total_sha256) {
      return absl::OkStatus();  // a concurrent resubmission of the same update
    }
    return open;
  }
  Phase& p = *phase_;
  if (h.masked) {
    ATTUNE_ASSIGN_OR_RETURN(Phase * sp, SecureStepLocked(site, h.task_id, h.round, 3));
    ATTUNE_RETURN_IF_ERROR(
        sp->secure->server->AddMaskedInput(sp->secure->index.at(site), intake->masked_words()));
    sp->secure->masked_sha256[site] = h.total_sha256;
    accepted_tasks_[h.task_id] = {site, h.round, h.total_sha256};
    sp->done.insert(site);
    sites_.Touch(site);
    spdlog::info("round {}: masked input from {} accepted", p.round, site);
    cv_.notify_all();
    return absl::OkStatus();
  }
  Accepted a;
  a.sha256 = h.total_sha256;
  a.num_examples = h.num_examples;
  if (p.kind == Task::Kind::kInit) {
    p.init_model = {intake->initial_model(), h.total_sha256};
  } else {
    a.path = intake->spool_path();
    auto loss = h.metrics.find("train_loss");
    a.train_loss = loss != h.metrics.end() ? loss->second : std::nan("");
  }
  accepted_tasks_[h.task_id] = {site, h.round, a.sha256};
  p.accepted[site] = std::move(a);
  p.done.insert(site);
  sites_.Touch(site);
  spdlog::info("round {}: {} from {} accepted ({} examples, update norm {:.4g})", p.round,
               KindName(p.kind), site, h.num_examples, intake->norm());
  cv_.notify_all();
  return absl::OkStatus();
}

Status RoundDriver::SubmitEval(const std::string& site, const std::string& task_id,
                               int64_t round, EvalSums sums) {
  std::lock_guard<std::mutex> lock(mu_);
  ATTUNE_RETURN_IF_ERROR(CheckOpenTaskLocked(site, task_id, round));
  Phase& p = *phase_;
  if (p.kind != Task::Kind::kEvaluate) {
    return absl::FailedPreconditionError("the open phase expects an update, not an evaluation");
  }
  if (p.secure) {
    return absl::FailedPreconditionError(
        "this study's evaluations are securely aggregated: sums in the clear are refused");
  }
  if (std::find(p.splits.begin(), p.splits.end(), sums.split) == p.splits.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("split '", SafeText(sums.split, 32), "' was not asked for"));
  }
  if (p.got[site].count(sums.split)) {
    return absl::AlreadyExistsError(absl::StrCat("split '", sums.split, "' already reported"));
  }
  // The report is held to the study's shape and the site's own Join, never
  // to another site's report.
  EvalReportSpec spec;
  spec.bins = study_.audit.histogram_bins;
  spec.modalities = ModalityNames();
  if (p.audit) {
    spec.features = sites_.Features(site);
    spec.columns = study_.audit.columns;
    spec.values = study_.audit.values;
  }
  ATTUNE_RETURN_IF_ERROR(CheckEvalReport(sums, spec));
  if (sums.features.size() != p.features.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "this site declared ", sums.features.size(), " audit features at Join; the study's model has ",
        p.features.size()));
  }
  sums.features = p.features;  // the layout's names (AgreedAuditFeatureNames)
  ATTUNE_RETURN_IF_ERROR(p.eval.at(sums.split).Add(sums));
  p.got[site].insert(sums.split);
  if (p.got[site].size() == p.splits.size()) p.done.insert(site);
  cv_.notify_all();
  return absl::OkStatus();
}

StatusView RoundDriver::GetStatus() {
  StatusView v;
  {
    std::lock_guard<std::mutex> lock(mu_);
    v.committed_round = global_version_;
    v.phase = phase_name_;
    v.sites = sites_.Views();
    const double none = std::nan("");
    for (const RoundRecord& r : history_.rounds()) {
      RoundView rv;
      rv.round = r.round;
      rv.sites = r.sites_reported;
      rv.train_loss = r.train_loss.value_or(none);
      rv.val_loss = r.val_loss.value_or(none);
      rv.val_auc = r.val_auc.value_or(none);
      rv.seconds = r.seconds.value_or(none);
      v.rounds.push_back(rv);
    }
    v.privacy = PrivacyLocked();
  }
  v.log_entries = store_->LogEntries();
  v.secure_aggregation = study_.secure_aggregation;
  return v;
}

PrivacyView RoundDriver::PrivacyLocked() const {
  PrivacyView p;
  if (!ledger_) return p;
  p.mode = study_.privacy.mode;
  p.epsilon_spent = ledger_->epsilon();
  p.epsilon_budget = ledger_->budget();
  p.delta = ledger_->delta();
  p.noise_multiplier = study_.privacy.noise_multiplier;
  p.releases = ledger_->releases();
  p.audit_releases = audit_releases_;
  return p;
}

void RoundDriver::RecordRefusal(const std::string& caller, const char* rpc, const Status& s) {
  // The caller's name and the message may quote what it sent: bounded, and
  // valid UTF-8 for the JSON entry.
  const std::string who = SafeText(caller, 128);
  int64_t left_out = 0;
  {
    std::lock_guard<std::mutex> lock(refusals_mu_);
    if (!refusals_.Admit(who, clock_->Now(), &left_out)) return;
  }
  const std::string message = SafeText(std::string(s.message()), 1024);
  if (left_out > 0) {
    spdlog::warn("refused {} from {}: {} ({} more refusals of this caller not logged)", rpc, who,
                 message, left_out);
  } else {
    spdlog::warn("refused {} from {}: {}", rpc, who, message);
  }
  json entry = {{"rpc", rpc}, {"code", absl::StatusCodeToString(s.code())}, {"message", message}};
  if (left_out > 0) entry["not_logged_before"] = left_out;
  Status logged = store_->AppendLog("refused", who, entry.dump());
  if (!logged.ok()) spdlog::error("audit log: {}", std::string(logged.message()));
}

void RoundDriver::FlushRefusals() {
  std::map<std::string, int64_t> left_out;
  {
    std::lock_guard<std::mutex> lock(refusals_mu_);
    left_out = refusals_.TakeLeftOut();
  }
  if (left_out.empty()) return;
  Status logged = store_->AppendLog("refusals_not_logged", "", json(left_out).dump());
  if (!logged.ok()) spdlog::error("audit log: {}", std::string(logged.message()));
}

void RoundDriver::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutdown_ = true;
  cv_.notify_all();
}

// ------------------------------------------------------------------ the study

std::string RoundDriver::NewTaskId(Task::Kind kind, int64_t round, const std::string& site) {
  return absl::StrCat(run_nonce_, "/r", round, "/a", attempt_, "/", KindName(kind), "/", site);
}

Task RoundDriver::FinishTask(const std::string& site) {
  Task t;
  t.kind = Task::Kind::kFinish;
  t.round = study_.rounds;
  t.task_id = NewTaskId(t.kind, t.round, site);
  return t;
}

std::vector<std::string> RoundDriver::SelectForTraining(int64_t round,
                                                        std::vector<std::string> live) const {
  if (study_.sites_per_round >= 1.0) return live;
  const size_t n = live.size();
  size_t k = static_cast<size_t>(std::ceil(study_.sites_per_round * static_cast<double>(n)));
  k = std::min(n, std::max<size_t>(k, static_cast<size_t>(study_.min_sites)));
  uint64_t state = study_.train.seed ^ (static_cast<uint64_t>(round) * 0xd1b54a32d192ed03ULL);
  for (size_t i = n; i > 1; --i) {  // Fisher-Yates over the name-sorted live sites
    std::swap(live[i - 1], live[SplitMix64(&state) % i]);
  }
  live.resize(k);
  std::sort(live.begin(), live.end());
  return live;
}

Status RoundDriver::Run() {
  ATTUNE_RETURN_IF_ERROR(WaitForSites());
  for (int64_t r = store_->LastCommittedRound() + 1; r <= study_.rounds; ++r) {
    for (int attempt = 1;; ++attempt) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        RunPendingAudits(lock);  // between rounds: the operator's audit-only rounds
        attempt_ = attempt;
      }
      Status s = r == 0 ? RunInitRound() : RunTrainRound(r);
      if (s.ok()) break;
      if (absl::IsResourceExhausted(s)) {  // the privacy budget: end the study here
        spdlog::warn("{}", std::string(s.message()));
        std::lock_guard<std::mutex> lock(mu_);
        LogLocked("privacy_budget_reached", "", json{{"round", r}}.dump());
        stop_reason_ = std::string(s.message());
        r = study_.rounds;  // leaves both loops
        break;
      }
      const bool retry = absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s);
      std::lock_guard<std::mutex> lock(mu_);
      LogLocked("round_failed", "",
                json{{"round", r}, {"attempt", attempt}, {"reason", std::string(s.message())}}
                    .dump());
      if (!retry || attempt >= kMaxRoundAttempts || shutdown_) return s;
      spdlog::warn("round {} failed (attempt {} of {}): {}; trying again", r, attempt,
                   kMaxRoundAttempts, std::string(s.message()));
    }
  }
  ATTUNE_RETURN_IF_ERROR(WriteOutputs(/*final_model=*/true));
  std::unique_lock<std::mutex> lock(mu_);
  spdlog::info("study '{}' finished after round {}", study_.study_id, study_.rounds);
  if (options_.serve_audits) {
    // The sites stay connected and idle; each `attune audit` is an
    // audit-only round, until Stop().
    spdlog::info("serving audit-only rounds (attune audit) until stopped");
    while (!stop_serving_ && !shutdown_) {
      phase_name_ = "finished; serving audits";
      RunPendingAudits(lock);
      cv_.wait(lock, [&] { return stop_serving_ || shutdown_ || !audit_jobs_.empty(); });
    }
    if (shutdown_) return absl::CancelledError("shutting down");
  }
  phase_name_ = "finished";
  finished_ = true;
  for (const auto& name : sites_.Names()) sites_.Send(name, FinishTask(name));
  cv_.notify_all();
  return absl::OkStatus();
}

void RoundDriver::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.serve_audits && global_version_ == study_.rounds && !shutdown_) {
    stop_serving_ = true;
    cv_.notify_all();
    return;
  }
  shutdown_ = true;
  cv_.notify_all();
}

StatusOr<std::string> RoundDriver::Audit(int64_t version, std::string split,
                                         Clock::time_point deadline) {
  if (split.empty()) split = "val";
  if (split != "val" && split != "test") {
    return absl::InvalidArgumentError(
        absl::StrCat("audit: split must be \"val\" or \"test\" (got \"", split, "\")"));
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (global_version_ < 0) {
    return absl::FailedPreconditionError("audit: no model is committed yet");
  }
  if (version < 0) version = global_version_;
  if (version > global_version_) {
    return absl::NotFoundError(absl::StrCat("audit: model version ", version,
                                            " is not committed (the latest is ",
                                            global_version_, ")"));
  }
  if (finished_ || stop_serving_) {
    return absl::FailedPreconditionError(
        "audit: the study has finished and its sites were released; start the coordinator "
        "with --serve-audits to keep them for audit-only rounds");
  }
  auto job = std::make_shared<AuditJob>();
  job->version = version;
  job->split = split;
  audit_jobs_.push_back(job);
  spdlog::info("audit of model {} on the {} split requested ({} queued)", version, split,
               audit_jobs_.size());
  cv_.notify_all();
  cv_.wait_until(lock, deadline, [&] { return job->done || shutdown_; });
  if (job->done) return job->result;
  std::erase(audit_jobs_, job);  // not run yet: never run
  if (shutdown_) return absl::CancelledError("audit: the coordinator is shutting down");
  return absl::DeadlineExceededError(
      "audit: it did not finish before the deadline (audits run between training rounds)");
}

void RoundDriver::RunPendingAudits(std::unique_lock<std::mutex>& lock) {
  while (!audit_jobs_.empty() && !shutdown_) {
    std::shared_ptr<AuditJob> job = audit_jobs_.front();
    audit_jobs_.pop_front();
    const std::string before = phase_name_;
    job->result = RunAuditRound(lock, *job);
    phase_name_ = before;
    if (!job->result.ok()) {
      spdlog::warn("audit of model {} failed: {}", job->version,
                   std::string(job->result.status().message()));
    }
    job->done = true;
    cv_.notify_all();
  }
}

StatusOr<std::string> RoundDriver::RunAuditRound(std::unique_lock<std::mutex>& lock,
                                                 const AuditJob& job) {
  ServedModel blob = global_model_;
  if (job.version != global_version_) {
    lock.unlock();
    StatusOr<std::string> m = store_->LoadModel(job.version);
    if (m.ok()) blob = ServedModel::Of(*std::move(m));
    lock.lock();
    ATTUNE_RETURN_IF_ERROR(m.status());
  }
  Phase eval;
  eval.kind = Task::Kind::kEvaluate;
  eval.round = global_version_ + 1;  // between rounds: the next one is not open yet
  eval.splits = {job.split};
  eval.audit = true;
  eval.audit_id = ++audits_run_;
  eval.audit_model = job.version;
  phase_name_ = absl::StrCat("audit of model ", job.version);
  ATTUNE_RETURN_IF_ERROR(WaitForQuorum(lock, eval.round));
  if (ledger_ && study_.audit.noised()) {
    const double next = ledger_->EpsilonAfter(1.0, study_.audit.noise_multiplier);
    if (next > ledger_->budget()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "privacy budget: this audit would take epsilon from %.4g to %.4g, past the study's "
          "budget of %.4g (delta %.3g)",
          ledger_->epsilon(), next, ledger_->budget(), ledger_->delta()));
    }
  }
  audit_version_ = job.version;
  audit_served_ = std::move(blob);
  Status s = study_.secure_aggregation
                 ? RunSecureEvalPhase(lock, &eval, sites_.Live())
                 : RunPhase(lock, &eval, sites_.Live(), job.version, study_.min_sites);
  audit_version_ = -1;
  audit_served_ = {};
  ATTUNE_RETURN_IF_ERROR(ChargeEvaluationLocked(eval, std::move(s)));
  auto sums = eval.eval.find(job.split);
  if (sums == eval.eval.end()) return absl::InternalError("audit: no sums were reported");
  const std::vector<std::string> sites(eval.done.begin(), eval.done.end());
  ATTUNE_ASSIGN_OR_RETURN(std::string text, PublishAuditLocked(sums->second, sites));
  json doc = json::parse(text);
  doc["study_id"] = study_.study_id;
  doc["model_version"] = job.version;
  doc["sites"] = sites;
  ++audit_releases_;  // committed with the next round's record, and logged now
  LogLocked("audit_released", "",
            json{{"model_version", job.version},
                 {"split", job.split},
                 {"sites", doc["sites"]},
                 {"audit_releases", audit_releases_}}
                .dump());
  spdlog::info("audit of model {} on the {} split: {} patients from {} sites, {} flag{}",
               job.version, job.split, sums->second.n, eval.done.size(), doc["flags"].size(),
               doc["flags"].size() == 1 ? "" : "s");
  return doc.dump(2) + "\n";
}

bool RoundDriver::WaitLocked(std::unique_lock<std::mutex>& lock, Clock::time_point deadline,
                             const std::function<bool()>& ready) {
  while (!ready()) {
    if (clock_->Now() >= deadline) return false;
    clock_->WaitUntil(cv_, lock, deadline);
  }
  return true;
}

Status RoundDriver::WaitForSites() {
  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = clock_->Now() + Seconds(study_.join_timeout_s);
  auto next_note = clock_->Now() + std::chrono::seconds(10);
  while (true) {
    if (shutdown_) return absl::CancelledError("shutting down");
    const size_t want = sites_.Admitted();
    const size_t have = sites_.Live().size();
    if (have >= want) return absl::OkStatus();
    const auto now = clock_->Now();
    if (now >= deadline) {
      if (have >= static_cast<size_t>(study_.min_sites)) {
        spdlog::warn("join timeout: continuing with {} of {} sites", have, want);
        return absl::OkStatus();
      }
      return absl::DeadlineExceededError(absl::StrCat(
          "only ", have, " of the roster's ", want, " sites joined within join_timeout_s = ",
          study_.join_timeout_s, " s (min_sites = ", study_.min_sites,
          "): check that the workers are running and can reach this coordinator"));
    }
    if (now >= next_note) {
      spdlog::info("waiting for sites: {} of {} subscribed", have, want);
      next_note = now + std::chrono::seconds(10);
    }
    clock_->WaitUntil(cv_, lock, std::min(deadline, next_note));
  }
}

Status RoundDriver::WaitForQuorum(std::unique_lock<std::mutex>& lock, int64_t round) {
  auto enough = [&] {
    return shutdown_ || static_cast<int>(sites_.Live().size()) >= study_.min_sites;
  };
  if (!enough()) {
    // Sites may be reconnecting (after a restart of theirs or ours).
    spdlog::info("round {}: waiting for {} live sites (have {})", round, study_.min_sites,
                 sites_.Live().size());
    WaitLocked(lock, clock_->Now() + Seconds(study_.round_deadline_s), enough);
  }
  if (shutdown_) return absl::CancelledError("shutting down");
  const size_t live = sites_.Live().size();
  if (static_cast<int>(live) < study_.min_sites) {
    return absl::UnavailableError(absl::StrCat("round ", round, ": only ", live,
                                               " sites live, min_sites = ", study_.min_sites));
  }
  return absl::OkStatus();
}

Status RoundDriver::RunPhase(std::unique_lock<std::mutex>& lock, Phase* p,
                             const std::vector<std::string>& selected, int64_t model_version,
                             int quorum,
                             const std::map<std::string, std::shared_ptr<const SecureTaskParts>>& secure) {
  OpenPhase(p, selected, model_version, secure);
  Status s = AwaitReports(lock, p, selected, quorum,
                          clock_->Now() + Seconds(study_.round_deadline_s));
  ClosePhase(p);
  return s;
}

void RoundDriver::OpenPhase(
    Phase* p, const std::vector<std::string>& selected, int64_t model_version,
    const std::map<std::string, std::shared_ptr<const SecureTaskParts>>& secure) {
  for (const auto& site : selected) {
    Task t;
    t.kind = p->kind;
    t.round = p->round;
    t.model_version = model_version;
    t.splits = p->splits;
    t.audit = p->audit;
    t.task_id = NewTaskId(p->kind, p->round, site);
    if (p->audit_id > 0) absl::StrAppend(&t.task_id, "/audit-", p->audit_id);
    if (auto it = secure.find(site); it != secure.end()) t.secure = it->second;
    p->task_ids[site] = t.task_id;
    sites_.Send(site, t);
  }
  if (p->kind == Task::Kind::kEvaluate) {
    // Reports add into sums shaped by the study, named as the sites agree.
    if (p->audit) p->features = AgreedFeaturesLocked(selected);
    for (const auto& split : p->splits) {
      p->eval[split] = EvalSums::Make(split, study_.audit.histogram_bins, ModalityNames(),
                                      p->features);
    }
  }
  phase_ = p;
  spdlog::info("round {}: {} phase open for {} site{}", p->round, KindName(p->kind),
               selected.size(), selected.size() == 1 ? "" : "s");
  cv_.notify_all();
}

std::vector<std::string> RoundDriver::AgreedFeaturesLocked(
    const std::vector<std::string>& selected) const {
  std::vector<const std::vector<std::string>*> lists;
  for (const auto& site : selected) lists.push_back(&sites_.Features(site));
  return AgreedAuditFeatureNames(study_.model, lists);
}

void RoundDriver::ClosePhase(Phase* p) {
  phase_ = nullptr;
  for (const auto& [site, id] : p->task_ids) {
    if (!p->done.count(site)) closed_tasks_[id] = p->round;
  }
}

Status RoundDriver::AwaitReports(std::unique_lock<std::mutex>& lock, Phase* p,
                                 const std::vector<std::string>& selected, int quorum,
                                 Clock::time_point deadline) {
  while (!shutdown_) {
    const auto now = clock_->Now();
    // Who is still expected; wake when the first of them would time out. A
    // site found gone is not waited for again in this phase.
    auto wake = deadline;
    for (const auto& site : selected) {
      if (p->done.count(site) || p->dropped.count(site)) continue;
      if (sites_.Alive(site, now)) {
        wake = std::min(wake, sites_.Expiry(site));
      } else {
        p->dropped.insert(site);
        spdlog::warn("round {} ({}): site {} is gone; not waiting for it", p->round,
                     KindName(p->kind), site);
      }
    }
    size_t waiting = 0;
    for (const auto& site : selected) {
      waiting += p->done.count(site) || p->dropped.count(site) ? 0 : 1;
    }
    // Nobody left to wait for: close now (below quorum, the round is tried
    // again once enough sites are live). Under the "quorum" policy a plain
    // training phase closes as soon as min_sites have reported.
    const bool enough = p->kind == Task::Kind::kTrain && !p->secure &&
                        study_.straggler_policy == "quorum" &&
                        static_cast<int>(p->done.size()) >= quorum;
    if (waiting == 0 || enough || now >= deadline) break;
    clock_->WaitUntil(cv_, lock, wake);
  }
  if (shutdown_) return absl::CancelledError("shutting down");
  std::vector<std::string> gone;
  for (const auto& site : p->dropped) {
    if (!p->done.count(site)) gone.push_back(site);
  }
  const std::string what =
      p->secure ? absl::StrCat("secure aggregation step ", p->secure->step) : KindName(p->kind);
  if (static_cast<int>(p->done.size()) < quorum) {
    return absl::DeadlineExceededError(absl::StrCat(
        "round ", p->round, " (", what, "): only ", p->done.size(), " of ", selected.size(),
        " sites reported within round_deadline_s = ", study_.round_deadline_s,
        " s (gone: ", gone.empty() ? "none" : absl::StrJoin(gone, ", "), "); at least ", quorum,
        " are needed"));
  }
  if (p->done.size() < selected.size()) {
    spdlog::warn("round {} ({}): closing with {} of {} sites (gone: {})", p->round, what,
                 p->done.size(), selected.size(),
                 gone.empty() ? "none; deadline" : absl::StrJoin(gone, ", "));
  }
  return absl::OkStatus();
}

Status RoundDriver::RunInitRound() {
  const auto start = clock_->Now();
  std::unique_lock<std::mutex> lock(mu_);
  ATTUNE_RETURN_IF_ERROR(WaitForQuorum(lock, 0));
  const std::string first = sites_.Live().front();
  Phase init;
  init.kind = Task::Kind::kInit;
  init.round = 0;
  phase_name_ = "round 0: initial model";
  ATTUNE_RETURN_IF_ERROR(RunPhase(lock, &init, {first}, -1, 1));
  ATTUNE_ASSIGN_OR_RETURN(ModelView view, ViewModel(*init.init_model.bytes));
  spdlog::info("initial model from {}: {} tensors, {} parameters", first,
               view.schema.tensors.size(), view.values.size());
  return EvaluateAndCommit(lock, 0, init.init_model, "", init, "{}", start);
}

Status RoundDriver::RunTrainRound(int64_t round) {
  const auto start = clock_->Now();
  std::unique_lock<std::mutex> lock(mu_);
  ATTUNE_RETURN_IF_ERROR(WaitForQuorum(lock, round));
  std::erase_if(accepted_tasks_, [&](const auto& e) { return e.second.round < round - 1; });
  std::erase_if(closed_tasks_, [&](const auto& e) { return e.second < round - 1; });
  if (ledger_) {
    // The budget is checked before any site trains: a round that would
    // take ε past it (its update and its evaluation) is never run.
    const double next =
        ledger_->EpsilonAfter(1.0, RoundSigma(study_, /*train=*/study_.privacy.enabled()));
    if (next > ledger_->budget()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "privacy budget: round %d would take epsilon from %.4g to %.4g, past the study's "
          "budget of %.4g (delta %.3g); the study ends with the model of round %d",
          round, ledger_->epsilon(), next, ledger_->budget(), ledger_->delta(), round - 1));
    }
  }
  const std::vector<std::string> selected = SelectForTraining(round, sites_.Live());
  Phase train;
  train.kind = Task::Kind::kTrain;
  train.round = round;
  phase_name_ = absl::StrCat("round ", round, ": train");
  Status phase;
  std::vector<SpooledUpdate> updates;
  if (study_.secure_aggregation) {
    const std::string path =
        (fs::path(options_.spool_dir) / absl::StrCat("r", round, "-secure-", RandomHex()))
            .string();
    double loss = 0;
    phase = RunSecureTrainPhase(lock, &train, selected, path, &loss);
    if (phase.ok()) updates.push_back({"secure-sum", path, 1});
  } else {
    std::map<std::string, std::shared_ptr<const SecureTaskParts>> dp;
    if (auto terms = privacy_.TermsFor(1)) {  // each site clips and noises its own update
      auto task = std::make_shared<SecureTaskParts>();
      task->dp = *terms;
      for (const auto& site : selected) dp[site] = task;
    }
    phase = RunPhase(lock, &train, selected, global_version_, study_.min_sites, dp);
    if (privacy_.enabled() && !train.accepted.empty()) {
      // Charged once any site's noised update has arrived, even when the
      // round then fails: what the coordinator received was released.
      Status spent = SpendLocked(absl::StrCat("round ", round, " local updates"),
                                 privacy_.noise_multiplier());
      if (phase.ok()) phase = spent;
    }
    for (const auto& [site, a] : train.accepted) {
      updates.push_back({site, a.path, a.num_examples});
    }
  }
  auto remove_spool = [&] {
    std::error_code ec;
    for (const auto& u : updates) fs::remove(u.path, ec);
  };
  if (!phase.ok()) {
    remove_spool();
    return phase;
  }
  // Aggregation reads the spool and writes a new blob: no lock needed, the
  // global model does not change while Run() is here.
  phase_name_ = absl::StrCat("round ", round, ": aggregate");
  const ServedModel global_model = global_model_;
  const ModelView global = global_;
  const std::string state = server_state_;
  lock.unlock();
  auto result = AggregateRound(*strategy_, global.schema, global.values, state, updates);
  remove_spool();
  // Hashed once here; every fetch of the candidate announces this digest.
  ServedModel candidate;
  if (result.ok()) candidate = ServedModel::Of(std::move(result->model));
  lock.lock();
  ATTUNE_RETURN_IF_ERROR(result.status());
  return EvaluateAndCommit(lock, round, std::move(candidate),
                           std::move(result->server_state), train,
                           std::move(result->describe_json), start);
}

Status RoundDriver::EvaluateAndCommit(std::unique_lock<std::mutex>& lock, int64_t round,
                                      ServedModel model,
                                      std::string server_state, const Phase& train,
                                      std::string describe_json, Clock::time_point start) {
  candidate_version_ = round;
  candidate_model_ = model;
  Phase eval;
  eval.kind = Task::Kind::kEvaluate;
  eval.round = round;
  eval.splits = {"val"};
  if (round == study_.rounds) eval.splits.push_back("test");
  eval.audit = round % study_.audit.every == 0 || round == study_.rounds;
  phase_name_ = absl::StrCat("round ", round, ": evaluate");
  Status s = study_.secure_aggregation
                 ? RunSecureEvalPhase(lock, &eval, sites_.Live())
                 : RunPhase(lock, &eval, sites_.Live(), round, study_.min_sites);
  s = ChargeEvaluationLocked(eval, std::move(s));
  if (!s.ok()) {
    candidate_version_ = -1;
    candidate_model_ = {};
    return s;
  }
  lock.unlock();
  const double secs = std::chrono::duration<double>(clock_->Now() - start).count();
  s = CommitRound(round, std::move(model), std::move(server_state), train, eval, describe_json,
                  secs);
  lock.lock();
  return s;
}

Status RoundDriver::CommitRound(int64_t round, ServedModel model,
                                std::string server_state, const Phase& train, const Phase& eval,
                                const std::string& describe_json, double seconds) {
  json record;
  record["round"] = round;
  record["seconds"] = seconds;
  record["strategy"] = strategy_->name();
  record["sites_selected"] = train.task_ids.size();
  record["sites_reported"] = train.done.size();
  record["sites"] = std::vector<std::string>(train.done.begin(), train.done.end());
  json updates = json::object();
  int64_t examples = 0;
  double loss_sum = 0;
  bool have_loss = train.kind == Task::Kind::kTrain;
  for (const auto& [site, a] : train.accepted) {
    updates[site] = {{"num_examples", a.num_examples}, {"sha256", ToHex(a.sha256)}};
    examples += a.num_examples;
    loss_sum += a.train_loss * static_cast<double>(a.num_examples);
    have_loss = have_loss && std::isfinite(a.train_loss);
  }
  record["updates"] = updates;
  json chosen = json::parse(describe_json, nullptr, false);
  if (!chosen.is_discarded() && !chosen.empty()) record["aggregation"] = chosen;
  if (train.kind == Task::Kind::kTrain && examples > 0) record["train_examples"] = examples;
  record["train_loss"] =
      have_loss && examples > 0 ? NumOrNull(loss_sum / static_cast<double>(examples)) : json();
  std::string audit;
  for (const auto& [split, sums] : eval.eval) {
    record[split] = json::parse(sums.MetricsJson());
    if (split != "val" || !eval.audit) continue;
    StatusOr<std::string> a =
        PublishAuditLocked(sums, std::vector<std::string>(eval.done.begin(), eval.done.end()));
    if (a.ok()) {
      audit = *std::move(a);
    } else {
      spdlog::warn("round {}: no audit: {}", round, std::string(a.status().message()));
    }
  }
  if (study_.secure_aggregation) {
    json secure = json::object();
    if (train.kind == Task::Kind::kTrain) {
      secure["survivors"] = train.done.size();
      secure["selected"] = train.task_ids.size();
    }
    secure["evaluation"] = {{"survivors", eval.done.size()}, {"selected", eval.task_ids.size()}};
    record["secure_aggregation"] = secure;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Every evaluation split released this round is counted (and the
    // audit-only rounds since the last commit); as of this commit it is
    // part of the round's record, beside the privacy ledger.
    audit_releases_ += static_cast<int>(eval.eval.size());
    record["audit_releases"] = audit_releases_;
  }
  if (ledger_) {
    std::lock_guard<std::mutex> lock(mu_);
    record["privacy"] = {{"mode", study_.privacy.mode},
                         {"epsilon", ledger_->epsilon()},
                         {"delta", ledger_->delta()},
                         {"budget", ledger_->budget()},
                         {"noise_multiplier", study_.privacy.noise_multiplier},
                         {"clip_norm", study_.privacy.clip_norm},
                         {"releases", ledger_->releases()},
                         {"audit_releases", audit_releases_},
                         {"audit_noise_multiplier", study_.audit.noise_multiplier},
                         {"ledger", json::parse(ledger_->ToJson())}};
  }
  RoundCommit c;
  c.round = round;
  c.model = *model.bytes;
  c.model_sha256 = model.sha256;
  c.server_state = server_state;
  c.record_json = record.dump();
  c.audit_json = audit;
  c.log_detail_json = json{{"strategy", strategy_->name()}, {"updates", updates}}.dump();
  ATTUNE_RETURN_IF_ERROR(store_->CommitRound(c));
  ATTUNE_ASSIGN_OR_RETURN(RoundRecord committed, RoundRecord::FromJson(round, c.record_json));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ATTUNE_RETURN_IF_ERROR(history_.Append(std::move(committed), std::move(c.audit_json)));
    global_version_ = round;
    global_model_ = std::move(model);
    global_ = *ViewModel(*global_model_.bytes);  // made by EncodeModel: always a valid view
    server_state_ = std::move(server_state);
    candidate_version_ = -1;
    candidate_model_ = {};
    for (const auto& [site, a] : train.accepted) sites_.Contributed(site);
  }
  auto metric = [&](const char* split, const char* key) -> std::string {
    if (!record.contains(split) || record[split][key].is_null()) return "  n/a ";
    return absl::StrFormat("%.4f", record[split][key].get<double>());
  };
  std::string loss = record["train_loss"].is_null()
                         ? "  n/a "
                         : absl::StrFormat("%.4f", record["train_loss"].get<double>());
  const std::string eps =
      record.contains("privacy")
          ? absl::StrFormat(" | epsilon %.3g", record["privacy"]["epsilon"].get<double>())
          : "";
  std::printf(
      "round %lld/%d | sites %zu/%zu | train_loss %s | val_loss %s | val_auc %s%s | %.1f s\n",
      static_cast<long long>(round), study_.rounds, train.done.size(), train.task_ids.size(),
      loss.c_str(), metric("val", "loss").c_str(), metric("val", "auc").c_str(), eps.c_str(),
      seconds);
  if (record.contains("test")) {
    std::printf("final (test split) | auc %s | accuracy %s | loss %s | n %lld\n",
                metric("test", "auc").c_str(), metric("test", "accuracy").c_str(),
                metric("test", "loss").c_str(),
                static_cast<long long>(record["test"]["n"].get<int64_t>()));
  }
  std::fflush(stdout);
  spdlog::info("committed round {}", round);
  return WriteOutputs(/*final_model=*/false);
}

Status RoundDriver::WriteOutputs(bool final_model) {
  std::string summary, audit_text;
  int64_t audit_round = -1, last = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last = static_cast<int64_t>(history_.rounds().size()) - 1;
    summary = history_.SummaryJson(
        {study_.study_id, study_.rounds, strategy_->name(), stop_reason_});
    audit_round = history_.audit_round();
    audit_text = history_.audit_json();
  }
  std::error_code ec;
  fs::create_directories(options_.out_dir, ec);
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(options_.out_dir + "/summary.json", summary));
  // The latest round that was audited (audit.every).
  if (audit_round >= 0) {
    json audit = json::parse(audit_text, nullptr, false);
    if (!audit.is_discarded()) {
      audit["study_id"] = study_.study_id;
      audit["round"] = audit_round;
      ATTUNE_RETURN_IF_ERROR(WriteAuditFiles(options_.out_dir, audit.dump(2) + "\n"));
    }
  }
  if (final_model && last >= 0) {
    std::shared_ptr<const std::string> blob;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blob = global_model_.bytes;
    }
    ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(options_.out_dir + "/model.atnm", *blob));
  }
  return absl::OkStatus();
}

}  // namespace attune::coordinator
