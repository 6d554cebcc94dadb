#include "model/token_constraint.h"

#include <algorithm>
#include <bit>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/structured_output_internal.h"

namespace tessera::model {

namespace {

struct Entry {
  std::string_view bytes;
  int32_t id;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TokenVocabulary>> TokenVocabulary::Create(const Tokenizer& tokenizer,
                                                                         int32_t vocab_size) {
  if (!tokenizer.DecodesByteLevel()) {
    return absl::InvalidArgumentError(
        "structured outputs need a byte-level tokenizer (GPT-2, Llama 3, Qwen style); this "
        "model's tokenizer.json has another decoder");
  }
  if (vocab_size < tokenizer.vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("the model's vocabulary (", vocab_size,
                                                   ") is smaller than its tokenizer's (",
                                                   tokenizer.vocab_size(), ")"));
  }
  std::vector<std::string> token_bytes(static_cast<size_t>(vocab_size));
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    const std::string* bytes = tokenizer.TokenBytes(id);
    if (bytes == nullptr || bytes->empty() || tokenizer.IsSpecial(id)) continue;
    token_bytes[id] = *bytes;
  }
  return FromTokenBytes(std::move(token_bytes));
}

namespace {

// Whether `bytes` are plain JSON string text: no quote, backslash or control byte, and whole
// UTF-8 characters as the matcher's string lexer reads them.
bool IsPlainText(const std::string& bytes) {
  int continuation = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  for (const char c : bytes) {
    const auto b = static_cast<uint8_t>(c);
    if (continuation > 0) {
      if (b < lo || b > hi) return false;
      lo = 0x80;
      hi = 0xBF;
      --continuation;
    } else if (b < 0x20 || b == '"' || b == '\\') {
      return false;
    } else {
      const internal::Utf8Lead lead = internal::Utf8LeadOf(b);
      if (lead.continuation < 0) return false;
      continuation = lead.continuation;
      lo = lead.first_lo;
      hi = lead.first_hi;
    }
  }
  return continuation == 0;
}

// The trie of `entries` (sorted by bytes).
TokenVocabulary::Trie BuildTrie(const std::vector<Entry>& entries) {
  TokenVocabulary::Trie t;
  // A node over each range of entries that share a prefix of length `depth`.
  std::function<uint32_t(size_t, size_t, size_t)> build = [&](size_t lo, size_t hi,
                                                              size_t depth) -> uint32_t {
    const auto index = static_cast<uint32_t>(t.nodes.size());
    t.nodes.emplace_back();
    size_t i = lo;
    t.nodes[index].first_token = static_cast<uint32_t>(t.node_tokens.size());
    while (i < hi && entries[i].bytes.size() == depth) t.node_tokens.push_back(entries[i++].id);
    t.nodes[index].num_tokens = static_cast<uint32_t>(i - lo);
    std::vector<std::pair<size_t, size_t>> groups;
    while (i < hi) {
      size_t j = i;
      while (j < hi && entries[j].bytes[depth] == entries[i].bytes[depth]) ++j;
      groups.emplace_back(i, j);
      i = j;
    }
    const auto first_edge = static_cast<uint32_t>(t.edge_bytes.size());
    t.nodes[index].first_edge = first_edge;
    t.nodes[index].num_edges = static_cast<uint32_t>(groups.size());
    for (const auto& [g_lo, g_hi] : groups) {
      t.edge_bytes.push_back(static_cast<uint8_t>(entries[g_lo].bytes[depth]));
      t.edge_targets.push_back(0);
    }
    for (size_t g = 0; g < groups.size(); ++g) {
      const uint32_t target = build(groups[g].first, groups[g].second, depth + 1);
      t.edge_targets[first_edge + g] = target;
    }
    t.max_depth = std::max(t.max_depth, depth);
    return index;
  };
  build(0, entries.size(), 0);
  return t;
}

}  // namespace

std::unique_ptr<TokenVocabulary> TokenVocabulary::FromTokenBytes(
    std::vector<std::string> token_bytes) {
  auto vocabulary = std::unique_ptr<TokenVocabulary>(new TokenVocabulary());
  const auto vocab_size = static_cast<int32_t>(token_bytes.size());
  vocabulary->vocab_size_ = vocab_size;
  vocabulary->token_bytes_ = std::move(token_bytes);
  vocabulary->plain_text_mask_.assign(static_cast<size_t>(vocabulary->mask_words()), 0u);
  std::vector<Entry> entries;
  std::vector<Entry> others;
  std::vector<Entry> plain;
  for (int32_t id = 0; id < vocab_size; ++id) {
    const std::string& bytes = vocabulary->token_bytes_[id];
    if (bytes.empty()) continue;
    entries.push_back({bytes, id});
    if (IsPlainText(bytes)) {
      vocabulary->plain_text_mask_[id / 32] |= uint32_t{1} << (id % 32);
      plain.push_back({bytes, id});
    } else {
      others.push_back({bytes, id});
    }
  }
  const auto by_bytes = [](const Entry& a, const Entry& b) {
    return a.bytes != b.bytes ? a.bytes < b.bytes : a.id < b.id;
  };
  std::sort(entries.begin(), entries.end(), by_bytes);
  std::sort(others.begin(), others.end(), by_bytes);
  std::sort(plain.begin(), plain.end(), by_bytes);
  vocabulary->all_ = BuildTrie(entries);
  vocabulary->other_ = BuildTrie(others);
  vocabulary->plain_ = BuildTrie(plain);
  return vocabulary;
}

absl::StatusOr<std::unique_ptr<TokenConstraint>> TokenConstraint::Create(
    const StructuredOutput& spec, const TokenVocabulary& vocabulary,
    std::vector<int32_t> end_tokens) {
  TESSERA_ASSIGN_OR_RETURN(std::shared_ptr<const Grammar> grammar, Grammar::Compile(spec));
  std::erase_if(end_tokens, [&](int32_t t) { return t < 0 || t >= vocabulary.vocab_size(); });
  auto constraint = std::unique_ptr<TokenConstraint>(
      new TokenConstraint(std::move(grammar), vocabulary, std::move(end_tokens)));
  constraint->start_after_token_ = spec.start_after_token;
  return constraint;
}

TokenConstraint::TokenConstraint(std::shared_ptr<const Grammar> grammar,
                                 const TokenVocabulary& vocabulary, std::vector<int32_t> end_tokens)
    : matcher_(std::move(grammar)), vocabulary_(vocabulary), end_tokens_(std::move(end_tokens)) {
  states_.resize(vocabulary.trie().max_depth + 2);
}

void TokenConstraint::Walk(const TokenVocabulary::Trie& trie, uint32_t node, size_t depth,
                           absl::Span<uint32_t> mask, int32_t& allowed) {
  const TokenVocabulary::Trie::Node& n = trie.nodes[node];
  const GrammarMatcher::State& here = states_[depth];
  GrammarMatcher::State& next = states_[depth + 1];
  for (uint32_t e = n.first_edge; e < n.first_edge + n.num_edges; ++e) {
    matcher_.Step(here, trie.edge_bytes[e], next);
    if (next.ends.empty()) continue;
    const TokenVocabulary::Trie::Node& child = trie.nodes[trie.edge_targets[e]];
    for (uint32_t t = child.first_token; t < child.first_token + child.num_tokens; ++t) {
      const int32_t token = trie.node_tokens[t];
      mask[token / 32] |= uint32_t{1} << (token % 32);
      ++allowed;
    }
    if (child.num_edges > 0) Walk(trie, trie.edge_targets[e], depth + 1, mask, allowed);
  }
}

int32_t TokenConstraint::FillMask(absl::Span<uint32_t> mask) {
  if (waiting_for_start()) {
    // Free until the start token: every token of the vocabulary.
    std::fill(mask.begin(), mask.end(), 0u);
    const int32_t vocab =
        std::min<int32_t>(vocabulary_.vocab_size(), static_cast<int32_t>(mask.size()) * 32);
    for (int32_t t = 0; t < vocab; ++t) mask[t / 32] |= 1u << (t % 32);
    return vocab;
  }
  std::fill(mask.begin(), mask.end(), 0u);
  if (ended_) return 0;
  int32_t allowed = 0;
  states_[0] = matcher_.state();
  if (matcher_.InPlainString()) {
    // Plain text continues the string whatever it holds; walk only the other tokens.
    const std::vector<uint32_t>& plain = vocabulary_.plain_text_mask();
    std::copy(plain.begin(), plain.end(), mask.begin());
    for (const uint32_t word : plain) allowed += std::popcount(word);
    Walk(vocabulary_.other_than_plain_text(), 0, 0, mask, allowed);
  } else if (std::pair<const RegexDfa*, int32_t> key;
             matcher_.InPatternString(&key.first, &key.second)) {
    // Which plain-text tokens fit depends on the pattern's state alone: walk them once for it.
    auto it = pattern_masks_.find(key);
    if (it == pattern_masks_.end()) {
      if (pattern_masks_.size() >= kMaxCachedMasks) pattern_masks_.clear();
      std::vector<uint32_t> plain(mask.size(), 0u);
      int32_t count = 0;
      Walk(vocabulary_.plain_text(), 0, 0, absl::MakeSpan(plain), count);
      it = pattern_masks_.emplace(key, std::make_pair(std::move(plain), count)).first;
    }
    std::copy(it->second.first.begin(), it->second.first.end(), mask.begin());
    allowed += it->second.second;
    Walk(vocabulary_.other_than_plain_text(), 0, 0, mask, allowed);
  } else {
    Walk(vocabulary_.trie(), 0, 0, mask, allowed);
  }
  if (matcher_.IsAccepting()) {
    for (const int32_t token : end_tokens_) {
      uint32_t& word = mask[token / 32];
      const uint32_t bit = uint32_t{1} << (token % 32);
      if ((word & bit) == 0) ++allowed;
      word |= bit;
    }
  }
  return allowed;
}

absl::Status TokenConstraint::Accept(int32_t token) {
  if (waiting_for_start()) {
    if (token == start_after_token_) start_after_token_ = -1;  // the grammar holds from here
    return absl::OkStatus();
  }
  if (ended_) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", token, " after the end of the structured output"));
  }
  if (std::find(end_tokens_.begin(), end_tokens_.end(), token) != end_tokens_.end()) {
    if (!matcher_.IsAccepting()) {
      return absl::InvalidArgumentError(
          absl::StrCat("end token ", token, " before the structured output is complete"));
    }
    ended_ = true;
    return absl::OkStatus();
  }
  if (token < 0 || token >= vocabulary_.vocab_size() || vocabulary_.TokenBytes(token).empty() ||
      !matcher_.AdvanceBytes(vocabulary_.TokenBytes(token))) {
    return absl::InvalidArgumentError(
        absl::StrCat("token ", token, " is not allowed here by the structured output's grammar"));
  }
  return absl::OkStatus();
}

bool TokenConstraint::IsTerminated() const {
  if (waiting_for_start()) return false;
  return ended_ || (matcher_.IsAccepting() && !matcher_.CanContinue());
}

}  // namespace tessera::model
