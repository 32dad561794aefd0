#include "attune/coordinator/site_registry.h"

#include "absl/strings/str_cat.h"

namespace attune::coordinator {

SiteRegistry::SiteRegistry(const Clock* clock, Clock::duration heartbeat_timeout,
                           const std::vector<std::string>& roster,
                           const std::vector<std::string>& revoked)
    : clock_(clock), timeout_(heartbeat_timeout) {
  for (const auto& s : roster) sites_[s];
  for (const auto& s : revoked) sites_[s].revoked = true;
}

Status SiteRegistry::Authorize(const std::string& site, const std::string& study_id) const {
  // Every name the roster ever had is here; one taken off it is revoked.
  auto it = sites_.find(site);
  if (it == sites_.end()) {
    return absl::PermissionDeniedError(
        absl::StrCat("site '", site, "' is not on the roster of study '", study_id, "'"));
  }
  if (it->second.revoked) {
    return absl::PermissionDeniedError(
        absl::StrCat("site '", site, "' was revoked from study '", study_id, "'"));
  }
  return absl::OkStatus();
}

size_t SiteRegistry::Admitted() const {
  size_t n = 0;
  for (const auto& [name, s] : sites_) n += s.revoked ? 0 : 1;
  return n;
}

SiteRegistry::RosterChange SiteRegistry::Apply(const StudyConfig& next) {
  RosterChange change;
  for (const auto& site : next.roster) {
    if (sites_.count(site)) continue;
    sites_[site];
    change.added.push_back(site);
  }
  for (auto& [name, s] : sites_) {
    const bool revoke = !next.Admits(name);
    if (revoke == s.revoked) continue;
    s.revoked = revoke;
    if (revoke) {
      ++s.generation;  // ends its task stream
      s.subscribed = false;
      s.queue.clear();
      change.revoked.push_back(name);
    } else {
      change.reinstated.push_back(name);
    }
  }
  return change;
}

void SiteRegistry::Touch(const std::string& site) {
  auto it = sites_.find(site);
  if (it != sites_.end()) it->second.last_seen = clock_->Now();
}

bool SiteRegistry::Alive(const std::string& site, Clock::time_point now) const {
  auto it = sites_.find(site);
  if (it == sites_.end()) return false;
  const SiteState& s = it->second;
  return s.subscribed && !s.revoked && s.last_seen && now - *s.last_seen < timeout_;
}

std::vector<std::string> SiteRegistry::Live() const {
  const auto now = clock_->Now();
  std::vector<std::string> out;
  for (const auto& [name, s] : sites_) {
    if (Alive(name, now)) out.push_back(name);
  }
  return out;
}

Clock::time_point SiteRegistry::Expiry(const std::string& site) const {
  const SiteState& s = sites_.at(site);
  return s.last_seen ? *s.last_seen + timeout_ : clock_->Now();
}

void SiteRegistry::Join(const std::string& site, int64_t train_samples,
                        std::vector<std::string> features) {
  SiteState& s = sites_.at(site);
  s.joined = true;
  s.train_samples = train_samples;
  s.features = std::move(features);
  Touch(site);
}

uint64_t SiteRegistry::Subscribe(const std::string& site, std::optional<Task> first) {
  SiteState& s = sites_.at(site);
  s.subscribed = true;
  s.queue.clear();
  if (first) s.queue.push_back(*std::move(first));
  ++s.generation;
  Touch(site);
  return s.generation;
}

bool SiteRegistry::Ready(const std::string& site, uint64_t generation) const {
  const SiteState& s = sites_.at(site);
  return s.generation != generation || !s.queue.empty();
}

StatusOr<std::optional<Task>> SiteRegistry::Take(const std::string& site, uint64_t generation) {
  SiteState& s = sites_.at(site);
  if (s.revoked) return absl::PermissionDeniedError(absl::StrCat("site ", site, " was revoked"));
  if (s.generation != generation) {
    return absl::CancelledError("stream replaced by a newer Subscribe");
  }
  if (s.queue.empty()) return std::optional<Task>();
  Task t = std::move(s.queue.front());
  s.queue.pop_front();
  return std::optional<Task>(std::move(t));
}

bool SiteRegistry::Unsubscribe(const std::string& site, uint64_t generation) {
  SiteState& s = sites_.at(site);
  if (s.generation != generation || !s.subscribed) return false;
  s.subscribed = false;
  return true;
}

void SiteRegistry::Heartbeat(const std::string& site, std::string progress) {
  Touch(site);
  sites_.at(site).progress = std::move(progress);
}

void SiteRegistry::Send(const std::string& site, Task task) {
  sites_.at(site).queue.push_back(std::move(task));
}

std::vector<std::string> SiteRegistry::Names() const {
  std::vector<std::string> out;
  for (const auto& [name, s] : sites_) out.push_back(name);
  return out;
}

std::vector<SiteView> SiteRegistry::Views() const {
  const auto now = clock_->Now();
  std::vector<SiteView> out;
  for (const auto& [name, s] : sites_) {
    SiteView v;
    v.site = name;
    v.subscribed = s.subscribed;
    v.alive = Alive(name, now);
    v.revoked = s.revoked;
    v.last_seen_ms_ago =
        s.last_seen
            ? std::chrono::duration_cast<std::chrono::milliseconds>(now - *s.last_seen).count()
            : -1;
    v.train_samples = s.train_samples;
    v.rounds_contributed = s.rounds_contributed;
    v.progress = s.progress;
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace attune::coordinator
