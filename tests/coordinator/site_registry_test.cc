// SiteRegistry on a FakeClock: the roster and its changes, task streams
// (generations, queues), and liveness by heartbeat timeout.
#include "attune/coordinator/site_registry.h"

#include <gtest/gtest.h>

namespace attune::coordinator {
namespace {

using namespace std::chrono_literals;

Task Named(const std::string& id) {
  Task t;
  t.task_id = id;
  return t;
}

TEST(SiteRegistry, AuthorizesTheRosterOnlyAndFollowsItsChanges) {
  FakeClock clock;
  SiteRegistry r(&clock, 30s, {"a", "b", "c"}, {"c"});
  EXPECT_TRUE(r.Authorize("a", "s").ok());
  EXPECT_EQ(r.Authorize("c", "s").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(r.Authorize("c", "s").message().find("was revoked"), std::string::npos);
  EXPECT_EQ(r.Authorize("z", "s").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(r.Authorize("z", "s").message().find("not on the roster of study 's'"),
            std::string::npos);
  EXPECT_EQ(r.Admitted(), 2u);

  // a streams, then the study file drops a, reinstates c and adds d.
  r.Join("a", 10, {});
  const uint64_t gen = r.Subscribe("a", std::nullopt);
  r.Send("a", Named("t1"));
  StudyConfig next;
  next.roster = {"b", "c", "d"};
  const auto change = r.Apply(next);
  EXPECT_EQ(change.added, std::vector<std::string>({"d"}));
  EXPECT_EQ(change.revoked, std::vector<std::string>({"a"}));
  EXPECT_EQ(change.reinstated, std::vector<std::string>({"c"}));
  EXPECT_EQ(r.Authorize("a", "s").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(r.Authorize("c", "s").ok());
  EXPECT_TRUE(r.Authorize("d", "s").ok());
  // a's stream ended with its queue: it is told so, and gets nothing.
  EXPECT_TRUE(r.Ready("a", gen));
  EXPECT_EQ(r.Take("a", gen).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(r.Alive("a", clock.Now()));
}

TEST(SiteRegistry, AStreamGivesItsTasksInOrderUntilANewSubscribeReplacesIt) {
  FakeClock clock;
  SiteRegistry r(&clock, 30s, {"a"}, {});
  r.Join("a", 10, {"age"});
  EXPECT_EQ(r.TrainSamples("a"), 10);
  EXPECT_EQ(r.Features("a"), std::vector<std::string>({"age"}));
  const uint64_t first = r.Subscribe("a", std::nullopt);
  EXPECT_FALSE(r.Ready("a", first));
  r.Send("a", Named("t1"));
  r.Send("a", Named("t2"));
  EXPECT_EQ((*r.Take("a", first))->task_id, "t1");
  EXPECT_EQ((*r.Take("a", first))->task_id, "t2");
  EXPECT_FALSE(r.Take("a", first)->has_value());
  r.Send("a", Named("t3"));
  // A restarted worker subscribes again: the old stream is cancelled and
  // what was queued for it dropped; the new one starts with `first` task.
  const uint64_t second = r.Subscribe("a", Named("finish"));
  EXPECT_NE(first, second);
  EXPECT_TRUE(r.Ready("a", first));
  EXPECT_EQ(r.Take("a", first).status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ((*r.Take("a", second))->task_id, "finish");
  EXPECT_FALSE(r.Unsubscribe("a", first));  // not the current stream
  EXPECT_TRUE(r.Unsubscribe("a", second));
  EXPECT_FALSE(r.Alive("a", clock.Now()));
}

TEST(SiteRegistry, ASiteIsAliveUntilItsHeartbeatTimeoutPasses) {
  FakeClock clock;
  SiteRegistry r(&clock, 30s, {"a", "b"}, {});
  for (const char* s : {"a", "b"}) {
    r.Join(s, 1, {});
    r.Subscribe(s, std::nullopt);
  }
  EXPECT_EQ(r.Live(), std::vector<std::string>({"a", "b"}));
  EXPECT_EQ(r.Expiry("a"), clock.Now() + 30s);
  clock.Advance(20s);
  r.Heartbeat("a", "training 1/2");
  clock.Advance(10s);  // b: exactly 30 s of silence
  EXPECT_EQ(r.Live(), std::vector<std::string>({"a"}));
  EXPECT_TRUE(r.Alive("a", clock.Now()));
  EXPECT_FALSE(r.Alive("b", clock.Now()));
  const auto views = r.Views();
  ASSERT_EQ(views.size(), 2u);
  EXPECT_EQ(views[0].progress, "training 1/2");
  EXPECT_EQ(views[0].last_seen_ms_ago, 10000);
  EXPECT_EQ(views[1].last_seen_ms_ago, 30000);
  EXPECT_FALSE(views[1].alive);
  clock.Advance(20s);
  EXPECT_TRUE(r.Live().empty());
}

}  // namespace
}  // namespace attune::coordinator
