#include "attune/coordinator/refusal_limiter.h"

#include <algorithm>
#include <utility>

namespace attune::coordinator {

bool RefusalLimiter::Admit(const std::string& caller, Clock::time_point now, int64_t* left_out) {
  static const std::string kOthers = "(other callers)";
  auto it = buckets_.find(caller);
  if (it == buckets_.end()) {
    const std::string& key = buckets_.size() < options_.max_callers ? caller : kOthers;
    it = buckets_.try_emplace(key).first;
    if (it->second.last == Clock::time_point()) {
      it->second.tokens = options_.burst;
      it->second.last = now;
    }
  }
  Bucket& b = it->second;
  if (now > b.last) {
    const double refill = std::chrono::duration<double>(now - b.last).count() /
                          std::chrono::duration<double>(options_.interval).count();
    b.tokens = std::min<double>(options_.burst, b.tokens + refill);
    b.last = now;
  }
  if (b.tokens < 1) {
    ++b.left_out;
    return false;
  }
  b.tokens -= 1;
  *left_out = b.left_out;
  b.left_out = 0;
  return true;
}

std::map<std::string, int64_t> RefusalLimiter::TakeLeftOut() {
  std::map<std::string, int64_t> out;
  for (auto& [caller, b] : buckets_) {
    if (b.left_out > 0) out[caller] = std::exchange(b.left_out, 0);
  }
  return out;
}

}  // namespace attune::coordinator
