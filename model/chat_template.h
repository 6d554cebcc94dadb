// Chat prompts: renders a conversation the way a model's Jinja chat template
// (tokenizer_config.json "chat_template") would, for a fixed set of recognised templates. tessera
// has no Jinja engine (Debian packages none for C++; docs/decisions/0006-tokenizer.md): it
// recognises the template's text and renders the format in C++, checked against transformers'
// apply_chat_template on the real templates (tests/reference/tokenizers/chat_templates.json).
//
// Supported: Llama 3 (3.0), Llama 3.1/3.2/3.3 (system block with "Cutting Knowledge Date"),
// ChatML (Qwen2, Qwen2.5, and any template with <|im_start|>, with the default system prompt the
// template carries), Qwen3 (ChatML with <think> handling and enable_thinking), Mistral [INST]
// v0.1 (no system message) and v0.3 (system message joined to the last user message).
//
// Tools, tool calls and tool results render where the template has them: Llama 3.1+ (JSON tools
// in the first user message, one call per turn, results as ipython turns), Qwen2.5 and Qwen3
// (<tools> in the system block, <tool_call> and <tool_response> blocks), Mistral v0.3
// ([AVAILABLE_TOOLS], [TOOL_CALLS], [TOOL_RESULTS]). Templates without them ignore tools, as
// Jinja does. A ChatTemplate is immutable and thread-safe.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace tessera::model {

// One tool call of an assistant message (OpenAI's tool_calls[i]).
struct ChatToolCall {
  std::string id;
  // The call's "function" object as the client sent it, with "arguments" parsed from its JSON
  // text (vLLM hands templates a dict); key order kept, since Mistral's template writes it whole.
  nlohmann::ordered_json function;
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (and "tool" where the format has one)
  std::string content;
  std::optional<std::string> reasoning_content;  // Qwen3: the assistant's thinking, if separate
  std::vector<ChatToolCall> tool_calls;          // assistant: the calls it made
  std::string tool_call_id;                      // tool: the call this result answers
};

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  // Qwen3: false adds an empty <think></think> block after the generation prompt.
  std::optional<bool> enable_thinking;
  // Llama 3.1+: the "Today Date" line ("26 Jul 2024" style). Unset: the template's own default
  // (3.1/3.3: its literal date; 3.2: today's date in the local time zone, as transformers does).
  std::optional<std::string> date_string;
  // The tools offered (OpenAI's tools[i]: {"type": "function", "function": {"name",
  // "description", "parameters"}}, missing fields null as vLLM's model_dump writes them). Empty:
  // none.
  std::vector<nlohmann::ordered_json> tools;
};

enum class ChatFormat {
  kLlama3,     // Llama 3.0
  kLlama31,    // Llama 3.1, 3.2, 3.3
  kChatMl,     // Qwen2, Qwen2.5 and other <|im_start|> templates
  kQwen3,      // ChatML with <think> blocks
  kMistral,    // Mistral v0.1: [INST] text [/INST], no system message
  kMistralV3,  // Mistral v0.3: [INST] text[/INST], system message in the last user turn
};

class ChatTemplate {
 public:
  // Recognises the Jinja template `jinja` (bos/eos: the tokenizer config's bos_token and
  // eos_token strings, which templates insert). kUnimplemented for templates not recognised,
  // naming the supported formats.
  static absl::StatusOr<ChatTemplate> FromJinja(absl::string_view jinja, std::string bos_token,
                                                std::string eos_token);
  // The template of tokenizer.config(); kFailedPrecondition when it has none.
  static absl::StatusOr<ChatTemplate> FromTokenizer(const Tokenizer& tokenizer);
  // A format chosen by hand (e.g. by model type when the model ships no template).
  static ChatTemplate ForFormat(ChatFormat format, std::string bos_token, std::string eos_token,
                                std::string default_system_prompt = "");

  // The prompt text. Encode it with add_special_tokens = false: it holds its special tokens.
  // kInvalidArgument for conversations the template rejects (no messages, roles that do not
  // alternate where the template requires it, roles it does not know), with the template's
  // message where it has one.
  absl::StatusOr<std::string> Apply(absl::Span<const ChatMessage> messages,
                                    const ChatTemplateOptions& options) const;

  ChatFormat format() const { return format_; }
  // The template renders tools and tool calls (see above).
  bool supports_tools() const;
  // vLLM's tool-call parser for what this format's models write when they call a tool:
  // "llama3_json", "hermes" (Qwen2.5, Qwen3), "mistral"; empty when the format has no tools.
  absl::string_view tool_call_parser() const;
  // vLLM's reasoning parser for this format's models: "qwen3" (they open a <think> block);
  // empty for formats whose models do not reason.
  absl::string_view reasoning_parser() const;
  // "llama3", "llama3.1", "chatml", "qwen3", "mistral", "mistral-v0.3".
  absl::string_view name() const;

 private:
  ChatTemplate() = default;

  ChatFormat format_ = ChatFormat::kChatMl;
  std::string bos_;
  std::string eos_;
  std::string default_system_;  // ChatML: used when the first message is not a system message
  std::string default_date_ = "26 Jul 2024";
  bool date_is_today_ = false;      // Llama 3.2: strftime_now
  bool tool_responses_ = false;     // ChatML: "tool" messages as <tool_response> blocks
  bool chatml_tools_ = false;       // ChatML: <tools> in the system block, <tool_call> blocks
  std::string mistral_eos_suffix_;  // Mistral v0.1 variants append " " after eos_token
};

}  // namespace tessera::model
