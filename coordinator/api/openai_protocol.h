// The OpenAI-compatible wire format, modelled on vLLM's OpenAI server (vllm/entrypoints/openai):
// JSON request bodies parsed into plain structs, and the JSON of responses, streamed chunks and
// errors. No HTTP and no threads here (openai_http.h serves these); every function is pure and
// thread-safe.
//
// Error contract: the Parse* functions return kInvalidArgument whose message starts with the
// field it is about ("temperature: expected a number"); ErrorFromStatus turns any status into
// vLLM's error body {"error": {"message", "type", "param", "code"}} with `param` taken from that
// leading field name and `code` the HTTP status.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/api/tool_calls.h"
#include "coordinator/frontend.h"
#include "model/chat_template.h"
#include "model/sampling.h"
#include "nlohmann/json.hpp"

namespace tessera::coordinator::api {

// ---- errors ------------------------------------------------------------------------------------

struct ApiError {
  int http_status = 500;
  std::string type;     // "BadRequestError", "NotFoundError", ...
  std::string message;  // for people; names the field for 400s
  std::string param;    // the request field at fault, or empty (JSON null)
};

// kInvalidArgument/kFailedPrecondition/kOutOfRange 400, kNotFound 404, kResourceExhausted 429,
// kUnavailable/kCancelled/kAborted 503, kDeadlineExceeded 504, kUnimplemented 501, others 500.
ApiError ErrorFromStatus(const absl::Status& status);
ApiError MakeError(int http_status, std::string message, std::string param = "");
// {"error": {...}} (vLLM's ErrorResponse).
nlohmann::json ErrorJson(const ApiError& error);
// The model `name` is not served: 404 "The model `name` does not exist.", param "model".
ApiError ModelNotFound(absl::string_view name);

// JSON text; invalid UTF-8 is replaced (U+FFFD), never thrown about.
std::string Dump(const nlohmann::json& json);

// Parses a request body: kInvalidArgument "body: ..." when it is not a JSON object.
absl::StatusOr<nlohmann::json> ParseBody(absl::string_view body);

// ---- requests ----------------------------------------------------------------------------------

struct StreamOptions {
  bool include_usage = false;
  bool continuous_usage_stats = false;  // usage in every chunk
};

// Fields shared by /v1/completions and /v1/chat/completions.
// The most completions one request may ask for (n), as choices of all its prompts together.
inline constexpr int32_t kMaxChoices = 128;

struct CommonRequest {
  std::optional<std::string> model;  // unset: the default (first served) model
  // Completions per prompt (vLLM's parallel sampling): each its own request to the cluster, with
  // seed + i when a seed is given; choice index = prompt index * n + i.
  int32_t n = 1;
  int32_t priority = 0;  // vLLM's request priority (lower first; replicas that schedule by it)
  // max_tokens (chat: max_completion_tokens wins); nullopt: as many as fit in the context.
  std::optional<int32_t> max_tokens;
  model::SamplingParams sampling;  // max_tokens left at its default; logprobs as requested
  bool stream = false;
  std::optional<StreamOptions> stream_options;  // only with stream = true
  bool skip_special_tokens = true;
  bool include_stop_str_in_output = false;
  std::string cache_salt;
};

struct CompletionRequest {
  CommonRequest common;
  // Exactly one of these is non-empty: one entry per prompt (a batch is answered with one choice
  // per prompt, index = position, as vLLM does).
  std::vector<std::string> text_prompts;
  std::vector<std::vector<int32_t>> token_prompts;
  std::optional<int32_t> logprobs;  // top-N per token (0: the sampled token's only)
  bool echo = false;
  bool add_special_tokens = true;
};

struct ChatRequest {
  CommonRequest common;
  std::vector<model::ChatMessage> messages;
  bool logprobs = false;
  int32_t top_logprobs = 0;
  model::ChatTemplateOptions template_options;  // .tools: tools.tools
  bool add_special_tokens = false;              // the template has them already
  ToolRequest tools;  // "required" and named functions also set common.sampling's structured output
  bool include_reasoning = true;  // vLLM's: return the reasoning a reasoning parser splits off
};

// Defaults as vLLM's (temperature 1, max_tokens 16 for completions, unlimited for chat).
absl::StatusOr<CompletionRequest> ParseCompletionRequest(const nlohmann::json& body);
// `ordered`: the same body parsed keeping its key order (the tools and the tool calls in
// `messages` reach the chat template as the client wrote them); null: taken from `body`.
absl::StatusOr<ChatRequest> ParseChatRequest(const nlohmann::json& body,
                                             const nlohmann::ordered_json* ordered = nullptr);

// POST /tokenize (vLLM's): a completion prompt or a conversation run through the chat template.
struct TokenizeRequest {
  std::optional<std::string> model;
  std::optional<std::string> prompt;            // set: tokenize this text
  std::vector<model::ChatMessage> messages;     // else: the chat template over these
  model::ChatTemplateOptions template_options;  // with the request's tools
  bool add_special_tokens = true;  // default true for a prompt, false for messages (as vLLM)
  bool return_token_strs = false;  // also answer each token's vocabulary string
};
// POST /detokenize (vLLM's).
struct DetokenizeRequest {
  std::optional<std::string> model;
  std::vector<int32_t> tokens;
};
absl::StatusOr<TokenizeRequest> ParseTokenizeRequest(
    const nlohmann::json& body, const nlohmann::ordered_json* ordered = nullptr);
absl::StatusOr<DetokenizeRequest> ParseDetokenizeRequest(const nlohmann::json& body);

// ---- responses ---------------------------------------------------------------------------------

// What one choice produced so far (accumulated from GenerateEvents).
struct ChoiceOutput {
  int32_t index = 0;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<float> logprobs;
  std::vector<std::vector<model::TokenLogprob>> top_logprobs;
  std::optional<model::FinishReason> finish_reason;
  nlohmann::json stop_reason;  // null, a stop token id, or a stop string
};

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t cached_tokens = 0;
};
nlohmann::json UsageJson(const Usage& usage);

