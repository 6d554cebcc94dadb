// Tool calling and reasoning outputs over the OpenAI HTTP server (tool_calls.h, reasoning.h),
// with a FakeFrontend that "generates" a scripted text.
#include <httplib.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/api/openai_http_test_fixture.h"

namespace tessera::coordinator::api {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

json WeatherTools() {
  return json::parse(R"([{"type": "function", "function": {"name": "get_weather", "parameters": {
      "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])");
}

// The deltas of a chat stream joined as the openai SDK joins them.
struct JoinedStream {
  std::string content;
  json calls = json::array();  // {"id", "name", "arguments"} per index
  std::string finish_reason;
};

JoinedStream JoinChatStream(const std::string& body) {
  JoinedStream out;
  for (const std::string& event : SsePayloads(body)) {
    if (event == "[DONE]") break;
    const json chunk = json::parse(event);
    if (chunk["choices"].empty()) continue;
    const json& choice = chunk["choices"][0];
    const json& delta = choice["delta"];
    if (delta.contains("content") && delta["content"].is_string()) {
      out.content += delta["content"].get<std::string>();
    }
    if (delta.contains("tool_calls")) {
      for (const json& call : delta["tool_calls"]) {
        const size_t index = call["index"];
        if (index == out.calls.size()) {
          out.calls.push_back({{"id", call["id"]}, {"name", ""}, {"arguments", ""}});
          EXPECT_EQ(call["type"], "function");
        }
        if (call["function"].contains("name")) out.calls[index]["name"] = call["function"]["name"];
        out.calls[index]["arguments"] = out.calls[index]["arguments"].get<std::string>() +
                                        call["function"]["arguments"].get<std::string>();
      }
    }
    if (choice["finish_reason"].is_string()) out.finish_reason = choice["finish_reason"];
  }
  return out;
}

TEST_F(OpenAiHttpTest, AutoToolChoiceReadsTheModelsCallsWithTheParser) {
  frontend_.set_tool_call_parser("hermes");
  frontend_.scripted_output =
      "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
      "\"Paris\"}}\n</tool_call>";
  const json request = {{"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}},
                        {"max_tokens", 100},
                        {"tools", WeatherTools()}};
  httplib::Result res = Post("/v1/chat/completions", request);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json choice = json::parse(res->body)["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["content"], "Let me look.\n");
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u) << res->body;
  const json& call = choice["message"]["tool_calls"][0];
  EXPECT_THAT(call["id"].get<std::string>(), StartsWith("chatcmpl-tool-"));
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["function"]["name"], "get_weather");
  EXPECT_EQ(call["function"]["arguments"], "{\"city\": \"Paris\"}");
  // The parser reads markers that may be special tokens: they stay in the text.
  EXPECT_FALSE(frontend_.last_request().skip_special_tokens);

  json streaming = request;
  streaming["stream"] = true;
  res = Post("/v1/chat/completions", streaming);
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const JoinedStream joined = JoinChatStream(res->body);
  EXPECT_EQ(joined.content, "Let me look.\n");
  ASSERT_EQ(joined.calls.size(), 1u) << res->body;
  EXPECT_EQ(joined.calls[0]["name"], "get_weather");
  EXPECT_EQ(joined.calls[0]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(joined.finish_reason, "tool_calls");

  // Text without a call is content, finish_reason as usual.
  frontend_.scripted_output = "It is sunny.";
  res = Post("/v1/chat/completions", request);
  ASSERT_EQ(res->status, 200) << res->body;
  const json plain = json::parse(res->body)["choices"][0];
  EXPECT_EQ(plain["message"]["content"], "It is sunny.");
  EXPECT_EQ(plain["message"]["tool_calls"], json::array());
  EXPECT_EQ(plain["finish_reason"], "stop");
}

TEST_F(OpenAiHttpTest, AutoToolChoiceWithoutAParserIs400) {
  // The fake's chat template (Llama 3.0) has no tool-call format.
  ExpectError("/v1/chat/completions",
              {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"tools", WeatherTools()}},
              400, "tool_choice");
  // "none" shows the tools and reads nothing.
  frontend_.scripted_output = "<tool_call>{}</tool_call>";
  httplib::Result res =
      Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                    {"tools", WeatherTools()},
                                    {"tool_choice", "none"}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["choices"][0]["message"]["content"],
            "<tool_call>{}</tool_call>");
}

