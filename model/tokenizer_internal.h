// Internal to model/: the pieces of Tokenizer (tokenizer.h). Text helpers (UTF-8, the byte-level
// alphabet, PCRE2 regexes, Unicode normalization) live in tokenizer_text.cc, the BPE model in
// tokenizer_bpe.cc, loading tokenizer.json and the encode/decode pipeline in tokenizer.cc.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "model/tokenizer.h"

namespace tessera::model::internal {

// ---- UTF-8 -------------------------------------------------------------------------------------

// The offset of the first byte that is not part of valid UTF-8 (overlong forms, surrogates and
// code points past U+10FFFF are invalid), or nullopt when `text` is valid.
std::optional<size_t> FindInvalidUtf8(absl::string_view text);
// Decodes the code point at `pos` of valid UTF-8 text; advances `pos` past it.
char32_t DecodeUtf8(absl::string_view text, size_t& pos);
void AppendUtf8(char32_t cp, std::string& out);

// Appends `bytes` to `out` as Rust's String::from_utf8_lossy renders them (what `tokenizers`
// decodes to): valid sequences as they are, each maximal invalid subpart as U+FFFD. When
// `hold_incomplete_tail` is set, a tail that is the start of a valid sequence is not rendered;
// the return value is the number of bytes consumed (all of them otherwise).
size_t AppendUtf8Lossy(absl::string_view bytes, bool hold_incomplete_tail, std::string& out);

// ---- The byte-level alphabet (GPT-2's bytes_to_unicode) ----------------------------------------

// The code point that stands for each byte in byte-level token strings.
const std::array<char32_t, 256>& ByteToCodePoint();
// The bytes that a byte-level token string stands for; nullopt when a character of `token` is not
// in the alphabet (such tokens decode to their own UTF-8, as in `tokenizers`).
std::optional<std::string> ByteLevelTokenToBytes(absl::string_view token);
// The byte-level token string of `bytes`.
std::string BytesToByteLevel(absl::string_view bytes);

// ---- Unicode classes used by added tokens (Rust regex `\w`, `\s`) -----------------------------

bool IsRustWordChar(char32_t cp);    // Alphabetic, marks, decimal digits, connector punctuation
bool IsRustWhiteSpace(char32_t cp);  // the White_Space property

// ---- Regex (PCRE2, UTF + UCP, JIT when available) ----------------------------------------------

class Regex {
 public:
  // Compiles a pattern in the dialect of `tokenizers` (Oniguruma): `\s` is rewritten to also match
  // U+0085 as Oniguruma's does. `literal`: the pattern is a plain string. Errors are
  // kInvalidArgument "regex <pattern>: <PCRE2 message> at offset N".
  static absl::StatusOr<std::unique_ptr<Regex>> Create(absl::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls on_match(start, end) for each non-overlapping match of valid UTF-8 `text`, left to
  // right; empty matches are skipped. Thread-safe. kResourceExhausted when PCRE2 runs out of its
  // match limits (pathological input), kInternal for other matcher errors.
  absl::Status FindAll(absl::string_view text,
                       const std::function<void(size_t, size_t)>& on_match) const;

 private:
  Regex() = default;
  void* code_ = nullptr;  // pcre2_code_8*, kept out of this header
};

// ---- Normalizers (utf8proc) --------------------------------------------------------------------

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };
// Normalizes valid UTF-8. kInternal if utf8proc fails (it does not on valid input).
absl::StatusOr<std::string> Normalize(absl::string_view text, NormalizationForm form);

// ---- BPE ---------------------------------------------------------------------------------------

// The BPE model of tokenizer.json ("model": {"type": "BPE"}). Words are sequences of units: bytes
// in byte-level mode (the pre-tokenizer ends with ByteLevel: tokens are keyed by the bytes they
// stand for), UTF-8 characters otherwise. Merges run as in `tokenizers`' Word::merge_all: a
// priority queue of (rank, position), O(n log n) per word; results are cached per word.
class BpeModel {
 public:
  struct Options {
    bool byte_level = false;
    bool ignore_merges = false;  // a word that is itself in the vocabulary is one token
    std::optional<int32_t> unk_id;
    bool fuse_unk = false;
  };
  // `vocab` keys are units as above; merges are (left id, right id) -> merged id, by rank.
  BpeModel(absl::flat_hash_map<std::string, int32_t> vocab,
           const std::vector<std::array<int32_t, 3>>& merges, Options options);

  // Appends the ids of one pre-tokenized word.
  void EncodeWord(absl::string_view word, std::vector<int32_t>& ids) const;

 private:
  void MergeWord(absl::string_view word, std::vector<int32_t>& ids) const;

  struct MergeInfo {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  std::array<int32_t, 256> byte_ids_;  // byte-level mode: the id of each single byte, or -1
  Options options_;

  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 16;
  mutable absl::Mutex cache_mutex_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_
      ABSL_GUARDED_BY(cache_mutex_);
};

// ---- The pipeline ------------------------------------------------------------------------------

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Finds added tokens in text as `tokenizers` does (leftmost-longest, then the single_word, lstrip
// and rstrip rules).
class AddedTokenMatcher {
 public:
  explicit AddedTokenMatcher(std::vector<const AddedToken*> tokens);
  struct Piece {
    size_t begin, end;
    const AddedToken* token;  // nullptr: plain text
  };
  // Splits valid UTF-8 `text` into plain pieces and added tokens, in order, covering all of it.
  std::vector<Piece> Split(absl::string_view text) const;
  bool empty() const { return tokens_.empty(); }

 private:
  std::vector<const AddedToken*> tokens_;
  std::array<std::vector<const AddedToken*>, 256> by_first_byte_;  // longest first
};

struct NormalizerStep {
  NormalizationForm form;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kByteLevel, kDigits };
  Kind kind = Kind::kSplit;
  std::shared_ptr<const Regex> regex;  // shared: the GPT-2 regex of several ByteLevel steps
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;   // ByteLevel
  bool individual_digits = false;  // Digits
};

class TokenizerImpl {
 public:
  // Owned pieces, filled by the loader in tokenizer.cc.
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;  // ByteLevel, if any, is the last one
  std::unique_ptr<BpeModel> model;
  std::vector<AddedToken> added_tokens;
  std::vector<AddedToken> normalized_added_tokens;        // normalized: true, content normalized
  std::unique_ptr<AddedTokenMatcher> raw_matcher;         // added tokens with normalized false
  std::unique_ptr<AddedTokenMatcher> normalized_matcher;  // added tokens with normalized true
  std::vector<int32_t> post_prefix, post_suffix;          // the post-processor, single sequence
  bool byte_level_decoder = false;

  // Per id (index): the token string, the bytes it decodes to, and flags.
  struct IdInfo {
    std::string token;
    std::string bytes;
    bool present = false;
    bool special = false;
  };
  std::vector<IdInfo> ids;
  absl::flat_hash_map<std::string, int32_t> token_to_id;  // model vocabulary and added tokens

  TokenizerConfig config;
  std::optional<int32_t> bos_id, eos_id, post_bos_id;

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text,
                                              bool add_special_tokens) const;
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special) const;

 private:
  absl::Status EncodePlain(absl::string_view text, std::vector<int32_t>& out) const;
  absl::Status EncodeNormalized(absl::string_view text, std::vector<int32_t>& out) const;
};

// Splits `text` per step; appends non-empty pieces to `out` (views into `text`).
absl::Status ApplySplit(const PreTokenizerStep& step, absl::string_view text,
                        std::vector<absl::string_view>& out);

}  // namespace tessera::model::internal
