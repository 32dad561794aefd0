#include "attune/coordinator/round_driver.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace attune::coordinator {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

std::string RandomHex() {
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  return absl::StrFormat("%016x", v);
}

std::chrono::milliseconds Seconds(double s) {
  return std::chrono::milliseconds(static_cast<int64_t>(s * 1000));
}

json NumOrNull(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

}  // namespace

const char* KindName(Task::Kind k) {
  switch (k) {
    case Task::Kind::kInit: return "init";
    case Task::Kind::kTrain: return "train";
    case Task::Kind::kEvaluate: return "evaluate";
    case Task::Kind::kFinish: return "finish";
  }
  return "?";
}

RoundDriver::RoundDriver(StudyConfig study, StateStore* store, std::string out_dir)
    : study_(std::move(study)), store_(store), out_dir_(std::move(out_dir)),
      run_nonce_(RandomHex()) {
  for (const auto& s : study_.roster) sites_[s];
}

StatusOr<std::unique_ptr<RoundDriver>> RoundDriver::Create(StudyConfig study,
                                                           StateStore* store,
                                                           std::string out_dir) {
  std::unique_ptr<RoundDriver> d(new RoundDriver(std::move(study), store, std::move(out_dir)));
  const int64_t last = store->LastCommittedRound();
  if (last >= 0) {
    ATTUNE_ASSIGN_OR_RETURN(std::string blob, store->LoadModel(last));
    ATTUNE_ASSIGN_OR_RETURN(FlatModel model, DecodeModel(blob));
    d->global_version_ = last;
    d->global_ = std::move(model);
    d->global_blob_ = std::make_shared<const std::string>(std::move(blob));
    spdlog::info("resuming study '{}' after committed round {}", d->study_.study_id, last);
  }
  return d;
}

// ---------------------------------------------------------------- service side

Status RoundDriver::Join(const std::string& site, int64_t train_samples) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "site '", site, "' is not on the roster of study '", study_.study_id, "'"));
  }
  it->second.joined = true;
  it->second.train_samples = train_samples;
  spdlog::info("site {} joined ({} training samples)", site, train_samples);
  return absl::OkStatus();
}

StatusOr<uint64_t> RoundDriver::Subscribe(const std::string& site) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sites_.find(site);
  if (it == sites_.end() || !it->second.joined) {
    return absl::FailedPreconditionError("call Join before Subscribe");
  }
  SiteState& s = it->second;
  s.subscribed = true;
  s.queue.clear();
  if (s.pending) s.queue.push_back(*s.pending);
  ++s.generation;
  cv_.notify_all();
  return s.generation;
}

StatusOr<std::optional<Task>> RoundDriver::NextTask(const std::string& site, uint64_t gen,
                                                    std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  SiteState& s = sites_.at(site);
  auto ready = [&] { return shutdown_ || s.generation != gen || !s.queue.empty(); };
  cv_.wait_for(lock, wait, ready);
  if (s.generation != gen) return absl::CancelledError("stream replaced by a newer Subscribe");
  if (!s.queue.empty()) {
    Task t = std::move(s.queue.front());
    s.queue.pop_front();
    return std::optional<Task>(std::move(t));
  }
  if (shutdown_) return absl::CancelledError("coordinator is shutting down");
  return std::optional<Task>();
}

void RoundDriver::Unsubscribe(const std::string& site, uint64_t gen) {
  std::lock_guard<std::mutex> lock(mu_);
  SiteState& s = sites_.at(site);
  if (s.generation == gen) {
    s.subscribed = false;
    spdlog::info("site {} disconnected", site);
    cv_.notify_all();
  }
}

StatusOr<std::shared_ptr<const std::string>> RoundDriver::Model(int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  if (version == candidate_version_ && candidate_blob_) return candidate_blob_;
  if (version == global_version_ && global_blob_) return global_blob_;
  return absl::NotFoundError(absl::StrCat("model version ", version,
                                          " is not being served (current: ", global_version_, ")"));
}

