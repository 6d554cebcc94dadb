// The JSON side of the OpenAI API (openai_protocol.h), without HTTP.
#include "coordinator/api/openai_protocol.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::coordinator::api {
namespace {

using json = nlohmann::json;

TEST(OpenAiProtocolTest, StatusesMapToVllmErrorBodies) {
  const ApiError bad = ErrorFromStatus(absl::InvalidArgumentError("top_p must be in (0, 1]"));
  EXPECT_EQ(ErrorJson(bad), json::parse(R"({"error": {"message": "top_p must be in (0, 1]",
      "type": "BadRequestError", "param": "top_p", "code": 400}})"));
  EXPECT_EQ(ErrorFromStatus(absl::InvalidArgumentError("something else")).param, "");
  EXPECT_EQ(ErrorFromStatus(absl::ResourceExhaustedError("x")).http_status, 429);
  EXPECT_EQ(ErrorFromStatus(absl::UnavailableError("x")).http_status, 503);
  EXPECT_EQ(ErrorFromStatus(absl::DeadlineExceededError("x")).http_status, 504);
  EXPECT_EQ(ErrorFromStatus(absl::FailedPreconditionError("no template")).http_status, 400);
  EXPECT_EQ(ErrorFromStatus(absl::InternalError("x")).type, "InternalServerError");
}

TEST(OpenAiProtocolTest, CompletionDefaultsAreVllms) {
  auto parsed = ParseCompletionRequest(json{{"prompt", "hi"}});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->common.max_tokens, 16);
  EXPECT_EQ(parsed->common.sampling.temperature, 1.0f);
  EXPECT_FALSE(parsed->common.stream);
  EXPECT_THAT(parsed->text_prompts, ::testing::ElementsAre("hi"));
  parsed = ParseCompletionRequest(json{{"prompt", "hi"}, {"max_tokens", nullptr}});
  ASSERT_TRUE(parsed.ok());
  EXPECT_FALSE(parsed->common.max_tokens.has_value());
}

TEST(OpenAiProtocolTest, WrongTypesNameTheField) {
  for (const char* field : {"temperature", "top_k", "seed", "stream", "stop", "stop_token_ids",
                            "logprobs", "echo", "max_tokens"}) {
    auto parsed = ParseCompletionRequest(json{{"prompt", "hi"}, {field, json::object()}});
    ASSERT_FALSE(parsed.ok()) << field;
    EXPECT_EQ(ErrorFromStatus(parsed.status()).param, field) << parsed.status();
  }
}

TEST(OpenAiProtocolTest, IntegralFloatsAreIntegers) {
  auto parsed = ParseCompletionRequest(json{{"prompt", "hi"}, {"max_tokens", 8.0}});
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->common.max_tokens, 8);
  EXPECT_FALSE(ParseCompletionRequest(json{{"prompt", "hi"}, {"max_tokens", 8.5}}).ok());
}

TEST(OpenAiProtocolTest, ChatTemplateKwargsAndParts) {
  auto parsed = ParseChatRequest(json::parse(R"({"messages": [
      {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
      "chat_template_kwargs": {"enable_thinking": false}, "add_generation_prompt": false})"));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->messages[0].content, "a\nb");
  EXPECT_EQ(parsed->template_options.enable_thinking, false);
  EXPECT_FALSE(parsed->template_options.add_generation_prompt);
  EXPECT_FALSE(parsed->common.max_tokens.has_value());
}

// Tools and tool calls reach the template in the client's key order when the caller has it, and
// in sorted order otherwise; arguments arrive parsed.
TEST(OpenAiProtocolTest, ToolsAndToolCallsKeepTheClientsKeyOrder) {
  const std::string text = R"({"messages": [
      {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
          "function": {"name": "f", "arguments": "{\"z\": 1, \"a\": [true]}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
    "tools": [{"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"z": {}, "a": {}}}}}],
    "tool_choice": "none", "include_reasoning": false})";
  const json body = json::parse(text);
  const nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(text);
  absl::StatusOr<ChatRequest> chat = ParseChatRequest(body, &ordered);
  ASSERT_TRUE(chat.ok()) << chat.status();
  ASSERT_EQ(chat->messages.size(), 3u);
  ASSERT_EQ(chat->messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(chat->messages[1].tool_calls[0].id, "c1");
  EXPECT_EQ(chat->messages[1].tool_calls[0].function.dump(),
            R"({"name":"f","arguments":{"z":1,"a":[true]}})");
  EXPECT_EQ(chat->messages[1].content, "");
  EXPECT_EQ(chat->messages[2].tool_call_id, "c1");
  ASSERT_EQ(chat->template_options.tools.size(), 1u);
  EXPECT_EQ(chat->template_options.tools[0]["function"]["parameters"]["properties"].dump(),
            R"({"z":{},"a":{}})");
  EXPECT_EQ(chat->tools.choice, ToolRequest::Choice::kNone);
  EXPECT_FALSE(chat->include_reasoning);
  // Without the ordered copy: the same, the body's keys sorted (the arguments are their own text).
  chat = ParseChatRequest(body);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->messages[1].tool_calls[0].function.dump(),
            R"({"arguments":{"z":1,"a":[true]},"name":"f"})");
  // A request without tools has none, and its messages no calls.
  chat = ParseChatRequest(json::parse(R"({"messages": [{"role": "user", "content": "Hi"}]})"));
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_TRUE(chat->template_options.tools.empty());
  EXPECT_TRUE(chat->messages[0].tool_calls.empty());
}

TEST(OpenAiProtocolTest, DumpReplacesInvalidUtf8) {
  EXPECT_EQ(Dump(json{{"t", std::string("a\xff")}}), "{\"t\":\"a\xEF\xBF\xBD\"}");
}

}  // namespace
}  // namespace tessera::coordinator::api
