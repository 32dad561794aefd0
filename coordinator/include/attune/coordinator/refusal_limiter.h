// How many refusals of one caller reach the logs. Every refusal is an
// entry in the synced audit log; without a bound, one caller could make
// the coordinator write (and sync) as fast as it can send bad calls. Each
// caller gets a burst of `burst` entries, then one per `interval`; the
// refusals in between are counted, and the caller's next entry says how
// many were left out, so the log still accounts for every one.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace attune::coordinator {

class RefusalLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  struct Options {
    int burst = 20;
    std::chrono::milliseconds interval{1000};
    // Callers tracked one by one; past this, the rest share one budget.
    size_t max_callers = 1024;
  };
  explicit RefusalLimiter(Options options) : options_(options) {}

  // Whether a refusal of `caller` at `now` is logged; when it is,
  // `*left_out` is how many of the caller's refusals since its last logged
  // one were not.
  bool Admit(const std::string& caller, Clock::time_point now, int64_t* left_out);
  // The refusals left out since each caller's last logged one (callers
  // with none are not listed), and starts counting afresh.
  std::map<std::string, int64_t> TakeLeftOut();

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point last;
    int64_t left_out = 0;
  };
  Options options_;
  std::map<std::string, Bucket> buckets_;
};

}  // namespace attune::coordinator
