// Tool calling for the OpenAI chat API, as vLLM's server does it (vllm/entrypoints/openai,
// tool_parsers/): what a request asks (tools, tool_choice, parallel_tool_calls), and how the
// model's text becomes tool calls.
//
//  - tool_choice "none": the tools are shown to the model (the chat template renders them), its
//    text is returned as content.
//  - "auto" (the default with tools): the model's text is read by the tool-call parser of its
//    family; calls it finds are returned as tool_calls with finish_reason "tool_calls", the text
//    before them as content. Parsers, named as vLLM's --tool-call-parser:
//      hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen2.5, Qwen3)
//      llama3_json  {"name": ..., "parameters": {...}} (; separated), optionally after
//                   <|python_tag|> (Llama 3.1-3.3)
//      mistral      [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...] (Mistral v0.3)
//  - "required": the output is forced (a structured output) to a JSON list of
//    {"name": one of the tools, "parameters": its parameters' schema}, one call per item (a list
//    cut by max_tokens: the items before the cut).
//  - a named function: the output is forced to that function's parameters; it is the call's
//    arguments.
//
// Pure functions and one per-choice streaming state; thread-compatible.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/structured_output.h"
#include "nlohmann/json.hpp"

namespace tessera::coordinator::api {

struct ToolRequest {
  enum class Choice { kNone, kAuto, kRequired, kNamed };
  // As the chat template gets them: {"type": "function", "function": {"name", "description",
  // "parameters", extra fields}} with missing fields null (vLLM's model_dump).
  std::vector<nlohmann::ordered_json> tools;
  Choice choice = Choice::kNone;
  std::string function;  // kNamed: its name
  bool parallel_tool_calls = true;
};

// The parsers above; "" (none) is valid too.
bool IsToolCallParser(absl::string_view name);
inline constexpr absl::string_view kToolCallParsers = "hermes, llama3_json, mistral";

// Reads tools, tool_choice and parallel_tool_calls of a chat request body (`body` keeps the
// client's key order: the template shows the tools as given). For "required" and a named
// function, sets `structured` to the schema that forces the output (kInvalidArgument when the
// request already asks for a structured output, or when the schema cannot be enforced).
// kInvalidArgument messages start with the field at fault.
absl::Status ParseToolRequest(const nlohmann::ordered_json& body, ToolRequest& out,
                              model::StructuredOutput& structured);

// One call, as a response carries it.
struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments;  // JSON text (Python's json.dumps of the arguments, as vLLM writes)
};

// A new call id: "chatcmpl-tool-<32 hex>" as vLLM's, or 9 alphanumerics for the mistral parser
// (its template checks the length of the ids it is given back).
std::string NewToolCallId(absl::string_view parser);

// What the model's whole output says (non-streaming).
struct ToolCallResult {
  std::optional<std::string> content;  // null when only calls were made
  std::vector<ToolCall> calls;
  bool finish_as_tool_calls = false;  // finish_reason "tool_calls"
};
// `finished_by_stop`: the output ended by itself (not max_tokens).
ToolCallResult ExtractToolCalls(const ToolRequest& request, absl::string_view parser,
                                absl::string_view text, bool finished_by_stop);

// The streaming counterpart, one per choice: feed it the text as it comes, send what it returns.
// Content that may begin a call's marker is held back until it is known not to.
class ToolCallStream {
 public:
  ToolCallStream(const ToolRequest& request, std::string parser);

  struct Delta {
    std::string content;
    nlohmann::json tool_calls = nlohmann::json::array();  // OpenAI's delta.tool_calls items
    bool empty() const { return content.empty() && tool_calls.empty(); }
  };
  Delta Add(absl::string_view text);
  // The end of the output: what was held back, and calls completed by the end.
  Delta Finish();
  // Some call was sent: finish_reason "tool_calls" (auto; required when it ended by itself).
  bool FinishAsToolCalls(bool finished_by_stop) const;

 private:
  enum class State { kContent, kInCall, kAfterCalls, kBuffered, kUndecided };
  void EmitCall(const ToolCall& call, Delta& out);
  void AddRequired(Delta& out);
  void AddHermes(Delta& out);
  void AddMistral(Delta& out);
  void AddLlama(Delta& out);

  ToolRequest::Choice choice_;
  std::string function_;
  bool parallel_ = true;
  std::string parser_;
  State state_ = State::kContent;
  std::string pending_;  // text not yet sent (or sent and kept, for the required list)
  size_t scanned_ = 0;   // required: how far pending_ has been scanned
  int depth_ = 0;        // required: nesting of the list's items
  int json_state_ = 0;   // required: inside a string (1), after its backslash (2), or not (0)
  size_t element_start_ = 0;
  int calls_ = 0;
  std::string named_id_;
};

}  // namespace tessera::coordinator::api
