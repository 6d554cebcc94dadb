#include "model/structured_output.h"

#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/token_constraint.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace tessera::model {
namespace {

using ::testing::HasSubstr;
using Kind = StructuredOutput::Kind;

std::shared_ptr<const Grammar> Compile(Kind kind, const std::string& spec = "") {
  absl::StatusOr<std::shared_ptr<const Grammar>> grammar = Grammar::Compile({kind, spec});
  EXPECT_TRUE(grammar.ok()) << grammar.status();
  return grammar.ok() ? *grammar : nullptr;
}

std::shared_ptr<const Grammar> Schema(const std::string& schema) {
  return Compile(Kind::kJsonSchema, schema);
}

// Whether the whole of `text` is a value of `grammar`.
bool Accepts(const std::shared_ptr<const Grammar>& grammar, const std::string& text) {
  GrammarMatcher matcher(grammar);
  return matcher.AdvanceBytes(text) && matcher.IsAccepting();
}

// Whether `text` can be the start of a value of `grammar`.
bool Prefix(const std::shared_ptr<const Grammar>& grammar, const std::string& text) {
  GrammarMatcher matcher(grammar);
  return matcher.AdvanceBytes(text);
}

std::string CompileError(Kind kind, const std::string& spec) {
  absl::StatusOr<std::shared_ptr<const Grammar>> grammar = Grammar::Compile({kind, spec});
  EXPECT_FALSE(grammar.ok());
  return grammar.ok() ? "" : std::string(grammar.status().message());
}

TEST(StructuredOutputTest, JsonObjectTakesAnyObjectAndNothingElse) {
  auto g = Compile(Kind::kJsonObject);
  EXPECT_TRUE(
      Accepts(g, R"({"a": 1, "b": [true, null, "x\u00e9\n", -2.5e3, {}], "c": {"d": []}})"));
  EXPECT_TRUE(Accepts(g, "{}"));
  EXPECT_TRUE(Accepts(g, "{\n  \"k\": \"\xc3\xa9\"\n}"));
  EXPECT_FALSE(Prefix(g, "["));
  EXPECT_FALSE(Prefix(g, "\"a\""));
  EXPECT_FALSE(Prefix(g, "{\"a\" 1"));
  EXPECT_FALSE(Prefix(g, "{\"a\": 01"));
  EXPECT_FALSE(Prefix(g, "{\"a\": tru}"));
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\x01"));      // control character in a string
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\xc3\x41"));  // broken UTF-8
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\\x\""));     // unknown escape
  // Strict JSON parsers refuse malformed UTF-8 and unpaired surrogate escapes: so does the grammar.
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\xe0\x80"));  // overlong
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\xed\xa0"));  // a surrogate in UTF-8
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\xf4\x90"));  // past U+10FFFF
  EXPECT_FALSE(Prefix(g, "{\"a\": \"\xc1"));      // overlong lead
  EXPECT_TRUE(Accepts(g, "{\"a\": \"\xe0\xa0\x80\xf0\x9f\x98\x80\"}"));
  EXPECT_TRUE(Accepts(g, R"({"a": "\ud83d\ude00 \u00e9"})"));
  EXPECT_FALSE(Prefix(g, R"({"a": "\ud83d")"));       // a high surrogate alone
  EXPECT_FALSE(Prefix(g, R"({"a": "\ud83d\u0041)"));  // ... followed by no low one
  EXPECT_FALSE(Prefix(g, R"({"a": "\ude00)"));        // a low surrogate first
  EXPECT_FALSE(Accepts(g, "{\"a\": 1"));
  EXPECT_FALSE(Prefix(g, "{} "));  // nothing after the value
}

TEST(StructuredOutputTest, CompleteObjectCannotContinue) {
  GrammarMatcher matcher(Compile(Kind::kJsonObject));
  ASSERT_TRUE(matcher.AdvanceBytes("{\"a\": [1, 2]"));
  EXPECT_FALSE(matcher.IsAccepting());
  EXPECT_TRUE(matcher.CanContinue());
  ASSERT_TRUE(matcher.Advance('}'));
  EXPECT_TRUE(matcher.IsAccepting());
  EXPECT_FALSE(matcher.CanContinue());
}

TEST(StructuredOutputTest, RejectedBytesLeaveTheStateAsItWas) {
  GrammarMatcher matcher(Compile(Kind::kJsonObject));
  ASSERT_TRUE(matcher.AdvanceBytes("{\"a\":"));
  EXPECT_FALSE(matcher.AdvanceBytes(" 1x"));
  EXPECT_TRUE(matcher.AdvanceBytes(" 1}"));
  EXPECT_TRUE(matcher.IsAccepting());
}

// A gap is one space, or a newline and an indent that grows with the nesting: pretty printing
// passes, padding does not.
TEST(StructuredOutputTest, WhitespaceGapsAreBounded) {
  auto g = Compile(Kind::kJsonObject);
  EXPECT_TRUE(Accepts(
      g, "{\n    \"a\": {\n        \"b\": [\n            1,\n            2\n        ]\n    }\n}"));
  EXPECT_TRUE(Accepts(g, "{\n\t\"a\": [\n\t\t1\n\t]\n}"));
  EXPECT_TRUE(Accepts(g, " {\"a\" : 1 , \"b\": 2 }"));
  EXPECT_FALSE(Prefix(g, "{  "));    // two spaces
  EXPECT_FALSE(Prefix(g, "{\n\n"));  // two newlines
  EXPECT_FALSE(Prefix(g, "{ \n"));   // a space, then a newline
  EXPECT_FALSE(Prefix(g, "{\r\n"));  // carriage returns never
  EXPECT_TRUE(Prefix(g, "{\n" + std::string(2 * kIndentPerLevel, ' ')));
  EXPECT_FALSE(Prefix(g, "{\n" + std::string(2 * kIndentPerLevel + 1, ' ')));
}

TEST(StructuredOutputTest, PropertiesRequiredAndNoOthers) {
  auto g = Schema(R"({"type": "object",
      "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                     "tags": {"type": "array", "items": {"type": "string"}}},
      "required": ["name", "age"]})");
  EXPECT_TRUE(Accepts(g, R"({"name": "Ada", "age": 36})"));
  EXPECT_TRUE(Accepts(g, R"({"age": 36, "tags": ["x"], "name": "Ada"})"));  // any order
  EXPECT_FALSE(Prefix(g, R"({"name": "Ada"})"));                            // age missing
  EXPECT_FALSE(Prefix(g, R"({"nick")"));                                    // not a property
  EXPECT_FALSE(Prefix(g, R"({"name": "Ada", "name")"));                     // twice
  EXPECT_FALSE(Prefix(g, R"({"name": 3)"));                                 // wrong type
  EXPECT_FALSE(Prefix(g, R"({"age": 3.5)"));                                // not an integer
  EXPECT_FALSE(Prefix(g, R"({"tags": [1)"));
  // Once every property is given, only '}' may follow.
  GrammarMatcher matcher(g);
  ASSERT_TRUE(matcher.AdvanceBytes(R"({"name": "A", "age": 1, "tags": [])"));
  EXPECT_FALSE(matcher.AdvanceBytes(","));
  EXPECT_TRUE(matcher.AdvanceBytes("}"));
}

