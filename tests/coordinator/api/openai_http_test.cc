// OpenAiHttpServer over a FakeFrontend, driven by an httplib::Client over loopback.
#include "coordinator/api/openai_http.h"

#include <httplib.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/await.h"
#include "tests/coordinator/api/openai_http_test_fixture.h"
#include "tests/coordinator/fake_frontend.h"

namespace tessera::coordinator::api {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::StartsWith;

using tessera::testing::Await;

TEST_F(OpenAiHttpTest, ModelsListsTheServedModel) {
  httplib::Result res = Client().Get("/v1/models");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  const json body = json::parse(res->body);
  EXPECT_EQ(body["object"], "list");
  ASSERT_EQ(body["data"].size(), 1u);
  const json& model = body["data"][0];
  EXPECT_EQ(model["id"], "fake-model");
  EXPECT_EQ(model["object"], "model");
  EXPECT_EQ(model["created"], 1700000000);
  EXPECT_EQ(model["owned_by"], "tessera");
  EXPECT_EQ(model["root"], "/models/fake-model");
  EXPECT_TRUE(model["parent"].is_null());
  EXPECT_EQ(model["max_model_len"], 256);
}

TEST_F(OpenAiHttpTest, ServedModelNamesAreAliases) {
  OpenAiHttpOptions options;
  options.served_model_names = {"alias-a", "alias-b"};
  StartServer(options);
  const json models = json::parse(Client().Get("/v1/models")->body);
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][1]["id"], "alias-b");
  httplib::Result res = Post("/v1/completions", {{"model", "alias-b"}, {"prompt", "hi"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["model"], "alias-a");
  ExpectError("/v1/completions", {{"model", "fake-model"}, {"prompt", "hi"}}, 404, "model");
}

TEST_F(OpenAiHttpTest, HealthFollowsReadiness) {
  EXPECT_EQ(Client().Get("/health")->status, 200);
  EXPECT_EQ(Client().Get("/ping")->status, 200);
  EXPECT_EQ(Client().Post("/ping", "", "application/json")->status, 200);
  frontend_.ready = false;
  EXPECT_EQ(Client().Get("/health")->status, 503);
  EXPECT_EQ(Client().Get("/ping")->status, 503);
}

TEST_F(OpenAiHttpTest, MetricsServePrometheusText) {
  httplib::Result res = Client().Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(res->body, frontend_.RenderMetrics());
}

TEST_F(OpenAiHttpTest, VersionReportsTheConfiguredVersion) {
  OpenAiHttpOptions options;
  options.version = "1.2.3";
  StartServer(options);
  EXPECT_EQ(json::parse(Client().Get("/version")->body), json({{"version", "1.2.3"}}));
}

TEST_F(OpenAiHttpTest, CompletionReturnsTextUsageAndFinishReason) {
  httplib::Result res =
      Post("/v1/completions", {{"model", "fake-model"}, {"prompt", "Hello"}, {"max_tokens", 5}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  const std::vector<int32_t> prompt = Encode("Hello");
  EXPECT_THAT(body["id"].get<std::string>(), StartsWith("cmpl-"));
  EXPECT_EQ(body["object"], "text_completion");
  EXPECT_EQ(body["model"], "fake-model");
  EXPECT_GT(body["created"].get<int64_t>(), 1700000000);
  ASSERT_EQ(body["choices"].size(), 1u);
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["index"], 0);
  EXPECT_EQ(choice["text"], ExpectedText(prompt, 5));
  EXPECT_TRUE(choice["logprobs"].is_null());
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_TRUE(choice["stop_reason"].is_null());
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 5);
  EXPECT_EQ(body["usage"]["total_tokens"], prompt.size() + 5);
  // Sampling fields reach the Frontend.
  const GenerateRequest request = frontend_.last_request();
  EXPECT_EQ(request.prompt_text, "Hello");
  EXPECT_EQ(request.sampling.max_tokens, 5);
  EXPECT_EQ(request.sampling.temperature, 1.0f);
}

TEST_F(OpenAiHttpTest, CompletionPassesSamplingFields) {
  httplib::Result res = Post("/v1/completions", {{"prompt", "Hi"},
                                                 {"max_tokens", 3},
                                                 {"temperature", 0.5},
                                                 {"top_p", 0.9},
                                                 {"top_k", 40},
                                                 {"min_p", 0.1},
                                                 {"seed", 7},
                                                 {"stop", "xyz"},
                                                 {"ignore_eos", true},
                                                 {"min_tokens", 2},
                                                 {"repetition_penalty", 1.1},
                                                 {"presence_penalty", 0.5},
                                                 {"frequency_penalty", -0.5},
                                                 {"skip_special_tokens", false},
                                                 {"include_stop_str_in_output", true},
                                                 {"user", "ignored"}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const GenerateRequest request = frontend_.last_request();
  EXPECT_FLOAT_EQ(request.sampling.temperature, 0.5f);
  EXPECT_FLOAT_EQ(request.sampling.top_p, 0.9f);
  EXPECT_EQ(request.sampling.top_k, 40);
  EXPECT_FLOAT_EQ(request.sampling.min_p, 0.1f);
  EXPECT_EQ(request.sampling.seed, 7);
  EXPECT_THAT(request.sampling.stop, ::testing::ElementsAre("xyz"));
  EXPECT_TRUE(request.sampling.ignore_eos);
  EXPECT_EQ(request.sampling.min_tokens, 2);
  EXPECT_FLOAT_EQ(request.sampling.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(request.sampling.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(request.sampling.frequency_penalty, -0.5f);
  EXPECT_FALSE(request.skip_special_tokens);
  EXPECT_TRUE(request.include_stop_str_in_output);
}

TEST_F(OpenAiHttpTest, CompletionAcceptsTokenIdsAndBatches) {
  const std::vector<int32_t> a = {5, 6, 7};
  const std::vector<int32_t> b = {9, 10};
  httplib::Result res = Post("/v1/completions", {{"prompt", {a, b}}, {"max_tokens", 4}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  ASSERT_EQ(body["choices"].size(), 2u);
  EXPECT_EQ(body["choices"][0]["index"], 0);
  EXPECT_EQ(body["choices"][0]["text"], ExpectedText(a, 4));
  EXPECT_EQ(body["choices"][1]["index"], 1);
  EXPECT_EQ(body["choices"][1]["text"], ExpectedText(b, 4));
  EXPECT_EQ(body["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(body["usage"]["completion_tokens"], 8);

  res = Post("/v1/completions", {{"prompt", a}, {"max_tokens", 2}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["choices"][0]["text"], ExpectedText(a, 2));
  EXPECT_EQ(frontend_.last_request().prompt_token_ids, a);
}

TEST_F(OpenAiHttpTest, CompletionNullMaxTokensFillsTheContext) {
  const std::vector<int32_t> prompt(10, 65);
  httplib::Result res = Post("/v1/completions", {{"prompt", prompt}, {"max_tokens", nullptr}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["usage"]["completion_tokens"], 256 - 10);
}

TEST_F(OpenAiHttpTest, CompletionEchoPrependsThePrompt) {
  httplib::Result res =
      Post("/v1/completions", {{"prompt", "Echo"}, {"max_tokens", 2}, {"echo", true}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["choices"][0]["text"], "Echo" + ExpectedText(Encode("Echo"), 2));
}

TEST_F(OpenAiHttpTest, CompletionLogprobsHaveOneEntryPerToken) {
  httplib::Result res =
      Post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 3}, {"logprobs", 2}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json logprobs = json::parse(res->body)["choices"][0]["logprobs"];
  EXPECT_EQ(logprobs["tokens"].size(), 3u);
  EXPECT_EQ(logprobs["token_logprobs"], json({-0.5, -0.5, -0.5}));
  EXPECT_EQ(logprobs["text_offset"], json({0, 1, 2}));
  EXPECT_EQ(logprobs["top_logprobs"].size(), 3u);
  EXPECT_EQ(frontend_.last_request().sampling.logprobs, 2);
}

TEST_F(OpenAiHttpTest, StopTokenIdSetsStopReason) {
  const std::vector<int32_t> prompt = {5};
  const int32_t third = testing::FakeFrontend::ExpectedTokens(prompt, 3)[2];
  httplib::Result res = Post("/v1/completions",
                             {{"prompt", prompt}, {"max_tokens", 10}, {"stop_token_ids", {third}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["choices"][0]["stop_reason"], third);
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
}

TEST_F(OpenAiHttpTest, CompletionStreamSendsOneChunkPerTokenThenUsageAndDone) {
  const std::vector<int32_t> prompt = Encode("Stream");
  httplib::Result res = Post("/v1/completions", {{"prompt", "Stream"},
                                                 {"max_tokens", 4},
                                                 {"stream", true},
                                                 {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  const std::vector<std::string> events = SsePayloads(res->body);
  ASSERT_EQ(events.size(), 6u) << res->body;
  const std::vector<int32_t> tokens = testing::FakeFrontend::ExpectedTokens(prompt, 4);
  std::string text;
  for (int i = 0; i < 4; ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["object"], "text_completion");
    EXPECT_THAT(chunk["id"].get<std::string>(), StartsWith("cmpl-"));
    ASSERT_EQ(chunk["choices"].size(), 1u);
    EXPECT_EQ(chunk["choices"][0]["index"], 0);
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], i == 3 ? json("length") : json(nullptr));
    EXPECT_FALSE(chunk.contains("usage"));
    text += chunk["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(text, ExpectedText(prompt, 4));
  const json usage = json::parse(events[4]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 4);
  EXPECT_EQ(usage["usage"]["total_tokens"], prompt.size() + 4);
  EXPECT_EQ(events[5], "[DONE]");
}

TEST_F(OpenAiHttpTest, StreamWithoutIncludeUsageHasNoUsageChunk) {
  httplib::Result res =
      Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 3}, {"stream", true}});
  ASSERT_TRUE(res);
  const std::vector<std::string> events = SsePayloads(res->body);
  ASSERT_EQ(events.size(), 4u) << res->body;
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(json::parse(events[i]).contains("usage"));
  EXPECT_EQ(events[3], "[DONE]");
}

TEST_F(OpenAiHttpTest, ChatCompletionAppliesTheTemplate) {
  httplib::Result res =
      Post("/v1/chat/completions", {{"model", "fake-model"},
                                    {"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                                    {"max_tokens", 3}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  const std::vector<int32_t> prompt = ChatPromptIds("Hello");
  EXPECT_THAT(body["id"].get<std::string>(), StartsWith("chatcmpl-"));
  EXPECT_EQ(body["object"], "chat.completion");
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(choice["message"]["content"], ExpectedText(prompt, 3));
  EXPECT_EQ(choice["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 3);
  EXPECT_EQ(frontend_.last_request().prompt_token_ids, prompt);
}

TEST_F(OpenAiHttpTest, ChatAcceptsTextPartsAndMaxCompletionTokens) {
  httplib::Result res = Post(
      "/v1/chat/completions",
      {{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hello"}}}}}}},
       {"max_tokens", 9},
       {"max_completion_tokens", 2}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["message"]["content"], ExpectedText(ChatPromptIds("Hello"), 2));
}

TEST_F(OpenAiHttpTest, ChatWithoutMaxTokensFillsTheContext) {
  const std::vector<int32_t> prompt = ChatPromptIds("Hi");
  httplib::Result res =
      Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["usage"]["completion_tokens"], 256 - prompt.size());
}

TEST_F(OpenAiHttpTest, ChatLogprobs) {
  httplib::Result res =
      Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                    {"max_tokens", 2},
                                    {"logprobs", true},
                                    {"top_logprobs", 2}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json content = json::parse(res->body)["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["logprob"], -0.5);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1]["logprob"], -1.5);
  EXPECT_TRUE(content[0]["bytes"].is_array());
}

TEST_F(OpenAiHttpTest, ChatStreamSendsRoleChunkTokensFinishUsageAndDone) {
  const std::vector<int32_t> prompt = ChatPromptIds("Hello");
  httplib::Result res =
      Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                                    {"max_tokens", 3},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const std::vector<std::string> events = SsePayloads(res->body);
  ASSERT_EQ(events.size(), 6u) << res->body;
  const json role = json::parse(events[0]);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(role["choices"][0]["finish_reason"].is_null());
  std::string text;
  for (int i = 1; i <= 3; ++i) {
    const json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["id"], role["id"]);
    EXPECT_FALSE(chunk["choices"][0]["delta"].contains("role"));
    EXPECT_EQ(chunk["choices"][0]["finish_reason"], i == 3 ? json("length") : json(nullptr));
    text += chunk["choices"][0]["delta"]["content"].get<std::string>();
  }
  EXPECT_EQ(text, ExpectedText(prompt, 3));
  const json usage = json::parse(events[4]);
  EXPECT_EQ(usage["choices"], json::array());
  EXPECT_EQ(usage["usage"]["prompt_tokens"], prompt.size());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 3);
  EXPECT_EQ(events[5], "[DONE]");
}

TEST_F(OpenAiHttpTest, RequestIdHeaderIsHonouredAndEchoed) {
  httplib::Result res =
      Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}, {{"X-Request-Id", "my-id-42"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->get_header_value("X-Request-Id"), "my-id-42");
  EXPECT_EQ(json::parse(res->body)["id"], "cmpl-my-id-42");
  EXPECT_EQ(frontend_.last_request().request_id, "cmpl-my-id-42");
  // Without one, a fresh id is made and echoed.
  res = Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}});
  ASSERT_TRUE(res);
  const std::string id = res->get_header_value("X-Request-Id");
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(json::parse(res->body)["id"], "cmpl-" + id);
}

TEST_F(OpenAiHttpTest, BadInputsAre400sNamingTheField) {
  const std::string c = "/v1/completions";
  ExpectError(c, {{"prompt", "x"}, {"max_tokens", 0}}, 400, "max_tokens");
  ExpectError(c, {{"prompt", "x"}, {"max_tokens", -3}}, 400, "max_tokens");
  ExpectError(c, {{"prompt", "x"}, {"top_p", 1.5}}, 400, "top_p");
  ExpectError(c, {{"prompt", "x"}, {"top_p", 0}}, 400, "top_p");
  ExpectError(c, {{"prompt", "x"}, {"temperature", -0.1}}, 400, "temperature");
  ExpectError(c, {{"prompt", "x"}, {"temperature", "hot"}}, 400, "temperature");
  ExpectError(c, {{"prompt", "x"}, {"n", 0}}, 400, "n");
  ExpectError(c, {{"prompt", "x"}, {"logprobs", 21}}, 400, "logprobs");
  ExpectError(c, {{"prompt", "x"}, {"stop", 5}}, 400, "stop");
  ExpectError(c, {{"prompt", "x"}, {"stream_options", {{"include_usage", true}}}}, 400,
              "stream_options");
  ExpectError(c, {{"max_tokens", 3}}, 400, "prompt");
  ExpectError(c, {{"prompt", json::array()}}, 400, "prompt");
  ExpectError(c, {{"prompt", {1.5, 2}}}, 400, "prompt");
  ExpectError(c, {{"prompt", std::vector<int32_t>(300, 65)}, {"max_tokens", 4}}, 400, "prompt");
  ExpectError(c, {{"prompt", std::vector<int32_t>(300, 65)}, {"max_tokens", nullptr}}, 400,
              "prompt");
  ExpectError(c, {{"prompt", {70000}}}, 400, "prompt");
  const std::string chat = "/v1/chat/completions";
  ExpectError(chat, {{"max_tokens", 3}}, 400, "messages");
  ExpectError(chat, {{"messages", "hello"}}, 400, "messages");
  ExpectError(chat, {{"messages", {{{"content", "no role"}}}}}, 400, "messages");
  ExpectError(chat,
              {{"messages",
                {{{"role", "user"}, {"content", {{{"type", "image_url"}, {"image_url", "x"}}}}}}}},
              400, "messages");
  ExpectError(chat, {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"top_logprobs", 2}},
              400, "top_logprobs");
  ExpectError(chat, {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"min_p", 2}}, 400,
              "min_p");
  EXPECT_EQ(frontend_.generated.load(), 0);
}

TEST_F(OpenAiHttpTest, MalformedJsonIs400) {
  httplib::Result res = Client().Post("/v1/completions", "{not json", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  const json error = json::parse(res->body);
  EXPECT_EQ(error["error"]["type"], "BadRequestError");
  EXPECT_EQ(error["error"]["param"], "body");
  res = Client().Post("/v1/chat/completions", "[1, 2]", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
}

TEST_F(OpenAiHttpTest, UnknownModelIs404WithVllmShape) {
  httplib::Result res = Post("/v1/completions", {{"model", "gpt-9"}, {"prompt", "x"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(json::parse(res->body), json::parse(R"({"error": {
      "message": "The model `gpt-9` does not exist.", "type": "NotFoundError",
      "param": "model", "code": 404}})"));
}

TEST_F(OpenAiHttpTest, FrontendErrorsMapToStatuses) {
  const json body = {{"prompt", "x"}, {"max_tokens", 2}};
  frontend_.generate_error = absl::ResourceExhaustedError("queue full");
  ExpectError("/v1/completions", body, 429, "queue full");
  frontend_.generate_error = absl::UnavailableError("no replica");
  ExpectError("/v1/completions", body, 503, "no replica");
  frontend_.generate_error = absl::DeadlineExceededError("too slow");
  ExpectError("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}}, 504,
              "too slow");
  // Streaming requests that fail before the first byte get a plain JSON error too.
  frontend_.generate_error = absl::ResourceExhaustedError("queue full");
  httplib::Result res = Post("/v1/completions", {{"prompt", "x"}, {"stream", true}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429);
  EXPECT_EQ(json::parse(res->body)["error"]["type"], "RateLimitError");
}

TEST_F(OpenAiHttpTest, ErrorAfterStreamingBeganIsAnSseErrorEvent) {
  frontend_.fail_after_first_token = absl::UnavailableError("replica lost; retry");
  httplib::Result res =
      Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 5}, {"stream", true}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  const std::vector<std::string> events = SsePayloads(res->body);
  ASSERT_EQ(events.size(), 3u) << res->body;
  EXPECT_EQ(json::parse(events[0])["choices"].size(), 1u);
  const json error = json::parse(events[1]);
  EXPECT_EQ(error["error"]["code"], 503);
  EXPECT_THAT(error["error"]["message"].get<std::string>(), HasSubstr("replica lost"));
  EXPECT_EQ(events[2], "[DONE]");
  // Not streaming: the same failure is a 503.
  ExpectError("/v1/completions", {{"prompt", "x"}, {"max_tokens", 5}}, 503, "replica lost");
}

TEST_F(OpenAiHttpTest, UnknownPathIs404AndWrongMethodIs405) {
  httplib::Result res = Client().Get("/v2/nothing");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(json::parse(res->body)["error"]["code"], 404);
  res = Client().Get("/v1/completions");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
  EXPECT_EQ(res->get_header_value("Allow"), "POST");
  EXPECT_EQ(json::parse(res->body)["error"]["code"], 405);
  res = Client().Post("/v1/models", "{}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
}

TEST_F(OpenAiHttpTest, OversizedBodyIs413) {
  OpenAiHttpOptions options;
  options.max_body_bytes = 1024;
  StartServer(options);
  httplib::Result res = Post("/v1/completions", {{"prompt", std::string(4096, 'a')}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_EQ(json::parse(res->body)["error"]["code"], 413);
  EXPECT_EQ(frontend_.generated.load(), 0);
}

TEST_F(OpenAiHttpTest, SixtyFourConcurrentStreams) {
  frontend_.token_delay = absl::Milliseconds(5);
  constexpr int kStreams = 64;
  constexpr int kTokens = 8;
  std::vector<std::string> bodies(kStreams);
  std::vector<int> statuses(kStreams, 0);
  std::vector<std::string> errors(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      httplib::Result res =
          Post("/v1/completions", {{"prompt", {i + 1}}, {"max_tokens", kTokens}, {"stream", true}});
      if (res) {
        statuses[i] = res->status;
        bodies[i] = res->body;
      } else {
        errors[i] = httplib::to_string(res.error());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_EQ(statuses[i], 200) << "stream " << i << ": " << errors[i];
    const std::vector<std::string> events = SsePayloads(bodies[i]);
    ASSERT_EQ(events.size(), kTokens + 1u) << "stream " << i;
    std::string text;
    for (int t = 0; t < kTokens; ++t) {
      text += json::parse(events[t])["choices"][0]["text"].get<std::string>();
    }
    EXPECT_EQ(text, ExpectedText({i + 1}, kTokens)) << "stream " << i;
    EXPECT_EQ(events.back(), "[DONE]");
  }
  EXPECT_EQ(frontend_.finished.load(), kStreams);
  EXPECT_EQ(frontend_.cancelled.load(), 0);
}

TEST_F(OpenAiHttpTest, ClientDisconnectMidStreamCancelsTheRequest) {
  frontend_.token_delay = absl::Milliseconds(10);
  httplib::Client client = Client();
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = json({{"prompt", "x"}, {"max_tokens", 200}, {"stream", true}}).dump();
  req.set_header("Content-Type", "application/json");
  std::string received;
  req.content_receiver = [&](const char* data, size_t length, uint64_t, uint64_t) {
    received.append(data, length);
    return received.find("\n\n") == std::string::npos;  // stop after the first event
  };
  httplib::Result res = client.send(req);
  EXPECT_FALSE(res);  // the client cancelled
  EXPECT_THAT(received, StartsWith("data: "));
  EXPECT_TRUE(Await([&] { return frontend_.cancelled.load() == 1; }))
      << "cancelled=" << frontend_.cancelled.load();
}

TEST_F(OpenAiHttpTest, ShutdownEndsStreamsInFlight) {
  frontend_.token_delay = absl::Milliseconds(10);
  std::atomic<bool> got_first{false};
  std::thread client_thread([&] {
    httplib::Client client = Client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = json({{"prompt", "x"}, {"max_tokens", 250}, {"stream", true}}).dump();
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      got_first = true;
      return true;
    };
    client.send(req);
  });
  ASSERT_TRUE(Await([&] { return got_first.load(); }));
  const absl::Time start = absl::Now();
  server_->Shutdown();
  EXPECT_LT(absl::Now() - start, absl::Seconds(8));
  client_thread.join();
  EXPECT_TRUE(Await([&] { return frontend_.cancelled.load() == 1; }));
}

TEST_F(OpenAiHttpTest, NCompletionsPerPromptAreSeparateRequestsWithTheirOwnSeeds) {
  const std::vector<int32_t> a = {5, 6, 7};
  const std::vector<int32_t> b = {9, 10};
  httplib::Result res =
      Post("/v1/completions",
           {{"prompt", {a, b}}, {"max_tokens", 3}, {"n", 2}, {"seed", 40}, {"temperature", 0.7}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  ASSERT_EQ(body["choices"].size(), 4u);
  for (int i = 0; i < 4; ++i) {
    const json& choice = body["choices"][i];
    EXPECT_EQ(choice["index"], i);
    EXPECT_EQ(choice["text"], ExpectedText(i < 2 ? a : b, 3)) << i;  // choice p * n + i
  }
  // Each prompt counted once, every completion counted.
  EXPECT_EQ(body["usage"]["prompt_tokens"], a.size() + b.size());
  EXPECT_EQ(body["usage"]["completion_tokens"], 4 * 3);
  // Four requests: prompt a with seeds 40 and 41, then prompt b with 40 and 41.
  const std::vector<GenerateRequest> sent = frontend_.requests();
  ASSERT_EQ(sent.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(sent[i].prompt_token_ids, i < 2 ? a : b);
    EXPECT_EQ(sent[i].sampling.seed, 40 + i % 2);
    EXPECT_FLOAT_EQ(sent[i].sampling.temperature, 0.7f);
  }
}

TEST_F(OpenAiHttpTest, NChatCompletionsStreamEveryChoice) {
  httplib::Result res =
      Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                                    {"max_tokens", 2},
                                    {"n", 3},
                                    {"stream", true},
                                    {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  std::map<int, std::string> content;
  std::map<int, std::string> finish;
  json usage;
  const std::vector<std::string> lines = absl::StrSplit(res->body, '\n');
  for (const std::string& line : lines) {
    if (!absl::StartsWith(line, "data: {")) continue;
    const json chunk = json::parse(line.substr(6));
    // find, not operator[]: on a const json a missing key is undefined behaviour (a crash here).
    if (const auto it = chunk.find("usage"); it != chunk.end() && !it->is_null()) usage = *it;
    for (const json& choice : chunk["choices"]) {
      const int index = choice["index"];
      if (choice["delta"].contains("content")) content[index] += choice["delta"]["content"];
      if (!choice["finish_reason"].is_null()) finish[index] = choice["finish_reason"];
    }
  }
  const std::string want = ExpectedText(ChatPromptIds("Hello"), 2);
  EXPECT_EQ(content, (std::map<int, std::string>{{0, want}, {1, want}, {2, want}}));
  EXPECT_EQ(finish, (std::map<int, std::string>{{0, "length"}, {1, "length"}, {2, "length"}}));
  EXPECT_EQ(usage["prompt_tokens"], ChatPromptIds("Hello").size());
  EXPECT_EQ(usage["completion_tokens"], 6);
}

TEST_F(OpenAiHttpTest, NOutOfRangeOrTooManyChoicesIsRefused) {
  ExpectError("/v1/completions", {{"prompt", "x"}, {"n", 0}}, 400, "n");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"n", 129}}, 400, "n");
  ExpectError("/v1/completions", {{"prompt", {"a", "b", "c"}}, {"n", 50}}, 400, "n");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"best_of", 2}}, 400, "best_of");
}

TEST_F(OpenAiHttpTest, LogitBiasReachesTheRequestAndBadOnesNameTheField) {
  httplib::Result res =
      Post("/v1/completions",
           {{"prompt", "Hi"}, {"max_tokens", 2}, {"logit_bias", {{"50256", -100}, {"3", 4.5}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 400) << res->body;  // 50256 is outside the fake's vocabulary
  EXPECT_THAT(res->body, HasSubstr("logit_bias token 50256 outside the vocabulary"));
  res = Post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                      {"max_tokens", 2},
                                      {"logit_bias", {{"7", -100}, {"3", 4.5}}}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.logit_bias,
            (std::vector<model::LogitBias>{{3, 4.5f}, {7, -100.0f}}));
  ExpectError("/v1/completions", {{"prompt", "x"}, {"logit_bias", {{"seven", 1}}}}, 400,
              "logit_bias");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"logit_bias", {{"7", "up"}}}}, 400,
              "logit_bias");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"logit_bias", {{"7", 101}}}}, 400,
              "logit_bias");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"logit_bias", {1, 2}}}, 400, "logit_bias");
}

// Structured outputs: OpenAI's response_format and vLLM's structured_outputs / guided_* reach
// the request as a grammar spec; a schema the grammar cannot enforce, two asks at once, and the
// kinds not supported are 400s naming the field.
TEST_F(OpenAiHttpTest, StructuredOutputsReachTheRequestAndBadOnesNameTheField) {
  using Kind = model::StructuredOutput::Kind;
  const json messages = {{{"role", "user"}, {"content", "Hi"}}};
  const json schema = {
      {"type", "object"}, {"properties", {{"ok", {{"type", "boolean"}}}}}, {"required", {"ok"}}};
  httplib::Result res =
      Post("/v1/chat/completions",
           {{"messages", messages},
            {"max_tokens", 2},
            {"response_format",
             {{"type", "json_schema"},
              {"json_schema", {{"name", "r"}, {"schema", schema}, {"strict", true}}}}}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output.kind, Kind::kJsonSchema);
  EXPECT_EQ(json::parse(frontend_.last_request().sampling.structured_output.spec), schema);
  res = Post(
      "/v1/chat/completions",
      {{"messages", messages}, {"max_tokens", 2}, {"response_format", {{"type", "json_object"}}}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output.kind, Kind::kJsonObject);
  res = Post(
      "/v1/completions",
      {{"prompt", "x"}, {"max_tokens", 2}, {"structured_outputs", {{"choice", {"yes", "no"}}}}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output,
            (model::StructuredOutput{Kind::kChoice, R"(["yes","no"])"}));
  res =
      Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"guided_json", schema.dump()}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output.kind, Kind::kJsonSchema);
  res = Post("/v1/completions",
             {{"prompt", "x"}, {"max_tokens", 2}, {"response_format", {{"type", "text"}}}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output.kind, Kind::kNone);

  ExpectError(
      "/v1/completions",
      {{"prompt", "x"},
       {"response_format",
        {{"type", "json_schema"},
         {"json_schema", {{"name", "r"}, {"schema", {{"type", "string"}, {"pattern", "(^a"}}}}}}}},
      400, "response_format");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"response_format", {{"type", "json_schema"}}}},
              400, "response_format");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"response_format", {{"type", "yaml"}}}}, 400,
              "response_format");
  ExpectError(
      "/v1/completions",
      {{"prompt", "x"}, {"response_format", {{"type", "json_object"}}}, {"guided_choice", {"a"}}},
      400, "response_format");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"structured_outputs", {{"grammar", "a"}}}}, 400,
              "structured_outputs");
  ExpectError("/v1/completions", {{"prompt", "x"}, {"guided_regex", "a(?=b)"}}, 400,
              "guided_regex");
  res = Post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"guided_regex", "[ab]+"}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().sampling.structured_output,
            (model::StructuredOutput{Kind::kRegex, "[ab]+"}));
  ExpectError("/v1/completions", {{"prompt", "x"}, {"guided_choice", json::array()}}, 400,
              "guided_choice");
  httplib::Result bad =
      Post("/v1/completions",
           {{"prompt", "x"},
            {"guided_json", {{"properties", {{"zip", {{"type", "string"}, {"multipleOf", 2}}}}}}}});
  ASSERT_EQ(bad->status, 400);
  EXPECT_THAT(bad->body, HasSubstr("/properties/zip/multipleOf"));
}

