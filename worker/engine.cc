#include "worker/engine.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tessera::worker {

Engine::Engine(StepExecutor& executor, std::unique_ptr<Scheduler> scheduler,
               const EngineOptions& options, Clock& clock)
    : executor_(executor), options_(options), clock_(clock), scheduler_(std::move(scheduler)) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(StepExecutor& executor,
                                                       const model::ModelConfig& config,
                                                       const EngineOptions& options, Clock& clock) {
  if (options.max_requests_in_flight <= 0 || options.idle_wait <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Engine: max_requests_in_flight (", options.max_requests_in_flight, ") and idle_wait (",
        absl::FormatDuration(options.idle_wait), ") must be positive"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Scheduler> scheduler,
                           Scheduler::Create(options.scheduler, executor.limits(), config));
  auto engine = std::unique_ptr<Engine>(new Engine(executor, std::move(scheduler), options, clock));
  engine->PublishCounters();
  absl::MutexLock lock(&engine->join_mu_);
  engine->thread_ = std::thread([e = engine.get()] { e->Run(); });
  return engine;
}

Engine::~Engine() {
  const absl::Status status = Shutdown(absl::ZeroDuration());
  if (!status.ok() && !absl::IsDeadlineExceeded(status)) {
    TESSERA_LOG(WARNING) << "engine stopped after a failure: " << status;
  }
}

absl::StatusOr<RequestId> Engine::Submit(Request request, std::shared_ptr<RequestSink> sink) {
  absl::Status status;
  std::unique_ptr<StopMatcher> stop_matcher;
  if (sink == nullptr) {
    status = absl::InvalidArgumentError("Submit: no sink");
  } else {
    status = scheduler_->Validate(request);
  }
  if (status.ok() && !request.sampling.stop.empty()) {
    if (options_.stop_matchers == nullptr) {
      status = absl::UnimplementedError(
          "stop strings need a tokenizer, which this engine was not given; use stop_token_ids");
    } else {
      absl::StatusOr<std::unique_ptr<StopMatcher>> matcher =
          options_.stop_matchers->Create(request.sampling.stop);
      if (matcher.ok()) {
        stop_matcher = *std::move(matcher);
      } else {
        status = matcher.status();
      }
    }
  }
  const absl::Time deadline = request.timeout == absl::InfiniteDuration()
                                  ? absl::InfiniteFuture()
                                  : clock_.MonotonicNow() + request.timeout;
  absl::MutexLock lock(&mu_);
  if (status.ok()) {
    if (!failure_.ok()) {
      status = absl::UnavailableError(absl::StrCat("the engine failed: ", failure_.message()));
    } else if (!accepting_) {
      status = absl::UnavailableError("the engine is shutting down");
    } else if (in_flight_ >= options_.max_requests_in_flight) {
      status = absl::ResourceExhaustedError(absl::StrCat(
          "the engine has ", in_flight_, " requests in flight (max_requests_in_flight)"));
    }
  }
  if (!status.ok()) {
    ++counters_.requests_rejected;
    return status;
  }
  const RequestId id = next_id_++;
  ++in_flight_;
  ++counters_.requests_submitted;
  Command command{Command::Kind::kSubmit,  id,      std::move(request), std::move(sink),
                  std::move(stop_matcher), deadline};
  inbox_.push_back(std::move(command));
  return id;
}

absl::StatusOr<std::shared_ptr<ResponseStream>> Engine::Submit(Request request) {
  auto stream = std::make_shared<ResponseStream>();
  TESSERA_ASSIGN_OR_RETURN(stream->request_id_, Submit(std::move(request), stream));
  return stream;
}

void Engine::Cancel(RequestId id) {
  absl::MutexLock lock(&mu_);
  Command command;
  command.kind = Command::Kind::kCancel;
  command.id = id;
  inbox_.push_back(std::move(command));
}

absl::Status Engine::Shutdown(absl::Duration drain_timeout) {
  {
    absl::MutexLock lock(&mu_);
    const absl::Time deadline =
        clock_.MonotonicNow() + std::max(drain_timeout, absl::ZeroDuration());
    accepting_ = false;
    drain_deadline_ = shutdown_ ? std::min(drain_deadline_, deadline) : deadline;
    shutdown_ = true;
  }
  {
    absl::MutexLock lock(&join_mu_);
    if (thread_.joinable()) {
      if (thread_.get_id() == std::this_thread::get_id()) {
        return absl::FailedPreconditionError("Engine::Shutdown called from a sink");
      }
      thread_.join();
    }
  }
  absl::MutexLock lock(&mu_);
  if (!failure_.ok()) return failure_;
  if (aborted_at_shutdown_ > 0) {
    return absl::DeadlineExceededError(
        absl::StrCat(aborted_at_shutdown_, " requests were aborted at shutdown"));
  }
  return absl::OkStatus();
}

EngineCounters Engine::counters() const {
  absl::MutexLock lock(&mu_);
  EngineCounters c = counters_;
  c.requests_in_flight = in_flight_;
  return c;
}

void Engine::Run() {
  // The thread's entry: sinks are the callers' code, so nothing they throw may escape.
  try {
    RunLoop();
  } catch (const std::exception& e) {
    TESSERA_LOG(ERROR) << "engine thread: uncaught exception: " << e.what();
    absl::MutexLock lock(&mu_);
    failure_ = absl::InternalError(absl::StrCat("engine thread: ", e.what()));
    accepting_ = false;
  } catch (...) {
    TESSERA_LOG(ERROR) << "engine thread: uncaught exception";
    absl::MutexLock lock(&mu_);
    failure_ = absl::InternalError("engine thread: uncaught exception");
    accepting_ = false;
  }
}

void Engine::RunLoop() {
  for (;;) {
    std::vector<Command> commands;
    bool stopping;
    absl::Time drain_deadline;
    {
      absl::MutexLock lock(&mu_);
      if (!scheduler_->HasWork() && inbox_.empty() && !shutdown_) {
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !inbox_.empty() || shutdown_;
        };
        mu_.AwaitWithTimeout(absl::Condition(&woken), options_.idle_wait);
      }
      commands.swap(inbox_);
      stopping = shutdown_;
      drain_deadline = drain_deadline_;
    }
    ApplyCommands(commands);
    ExpireDeadlines();
    absl::Status failure;
    if (stopping && (!scheduler_->HasWork() || clock_.MonotonicNow() >= drain_deadline)) {
      failure = absl::AbortedError("the engine shut down");
    } else if (scheduler_->HasWork()) {
      failure = Step();
    } else {
      failure = executor_.Idle();
    }
    if (!failure.ok()) {
      // Last rites: nothing more is accepted; whatever is queued or running ends with `failure`.
      {
        absl::MutexLock lock(&mu_);
        accepting_ = false;
        commands.clear();
        commands.swap(inbox_);
        if (!absl::IsAborted(failure)) failure_ = failure;
      }
      ApplyCommands(commands);
      const auto aborted = static_cast<int64_t>(live_.size());
      EndAll(failure);
      {
        absl::MutexLock lock(&mu_);
        if (absl::IsAborted(failure)) aborted_at_shutdown_ = aborted;
      }
      PublishCounters();
      return;
    }
    PublishCounters();
  }
}

