#include "coordinator/api/tool_calls.h"

#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/structured_output.h"
#include "nlohmann/json.hpp"

namespace tessera::coordinator::api {
namespace {

using ojson = nlohmann::ordered_json;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::StartsWith;
using Choice = ToolRequest::Choice;

ojson WeatherTool() {
  return ojson::parse(R"({"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                     "required": ["city"]}, "strict": true, "description": "Weather"}})");
}

absl::Status Parse(const ojson& body, ToolRequest& out, model::StructuredOutput& structured) {
  return ParseToolRequest(body, out, structured);
}

TEST(ToolRequestTest, ToolsAreNormalizedAsVllmDumpsThem) {
  ToolRequest out;
  model::StructuredOutput structured;
  const ojson body = {
      {"tools", ojson::array({WeatherTool(), ojson::parse(R"({"function": {"name": "now"}})")})}};
  ASSERT_TRUE(Parse(body, out, structured).ok());
  ASSERT_EQ(out.tools.size(), 2u);
  // name, description, parameters first (missing: null), then what else the client sent.
  EXPECT_EQ(out.tools[0].dump(),
            R"({"type":"function","function":{"name":"get_weather","description":"Weather",)"
            R"("parameters":{"type":"object","properties":{"city":{"type":"string"}},)"
            R"("required":["city"]},"strict":true}})");
  EXPECT_EQ(
      out.tools[1].dump(),
      R"({"type":"function","function":{"name":"now","description":null,"parameters":null}})");
  EXPECT_EQ(out.choice, Choice::kAuto);  // the default with tools
  EXPECT_TRUE(out.parallel_tool_calls);
  EXPECT_EQ(structured.kind, model::StructuredOutput::Kind::kNone);
}

TEST(ToolRequestTest, ChoicesAndTheirForcedOutputs) {
  const ojson tools =
      ojson::array({WeatherTool(), ojson::parse(R"({"function": {"name": "now"}})")});
  {
    ToolRequest out;
    model::StructuredOutput structured;
    ASSERT_TRUE(Parse({{"tools", tools}, {"tool_choice", "none"}}, out, structured).ok());
    EXPECT_EQ(out.choice, Choice::kNone);
    EXPECT_EQ(out.tools.size(), 2u);  // still shown to the model
  }
  {
    ToolRequest out;
    model::StructuredOutput structured;
    ASSERT_TRUE(
        Parse({{"tools", tools},
               {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}},
              out, structured)
            .ok());
    EXPECT_EQ(out.choice, Choice::kNamed);
    EXPECT_EQ(out.function, "get_weather");
    EXPECT_EQ(structured.kind, model::StructuredOutput::Kind::kJsonSchema);
    EXPECT_EQ(ojson::parse(structured.spec), WeatherTool()["function"]["parameters"]);
  }
  {
    ToolRequest out;
    model::StructuredOutput structured;
    ASSERT_TRUE(
        Parse({{"tools", tools}, {"tool_choice", "required"}, {"parallel_tool_calls", false}}, out,
              structured)
            .ok());
    EXPECT_EQ(out.choice, Choice::kRequired);
    EXPECT_FALSE(out.parallel_tool_calls);
    const ojson schema = ojson::parse(structured.spec);
    EXPECT_EQ(schema["type"], "array");
    EXPECT_EQ(schema["minItems"], 1);
    EXPECT_EQ(schema["maxItems"], 1);
    ASSERT_EQ(schema["items"]["anyOf"].size(), 2u);
    EXPECT_EQ(schema["items"]["anyOf"][1]["properties"]["name"]["enum"], ojson::array({"now"}));
    // A tool without parameters takes an empty object.
    EXPECT_EQ(schema["items"]["anyOf"][1]["properties"]["parameters"]["type"], "object");
    // The forced output is what the grammar takes.
    auto grammar = model::Grammar::Compile(structured);
    ASSERT_TRUE(grammar.ok()) << grammar.status();
  }
  {
    // "required" with an empty list of tools is "none", as OpenAI.
    ToolRequest out;
    model::StructuredOutput structured;
    ASSERT_TRUE(
        Parse({{"tools", ojson::array()}, {"tool_choice", "required"}}, out, structured).ok());
    EXPECT_EQ(out.choice, Choice::kNone);
    EXPECT_EQ(structured.kind, model::StructuredOutput::Kind::kNone);
  }
}

