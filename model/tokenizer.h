// Text <-> token ids, as a Hugging Face tokenizer.json describes them, for the byte-level BPE
// tokenizers of GPT-2, Llama 3 and Qwen2/2.5/3 (docs/decisions/0006-tokenizer.md says what is
// supported and what is refused).
//
// Tokenizer is immutable after loading: Encode, Decode and the lookups may be called from any
// number of threads at once (a word cache inside is guarded by a mutex). Loading validates
// everything it reads: a malformed tokenizer.json is kInvalidArgument naming the source and the
// key (`tokenizer.json: "model.merges"[12]: "ab" is not in the vocabulary`); a valid one that asks
// for something not implemented (a Unigram or WordPiece model, a Metaspace pre-tokenizer, ...) is
// kUnimplemented naming it. Nothing throws.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tessera::model {

// What a model's tokenizer_config.json says that matters for serving. Tokens may be written as
// strings or as AddedToken objects ({"content": ...}); both read as their content.
struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<bool> add_bos_token;  // informational: tokenizer.json's post-processor decides
  std::optional<bool> add_eos_token;
  // The Jinja chat template; when the file holds a list of named templates, the "default" one.
  std::optional<std::string> chat_template;

  bool operator==(const TokenizerConfig&) const = default;
};

// Parses the text of a tokenizer_config.json; unknown keys are ignored. Errors are
// kInvalidArgument: `SOURCE: "bos_token" must be a string or an object with "content", got ...`.
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(absl::string_view json_text,
                                                     absl::string_view source);

namespace internal {
class TokenizerImpl;
}  // namespace internal

class IncrementalDecoder;

class Tokenizer {
 public:
  // Parses a tokenizer.json; `source` names it in error messages.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(absl::string_view json_text,
                                                             absl::string_view source);
  // Reads and parses the tokenizer.json at `path` (kNotFound when it does not exist).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  // DIR/tokenizer.json, plus DIR/tokenizer_config.json when present (bos/eos, chat template).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromDirectory(const std::string& dir);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Adopts a tokenizer_config.json: its bos/eos tokens must be in the vocabulary (else
  // kInvalidArgument naming the token). Not thread-safe: call before sharing the tokenizer.
  absl::Status SetConfig(TokenizerConfig config);
  const TokenizerConfig& config() const;

  // The ids of `text` (which must be valid UTF-8: else kInvalidArgument with the byte offset), as
  // `tokenizers` computes them: added tokens (special or not, in text too) are matched first, the
  // rest normalized, pre-tokenized and BPE-encoded; add_special_tokens applies the post-processor
  // (Llama 3's adds <|begin_of_text|>). Chat prompts rendered by a template already hold their
  // special tokens: encode them with add_special_tokens = false.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const;

  // The text of `ids` as `tokenizers` decodes them: byte-level tokens back to bytes, bytes that
  // are not valid UTF-8 replaced by U+FFFD (one per maximal invalid subpart), special tokens
  // dropped when skip_special_tokens. Ids not in the vocabulary are kInvalidArgument.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  // One past the largest id, over the model vocabulary and the added tokens (ids without a token
  // may exist below it).
  int32_t vocab_size() const;
  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // The token's string as tokenizer.json writes it (byte-level: "Ġhello" for " hello").
  std::optional<std::string> IdToToken(int32_t id) const;
  // IdToToken of each id (transformers' convert_ids_to_tokens); kInvalidArgument naming the
  // first id that has no token.
  absl::StatusOr<std::vector<std::string>> IdsToTokens(absl::Span<const int32_t> ids) const;
  bool IsSpecial(int32_t id) const;
  // From tokenizer_config.json's bos_token, else the special token the post-processor puts first.
  std::optional<int32_t> bos_token_id() const;
  // From tokenizer_config.json's eos_token.
  std::optional<int32_t> eos_token_id() const;

  // What a token decodes to on its own (nullptr for ids not in the vocabulary): its bytes with a
  // ByteLevel decoder, else its string (tokens are then joined with spaces).
  const std::string* TokenBytes(int32_t id) const;
  // Whether the decoder is ByteLevel: every token then stands for bytes of the text on its own.
  bool DecodesByteLevel() const;

 private:
  friend class IncrementalDecoder;
  explicit Tokenizer(std::unique_ptr<internal::TokenizerImpl> impl);

  std::unique_ptr<internal::TokenizerImpl> impl_;
};

// Turns a stream of ids into text pieces for streaming. Every piece is valid UTF-8: bytes of an
// incomplete character are held back until a later token completes it (or Flush gives up on them
// with U+FFFD). The concatenation of all pieces, Flush included, equals
// tokenizer.Decode(all ids, skip_special). Ids not in the vocabulary add nothing (Decode would
// refuse them). Holds a reference to the tokenizer, which must outlive it; one per stream, not
// thread-safe. O(token length) per call, unlike re-decoding a window.
class IncrementalDecoder {
 public:
  IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens);

  // The text that `id` completes (often empty mid-character, sometimes several characters).
  std::string Append(int32_t id);
  // What is still held back, as Decode would render it at the end of the text; then resets.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;  // at most 3 bytes: the start of an incomplete UTF-8 sequence
  bool emitted_any_ = false;
};

// A valid byte-level BPE tokenizer.json (Llama 3 style: Split with the Llama 3 regex, ByteLevel,
// ignore_merges, <|begin_of_text|> added by the post-processor) with exactly `vocab_size` ids:
// the 256 byte tokens, merges learned from a built-in English sample, then the special tokens
// <|begin_of_text|>, <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|> at the
// top ids (as in Llama 3), so `vocab_size - 5` is bos and `vocab_size - 1` is <|eot_id|>. Ids
// between the learned tokens and the specials (small samples learn few merges) have no token.
// kInvalidArgument when vocab_size < 256 + 5. For `tessera make-model`.
struct ByteLevelTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;  // bos/eos tokens and the Llama 3 chat template
  int32_t bos_token_id = 0;
  int32_t eos_token_id = 0;  // <|eot_id|>
  int32_t end_of_text_id = 0;
};
absl::StatusOr<ByteLevelTokenizerFiles> MakeByteLevelTokenizerFiles(int32_t vocab_size);

}  // namespace tessera::model