TEST(StructuredOutputTest, KeyThatPrefixesAnotherStaysOpenUntilUsed) {
  auto g = Schema(R"({"properties": {"a": {"type": "null"}, "ab": {"type": "null"}}})");
  EXPECT_TRUE(Accepts(g, R"({"a": null, "ab": null})"));
  EXPECT_TRUE(Accepts(g, R"({"ab": null, "a": null})"));
  EXPECT_FALSE(Prefix(g, R"({"a": null, "a")"));
  EXPECT_TRUE(Prefix(g, R"({"a": null, "a)"));  // may still become "ab"
}

TEST(StructuredOutputTest, AdditionalPropertiesSchema) {
  auto g = Schema(R"({"properties": {"id": {"type": "integer"}},
                      "additionalProperties": {"type": "boolean"}})");
  EXPECT_TRUE(Accepts(g, R"({"id": 1, "x": true, "idx": false})"));
  EXPECT_FALSE(Prefix(g, R"({"x": 1)"));
  EXPECT_FALSE(Prefix(g, R"({"id": true)"));
  auto any = Schema(R"({"type": "object"})");
  EXPECT_TRUE(Accepts(any, R"({"anything": [1, {"b": null}]})"));
}

TEST(StructuredOutputTest, EnumConstAndTypeLists) {
  auto g = Schema(R"({"properties": {
      "color": {"enum": ["red", "green", 3, null, {"x": 1}]},
      "kind": {"const": "fixed"},
      "maybe": {"type": ["string", "null"]},
      "ok": {"type": "boolean"}}})");
  EXPECT_TRUE(Accepts(g, R"({"color": "green", "kind": "fixed", "maybe": null, "ok": false})"));
  EXPECT_TRUE(Accepts(g, R"({"color": 3, "maybe": "s"})"));
  EXPECT_TRUE(Accepts(g, R"({"color": {"x":1}})"));
  EXPECT_FALSE(Prefix(g, R"({"color": "blue")"));
  EXPECT_FALSE(Prefix(g, R"({"color": 33)"));
  EXPECT_FALSE(Prefix(g, R"({"kind": "other")"));
  EXPECT_FALSE(Prefix(g, R"({"maybe": 1)"));
  EXPECT_FALSE(Prefix(g, R"({"ok": 0)"));
}

