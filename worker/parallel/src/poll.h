// Private to attune_parallel's backends: how a Work waits.
#pragma once

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

namespace attune::parallel {

// Polls `done()` until it is true or `timeout` has passed, then calls
// `timed_out()` (which throws). Transports progress a collective only while
// they are polled (MPI), or report errors only when asked (NCCL), so yield
// between polls while the peers are likely in step; after 100 ms (a rank
// idle between tasks) back off to at most 1 ms a poll.
template <typename Done, typename TimedOut>
void PollUntil(std::chrono::milliseconds timeout, Done done, TimedOut timed_out) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto pause = std::chrono::microseconds(10);
  while (!done()) {
    const auto waited = Clock::now() - start;
    if (waited >= timeout) timed_out();
    if (waited < std::chrono::milliseconds(100)) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }
}

// "<what> did not complete within 3 s on rank 0 of 2 (ranks 0-1): ..."
inline std::string TimeoutMessage(const std::string& what, std::chrono::milliseconds timeout,
                                  int rank, int size) {
  char seconds[32];
  std::snprintf(seconds, sizeof seconds, "%g", timeout.count() / 1000.0);
  return what + " did not complete within " + seconds + " s on rank " + std::to_string(rank) +
         " of " + std::to_string(size) + " (ranks 0-" + std::to_string(size - 1) +
         "): another rank died, is stuck, or issued a different collective";
}

}  // namespace attune::parallel
