#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/chat_template.h"
#include "nlohmann/json.hpp"
#include "tests/source_dir.h"

namespace tessera::model {
namespace {

// Ordered: key order matters where a template writes JSON it was given (tool calls).
using json = nlohmann::ordered_json;
using ::testing::HasSubstr;

json ReadFixture() {
  std::ifstream in(absl::StrCat(tessera::testing::SourceDir(),
                                "/tests/reference/tokenizers/chat_templates.json"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
}

// The fixture's messages, read keeping key order (Mistral writes a tool call's function whole).
std::vector<ChatMessage> Messages(const json& list) {
  std::vector<ChatMessage> messages;
  for (const json& m : list) {
    ChatMessage message{m["role"], m["content"], {}};
    if (m.contains("tool_calls")) {
      for (const json& call : m["tool_calls"]) {
        message.tool_calls.push_back(ChatToolCall{call["id"], call["function"]});
      }
    }
    if (m.contains("tool_call_id")) message.tool_call_id = m["tool_call_id"];
    messages.push_back(std::move(message));
  }
  return messages;
}

// Every template of the fixture renders every conversation as transformers' apply_chat_template
// did on the real template string (or fails where the template raises).
TEST(ChatTemplateTest, RendersAsTransformers) {
  const json fixture = ReadFixture();
  ASSERT_TRUE(fixture.is_array()) << "cannot read chat_templates.json";
  for (const json& entry : fixture) {
    const std::string name = entry["name"];
    auto chat = ChatTemplate::FromJinja(entry["chat_template"].get<std::string>(),
                                        entry["bos_token"].is_null() ? "" : entry["bos_token"],
                                        entry["eos_token"]);
    ASSERT_TRUE(chat.ok()) << name << ": " << chat.status();
    EXPECT_EQ(chat->name(), entry["format"].get<std::string>()) << name;
    // The parsers of each family (vLLM's names).
    const std::string format = entry["format"];
    EXPECT_EQ(chat->tool_call_parser(), format == "llama3.1"                   ? "llama3_json"
                                        : format == "mistral-v0.3"             ? "mistral"
                                        : name == "qwen2.5" || name == "qwen3" ? "hermes"
                                                                               : "")
        << name;
    EXPECT_EQ(chat->supports_tools(), !chat->tool_call_parser().empty()) << name;
    EXPECT_EQ(chat->reasoning_parser(), format == "qwen3" ? "qwen3" : "") << name;
    for (const json& c : entry["cases"]) {
      ChatTemplateOptions options;
      options.add_generation_prompt = c["add_generation_prompt"];
      if (c.contains("enable_thinking")) options.enable_thinking = c["enable_thinking"];
      if (c.contains("date_string")) options.date_string = c["date_string"];
      if (c.contains("tools") && c["tools"].is_array()) {
        for (const json& tool : c["tools"]) options.tools.push_back(tool);
      }
      auto text = chat->Apply(Messages(c["messages"]), options);
      const std::string where = absl::StrCat(name, " ", c.dump());
      if (c.contains("error")) {
        EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument) << where;
        EXPECT_THAT(text.status().message(), HasSubstr(c["error"].get<std::string>())) << where;
      } else {
        ASSERT_TRUE(text.ok()) << where << ": " << text.status();
        EXPECT_EQ(*text, c["expected"].get<std::string>()) << where;
      }
    }
  }
}

TEST(ChatTemplateTest, UnknownTemplatesAreUnimplementedNamingTheSupportedOnes) {
  auto chat = ChatTemplate::FromJinja("{% for m in messages %}<|user|>{{ m.content }}{% endfor %}",
                                      "<s>", "</s>");
  EXPECT_EQ(chat.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(chat.status().message(), HasSubstr("Llama 3"));
  EXPECT_THAT(chat.status().message(), HasSubstr("ChatML"));
  EXPECT_THAT(chat.status().message(), HasSubstr("Mistral"));
  auto llama2 = ChatTemplate::FromJinja("[INST] <<SYS>>\n{{ system }}\n<</SYS>>", "<s>", "</s>");
  EXPECT_EQ(llama2.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(llama2.status().message(), HasSubstr("Llama 2"));
}

TEST(ChatTemplateTest, EmptyConversationAndUnknownRolesAreInvalid) {
  ChatTemplate chat = ChatTemplate::ForFormat(ChatFormat::kChatMl, "", "<|im_end|>");
  EXPECT_EQ(chat.Apply({}, {}).status().code(), absl::StatusCode::kInvalidArgument);
  auto text = chat.Apply({ChatMessage{"narrator", "x", {}}}, {});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(text.status().message(), HasSubstr("role \"narrator\""));
}

TEST(ChatTemplateTest, Qwen3KeepsSeparateReasoningOfTheLastTurn) {
  ChatTemplate chat = ChatTemplate::ForFormat(ChatFormat::kQwen3, "", "<|im_end|>");
  ChatTemplateOptions options;
  options.add_generation_prompt = false;
  auto text =
      chat.Apply({ChatMessage{"user", "Q", {}}, ChatMessage{"assistant", "A", "why"}}, options);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text,
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\n"
            "A<|im_end|>\n");
}

TEST(ChatTemplateTest, FromTokenizerNeedsATemplate) {
  auto files = MakeByteLevelTokenizerFiles(300);
  ASSERT_TRUE(files.ok());
  auto tokenizer = Tokenizer::FromJson(files->tokenizer_json, "made");
  ASSERT_TRUE(tokenizer.ok());
  EXPECT_EQ(ChatTemplate::FromTokenizer(**tokenizer).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto config = ParseTokenizerConfig(files->tokenizer_config_json, "made");
  ASSERT_TRUE(config.ok());
  ASSERT_TRUE((*tokenizer)->SetConfig(*config).ok());
  auto chat = ChatTemplate::FromTokenizer(**tokenizer);
  ASSERT_TRUE(chat.ok()) << chat.status();
  EXPECT_EQ(chat->format(), ChatFormat::kLlama3);
  auto prompt = chat->Apply({ChatMessage{"user", "Hi", {}}}, {});
  ASSERT_TRUE(prompt.ok());
  auto ids = (*tokenizer)->Encode(*prompt, /*add_special_tokens=*/false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), files->bos_token_id);
  const int32_t header = *(*tokenizer)->TokenToId("<|start_header_id|>");
  EXPECT_EQ(std::count(ids->begin(), ids->end(), header), 2);  // user turn, generation prompt
}

}  // namespace
}  // namespace tessera::model
