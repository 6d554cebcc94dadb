// libFuzzer target: arbitrary bytes as a model's chat output, read by the reasoning and tool-call
// parsers (coordinator/api/reasoning.h, tool_calls.h) whole and as a stream cut at arbitrary
// points. The input is a mode byte (which parser, which tool_choice), a seed byte for the cuts,
// then the text. Checked: nothing crashes; a stream adds up to the whole-text reading (always for
// reasoning; for tool calls when the whole text holds calls, or holds none and no marker); every
// call's arguments are JSON; text that parses as JSON reads back the same through
// PythonJsonDumps, and as a request body through ParseToolRequest gives a Status. Built by
// scripts/run-fuzz.sh.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "coordinator/api/reasoning.h"
#include "coordinator/api/tool_calls.h"
#include "model/json_util.h"
#include "nlohmann/json.hpp"

namespace {

using tessera::coordinator::api::ExtractToolCalls;
using tessera::coordinator::api::ReasoningStream;
using tessera::coordinator::api::SplitReasoning;
using tessera::coordinator::api::ToolCallResult;
using tessera::coordinator::api::ToolCallStream;
using tessera::coordinator::api::ToolRequest;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// Piece lengths from a small generator seeded by the input.
struct Cuts {
  uint32_t state;
  size_t Next() {
    state = state * 1103515245u + 12345u;
    return 1 + (state >> 16) % 7;
  }
};

void FuzzReasoning(const char* parser, const std::string& text, uint8_t seed) {
  const tessera::coordinator::api::ReasoningSplit whole = SplitReasoning(parser, text);
  ReasoningStream stream(parser);
  std::string reasoning;
  std::string content;
  Cuts cuts{seed};
  for (size_t pos = 0; pos < text.size();) {
    const size_t n = std::min(text.size() - pos, cuts.Next());
    const ReasoningStream::Delta d = stream.Add(absl::string_view(text).substr(pos, n));
    reasoning += d.reasoning;
    content += d.content;
    pos += n;
  }
  const ReasoningStream::Delta tail = stream.Finish();
  reasoning += tail.reasoning;
  content += tail.content;
  Check(reasoning == whole.reasoning.value_or(""));
  Check(content == whole.content.value_or(""));
}

void FuzzTools(const ToolRequest& request, const char* parser, const std::string& text,
               uint8_t seed) {
  const ToolCallResult whole = ExtractToolCalls(request, parser, text, true);
  for (const auto& call : whole.calls) {
    if (request.choice != ToolRequest::Choice::kNamed)
      Check(nlohmann::json::accept(call.arguments));
  }
  ToolCallStream stream(request, parser);
  std::string content;
  std::vector<std::pair<std::string, std::string>> calls;
  const auto take = [&](const ToolCallStream::Delta& delta) {
    content += delta.content;
    for (const nlohmann::json& call : delta.tool_calls) {
      const size_t index = call["index"].get<size_t>();
      Check(index <= calls.size());
      if (index == calls.size()) calls.emplace_back();
      if (call["function"].contains("name")) calls[index].first = call["function"]["name"];
      calls[index].second += call["function"]["arguments"].get<std::string>();
    }
  };
  Cuts cuts{seed};
  for (size_t pos = 0; pos < text.size();) {
    const size_t n = std::min(text.size() - pos, cuts.Next());
    take(stream.Add(absl::string_view(text).substr(pos, n)));
    pos += n;
  }
  take(stream.Finish());
  const bool marker = text.find("<tool_call>") != std::string::npos ||
                      text.find("[TOOL_CALLS]") != std::string::npos ||
                      text.find('{') != std::string::npos || text.find('[') != std::string::npos;
  if (whole.calls.empty() && marker) return;  // a malformed call: the stream may differ
  Check(content == whole.content.value_or(""));
  Check(calls.size() == whole.calls.size());
  for (size_t i = 0; i < calls.size(); ++i) {
    Check(calls[i].first == whole.calls[i].name);
    Check(calls[i].second == whole.calls[i].arguments);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mode = data[0];
  const uint8_t seed = data[1];
  const std::string text(reinterpret_cast<const char*>(data) + 2, size - 2);

  static const char* const kReasoning[] = {"qwen3", "deepseek_r1", ""};
  FuzzReasoning(kReasoning[mode % 3], text, seed);

  ToolRequest request;
  request.tools.push_back(nlohmann::ordered_json::parse(
      R"({"type": "function", "function": {"name": "f", "description": null,
          "parameters": null}})"));
  request.parallel_tool_calls = (mode & 0x80) == 0;
  static const char* const kParsers[] = {"hermes", "llama3_json", "mistral", ""};
  switch ((mode / 3) % 4) {
    case 0:
      request.choice = ToolRequest::Choice::kAuto;
      break;
    case 1:
      request.choice = ToolRequest::Choice::kRequired;
      break;
    case 2:
      request.choice = ToolRequest::Choice::kNamed;
      request.function = "f";
      break;
    default:
      request.choice = ToolRequest::Choice::kNone;
      break;
  }
  FuzzTools(request, kParsers[(mode / 12) % 4], text, seed);

  // Text that is JSON: Python's json.dumps of it reads back the same; as a request body the tool
  // fields parse or give a Status.
  const nlohmann::ordered_json value =
      nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!value.is_discarded()) {
    for (const int indent : {-1, 2}) {
      const std::string dumped = tessera::model::internal::PythonJsonDumps(value, indent);
      const nlohmann::ordered_json back =
          nlohmann::ordered_json::parse(dumped, nullptr, /*allow_exceptions=*/false);
      Check(!back.is_discarded());
      Check(back == value || value.dump().find("NaN") != std::string::npos);
    }
    if (value.is_object()) {
      ToolRequest parsed;
      tessera::model::StructuredOutput structured;
      (void)tessera::coordinator::api::ParseToolRequest(value, parsed, structured);
    }
  }
  return 0;
}