void Engine::ApplyCommands(std::vector<Command>& commands) {
  for (Command& command : commands) {
    if (command.kind == Command::Kind::kCancel) {
      if (live_.contains(command.id)) End(command.id, absl::CancelledError("request cancelled"));
      continue;
    }
    live_[command.id] = Live{std::move(command.sink), command.deadline};
    const absl::Status added =
        scheduler_->Add(command.id, std::move(command.request), std::move(command.stop_matcher));
    if (!added.ok()) End(command.id, added);
  }
}

void Engine::ExpireDeadlines() {
  const absl::Time now = clock_.MonotonicNow();
  std::vector<RequestId> expired;
  for (const auto& [id, live] : live_) {
    if (live.deadline <= now) expired.push_back(id);
  }
  std::sort(expired.begin(), expired.end());
  for (RequestId id : expired) End(id, absl::DeadlineExceededError("the request timed out"));
}

absl::Status Engine::Step() {
  const StepPlan plan = scheduler_->Schedule();
  if (plan.token_ids.empty()) {
    scheduler_->DiscardStep();
    return absl::InternalError("the scheduler planned an empty step while requests wait");
  }
  absl::StatusOr<StepResult> result = executor_.Execute(plan);
  if (!result.ok()) {
    scheduler_->DiscardStep();
    return result.status();
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<TokenEvent> events, scheduler_->Update(*result));
  for (const TokenEvent& event : events) Deliver(event);
  return absl::OkStatus();
}

void Engine::End(RequestId id, absl::Status status) {
  scheduler_->Abort(id);
  TokenEvent event;
  event.request_id = id;
  event.finish_reason = FinishReason::kAbort;
  event.status = std::move(status);
  Deliver(event);
}

void Engine::EndAll(const absl::Status& status) {
  std::vector<RequestId> ids;
  for (const auto& [id, live] : live_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (RequestId id : ids) End(id, status);
}

void Engine::Deliver(const TokenEvent& event) {
  const auto it = live_.find(event.request_id);
  if (it == live_.end()) return;
  std::shared_ptr<RequestSink> sink = it->second.sink;
  if (event.finish_reason.has_value()) {
    live_.erase(it);
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
  sink->OnEvent(event);
}

void Engine::PublishCounters() {
  const SchedulerCounters c = scheduler_->counters();
  absl::MutexLock lock(&mu_);
  static_cast<SchedulerCounters&>(counters_) = c;
}

absl::StatusOr<std::vector<RequestOutput>> GenerateAll(Engine& engine,
                                                       const std::vector<Request>& requests,
                                                       absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::shared_ptr<ResponseStream>> streams;
  for (size_t i = 0; i < requests.size(); ++i) {
    absl::StatusOr<std::shared_ptr<ResponseStream>> stream = engine.Submit(requests[i]);
    if (!stream.ok()) {
      for (const auto& s : streams) engine.Cancel(s->request_id());
      return absl::Status(stream.status().code(),
                          absl::StrCat("request ", i, ": ", stream.status().message()));
    }
    streams.push_back(*std::move(stream));
  }
  std::vector<RequestOutput> outputs;
  for (const auto& stream : streams) {
    absl::StatusOr<RequestOutput> out =
        stream->Collect(std::max(absl::ZeroDuration(), deadline - absl::Now()));
    if (!out.ok()) {
      for (const auto& s : streams) engine.Cancel(s->request_id());
      return out.status();
    }
    outputs.push_back(*std::move(out));
  }
  return outputs;
}

}  // namespace tessera::worker