TEST(ToolRequestTest, RequiredGathersTheToolsDefinitions) {
  const ojson tool = ojson::parse(R"({"function": {"name": "f", "parameters": {
      "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}}, "required": ["p"],
      "$defs": {"P": {"type": "integer"}}}}})");
  ToolRequest out;
  model::StructuredOutput structured;
  ASSERT_TRUE(
      Parse({{"tools", ojson::array({tool})}, {"tool_choice", "required"}}, out, structured).ok());
  const ojson schema = ojson::parse(structured.spec);
  EXPECT_EQ(schema["$defs"]["P"]["type"], "integer");
  EXPECT_FALSE(schema["items"]["anyOf"][0]["properties"]["parameters"].contains("$defs"));
  EXPECT_TRUE(model::Grammar::Compile(structured).ok());

  // Two tools defining the same name differently cannot share one list.
  ojson other = tool;
  other["function"]["name"] = "g";
  other["function"]["parameters"]["$defs"]["P"] = {{"type", "string"}};
  ToolRequest out2;
  model::StructuredOutput structured2;
  const absl::Status status = Parse(
      {{"tools", ojson::array({tool, other})}, {"tool_choice", "required"}}, out2, structured2);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("'P'"));
}

TEST(ToolRequestTest, BadRequestsNameTheField) {
  const ojson tools = ojson::array({WeatherTool()});
  struct Case {
    ojson body;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"tools", "x"}}, "tools: expected a list"},
      {{{"tools", ojson::array({1})}}, "tools: tools[0]: expected an object"},
      {{{"tools", ojson::array({{{"type", "retrieval"}, {"function", {{"name", "f"}}}}})}},
       "tools: tools[0].type: only \"function\""},
      {{{"tools", ojson::array({{{"function", {{"name", ""}}}}})}},
       "tools: tools[0].function.name: expected a non-empty string"},
      {{{"tools", ojson::array({{{"function", {{"name", "f"}, {"parameters", "x"}}}}})}},
       "tools: tools[0].function.parameters"},
      {{{"tools", ojson::array({{{"function", {{"name", "f"}, {"description", 3}}}}})}},
       "tools: tools[0].function.description"},
      {{{"tool_choice", "auto"}}, "tool_choice: When using `tool_choice`, `tools` must be set."},
      {{{"tools", tools}, {"tool_choice", "sometimes"}},
       "tool_choice: unknown value \"sometimes\""},
      {{{"tools", tools}, {"tool_choice", 3}}, "tool_choice: expected a string or an object"},
      {{{"tools", tools}, {"tool_choice", {{"type", "function"}}}},
       "tool_choice: expected a function's name"},
      {{{"tools", tools}, {"tool_choice", {{"function", {{"name", "other"}}}}}},
       "tool_choice: the function \"other\" is not one of the tools"},
      {{{"tools", tools}, {"parallel_tool_calls", "yes"}},
       "parallel_tool_calls: expected a boolean"},
      {{{"tools",
         ojson::array({{{"function",
                         {{"name", "f"},
                          {"parameters",
                           {{"type", "object"},
                            {"properties", {{"n", {{"type", "integer"}, {"minimum", 1}}}}}}}}}}})},
        {"tool_choice", "required"}},
       "tool_choice: the tools' parameters cannot be enforced"},
  };
  for (const Case& c : cases) {
    ToolRequest out;
    model::StructuredOutput structured;
    const absl::Status status = Parse(c.body, out, structured);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.body.dump();
    EXPECT_THAT(std::string(status.message()), StartsWith(c.message)) << c.body.dump();
  }
  // A forced choice and a structured output cannot both shape the output.
  ToolRequest out;
  model::StructuredOutput structured{model::StructuredOutput::Kind::kJsonObject, ""};
  const absl::Status status =
      Parse({{"tools", tools}, {"tool_choice", "required"}}, out, structured);
  EXPECT_THAT(status.message(), HasSubstr("cannot be combined with response_format"));
}

