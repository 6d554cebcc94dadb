// The in-process serving engine of one replica: a control thread that owns the Scheduler and the
// StepExecutor's calls, fed by a queue. Clients Submit requests and Cancel them from any thread;
// each request's tokens come back as TokenEvents through its RequestSink, on the engine thread.
// The serving layer puts this behind gRPC/HTTP; `tessera generate` uses it directly.
//
// Time: request timeouts are measured on the injected Clock (MonotonicNow), checked between
// steps, so tests drive them with a FakeClock. Waits inside the engine are bounded by real time
// (EngineOptions::idle_wait) so that no wait is unbounded.
//
// Errors: Submit returns kInvalidArgument (malformed or never-fitting request),
// kResourceExhausted (too many requests in flight), kUnimplemented (stop strings without a
// StopMatcherFactory), kUnavailable (shut down, or the executor failed). An executor failure ends
// every request in flight with that error; the engine accepts nothing afterwards.
//
// Thread-safety: every public method may be called from any thread, including from a sink on the
// engine thread — except Shutdown and the destructor, which must not be called from a sink.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "model/config.h"
#include "model/token_constraint.h"
#include "worker/kv_port.h"
#include "worker/request.h"
#include "worker/scheduler.h"
#include "worker/step.h"

namespace tessera::worker {

struct EngineOptions {
  SchedulerConfig scheduler;
  int32_t max_requests_in_flight = 4096;  // submitted, not finished; more: kResourceExhausted
  absl::Duration idle_wait = absl::Milliseconds(100);  // an idle engine thread re-checks this often
  StopMatcherFactory* stop_matchers = nullptr;         // not owned; must outlive the engine
  // Structured outputs: the model's vocabulary as bytes (not owned; must outlive the engine).
  // Null: requests with a structured_output fail with kInvalidArgument.
  const model::TokenVocabulary* token_vocabulary = nullptr;
  // Disaggregated serving: this replica's KV cache on transports — a KvPort, or a multi-rank
  // replica's ReplicaKvPort (not owned; must outlive the engine). Null: requests with
  // kv_destination or kv_import, and ReserveKv, fail with kFailedPrecondition.
  KvEndpoint* kv_port = nullptr;
  // A KV reservation not committed (Submit with kv_import) within this is released.
  absl::Duration kv_reservation_lease = absl::Seconds(30);
  // Prefill side: every prompt step sends the blocks it fills (the last one the rest), each layer
  // as soon as the step has written it, while later layers compute; false sends the whole prompt's
  // KV after the step that completes it (decision 0008, item 11).
  bool kv_stream_layers = true;
};

// Scheduler counters plus the engine's own.
struct EngineCounters : SchedulerCounters {
  int64_t requests_submitted = 0;
  int64_t requests_rejected = 0;  // Submit errors
  int64_t requests_in_flight = 0;
  int64_t pipeline_drains = 0;  // StepExecutor::pipeline_drains
};

class Engine {
 public:
  // Starts the control thread. `executor` (and `clock`) must outlive the engine; the engine is
  // the executor's only caller. kInvalidArgument for options the executor cannot meet.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(StepExecutor& executor,
                                                        const model::ModelConfig& config,
                                                        const EngineOptions& options,
                                                        Clock& clock = RealClock::Get());
  // Shutdown(absl::ZeroDuration()): requests in flight end with kAborted. Waits for the step in
  // progress (an executor step is bounded), never for requests.
  ~Engine();

  // Validates and queues a request; its events go to `sink` (shared by the caller and the engine
  // thread until the last event). Returns the request's id.
  absl::StatusOr<RequestId> Submit(Request request, std::shared_ptr<RequestSink> sink);
  // As above with a ResponseStream to read from (its request_id() is set).
  absl::StatusOr<std::shared_ptr<ResponseStream>> Submit(Request request);
  // Ends a request (finish reason kAbort, status kCancelled) and returns its blocks, at the next
  // step boundary. Unknown or finished ids are ignored.
  void Cancel(RequestId id);
  // Stops accepting requests, lets those in flight finish until `drain_timeout` has passed on the
  // clock, aborts the rest (kAborted), and stops the thread. OK when nothing had to be aborted,
  // kDeadlineExceeded otherwise, the executor's error if it failed. Idempotent.
  absl::Status Shutdown(absl::Duration drain_timeout);

