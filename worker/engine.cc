#include "worker/engine.h"

#include <algorithm>
#include <exception>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tessera::worker {
namespace {

absl::Status NoKvPort() {
  return absl::FailedPreconditionError(
      "this replica has no KV transport: it cannot take part in disaggregated serving");
}

}  // namespace

Engine::Engine(StepExecutor& executor, std::unique_ptr<Scheduler> scheduler,
               const EngineOptions& options, std::vector<int64_t> eos_token_ids, Clock& clock)
    : executor_(executor),
      options_(options),
      eos_token_ids_(std::move(eos_token_ids)),
      clock_(clock),
      scheduler_(std::move(scheduler)),
      kv_answers_(std::make_shared<KvAnswers>()) {
  kv_answers_->engine = this;
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(StepExecutor& executor,
                                                       const model::ModelConfig& config,
                                                       const EngineOptions& options, Clock& clock) {
  if (options.max_requests_in_flight <= 0 || options.idle_wait <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Engine: max_requests_in_flight (", options.max_requests_in_flight, ") and idle_wait (",
        absl::FormatDuration(options.idle_wait), ") must be positive"));
  }
  // Pipelined steps as the executor allows them. KV commands keep their order with the steps on
  // every rank; a replica's layer streams open with the step that writes their layers.
  SchedulerConfig scheduling = options.scheduler;
  scheduling.max_steps_in_flight = std::max(executor.max_steps_in_flight(), 1);
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Scheduler> scheduler,
                           Scheduler::Create(scheduling, executor.limits(), config));
  auto engine = std::unique_ptr<Engine>(
      new Engine(executor, std::move(scheduler), options, config.eos_token_ids, clock));
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
  absl::MutexLock lock(&kv_answers_->mu);
  kv_answers_->engine = nullptr;
}