TEST(StructuredOutputTest, NumbersFollowJsonAndTheirType) {
  auto number = Schema(R"({"type": "number"})");
  for (const char* ok : {"0", "-0", "12", "-3.25", "1e5", "2.5E-3", "7e+10"}) {
    EXPECT_TRUE(Accepts(number, ok)) << ok;
  }
  for (const char* bad : {"01", "-", "1.", ".5", "1e", "+1", "1.2.3", "--1"}) {
    EXPECT_FALSE(Accepts(number, bad)) << bad;
  }
  auto integer = Schema(R"({"type": "integer"})");
  EXPECT_TRUE(Accepts(integer, "-42"));
  EXPECT_FALSE(Prefix(integer, "4.2"));
  EXPECT_FALSE(Prefix(integer, "4e2"));
  // Exponents of two digits at most: a value a double holds (nlohmann refuses 5e309).
  EXPECT_TRUE(Accepts(number, "-12345678901234567890.5e-99"));
  EXPECT_FALSE(Prefix(number, "5e309"));
  EXPECT_TRUE(Prefix(integer, std::string(kMaxNumberDigits, '9')));
  EXPECT_FALSE(Prefix(integer, std::string(kMaxNumberDigits + 1, '9')));
  // A number at the root is complete whenever its digits are, and may still go on.
  GrammarMatcher matcher(integer);
  ASSERT_TRUE(matcher.AdvanceBytes("12"));
  EXPECT_TRUE(matcher.IsAccepting());
  EXPECT_TRUE(matcher.CanContinue());
}

TEST(StructuredOutputTest, ArraysCountTheirItems) {
  auto g = Schema(R"({"type": "array", "items": {"type": "integer"}, "minItems": 1,
                      "maxItems": 2})");
  EXPECT_FALSE(Prefix(g, "[]"));
  EXPECT_TRUE(Accepts(g, "[1]"));
  EXPECT_TRUE(Accepts(g, "[1, 2]"));
  EXPECT_FALSE(Prefix(g, "[1, 2,"));
  auto tuple = Schema(R"({"prefixItems": [{"type": "string"}, {"type": "boolean"}],
                          "items": false})");
  EXPECT_TRUE(Accepts(tuple, R"(["a", true])"));
  EXPECT_TRUE(Accepts(tuple, R"(["a"])"));
  EXPECT_FALSE(Prefix(tuple, R"([true)"));
  EXPECT_FALSE(Prefix(tuple, R"(["a", true,)"));
}

