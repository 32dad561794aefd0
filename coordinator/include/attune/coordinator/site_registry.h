// The sites of a study as the coordinator knows them: the roster (every
// name it ever had, revoked ones marked), who joined with how many
// training patients and which audit features, each site's task stream
// (its generation and queue), and liveness -- a site is alive while it is
// subscribed, not revoked, and was heard from within the heartbeat
// timeout, on the registry's Clock (a test's FakeClock moves it).
//
// Thread-compatible: the round driver holds its mutex around every call.
// Every method that names a site requires one the registry knows
// (Authorize first).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/status.h"
#include "attune/coordinator/clock.h"
#include "attune/common/task.h"

namespace attune::coordinator {

struct SiteView {
  std::string site;
  bool subscribed = false;
  bool alive = false;
  bool revoked = false;
  int64_t last_seen_ms_ago = -1;
  int64_t train_samples = 0;
  int64_t rounds_contributed = 0;
  std::string progress;
};

class SiteRegistry {
 public:
  // `clock` must outlive the registry.
  SiteRegistry(const Clock* clock, Clock::duration heartbeat_timeout,
               const std::vector<std::string>& roster, const std::vector<std::string>& revoked);

  // --- the roster ---
  // PermissionDenied for a name never on the roster of `study_id`, or revoked.
  Status Authorize(const std::string& site, const std::string& study_id) const;
  bool Known(const std::string& site) const { return sites_.count(site) > 0; }
  // Roster sites not revoked: the sites a study waits for at its start.
  size_t Admitted() const;
  struct RosterChange {
    std::vector<std::string> added, revoked, reinstated;
  };
  // Takes `next`'s roster: new names are added; a name it no longer admits
  // is revoked (its task stream ends, its queue is dropped); a revoked one
  // it admits again is reinstated.
  RosterChange Apply(const StudyConfig& next);

  // --- liveness ---
  void Touch(const std::string& site);
  bool Alive(const std::string& site, Clock::time_point now) const;
  std::vector<std::string> Live() const;  // by name
  // When `site` would be taken as gone if not heard from again.
  Clock::time_point Expiry(const std::string& site) const;

  // --- a site's session ---
  void Join(const std::string& site, int64_t train_samples, std::vector<std::string> features);
  bool Joined(const std::string& site) const { return sites_.at(site).joined; }
  // Opens the site's task stream (ending an older one) with an empty queue,
  // or one holding `first`; returns the stream's generation.
  uint64_t Subscribe(const std::string& site, std::optional<Task> first);
  // Whether NextTask has something to say: a task, or the stream ended.
  bool Ready(const std::string& site, uint64_t generation) const;
  // The stream's next task (nullopt: none yet). PermissionDenied once the
  // site was revoked, Cancelled once its stream was replaced.
  StatusOr<std::optional<Task>> Take(const std::string& site, uint64_t generation);
  // True when this ended the site's current stream.
  bool Unsubscribe(const std::string& site, uint64_t generation);
  void Heartbeat(const std::string& site, std::string progress);
  void Send(const std::string& site, Task task);

  // --- what sites declared and did ---
  int64_t TrainSamples(const std::string& site) const { return sites_.at(site).train_samples; }
  const std::vector<std::string>& Features(const std::string& site) const {
    return sites_.at(site).features;
  }
  void Contributed(const std::string& site) { ++sites_.at(site).rounds_contributed; }
  std::vector<std::string> Names() const;
  std::vector<SiteView> Views() const;

 private:
  struct SiteState {
    bool joined = false;
    bool subscribed = false;
    bool revoked = false;
    uint64_t generation = 0;
    int64_t train_samples = 0;
    std::vector<std::string> features;  // audit features, from Join
    int64_t rounds_contributed = 0;
    std::optional<Clock::time_point> last_seen;
    std::string progress;
    std::deque<Task> queue;
  };

  const Clock* const clock_;
  const Clock::duration timeout_;
  std::map<std::string, SiteState> sites_;
};

}  // namespace attune::coordinator
