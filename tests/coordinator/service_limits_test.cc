// The coordinator's bounds on callers, in one process with a fake clock:
// StreamWatch cancels a call whose read or write waits past the idle
// limit, or that outlives its total limit, and nothing else;
// RefusalLimiter lets a burst through, then one per interval, and counts
// every refusal it leaves out.
#include <gtest/gtest.h>

#include <atomic>

#include "attune/coordinator/refusal_limiter.h"
#include "attune/coordinator/stream_watch.h"

namespace attune::coordinator {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class FakeClock {
 public:
  StreamWatch::Clock::time_point now() const { return now_; }
  void Advance(StreamWatch::Clock::duration d) { now_ += d; }

 private:
  StreamWatch::Clock::time_point now_ = StreamWatch::Clock::time_point() + seconds(1000);
};

StreamWatch::Options Manual(FakeClock* clock) {
  StreamWatch::Options o;
  o.tick = milliseconds(0);  // no thread: Check() by hand
  o.now = [clock] { return clock->now(); };
  return o;
}

TEST(StreamWatchTest, AReadThatWaitsPastTheIdleLimitCancelsTheCall) {
  FakeClock clock;
  StreamWatch watch(Manual(&clock));
  std::atomic<int> cancelled{0};
  auto call = watch.Watch([&] { ++cancelled; }, seconds(5), seconds(0));
  {
    auto op = call->Begin();
    clock.Advance(seconds(4));
    watch.Check();
    EXPECT_EQ(cancelled, 0);
  }
  // Between reads the caller's time is not counted: the server is working.
  clock.Advance(seconds(60));
  watch.Check();
  EXPECT_EQ(cancelled, 0);
  EXPECT_TRUE(call->expired().ok());
  auto op = call->Begin();
  clock.Advance(seconds(6));
  watch.Check();
  watch.Check();  // once only
  EXPECT_EQ(cancelled, 1);
  EXPECT_TRUE(absl::IsDeadlineExceeded(call->expired())) << call->expired();
  EXPECT_NE(call->expired().message().find("limit for one read or write is 5 s"),
            std::string::npos)
      << call->expired();
}

TEST(StreamWatchTest, ACallOpenPastItsTotalLimitIsCancelledEvenWhileItMoves) {
  FakeClock clock;
  StreamWatch watch(Manual(&clock));
  int cancelled = 0;
  auto call = watch.Watch([&] { ++cancelled; }, seconds(5), seconds(30));
  for (int i = 0; i < 10; ++i) {  // a read every 3 s: never idle
    auto op = call->Begin();
    clock.Advance(seconds(3));
    watch.Check();
  }
  EXPECT_EQ(cancelled, 0);
  clock.Advance(seconds(1));
  watch.Check();
  EXPECT_EQ(cancelled, 1);
  EXPECT_NE(call->expired().message().find("limit of 30 s"), std::string::npos)
      << call->expired();
}

TEST(StreamWatchTest, FinishedCallsAreForgotten) {
  FakeClock clock;
  StreamWatch watch(Manual(&clock));
  {
    auto a = watch.Watch([] {}, seconds(1), seconds(0));
    auto b = watch.Watch([] {}, seconds(1), seconds(0));
    EXPECT_EQ(watch.calls(), 2u);
  }
  EXPECT_EQ(watch.calls(), 0u);
}

TEST(StreamWatchTest, TheWatchThreadCancelsWithoutBeingAsked) {
  StreamWatch watch(StreamWatch::Options{.tick = milliseconds(10)});
  std::mutex mu;
  std::condition_variable cv;
  bool cancelled = false;
  auto call = watch.Watch(
      [&] {
        std::lock_guard<std::mutex> lock(mu);
        cancelled = true;
        cv.notify_all();
      },
      milliseconds(50), seconds(0));
  auto op = call->Begin();
  std::unique_lock<std::mutex> lock(mu);
  EXPECT_TRUE(cv.wait_for(lock, seconds(10), [&] { return cancelled; }));
}

TEST(RefusalLimiterTest, ABurstThenOnePerIntervalAndEveryOtherOneCounted) {
  RefusalLimiter limiter({.burst = 3, .interval = milliseconds(1000), .max_callers = 8});
  auto t = RefusalLimiter::Clock::time_point() + seconds(100);
  int64_t left_out = -1;
  int logged = 0;
  for (int i = 0; i < 10; ++i) logged += limiter.Admit("site-1", t, &left_out) ? 1 : 0;
  EXPECT_EQ(logged, 3);
  // Another caller has its own budget.
  EXPECT_TRUE(limiter.Admit("site-2", t, &left_out));
  EXPECT_EQ(left_out, 0);
  // A second later one more is logged, and it says 7 were left out.
  EXPECT_FALSE(limiter.Admit("site-1", t + milliseconds(500), &left_out));
  ASSERT_TRUE(limiter.Admit("site-1", t + milliseconds(1000), &left_out));
  EXPECT_EQ(left_out, 8);
  EXPECT_FALSE(limiter.Admit("site-1", t + milliseconds(1000), &left_out));
  EXPECT_EQ(limiter.TakeLeftOut(), (std::map<std::string, int64_t>{{"site-1", 1}}));
  EXPECT_TRUE(limiter.TakeLeftOut().empty());
}

TEST(RefusalLimiterTest, CallersPastTheLimitShareOneBudget) {
  RefusalLimiter limiter({.burst = 2, .interval = milliseconds(1000), .max_callers = 2});
  const auto t = RefusalLimiter::Clock::time_point() + seconds(100);
  int64_t left_out = 0;
  EXPECT_TRUE(limiter.Admit("a", t, &left_out));
  EXPECT_TRUE(limiter.Admit("b", t, &left_out));
  int logged = 0;
  for (int i = 0; i < 100; ++i) {
    logged += limiter.Admit("peer " + std::to_string(i), t, &left_out) ? 1 : 0;
  }
  EXPECT_EQ(logged, 2);
  EXPECT_EQ(limiter.TakeLeftOut().at("(other callers)"), 98);
}

}  // namespace
}  // namespace attune::coordinator
