#include "coordinator/api/reasoning.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace tessera::coordinator::api {
namespace {

TEST(SplitReasoningTest, Qwen3) {
  ReasoningSplit s = SplitReasoning("qwen3", "<think>\nFirst, 2+2.\n</think>\n\nIt is 4.");
  EXPECT_EQ(s.reasoning, "\nFirst, 2+2.\n");
  EXPECT_EQ(s.content, "\n\nIt is 4.");
  // enable_thinking=false: the template closed the block in the prompt; all is content.
  s = SplitReasoning("qwen3", "It is 4.");
  EXPECT_FALSE(s.reasoning.has_value());
  EXPECT_EQ(s.content, "It is 4.");
  // Cut off while thinking: all reasoning, no content.
  s = SplitReasoning("qwen3", "<think>hmm, let me");
  EXPECT_EQ(s.reasoning, "hmm, let me");
  EXPECT_FALSE(s.content.has_value());
  // Nothing after the block: content null.
  s = SplitReasoning("qwen3", "<think>x</think>");
  EXPECT_EQ(s.reasoning, "x");
  EXPECT_FALSE(s.content.has_value());
}

TEST(SplitReasoningTest, DeepSeekR1AndNone) {
  // The template opened the block: the output is reasoning until </think>.
  ReasoningSplit s = SplitReasoning("deepseek_r1", "Let me see.</think>Yes.");
  EXPECT_EQ(s.reasoning, "Let me see.");
  EXPECT_EQ(s.content, "Yes.");
  s = SplitReasoning("deepseek_r1", "<think>a</think>b");
  EXPECT_EQ(s.reasoning, "a");
  EXPECT_EQ(s.content, "b");
  s = SplitReasoning("deepseek_r1", "still thinking");
  EXPECT_EQ(s.reasoning, "still thinking");
  EXPECT_FALSE(s.content.has_value());
  s = SplitReasoning("", "<think>a</think>b");
  EXPECT_FALSE(s.reasoning.has_value());
  EXPECT_EQ(s.content, "<think>a</think>b");
}

// Whatever the pieces, the deltas add up to the whole text's split.
TEST(ReasoningStreamTest, JoinedDeltasMatchTheSplit) {
  const std::vector<std::string> texts = {
      "<think>\nFirst </thin then </think>\n\nIt is <think> 4.",
      "<think>unclosed </thi",
      "<thi",
      "<think",
      "Plain answer with </think> inside.",
      "",
      "<think></think>",
  };
  std::mt19937 rng(5);
  for (const char* parser : {"qwen3", "deepseek_r1", ""}) {
    for (const std::string& text : texts) {
      const ReasoningSplit whole = SplitReasoning(parser, text);
      for (size_t max_piece : {1, 2, 5, 100}) {
        ReasoningStream stream(parser);
        std::string reasoning, content;
        for (size_t pos = 0; pos < text.size();) {
          const size_t n = std::min(text.size() - pos, 1 + rng() % max_piece);
          const ReasoningStream::Delta d = stream.Add(text.substr(pos, n));
          reasoning += d.reasoning;
          content += d.content;
          pos += n;
        }
        const ReasoningStream::Delta tail = stream.Finish();
        reasoning += tail.reasoning;
        content += tail.content;
        const std::string where =
            std::string(parser) + " '" + text + "' " + std::to_string(max_piece);
        EXPECT_EQ(reasoning, whole.reasoning.value_or("")) << where;
        EXPECT_EQ(content, whole.content.value_or("")) << where;
      }
    }
  }
}

TEST(GrammarStartTokenTest, AfterTheEndOfThinkingUnlessThePromptEndedIt) {
  const auto one_token = [](absl::string_view text) -> absl::StatusOr<std::vector<int32_t>> {
    return std::vector<int32_t>{text == "</think>" ? 151668 : 7};
  };
  const auto bytes = [](absl::string_view text) -> absl::StatusOr<std::vector<int32_t>> {
    return std::vector<int32_t>(text.size(), 1);
  };
  EXPECT_EQ(GrammarStartToken("qwen3", "<|im_start|>assistant\n", one_token), 151668);
  EXPECT_EQ(GrammarStartToken("deepseek_r1", "<｜Assistant｜><think>\n", one_token), 151668);
  // enable_thinking=false: the prompt closed the block; the grammar holds from the start.
  EXPECT_EQ(GrammarStartToken("qwen3", "assistant\n<think>\n\n</think>\n\n", one_token), -1);
  EXPECT_EQ(GrammarStartToken("", "assistant\n", one_token), -1);
  EXPECT_EQ(GrammarStartToken("qwen3", "assistant\n", bytes), -1);  // not one token
}

TEST(ReasoningStreamTest, HoldsBackOnlyWhatMayBeAMarker) {
  ReasoningStream stream("qwen3");
  EXPECT_TRUE(stream.Add("<th").reasoning.empty());  // may be <think>
  ReasoningStream::Delta d = stream.Add("ink>Hmm </");
  EXPECT_EQ(d.reasoning, "Hmm ");  // "</" may begin </think>
  d = stream.Add("b> ok</think>Done");
  EXPECT_EQ(d.reasoning, "</b> ok");
  EXPECT_EQ(d.content, "Done");
  EXPECT_TRUE(IsReasoningParser("qwen3"));
  EXPECT_TRUE(IsReasoningParser("deepseek_r1"));
  EXPECT_FALSE(IsReasoningParser("r1"));
}

}  // namespace
}  // namespace tessera::coordinator::api
