// The time the round driver reads, and how it waits on it: the system's
// steady clock, or a test's FakeClock that moves only when told, so that a
// round's deadlines, heartbeat timeouts, retries and stragglers can be
// driven in one process without waiting for them (round_driver_test.cc).
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

namespace attune::coordinator {

class Clock {
 public:
  using time_point = std::chrono::steady_clock::time_point;
  using duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;
  virtual time_point Now() const = 0;
  // Waits on `cv`, whose mutex `lock` holds, until it is notified or this
  // clock reaches `deadline` (spurious wake-ups allowed: callers loop on
  // their condition).
  virtual void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                         time_point deadline) = 0;
};

// std::chrono::steady_clock.
class SystemClock final : public Clock {
 public:
  time_point Now() const override { return std::chrono::steady_clock::now(); }
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 time_point deadline) override {
    cv.wait_until(lock, deadline);
  }
};

// A clock that stands still until Advance(). A waiter blocks until it is
// notified or an Advance() takes the clock to its deadline; Advance()
// notifies each waiter with the waiter's own mutex held, so no wake-up is
// lost between a waiter's check of the time and its wait.
class FakeClock final : public Clock {
 public:
  time_point Now() const override;
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 time_point deadline) override;
  void Advance(duration d);
  // Waits (in real time, up to `timeout`) until at least `n` threads wait
  // on this clock: a test lets the driver settle into its wait before it
  // moves time on. False at the timeout.
  bool AwaitWaiters(int n, std::chrono::milliseconds timeout) const;

 private:
  struct Waiter {
    std::condition_variable* cv;
    std::mutex* mu;
  };
  mutable std::mutex mu_;
  mutable std::condition_variable changed_;  // a waiter came or went
  time_point now_ = time_point(std::chrono::hours(1));
  int next_id_ = 0;
  std::map<int, Waiter> waiters_;
};

}  // namespace attune::coordinator