uint64_t RoundDriver::MaxPayloadBytes() {
  std::lock_guard<std::mutex> lock(mu_);
  // An INIT upload has no model to compare with: allow up to 4 GiB.
  if (!global_) return uint64_t{4} << 30;
  return global_blob_->size() + (1 << 20);
}

Status RoundDriver::CheckOpenTask(const std::string& site, const std::string& task_id,
                                  int64_t round) {
  std::lock_guard<std::mutex> lock(mu_);
  return CheckOpenTaskLocked(site, task_id, round);
}

Status RoundDriver::CheckOpenTaskLocked(const std::string& site, const std::string& task_id,
                                        int64_t round) {
  if (!phase_) {
    return absl::FailedPreconditionError(
        absl::StrCat("no round is open (submission for round ", round, ")"));
  }
  if (round != phase_->round) {
    return absl::FailedPreconditionError(absl::StrCat(
        "submission for round ", round, " but round ", phase_->round, " is open"));
  }
  auto it = phase_->task_ids.find(site);
  if (it == phase_->task_ids.end() || it->second != task_id) {
    return absl::FailedPreconditionError(
        absl::StrCat("task '", task_id, "' is not open for site ", site));
  }
  if (phase_->done.count(site)) {
    return absl::AlreadyExistsError(
        absl::StrCat("site ", site, " already submitted for round ", round));
  }
  return absl::OkStatus();
}

Status RoundDriver::SubmitUpdate(const std::string& site, UpdateSubmission u) {
  std::lock_guard<std::mutex> lock(mu_);
  ATTUNE_RETURN_IF_ERROR(CheckOpenTaskLocked(site, u.task_id, u.round));
  Phase& p = *phase_;
  if (p.kind == Task::Kind::kInit) {
    if (!u.full_weights) return absl::InvalidArgumentError("INIT expects full weights");
    for (float v : u.model.values) {
      if (!std::isfinite(v)) return absl::InvalidArgumentError("initial weights contain NaN or Inf");
    }
    p.init_model = std::move(u.model);
  } else if (p.kind == Task::Kind::kTrain) {
    if (u.full_weights) return absl::InvalidArgumentError("TRAIN expects a delta, not weights");
    if (!(u.model.schema == global_->schema)) {
      return absl::InvalidArgumentError(
          "update schema (tensor names, shapes, dtypes) does not match the global model");
    }
    ATTUNE_RETURN_IF_ERROR(p.fedavg->Accept({site, u.model.values, u.num_examples}));
    auto loss = u.metrics.find("train_loss");
    if (loss != u.metrics.end() && std::isfinite(loss->second)) {
      p.train_loss_sum += loss->second * static_cast<double>(u.num_examples);
    }
  } else {
    return absl::FailedPreconditionError("the open phase expects an evaluation, not an update");
  }
  p.done.insert(site);
  sites_[site].pending.reset();
  spdlog::info("round {}: {} from {} accepted ({} examples)", p.round, KindName(p.kind), site,
               u.num_examples);
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
  if (std::find(p.splits.begin(), p.splits.end(), sums.split) == p.splits.end()) {
    return absl::InvalidArgumentError(absl::StrCat("split '", sums.split, "' was not asked for"));
  }
  if (p.got[site].count(sums.split)) {
    return absl::AlreadyExistsError(absl::StrCat("split '", sums.split, "' already reported"));
  }
  ATTUNE_RETURN_IF_ERROR(p.eval[sums.split].Add(sums));
  p.got[site].insert(sums.split);
  if (p.got[site].size() == p.splits.size()) {
    p.done.insert(site);
    sites_[site].pending.reset();
  }
  cv_.notify_all();
  return absl::OkStatus();
}

StatusView RoundDriver::GetStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  StatusView v;
  v.committed_round = global_version_;
  v.phase = phase_name_;
  for (const auto& [name, s] : sites_) v.sites.push_back({name, s.subscribed, s.train_samples});
  return v;
}

