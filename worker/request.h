// What a client hands the engine (Request, SamplingParams) and what it gets back (a stream of
// TokenEvents through a RequestSink). Plain data, no protobuf: worker/rpc/ and coordinator/api/
// convert. The engine (worker/engine.h) and its scheduler (worker/scheduler.h) use these types.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "model/sampling.h"
#include "worker/kv_migration.h"

namespace tessera::worker {

using RequestId = uint64_t;

using model::FinishReason;
using model::FinishReasonName;
using model::kMaxLogprobs;
using model::SamplingParams;
using model::TokenLogprob;

struct Request {
  std::vector<int32_t> prompt;  // token ids
  SamplingParams sampling;
  // Part of every prefix-cache block hash: requests with different salts never share blocks
  // (tenant isolation, as vLLM's cache_salt). Empty: the shared namespace.
  std::string cache_salt;
  // From Submit; on expiry the request ends with finish reason kAbort and kDeadlineExceeded.
  absl::Duration timeout = absl::InfiniteDuration();
  // vLLM's request priority: lower runs first, when the replica schedules by priority
  // (SchedulerConfig::priority_scheduling; otherwise it must be 0).
  int32_t priority = 0;

  // Disaggregated serving (docs/decisions/0008-disaggregation.md). At most one of the two.
  // On a prefill replica: after the prompt's first token, unless it ends the request, send the
  // prompt's KV (from token kv_destination->num_cached_tokens on) into the decode replica's
  // reserved blocks; the last event then has kv_handoff set and the checksums of what was sent.
  std::optional<KvDestination> kv_destination;
  // On a decode replica: the prompt's KV arrived in the reservation `kv_import->token`
  // (Engine::ReserveKv); verify it, then continue from the first token, which the prefill replica
  // sampled. The stream carries the tokens after the first.
  struct KvImport {
    uint64_t token = 0;
    int32_t first_token = -1;
    std::vector<KvSegmentChecksum> checksums;
  };
  std::optional<KvImport> kv_import;
};

// One event of a request's stream: a generated token, and on the last event the finish reason.
// Where a request's time went on this replica (the engine's clock), on its last event: waiting
// to be admitted, admitted until its first token, then until its end; a prefill replica's
// handoff also counts sending the KV (not part of decode).
struct RequestTimings {
  double queue_seconds = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double kv_send_seconds = 0;
};

struct TokenEvent {
  RequestId request_id = 0;
  int32_t token_id = -1;  // -1: no token (the last event of a request that ended early)
  float logprob = 0.0f;   // of token_id under the model's raw distribution
  std::vector<TokenLogprob> top_logprobs;     // SamplingParams::logprobs most likely, descending
  std::optional<FinishReason> finish_reason;  // set on the last event only
  // On the last event: OK, or why the request ended early — kCancelled (Cancel),
  // kDeadlineExceeded (timeout), kAborted (engine shut down), or the executor's error.
  absl::Status status;
  int32_t num_cached_tokens = 0;  // on the first event: prompt tokens served by the prefix cache
  // Prefill replica, last event of a kv_destination request whose first token did not end it:
  // the KV was sent (finish_reason kLength, status OK) and decoding goes on at the decode replica,
  // which verifies `kv_checksums`. On a failed send the event has status set and no handoff.
  bool kv_handoff = false;
  std::vector<KvSegmentChecksum> kv_checksums;
  std::optional<RequestTimings> timings;  // on the last event
};

// Receives the events of one request, in order, on the engine's thread: implementations must not
// block for long (they stall every request) and may call Engine::Submit/Cancel but never
// Engine::Shutdown. The last event carries finish_reason.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnEvent(const TokenEvent& event) = 0;
};

// A request's tokens gathered by ResponseStream::Collect.
struct RequestOutput {
  RequestId request_id = 0;
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // per token
  FinishReason finish_reason = FinishReason::kAbort;
  absl::Status status;  // the last event's
  int32_t num_cached_tokens = 0;
};

// A RequestSink that queues events for a consumer thread. Thread-safe.
class ResponseStream final : public RequestSink {
 public:
  void OnEvent(const TokenEvent& event) override;
  // The next event, waiting at most `timeout` (real time): kDeadlineExceeded when none came (the
  // request goes on; call again), kOutOfRange once the last event has been returned.
  absl::StatusOr<TokenEvent> Next(absl::Duration timeout);
  // Every remaining event up to the last, waiting at most `timeout` in all: kDeadlineExceeded
  // when the request has not finished by then (events read so far are lost to the caller).
  absl::StatusOr<RequestOutput> Collect(absl::Duration timeout);
  RequestId request_id() const { return request_id_; }

 private:
  friend class Engine;
  RequestId request_id_ = 0;  // set by Engine::Submit before it returns the stream
  absl::Mutex mu_;
  std::deque<TokenEvent> events_ ABSL_GUARDED_BY(mu_);
  bool finished_ ABSL_GUARDED_BY(mu_) = false;  // the last event has been queued
  bool drained_ ABSL_GUARDED_BY(mu_) = false;   // ... and returned by Next
};

// Incremental stop-string matching over a request's generated tokens. Needs a detokenizer: the
// tokenizer issue implements it. One per request, driven on the engine thread.
class StopMatcher {
 public:
  virtual ~StopMatcher() = default;
  // Called with each generated token; true when the text now contains one of the stop strings
  // (the request then finishes with kStop).
  virtual bool Matches(int32_t token_id) = 0;
};

class StopMatcherFactory {
 public:
  virtual ~StopMatcherFactory() = default;
  // Called on the submitting thread; kInvalidArgument for strings it cannot match. Thread-safe.
  virtual absl::StatusOr<std::unique_ptr<StopMatcher>> Create(
      const std::vector<std::string>& stop) = 0;
};

}  // namespace tessera::worker