  // Decode side of disaggregated serving: reserves this replica's blocks for `request`'s prompt
  // (its cached prefix is reused, not sent) under a fresh token, for kv_reservation_lease. The
  // prefill replica sends into it (Request::kv_destination); Submit with kv_import commits it.
  // kFailedPrecondition without a kv_port; kResourceExhausted when the cache has no room now;
  // kInvalidArgument as Submit; kUnavailable when the engine stopped; kDeadlineExceeded when the
  // engine thread did not answer within `timeout`.
  absl::StatusOr<KvDestination> ReserveKv(const Request& request,
                                          absl::Duration timeout = absl::Seconds(10));
  // Releases a reservation that will not be committed (the prefill failed, the request was
  // cancelled). Unknown tokens are ignored. Asynchronous: takes effect at the next step boundary.
  void ReleaseKv(uint64_t token);
  // Extends the leases of these reservations to kv_reservation_lease from now (the coordinator
  // still waits on them; it says so with every heartbeat). Unknown tokens are ignored.
  // Asynchronous, as ReleaseKv.
  void RenewKv(const std::vector<uint64_t>& tokens);

  // A snapshot, updated after every step and every queue drain.
  EngineCounters counters() const;
  const SchedulerConfig& config() const { return options_.scheduler; }

 private:
  struct ReserveReply;  // shared by ReserveKv's caller and the engine thread
  struct Command {
    // kReserved, kCommitted and kAborted are the KV endpoint's answers (ReserveAsync,
    // CommitAsync, AbortAsync).
    enum class Kind {
      kSubmit,
      kCancel,
      kReserve,
      kRelease,
      kRenew,
      kReserved,
      kCommitted,
      kAborted
    } kind;
    RequestId id = 0;  // kSubmit, kCancel, kCommitted
    Request request;
    std::shared_ptr<RequestSink> sink;
    std::unique_ptr<StopMatcher> stop_matcher;
    absl::Time deadline = absl::InfiniteFuture();
    std::unique_ptr<model::TokenConstraint> constraint;  // kSubmit
    uint64_t token = 0;                                  // kReserve, kRelease, kReserved, kAborted
    std::vector<uint64_t> tokens;                        // kRenew
    std::shared_ptr<ReserveReply> reply;                 // kReserve
    absl::Status kv_status;                              // kReserved, kCommitted, kAborted
  };
  // A reservation whose ranks have not all answered (KvEndpoint::ReserveAsync).
  struct Reserving {
    std::shared_ptr<ReserveReply> reply;
    Scheduler::KvReservationBlocks blocks;
  };
  // An imported request whose KV the ranks are verifying (KvEndpoint::CommitAsync).
  struct Committing {
    uint64_t token = 0;
    Request request;
    std::unique_ptr<StopMatcher> stop_matcher;
    std::unique_ptr<model::TokenConstraint> constraint;
  };
  // Where the KV endpoint's answers go: the engine's inbox while the engine lives. Shared with the
  // answers' handlers, which may run after the engine is gone (a replica's executor runs the last
  // ones when it stops).
  struct KvAnswers : std::enable_shared_from_this<KvAnswers> {
    absl::Mutex mu;
    Engine* engine ABSL_GUARDED_BY(mu) = nullptr;
    // A KvEndpoint::Done that queues a `kind` answer (about request `id` or reservation `token`)
    // in the engine's inbox.
    KvEndpoint::Done To(Command::Kind kind, RequestId id, uint64_t token);
  };
  struct Export {
    std::unique_ptr<KvExport> transfer;
    TokenEvent event;  // the request's last event, delivered when the transfer is done
    absl::Time started = absl::InfinitePast();
  };
  // What a request's prompt steps have sent of its KV so far (layer-wise streaming, chunk by
  // chunk): one export per step that sent blocks.
  struct StreamedKv {
    std::vector<std::unique_ptr<KvExport>> parts;
    absl::Status error;  // the first send that could not start
    absl::Time started = absl::InfinitePast();
  };
  struct Live {
    std::shared_ptr<RequestSink> sink;
    absl::Time deadline;
    // RequestTimings, on the clock's monotonic time.
    absl::Time submitted = absl::InfinitePast();
    absl::Time admitted = absl::InfinitePast();
    absl::Time first_token = absl::InfinitePast();
  };