TEST(StructuredOutputTest, StringLengthCountsCharacters) {
  auto g = Schema(R"({"type": "string", "minLength": 2, "maxLength": 3})");
  EXPECT_FALSE(Accepts(g, R"("a")"));
  EXPECT_TRUE(Accepts(g, R"("ab")"));
  EXPECT_TRUE(Accepts(g, "\"\xc3\xa9\\n\\u0041\""));  // three characters, eleven bytes
  EXPECT_FALSE(Prefix(g, R"("abcd)"));
}

TEST(StructuredOutputTest, AnyOfFollowsAlternativesUntilBytesDecide) {
  auto g = Schema(R"({"anyOf": [
      {"properties": {"cat": {"type": "string"}}, "required": ["cat"]},
      {"properties": {"car": {"type": "integer"}}, "required": ["car"]}]})");
  EXPECT_TRUE(Accepts(g, R"({"cat": "x"})"));
  EXPECT_TRUE(Accepts(g, R"({"car": 4})"));
  EXPECT_TRUE(Prefix(g, R"({"ca)"));
  EXPECT_FALSE(Prefix(g, R"({"cat": 4)"));
  EXPECT_FALSE(Prefix(g, R"({"car": "x")"));
}

TEST(StructuredOutputTest, RefsResolveAndRecurse) {
  auto g = Schema(R"({"$ref": "#/$defs/node",
      "$defs": {"node": {"type": "object",
          "properties": {"value": {"type": "integer"},
                         "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
          "required": ["value"]}}})");
  EXPECT_TRUE(
      Accepts(g, R"({"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]})"));
  EXPECT_FALSE(Prefix(g, R"({"value": 1, "children": [{"children": []})"));
  // Nesting is bounded, so a recursive schema cannot grow forever.
  std::string deep;
  for (int i = 0; i < kMaxNesting; ++i) deep += R"({"value": 1, "children": [)";
  EXPECT_FALSE(Prefix(g, deep));
}

TEST(StructuredOutputTest, ChoiceIsRawText) {
  auto g = Compile(Kind::kChoice, R"(["positive", "negative", "neg"])");
  EXPECT_TRUE(Accepts(g, "positive"));
  EXPECT_TRUE(Accepts(g, "neg"));
  EXPECT_TRUE(Accepts(g, "negative"));
  EXPECT_FALSE(Prefix(g, "\"positive\""));
  EXPECT_FALSE(Prefix(g, " positive"));
  EXPECT_FALSE(Prefix(g, "neutral"));
  GrammarMatcher matcher(g);
  ASSERT_TRUE(matcher.AdvanceBytes("neg"));
  EXPECT_TRUE(matcher.IsAccepting());
  EXPECT_TRUE(matcher.CanContinue());
}

TEST(StructuredOutputTest, RefusesWhatItCannotEnforceByName) {
  EXPECT_THAT(CompileError(Kind::kJsonSchema,
                           R"({"properties": {"zip": {"type": "string", "pattern": "(\\d"}}})"),
              HasSubstr("/properties/zip/pattern: regex: a missing ')'"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"type": "integer", "multipleOf": 3})"),
              HasSubstr("'multipleOf' is not supported"));
  EXPECT_THAT(CompileError(Kind::kRegex, "a(?=b)"), HasSubstr("look-around"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"type": "integer", "minimum": 0})"),
              HasSubstr("'minimum' is not supported"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"$ref": "#/$defs/missing"})"),
              HasSubstr("names nothing"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"$ref": "http://example.com/s.json"})"),
              HasSubstr("not a reference into this schema"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema,
                           R"({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}})"),
              HasSubstr("itself"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"type": "strung"})"),
              HasSubstr("unknown type 'strung'"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"required": ["x"], "properties": {"y": {}},
                                                  "additionalProperties": false})"),
              HasSubstr("requires 'x'"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"type": "object",)"), HasSubstr("invalid JSON"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, "false"), HasSubstr("accepts no value"));
  EXPECT_THAT(CompileError(Kind::kChoice, "[]"), HasSubstr("non-empty list"));
  EXPECT_THAT(CompileError(Kind::kChoice, R"(["a", 1])"), HasSubstr("non-empty string"));
  EXPECT_THAT(CompileError(Kind::kJsonSchema, R"({"type": "string", "minLength": -1})"),
              HasSubstr("/minLength: must be a non-negative integer"));
}