// How a token id reads in logprobs ("tokens", "top_logprobs" keys): Frontend::Detokenize of the
// one id, special tokens kept.
using TokenText = std::function<std::string(int32_t)>;

// The fields of every response and chunk: id, object, created, model.
struct ResponseHeader {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

// Completions logprobs {"text_offset", "token_logprobs", "tokens", "top_logprobs"} for tokens
// [begin, end) of `choice`; `text_offset` starts at `initial_offset` (characters).
nlohmann::json CompletionLogprobsJson(const ChoiceOutput& choice, size_t begin, size_t end,
                                      int32_t num_top, int64_t initial_offset,
                                      const TokenText& token_text);
// Chat logprobs {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
nlohmann::json ChatLogprobsJson(const ChoiceOutput& choice, size_t begin, size_t end,
                                int32_t num_top, const TokenText& token_text);

nlohmann::json FinishReasonJson(const std::optional<model::FinishReason>& finish);

// object "text_completion"; `choices` are the JSON choice objects.
nlohmann::json CompletionResponseJson(const ResponseHeader& header, nlohmann::json choices,
                                      const std::optional<Usage>& usage);
// object "chat.completion" / "chat.completion.chunk".
nlohmann::json ChatResponseJson(const ResponseHeader& header, nlohmann::json choices,
                                const std::optional<Usage>& usage);
nlohmann::json ChatChunkJson(const ResponseHeader& header, nlohmann::json choices,
                             const std::optional<Usage>& usage);

// GET /v1/models for these served names.
nlohmann::json ModelListJson(const ModelInfo& info, const std::vector<std::string>& names);

// Number of Unicode code points in valid UTF-8 text (Python's len(), for text_offset).
int64_t CodePointCount(absl::string_view text);

// SSE framing: "data: <json>\n\n" and the terminator.
std::string SseEvent(const nlohmann::json& json);
inline constexpr absl::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace tessera::coordinator::api