ToolRequest Auto(bool parallel = true) {
  ToolRequest request;
  request.tools = {WeatherTool()};
  request.choice = Choice::kAuto;
  request.parallel_tool_calls = parallel;
  return request;
}

TEST(ExtractToolCallsTest, Hermes) {
  const ToolCallResult r = ExtractToolCalls(
      Auto(), "hermes",
      "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"K\u00f8benhavn\", \"n\":[1,2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", "
      "\"arguments\": {}}\n</tool_call>",
      true);
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].name, "get_weather");
  // json.dumps(ensure_ascii=False): Python's separators, non-ASCII kept.
  EXPECT_EQ(r.calls[0].arguments, "{\"city\": \"K\u00f8benhavn\", \"n\": [1, 2]}");
  EXPECT_EQ(r.calls[1].arguments, "{}");
  EXPECT_THAT(r.calls[0].id, MatchesRegex("chatcmpl-tool-[0-9a-f]{32}"));
  EXPECT_NE(r.calls[0].id, r.calls[1].id);
  EXPECT_EQ(r.content, "Let me check.\n");
  EXPECT_TRUE(r.finish_as_tool_calls);

  // Only calls: content is null. An unclosed last call still counts.
  const ToolCallResult only = ExtractToolCalls(
      Auto(), "hermes", "<tool_call>{\"name\": \"now\", \"arguments\": {}}", false);
  ASSERT_EQ(only.calls.size(), 1u);
  EXPECT_FALSE(only.content.has_value());
  EXPECT_TRUE(only.finish_as_tool_calls);

  // No marker, or a block that is not a call: all text is content.
  for (const char* text : {"Just text.", "<tool_call>{\"name\": \"now\"}</tool_call>",
                           "<tool_call>not json</tool_call>"}) {
    const ToolCallResult none = ExtractToolCalls(Auto(), "hermes", text, true);
    EXPECT_TRUE(none.calls.empty()) << text;
    EXPECT_EQ(none.content, text);
    EXPECT_FALSE(none.finish_as_tool_calls);
  }
  // parallel_tool_calls = false keeps the first.
  const ToolCallResult first = ExtractToolCalls(
      Auto(false), "hermes",
      "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", "
      "\"arguments\": {}}</tool_call>",
      true);
  ASSERT_EQ(first.calls.size(), 1u);
  EXPECT_EQ(first.calls[0].name, "a");
}

TEST(ExtractToolCallsTest, Llama3Json) {
  const ToolCallResult r = ExtractToolCalls(
      Auto(), "llama3_json",
      " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"now\", "
      "\"arguments\": {}}",
      true);
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.calls[1].name, "now");
  EXPECT_FALSE(r.content.has_value());
  const ToolCallResult tagged = ExtractToolCalls(
      Auto(), "llama3_json", "<|python_tag|>{\"name\": \"now\", \"parameters\": {}}", true);
  ASSERT_EQ(tagged.calls.size(), 1u);
  for (const char* text : {"The answer is {\"name\"}.", "{\"name\": \"now\"}", "{\"name\": 1}",
                           "{\"name\": \"now\", \"parameters\": {}} and more"}) {
    const ToolCallResult none = ExtractToolCalls(Auto(), "llama3_json", text, true);
    EXPECT_TRUE(none.calls.empty()) << text;
    EXPECT_EQ(none.content, text);
  }
}

