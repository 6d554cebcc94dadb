// What a request asks of the sampler (SamplingParams, with vLLM's meanings), why a request ended
// (FinishReason), and the checks that need no knowledge of a replica (ValidateSamplingParams).
// Plain data shared by the engine (worker/) and the coordinator (coordinator/), which validates
// requests up front with the same messages; the engine adds the checks that need its limits
// (context length, KV capacity).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/structured_output.h"

namespace tessera::model {

struct LogitBias {
  int32_t token_id = 0;
  float bias = 0.0f;
  bool operator==(const LogitBias&) const = default;
};

inline constexpr float kMaxLogitBias = 100.0f;  // OpenAI's range: [-100, 100]

struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy
  int32_t top_k = 0;                // 0 or -1: no limit
  float top_p = 1.0f;               // (0, 1]
  float min_p = 0.0f;               // [0, 1]; relative to the most likely token
  float repetition_penalty = 1.0f;  // > 0; over prompt and output tokens; 1: off
  float presence_penalty = 0.0f;    // [-2, 2]; over output tokens
  float frequency_penalty = 0.0f;   // [-2, 2]; over output tokens
  std::optional<int64_t> seed;      // unset: the engine picks one per request
  int32_t max_tokens = 16;          // >= 1
  int32_t min_tokens = 0;           // EOS and stop tokens are banned until this many are out
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = 0;  // top-N logprobs per generated token, 0..kMaxLogprobs
  // Stop strings need a detokenizer: the engine accepts them only with a StopMatcherFactory
  // (worker::EngineOptions); the coordinator matches them itself on the detokenized stream.
  std::vector<std::string> stop;
  // OpenAI's logit_bias: added to the token's logit before the penalties and temperature, as
  // vLLM's sampler does; each token at most once, bias in [-100, 100].
  std::vector<LogitBias> logit_bias;
  // Structured outputs: the output must be a value of this grammar (model/structured_output.h).
  // The replica needs its model's tokenizer to enforce one (worker::EngineOptions).
  StructuredOutput structured_output;
};

inline constexpr int32_t kMaxLogprobs = 20;

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;
};

enum class FinishReason { kStop, kLength, kAbort };
absl::string_view FinishReasonName(FinishReason finish);  // "stop", "length", "abort"

// kInvalidArgument naming the field and the allowed range for values no model accepts
// (max_tokens < 1, top_p outside (0, 1], a negative temperature, ...) and for ids outside
// [0, vocab_size) in stop_token_ids. The prompt and the context length are the caller's.
absl::Status ValidateSamplingParams(const SamplingParams& params, int32_t vocab_size);

// One entry of an API's logit_bias object ({"token id": bias}): kInvalidArgument "logit_bias: ..."
// when the key is not a token id (a non-negative integer). Ranges: ValidateSamplingParams.
absl::StatusOr<LogitBias> LogitBiasEntry(absl::string_view key, double bias);

}  // namespace tessera::model
