// WorkerPool (kvtransfer/grpc): reuse of idle threads, no queueing, idle threads exiting.
#include "kvtransfer/grpc/worker_pool.h"

#include <atomic>

#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tessera::kvtransfer {
namespace {

TEST(GrpcTransportWorkerPoolTest, ReusesAnIdleThread) {
  WorkerPool pool;
  for (int i = 0; i < 20; ++i) {
    absl::Notification done;
    pool.Run([&done] { done.Notify(); });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    // Once the thread is back idle (it marks itself so just after the task), the next Run takes
    // it rather than starting another: one thread serves every task.
    const absl::Time give_up = absl::Now() + absl::Seconds(10);
    while (pool.idle_threads() < 1 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(1));
    ASSERT_EQ(pool.idle_threads(), 1u);
    EXPECT_EQ(pool.threads(), 1u);
  }
}

TEST(GrpcTransportWorkerPoolTest, NeverQueuesBehindARunningTask) {
  WorkerPool pool;
  constexpr int kTasks = 8;
  absl::BlockingCounter started(kTasks);
  absl::Notification release;
  // Each task blocks until every one has started: this finishes only if none waits for another.
  for (int i = 0; i < kTasks; ++i) {
    pool.Run([&] {
      started.DecrementCount();
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
    });
  }
  started.Wait();
  EXPECT_EQ(pool.threads(), static_cast<size_t>(kTasks));
  release.Notify();
}

TEST(GrpcTransportWorkerPoolTest, IdleThreadsBeyondMaxIdleExit) {
  WorkerPool pool(WorkerPoolOptions{/*max_idle=*/1, /*idle_timeout=*/absl::Milliseconds(20),
                                    /*stop_wait_limit=*/absl::Seconds(30)});
  constexpr int kTasks = 4;
  absl::BlockingCounter started(kTasks);
  absl::Notification release;
  for (int i = 0; i < kTasks; ++i) {
    pool.Run([&] {
      started.DecrementCount();
      release.WaitForNotificationWithTimeout(absl::Seconds(30));
    });
  }
  started.Wait();
  release.Notify();
  EXPECT_TRUE(pool.AwaitThreadsAtMost(1, absl::Seconds(30))) << pool.threads();
  // The one kept idle still serves.
  absl::Notification done;
  pool.Run([&done] { done.Notify(); });
  EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST(GrpcTransportWorkerPoolTest, DestructorWaitsForRunningTasks) {
  std::atomic<bool> finished{false};
  absl::Notification started;
  {
    WorkerPool pool;
    pool.Run([&] {
      started.Notify();
      absl::SleepFor(absl::Milliseconds(50));  // work, not synchronisation
      finished.store(true);
    });
    started.WaitForNotification();
  }
  EXPECT_TRUE(finished.load());
}

TEST(GrpcTransportWorkerPoolTest, ATaskMayRunAnother) {
  WorkerPool pool;
  absl::Notification inner_done;
  absl::Notification outer_done;
  pool.Run([&] {
    pool.Run([&] { inner_done.Notify(); });
    inner_done.WaitForNotificationWithTimeout(absl::Seconds(10));
    outer_done.Notify();
  });
  EXPECT_TRUE(outer_done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(inner_done.HasBeenNotified());
}

}  // namespace
}  // namespace tessera::kvtransfer