// Unions that multiply (anyOf of anyOf of ...) are bounded at compile time, so that no byte
// costs more than kMaxAlternatives parses.
TEST(StructuredOutputTest, RefusesUnionsWiderThanTheBound) {
  std::string schema = R"({"type": "object"})";
  for (int i = 0; i < 9; ++i) schema = R"({"anyOf": [)" + schema + ", " + schema + "]}";
  EXPECT_THAT(CompileError(Kind::kJsonSchema, schema), HasSubstr("any of 512 schemas"));
  std::string wide = R"({"anyOf": [{"type": "null"})";
  for (int i = 0; i < 200; ++i) wide += R"(, {"const": )" + std::to_string(i) + "}";
  auto g = Schema(wide + "]}");
  EXPECT_TRUE(Accepts(g, "199"));
  EXPECT_TRUE(Accepts(g, "null"));
}

// A string's pattern runs over its decoded text (short escapes as what they stand for); regex
// outputs are raw text.
TEST(StructuredOutputTest, PatternsAndRegexes) {
  auto g = Schema(R"({"properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                     "tag": {"pattern": "x"}}})");
  EXPECT_TRUE(Accepts(g, R"({"zip": "12345"})"));
  EXPECT_FALSE(Prefix(g, R"({"zip": "\u)"));  // no \u escapes under a pattern: UTF-8 instead
  EXPECT_FALSE(Prefix(g, R"({"zip": "1\)"));  // no short escape stands for a digit
  EXPECT_FALSE(Prefix(g, R"({"zip": "1234a)"));
  EXPECT_FALSE(Prefix(g, R"({"zip": "1234")"));  // the closing quote too early
  EXPECT_FALSE(Prefix(g, R"({"zip": "123456)"));
  EXPECT_TRUE(Accepts(g, R"({"tag": "a\nxb"})"));  // unanchored: a match anywhere
  EXPECT_FALSE(Prefix(g, R"({"tag": "ab")"));
  auto emoji = Schema(R"({"type": "string", "pattern": "^.$"})");
  EXPECT_TRUE(Accepts(emoji, "\"\xf0\x9f\x98\x80\""));
  EXPECT_FALSE(Accepts(emoji, R"("ab")"));
  auto date = Compile(Kind::kRegex, "\\d{4}-\\d{2}-\\d{2}");
  EXPECT_TRUE(Accepts(date, "2026-12-07"));
  EXPECT_FALSE(Prefix(date, "\"2026"));
  EXPECT_FALSE(Prefix(date, " 2026"));
  EXPECT_FALSE(Accepts(date, "2026-12-0"));
  GrammarMatcher matcher(Compile(Kind::kRegex, "ab+"));
  ASSERT_TRUE(matcher.AdvanceBytes("ab"));
  EXPECT_TRUE(matcher.IsAccepting());
  EXPECT_TRUE(matcher.CanContinue());
}

TEST(StructuredOutputTest, AnnotationsAreIgnored) {
  auto g = Schema(R"({"title": "T", "description": "d", "$schema": "x",
      "properties": {"when": {"type": "string", "format": "date-time", "default": "now"}}})");
  EXPECT_TRUE(Accepts(g, R"({"when": "2026-12-07"})"));
}

// Random documents of a schema, pretty or compact, are accepted whole.
TEST(StructuredOutputTest, AcceptsRandomDocumentsOfItsSchema) {
  auto g = Schema(R"({"type": "object",
      "properties": {"id": {"type": "integer"}, "score": {"type": "number"},
                     "name": {"type": "string"}, "flags": {"type": "array",
                     "items": {"type": "boolean"}}, "extra": {"type": ["null", "object"]}},
      "required": ["id"]})");
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    nlohmann::json doc;
    doc["id"] = static_cast<int>(rng() % 2000) - 1000;
    if (rng() % 2) doc["score"] = (static_cast<double>(rng() % 100000) - 50000) / 7.0;
    if (rng() % 2) doc["name"] = std::string("n\"\\\t\xc3\xa9") + std::to_string(rng() % 99);
    if (rng() % 2) {
      doc["flags"] = nlohmann::json::array();
      for (unsigned k = rng() % 4; k > 0; --k) doc["flags"].push_back(rng() % 2 == 0);
    }
    if (rng() % 2) doc["extra"] = rng() % 2 ? nlohmann::json() : nlohmann::json{{"k", {1, "v"}}};
    const int indent = static_cast<int>(rng() % 3) - 1;  // compact, 0 or 1: newlines
    const std::string text = doc.dump(indent);
    EXPECT_TRUE(Accepts(g, text)) << text;
  }
}

