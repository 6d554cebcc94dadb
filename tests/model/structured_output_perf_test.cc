// What a structured-output token mask costs (label perf: printed, never asserted): milliseconds
// per TokenConstraint::FillMask at a 128,256-token vocabulary (Llama 3's size), in the states that
// bound it — where few tokens fit (the start of a value, after a key) and where nearly all do (in
// a string). The scheduler fills one mask per constrained sequence per step, on its thread.
// The vocabulary is synthetic unless TESSERA_LLAMA3_TOKENIZER_JSON names a real tokenizer.json:
// the 256 bytes, the words of a text with and without a leading space and capitalised, JSON
// punctuation runs, digit groups, whitespace runs, then random lowercase strings to fill it.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/structured_output.h"
#include "model/token_constraint.h"
#include "model/tokenizer.h"

namespace tessera::model {
namespace {

constexpr int32_t kVocab = 128256;

std::vector<std::string> SyntheticVocabulary() {
  std::set<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.insert(std::string(1, static_cast<char>(b)));
  std::string text;
  std::ifstream license("/usr/share/common-licenses/GPL-3");
  std::stringstream buffer;
  buffer << license.rdbuf();
  text = buffer.str();
  std::string word;
  for (const char c : text + " ") {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      word += c;
      continue;
    }
    if (!word.empty()) {
      std::string upper = word;
      upper[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(upper[0])));
      for (const std::string& w : {word, upper}) {
        tokens.insert(w);
        tokens.insert(" " + w);
      }
      word.clear();
    }
  }
  for (const char* p :
       {"\":",  "\",",    "\"}",    "{\"", "[\"",  "\"]", "},",   "],", " {",   " [",
        "\": ", "\", \"", "\":\"",  "}}",  "]]",   "\\n", "\\\"", "\n", "\n\n", "  ",
        "    ", "\n  ",   "\n    ", "\t",  "\t\t", ", ",  ": ",   " \""}) {
    tokens.insert(p);
  }
  for (int i = 0; i < 1000; ++i) tokens.insert(std::to_string(i));
  std::mt19937 rng(5);
  // Byte-level BPE also holds pieces of UTF-8 characters, and words glued to quotes: 4,000 CJK
  // tokens whole, 4,000 that end or start mid-character, 2,000 with a quote or a backslash.
  const auto cjk = [&] {
    const uint32_t cp = 0x4E00 + rng() % 0x5000;
    return std::string{static_cast<char>(0xE0 | (cp >> 12)),
                       static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
                       static_cast<char>(0x80 | (cp & 0x3F))};
  };
  for (int i = 0; i < 4000; ++i) tokens.insert(cjk() + (i % 2 ? cjk() : ""));
  for (int i = 0; i < 2000; ++i) tokens.insert(cjk() + cjk().substr(0, 1 + i % 2));
  for (int i = 0; i < 2000; ++i) tokens.insert(cjk().substr(1 + i % 2) + cjk());
  const std::vector<std::string> words(tokens.begin(), tokens.end());
  for (int i = 0; i < 2000; ++i) {
    const std::string& w = words[rng() % words.size()];
    tokens.insert(i % 3 == 0 ? "\"" + w : i % 3 == 1 ? w + "\"" : w + "\\");
  }
  while (tokens.size() < static_cast<size_t>(kVocab - 200)) {
    std::string s = rng() % 2 ? " " : "";
    for (int n = 2 + static_cast<int>(rng() % 8); n > 0; --n) {
      s += static_cast<char>('a' + rng() % 26);
    }
    tokens.insert(s);
  }
  std::vector<std::string> out;  // ids 0..255: the bytes themselves
  for (int b = 0; b < 256; ++b) out.push_back(std::string(1, static_cast<char>(b)));
  for (const std::string& t : tokens) {
    if (t.size() > 1) out.push_back(t);
  }
  out.resize(kVocab);  // the last ids: no bytes (special tokens)
  return out;
}

std::unique_ptr<TokenVocabulary> Vocabulary(std::string* source) {
  if (const char* path = std::getenv("TESSERA_LLAMA3_TOKENIZER_JSON")) {
    auto tokenizer = Tokenizer::FromFile(path);
    if (tokenizer.ok()) {
      auto vocabulary = TokenVocabulary::Create(**tokenizer, (*tokenizer)->vocab_size());
      if (vocabulary.ok()) {
        *source = path;
        return *std::move(vocabulary);
      }
    }
  }
  *source = "synthetic";
  return TokenVocabulary::FromTokenBytes(SyntheticVocabulary());
}

TEST(StructuredOutputPerfTest, MaskMillisecondsAtLlama3VocabularySize) {
  std::string source;
  const auto build_start = std::chrono::steady_clock::now();
  std::unique_ptr<TokenVocabulary> vocabulary = Vocabulary(&source);
  const double build_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - build_start)
          .count();
  std::printf("vocabulary: %s, %d ids, trie %zu nodes, built in %.0f ms\n", source.c_str(),
              vocabulary->vocab_size(), vocabulary->trie().nodes.size(), build_ms);
  const StructuredOutput schema{StructuredOutput::Kind::kJsonSchema, R"({"type": "object",
      "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                     "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}}},
      "required": ["name", "age"]})"};
  const struct {
    const char* state;
    StructuredOutput spec;
    std::string prefix;
  } cases[] = {
      {"json_object, start", {StructuredOutput::Kind::kJsonObject, ""}, ""},
      {"json_object, in a string", {StructuredOutput::Kind::kJsonObject, ""}, "{\"text\": \"Hel"},
      {"schema, in a key", schema, "{\"na"},
      {"schema, after a key", schema, "{\"name\""},
      {"schema, in an integer", schema, "{\"name\": \"x\", \"age\": 4"},
      {"schema, in an enum", schema, "{\"name\": \"x\", \"age\": 4, \"tags\": [\"gr"},
      {"schema, in a pattern",
       {StructuredOutput::Kind::kJsonSchema,
        R"({"type": "string", "pattern": "^[a-z ]+( [0-9]{3})?$"})"},
       "\"hello wor"},
      {"regex, mid-text",
       {StructuredOutput::Kind::kRegex, "(the|a) [a-z]+ (sat|ran)( on the [a-z]+)?\\."},
       "the cat sat on"},
  };
  std::vector<uint32_t> mask(vocabulary->mask_words());
  for (const auto& c : cases) {
    auto constraint = TokenConstraint::Create(c.spec, *vocabulary, {kVocab - 1});
    ASSERT_TRUE(constraint.ok()) << constraint.status();
    // Feed the prefix byte by byte through single-byte tokens.
    for (const char ch : c.prefix) {
      ASSERT_TRUE((*constraint)->Accept(static_cast<unsigned char>(ch)).ok()) << c.state;
    }
    int32_t allowed = 0;
    // The first mask of a state may fill a cache (strings with a pattern): timed apart.
    const auto since = [](std::chrono::steady_clock::time_point t) {
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t)
          .count();
    };
    const auto first_start = std::chrono::steady_clock::now();
    allowed = (*constraint)->FillMask(absl::MakeSpan(mask));
    const double first_ms = since(first_start);
    const int reps = 20;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) allowed = (*constraint)->FillMask(absl::MakeSpan(mask));
    const double ms = since(start) / reps;
    std::printf("%-26s %7d tokens allowed  first %8.3f ms, then %8.3f ms per mask\n", c.state,
                allowed, first_ms, ms);
  }
}

}  // namespace
}  // namespace tessera::model
