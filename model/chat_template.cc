#include "model/chat_template.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "model/tokenizer_internal.h"

namespace tessera::model {
namespace {

constexpr absl::string_view kSupported =
    "supported: Llama 3 and 3.1-3.3 (<|start_header_id|>), ChatML (Qwen2, Qwen2.5: <|im_start|>), "
    "Qwen3 (ChatML with <think>), Mistral [INST] v0.1 and v0.3";

// Python's str.isspace, which Jinja's trim and strip use.
bool IsPythonSpace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

// Jinja's `trim`: Python's str.strip() of white space.
std::string Trim(absl::string_view text) {
  if (internal::FindInvalidUtf8(text).has_value()) return std::string(text);
  size_t begin = 0;
  while (begin < text.size()) {
    size_t next = begin;
    if (!IsPythonSpace(internal::DecodeUtf8(text, next))) break;
    begin = next;
  }
  size_t end = begin;
  size_t pos = begin;
  while (pos < text.size()) {
    if (!IsPythonSpace(internal::DecodeUtf8(text, pos))) end = pos;
  }
  return std::string(text.substr(begin, end - begin));
}

absl::string_view StripNewlines(absl::string_view text, bool left, bool right) {
  while (left && absl::StartsWith(text, "\n")) text.remove_prefix(1);
  while (right && absl::EndsWith(text, "\n")) text.remove_suffix(1);
  return text;
}

// Python's text.split(sep)[0] and [-1].
absl::string_view BeforeFirst(absl::string_view text, absl::string_view sep) {
  const size_t pos = text.find(sep);
  return pos == absl::string_view::npos ? text : text.substr(0, pos);
}
absl::string_view AfterLast(absl::string_view text, absl::string_view sep) {
  const size_t pos = text.rfind(sep);
  return pos == absl::string_view::npos ? text : text.substr(pos + sep.size());
}

absl::Status UnknownRole(absl::string_view name, absl::string_view role) {
  return absl::InvalidArgumentError(
      absl::StrCat("chat template ", name, ": role \"", role, "\" is not supported"));
}

// The default system prompt of a ChatML template: the literal text of
// '<|im_start|>system\n...<|im_end|>' (newline written either way), if any.
std::string FindDefaultSystemPrompt(absl::string_view jinja) {
  for (absl::string_view head : {"<|im_start|>system\\n", "<|im_start|>system\n"}) {
    size_t pos = 0;
    while ((pos = jinja.find(head, pos)) != absl::string_view::npos) {
      pos += head.size();
      const size_t end = jinja.find("<|im_end|>", pos);
      if (end == absl::string_view::npos) break;
      const absl::string_view text = jinja.substr(pos, end - pos);
      if (!text.empty() && text.find_first_of("'\"+{}%\\") == absl::string_view::npos) {
        return std::string(text);
      }
    }
  }
  return "";
}

// A literal `set date_string = "..."` default, if the template has one.
std::string FindDefaultDate(absl::string_view jinja) {
  for (absl::string_view quote : {"\"", "'"}) {
    const std::string head = absl::StrCat("set date_string = ", quote);
    const size_t pos = jinja.find(head);
    if (pos == absl::string_view::npos) continue;
    const size_t begin = pos + head.size();
    const size_t end = jinja.find(quote, begin);
    if (end != absl::string_view::npos) return std::string(jinja.substr(begin, end - begin));
  }
  return "26 Jul 2024";
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::FromJinja(absl::string_view jinja, std::string bos_token,
                                                     std::string eos_token) {
  ChatTemplate t;
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  if (absl::StrContains(jinja, "<|start_header_id|>")) {
    if (absl::StrContains(jinja, "Cutting Knowledge Date")) {
      t.format_ = ChatFormat::kLlama31;
      t.default_date_ = FindDefaultDate(jinja);
      t.date_is_today_ = absl::StrContains(jinja, "strftime_now");
    } else {
      t.format_ = ChatFormat::kLlama3;
    }
    return t;
  }
  if (absl::StrContains(jinja, "<|im_start|>")) {
    const bool qwen3 =
        absl::StrContains(jinja, "<think>") && absl::StrContains(jinja, "last_query_index");
    t.format_ = qwen3 ? ChatFormat::kQwen3 : ChatFormat::kChatMl;
    if (!qwen3) t.default_system_ = FindDefaultSystemPrompt(jinja);
    t.tool_responses_ = absl::StrContains(jinja, "<tool_response>");
    return t;
  }
  if (absl::StrContains(jinja, "[INST]")) {
    if (absl::StrContains(jinja, "<<SYS>>")) {
      return absl::UnimplementedError(absl::StrCat(
          "chat template: the Llama 2 format (<<SYS>>) is not supported; ", kSupported));
    }
    const bool v3 = absl::StrContains(jinja, "\"[INST] \" + message[\"content\"] + \"[/INST]\"") &&
                    absl::StrContains(jinja, "loop.last and system_message is defined");
    const bool v1 = absl::StrContains(jinja, "'[INST] ' + message['content'] + ' [/INST]'") &&
                    !absl::StrContains(jinja, "system");
    if (v3) {
      t.format_ = ChatFormat::kMistralV3;
      return t;
    }
    if (v1) {
      t.format_ = ChatFormat::kMistral;
      // push_back, not = " ": GCC 12 reports a false -Wrestrict for the assignment.
      if (absl::StrContains(jinja, "eos_token + ' '")) t.mistral_eos_suffix_.push_back(' ');
      return t;
    }
    return absl::UnimplementedError(
        absl::StrCat("chat template: this Mistral [INST] variant is not recognised; ", kSupported));
  }
  return absl::UnimplementedError(
      absl::StrCat("chat template not recognised (tessera renders known formats, it has no Jinja "
                   "engine); ",
                   kSupported));
}

absl::StatusOr<ChatTemplate> ChatTemplate::FromTokenizer(const Tokenizer& tokenizer) {
  const TokenizerConfig& config = tokenizer.config();
  if (!config.chat_template.has_value()) {
    return absl::FailedPreconditionError(
        "the model has no chat template (tokenizer_config.json \"chat_template\")");
  }
  return FromJinja(*config.chat_template, config.bos_token.value_or(""),
                   config.eos_token.value_or(""));
}

ChatTemplate ChatTemplate::ForFormat(ChatFormat format, std::string bos_token,
                                     std::string eos_token, std::string default_system_prompt) {
  ChatTemplate t;
  t.format_ = format;
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  t.default_system_ = std::move(default_system_prompt);
  t.tool_responses_ = format == ChatFormat::kQwen3;
  return t;
}

absl::string_view ChatTemplate::name() const {
  switch (format_) {
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kLlama31:
      return "llama3.1";
    case ChatFormat::kChatMl:
      return "chatml";
    case ChatFormat::kQwen3:
      return "qwen3";
    case ChatFormat::kMistral:
      return "mistral";
    case ChatFormat::kMistralV3:
      return "mistral-v0.3";
  }
  return "unknown";
}

namespace {

std::string LlamaTurn(absl::string_view role, absl::string_view content) {
  return absl::StrCat("<|start_header_id|>", role, "<|end_header_id|>\n\n", content, "<|eot_id|>");
}

constexpr absl::string_view kLlamaAssistantHeader =
    "<|start_header_id|>assistant<|end_header_id|>\n\n";

// <|im_start|>user ... blocks of consecutive tool messages, as Qwen2.5 and Qwen3 write them.
void AppendToolResponse(absl::Span<const ChatMessage> messages, size_t i, std::string& out) {
  if (i == 0 || messages[i - 1].role != "tool") out += "<|im_start|>user";
  absl::StrAppend(&out, "\n<tool_response>\n", messages[i].content, "\n</tool_response>");
  if (i + 1 == messages.size() || messages[i + 1].role != "tool") out += "<|im_end|>\n";
}

}  // namespace

absl::StatusOr<std::string> ChatTemplate::Apply(absl::Span<const ChatMessage> messages,
                                                const ChatTemplateOptions& options) const {
  if (messages.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("chat template ", name(), ": no messages"));
  }
  std::string out;
  switch (format_) {
    case ChatFormat::kLlama3: {
      out = bos_;
      for (const ChatMessage& m : messages) out += LlamaTurn(m.role, Trim(m.content));
      if (options.add_generation_prompt) absl::StrAppend(&out, kLlamaAssistantHeader);
      return out;
    }
    case ChatFormat::kLlama31: {
      size_t first = 0;
      std::string system;
      if (messages[0].role == "system") {
        system = Trim(messages[0].content);
        first = 1;
      }
      std::string date = default_date_;
      if (options.date_string.has_value()) {
        date = *options.date_string;
      } else if (date_is_today_) {
        date = absl::FormatTime("%d %b %Y", absl::Now(), absl::LocalTimeZone());
      }
      out = absl::StrCat(bos_, "<|start_header_id|>system<|end_header_id|>\n\n",
                         "Cutting Knowledge Date: December 2023\nToday Date: ", date, "\n\n",
                         system, "<|eot_id|>");
      for (size_t i = first; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "tool" || m.role == "ipython") {
          out += LlamaTurn("ipython", m.content);
        } else {
          out += LlamaTurn(m.role, Trim(m.content));
        }
      }
      if (options.add_generation_prompt) absl::StrAppend(&out, kLlamaAssistantHeader);
      return out;
    }
    case ChatFormat::kChatMl: {
      if (messages[0].role != "system" && !default_system_.empty()) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "tool" && tool_responses_) {
          AppendToolResponse(messages, i, out);
        } else if (m.role == "system" || m.role == "user" || m.role == "assistant" ||
                   m.role == "tool") {
          absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
        } else {
          return UnknownRole(name(), m.role);
        }
      }
      if (options.add_generation_prompt) out += "<|im_start|>assistant\n";
      return out;
    }
    case ChatFormat::kQwen3: {
      if (messages[0].role == "system") {
        absl::StrAppend(&out, "<|im_start|>system\n", messages[0].content, "<|im_end|>\n");
      }
      // The last user query that is not a tool response: thinking is kept after it only.
      size_t last_query = messages.size() - 1;
      for (size_t k = messages.size(); k-- > 0;) {
        const ChatMessage& m = messages[k];
        if (m.role == "user" && !(absl::StartsWith(m.content, "<tool_response>") &&
                                  absl::EndsWith(m.content, "</tool_response>"))) {
          last_query = k;
          break;
        }
      }
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (m.role == "user" || (m.role == "system" && i > 0)) {
          absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
        } else if (m.role == "assistant") {
          absl::string_view content = m.content;
          std::string reasoning;
          if (m.reasoning_content.has_value()) {
            reasoning = *m.reasoning_content;
          } else if (absl::StrContains(content, "</think>")) {
            reasoning = std::string(StripNewlines(
                AfterLast(StripNewlines(BeforeFirst(content, "</think>"), false, true), "<think>"),
                true, false));
            content = StripNewlines(AfterLast(content, "</think>"), true, false);
          }
          const bool last = i + 1 == messages.size();
          if (i > last_query && (last || !reasoning.empty())) {
            absl::StrAppend(&out, "<|im_start|>assistant\n<think>\n",
                            StripNewlines(reasoning, true, true), "\n</think>\n\n",
                            StripNewlines(content, true, false));
          } else {
            absl::StrAppend(&out, "<|im_start|>assistant\n", content);
          }
          out += "<|im_end|>\n";
        } else if (m.role == "tool") {
          AppendToolResponse(messages, i, out);
        } else if (m.role != "system") {
          return UnknownRole(name(), m.role);
        }
      }
      if (options.add_generation_prompt) {
        out += "<|im_start|>assistant\n";
        if (options.enable_thinking == false) out += "<think>\n\n</think>\n\n";
      }
      return out;
    }
    case ChatFormat::kMistral: {
      for (size_t i = 0; i < messages.size(); ++i) {
        if ((messages[i].role == "user") != (i % 2 == 0)) {
          return absl::InvalidArgumentError(
              "Conversation roles must alternate user/assistant/user/assistant/...");
        }
      }
      out = bos_;
      for (const ChatMessage& m : messages) {
        if (m.role == "user") {
          absl::StrAppend(&out, "[INST] ", m.content, " [/INST]");
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, m.content, eos_, mistral_eos_suffix_);
        } else {
          return absl::InvalidArgumentError("Only user and assistant roles are supported!");
        }
      }
      return out;
    }
    case ChatFormat::kMistralV3: {
      absl::Span<const ChatMessage> loop = messages;
      std::optional<std::string> system;
      if (messages[0].role == "system") {
        system = messages[0].content;
        loop = messages.subspan(1);
      }
      size_t index = 0;
      for (const ChatMessage& m : loop) {
        if (m.role == "tool" || m.role == "tool_results") {
          return UnknownRole(name(), m.role);
        }
        if ((m.role == "user") != (index % 2 == 0)) {
          return absl::InvalidArgumentError(
              "After the optional system message, conversation roles must alternate "
              "user/assistant/user/assistant/...");
        }
        ++index;
      }
      out = bos_;
      for (size_t i = 0; i < loop.size(); ++i) {
        const ChatMessage& m = loop[i];
        if (m.role == "user") {
          if (i + 1 == loop.size() && system.has_value()) {
            absl::StrAppend(&out, "[INST] ", *system, "\n\n", m.content, "[/INST]");
          } else {
            absl::StrAppend(&out, "[INST] ", m.content, "[/INST]");
          }
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, " ", Trim(m.content), eos_);
        } else {
          return absl::InvalidArgumentError(
              "Only user and assistant roles are supported, with the exception of an initial "
              "optional system message!");
        }
      }
      return out;
    }
  }
  return absl::InternalError("chat template: unknown format");
}

}  // namespace tessera::model