void RoundDriver::Shutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  shutdown_ = true;
  cv_.notify_all();
}

// ------------------------------------------------------------------ the study

std::vector<std::string> RoundDriver::SubscribedSites() const {
  std::vector<std::string> out;
  for (const auto& [name, s] : sites_) {
    if (s.subscribed) out.push_back(name);
  }
  return out;
}

std::string RoundDriver::NewTaskId(Task::Kind kind, int64_t round, const std::string& site) {
  return absl::StrCat(run_nonce_, "/r", round, "/", KindName(kind), "/", site);
}

Status RoundDriver::Run() {
  ATTUNE_RETURN_IF_ERROR(WaitForSites());
  if (store_->LastCommittedRound() < 0) ATTUNE_RETURN_IF_ERROR(RunInitRound());
  for (int64_t r = store_->LastCommittedRound() + 1; r <= study_.rounds; ++r) {
    ATTUNE_RETURN_IF_ERROR(RunTrainRound(r));
  }
  std::lock_guard<std::mutex> lock(mu_);
  phase_name_ = "finished";
  for (auto& [name, s] : sites_) {
    Task t;
    t.kind = Task::Kind::kFinish;
    t.round = study_.rounds;
    t.task_id = NewTaskId(t.kind, t.round, name);
    s.queue.push_back(t);
  }
  cv_.notify_all();
  spdlog::info("study '{}' finished after round {}", study_.study_id, study_.rounds);
  return absl::OkStatus();
}

Status RoundDriver::WaitForSites() {
  std::unique_lock<std::mutex> lock(mu_);
  const auto deadline = Clock::now() + Seconds(study_.join_timeout_s);
  const size_t want = study_.roster.size();
  auto next_note = Clock::now() + std::chrono::seconds(10);
  while (true) {
    if (shutdown_) return absl::CancelledError("shutting down");
    const size_t have = SubscribedSites().size();
    if (have == want) return absl::OkStatus();
    const auto now = Clock::now();
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
    cv_.wait_until(lock, std::min(deadline, next_note));
  }
}

Status RoundDriver::RunPhase(std::unique_lock<std::mutex>& lock, Phase* p,
                             const std::vector<std::string>& selected, int64_t model_version,
                             int quorum) {
  for (const auto& site : selected) {
    Task t;
    t.kind = p->kind;
    t.round = p->round;
    t.model_version = model_version;
    t.splits = p->splits;
    t.task_id = NewTaskId(p->kind, p->round, site);
    p->task_ids[site] = t.task_id;
    sites_[site].pending = t;
    sites_[site].queue.push_back(t);
  }
  phase_ = p;
  cv_.notify_all();
  const auto deadline = Clock::now() + Seconds(study_.round_deadline_s);
  cv_.wait_until(lock, deadline, [&] { return shutdown_ || p->done.size() == selected.size(); });
  phase_ = nullptr;
  for (const auto& site : selected) sites_[site].pending.reset();
  if (shutdown_) return absl::CancelledError("shutting down");
  if (static_cast<int>(p->done.size()) < quorum) {
    return absl::DeadlineExceededError(absl::StrCat(
        "round ", p->round, " (", KindName(p->kind), "): only ", p->done.size(), " of ",
        selected.size(), " sites reported within round_deadline_s = ", study_.round_deadline_s,
        " s; at least ", quorum, " are needed"));
  }
  if (p->done.size() < selected.size()) {
    spdlog::warn("round {} ({}): closing at the deadline with {} of {} sites", p->round,
                 KindName(p->kind), p->done.size(), selected.size());
  }
  return absl::OkStatus();
}

