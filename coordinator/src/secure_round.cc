// The secure TRAIN phase of a round: NOTE [Round lifecycle] in
// round_driver.h, steps 1-4 of common/secagg.h, and the service-facing
// methods that feed it.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "attune/common/crypto.h"
#include "attune/common/secure_update.h"
#include "attune/common/site_guard.h"
#include "attune/common/wire.h"
#include "attune/coordinator/round_driver.h"
#include "attune/coordinator/update_spool.h"

namespace attune::coordinator {
namespace {

const char* StepName(int step) {
  switch (step) {
    case 1: return "advertise keys";
    case 2: return "share keys";
    case 3: return "masked input";
    case 4: return "confirm survivors";
    case 5: return "unmask";
  }
  return "?";
}

// Secure aggregation aborts (too few sites for the threshold) are retried
// like a missed quorum.
Status Retryable(const Status& s) {
  if (absl::IsFailedPrecondition(s)) {
    return absl::UnavailableError(absl::StrCat("secure aggregation aborted: ", s.message()));
  }
  return s;
}

// The server's answer into *out, or its refusal (too few sites) into `s`
// as retryable.
template <typename T>
void Take(Status& s, StatusOr<T> answer, T* out) {
  s = Retryable(answer.status());
  if (s.ok()) *out = *std::move(answer);
}

}  // namespace

StatusOr<RoundDriver::Phase*> RoundDriver::SecureStepLocked(const std::string& site,
                                                            const std::string& task_id,
                                                            int64_t round, int step) {
  ATTUNE_RETURN_IF_ERROR(CheckOpenTaskLocked(site, task_id, round));
  if (!phase_->secure) {
    return absl::FailedPreconditionError("this study's rounds do not use secure aggregation");
  }
  if (phase_->secure->step != step) {
    return absl::FailedPreconditionError(absl::StrCat(
        "secure aggregation is at step ", phase_->secure->step, " (",
        StepName(phase_->secure->step), "), not ", step, " (", StepName(step), ")"));
  }
  return phase_;
}

Status RoundDriver::SecAggAdvertise(const std::string& site, const std::string& task_id,
                                    int64_t round, secagg::Advertisement ad,
                                    std::string certificate_pem) {
  std::lock_guard<std::mutex> lock(mu_);
  ATTUNE_ASSIGN_OR_RETURN(Phase * p, SecureStepLocked(site, task_id, round, 1));
  Secure& sec = *p->secure;
  const int index = sec.index.at(site);
  if (ad.site != index) {
    return absl::InvalidArgumentError(
        absl::StrCat("advertisement for index ", ad.site, " from site ", site, " (index ", index,
                     ")"));
  }
  ATTUNE_RETURN_IF_ERROR(sec.server->AddAdvertisement(ad));
  sec.certificates[index] = std::move(certificate_pem);
  p->done.insert(site);
  sites_.Touch(site);
  cv_.notify_all();
  return absl::OkStatus();
}

Status RoundDriver::SecAggShares(const std::string& site, const std::string& task_id,
                                 int64_t round, const std::vector<secagg::SealedShares>& shares) {
  std::lock_guard<std::mutex> lock(mu_);
  ATTUNE_ASSIGN_OR_RETURN(Phase * p, SecureStepLocked(site, task_id, round, 2));
  ATTUNE_RETURN_IF_ERROR(p->secure->server->AddSealedShares(p->secure->index.at(site), shares));
  p->done.insert(site);
  sites_.Touch(site);
  cv_.notify_all();
  return absl::OkStatus();
}

Status RoundDriver::SecAggConfirm(const std::string& site, const std::string& task_id,
                                  int64_t round, std::string signature) {
  std::lock_guard<std::mutex> lock(mu_);
  ATTUNE_ASSIGN_OR_RETURN(Phase * p, SecureStepLocked(site, task_id, round, 4));
  Secure& sec = *p->secure;
  const int index = sec.index.at(site);
  if (sec.confirmations.count(index)) {
    return absl::AlreadyExistsError("this site already confirmed the survivor set");
  }
  auto cert = sec.certificates.find(index);
  if (cert == sec.certificates.end() ||
      !crypto::VerifyWithCertificatePem(cert->second,
                                        secagg::SurvivorBytes(sec.context,
                                                              sec.server->aggregation(),
                                                              sec.survivors),
                                        crypto::View(signature))
           .ok()) {
    return absl::InvalidArgumentError(
        "the signature does not sign this round's survivor set with the site's certificate");
  }
  sec.confirmations[index] = std::move(signature);
  p->done.insert(site);
  sites_.Touch(site);
  cv_.notify_all();
  return absl::OkStatus();
}

Status RoundDriver::SecAggUnmask(const std::string& site, const std::string& task_id,
                                 int64_t round, secagg::UnmaskResponse response) {
  std::lock_guard<std::mutex> lock(mu_);
  ATTUNE_ASSIGN_OR_RETURN(Phase * p, SecureStepLocked(site, task_id, round, 5));
  response.site = p->secure->index.at(site);
  ATTUNE_RETURN_IF_ERROR(p->secure->server->AddUnmaskResponse(response));
  p->done.insert(site);
  sites_.Touch(site);
  cv_.notify_all();
  return absl::OkStatus();
}

StatusOr<RoundDriver::SecureSum> RoundDriver::RunSecureAggregation(
    std::unique_lock<std::mutex>& lock, Phase* p, const std::vector<std::string>& selected,
    const SecureSpec& spec) {
  const int n = static_cast<int>(selected.size());
  const SecAggConfig& cfg = study_.secagg;
  // The threshold: enough survivors that the sum hides any one site, never
  // fewer than the quorum, never more than a site's share holders.
  int degree = cfg.neighbours >= n - 1 ? 0 : cfg.neighbours;
  if (degree % 2) ++degree;  // Harary graphs here have even degree
  if (degree >= n - 1) degree = 0;
  const int holders = degree == 0 ? n : degree + 1;
  int t = cfg.threshold > 0 ? cfg.threshold : std::max(study_.min_sites, n / 2 + 1);
  t = std::min(t, holders);
  // Never less than the sites themselves accept (site_guard.h): more than
  // half of each secret's holders, among at least kMinSecureSites.
  t = std::max(t, MinimumThreshold(n, degree));
  if (n < kMinSecureSites) {
    return absl::UnavailableError(absl::StrCat("round ", p->round,
                                               ": secure aggregation needs at least ",
                                               kMinSecureSites, " sites (have ", n, ")"));
  }
  secagg::Options options;
  options.context = absl::StrCat("attune-secagg-v1|", study_.study_id, "|round ", p->round,
                                 "|attempt ", attempt_, "|", run_nonce_, "|", spec.purpose);
  options.sites = n;
  options.threshold = t;
  options.degree = degree;
  options.length = spec.length;
  ATTUNE_ASSIGN_OR_RETURN(secagg::Server server, secagg::Server::Make(options));

  p->secure.emplace();
  Secure& sec = *p->secure;
  sec.server.emplace(std::move(server));
  sec.sites = selected;
  sec.length = options.length;
  sec.context = options.context;
  std::map<std::string, std::shared_ptr<const SecureTaskParts>> setups;
  for (int i = 0; i < n; ++i) {
    sec.index[selected[i]] = i;
    auto task = std::make_shared<SecureTaskParts>();
    SecAggTerms& s = task->setup.emplace();
    s.context = options.context;
    s.index = i;
    s.sites = selected;
    s.threshold = t;
    s.degree = degree;
    s.length = options.length;
    s.value_clip = cfg.value_clip;
    s.weight = spec.weight.empty() ? 1.0 : spec.weight[i];
    if (spec.fill) spec.fill(t, task.get());
    setups[selected[i]] = std::move(task);
  }
  spdlog::info("round {}: secure aggregation ({}) among {} sites, threshold {}, {}", p->round,
               spec.purpose, n, t,
               degree == 0 ? std::string("every pair masks")
                           : absl::StrCat(degree, " neighbours each"));

  const auto deadline = clock_->Now() + std::chrono::milliseconds(
                                           static_cast<int64_t>(study_.round_deadline_s * 1000));
  // TRAIN starts from the global model; EVALUATE scores the candidate.
  const int64_t model_version = p->kind != Task::Kind::kEvaluate ? global_version_
                                : p->audit_id > 0                ? p->audit_model
                                                                 : p->round;
  OpenPhase(p, selected, model_version, setups);
  // Each step: the sites that finished the last one are asked for the next.
  auto step_sites = [&] { return std::vector<std::string>(p->done.begin(), p->done.end()); };
  auto next_step = [&](int step, Task::Kind kind,
                       const std::function<StatusOr<std::shared_ptr<SecureTaskParts>>(int)>& make)
      -> Status {
    const std::vector<std::string> sites = step_sites();
    p->done.clear();
    sec.step = step;
    for (const auto& site : sites) {
      ATTUNE_ASSIGN_OR_RETURN(std::shared_ptr<SecureTaskParts> msg, make(sec.index.at(site)));
      Task task;
      task.kind = kind;
      task.round = p->round;
      task.model_version = model_version;
      task.task_id = p->task_ids.at(site);
      task.secure = std::move(msg);
      sites_.Send(site, std::move(task));
    }
    cv_.notify_all();
    return AwaitReports(lock, p, sites, t, deadline);
  };

  Status s = AwaitReports(lock, p, selected, t, deadline);
  std::vector<secagg::Advertisement> ads;
  if (s.ok()) Take(s, sec.server->Advertisements(), &ads);
  if (s.ok()) {
    // The same relay for every site: one copy, shared by their tasks.
    auto relay = std::make_shared<SecureTaskParts>();
    for (const auto& a : ads) relay->advertisements.emplace_back(a, sec.certificates.at(a.site));
    s = next_step(2, Task::Kind::kSecAggShare,
                  [&](int) -> StatusOr<std::shared_ptr<SecureTaskParts>> { return relay; });
  }
  if (s.ok()) {
    s = next_step(3, Task::Kind::kSecAggMask, [&](int i) -> StatusOr<std::shared_ptr<SecureTaskParts>> {
      auto inbox = sec.server->SharesFor(i);
      if (!inbox.ok()) return Retryable(inbox.status());
      auto msg = std::make_shared<SecureTaskParts>();
      msg->shares = *std::move(inbox);
      return msg;
    });
  }
  secagg::UnmaskRequest request;
  if (s.ok()) Take(s, sec.server->Request(), &request);
  if (s.ok()) {
    // Consistency: every survivor signs the one survivor set; a site
    // reveals shares only with t of those signatures.
    sec.survivors = request.survivors;
    std::sort(sec.survivors.begin(), sec.survivors.end());
    auto survivors = std::make_shared<SecureTaskParts>();
    survivors->survivors = sec.survivors;
    s = next_step(4, Task::Kind::kSecAggConfirm,
                  [&](int) -> StatusOr<std::shared_ptr<SecureTaskParts>> { return survivors; });
  }
  if (s.ok()) {
    auto unmask = std::make_shared<SecureTaskParts>();
    unmask->survivors = request.survivors;
    unmask->dropped = request.dropped;
    unmask->confirmations.assign(sec.confirmations.begin(), sec.confirmations.end());
    s = next_step(5, Task::Kind::kSecAggUnmask,
                  [&](int) -> StatusOr<std::shared_ptr<SecureTaskParts>> { return unmask; });
  }
  SecureSum sum;
  if (s.ok()) Take(s, sec.server->Finish(), &sum.words);
  // A site that revealed a wrong share (left out: the others rebuilt the
  // secret, checked against its commitment) is named.
  for (const std::string& fault : sec.server->faults()) {
    spdlog::warn("round {}: secure aggregation ({}): {} was wrong and left out", p->round,
                 spec.purpose, fault);
    LogLocked("secagg_wrong_share", "",
              absl::StrCat("{\"round\": ", p->round, ", \"fault\": \"", fault, "\"}"));
  }
  ClosePhase(p);
  if (!s.ok()) return s;
  sum.sites = n;
  sum.survivors = std::move(request.survivors);
  sum.dropped = std::move(request.dropped);
  // The phase's reporters are the survivors: the sites in the sum.
  p->done.clear();
  for (int v : sum.survivors) p->done.insert(sec.sites[v]);
  spdlog::info("round {}: secure sum ({}) of {} of {} sites unmasked ({} dropped)", p->round,
               spec.purpose, sum.survivors.size(), n, sum.dropped.size());
  return sum;
}

Status RoundDriver::RunSecureTrainPhase(std::unique_lock<std::mutex>& lock, Phase* p,
                                        const std::vector<std::string>& selected,
                                        const std::string& spool_path, double* train_loss) {
  const int n = static_cast<int>(selected.size());
  const int64_t params = static_cast<int64_t>(global_.values.size());
  // FedAvg weights from the examples each site declared when it joined (DP:
  // uniform, so that one site moves the sum by at most clip_norm).
  std::vector<double> weight(n);
  for (int i = 0; i < n; ++i) weight[i] = privacy_.SecureWeight(sites_.TrainSamples(selected[i]));
  double total_weight = 0;
  for (double w : weight) total_weight += w;
  SecureSpec spec;
  spec.purpose = "update";
  spec.length = secagg::InputLength(params);
  for (double w : weight) spec.weight.push_back(w / total_weight);
  spec.fill = [&](int threshold, SecureTaskParts* task) { task->dp = privacy_.TermsFor(threshold); };
  ATTUNE_ASSIGN_OR_RETURN(SecureSum sum, RunSecureAggregation(lock, p, selected, spec));

  // The survivors' weighted sum, rescaled to their own weight: FedAvg over
  // the sites that made it (with DP: the mean of clipped, noised updates).
  double survivor_weight = 0;
  for (int v : sum.survivors) survivor_weight += weight[v];
  const int survivors = static_cast<int>(sum.survivors.size());
  if (privacy_.enabled() && privacy_.charged_at_unmask()) {
    // Charged when the sum is revealed, committed with the round.
    ATTUNE_RETURN_IF_ERROR(SpendLocked(absl::StrCat("round ", p->round, " update sum"),
                                       privacy_.noise_multiplier()));
  }
  // Rebuild the quantiser the sites used and decode off the lock: O(model).
  ATTUNE_ASSIGN_OR_RETURN(secagg::Quantizer q, secagg::Quantizer::Make(study_.secagg.value_clip, n));
  for (const auto& site : p->done) {
    Accepted a;
    a.num_examples = std::max<int64_t>(1, sites_.TrainSamples(site));
    a.sha256 = p->secure->masked_sha256[site];
    p->accepted[site] = std::move(a);
  }
  lock.unlock();
  std::vector<float> mean(sum.words.size());
  q.DecodeSum(sum.words, survivors, mean);
  const double scale = total_weight / survivor_weight;
  for (float& v : mean) v = static_cast<float>(v * scale);
  // Under DP the sites leave the (un-noised) loss out: their word is 0.
  *train_loss = privacy_.reports_loss() ? mean.back() * secagg::kLossScale : std::nan("");
  mean.pop_back();
  Status written = [&]() -> Status {
    ATTUNE_ASSIGN_OR_RETURN(SpoolWriter w, SpoolWriter::Create(spool_path, mean.size()));
    ATTUNE_RETURN_IF_ERROR(w.Append(0, mean));
    return w.Commit();
  }();
  lock.lock();
  for (auto& [site, a] : p->accepted) a.train_loss = *train_loss;
  return written;
}

Status RoundDriver::RunSecureEvalPhase(std::unique_lock<std::mutex>& lock, Phase* p,
                                       const std::vector<std::string>& selected) {
  // The per-feature sums are named as the selected sites agree (each
  // site's list was checked against the model at Join); a site whose model
  // has others refuses the layout. Without the audit (audit.every) there
  // are no cells and no features.
  std::vector<std::string> features;
  if (p->audit) features = AgreedFeaturesLocked(selected);
  const EvalLayout layout = EvalLayout::Make(
      p->splits, study_.audit.histogram_bins, ModalityNames(), std::move(features),
      p->audit ? study_.audit.values : std::map<std::string, std::vector<std::string>>{});
  SecureSpec spec;
  // Each release has its own purpose: a site unmasks one purpose of a
  // round for one set of survivors only.
  spec.purpose = p->audit_id > 0 ? absl::StrCat("audit ", p->audit_id, " of model ",
                                                p->audit_model)
                                 : "evaluation";
  spec.length = layout.Words();
  spec.fill = [&](int, SecureTaskParts* task) { task->eval_layout = layout; };
  ATTUNE_ASSIGN_OR_RETURN(SecureSum sum, RunSecureAggregation(lock, p, selected, spec));
  // A noised sum carries the noise shares of its survivors: settled here.
  const int64_t noised = study_.audit.noised() ? static_cast<int64_t>(sum.survivors.size()) : 0;
  ATTUNE_ASSIGN_OR_RETURN(std::vector<EvalSums> splits,
                          DecodeEvalWords(sum.words, layout, noised));
  for (auto& s : splits) p->eval[s.split] = std::move(s);
  return absl::OkStatus();
}

}  // namespace attune::coordinator
