#include "attune/coordinator/clock.h"

#include <vector>

namespace attune::coordinator {

Clock::time_point FakeClock::Now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_;
}

void FakeClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                          time_point deadline) {
  int id;
  {
    std::lock_guard<std::mutex> g(mu_);
    if (now_ >= deadline) return;
    id = next_id_++;
    waiters_[id] = {&cv, lock.mutex()};
    changed_.notify_all();
  }
  // An Advance() from here on notifies under `lock`'s mutex, which this
  // thread holds until wait() releases it: the notification cannot fall
  // between the check above and the wait.
  cv.wait(lock);
  std::lock_guard<std::mutex> g(mu_);
  waiters_.erase(id);
  changed_.notify_all();
}

void FakeClock::Advance(duration d) {
  std::vector<Waiter> wake;
  {
    std::lock_guard<std::mutex> g(mu_);
    now_ += d;
    for (const auto& [id, w] : waiters_) wake.push_back(w);
  }
  for (const Waiter& w : wake) {
    std::lock_guard<std::mutex> g(*w.mu);
    w.cv->notify_all();
  }
}

bool FakeClock::AwaitWaiters(int n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> g(mu_);
  return changed_.wait_for(g, timeout, [&] { return static_cast<int>(waiters_.size()) >= n; });
}

}  // namespace attune::coordinator