TEST_F(OpenAiHttpTest, PriorityReachesTheRequest) {
  httplib::Result res =
      Post("/v1/completions", {{"prompt", "Hi"}, {"max_tokens", 2}, {"priority", -3}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(frontend_.last_request().priority, -3);
  ExpectError("/v1/completions", {{"prompt", "x"}, {"priority", "high"}}, 400, "priority");
}

TEST_F(OpenAiHttpTest, ApiKeysGuardEverythingButProbesAndScrapers) {
  OpenAiHttpOptions options;
  options.api_keys = {"key-one", "key-two"};
  StartServer(options);
  const json completion = {{"prompt", "Hi"}, {"max_tokens", 2}};
  // No key, a wrong one, a prefix of a right one, another scheme: 401 with vLLM's body.
  for (const httplib::Headers& headers :
       {httplib::Headers{}, httplib::Headers{{"Authorization", "Bearer key-three"}},
        httplib::Headers{{"Authorization", "Bearer key-on"}},
        httplib::Headers{{"Authorization", "Bearer key-one2"}},
        httplib::Headers{{"Authorization", "Basic key-one"}},
        httplib::Headers{{"Authorization", "key-one"}}}) {
    httplib::Result res = Post("/v1/completions", completion, headers);
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401) << res->body;
    EXPECT_EQ(json::parse(res->body), json({{"error", "Unauthorized"}}));
    EXPECT_EQ(res->get_header_value("WWW-Authenticate"), "Bearer");
  }
  EXPECT_EQ(Client().Get("/v1/models")->status, 401);
  EXPECT_EQ(Post("/tokenize", {{"prompt", "Hi"}})->status, 401);
  // Either key, the scheme in any case.
  for (const char* value : {"Bearer key-one", "bearer key-two", "BEARER key-one"}) {
    httplib::Result res = Post("/v1/completions", completion, {{"Authorization", value}});
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << value << ": " << res->body;
  }
  EXPECT_EQ(Client().Get("/v1/models", {{"Authorization", "Bearer key-two"}})->status, 200);
  // Probes and scrapers need none.
  EXPECT_EQ(Client().Get("/health")->status, 200);
  EXPECT_EQ(Client().Get("/metrics")->status, 200);
  EXPECT_EQ(Client().Get("/version")->status, 200);
}

TEST_F(OpenAiHttpTest, TokenizeAPromptOrAConversation) {
  httplib::Result res = Post("/tokenize", {{"model", "fake-model"}, {"prompt", "Hello there"}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json body = json::parse(res->body);
  const std::vector<int32_t> want = *frontend_.tokenizer().Encode("Hello there", true);
  EXPECT_EQ(body["tokens"].get<std::vector<int32_t>>(), want);
  EXPECT_EQ(body["count"], want.size());
  EXPECT_EQ(body["max_model_len"], frontend_.model().max_model_len);
  EXPECT_TRUE(body["token_strs"].is_null());
  // Without special tokens, with each token's vocabulary string.
  res =
      Post("/tokenize",
           {{"prompt", "Hello there"}, {"add_special_tokens", false}, {"return_token_strs", true}});
  ASSERT_EQ(res->status, 200) << res->body;
  body = json::parse(res->body);
  const std::vector<int32_t> plain = *frontend_.tokenizer().Encode("Hello there", false);
  EXPECT_EQ(body["tokens"].get<std::vector<int32_t>>(), plain);
  EXPECT_EQ(body["token_strs"].get<std::vector<std::string>>(),
            *frontend_.tokenizer().IdsToTokens(plain));
  // A conversation: the chat template's prompt, as /v1/chat/completions sends it.
  res = Post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "Hello"}}}}});
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body)["tokens"].get<std::vector<int32_t>>(), ChatPromptIds("Hello"));
}

