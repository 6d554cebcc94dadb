#include "coordinator/api/tool_calls.h"

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "coordinator/api/markers.h"
#include "model/json_util.h"

namespace tessera::coordinator::api {
namespace {

using ojson = nlohmann::ordered_json;
using Choice = ToolRequest::Choice;

constexpr absl::string_view kHermesStart = "<tool_call>";
constexpr absl::string_view kHermesEnd = "</tool_call>";
constexpr absl::string_view kPythonTag = "<|python_tag|>";
constexpr absl::string_view kMistralCalls = "[TOOL_CALLS]";

absl::Status FieldError(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

const ojson* Field(const ojson& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<ojson> ParseJson(absl::string_view text) {
  ojson value = ojson::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return std::nullopt;
  return value;
}

// One byte of JSON text against `state` (0: outside strings, 1: in one, 2: after a backslash in
// one): +1 when it opens an object or array, -1 when it closes one, 0 otherwise (strings and
// their escapes are skipped; nothing else is checked).
int JsonNestingStep(char c, int& state) {
  if (state == 2) {
    state = 1;
  } else if (state == 1) {
    if (c == '\\') state = 2;
    if (c == '"') state = 0;
  } else if (c == '"') {
    state = 1;
  } else if (c == '{' || c == '[') {
    return 1;
  } else if (c == '}' || c == ']') {
    return -1;
  }
  return 0;
}

// Where the JSON object or array starting at text[begin] ends (one past it), or npos when the
// text ends first.
size_t JsonValueEnd(absl::string_view text, size_t begin) {
  int depth = 0;
  int state = 0;
  for (size_t i = begin; i < text.size(); ++i) {
    const int step = JsonNestingStep(text[i], state);
    depth += step;
    if (step < 0 && depth == 0) return i + 1;
  }
  return absl::string_view::npos;
}

// {"name": "...", <arguments_key>: {...}} as a call; nullopt when it is not one.
std::optional<ToolCall> CallFrom(const ojson& value, absl::string_view parser,
                                 std::initializer_list<const char*> argument_keys) {
  if (!value.is_object()) return std::nullopt;
  const auto name = value.find("name");
  if (name == value.end() || !name->is_string()) return std::nullopt;
  for (const char* key : argument_keys) {
    const auto arguments = value.find(key);
    if (arguments == value.end()) continue;
    return ToolCall{NewToolCallId(parser), name->get<std::string>(),
                    model::internal::PythonJsonDumps(*arguments)};
  }
  return std::nullopt;
}

// hermes: every <tool_call> block (the last may be unclosed) must hold a call.
std::optional<std::vector<ToolCall>> HermesCalls(absl::string_view text) {
  std::vector<ToolCall> calls;
  size_t pos = 0;
  size_t start;
  while ((start = text.find(kHermesStart, pos)) != absl::string_view::npos) {
    const size_t body = start + kHermesStart.size();
    const size_t end = text.find(kHermesEnd, body);
    const absl::string_view inside =
        end == absl::string_view::npos ? text.substr(body) : text.substr(body, end - body);
    const std::optional<ojson> value = ParseJson(inside);
    if (!value.has_value()) return std::nullopt;
    std::optional<ToolCall> call = CallFrom(*value, "hermes", {"arguments"});
    if (!call.has_value()) return std::nullopt;
    calls.push_back(std::move(*call));
    pos = end == absl::string_view::npos ? text.size() : end + kHermesEnd.size();
  }
  return calls;
}

// llama3_json: [<|python_tag|>]{...}; {...}, each {"name", "parameters" or "arguments"}.
std::optional<std::vector<ToolCall>> LlamaCalls(absl::string_view text) {
  text = absl::StripLeadingAsciiWhitespace(text);
  if (absl::StartsWith(text, kPythonTag)) {
    text.remove_prefix(kPythonTag.size());
  } else if (!absl::StartsWith(text, "{")) {
    return std::nullopt;
  }
  std::vector<ToolCall> calls;
  size_t pos = 0;
  while (true) {
    while (pos < text.size() &&
           (absl::ascii_isspace(static_cast<unsigned char>(text[pos])) || text[pos] == ';')) {
      ++pos;
    }
    if (pos == text.size()) break;
    if (text[pos] != '{') return std::nullopt;
    const size_t end = JsonValueEnd(text, pos);
    if (end == absl::string_view::npos) return std::nullopt;
    const std::optional<ojson> value = ParseJson(text.substr(pos, end - pos));
    if (!value.has_value()) return std::nullopt;
    std::optional<ToolCall> call = CallFrom(*value, "llama3_json", {"arguments", "parameters"});
    if (!call.has_value()) return std::nullopt;
    calls.push_back(std::move(*call));
    pos = end;
  }
  if (calls.empty()) return std::nullopt;
  return calls;
}

// mistral: what follows [TOOL_CALLS] is a JSON list of {"name", "arguments"} (or one of them).
std::optional<std::vector<ToolCall>> MistralCalls(absl::string_view after_marker) {
  std::string rest(after_marker);
  for (size_t at; (at = absl::string_view(rest).find(kMistralCalls)) != std::string::npos;) {
    rest.erase(at, kMistralCalls.size());
  }
  const std::optional<ojson> value = ParseJson(absl::StripAsciiWhitespace(rest));
  if (!value.has_value()) return std::nullopt;
  const ojson list = value->is_array() ? *value : ojson::array({*value});
  std::vector<ToolCall> calls;
  for (const ojson& item : list) {
    std::optional<ToolCall> call = CallFrom(item, "mistral", {"arguments"});
    if (!call.has_value()) return std::nullopt;
    calls.push_back(std::move(*call));
  }
  if (calls.empty()) return std::nullopt;
  return calls;
}

// What a function without parameters takes: {} (vLLM's intent; xgrammar's strict mode, which
// vLLM uses, reads a missing additionalProperties as false).
ojson EmptyParameters() {
  return ojson{
      {"type", "object"}, {"properties", ojson::object()}, {"additionalProperties", false}};
}

// The schema that forces "required": a non-empty list of {"name": a tool, "parameters": its
// parameters}, the parameters' $defs gathered at the top (vLLM's _get_json_schema_from_tool).
absl::StatusOr<std::string> RequiredSchema(const ToolRequest& request) {
  ojson alternatives = ojson::array();
  ojson defs = ojson::object();
  for (const ojson& tool : request.tools) {
    const ojson& function = tool["function"];
    ojson parameters = function["parameters"];
    if (parameters.is_null() || parameters.empty()) parameters = EmptyParameters();
    if (parameters.is_object() && parameters.contains("$defs")) {
      for (const auto& [name, schema] : parameters["$defs"].items()) {
        if (defs.contains(name) && defs[name] != schema) {
          return FieldError("tools", absl::StrCat("the definition '", name,
                                                  "' has different schemas in different tools"));
        }
        defs[name] = schema;
      }
      parameters.erase("$defs");
    }
    alternatives.push_back(
        ojson{{"properties",
               {{"name", {{"type", "string"}, {"enum", ojson::array({function["name"]})}}},
                {"parameters", std::move(parameters)}}},
              {"required", ojson::array({"name", "parameters"})}});
  }
  ojson schema = {{"type", "array"}, {"minItems", 1}, {"items", {{"anyOf", alternatives}}}};
  if (!request.parallel_tool_calls) schema["maxItems"] = 1;
  if (!defs.empty()) schema["$defs"] = std::move(defs);
  return schema.dump();
}

}  // namespace

bool IsToolCallParser(absl::string_view name) {
  return name.empty() || name == "hermes" || name == "llama3_json" || name == "mistral";
}

std::string NewToolCallId(absl::string_view parser) {
  thread_local std::mt19937_64 rng([] {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }());
  if (parser == "mistral") {
    static constexpr char kAlphabet[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    std::string id(9, 'a');
    for (char& c : id) c = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
    return id;
  }
  return absl::StrFormat("chatcmpl-tool-%016x%016x", rng(), rng());
}

absl::Status ParseToolRequest(const ojson& body, ToolRequest& out,
                              model::StructuredOutput& structured) {
  if (const ojson* tools = Field(body, "tools")) {
    if (!tools->is_array()) {
      return FieldError("tools",
                        absl::StrCat("expected a list of tools, got ", tools->type_name()));
    }
    for (size_t i = 0; i < tools->size(); ++i) {
      const ojson& tool = (*tools)[i];
      const std::string where = absl::StrCat("tools[", i, "]");
      if (!tool.is_object()) return FieldError("tools", where + ": expected an object");
      const ojson* type = Field(tool, "type");
      if (type != nullptr && *type != "function") {
        return FieldError("tools", where + ".type: only \"function\" tools are supported");
      }
      const ojson* function = Field(tool, "function");
      if (function == nullptr || !function->is_object()) {
        return FieldError("tools", where + ".function: expected an object");
      }
      const ojson* name = Field(*function, "name");
      if (name == nullptr || !name->is_string() || name->get<std::string>().empty()) {
        return FieldError("tools", where + ".function.name: expected a non-empty string");
      }
      const ojson* description = Field(*function, "description");
      if (description != nullptr && !description->is_string()) {
        return FieldError("tools", where + ".function.description: expected a string");
      }
      const ojson* parameters = Field(*function, "parameters");
      if (parameters != nullptr && !parameters->is_object()) {
        return FieldError("tools",
                          where + ".function.parameters: expected a JSON schema (an object)");
      }
      // vLLM's FunctionDefinition.model_dump(): its fields in order, null when missing, then any
      // others the client sent (strict, ...).
      ojson normalized = {{"name", *name},
                          {"description", description != nullptr ? *description : ojson()},
                          {"parameters", parameters != nullptr ? *parameters : ojson()}};
      for (const auto& [key, value] : function->items()) {
        if (key != "name" && key != "description" && key != "parameters") normalized[key] = value;
      }
      out.tools.push_back(ojson{{"type", "function"}, {"function", std::move(normalized)}});
    }
  }
  if (const ojson* parallel = Field(body, "parallel_tool_calls")) {
    if (!parallel->is_boolean()) {
      return FieldError("parallel_tool_calls",
                        absl::StrCat("expected a boolean, got ", parallel->type_name()));
    }
    out.parallel_tool_calls = parallel->get<bool>();
  }

  const ojson* choice = Field(body, "tool_choice");
  out.choice = out.tools.empty() ? Choice::kNone : Choice::kAuto;
  if (choice == nullptr) return absl::OkStatus();
  if (*choice == "none") {
    out.choice = Choice::kNone;
    return absl::OkStatus();
  }
  if (Field(body, "tools") == nullptr) {
    return FieldError("tool_choice", "When using `tool_choice`, `tools` must be set.");
  }
  constexpr absl::string_view kUsage =
      "give \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": "
      "\"my_function\"}}";
  if (choice->is_string()) {
    if (*choice == "auto") {
      out.choice = out.tools.empty() ? Choice::kNone : Choice::kAuto;
    } else if (*choice == "required") {
      // OpenAI: "required" with no tools behaves as "none".
      out.choice = out.tools.empty() ? Choice::kNone : Choice::kRequired;
    } else {
      return FieldError("tool_choice", absl::StrCat("unknown value \"", choice->get<std::string>(),
                                                    "\"; ", kUsage));
    }
  } else if (choice->is_object()) {
    const ojson* function = Field(*choice, "function");
    const ojson* name =
        function != nullptr && function->is_object() ? Field(*function, "name") : nullptr;
    if (name == nullptr || !name->is_string() || name->get<std::string>().empty()) {
      return FieldError("tool_choice", absl::StrCat("expected a function's name; ", kUsage));
    }
    out.choice = Choice::kNamed;
    out.function = name->get<std::string>();
  } else {
    return FieldError("tool_choice", absl::StrCat("expected a string or an object, got ",
                                                  choice->type_name(), "; ", kUsage));
  }

  if (out.choice != Choice::kRequired && out.choice != Choice::kNamed) return absl::OkStatus();
  if (structured.kind != model::StructuredOutput::Kind::kNone) {
    return FieldError("tool_choice",
                      "\"required\" or a named function forces the output to the tools' "
                      "arguments; it cannot be combined with response_format or "
                      "structured_outputs");
  }
  std::string schema;
  if (out.choice == Choice::kNamed) {
    const ojson* parameters = nullptr;
    bool found = false;
    for (const ojson& tool : out.tools) {
      if (tool["function"]["name"] == out.function) {
        found = true;
        parameters = Field(tool["function"], "parameters");
        break;
      }
    }
    if (!found) {
      return FieldError("tool_choice",
                        absl::StrCat("the function \"", out.function,
                                     "\" is not one of the tools given (tools[i].function.name)"));
    }
    schema = parameters != nullptr && !parameters->empty() ? parameters->dump()
                                                           : EmptyParameters().dump();
  } else {
    TESSERA_ASSIGN_OR_RETURN(schema, RequiredSchema(out));
  }
  structured = {model::StructuredOutput::Kind::kJsonSchema, std::move(schema)};
  if (auto grammar = model::Grammar::Compile(structured); !grammar.ok()) {
    return FieldError("tool_choice", absl::StrCat("the tools' parameters cannot be enforced: ",
                                                  grammar.status().message()));
  }
  return absl::OkStatus();
}

ToolCallResult ExtractToolCalls(const ToolRequest& request, absl::string_view parser,
                                absl::string_view text, bool finished_by_stop) {
  ToolCallResult result;
  std::optional<std::vector<ToolCall>> calls;
  switch (request.choice) {
    case Choice::kNone:
      result.content = std::string(text);
      return result;
    case Choice::kNamed:
      // The forced output is the arguments (whole, or cut by max_tokens).
      result.content = "";
      result.calls.push_back(ToolCall{NewToolCallId(parser), request.function, std::string(text)});
      return result;
    case Choice::kRequired: {
      // The items of the forced list that closed, read as the stream reads them (a list cut by
      // max_tokens gives the calls before the cut).
      ToolCallStream stream(request, std::string(parser));
      calls.emplace();
      for (const nlohmann::json& call : stream.Add(text).tool_calls) {
        calls->push_back(
            ToolCall{call["id"], call["function"]["name"], call["function"]["arguments"]});
      }
      result.content = "";
      break;
    }
    case Choice::kAuto: {
      size_t marker = absl::string_view::npos;
      if (parser == "hermes") {
        marker = text.find(kHermesStart);
        if (marker != absl::string_view::npos) calls = HermesCalls(text);
      } else if (parser == "mistral") {
        marker = text.find(kMistralCalls);
        if (marker != absl::string_view::npos) {
          calls = MistralCalls(text.substr(marker + kMistralCalls.size()));
        }
      } else if (parser == "llama3_json") {
        calls = LlamaCalls(text);
        marker = 0;
      }
      if (!calls.has_value() || calls->empty()) {
        result.content = std::string(text);
        return result;
      }
      if (marker > 0) result.content = std::string(text.substr(0, marker));
      break;
    }
  }
  result.calls = std::move(*calls);
  if (!request.parallel_tool_calls && result.calls.size() > 1) result.calls.resize(1);
  result.finish_as_tool_calls =
      !result.calls.empty() && (request.choice == Choice::kAuto || finished_by_stop);
  return result;
}

ToolCallStream::ToolCallStream(const ToolRequest& request, std::string parser)
    : choice_(request.choice),
      function_(request.function),
      parallel_(request.parallel_tool_calls),
      parser_(std::move(parser)) {
  if (choice_ == Choice::kAuto && parser_ == "llama3_json") state_ = State::kUndecided;
  if (choice_ == Choice::kNamed) named_id_ = NewToolCallId(parser_);
}

void ToolCallStream::EmitCall(const ToolCall& call, Delta& out) {
  if (!parallel_ && calls_ > 0) return;
  out.tool_calls.push_back(nlohmann::json{
      {"index", calls_},
      {"id", call.id},
      {"type", "function"},
      {"function", nlohmann::json{{"name", call.name}, {"arguments", call.arguments}}}});
  ++calls_;
}

ToolCallStream::Delta ToolCallStream::Add(absl::string_view text) {
  Delta out;
  switch (choice_) {
    case Choice::kNone:
      out.content = std::string(text);
      return out;
    case Choice::kNamed:
      if (text.empty()) return out;
      if (calls_ == 0) {
        EmitCall(ToolCall{named_id_, function_, std::string(text)}, out);
      } else {
        out.tool_calls.push_back(nlohmann::json{
            {"index", 0}, {"function", nlohmann::json{{"arguments", std::string(text)}}}});
      }
      return out;
    case Choice::kRequired:
      pending_.append(text.data(), text.size());
      AddRequired(out);
      return out;
    case Choice::kAuto:
      pending_.append(text.data(), text.size());
      if (parser_ == "hermes") {
        AddHermes(out);
      } else if (parser_ == "mistral") {
        AddMistral(out);
      } else if (parser_ == "llama3_json") {
        AddLlama(out);
      } else {
        out.content = std::move(pending_);
        pending_.clear();
      }
      return out;
  }
  return out;
}

// Each item of the forced list is sent as a call as soon as its object closes.
void ToolCallStream::AddRequired(Delta& out) {
  for (; scanned_ < pending_.size(); ++scanned_) {
    const char c = pending_[scanned_];
    const int step = JsonNestingStep(c, json_state_);
    depth_ += step;
    if (step > 0) {
      if (depth_ == 2 && c == '{') element_start_ = scanned_;
    } else if (step < 0) {
      if (depth_ == 1 && c == '}') {
        const std::optional<ojson> item = ParseJson(
            absl::string_view(pending_).substr(element_start_, scanned_ + 1 - element_start_));
        if (item.has_value()) {
          if (std::optional<ToolCall> call = CallFrom(*item, parser_, {"parameters"})) {
            EmitCall(*call, out);
          }
        }
      }
    }
  }
}

void ToolCallStream::AddHermes(Delta& out) {
  while (true) {
    if (state_ == State::kContent || state_ == State::kAfterCalls) {
      const size_t at = absl::string_view(pending_).find(kHermesStart);
      if (at != std::string::npos) {
        if (state_ == State::kContent) out.content += pending_.substr(0, at);
        pending_.erase(0, at + kHermesStart.size());
        state_ = State::kInCall;
        continue;
      }
      const size_t keep = MarkerPrefixAtEnd(pending_, kHermesStart);
      // Text after the calls is not content (as the non-streaming parser reads it).
      if (state_ == State::kContent) out.content += pending_.substr(0, pending_.size() - keep);
      pending_.erase(0, pending_.size() - keep);
      return;
    }
    const size_t end = absl::string_view(pending_).find(kHermesEnd);
    if (end == std::string::npos) return;
    const std::string inside = pending_.substr(0, end);
    std::optional<ToolCall> call;
    if (const std::optional<ojson> value = ParseJson(inside)) {
      call = CallFrom(*value, parser_, {"arguments"});
    }
    if (call.has_value()) {
      EmitCall(*call, out);
    } else {
      // Not a call after all: the model's text, whole.
      absl::StrAppend(&out.content, kHermesStart, inside, kHermesEnd);
    }
    pending_.erase(0, end + kHermesEnd.size());
    state_ = State::kAfterCalls;
  }
}

void ToolCallStream::AddMistral(Delta& out) {
  if (state_ != State::kContent) return;  // buffered until the end
  const size_t at = absl::string_view(pending_).find(kMistralCalls);
  if (at != std::string::npos) {
    out.content += pending_.substr(0, at);
    pending_.erase(0, at + kMistralCalls.size());
    state_ = State::kBuffered;
    return;
  }
  const size_t keep = MarkerPrefixAtEnd(pending_, kMistralCalls);
  out.content += pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
}

void ToolCallStream::AddLlama(Delta& out) {
  if (state_ == State::kBuffered) return;
  if (state_ == State::kUndecided) {
    const absl::string_view start = absl::StripLeadingAsciiWhitespace(pending_);
    if (start.empty() ||
        (start.size() < kPythonTag.size() && absl::StartsWith(kPythonTag, start))) {
      return;  // not known yet
    }
    if (absl::StartsWith(start, kPythonTag) || absl::StartsWith(start, "{")) {
      state_ = State::kBuffered;  // a call, perhaps: read whole at the end
      return;
    }
    state_ = State::kContent;
  }
  out.content += pending_;
  pending_.clear();
}

ToolCallStream::Delta ToolCallStream::Finish() {
  Delta out;
  if (choice_ == Choice::kNamed && calls_ == 0) {
    // No text at all: still the call, with empty arguments (as the whole-text reading).
    EmitCall(ToolCall{named_id_, function_, ""}, out);
  }
  if (choice_ != Choice::kAuto) return out;
  switch (state_) {
    case State::kContent:
    case State::kUndecided:
      out.content = std::move(pending_);
      break;
    case State::kAfterCalls:
      break;                // after the calls: not content
    case State::kInCall: {  // hermes, unclosed
      std::optional<ToolCall> call;
      if (const std::optional<ojson> value = ParseJson(pending_)) {
        call = CallFrom(*value, parser_, {"arguments"});
      }
      if (call.has_value()) {
        EmitCall(*call, out);
      } else {
        out.content = absl::StrCat(kHermesStart, pending_);
      }
      break;
    }
    case State::kBuffered: {
      std::optional<std::vector<ToolCall>> calls =
          parser_ == "mistral" ? MistralCalls(pending_) : LlamaCalls(pending_);
      if (calls.has_value()) {
        for (const ToolCall& call : *calls) EmitCall(call, out);
      } else {
        out.content = parser_ == "mistral" ? absl::StrCat(kMistralCalls, pending_) : pending_;
      }
      break;
    }
  }
  pending_.clear();
  return out;
}

bool ToolCallStream::FinishAsToolCalls(bool finished_by_stop) const {
  if (calls_ == 0) return false;
  return choice_ == Choice::kAuto || (choice_ == Choice::kRequired && finished_by_stop);
}

}  // namespace tessera::coordinator::api
