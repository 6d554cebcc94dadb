#include "model/sampling.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tessera::model {

absl::string_view FinishReasonName(FinishReason finish) {
  switch (finish) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
  }
  return "abort";
}

absl::Status ValidateSamplingParams(const SamplingParams& s, int32_t vocab_size) {
  auto error = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (s.max_tokens < 1) return error("max_tokens must be at least 1, got ", s.max_tokens);
  if (s.min_tokens < 0 || s.min_tokens > s.max_tokens) {
    return error("min_tokens must be in [0, max_tokens = ", s.max_tokens, "], got ", s.min_tokens);
  }
  if (!std::isfinite(s.temperature) || s.temperature < 0.0f) {
    return error("temperature must be a finite number >= 0, got ", s.temperature);
  }
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) return error("top_p must be in (0, 1], got ", s.top_p);
  if (s.top_k < -1) return error("top_k must be >= -1 (0 or -1: no limit), got ", s.top_k);
  if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) return error("min_p must be in [0, 1], got ", s.min_p);
  if (!std::isfinite(s.repetition_penalty) || s.repetition_penalty <= 0.0f) {
    return error("repetition_penalty must be a finite number > 0, got ", s.repetition_penalty);
  }
  if (!(s.presence_penalty >= -2.0f && s.presence_penalty <= 2.0f)) {
    return error("presence_penalty must be in [-2, 2], got ", s.presence_penalty);
  }
  if (!(s.frequency_penalty >= -2.0f && s.frequency_penalty <= 2.0f)) {
    return error("frequency_penalty must be in [-2, 2], got ", s.frequency_penalty);
  }
  if (s.logprobs < 0 || s.logprobs > kMaxLogprobs || s.logprobs > vocab_size) {
    return error("logprobs must be in [0, ", std::min<int64_t>(kMaxLogprobs, vocab_size), "], got ",
                 s.logprobs);
  }
  for (int32_t id : s.stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return error("stop token ", id, " outside the vocabulary [0, ", vocab_size, ")");
    }
  }
  for (const std::string& stop : s.stop) {
    if (stop.empty()) return error("stop strings must not be empty");
  }
  for (size_t i = 0; i < s.logit_bias.size(); ++i) {
    const LogitBias& b = s.logit_bias[i];
    if (b.token_id < 0 || b.token_id >= vocab_size) {
      return error("logit_bias token ", b.token_id, " outside the vocabulary [0, ", vocab_size,
                   ")");
    }
    if (!(b.bias >= -kMaxLogitBias && b.bias <= kMaxLogitBias)) {
      return error("logit_bias of token ", b.token_id, " must be in [-100, 100], got ", b.bias);
    }
    for (size_t j = 0; j < i; ++j) {
      if (s.logit_bias[j].token_id == b.token_id) {
        return error("logit_bias names token ", b.token_id, " twice");
      }
    }
  }
  const int32_t start = s.structured_output.start_after_token;
  if (start != -1 && (start < 0 || start >= vocab_size ||
                      s.structured_output.kind == StructuredOutput::Kind::kNone)) {
    return error("structured_output.start_after_token must be -1 or a token id in [0, ", vocab_size,
                 ") of a structured output, got ", start);
  }
  return absl::OkStatus();
}

absl::StatusOr<LogitBias> LogitBiasEntry(absl::string_view key, double bias) {
  int32_t id = 0;
  if (!absl::SimpleAtoi(key, &id) || id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("logit_bias: key '", key, "' is not a token id (a non-negative integer)"));
  }
  return LogitBias{id, static_cast<float>(bias)};
}

}  // namespace tessera::model