TEST(ExtractToolCallsTest, Mistral) {
  const ToolCallResult r = ExtractToolCalls(
      Auto(), "mistral",
      "Sure. [TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, "
      "{\"name\": \"now\", \"arguments\": {}}]",
      true);
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.content, "Sure. ");
  EXPECT_THAT(r.calls[0].id, MatchesRegex("[a-zA-Z0-9]{9}"));
  const ToolCallResult bad = ExtractToolCalls(Auto(), "mistral", "[TOOL_CALLS] [{\"x\": 1}]", true);
  EXPECT_TRUE(bad.calls.empty());
  EXPECT_EQ(bad.content, "[TOOL_CALLS] [{\"x\": 1}]");
}

TEST(ExtractToolCallsTest, RequiredAndNamed) {
  ToolRequest required = Auto();
  required.choice = Choice::kRequired;
  const ToolCallResult r = ExtractToolCalls(
      required, "", "[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}]", true);
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.content, "");
  EXPECT_TRUE(r.finish_as_tool_calls);
  // Cut by max_tokens: the calls that closed before the cut.
  const ToolCallResult cut = ExtractToolCalls(
      required, "", "[{\"name\": \"now\", \"parameters\": {}}, {\"name\": \"get_wea", false);
  ASSERT_EQ(cut.calls.size(), 1u);
  EXPECT_EQ(cut.calls[0].name, "now");
  EXPECT_EQ(cut.content, "");
  EXPECT_FALSE(cut.finish_as_tool_calls);  // finish_reason stays "length"

  ToolRequest named = Auto();
  named.choice = Choice::kNamed;
  named.function = "get_weather";
  const ToolCallResult n = ExtractToolCalls(named, "", "{\"city\": \"Paris\"}", true);
  ASSERT_EQ(n.calls.size(), 1u);
  EXPECT_EQ(n.calls[0].name, "get_weather");
  EXPECT_EQ(n.calls[0].arguments, "{\"city\": \"Paris\"}");  // the forced text as it came
  EXPECT_FALSE(n.finish_as_tool_calls);                      // vLLM keeps "stop"
}

// What a client that joins deltas (the openai SDK) makes of a stream.
struct Joined {
  std::string content;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
  std::vector<std::string> ids;
};

Joined Stream(const ToolRequest& request, const std::string& parser, const std::string& text,
              size_t max_piece, uint32_t seed, bool& tool_calls_finish) {
  std::mt19937 rng(seed);
  ToolCallStream stream(request, parser);
  Joined joined;
  const auto take = [&](const ToolCallStream::Delta& delta) {
    joined.content += delta.content;
    for (const auto& call : delta.tool_calls) {
      const size_t index = call["index"].get<size_t>();
      if (index == joined.calls.size()) {
        joined.calls.emplace_back();
        joined.ids.push_back(call["id"].get<std::string>());
      }
      ASSERT_LT(index, joined.calls.size());
      if (call["function"].contains("name")) joined.calls[index].first = call["function"]["name"];
      joined.calls[index].second += call["function"]["arguments"].get<std::string>();
    }
  };
  for (size_t pos = 0; pos < text.size();) {
    const size_t n = std::min(text.size() - pos, 1 + rng() % max_piece);
    take(stream.Add(text.substr(pos, n)));
    pos += n;
  }
  take(stream.Finish());
  tool_calls_finish = stream.FinishAsToolCalls(true);
  return joined;
}

