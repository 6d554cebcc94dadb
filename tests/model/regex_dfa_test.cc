#include "model/regex_dfa.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tessera::model {
namespace {

using ::testing::HasSubstr;

// Whether the DFA of `pattern` matches all of `text`.
bool Matches(const std::string& pattern, const std::string& text, bool search = false) {
  auto dfa = RegexDfa::Compile(pattern, search);
  EXPECT_TRUE(dfa.ok()) << pattern << ": " << dfa.status();
  if (!dfa.ok()) return false;
  int32_t state = (*dfa)->start();
  for (const char c : text) {
    state = (*dfa)->Next(state, static_cast<uint8_t>(c));
    if (state == RegexDfa::kDead) return false;
  }
  return (*dfa)->Accepting(state);
}

std::string Error(const std::string& pattern) {
  auto dfa = RegexDfa::Compile(pattern, false);
  EXPECT_FALSE(dfa.ok()) << pattern;
  return dfa.ok() ? "" : std::string(dfa.status().message());
}

TEST(RegexDfaTest, WholeMatchesTheSyntaxSubset) {
  EXPECT_TRUE(Matches("abc", "abc"));
  EXPECT_FALSE(Matches("abc", "abcd"));
  EXPECT_TRUE(Matches("a|bc|d", "bc"));
  EXPECT_TRUE(Matches("(ab)+c?", "ababc"));
  EXPECT_FALSE(Matches("(ab)+c?", "c"));
  EXPECT_TRUE(Matches("(?:x|y)*z", "xyxz"));
  EXPECT_TRUE(Matches("[a-c_]{2,3}", "a_c"));
  EXPECT_FALSE(Matches("[a-c_]{2,3}", "a"));
  EXPECT_FALSE(Matches("[a-c_]{2,3}", "abca"));
  EXPECT_TRUE(Matches("x{3}", "xxx"));
  EXPECT_TRUE(Matches("x{2,}", "xxxxx"));
  EXPECT_TRUE(Matches("\\d{3}-\\d{4}", "555-1234"));
  EXPECT_FALSE(Matches("\\d{3}-\\d{4}", "55a-1234"));
  EXPECT_TRUE(Matches("\\w+@\\w+\\.com", "ada_1@example.com"));
  EXPECT_TRUE(Matches("[^0-9]+", "abc\xc3\xa9"));  // negated classes take non-ASCII
  EXPECT_FALSE(Matches("[^0-9]+", "ab1"));
  EXPECT_TRUE(Matches("a.c",
                      "a\xe2\x82\xac"
                      "c"));  // '.' is one character, not one byte
  EXPECT_FALSE(Matches("a.c", "a\nc"));
  EXPECT_TRUE(Matches("caf\xc3\xa9|\\u00e9t\\u00e9", "\xc3\xa9t\xc3\xa9"));
  EXPECT_TRUE(Matches("\\.\\*\\(\\)", ".*()"));
  EXPECT_TRUE(Matches("(?<year>\\d{4})-(?P<month>\\d\\d)", "2026-12"));
  EXPECT_TRUE(Matches("a+?b*?", "aaa"));  // lazy quantifiers: the same language
  EXPECT_TRUE(Matches("^ab$", "ab"));
  EXPECT_TRUE(Matches("x{", "x{"));  // a '{' that starts no count is a literal
}

TEST(RegexDfaTest, SearchFindsAMatchAnywhereUnlessAnchored) {
  EXPECT_TRUE(Matches("\\d+", "abc 42 def", /*search=*/true));
  EXPECT_FALSE(Matches("\\d+", "abc def", /*search=*/true));
  EXPECT_TRUE(Matches("^\\d+", "42 def", /*search=*/true));
  EXPECT_FALSE(Matches("^\\d+", "x 42", /*search=*/true));
  EXPECT_FALSE(Matches("^\\d+$", "42 x", /*search=*/true));
  EXPECT_TRUE(Matches("^[0-9]{5}$", "12345", /*search=*/true));
  EXPECT_TRUE(Matches("a\\$", "xa$", /*search=*/true));  // an escaped '$' is a literal
}

TEST(RegexDfaTest, DeadStatesAreCutSoNoPrefixLeadsNowhere) {
  auto dfa = RegexDfa::Compile("ab|ac", false);
  ASSERT_TRUE(dfa.ok());
  const int32_t a = (*dfa)->Next(0, 'a');
  ASSERT_NE(a, RegexDfa::kDead);
  EXPECT_EQ((*dfa)->Next(a, 'd'), RegexDfa::kDead);
  EXPECT_EQ((*dfa)->Next(0, 'b'), RegexDfa::kDead);
}

TEST(RegexDfaTest, RefusesWhatItDoesNotSupportByName) {
  EXPECT_THAT(Error("(a)\\1"), HasSubstr("back-references"));
  EXPECT_THAT(Error("a\\bc"), HasSubstr("\\b"));
  EXPECT_THAT(Error("(?=a)b"), HasSubstr("look-around"));
  EXPECT_THAT(Error("a^b"), HasSubstr("anchors"));
  EXPECT_THAT(Error("(ab"), HasSubstr("missing ')'"));
  EXPECT_THAT(Error("ab)"), HasSubstr("unbalanced"));
  EXPECT_THAT(Error("*a"), HasSubstr("nothing to repeat"));
  EXPECT_THAT(Error("[\xc3\xa9]"), HasSubstr("non-ASCII"));
  EXPECT_THAT(Error("a{3,1}"), HasSubstr("n < m"));
  EXPECT_THAT(Error("[z-a]"), HasSubstr("out of order"));
  EXPECT_THAT(Error("(a|b|c|d|e|f|g|h){40}x{1000}[a-z]{1000}"), HasSubstr("regex:"));
}

// Expressions whose automaton explodes are refused (a bounded amount of work), not built.
TEST(RegexDfaTest, ExplodingExpressionsAreRefused) {
  for (const char* pattern :
       {"[ab]*a[ab]{30}", "((a|b)*c{100}){100}", "(x{1000}){1000}", ".{1000}.{1000}"}) {
    auto dfa = RegexDfa::Compile(pattern, /*search=*/true);
    EXPECT_FALSE(dfa.ok()) << pattern;
    if (!dfa.ok()) {
      EXPECT_THAT(std::string(dfa.status().message()), HasSubstr("regex:"));
    }
  }
}

}  // namespace
}  // namespace tessera::model