absl::StatusOr<RequestId> Engine::Submit(Request request, std::shared_ptr<RequestSink> sink) {
  absl::Status status;
  std::unique_ptr<StopMatcher> stop_matcher;
  if (sink == nullptr) {
    status = absl::InvalidArgumentError("Submit: no sink");
  } else {
    status = scheduler_->Validate(request);
  }
  if (status.ok() && options_.kv_port == nullptr &&
      (request.kv_destination.has_value() || request.kv_import.has_value())) {
    status = NoKvPort();
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
  std::unique_ptr<model::TokenConstraint> constraint;
  if (status.ok()) {
    absl::StatusOr<std::unique_ptr<model::TokenConstraint>> made = MakeConstraint(request.sampling);
    if (made.ok()) {
      constraint = *std::move(made);
    } else {
      status = made.status();
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
  command.constraint = std::move(constraint);
  inbox_.push_back(std::move(command));
  return id;
}

absl::StatusOr<std::unique_ptr<model::TokenConstraint>> Engine::MakeConstraint(
    const SamplingParams& sampling) const {
  if (sampling.structured_output.kind == model::StructuredOutput::Kind::kNone) return nullptr;
  if (options_.token_vocabulary == nullptr) {
    return absl::InvalidArgumentError(
        "structured outputs need the model's tokenizer on the replica, and this one has none (a "
        "model directory with a byte-level tokenizer.json)");
  }
  // The output may end (EOS, a stop token) once it is a whole value of the grammar.
  std::vector<int32_t> end_tokens = sampling.stop_token_ids;
  if (!sampling.ignore_eos) {
    for (const int64_t eos : eos_token_ids_) end_tokens.push_back(static_cast<int32_t>(eos));
  }
  return model::TokenConstraint::Create(sampling.structured_output, *options_.token_vocabulary,
                                        std::move(end_tokens));
}

absl::StatusOr<std::shared_ptr<ResponseStream>> Engine::Submit(Request request) {
  auto stream = std::make_shared<ResponseStream>();
  TESSERA_ASSIGN_OR_RETURN(stream->request_id_, Submit(std::move(request), stream));
  return stream;
}

struct Engine::ReserveReply {
  absl::Notification done;
  absl::StatusOr<KvDestination> result;
};

absl::StatusOr<KvDestination> Engine::ReserveKv(const Request& request, absl::Duration timeout) {
  if (options_.kv_port == nullptr) return NoKvPort();
  TESSERA_RETURN_IF_ERROR(scheduler_->Validate(request));
  auto reply = std::make_shared<ReserveReply>();
  {
    absl::MutexLock lock(&mu_);
    if (!failure_.ok() || !accepting_) {
      return absl::UnavailableError("the engine is not accepting requests");
    }
    Command command;
    command.kind = Command::Kind::kReserve;
    command.request = request;
    command.reply = reply;
    inbox_.push_back(std::move(command));
  }
  if (!reply->done.WaitForNotificationWithTimeout(timeout)) {
    // The reservation, if it is made later, lapses with its lease.
    return absl::DeadlineExceededError("the engine did not answer the KV reservation in time");
  }
  return reply->result;
}

void Engine::ReleaseKv(uint64_t token) {
  absl::MutexLock lock(&mu_);
  Command command;
  command.kind = Command::Kind::kRelease;
  command.token = token;
  inbox_.push_back(std::move(command));
}

void Engine::RenewKv(const std::vector<uint64_t>& tokens) {
  absl::MutexLock lock(&mu_);
  Command command;
  command.kind = Command::Kind::kRenew;
  command.tokens = tokens;
  inbox_.push_back(std::move(command));
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
      if ((!Busy() || stalled_) && inbox_.empty() && !shutdown_) {
        auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return !inbox_.empty() || shutdown_;
        };
        // KV sends in flight are polled often; otherwise sleep until there is something to do.
        mu_.AwaitWithTimeout(absl::Condition(&woken),
                             exports_.empty() ? options_.idle_wait : absl::Microseconds(200));
      }
      commands.swap(inbox_);
      stopping = shutdown_;
      drain_deadline = drain_deadline_;
    }
    ApplyCommands(commands);
    ExpireDeadlines();
    PollExports();
    absl::Status failure;
    if (stopping && (!Busy() || clock_.MonotonicNow() >= drain_deadline)) {
      failure = absl::AbortedError("the engine shut down");
    } else if (Busy()) {
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
      step_streams_.clear();  // their sends stop before the blocks return
      // Steps still in flight are never applied now: their aborted sequences' blocks return.
      scheduler_->DiscardStep();
      std::vector<uint64_t> tokens;
      for (const auto& [token, lease] : reservations_) tokens.push_back(token);
      for (auto& [token, r] : reserving_) {
        r.reply->result = absl::UnavailableError(absl::StrCat(
            "the engine stopped before the KV reservation was made: ", failure.message()));
        r.reply->done.Notify();
        tokens.push_back(token);
      }
      reserving_.clear();
      for (const auto& [id, c] : committing_) tokens.push_back(c.token);
      committing_.clear();
      for (uint64_t token : tokens) ReleaseReservation(token, "the engine stopped");
      // The followers' parts of those aborts go now; their answers return the blocks before the
      // counters are published for the last time.
      (void)executor_.Idle();
      {
        absl::MutexLock lock(&mu_);
        commands.clear();
        for (Command& c : inbox_) {
          if (c.kind == Command::Kind::kAborted) commands.push_back(std::move(c));
        }
        inbox_.clear();
      }
      ApplyCommands(commands);
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
    switch (command.kind) {
      case Command::Kind::kCancel:
        if (live_.contains(command.id)) End(command.id, absl::CancelledError("request cancelled"));
        break;
      case Command::Kind::kReserve:
        Reserve(command);
        break;
      case Command::Kind::kRelease:
        if (reservations_.contains(command.token)) {
          ReleaseReservation(command.token, "released by the coordinator");
        }
        break;
      case Command::Kind::kRenew:
        for (uint64_t token : command.tokens) {
          auto it = reservations_.find(token);
          if (it != reservations_.end()) {
            it->second = clock_.MonotonicNow() + options_.kv_reservation_lease;
          }
        }
        break;
      case Command::Kind::kSubmit:
        Submitted(command);
        break;
      case Command::Kind::kReserved:
        Reserved(command.token, std::move(command.kv_status));
        break;
      case Command::Kind::kCommitted:
        Committed(command.id, std::move(command.kv_status));
        break;
      case Command::Kind::kAborted:
        Aborted(command.token, command.kv_status);
        break;
    }
  }
}

void Engine::Submitted(Command& command) {
  live_[command.id] = Live{std::move(command.sink), command.deadline, clock_.MonotonicNow()};
  absl::Status added;
  if (command.request.kv_import.has_value()) {
    const uint64_t token = command.request.kv_import->token;
    if (!reservations_.contains(token)) {
      added = absl::NotFoundError(absl::StrCat(
          "KV reservation ", token, " is unknown or expired; prefill the request again"));
    } else {
      // No lease while the commit runs; the request joins the scheduler when every rank has
      // verified its part (Committed).
      reservations_.erase(token);
      Committing& c = committing_[command.id];
      c.token = token;
      c.request = std::move(command.request);
      c.stop_matcher = std::move(command.stop_matcher);
      c.constraint = std::move(command.constraint);
      options_.kv_port->CommitAsync(token, c.request.kv_import->checksums,
                                    kv_answers_->To(Command::Kind::kCommitted, command.id, 0));
      return;
    }
  } else {
    added = scheduler_->Add(command.id, std::move(command.request), std::move(command.stop_matcher),
                            std::move(command.constraint));
  }
  if (!added.ok()) End(command.id, added);
}

void Engine::Committed(RequestId id, absl::Status status) {
  auto node = committing_.extract(id);
  if (node.empty()) return;
  Committing& c = node.mapped();
  if (!live_.contains(id)) {
    // Ended while its KV was verified (cancelled, timed out).
    ReleaseReservation(c.token, "its request ended");
    return;
  }
  absl::Status added = std::move(status);
  if (added.ok()) {
    added = scheduler_->AddPrefilled(id, std::move(c.request), std::move(c.stop_matcher),
                                     std::move(c.constraint));
  }
  // Refused KV (or a refused sequence): the blocks go back, unless writes may still land.
  if (!added.ok()) {
    ReleaseReservation(c.token, "its KV was refused");
    End(id, added);
  }
}

void Engine::Reserve(Command& command) {
  uint64_t token = 0;
  while (token == 0 || reservations_.contains(token) || reserving_.contains(token)) {
    token = absl::Uniform<uint64_t>(bitgen_);
  }
  absl::StatusOr<Scheduler::KvReservationBlocks> blocks =
      scheduler_->Reserve(token, command.request);
  if (!blocks.ok()) {
    command.reply->result = blocks.status();
    command.reply->done.Notify();
    return;
  }
  // Answered when every rank has reserved (Reserved).
  Reserving& r = reserving_[token];
  r.reply = std::move(command.reply);
  r.blocks = *std::move(blocks);
  options_.kv_port->ReserveAsync(token, r.blocks.fresh,
                                 kv_answers_->To(Command::Kind::kReserved, 0, token));
}

void Engine::Reserved(uint64_t token, absl::Status status) {
  auto node = reserving_.extract(token);
  if (node.empty()) return;
  Reserving& r = node.mapped();
  if (!status.ok()) {
    (void)scheduler_->ReleaseReservation(token);
    r.reply->result = std::move(status);
    r.reply->done.Notify();
    return;
  }
  reservations_[token] = clock_.MonotonicNow() + options_.kv_reservation_lease;
  KvDestination d;
  d.token = token;
  d.num_cached_tokens = r.blocks.num_cached_tokens;
  d.block_ids = std::move(r.blocks.fresh);
  d.ranks = options_.kv_port->layouts();
  r.reply->result = std::move(d);
  r.reply->done.Notify();
}

KvEndpoint::Done Engine::KvAnswers::To(Command::Kind kind, RequestId id, uint64_t token) {
  return [self = shared_from_this(), kind, id, token](absl::Status status) {
    Command answer;
    answer.kind = kind;
    answer.id = id;
    answer.token = token;
    answer.kv_status = std::move(status);
    absl::MutexLock lock(&self->mu);
    if (self->engine == nullptr) return;  // the engine is gone, and what the answer concerns
    absl::MutexLock engine_lock(&self->engine->mu_);
    self->engine->inbox_.push_back(std::move(answer));
  };
}

void Engine::ReleaseReservation(uint64_t token, const char* why) {
  reservations_.erase(token);
  aborting_[token] = why;
  options_.kv_port->AbortAsync(token, kv_answers_->To(Command::Kind::kAborted, 0, token));
}

void Engine::Aborted(uint64_t token, const absl::Status& status) {
  auto node = aborting_.extract(token);
  if (node.empty()) return;
  if (!status.ok() && !absl::IsNotFound(status)) {
    // Writes may still land in its blocks: they stay reserved (never reused) rather than risk it.
    TESSERA_LOG(ERROR) << "KV reservation " << token << " (" << node.mapped() << "): " << status;
    return;
  }
  (void)scheduler_->ReleaseReservation(token);
}

void Engine::ExpireDeadlines() {
  const absl::Time now = clock_.MonotonicNow();
  std::vector<RequestId> expired;
  for (const auto& [id, live] : live_) {
    if (live.deadline <= now) expired.push_back(id);
  }
  std::sort(expired.begin(), expired.end());
  for (RequestId id : expired) End(id, absl::DeadlineExceededError("the request timed out"));
  std::vector<uint64_t> lapsed;
  for (const auto& [token, lease] : reservations_) {
    if (lease <= now) lapsed.push_back(token);
  }
  for (uint64_t token : lapsed) ReleaseReservation(token, "its lease expired");
}

void Engine::StartExport(TokenEvent event, StreamedKv* streamed) {
  const RequestId id = event.request_id;
  const Scheduler::KvExportBlocks* x = scheduler_->ExportOf(id);
  TESSERA_CHECK(x != nullptr) << "no export for request " << id;
  absl::StatusOr<std::unique_ptr<KvExport>> transfer;
  if (streamed == nullptr) {
    transfer = options_.kv_port->Export(x->blocks, x->destination);
  } else if (!streamed->error.ok()) {
    streamed->parts.clear();  // cancels; returns once local memory is no longer read
    transfer = streamed->error;
  } else {
    transfer = CombineExports(std::move(streamed->parts));
  }
  const absl::Time now = clock_.MonotonicNow();
  // The first token exists now; its event waits for the KV to be sent.
  if (auto it = live_.find(id);
      it != live_.end() && it->second.first_token == absl::InfinitePast()) {
    it->second.first_token = now;
  }
  exports_[id] = Export{
      nullptr, std::move(event),
      streamed != nullptr && streamed->started != absl::InfinitePast() ? streamed->started : now};
  if (!transfer.ok()) {
    EndExport(id, transfer.status());
    return;
  }
  exports_[id].transfer = std::move(*transfer);
}

void Engine::PollExports() {
  std::vector<RequestId> done;
  for (const auto& [id, x] : exports_) {
    if (x.transfer->Done()) done.push_back(id);
  }
  std::sort(done.begin(), done.end());
  for (RequestId id : done) {
    absl::StatusOr<std::vector<KvSegmentChecksum>> sums =
        exports_[id].transfer->Wait(absl::ZeroDuration());
    if (sums.ok()) {
      Export x = std::move(exports_[id]);
      exports_.erase(id);
      scheduler_->ReleaseExport(id);
      x.event.kv_checksums = *std::move(sums);
      x.event.timings = RequestTimings{};
      x.event.timings->kv_send_seconds = absl::ToDoubleSeconds(clock_.MonotonicNow() - x.started);
      Deliver(std::move(x.event));
    } else {
      EndExport(id, sums.status());
    }
  }
}

void Engine::EndExport(RequestId id, const absl::Status& status) {
  Export x = std::move(exports_[id]);
  exports_.erase(id);
  x.transfer.reset();  // cancels; returns once local memory is no longer read
  scheduler_->ReleaseExport(id);
  x.event.kv_handoff = false;
  x.event.finish_reason = FinishReason::kAbort;
  // kAborted whatever the transport said: this replica is alive and answered; the coordinator
  // retries without blaming it (a dead decode replica shows itself when asked again).
  x.event.status = absl::AbortedError(
      absl::StrCat("sending the KV to the decode replica failed: ", status.ToString()));
  Deliver(std::move(x.event));
}

bool Engine::Busy() const { return scheduler_->HasWork() || scheduler_->steps_in_flight() > 0; }

absl::Status Engine::Step() {
  stalled_ = false;
  const int depth = scheduler_->config().max_steps_in_flight;
  if (scheduler_->steps_in_flight() < depth && scheduler_->HasWork()) {
    const StepPlan plan = scheduler_->Schedule();
    if (!plan.token_ids.empty()) {
      const absl::Time scheduled = clock_.MonotonicNow();
      for (RequestId id : scheduler_->TakeAdmitted()) {
        if (auto it = live_.find(id); it != live_.end()) it->second.admitted = scheduled;
      }
      if (absl::Status s = SubmitStreaming(plan); !s.ok()) {
        scheduler_->DiscardStep();
        return s;
      }
      // Room for another step: take new commands, then plan it (its sequences are others).
      if (scheduler_->steps_in_flight() < depth) return absl::OkStatus();
    } else if (scheduler_->steps_in_flight() == 0) {
      if (!scheduler_->HoldsBlocksOutsideSequences()) {
        return absl::InternalError("the scheduler planned an empty step while requests wait");
      }
      // The waiting requests need blocks that KV reservations or exports hold: they come back
      // with a commit, a release, an expired lease or a finished send. Wait for them (the
      // followers' keep-alives and posted commands go meanwhile).
      stalled_ = true;
      return executor_.Idle();
    }
  }
  absl::StatusOr<StepResult> result = executor_.Collect();
  if (result.ok()) FinishStreams();
  if (!result.ok()) {
    step_streams_.clear();  // what they started is cancelled
    scheduler_->DiscardStep();
    return result.status();
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<TokenEvent> events, scheduler_->Update(*result));
  for (TokenEvent& event : events) {
    const auto it = streaming_.find(event.request_id);
    if (event.kv_handoff) {
      StartExport(std::move(event), it == streaming_.end() ? nullptr : &it->second);
      if (it != streaming_.end()) streaming_.erase(it);
      continue;
    }
    // A first token that ends the request: its sends stop before the blocks can be reused.
    if (event.finish_reason.has_value() && it != streaming_.end()) streaming_.erase(it);
    Deliver(std::move(event));
  }
  return absl::OkStatus();
}

absl::Status Engine::SubmitStreaming(const StepPlan& plan) {
  // Preempted prompts: their blocks may already be another sequence's in this step. (Preemption
  // takes no sequence of a step in flight, so none of their streams is still open.)
  for (RequestId id : scheduler_->TakeKvSendsToCancel()) streaming_.erase(id);
  StepStreams streams;
  if (options_.kv_port != nullptr && options_.kv_stream_layers) {
    // Layer-wise streaming: the blocks this step fills (or, completing a prompt, the rest) go out
    // layer by layer as the step writes them.
    for (Scheduler::KvSend& send : scheduler_->KvSendsInStep()) {
      StreamedKv& s = streaming_[send.id];
      if (!s.error.ok()) continue;
      if (s.started == absl::InfinitePast()) s.started = clock_.MonotonicNow();
      absl::StatusOr<std::unique_ptr<KvLayerStream>> stream =
          options_.kv_port->StreamLayers(send.blocks, send.destination);
      if (!stream.ok()) {
        s.error = stream.status();
        continue;
      }
      streams.emplace_back(send.id, *std::move(stream));
    }
  }
  // This rank's layers are written during Submit (the followers report theirs themselves).
  const bool layered =
      !streams.empty() && executor_.SetKvWrittenCallback([&streams](int32_t layer) {
        for (auto& [id, stream] : streams) stream->LayerWritten(layer);
      });
  absl::Status submitted = executor_.Submit(plan);
  if (layered) executor_.SetKvWrittenCallback(nullptr);
  if (submitted.ok()) step_streams_.push_back(std::move(streams));
  return submitted;
}

void Engine::FinishStreams() {
  if (step_streams_.empty()) return;
  StepStreams streams = std::move(step_streams_.front());
  step_streams_.pop_front();
  for (auto& [id, stream] : streams) {
    const auto it = streaming_.find(id);
    // Ended while its step was in flight: dropping the stream cancels its sends, before the step
    // is applied and the blocks return.
    if (it == streaming_.end()) continue;
    absl::StatusOr<std::unique_ptr<KvExport>> part = stream->Finish();
    if (part.ok()) {
      it->second.parts.push_back(*std::move(part));
    } else {
      it->second.error = part.status();
    }
  }
}

void Engine::End(RequestId id, absl::Status status) {
  streaming_.erase(id);  // stops its sends before Abort frees the blocks
  if (exports_.contains(id)) {
    EndExport(id, status);
    return;
  }
  scheduler_->Abort(id);
  TokenEvent event;
  event.request_id = id;
  event.finish_reason = FinishReason::kAbort;
  event.status = std::move(status);
  Deliver(std::move(event));
}

void Engine::EndAll(const absl::Status& status) {
  std::vector<RequestId> ids;
  for (const auto& [id, live] : live_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (RequestId id : ids) End(id, status);
}

void Engine::Deliver(TokenEvent event) {
  const auto it = live_.find(event.request_id);
  if (it == live_.end()) return;
  Live& live = it->second;
  const absl::Time now = clock_.MonotonicNow();
  if (event.token_id >= 0 && live.first_token == absl::InfinitePast()) live.first_token = now;
  if (event.finish_reason.has_value()) {
    RequestTimings t = event.timings.value_or(RequestTimings{});
    const auto seconds = [](absl::Time from, absl::Time to) {
      return from == absl::InfinitePast() || to == absl::InfinitePast()
                 ? 0.0
                 : std::max(0.0, absl::ToDoubleSeconds(to - from));
    };
    const absl::Time admitted = live.admitted == absl::InfinitePast() ? now : live.admitted;
    t.queue_seconds = seconds(live.submitted, admitted);
    t.prefill_seconds = seconds(live.admitted, live.first_token);
    t.decode_seconds = std::max(0.0, seconds(live.first_token, now) - t.kv_send_seconds);
    event.timings = t;
  }
  std::shared_ptr<RequestSink> sink = live.sink;
  if (event.finish_reason.has_value()) {
    live_.erase(it);
    absl::MutexLock lock(&mu_);
    --in_flight_;
  }
  sink->OnEvent(event);
}

void Engine::PublishCounters() {
  const SchedulerCounters c = scheduler_->counters();
  const int64_t drains = executor_.pipeline_drains();
  absl::MutexLock lock(&mu_);
  static_cast<SchedulerCounters&>(counters_) = c;
  counters_.pipeline_drains = drains;
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
