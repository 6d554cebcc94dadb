// Reasoning outputs for the OpenAI chat API, as vLLM's --reasoning-parser (vllm/reasoning/):
// a thinking model's "<think> ... </think>" is returned as message.reasoning (and its older
// name reasoning_content), the rest as content; streamed as delta.reasoning, then delta.content.
//
// Parsers, named as vLLM's:
//   qwen3        Qwen3: reasoning only when the output opens with <think> (the model writes it;
//                with enable_thinking=false the template closes the block in the prompt and the
//                output is all content); an unclosed block is reasoning.
//   deepseek_r1  DeepSeek-R1, QwQ: the template opens the block in the prompt, so the output is
//                reasoning until </think> (a <think> at its start is dropped); without
//                </think> it is all reasoning.
// Tool-call parsing (tool_calls.h) reads the content only.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::coordinator::api {

bool IsReasoningParser(absl::string_view name);  // "" (none) too
inline constexpr absl::string_view kReasoningParsers = "qwen3, deepseek_r1";

struct ReasoningSplit {
  std::optional<std::string> reasoning;  // null: the model did not reason
  std::optional<std::string> content;    // null: nothing after the reasoning
};
// The whole output split (non-streaming). `parser` empty: all content.
ReasoningSplit SplitReasoning(absl::string_view parser, absl::string_view text);

// Where a structured output starts for a chat request to a reasoning model: after "</think>"
// (vLLM enforces the grammar once the reasoning has ended), as model::StructuredOutput's
// start_after_token. -1 (from the first token) without a parser, when the prompt has closed the
// block already (Qwen3's enable_thinking=false), or when "</think>" is not one token of
// `tokenize` (text to ids, no special tokens added).
int32_t GrammarStartToken(
    absl::string_view parser, absl::string_view prompt,
    const std::function<absl::StatusOr<std::vector<int32_t>>(absl::string_view)>& tokenize);

// The streaming counterpart, one per choice: joined, its deltas equal SplitReasoning's halves.
class ReasoningStream {
 public:
  explicit ReasoningStream(std::string parser);

  struct Delta {
    std::string reasoning;
    std::string content;
  };
  Delta Add(absl::string_view text);
  Delta Finish();  // what was held back (a marker's possible beginning)

 private:
  enum class State { kStart, kReasoning, kContent };
  void Drain(Delta& out, bool final);

  std::string parser_;
  State state_ = State::kStart;
  std::string pending_;
};

}  // namespace tessera::coordinator::api
