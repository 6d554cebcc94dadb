#include "model/chat_template.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "model/json_util.h"
#include "model/tokenizer_internal.h"

namespace tessera::model {
namespace {

using ojson = nlohmann::ordered_json;

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
    t.chatml_tools_ =
        absl::StrContains(jinja, "<tools>") && absl::StrContains(jinja, "<tool_call>");
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
  t.chatml_tools_ = format == ChatFormat::kQwen3;
  return t;
}

absl::string_view ChatTemplate::reasoning_parser() const {
  return format_ == ChatFormat::kQwen3 ? "qwen3" : "";
}

bool ChatTemplate::supports_tools() const { return !tool_call_parser().empty(); }

absl::string_view ChatTemplate::tool_call_parser() const {
  switch (format_) {
    case ChatFormat::kLlama31:
      return "llama3_json";
    case ChatFormat::kChatMl:
    case ChatFormat::kQwen3:
      return chatml_tools_ ? "hermes" : "";
    case ChatFormat::kMistralV3:
      return "mistral";
    case ChatFormat::kLlama3:
    case ChatFormat::kMistral:
      return "";
  }
  return "";
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

// Jinja's `tojson` as transformers defines it.
std::string ToJson(const ojson& value, int indent = -1) {
  return internal::PythonJsonDumps(value, indent);
}

// A tool call's function name and arguments (the protocol layer checked that both are there).
std::string CallName(const ChatToolCall& call) {
  const auto it = call.function.find("name");
  return it != call.function.end() && it->is_string() ? it->get<std::string>() : "";
}
ojson CallArguments(const ChatToolCall& call) {
  const auto it = call.function.find("arguments");
  return it != call.function.end() ? *it : ojson::object();
}

// Qwen2.5 and Qwen3: the tools block of the system turn, around one JSON line per tool.
constexpr absl::string_view kQwenToolsHead =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr absl::string_view kQwenToolsTail =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

void AppendQwenTools(absl::Span<const ojson> tools, std::string& out) {
  absl::StrAppend(&out, kQwenToolsHead);
  for (const ojson& tool : tools) absl::StrAppend(&out, "\n", ToJson(tool));
  absl::StrAppend(&out, kQwenToolsTail);
}

void AppendQwenToolCall(const ChatToolCall& call, bool string_arguments_raw, std::string& out) {
  const ojson arguments = CallArguments(call);
  absl::StrAppend(&out, "<tool_call>\n{\"name\": \"", CallName(call), "\", \"arguments\": ",
                  string_arguments_raw && arguments.is_string() ? arguments.get<std::string>()
                                                                : ToJson(arguments),
                  "}\n</tool_call>");
}

// Mistral v0.3 checks the length of tool call ids (9 alphanumerics, as its tokenizer makes them).
absl::Status CheckMistralCallId(absl::string_view id) {
  if (id.size() != 9) {
    return absl::InvalidArgumentError(
        "Tool call IDs should be alphanumeric strings with length 9!");
  }
  return absl::OkStatus();
}

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
      const bool tools = !options.tools.empty();
      out = absl::StrCat(bos_, "<|start_header_id|>system<|end_header_id|>\n\n",
                         tools ? "Environment: ipython\n" : "",
                         "Cutting Knowledge Date: December 2023\nToday Date: ", date, "\n\n",
                         system, "<|eot_id|>");
      if (tools) {
        // The tools go into the first message after the system message, whatever its role.
        if (first == messages.size()) {
          return absl::InvalidArgumentError(
              "Cannot put tools in the first user message when there's no first user message!");
        }
        out +=
            "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please "
            "respond with a JSON for a function call with its proper arguments that best answers "
            "the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
            "dictionary of argument name and its value}.Do not use variables.\n\n";
        for (const ojson& tool : options.tools) absl::StrAppend(&out, ToJson(tool, 4), "\n\n");
        absl::StrAppend(&out, Trim(messages[first].content), "<|eot_id|>");
        ++first;
      }
      for (size_t i = first; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (!m.tool_calls.empty()) {
          if (m.tool_calls.size() != 1) {
            return absl::InvalidArgumentError(
                "This model only supports single tool-calls at once!");
          }
          absl::StrAppend(&out, kLlamaAssistantHeader, "{\"name\": \"", CallName(m.tool_calls[0]),
                          "\", \"parameters\": ", ToJson(CallArguments(m.tool_calls[0])),
                          "}<|eot_id|>");
        } else if (m.role == "tool" || m.role == "ipython") {
          // A string is iterable to Jinja: the template writes it with tojson, quoted.
          out += LlamaTurn("ipython", ToJson(ojson(m.content)));
        } else {
          out += LlamaTurn(m.role, Trim(m.content));
        }
      }
      if (options.add_generation_prompt) absl::StrAppend(&out, kLlamaAssistantHeader);
      return out;
    }
    case ChatFormat::kChatMl: {
      const bool tools = chatml_tools_ && !options.tools.empty();
      const bool first_is_system = messages[0].role == "system";
      if (tools) {
        // Qwen2.5: the system turn (or the default one) followed by the tools.
        absl::StrAppend(&out, "<|im_start|>system\n",
                        first_is_system ? messages[0].content : default_system_, "\n\n");
        AppendQwenTools(options.tools, out);
      } else if (!first_is_system && !default_system_.empty()) {
        absl::StrAppend(&out, "<|im_start|>system\n", default_system_, "<|im_end|>\n");
      }
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        if (tools && i == 0 && first_is_system) continue;  // in the tools' system turn
        if (m.role == "tool" && tool_responses_) {
          AppendToolResponse(messages, i, out);
        } else if (m.role == "assistant" && chatml_tools_ && !m.tool_calls.empty()) {
          out += "<|im_start|>assistant";
          if (!m.content.empty()) absl::StrAppend(&out, "\n", m.content);
          for (const ChatToolCall& call : m.tool_calls) {
            out += "\n";
            AppendQwenToolCall(call, /*string_arguments_raw=*/false, out);
          }
          out += "<|im_end|>\n";
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
      if (!options.tools.empty()) {
        out += "<|im_start|>system\n";
        if (messages[0].role == "system") absl::StrAppend(&out, messages[0].content, "\n\n");
        AppendQwenTools(options.tools, out);
      } else if (messages[0].role == "system") {
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
          for (size_t k = 0; k < m.tool_calls.size(); ++k) {
            if (k > 0 || !content.empty()) out += "\n";
            AppendQwenToolCall(m.tool_calls[k], /*string_arguments_raw=*/true, out);
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
      const ChatMessage* last_user = nullptr;
      for (const ChatMessage& m : loop) {
        if (m.role == "user") last_user = &m;
        // Tool results and tool calls do not take part in the alternation.
        if (m.role == "tool" || m.role == "tool_results" || !m.tool_calls.empty()) continue;
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
          // Jinja compares the messages as dicts: every user message equal to the last one.
          if (!options.tools.empty() && last_user != nullptr && m.content == last_user->content &&
              m.tool_calls.empty() && last_user->tool_calls.empty()) {
            out += "[AVAILABLE_TOOLS] [";
            for (size_t t = 0; t < options.tools.size(); ++t) {
              out += "{\"type\": \"function\", \"function\": {";
              const ojson& function = options.tools[t].contains("function")
                                          ? options.tools[t]["function"]
                                          : ojson::object();
              bool first_item = true;
              for (auto it = function.begin(); it != function.end(); ++it) {
                if (it.key() == "return") continue;
                if (!first_item) out += ", ";
                first_item = false;
                if (it->is_string()) {
                  absl::StrAppend(&out, "\"", it.key(), "\": \"", it->get<std::string>(), "\"");
                } else {
                  absl::StrAppend(&out, "\"", it.key(), "\": ", ToJson(*it));
                }
              }
              out += "}}";
              out += t + 1 < options.tools.size() ? ", " : "]";
            }
            out += "[/AVAILABLE_TOOLS]";
          }
          if (i + 1 == loop.size() && system.has_value()) {
            absl::StrAppend(&out, "[INST] ", *system, "\n\n", m.content, "[/INST]");
          } else {
            absl::StrAppend(&out, "[INST] ", m.content, "[/INST]");
          }
        } else if (!m.tool_calls.empty()) {
          out += "[TOOL_CALLS] [";
          for (size_t k = 0; k < m.tool_calls.size(); ++k) {
            const std::string function = ToJson(m.tool_calls[k].function);
            TESSERA_RETURN_IF_ERROR(CheckMistralCallId(m.tool_calls[k].id));
            absl::StrAppend(&out, absl::string_view(function).substr(0, function.size() - 1),
                            ", \"id\": \"", m.tool_calls[k].id, "\"}");
            out += k + 1 < m.tool_calls.size() ? ", " : absl::StrCat("]", eos_);
          }
        } else if (m.role == "assistant") {
          absl::StrAppend(&out, " ", Trim(m.content), eos_);
        } else if (m.role == "tool" || m.role == "tool_results") {
          absl::StrAppend(&out, "[TOOL_RESULTS] {\"content\": ", m.content, ", ");
          TESSERA_RETURN_IF_ERROR(CheckMistralCallId(m.tool_call_id));
          absl::StrAppend(&out, "\"call_id\": \"", m.tool_call_id, "\"}[/TOOL_RESULTS]");
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
