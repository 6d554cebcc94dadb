// MakeByteLevelTokenizerFiles: a small Llama 3 style tokenizer for `tessera make-model`, with
// merges learned by a tiny BPE trainer from a built-in English sample.
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace tessera::model {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr absl::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kSpecialTokens[] = {"<|begin_of_text|>", "<|end_of_text|>",
                                          "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
constexpr int32_t kNumSpecial = 5;

// Llama 3's (3.0) chat template, as its tokenizer_config.json ships it.
constexpr absl::string_view kLlama3ChatTemplate =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
    "<|end_header_id|>\n\n' }}{% endif %}";

// What the merges are learned from: plain English about the things a demo model is asked.
constexpr absl::string_view kSample =
    "The quick brown fox jumps over the lazy dog. A tokenizer turns text into numbers, and a "
    "language model turns those numbers into the next number. This is a small model made for "
    "tests and demonstrations: its weights are random, so what it writes is not meant to make "
    "sense. Hello, world! How are you today? I am fine, thank you. What is the capital of "
    "France? The capital of France is Paris. Tell me a story about a cat and a dog who live in "
    "the same house. Once upon a time there was a little cat that liked to sleep in the sun, and "
    "a dog that liked to run in the garden. They were friends, and every evening they watched "
    "the stars together. Write a function that returns the sum of two numbers. The answer is "
    "that you add them: the sum of one and two is three, and the sum of ten and twenty is "
    "thirty. Servers stream tokens to their clients one at a time; each request has a prompt, "
    "a number of tokens to generate, and a temperature. Requests that arrive together are "
    "batched together, which is why throughput grows with the number of users until the "
    "machine is full. Numbers like 1, 2, 3, 10, 42, 100, 2024 and 3.14 appear in text too. "
    "The weather is nice today, so we will go for a walk in the park and then have lunch. "
    "Please summarize the following text in one sentence. Translate this into French. "
    "Explain why the sky is blue. Because sunlight is scattered by the air, and blue light is "
    "scattered more than red light, the sky looks blue during the day. ";

struct Trained {
  std::vector<std::string> tokens;  // by id: the bytes each token stands for
  std::vector<std::pair<int32_t, int32_t>> merges;
};

// Byte-pair training: start from the 256 bytes, repeatedly merge the most frequent adjacent pair
// (ties: the smallest pair of ids) inside pre-tokenized words, until `max_tokens` or no pair
// occurs twice.
absl::StatusOr<Trained> Train(int32_t max_tokens) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<internal::Regex> regex,
                           internal::Regex::Create(kLlama3Pattern, false));
  std::map<std::string, int64_t> counts;  // ordered: training is deterministic
  TESSERA_RETURN_IF_ERROR(regex->FindAll(kSample, [&](size_t begin, size_t end) {
    ++counts[std::string(kSample.substr(begin, end - begin))];
  }));
  Trained trained;
  absl::flat_hash_map<std::string, int32_t> ids;
  for (int b = 0; b < 256; ++b) {
    trained.tokens.push_back(std::string(1, static_cast<char>(b)));
    ids[trained.tokens.back()] = b;
  }
  std::vector<std::pair<std::vector<int32_t>, int64_t>> words;
  for (const auto& [word, count] : counts) {
    std::vector<int32_t> symbols;
    for (char c : word) symbols.push_back(static_cast<unsigned char>(c));
    words.emplace_back(std::move(symbols), count);
  }
  while (static_cast<int32_t>(trained.tokens.size()) < max_tokens) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pairs;
    for (const auto& [symbols, count] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) pairs[{symbols[i], symbols[i + 1]}] += count;
    }
    std::pair<int32_t, int32_t> best;
    int64_t best_count = 1;
    for (const auto& [pair, count] : pairs) {
      if (count > best_count) {
        best = pair;
        best_count = count;
      }
    }
    if (best_count < 2) break;
    const std::string merged = trained.tokens[best.first] + trained.tokens[best.second];
    auto [it, inserted] = ids.try_emplace(merged, static_cast<int32_t>(trained.tokens.size()));
    if (inserted) trained.tokens.push_back(merged);
    trained.merges.push_back(best);
    for (auto& [symbols, count] : words) {
      std::vector<int32_t> next;
      next.reserve(symbols.size());
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == best.first && symbols[i + 1] == best.second) {
          next.push_back(it->second);
          ++i;
        } else {
          next.push_back(symbols[i]);
        }
      }
      symbols = std::move(next);
    }
  }
  return trained;
}

}  // namespace

absl::StatusOr<ByteLevelTokenizerFiles> MakeByteLevelTokenizerFiles(int32_t vocab_size) {
  if (vocab_size < 256 + kNumSpecial) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vocab_size ", vocab_size, " is too small for a byte-level tokenizer: at least ",
        256 + kNumSpecial, " (256 bytes and ", kNumSpecial, " special tokens)"));
  }
  const int32_t first_special = vocab_size - kNumSpecial;
  TESSERA_ASSIGN_OR_RETURN(Trained trained, Train(first_special));

  ordered_json vocab = ordered_json::object();
  for (size_t id = 0; id < trained.tokens.size(); ++id) {
    vocab[internal::BytesToByteLevel(trained.tokens[id])] = id;
  }
  ordered_json merges = ordered_json::array();
  for (const auto& [left, right] : trained.merges) {
    merges.push_back({internal::BytesToByteLevel(trained.tokens[left]),
                      internal::BytesToByteLevel(trained.tokens[right])});
  }
  ordered_json added = ordered_json::array();
  for (int32_t i = 0; i < kNumSpecial; ++i) {
    added.push_back({{"id", first_special + i},
                     {"content", kSpecialTokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const std::string bos = kSpecialTokens[0];
  ordered_json byte_level = {{"type", "ByteLevel"},
                             {"add_prefix_space", false},
                             {"trim_offsets", true},
                             {"use_regex", false}};
  ordered_json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern", {{"Regex", kLlama3Pattern}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          byte_level}}}},
      {"post_processor",
       {{"type", "Sequence"},
        {"processors",
         {byte_level,
          {{"type", "TemplateProcessing"},
           {"single",
            {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
           {"pair",
            {{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
             {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
             {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
           {"special_tokens",
            {{bos, {{"id", bos}, {"ids", {first_special}}, {"tokens", {bos}}}}}}}}}}},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", true},
        {"vocab", vocab},
        {"merges", merges}}}};

  ordered_json config = {{"bos_token", bos},
                         {"eos_token", "<|eot_id|>"},
                         {"add_bos_token", true},
                         {"clean_up_tokenization_spaces", false},
                         {"model_max_length", 131072},
                         {"tokenizer_class", "PreTrainedTokenizerFast"},
                         {"chat_template", kLlama3ChatTemplate}};

  ByteLevelTokenizerFiles files;
  files.tokenizer_json = tokenizer.dump(1);
  files.tokenizer_config_json = config.dump(2);
  files.bos_token_id = first_special;
  files.end_of_text_id = first_special + 1;
  files.eos_token_id = first_special + 4;
  return files;
}

}  // namespace tessera::model
