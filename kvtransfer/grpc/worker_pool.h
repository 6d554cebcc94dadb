// WorkerPool: threads for GrpcTransport's blocking calls (one outgoing transfer each, plus the
// acknowledgement reader of a long one), reused so that a small transfer does not pay a thread
// start and join (about 2 ms on a loaded machine, more than the transfer itself).
//
// Run never queues: it hands the task to an idle thread or starts a new one, so tasks never wait
// behind each other (a transfer's peer_timeout watchdog must not count queueing as silence, and a
// task may block until another one runs). An idle thread waits for its next task; after
// idle_timeout, threads beyond max_idle idle ones exit.
//
// Threads: every method may be called from any thread, also from a task. The destructor waits up
// to stop_wait_limit for running tasks (their owners are expected to have ended them first), joins
// every thread that returned and detaches, with an error logged, those still running (they keep
// the pool's shared state alive, never the pool). Tasks must not throw; an exception that escapes
// one is caught and logged.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "absl/time/time.h"

namespace tessera::kvtransfer {

struct WorkerPoolOptions {
  size_t max_idle = 4;                              // idle threads kept past idle_timeout
  absl::Duration idle_timeout = absl::Seconds(30);  // idle threads beyond max_idle exit after it
  absl::Duration stop_wait_limit = absl::Seconds(30);
};

class WorkerPool {
 public:
  explicit WorkerPool(const WorkerPoolOptions& options = {});
  ~WorkerPool();

  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Runs `task` on an idle thread, or on a new one when none is idle.
  void Run(std::function<void()> task);

  // Threads alive (running a task or idle), and those idle.
  size_t threads() const;
  size_t idle_threads() const;
  // Waits until at most `n` threads are alive; false when `timeout` passed first.
  bool AwaitThreadsAtMost(size_t n, absl::Duration timeout) const;

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with every thread (a detached one outlives the pool)
};

}  // namespace tessera::kvtransfer