// Whatever the pieces the text arrives in, the stream adds up to what the whole text says.
TEST(ToolCallStreamTest, JoinedDeltasMatchTheWholeText) {
  ToolRequest required = Auto();
  required.choice = Choice::kRequired;
  ToolRequest named = Auto();
  named.choice = Choice::kNamed;
  named.function = "get_weather";
  struct Case {
    ToolRequest request;
    std::string parser;
    std::string text;
  };
  const std::vector<Case> cases = {
      {Auto(), "hermes",
       "Checking <weather>.\n<tool_call>\n{\"name\": \"get_weather\", "
       "\"arguments\": {\"city\": \"a<b\"}}\n</tool_call>\n<tool_call>{\"name\": "
       "\"now\", \"arguments\": {}}</tool_call>"},
      {Auto(), "hermes", "No calls, only <tool_ text that looks like one <tool_call"},
      {Auto(), "hermes", "<tool_call>{\"name\": \"now\", \"arguments\": {\"x\": \"}\"}}"},
      {Auto(), "llama3_json", "  {\"name\": \"get_weather\", \"parameters\": {\"city\": \"P\"}}"},
      {Auto(), "llama3_json", "  Plain {answer}"},
      {Auto(), "llama3_json", "<|python_tag|>{\"name\": \"now\", \"parameters\": {}}"},
      {Auto(), "mistral", "Ok[TOOL_CALLS] [{\"name\": \"now\", \"arguments\": {}}]"},
      {Auto(), "mistral", "Text with [TOOL_ in it"},
      {required, "",
       "[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"]}\\\"\"}}, "
       "{\"name\": \"now\", \"parameters\": {}}]"},
      {named, "", "{\"city\": \"Paris\"}"},
  };
  for (const Case& c : cases) {
    const ToolCallResult whole = ExtractToolCalls(c.request, c.parser, c.text, true);
    for (size_t max_piece : {1, 3, 7, 1000}) {
      bool finish = false;
      const Joined joined = Stream(c.request, c.parser, c.text, max_piece, 17, finish);
      const std::string where = c.parser + " " + c.text + " pieces " + std::to_string(max_piece);
      EXPECT_EQ(joined.content, whole.content.value_or("")) << where;
      ASSERT_EQ(joined.calls.size(), whole.calls.size()) << where;
      for (size_t i = 0; i < whole.calls.size(); ++i) {
        EXPECT_EQ(joined.calls[i].first, whole.calls[i].name) << where;
        EXPECT_EQ(joined.calls[i].second, whole.calls[i].arguments) << where;
        EXPECT_FALSE(joined.ids[i].empty());
      }
      EXPECT_EQ(finish, whole.finish_as_tool_calls) << where;
    }
  }
}

TEST(ToolCallStreamTest, ContentFlowsUntilAMarkerMayBegin) {
  ToolCallStream stream(Auto(), "hermes");
  EXPECT_EQ(stream.Add("Hello <to").content, "Hello ");  // "<to" may begin <tool_call>
  EXPECT_EQ(stream.Add("day>").content, "<today>");
  const ToolCallStream::Delta held = stream.Add(" <tool_call>{\"name\": \"now\", ");
  EXPECT_EQ(held.content, " ");
  EXPECT_TRUE(held.tool_calls.empty());
  const ToolCallStream::Delta call = stream.Add("\"arguments\": {}}</tool_call> trailing");
  ASSERT_EQ(call.tool_calls.size(), 1u);
  EXPECT_EQ(call.tool_calls[0]["index"], 0);
  EXPECT_EQ(call.tool_calls[0]["type"], "function");
  EXPECT_EQ(call.tool_calls[0]["function"]["name"], "now");
  EXPECT_TRUE(call.content.empty());  // text after the calls is not content
  EXPECT_TRUE(stream.Finish().empty());
}

TEST(NewToolCallIdTest, Formats) {
  EXPECT_THAT(NewToolCallId("hermes"), MatchesRegex("chatcmpl-tool-[0-9a-f]{32}"));
  EXPECT_THAT(NewToolCallId("mistral"), MatchesRegex("[a-zA-Z0-9]{9}"));
  EXPECT_NE(NewToolCallId("mistral"), NewToolCallId("mistral"));
}

}  // namespace
}  // namespace tessera::coordinator::api
