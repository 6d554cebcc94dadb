// The coordinator's core: the Frontend the public APIs call, over a registry of replicas.
//
// Generate validates a request against the model (sampling ranges, context length, vocabulary),
// tokenizes it, applies admission control (at most max_queued_requests beyond the live replicas'
// running capacity may be in flight: more is kResourceExhausted, never an unbounded queue),
// routes it (Router: prefix-cache hits against load), and streams the replica's tokens back,
// detokenized, with stop strings matched here. A replica that fails before the first token is
// retried on another; one that is lost later (broken stream, lapsed lease) ends its requests with
// a retryable kUnavailable. A background thread expires leases on the injected Clock.
//
// Metrics: vLLM's names (vllm:*, labelled model_name, and engine = the replica where per
// replica) plus tessera_* for the cluster; RenderMetrics() serves them.
//
// Thread-safe. Drain() then destruction shuts it down; streams must not outlive the coordinator.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "coordinator/frontend.h"
#include "coordinator/metrics.h"
#include "coordinator/registry.h"
#include "coordinator/router.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace tessera::coordinator {

struct CoordinatorOptions {
  ModelInfo model;  // name, root, max_model_len, vocab_size (created: set by Create)
  // model.tool_call_parser when set; unset: the chat template's (model::ChatTemplate).
  std::optional<std::string> tool_call_parser;
  // model.reasoning_parser when set; unset: the chat template's.
  std::optional<std::string> reasoning_parser;
  RegistryOptions registry;  // model_name and vocab_size are taken from `model`
  RouterOptions router;
  // Requests admitted beyond the sum of the live replicas' max_num_seqs.
  int64_t max_queued_requests = 256;
  int32_t max_stop_strings = 16;
  int32_t max_stop_string_bytes = 256;
  // How often streams re-check for lost replicas and shutdown while waiting for tokens, and the
  // background thread expires leases (real time).
  absl::Duration poll_interval = absl::Milliseconds(50);
  absl::Duration lease_check_interval = absl::Milliseconds(200);
  int32_t max_route_attempts = 3;  // replicas tried before the first token
};

class Coordinator final : public Frontend {
 public:
  // `tokenizer` must describe the served model (its vocabulary must fit model.vocab_size);
  // `chat` is the model's chat template when it has one. `connector` and `clock` must outlive
  // the coordinator.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(
      CoordinatorOptions options, std::unique_ptr<model::Tokenizer> tokenizer,
      std::optional<model::ChatTemplate> chat, ReplicaConnector& connector,
      Clock& clock = RealClock::Get());
  ~Coordinator() override;  // ends requests in flight (kUnavailable), stops the lease thread

  // The registry side (called by the internal Registry service).
  absl::StatusOr<std::shared_ptr<ReplicaEntry>> RegisterReplica(ReplicaInfo info);
  // With `kv_peers` and a prefill replica: the KV descriptors of the live decode replicas. With
  // `kv_leases` and a decode replica: the reservations requests still wait on (to renew).
  bool Heartbeat(const std::string& replica_id, const ReplicaLoad& load,
                 std::vector<std::string>* kv_peers = nullptr,
                 std::vector<uint64_t>* kv_leases = nullptr);
  void DeregisterReplica(const std::string& replica_id);
  ReplicaRegistry& registry() { return registry_; }

  // Graceful shutdown: stop admitting (Ready() turns false, Generate returns kUnavailable), let
  // requests in flight finish for up to `timeout` (real time), then end the rest with
  // kUnavailable. OK when none had to be ended, kDeadlineExceeded otherwise.
  absl::Status Drain(absl::Duration timeout);
  int64_t in_flight() const { return in_flight_.load(); }

  // Frontend.
  const ModelInfo& model() const override { return options_.model; }
  bool Live() const override { return true; }
  bool Ready() const override;
  absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(GenerateRequest request) override;
  absl::StatusOr<std::string> ApplyChatTemplate(
      absl::Span<const model::ChatMessage> messages,
      const model::ChatTemplateOptions& options) const override;
  absl::StatusOr<std::vector<int32_t>> Tokenize(absl::string_view text,
                                                bool add_special_tokens) const override;
  absl::StatusOr<std::string> Detokenize(absl::Span<const int32_t> ids,
                                         bool skip_special_tokens) const override;
  absl::StatusOr<std::vector<std::string>> IdsToTokens(
      absl::Span<const int32_t> ids) const override {
    return tokenizer_->IdsToTokens(ids);
  }
  std::string RenderMetrics() const override { return metrics_.Render(); }

 private:
  friend class CoordinatorStream;
  struct Metrics {
    Counter* prompt_tokens;
    Counter* generation_tokens;
    Family<Counter>* request_success;  // finished_reason
    Histogram* ttft;
    Histogram* itl;
    Histogram* e2e;
    Histogram* request_prompt_tokens;
    Histogram* request_generation_tokens;
    // Where the time went, from the replicas' RequestTimings (vLLM's names, and tessera's KV).
    Histogram* queue_time;
    Histogram* prefill_time;
    Histogram* decode_time;
    Histogram* inference_time;
    Histogram* kv_transfer_time;
    Family<Counter>* rejected;  // reason
    Family<Counter>* failed;    // code
    Counter* lease_expirations;
    Family<Counter>* preemptions;           // engine
    Family<Counter>* prefix_cache_queries;  // engine
    Family<Counter>* prefix_cache_hits;     // engine
    Counter* disaggregated;
    Family<Counter>* kv_recoveries;    // model_name, reason
    Family<Counter>* kv_bytes;         // replica, direction
    Family<Counter>* kv_failures;      // replica, kind
    Family<Counter>* pipeline_drains;  // replica
  };

  Coordinator(CoordinatorOptions options, std::unique_ptr<model::Tokenizer> tokenizer,
              std::optional<model::ChatTemplate> chat, ReplicaConnector& connector, Clock& clock);
  void RegisterMetrics();
  void LeaseLoop();
  absl::Status ValidateRequest(const GenerateRequest& request,
                               const std::vector<int32_t>& prompt) const;
  // Called by streams when they end (exactly once each).
  void OnStreamEnd();

  CoordinatorOptions options_;
  std::unique_ptr<model::Tokenizer> tokenizer_;
  std::optional<model::ChatTemplate> chat_;
  ReplicaRegistry registry_;
  Router router_;
  MetricsRegistry metrics_;
  Metrics m_{};

  std::atomic<int64_t> in_flight_{0};
  std::atomic<int64_t> next_request_{1};
  std::atomic<bool> draining_{false};
  std::atomic<bool> aborting_{false};  // drain deadline passed / destruction: end every stream

  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Heartbeat counters last seen per replica id, to turn cumulative counters into increments.
  absl::flat_hash_map<std::string, ReplicaLoad> last_load_ ABSL_GUARDED_BY(mu_);
  std::thread lease_thread_;
};

}  // namespace tessera::coordinator