  Engine(StepExecutor& executor, std::unique_ptr<Scheduler> scheduler, const EngineOptions& options,
         std::vector<int64_t> eos_token_ids, Clock& clock);
  // The request's structured-output constraint (null when it asks for none).
  absl::StatusOr<std::unique_ptr<model::TokenConstraint>> MakeConstraint(
      const SamplingParams& sampling) const;
  void Run();
  void RunLoop();
  // Engine-thread helpers.
  void ApplyCommands(std::vector<Command>& commands);
  void ExpireDeadlines();
  // Requests to schedule, or steps in flight.
  bool Busy() const;
  // Plans and submits a step while fewer than the executor's max_steps_in_flight are in flight
  // (returning at once while there is room for more), else collects and applies the oldest.
  absl::Status Step();
  void End(RequestId id, absl::Status status);  // aborts a live request with a final event
  void EndAll(const absl::Status& status);
  void Deliver(TokenEvent event);  // the last event gets the request's timings
  void PublishCounters();
  void Reserve(Command& command);
  void Reserved(uint64_t token, absl::Status status);
  void Submitted(Command& command);
  void Committed(RequestId id, absl::Status status);
  // Aborts the reservation on every rank; its blocks return when every rank has answered that
  // no write can land in them any more (Aborted).
  void ReleaseReservation(uint64_t token, const char* why);
  void Aborted(uint64_t token, const absl::Status& status);
  // `streamed`: what the request's steps already sent (null: send the whole request now).
  void StartExport(TokenEvent event, StreamedKv* streamed);
  // Submits `plan`; the sends it makes ready are streamed layer by layer while it executes, and
  // FinishStreams (after its Collect) adds what they sent to streaming_.
  absl::Status SubmitStreaming(const StepPlan& plan);
  // The oldest step's streams (step_streams_'s front) become their requests' parts.
  void FinishStreams();
  void PollExports();
  void EndExport(RequestId id, const absl::Status& status);

  StepExecutor& executor_;
  const EngineOptions options_;
  const std::vector<int64_t> eos_token_ids_;  // the model's
  Clock& clock_;
  std::unique_ptr<Scheduler> scheduler_;       // engine thread only (Validate: any thread)
  absl::flat_hash_map<RequestId, Live> live_;  // engine thread only
  absl::flat_hash_map<uint64_t, absl::Time> reservations_;  // token -> lease end; engine thread
  absl::flat_hash_map<uint64_t, Reserving> reserving_;      // by token; engine thread
  absl::flat_hash_map<RequestId, Committing> committing_;   // engine thread
  // Reservations being aborted (AbortAsync), by token: why, for the log; engine thread.
  absl::flat_hash_map<uint64_t, const char*> aborting_;
  const std::shared_ptr<KvAnswers> kv_answers_;
  // The last Step planned nothing for want of blocks held outside the sequences: the loop waits.
  bool stalled_ = false;                            // engine thread only
  absl::flat_hash_map<RequestId, Export> exports_;  // engine thread only
  // Prompts still being computed whose finished blocks are on their way (engine thread only).
  // An entry must go — cancelling its sends — before the request's blocks can be reused.
  absl::flat_hash_map<RequestId, StreamedKv> streaming_;
  // The layer-wise sends of each step in flight, oldest first (an entry for every step).
  using StepStreams = std::vector<std::pair<RequestId, std::unique_ptr<KvLayerStream>>>;
  std::deque<StepStreams> step_streams_;
  absl::BitGen bitgen_;  // reservation tokens; engine thread

  mutable absl::Mutex mu_;
  std::vector<Command> inbox_ ABSL_GUARDED_BY(mu_);
  RequestId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // submitted and not yet ended
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Status failure_ ABSL_GUARDED_BY(mu_);  // the executor's error, once failed
  int64_t aborted_at_shutdown_ ABSL_GUARDED_BY(mu_) = 0;
  EngineCounters counters_ ABSL_GUARDED_BY(mu_);

  absl::Mutex join_mu_;  // serialises Shutdown's join
  std::thread thread_ ABSL_GUARDED_BY(join_mu_);
};

// Submits `requests` in order and waits for every one to finish, `timeout` in all; outputs in
// request order (a request that ended with an error carries it in its status). A Submit error is
// returned after cancelling the requests already submitted. For batch jobs (`tessera generate`).
absl::StatusOr<std::vector<RequestOutput>> GenerateAll(Engine& engine,
                                                       const std::vector<Request>& requests,
                                                       absl::Duration timeout);

}  // namespace tessera::worker