Status RoundDriver::RunInitRound() {
  const auto start = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<std::string> subscribed = SubscribedSites();
  if (subscribed.empty()) return absl::UnavailableError("no site is subscribed");
  Phase init;
  init.kind = Task::Kind::kInit;
  init.round = 0;
  phase_name_ = "round 0: initial model";
  ATTUNE_RETURN_IF_ERROR(RunPhase(lock, &init, {subscribed.front()}, -1, 1));
  FlatModel model = std::move(*init.init_model);
  spdlog::info("initial model from {}: {} tensors, {} parameters", subscribed.front(),
               model.schema.tensors.size(), model.values.size());
  candidate_version_ = 0;
  candidate_blob_ = std::make_shared<const std::string>(EncodeModel(model));

  Phase eval;
  eval.kind = Task::Kind::kEvaluate;
  eval.round = 0;
  eval.splits = {"val"};
  phase_name_ = "round 0: evaluate";
  ATTUNE_RETURN_IF_ERROR(RunPhase(lock, &eval, SubscribedSites(), 0, study_.min_sites));
  lock.unlock();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return CommitRound(0, std::move(model), init, eval, secs);
}

Status RoundDriver::RunTrainRound(int64_t round) {
  const auto start = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<std::string> selected = SubscribedSites();
  if (static_cast<int>(selected.size()) < study_.min_sites) {
    // Sites may be reconnecting (e.g. after a coordinator restart): give them
    // until the round deadline to come back.
    const auto deadline = Clock::now() + Seconds(study_.round_deadline_s);
    cv_.wait_until(lock, deadline, [&] {
      return shutdown_ || static_cast<int>(SubscribedSites().size()) >= study_.min_sites;
    });
    selected = SubscribedSites();
    if (shutdown_) return absl::CancelledError("shutting down");
    if (static_cast<int>(selected.size()) < study_.min_sites) {
      return absl::UnavailableError(absl::StrCat("round ", round, ": only ", selected.size(),
                                                 " sites connected, min_sites = ",
                                                 study_.min_sites));
    }
  }
  Phase train;
  train.kind = Task::Kind::kTrain;
  train.round = round;
  train.fedavg = std::make_unique<StreamingFedAvg>(global_->values.size());
  phase_name_ = absl::StrCat("round ", round, ": train");
  ATTUNE_RETURN_IF_ERROR(RunPhase(lock, &train, selected, global_version_, study_.min_sites));
  ATTUNE_ASSIGN_OR_RETURN(std::vector<float> next, train.fedavg->Finalize(global_->values));
  FlatModel model{global_->schema, std::move(next)};
  candidate_version_ = round;
  candidate_blob_ = std::make_shared<const std::string>(EncodeModel(model));

  Phase eval;
  eval.kind = Task::Kind::kEvaluate;
  eval.round = round;
  eval.splits = {"val"};
  if (round == study_.rounds) eval.splits.push_back("test");
  phase_name_ = absl::StrCat("round ", round, ": evaluate");
  ATTUNE_RETURN_IF_ERROR(RunPhase(lock, &eval, SubscribedSites(), round, study_.min_sites));
  lock.unlock();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return CommitRound(round, std::move(model), train, eval, secs);
}

