// The fixture of the OpenAI HTTP server tests (openai_http_test.cc, openai_http_tools_test.cc):
// an OpenAiHttpServer over a FakeFrontend, driven by an httplib::Client over loopback.
#pragma once

#include <httplib.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "coordinator/api/openai_http.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/coordinator/fake_frontend.h"

namespace tessera::coordinator::api {

// The payloads of "data: ..." events, in order.
inline std::vector<std::string> SsePayloads(const std::string& body) {
  std::vector<std::string> out;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    if (absl::ConsumePrefix(&event, "data: ")) out.emplace_back(event);
  }
  return out;
}

class OpenAiHttpTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(OpenAiHttpOptions{}); }

  void StartServer(OpenAiHttpOptions options) {
    server_.reset();
    auto server = OpenAiHttpServer::Create(frontend_, std::move(options));
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
  }

  httplib::Client Client() const {
    httplib::Client client("127.0.0.1", server_->port());
    client.set_read_timeout(std::chrono::seconds(30));
    return client;
  }

  httplib::Result Post(const std::string& path, const nlohmann::json& body,
                       const httplib::Headers& headers = {}) {
    return Client().Post(path.c_str(), headers, body.dump(), "application/json");
  }

  // Posts and expects a JSON error with `status` whose message and param name `field`.
  void ExpectError(const std::string& path, const nlohmann::json& body, int status,
                   const std::string& field) {
    httplib::Result res = Post(path, body);
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status) << res->body;
    const nlohmann::json error = nlohmann::json::parse(res->body);
    ASSERT_TRUE(error.contains("error")) << res->body;
    EXPECT_EQ(error["error"]["code"], status);
    EXPECT_THAT(error["error"]["message"].get<std::string>(), ::testing::HasSubstr(field))
        << res->body;
    if (status == 400) {
      EXPECT_EQ(error["error"]["param"], field) << res->body;
      EXPECT_EQ(error["error"]["type"], "BadRequestError");
    }
  }

  std::vector<int32_t> Encode(const std::string& text, bool add_special_tokens = true) {
    auto ids = frontend_.Tokenize(text, add_special_tokens);
    EXPECT_TRUE(ids.ok());
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  std::string ExpectedText(const std::vector<int32_t>& prompt, int max_tokens) {
    auto text =
        frontend_.Detokenize(testing::FakeFrontend::ExpectedTokens(prompt, max_tokens), true);
    EXPECT_TRUE(text.ok());
    return text.ok() ? *text : "";
  }

  std::vector<int32_t> ChatPromptIds(const std::string& user) {
    std::vector<model::ChatMessage> messages = {{"user", user, std::nullopt}};
    auto text = frontend_.ApplyChatTemplate(messages, model::ChatTemplateOptions{});
    EXPECT_TRUE(text.ok());
    return Encode(text.ok() ? *text : "", false);
  }

  testing::FakeFrontend frontend_;
  std::unique_ptr<OpenAiHttpServer> server_;
};

}  // namespace tessera::coordinator::api
