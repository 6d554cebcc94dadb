// Structured outputs at the token level: which tokens of a vocabulary may come next under a
// grammar (model/structured_output.h), as a bitmask the sampler applies (vLLM's and xgrammar's
// token bitmask: bit t of word t / 32 set when token t is allowed).
//
// TokenVocabulary holds the bytes each token decodes to, in a trie, so that a mask walks the
// grammar once per distinct token prefix and skips every token under a prefix the grammar refuses.
// Only byte-level tokenizers (GPT-2, Llama 3, Qwen) are supported: their tokens decode to bytes on
// their own. Special tokens never match grammar text; the end tokens a constraint is given are
// allowed exactly when the output so far is complete.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "model/regex_dfa.h"
#include "model/structured_output.h"
#include "model/tokenizer.h"

namespace tessera::model {

// Immutable after Create; shared by every constraint of a replica, from any thread.
class TokenVocabulary {
 public:
  // kInvalidArgument when the tokenizer's decoder is not byte-level. `vocab_size` is the model's
  // (logits width), at least the tokenizer's; ids without a token are never allowed.
  static absl::StatusOr<std::unique_ptr<TokenVocabulary>> Create(const Tokenizer& tokenizer,
                                                                 int32_t vocab_size);
  // From each id's bytes directly (empty: never allowed); for tests and benchmarks.
  static std::unique_ptr<TokenVocabulary> FromTokenBytes(std::vector<std::string> token_bytes);

  int32_t vocab_size() const { return vocab_size_; }
  int32_t mask_words() const { return (vocab_size_ + 31) / 32; }

  // Tokens by their bytes; a node's edges are contiguous.
  struct Trie {
    struct Node {
      uint32_t first_edge = 0;
      uint32_t num_edges = 0;
      uint32_t first_token = 0;  // tokens whose bytes end here
      uint32_t num_tokens = 0;
    };
    std::vector<Node> nodes;  // [0]: the empty prefix
    std::vector<uint8_t> edge_bytes;
    std::vector<uint32_t> edge_targets;
    std::vector<int32_t> node_tokens;
    size_t max_depth = 0;  // the longest token's bytes
  };
  // Every token with bytes.
  const Trie& trie() const { return all_; }
  // In a JSON string, most tokens are plain text: bytes >= 0x20 other than '"' and '\\', in whole
  // UTF-8 characters. They are allowed there whatever came before (when the string has no length
  // limit): a precomputed mask, so that a walk visits only the other tokens (their own trie).
  const std::vector<uint32_t>& plain_text_mask() const { return plain_text_mask_; }
  const Trie& other_than_plain_text() const { return other_; }
  // The plain-text tokens alone: under a string's pattern, which of them fit depends on the
  // pattern's state only, so a constraint walks them once per state and keeps the mask.
  const Trie& plain_text() const { return plain_; }
  // The bytes of `token` (empty for special tokens and ids without a token).
  const std::string& TokenBytes(int32_t token) const { return token_bytes_[token]; }

 private:
  TokenVocabulary() = default;
  int32_t vocab_size_ = 0;
  std::vector<std::string> token_bytes_;
  Trie all_;
  Trie other_;
  Trie plain_;
  std::vector<uint32_t> plain_text_mask_;
};

// One request's output under its grammar. Not thread-safe: one owner (a replica's scheduler).
class TokenConstraint {
 public:
  // kInvalidArgument for a spec the grammar compiler refuses. `vocabulary` must outlive the
  // constraint. `end_tokens` (EOS, stop token ids) are allowed once the output is complete.
  static absl::StatusOr<std::unique_ptr<TokenConstraint>> Create(const StructuredOutput& spec,
                                                                 const TokenVocabulary& vocabulary,
                                                                 std::vector<int32_t> end_tokens);

  // Sets bit t of `mask` (TokenVocabulary::mask_words() words) for every token t that may come
  // next, clearing every other bit. Returns how many tokens are allowed (0: none can continue the
  // output, which the vocabulary cannot spell).
  int32_t FillMask(absl::Span<uint32_t> mask);
  // Takes a generated token: kInvalidArgument naming it when the grammar does not allow it there
  // (the state is then unchanged).
  absl::Status Accept(int32_t token);
  // The output is complete and nothing may follow it: the request is done.
  bool IsTerminated() const;
  bool IsComplete() const { return !waiting_for_start() && matcher_.IsAccepting(); }
  // StructuredOutput::start_after_token has not been generated yet: every token may come (a
  // reasoning model thinking), FillMask allows all, Accept takes anything.
  bool waiting_for_start() const { return start_after_token_ >= 0; }

 private:
  TokenConstraint(std::shared_ptr<const Grammar> grammar, const TokenVocabulary& vocabulary,
                  std::vector<int32_t> end_tokens);
  void Walk(const TokenVocabulary::Trie& trie, uint32_t node, size_t depth,
            absl::Span<uint32_t> mask, int32_t& allowed);

  GrammarMatcher matcher_;
  const TokenVocabulary& vocabulary_;
  std::vector<int32_t> end_tokens_;
  bool ended_ = false;                         // an end token was accepted
  int32_t start_after_token_ = -1;             // >= 0: waiting for it (waiting_for_start)
  std::vector<GrammarMatcher::State> states_;  // per trie depth, reused across masks
  // Strings with a pattern: the plain-text tokens that fit, by (pattern, DFA state), with their
  // count. Bounded: cleared when it holds kMaxCachedMasks.
  static constexpr size_t kMaxCachedMasks = 64;
  absl::flat_hash_map<std::pair<const RegexDfa*, int32_t>,
                      std::pair<std::vector<uint32_t>, int32_t>>
      pattern_masks_;
};

}  // namespace tessera::model