TEST_F(OpenAiHttpTest, DetokenizeGivesTheText) {
  const std::vector<int32_t> ids = *frontend_.tokenizer().Encode("round trip", false);
  httplib::Result res = Post("/detokenize", {{"tokens", ids}});
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(json::parse(res->body), json({{"prompt", "round trip"}}));
}

TEST_F(OpenAiHttpTest, TokenizeAndDetokenizeNameWhatIsWrong) {
  ExpectError("/tokenize", json::object(), 400, "prompt");
  ExpectError("/tokenize", {{"prompt", "x"}, {"messages", json::array()}}, 400, "messages");
  ExpectError("/tokenize", {{"prompt", 3}}, 400, "prompt");
  ExpectError("/tokenize", {{"messages", "hi"}}, 400, "messages");
  ExpectError("/detokenize", json::object(), 400, "tokens");
  ExpectError("/detokenize", {{"tokens", {1, "a"}}}, 400, "tokens");
  ExpectError("/detokenize", {{"tokens", {1, -2}}}, 400, "tokens");
  ExpectError("/detokenize", {{"tokens", {1, 100000}}}, 400, "tokens");
  httplib::Result res = Post("/tokenize", {{"model", "other"}, {"prompt", "x"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404) << res->body;
  res = Client().Get("/tokenize");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 405);
}

}  // namespace
}  // namespace tessera::coordinator::api
