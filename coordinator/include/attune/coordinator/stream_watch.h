// Deadlines on the calls the coordinator serves. gRPC's synchronous API
// puts no timeout on a single read or write, so a caller that opens a
// stream and then sends nothing (or stops reading what it is sent) would
// hold its thread, its transfer slot and its buffers for as long as it
// likes. The service registers each call here; a call is cancelled when
// one of its reads or writes has waited longer than its idle limit, or when
// it has been open longer than its total limit.
//
//   StreamWatch watch(StreamWatch::Options{});
//   auto call = watch.Watch([ctx] { ctx->TryCancel(); }, idle, total);
//   { auto op = call->Begin(); reader->Read(&chunk); }
//   if (!call->expired().ok()) ... refuse with call->expired()
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "attune/common/status.h"

namespace attune::coordinator {

class StreamWatch {
 public:
  using Clock = std::chrono::steady_clock;
  struct Options {
    // How often the watch thread looks; 0: no thread (Check() by hand,
    // with `now`, as the unit tests do).
    std::chrono::milliseconds tick{200};
    std::function<Clock::time_point()> now = [] { return Clock::now(); };
  };

  explicit StreamWatch(Options options);
  ~StreamWatch();
  StreamWatch(const StreamWatch&) = delete;
  StreamWatch& operator=(const StreamWatch&) = delete;

  class Call;
  // Watches one call until the returned handle goes. `cancel` is called at
  // most once, from the watch thread (or Check()). idle: the longest one
  // read or write may wait; total: the longest the call may last (zero:
  // unbounded).
  std::unique_ptr<Call> Watch(std::function<void()> cancel, Clock::duration idle,
                              Clock::duration total);

  // Cancels every call past a deadline now.
  void Check();
  size_t calls() const;

 private:
  struct State;
  Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::list<std::shared_ptr<State>> calls_;  // guarded by mu_
  std::thread thread_;
};

class StreamWatch::Call {
 public:
  ~Call();
  // A read or write in progress, until the returned guard goes.
  class Op {
   public:
    explicit Op(std::shared_ptr<State> state);
    ~Op();
    Op(Op&&) = delete;

   private:
    std::shared_ptr<State> state_;
  };
  [[nodiscard]] Op Begin();
  // OK, or DeadlineExceeded saying which deadline cancelled the call.
  Status expired() const;

 private:
  friend class StreamWatch;
  Call(StreamWatch* watch, std::shared_ptr<State> state) : watch_(watch), state_(std::move(state)) {}
  StreamWatch* watch_;
  std::shared_ptr<State> state_;
};

}  // namespace attune::coordinator
