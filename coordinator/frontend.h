// The seam between the public APIs (coordinator/api/: KServe v2 gRPC, OpenAI HTTP) and the
// coordinator's core (coordinator/coordinator.h): what an API handler may ask of the cluster.
// Plain structs; protobuf and HTTP types stop in coordinator/api/.
//
// A handler parses its protocol, fills a GenerateRequest, calls Frontend::Generate and reads the
// GenerateStream until the finished event; destroying the stream early cancels the request on its
// replica (a client that went away frees its KV blocks). Handlers block their own thread only.
//
// Errors (absl canonical codes, mapped 1:1 to gRPC codes and to HTTP statuses by the APIs):
//   kInvalidArgument    bad input; the message names the field (400)
//   kResourceExhausted  admission control shed the request (429); retry later
//   kUnavailable        no replica can take it now, or the coordinator is draining (503)
//   kDeadlineExceeded   GenerateRequest::deadline passed (504 before the first token)
//   kCancelled          GenerateStream::Cancel
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "model/chat_template.h"
#include "model/sampling.h"

namespace tessera::coordinator {

// The served model, as clients see it.
struct ModelInfo {
  std::string name;  // the served model name: OpenAI "id", the KServe model name
  std::string root;  // where it was loaded from (OpenAI "root"): the model directory
  int32_t max_model_len = 0;
  int32_t vocab_size = 0;
  int64_t created_unix_s = 0;  // when the coordinator started (OpenAI "created")
  bool has_chat_template = false;
  // How tool_choice "auto" reads the model's tool calls: a parser of coordinator/api/tool_calls.h
  // ("hermes", "llama3_json", "mistral"), by default the chat template's; empty: none.
  std::string tool_call_parser;
  // How chat responses split a thinking model's reasoning from its answer: a parser of
  // coordinator/api/reasoning.h ("qwen3", "deepseek_r1"), by default the chat template's; empty:
  // none (all content).
  std::string reasoning_parser;
};

struct GenerateRequest {
  // The client's id for logs and responses; empty: the coordinator makes one ("cmpl-<n>").
  std::string request_id;
  // The prompt: token ids when set (tokenized by the caller), else `text`, tokenized by the
  // coordinator with the model's tokenizer.
  std::optional<std::vector<int32_t>> prompt_token_ids;
  std::string prompt_text;
  bool add_special_tokens = true;   // for prompt_text: BOS etc. (false for chat-template output)
  model::SamplingParams sampling;   // max_tokens counts generated tokens, exactly
  bool skip_special_tokens = true;  // in the detokenized output
  bool include_stop_str_in_output = false;  // keep a matched stop string at the end of the text
  absl::Time deadline = absl::InfiniteFuture();  // then the request ends with kDeadlineExceeded
  std::string cache_salt;                        // prefix-cache namespace (vLLM's cache_salt)
  // vLLM's request priority: lower is scheduled first by replicas started with
  // --scheduling-policy priority (which refuse anything but 0 otherwise).
  int32_t priority = 0;
};

// One piece of a request's output. Events arrive in order; the last has finished = true.
struct GenerateEvent {
  std::vector<int32_t> token_ids;  // tokens this event adds (one per event while streaming)
  std::string text;                // their text: valid UTF-8, possibly empty mid-character
  std::vector<float> logprobs;     // per token, when sampling.logprobs > 0
  std::vector<std::vector<model::TokenLogprob>> top_logprobs;  // per token, most likely first
  bool finished = false;
  std::optional<model::FinishReason> finish_reason;  // set when finished
  // When finished: OK, or why the request ended early (the codes above; kUnavailable with a
  // "retry" message when its replica was lost).
  absl::Status status;
  int32_t prompt_tokens = 0;      // every event
  int32_t completion_tokens = 0;  // generated so far, this event's included
  int32_t cached_tokens = 0;      // prompt tokens served from a prefix cache
};

// One running request. Next() is for one reader thread; Cancel() may be called from any thread.
class GenerateStream {
 public:
  virtual ~GenerateStream() = default;  // cancels the request when it has not finished

  // The next event, waiting at most `timeout`: kDeadlineExceeded when none came in time (the
  // request goes on; call again), kOutOfRange once the finished event has been returned.
  virtual absl::StatusOr<GenerateEvent> Next(absl::Duration timeout) = 0;
  // Ends the request: its finished event (if not yet delivered) carries kCancelled.
  virtual void Cancel() = 0;

  virtual const std::string& request_id() const = 0;
  virtual const std::vector<int32_t>& prompt_token_ids() const = 0;
};

// What the public APIs call. Thread-safe: every method may be called from any handler thread.
class Frontend {
 public:
  virtual ~Frontend() = default;

  virtual const ModelInfo& model() const = 0;
  // The process is serving (liveness).
  virtual bool Live() const = 0;
  // At least one replica takes requests and the coordinator is not draining (readiness).
  virtual bool Ready() const = 0;

  // Validates (kInvalidArgument naming the field: sampling ranges, a prompt longer than the
  // context, ids outside the vocabulary, invalid UTF-8), tokenizes, admits (kResourceExhausted
  // when the coordinator's queue is full), routes and starts the request.
  virtual absl::StatusOr<std::unique_ptr<GenerateStream>> Generate(GenerateRequest request) = 0;

  // The model's chat template applied to `messages` (kFailedPrecondition when the model has
  // none, kInvalidArgument for conversations it rejects). Tokenize the result with
  // add_special_tokens = false.
  virtual absl::StatusOr<std::string> ApplyChatTemplate(
      absl::Span<const model::ChatMessage> messages,
      const model::ChatTemplateOptions& options) const = 0;
  virtual absl::StatusOr<std::vector<int32_t>> Tokenize(absl::string_view text,
                                                        bool add_special_tokens) const = 0;
  virtual absl::StatusOr<std::string> Detokenize(absl::Span<const int32_t> ids,
                                                 bool skip_special_tokens) const = 0;
  // Each id's vocabulary string (model::Tokenizer::IdsToTokens).
  virtual absl::StatusOr<std::vector<std::string>> IdsToTokens(
      absl::Span<const int32_t> ids) const = 0;

  // Every metric in Prometheus text exposition format 0.0.4 (vllm:* and tessera_*).
  virtual std::string RenderMetrics() const = 0;
};

}  // namespace tessera::coordinator