Status RoundDriver::CommitRound(int64_t round, FlatModel model, const Phase& train,
                                const Phase& eval, double seconds) {
  json record;
  record["round"] = round;
  record["seconds"] = seconds;
  record["sites_selected"] = train.task_ids.size();
  record["sites_reported"] = train.done.size();
  record["sites"] = std::vector<std::string>(train.done.begin(), train.done.end());
  if (train.fedavg && train.fedavg->total_examples() > 0) {
    record["train_examples"] = train.fedavg->total_examples();
    record["train_loss"] =
        NumOrNull(train.train_loss_sum / static_cast<double>(train.fedavg->total_examples()));
  } else {
    record["train_loss"] = nullptr;
  }
  std::string audit;
  for (const auto& [split, sums] : eval.eval) {
    record[split] = json::parse(sums.MetricsJson());
    if (split == "val") audit = sums.AuditJson(study_.audit.min_cell);
  }
  RoundCommit c;
  c.round = round;
  c.model = EncodeModel(model);
  c.record_json = record.dump();
  c.audit_json = audit;
  auto blob = std::make_shared<const std::string>(c.model);
  ATTUNE_RETURN_IF_ERROR(store_->CommitRound(c));
  {
    std::lock_guard<std::mutex> lock(mu_);
    global_version_ = round;
    global_ = std::move(model);
    global_blob_ = std::move(blob);
    candidate_version_ = -1;
    candidate_blob_.reset();
  }
  auto metric = [&](const char* split, const char* key) -> std::string {
    if (!record.contains(split) || record[split][key].is_null()) return "  n/a ";
    return absl::StrFormat("%.4f", record[split][key].get<double>());
  };
  std::string loss = record["train_loss"].is_null()
                         ? "  n/a "
                         : absl::StrFormat("%.4f", record["train_loss"].get<double>());
  std::printf("round %lld/%d | sites %zu/%zu | train_loss %s | val_loss %s | val_auc %s | %.1f s\n",
              static_cast<long long>(round), study_.rounds, eval.done.size(),
              eval.task_ids.size(), loss.c_str(), metric("val", "loss").c_str(),
              metric("val", "auc").c_str(), seconds);
  if (record.contains("test")) {
    std::printf("final (test split) | auc %s | accuracy %s | loss %s | n %lld\n",
                metric("test", "auc").c_str(), metric("test", "accuracy").c_str(),
                metric("test", "loss").c_str(),
                static_cast<long long>(record["test"]["n"].get<int64_t>()));
  }
  std::fflush(stdout);
  spdlog::info("committed round {}", round);
  return WriteOutputs();
}

Status RoundDriver::WriteOutputs() {
  const int64_t last = store_->LastCommittedRound();
  json summary;
  summary["study_id"] = study_.study_id;
  summary["total_rounds"] = study_.rounds;
  summary["rounds"] = std::max<int64_t>(last, 0);
  summary["finished"] = last == study_.rounds;
  json history = json::array(), train_loss = json::array(), val_loss = json::array(),
       val_auc = json::array();
  for (int64_t r = 0; r <= last; ++r) {
    ATTUNE_ASSIGN_OR_RETURN(std::string text, store_->LoadRecord(r));
    json rec = json::parse(text, nullptr, false);
    if (rec.is_discarded()) return absl::DataLossError(absl::StrCat("round ", r, " record"));
    history.push_back(rec);
    const json vl = rec.contains("val") ? rec["val"]["loss"] : json(nullptr);
    const json va = rec.contains("val") ? rec["val"]["auc"] : json(nullptr);
    if (r == 0) {
      summary["initial"] = {{"val_loss", vl}, {"val_auc", va}};
      continue;
    }
    train_loss.push_back(rec["train_loss"]);
    val_loss.push_back(vl);
    val_auc.push_back(va);
    if (rec.contains("test")) {
      const json& t = rec["test"];
      summary["final"] = {{"round", r},      {"split", "test"},         {"n", t["n"]},
                          {"auc", t["auc"]}, {"accuracy", t["accuracy"]}, {"loss", t["loss"]}};
    }
  }
  summary["train_loss"] = train_loss;
  summary["val_loss"] = val_loss;
  summary["val_auc"] = val_auc;
  summary["history"] = history;
  std::error_code ec;
  std::filesystem::create_directories(out_dir_, ec);
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(out_dir_ + "/summary.json", summary.dump(2) + "\n"));
  if (last >= 0) {
    ATTUNE_ASSIGN_OR_RETURN(std::string audit_text, store_->LoadAudit(last));
    json audit = json::parse(audit_text, nullptr, false);
    if (!audit.is_discarded()) {
      audit["study_id"] = study_.study_id;
      audit["round"] = last;
      ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(out_dir_ + "/audit.json", audit.dump(2) + "\n"));
    }
  }
  return absl::OkStatus();
}

}  // namespace attune::coordinator