TEST_F(OpenAiHttpTest, RequiredAndNamedToolChoicesForceTheArguments) {
  using Kind = model::StructuredOutput::Kind;
  const json messages = {{{"role", "user"}, {"content", "Weather?"}}};
  frontend_.scripted_output = "[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}]";
  httplib::Result res = Post("/v1/chat/completions", {{"messages", messages},
                                                      {"max_tokens", 100},
                                                      {"tools", WeatherTools()},
                                                      {"tool_choice", "required"}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output.kind, Kind::kJsonSchema);
  EXPECT_EQ(json::parse(frontend_.last_request().sampling.structured_output.spec)["type"], "array");
  json choice = json::parse(res->body)["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_EQ(choice["message"]["content"], "");
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(choice["message"]["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Oslo\"}");

  frontend_.scripted_output = "{\"city\": \"Oslo\"}";
  const json named = {
      {"messages", messages},
      {"max_tokens", 100},
      {"tools", WeatherTools()},
      {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}},
      {"stream", true}};
  res = Post("/v1/chat/completions", named);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(frontend_.last_request().sampling.structured_output.spec),
            WeatherTools()[0]["function"]["parameters"]);
  // The name comes with the first piece of the arguments, the rest follow.
  const std::vector<std::string> events = SsePayloads(res->body);
  ASSERT_GE(events.size(), 4u);
  const json first = json::parse(events[1])["choices"][0]["delta"]["tool_calls"][0];
  EXPECT_EQ(first["function"]["name"], "get_weather");
  const JoinedStream joined = JoinChatStream(res->body);
  ASSERT_EQ(joined.calls.size(), 1u);
  EXPECT_EQ(joined.calls[0]["arguments"], "{\"city\": \"Oslo\"}");
  EXPECT_EQ(joined.content, "");
  EXPECT_EQ(joined.finish_reason, "stop");  // as vLLM for a named function

  ExpectError("/v1/chat/completions",
              {{"messages", messages},
               {"tools", WeatherTools()},
               {"tool_choice", "required"},
               {"response_format", {{"type", "json_object"}}}},
              400, "tool_choice");
}

TEST_F(OpenAiHttpTest, ConversationsCarryToolCallsAndResults) {
  const json messages = {
      {{"role", "user"}, {"content", "Weather?"}},
      {{"role", "assistant"},
       {"content", nullptr},
       {"tool_calls",
        {{{"id", "call_1"},
          {"type", "function"},
          {"function", {{"name", "get_weather"}, {"arguments", "{\"city\": \"Oslo\"}"}}}}}}},
      {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "sunny"}}};
  httplib::Result res = Post("/v1/chat/completions", {{"messages", messages}, {"max_tokens", 2}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;

  json bad = messages;
  bad[1]["tool_calls"][0]["function"]["arguments"] = "{not json";
  ExpectError("/v1/chat/completions", {{"messages", bad}}, 400, "messages");
  res = Post("/v1/chat/completions", {{"messages", bad}});
  EXPECT_THAT(res->body, HasSubstr("messages[1].tool_calls[0].function.arguments: not valid JSON"));
  bad = messages;
  bad[1]["tool_calls"][0]["function"].erase("name");
  res = Post("/v1/chat/completions", {{"messages", bad}});
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("messages[1].tool_calls[0].function.name"));
}

TEST_F(OpenAiHttpTest, AReasoningParserSplitsTheThinkingFromTheAnswer) {
  frontend_.set_reasoning_parser("qwen3");
  frontend_.scripted_output = "<think>\nTwo and two.\n</think>\n\nFour.";
  const json request = {{"messages", {{{"role", "user"}, {"content", "2+2?"}}}},
                        {"max_tokens", 100}};
  httplib::Result res = Post("/v1/chat/completions", request);
  ASSERT_EQ(res->status, 200) << res->body;
  json message = json::parse(res->body)["choices"][0]["message"];
  EXPECT_EQ(message["reasoning"], "\nTwo and two.\n");
  EXPECT_EQ(message["reasoning_content"], "\nTwo and two.\n");
  EXPECT_EQ(message["content"], "\n\nFour.");

  json streaming = request;
  streaming["stream"] = true;
  res = Post("/v1/chat/completions", streaming);
  ASSERT_EQ(res->status, 200) << res->body;
  std::string reasoning;
  std::string content;
  for (const std::string& event : SsePayloads(res->body)) {
    if (event == "[DONE]") break;
    const json delta = json::parse(event)["choices"][0]["delta"];
    if (delta.contains("reasoning")) {
      EXPECT_EQ(delta["reasoning"], delta["reasoning_content"]);
      reasoning += delta["reasoning"].get<std::string>();
    }
    if (delta.contains("content")) content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(reasoning, "\nTwo and two.\n");
  EXPECT_EQ(content, "\n\nFour.");

  json without = request;
  without["include_reasoning"] = false;
  res = Post("/v1/chat/completions", without);
  message = json::parse(res->body)["choices"][0]["message"];
  EXPECT_TRUE(message["reasoning"].is_null());
  EXPECT_EQ(message["content"], "\n\nFour.");

  // With tools, the calls are read from the answer, not from the thinking.
  frontend_.set_tool_call_parser("hermes");
  frontend_.scripted_output =
      "<think>I could call <tool_call> here.</think><tool_call>{\"name\": \"get_weather\", "
      "\"arguments\": {\"city\": \"Rome\"}}</tool_call>";
  json tools = request;
  tools["tools"] = WeatherTools();
  for (const bool stream : {false, true}) {
    tools["stream"] = stream;
    res = Post("/v1/chat/completions", tools);
    ASSERT_EQ(res->status, 200) << res->body;
    if (stream) {
      const JoinedStream joined = JoinChatStream(res->body);
      ASSERT_EQ(joined.calls.size(), 1u) << res->body;
      EXPECT_EQ(joined.calls[0]["arguments"], "{\"city\": \"Rome\"}");
      EXPECT_EQ(joined.content, "");
      EXPECT_EQ(joined.finish_reason, "tool_calls");
    } else {
      const json choice = json::parse(res->body)["choices"][0];
      EXPECT_EQ(choice["message"]["reasoning"], "I could call <tool_call> here.");
      EXPECT_TRUE(choice["message"]["content"].is_null());
      ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u);
      EXPECT_EQ(choice["finish_reason"], "tool_calls");
    }
  }
}

TEST_F(OpenAiHttpTest, ReasoningComesBackInTheConversation) {
  // Either name of an assistant's reasoning is taken (the fake's Llama 3 template ignores it).
  for (const char* name : {"reasoning", "reasoning_content"}) {
    httplib::Result res =
        Post("/v1/chat/completions", {{"messages",
                                       {{{"role", "user"}, {"content", "Q"}},
                                        {{"role", "assistant"}, {"content", "A"}, {name, "why"}},
                                        {{"role", "user"}, {"content", "Q2"}}}},
                                      {"max_tokens", 2}});
    EXPECT_EQ(res->status, 200) << res->body;
  }
  ExpectError("/v1/chat/completions",
              {{"messages", {{{"role", "assistant"}, {"content", "A"}, {"reasoning", 3}}}}}, 400,
              "messages");
}

}  // namespace
}  // namespace tessera::coordinator::api