// The byte-level tokenizer `tessera make-model` writes (vocab 512: bytes, merges, specials).
std::unique_ptr<Tokenizer> TestTokenizer() {
  auto files = MakeByteLevelTokenizerFiles(512);
  EXPECT_TRUE(files.ok()) << files.status();
  auto tokenizer = Tokenizer::FromJson(files->tokenizer_json, "test");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *std::move(tokenizer);
}

bool Allowed(const std::vector<uint32_t>& mask, int32_t token) {
  return (mask[token / 32] >> (token % 32)) & 1;
}

// Along random paths through the grammar, the mask allows exactly the tokens whose bytes the
// grammar takes next (checked token by token over the whole vocabulary), and the end token only
// once the output is complete.
TEST(TokenConstraintTest, MaskAllowsExactlyTheTokensTheGrammarTakes) {
  std::unique_ptr<Tokenizer> tokenizer = TestTokenizer();
  auto vocabulary = TokenVocabulary::Create(*tokenizer, 520);  // padded, as model vocabularies are
  ASSERT_TRUE(vocabulary.ok()) << vocabulary.status();
  const int32_t eos = 511;
  const std::vector<StructuredOutput> specs = {
      {Kind::kJsonObject, ""},
      {Kind::kJsonSchema, R"({"properties": {"answer": {"enum": ["yes", "no"]},
          "count": {"type": "integer"}, "why": {"type": "string", "maxLength": 12}},
          "required": ["answer", "count"]})"},
      {Kind::kChoice, R"(["the cat", "the dog", "a bird"])"},
      {Kind::kRegex, "(the|a) [a-z]+ (sat|ran)\\.?"},
      {Kind::kJsonSchema, R"({"properties": {"id": {"type": "string", "pattern": "^[a-f0-9]{4}$"},
          "note": {"type": "string", "pattern": "e"}}, "required": ["id", "note"]})"},
  };
  std::mt19937 rng(11);
  for (const StructuredOutput& spec : specs) {
    for (int path = 0; path < 4; ++path) {
      auto constraint = TokenConstraint::Create(spec, **vocabulary, {eos});
      ASSERT_TRUE(constraint.ok()) << constraint.status();
      auto grammar = Grammar::Compile(spec);
      GrammarMatcher reference(*grammar);
      std::string text;
      std::vector<uint32_t> mask((*vocabulary)->mask_words());
      for (int step = 0; step < 300 && !(*constraint)->IsTerminated(); ++step) {
        const int32_t allowed = (*constraint)->FillMask(absl::MakeSpan(mask));
        ASSERT_GT(allowed, 0) << text;
        std::vector<int32_t> choices;
        for (int32_t t = 0; t < 520; ++t) {
          const std::string& bytes = (*vocabulary)->TokenBytes(t);
          GrammarMatcher probe = reference;
          const bool takes =
              t == eos ? reference.IsAccepting() : !bytes.empty() && probe.AdvanceBytes(bytes);
          ASSERT_EQ(Allowed(mask, t), takes) << "token " << t << " after '" << text << "'";
          if (takes) choices.push_back(t);
        }
        ASSERT_EQ(static_cast<int32_t>(choices.size()), allowed);
        // Past 40 steps, close what is open (the end token first, then '}', ']', '"'), so that
        // paths end.
        int32_t pick = choices[rng() % choices.size()];
        if (step > 40) {
          bool in_string = false;
          for (size_t k = 0; k < text.size(); ++k) {
            if (in_string && text[k] == '\\') {
              ++k;
            } else if (text[k] == '"') {
              in_string = !in_string;
            }
          }
          int best = 4;
          for (int32_t c : choices) {
            const std::string& b = (*vocabulary)->TokenBytes(c);
            const int rank = in_string  ? (b == "\"" ? 0 : 4)
                             : c == eos ? 0
                             : b == "}" ? 1
                             : b == "]" ? 2
                                        : 4;
            if (rank < best) {
              best = rank;
              pick = c;
            }
          }
        }
        ASSERT_TRUE((*constraint)->Accept(pick).ok());
        if (pick == eos) break;
        ASSERT_TRUE(reference.AdvanceBytes((*vocabulary)->TokenBytes(pick)));
        text += (*vocabulary)->TokenBytes(pick);
      }
      EXPECT_TRUE((*constraint)->IsComplete()) << text;
      if (spec.kind != Kind::kChoice && spec.kind != Kind::kRegex) {
        EXPECT_TRUE(nlohmann::json::accept(text)) << text;
      }
    }
  }
}

