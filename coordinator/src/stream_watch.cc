#include "attune/coordinator/stream_watch.h"

#include "absl/strings/str_format.h"

namespace attune::coordinator {

struct StreamWatch::State {
  std::function<Clock::time_point()> now;
  std::function<void()> cancel;
  Clock::duration idle, total;
  Clock::time_point started;
  std::mutex mu;
  std::optional<Clock::time_point> op_since;  // guarded by mu
  Status expired;                             // guarded by mu
};

namespace {
double Secs(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}
}  // namespace

StreamWatch::StreamWatch(Options options) : options_(std::move(options)) {
  if (options_.tick.count() > 0) {
    thread_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mu_);
      while (!stop_) {
        cv_.wait_for(lock, options_.tick, [this] { return stop_; });
        if (stop_) break;
        lock.unlock();
        Check();
        lock.lock();
      }
    });
  }
}

StreamWatch::~StreamWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<StreamWatch::Call> StreamWatch::Watch(std::function<void()> cancel,
                                                      Clock::duration idle,
                                                      Clock::duration total) {
  auto state = std::make_shared<State>();
  state->now = options_.now;
  state->cancel = std::move(cancel);
  state->idle = idle;
  state->total = total;
  state->started = options_.now();
  std::lock_guard<std::mutex> lock(mu_);
  calls_.push_back(state);
  return std::unique_ptr<Call>(new Call(this, std::move(state)));
}

void StreamWatch::Check() {
  std::vector<std::shared_ptr<State>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = options_.now();
    for (const auto& s : calls_) {
      std::lock_guard<std::mutex> call_lock(s->mu);
      if (!s->expired.ok()) continue;
      if (s->op_since && now - *s->op_since > s->idle) {
        s->expired = absl::DeadlineExceededError(absl::StrFormat(
            "nothing was sent or taken for %.3g s (the coordinator's limit for one read or "
            "write is %.3g s)",
            Secs(now - *s->op_since), Secs(s->idle)));
      } else if (s->total.count() > 0 && now - s->started > s->total) {
        s->expired = absl::DeadlineExceededError(absl::StrFormat(
            "the call was open for %.3g s, past the coordinator's limit of %.3g s",
            Secs(now - s->started), Secs(s->total)));
      } else {
        continue;
      }
      due.push_back(s);
    }
  }
  // Outside the locks: gRPC's cancellation may run callbacks.
  for (const auto& s : due) s->cancel();
}

size_t StreamWatch::calls() const {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_.size();
}

StreamWatch::Call::~Call() {
  std::lock_guard<std::mutex> lock(watch_->mu_);
  watch_->calls_.remove(state_);
}

StreamWatch::Call::Op StreamWatch::Call::Begin() { return Op(state_); }

Status StreamWatch::Call::expired() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->expired;
}

StreamWatch::Call::Op::Op(std::shared_ptr<State> state) : state_(std::move(state)) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->op_since = state_->now();
}

StreamWatch::Call::Op::~Op() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->op_since.reset();
}

}  // namespace attune::coordinator
