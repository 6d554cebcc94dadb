#include "kvtransfer/grpc/worker_pool.h"

#include <algorithm>
#include <exception>
#include <list>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"

namespace tessera::kvtransfer {

struct WorkerPool::State {
  explicit State(const WorkerPoolOptions& o) : options(o) {}

  struct Worker {
    std::function<void()> task;  // handed over by Run
    bool has_task = false;
    bool exited = false;  // the loop returned: join it
    std::thread thread;
  };

  // Joins (outside the lock) and forgets the threads that returned.
  void Reap() {
    std::vector<std::thread> exited;
    {
      absl::MutexLock lock(&mu);
      for (auto it = workers.begin(); it != workers.end();) {
        if (it->exited) {
          exited.push_back(std::move(it->thread));
          it = workers.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (std::thread& t : exited) t.join();
  }

  // `state` is the running thread's own reference (held by its closure for the thread's life).
  static void Loop(const std::shared_ptr<State>& state, Worker* w);

  void RemoveIdle(Worker* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    idle.erase(std::remove(idle.begin(), idle.end(), w), idle.end());
  }

  const WorkerPoolOptions options;
  mutable absl::Mutex mu;
  bool stopping ABSL_GUARDED_BY(mu) = false;
  bool closed ABSL_GUARDED_BY(mu) = false;  // the destructor returned: new threads are detached
  size_t alive ABSL_GUARDED_BY(mu) = 0;
  std::list<Worker> workers ABSL_GUARDED_BY(mu);  // stable addresses for the threads
  std::vector<Worker*> idle ABSL_GUARDED_BY(mu);  // a stack: the most recently idle is reused
};

namespace {

void RunTask(std::function<void()>& task) {
  try {
    task();
  } catch (const std::exception& e) {
    TESSERA_LOG(ERROR) << "WorkerPool: a task threw: " << e.what();
  } catch (...) {
    TESSERA_LOG(ERROR) << "WorkerPool: a task threw a non-standard exception";
  }
  task = nullptr;  // its captures go before the thread is idle again
}

}  // namespace

// The loop of one thread: run the task handed over, then wait idle for the next.
void WorkerPool::State::Loop(const std::shared_ptr<State>& state, Worker* w) {
  State& s = *state;
  s.mu.Lock();
  while (true) {
    if (w->has_task) {
      std::function<void()> task = std::move(w->task);
      w->task = nullptr;
      w->has_task = false;
      s.mu.Unlock();
      RunTask(task);
      s.mu.Lock();
      if (s.stopping) break;
      s.idle.push_back(w);
      continue;
    }
    if (s.stopping) {
      s.RemoveIdle(w);
      break;
    }
    auto ready = [&s, w]()
                     ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) { return w->has_task || s.stopping; };
    if (!s.mu.AwaitWithTimeout(absl::Condition(&ready), s.options.idle_timeout) &&
        s.idle.size() > s.options.max_idle) {
      s.RemoveIdle(w);
      break;
    }
  }
  w->exited = true;
  --s.alive;
  s.mu.Unlock();
}

WorkerPool::WorkerPool(const WorkerPoolOptions& options)
    : state_(std::make_shared<State>(options)) {}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&state_->mu);
    state_->stopping = true;
    auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) { return state_->alive == 0; };
    if (!state_->mu.AwaitWithTimeout(absl::Condition(&none), state_->options.stop_wait_limit)) {
      TESSERA_LOG(ERROR) << "WorkerPool: " << state_->alive << " task(s) still running after "
                         << state_->options.stop_wait_limit << "; detaching their threads";
      for (State::Worker& w : state_->workers) {
        if (!w.exited) w.thread.detach();
      }
    }
    state_->closed = true;
  }
  state_->Reap();
}

void WorkerPool::Run(std::function<void()> task) {
  state_->Reap();
  absl::MutexLock lock(&state_->mu);
  if (!state_->idle.empty()) {
    State::Worker* w = state_->idle.back();
    state_->idle.pop_back();
    w->task = std::move(task);
    w->has_task = true;
    return;
  }
  State::Worker& w = state_->workers.emplace_back();
  w.task = std::move(task);
  w.has_task = true;
  ++state_->alive;
  w.thread = std::thread(&State::Loop, state_, &w);
  if (state_->closed) w.thread.detach();
}

size_t WorkerPool::threads() const {
  absl::MutexLock lock(&state_->mu);
  return state_->alive;
}

size_t WorkerPool::idle_threads() const {
  absl::MutexLock lock(&state_->mu);
  return state_->idle.size();
}

bool WorkerPool::AwaitThreadsAtMost(size_t n, absl::Duration timeout) const {
  absl::MutexLock lock(&state_->mu);
  auto few = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state_->mu) { return state_->alive <= n; };
  return state_->mu.AwaitWithTimeout(absl::Condition(&few), timeout);
}

}  // namespace tessera::kvtransfer