TEST(TokenConstraintTest, RefusesTokensTheGrammarDoesNot) {
  std::unique_ptr<Tokenizer> tokenizer = TestTokenizer();
  auto vocabulary = TokenVocabulary::Create(*tokenizer, 512);
  ASSERT_TRUE(vocabulary.ok());
  auto constraint = TokenConstraint::Create({Kind::kJsonObject, ""}, **vocabulary, {511});
  ASSERT_TRUE(constraint.ok());
  const auto id = [&](const char* text) { return tokenizer->Encode(text, false)->at(0); };
  EXPECT_THAT((*constraint)->Accept(id("[")).message(), HasSubstr("not allowed"));
  EXPECT_THAT((*constraint)->Accept(511).message(), HasSubstr("before the structured output"));
  ASSERT_TRUE((*constraint)->Accept(id("{")).ok());
  ASSERT_TRUE((*constraint)->Accept(id("}")).ok());
  EXPECT_TRUE((*constraint)->IsTerminated());
  std::vector<uint32_t> mask((*vocabulary)->mask_words());
  EXPECT_EQ((*constraint)->FillMask(absl::MakeSpan(mask)), 1);  // only the end token
  EXPECT_TRUE(Allowed(mask, 511));
}

// A reasoning model thinks freely; the grammar holds from the token after its "</think>".
TEST(TokenConstraintTest, StartAfterTokenLeavesTheOutputFreeUntilIt) {
  std::unique_ptr<Tokenizer> tokenizer = TestTokenizer();
  auto vocabulary = TokenVocabulary::Create(*tokenizer, 512);
  ASSERT_TRUE(vocabulary.ok());
  const auto id = [&](const char* text) { return tokenizer->Encode(text, false)->at(0); };
  StructuredOutput spec{Kind::kJsonObject, ""};
  spec.start_after_token = id("#");
  auto constraint = TokenConstraint::Create(spec, **vocabulary, {511});
  ASSERT_TRUE(constraint.ok());
  EXPECT_TRUE((*constraint)->waiting_for_start());
  std::vector<uint32_t> mask((*vocabulary)->mask_words());
  EXPECT_EQ((*constraint)->FillMask(absl::MakeSpan(mask)), 512);
  ASSERT_TRUE((*constraint)->Accept(id("[")).ok());  // anything while thinking
  EXPECT_FALSE((*constraint)->IsTerminated());
  EXPECT_FALSE((*constraint)->IsComplete());
  ASSERT_TRUE((*constraint)->Accept(id("#")).ok());
  EXPECT_FALSE((*constraint)->waiting_for_start());
  EXPECT_THAT((*constraint)->Accept(id("[")).message(), HasSubstr("not allowed"));
  EXPECT_LT((*constraint)->FillMask(absl::MakeSpan(mask)), 512);
  EXPECT_TRUE(Allowed(mask, id("{")));
  ASSERT_TRUE((*constraint)->Accept(id("{")).ok());
  ASSERT_TRUE((*constraint)->Accept(id("}")).ok());
  EXPECT_TRUE((*constraint)->IsTerminated());
}

}  // namespace
}  // namespace tessera::model
