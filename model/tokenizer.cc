// Tokenizer: the encode/decode pipeline, added-token matching and incremental decoding. Loading
// tokenizer.json is in tokenizer_load.cc.
#include "model/tokenizer.h"

#include <algorithm>
#include <deque>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/json_util.h"
#include "model/tokenizer_internal.h"

namespace tessera::model {
namespace internal {
namespace {

// The code point that ends text[0, end) (valid UTF-8, end > 0).
char32_t LastCodePoint(absl::string_view text, size_t end) {
  size_t begin = end - 1;
  while (begin > 0 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) --begin;
  return DecodeUtf8(text, begin);
}

// Where the run of white space that ends text[0, end) begins.
size_t WhiteSpaceRunStart(absl::string_view text, size_t end) {
  while (end > 0) {
    size_t begin = end - 1;
    while (begin > 0 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) --begin;
    size_t pos = begin;
    if (!IsRustWhiteSpace(DecodeUtf8(text, pos))) break;
    end = begin;
  }
  return end;
}

// Where the run of white space that starts at `begin` ends.
size_t WhiteSpaceRunEnd(absl::string_view text, size_t begin) {
  while (begin < text.size()) {
    size_t pos = begin;
    if (!IsRustWhiteSpace(DecodeUtf8(text, pos))) break;
    begin = pos;
  }
  return begin;
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<const AddedToken*> tokens)
    : tokens_(std::move(tokens)) {
  for (const AddedToken* token : tokens_) {
    if (token->content.empty()) continue;
    by_first_byte_[static_cast<unsigned char>(token->content[0])].push_back(token);
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken* a, const AddedToken* b) {
      return a->content.size() > b->content.size();
    });
  }
}

std::vector<AddedTokenMatcher::Piece> AddedTokenMatcher::Split(absl::string_view text) const {
  std::vector<Piece> pieces;
  size_t done = 0;  // text before this is in `pieces`
  size_t pos = 0;   // where the search for the next match starts
  while (pos < text.size()) {
    // Leftmost match, longest at that position (Aho-Corasick's LeftmostLongest).
    size_t start = text.size();
    const AddedToken* found = nullptr;
    for (size_t p = pos; p < text.size() && found == nullptr; ++p) {
      for (const AddedToken* token : by_first_byte_[static_cast<unsigned char>(text[p])]) {
        if (text.compare(p, token->content.size(), token->content) == 0) {
          start = p;
          found = token;
          break;
        }
      }
    }
    if (found == nullptr) break;
    size_t stop = start + found->content.size();
    pos = stop;
    if (found->single_word) {
      const bool word_before = start > 0 && IsRustWordChar(LastCodePoint(text, start));
      size_t after = stop;
      const bool word_after = stop < text.size() && IsRustWordChar(DecodeUtf8(text, after));
      if (word_before || word_after) continue;
    }
    if (found->lstrip) start = std::max(WhiteSpaceRunStart(text, start), done);
    if (found->rstrip) stop = WhiteSpaceRunEnd(text, stop);
    start = std::max(start, done);
    if (done < start) pieces.push_back(Piece{done, start, nullptr});
    pieces.push_back(Piece{start, stop, found});
    done = stop;
    pos = std::max(pos, stop);
  }
  if (done < text.size()) pieces.push_back(Piece{done, text.size(), nullptr});
  return pieces;
}

absl::Status ApplySplit(const PreTokenizerStep& step, absl::string_view text,
                        std::vector<absl::string_view>& out) {
  // (begin, end, is_delimiter) covering `text`, as `tokenizers`' find_matches.
  struct Span {
    size_t begin, end;
    bool match;
  };
  std::vector<Span> spans;
  size_t prev = 0;
  TESSERA_RETURN_IF_ERROR(step.regex->FindAll(text, [&](size_t begin, size_t end) {
    if (prev != begin) spans.push_back(Span{prev, begin, false});
    spans.push_back(Span{begin, end, true});
    prev = end;
  }));
  if (prev != text.size()) spans.push_back(Span{prev, text.size(), false});
  if (step.invert) {
    for (Span& span : spans) span.match = !span.match;
  }
  auto emit = [&](size_t begin, size_t end) {
    if (end > begin) out.push_back(text.substr(begin, end - begin));
  };
  switch (step.behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& span : spans) emit(span.begin, span.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& span : spans) {
        if (!span.match) emit(span.begin, span.end);
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
    case SplitBehavior::kContiguous: {
      // Previous: a delimiter joins the piece before it. Contiguous: runs of equal kind merge.
      std::vector<Span> merged;
      bool previous_match = false;
      for (const Span& span : spans) {
        const bool join = step.behavior == SplitBehavior::kContiguous
                              ? span.match == previous_match
                              : span.match && !previous_match;
        if (join && !merged.empty()) {
          merged.back().end = span.end;
        } else {
          merged.push_back(span);
        }
        previous_match = span.match;
      }
      for (const Span& span : merged) emit(span.begin, span.end);
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      std::vector<Span> merged;
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !merged.empty()) {
          merged.back().begin = it->begin;
        } else {
          merged.push_back(*it);
        }
        previous_match = it->match;
      }
      for (auto it = merged.rbegin(); it != merged.rend(); ++it) emit(it->begin, it->end);
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status TokenizerImpl::EncodePlain(absl::string_view text, std::vector<int32_t>& out) const {
  std::vector<absl::string_view> pieces{text};
  std::vector<absl::string_view> next;
  std::deque<std::string> prefixed;  // pieces that ByteLevel's add_prefix_space made
  for (const PreTokenizerStep& step : pre_tokenizers) {
    next.clear();
    for (absl::string_view piece : pieces) {
      if (step.kind == PreTokenizerStep::Kind::kByteLevel) {
        if (step.add_prefix_space && !absl::StartsWith(piece, " ")) {
          prefixed.push_back(absl::StrCat(" ", piece));
          piece = prefixed.back();
        }
        if (step.regex == nullptr) {
          next.push_back(piece);
          continue;
        }
      }
      TESSERA_RETURN_IF_ERROR(ApplySplit(step, piece, next));
    }
    pieces.swap(next);
  }
  for (absl::string_view piece : pieces) model->EncodeWord(piece, out);
  return absl::OkStatus();
}

absl::Status TokenizerImpl::EncodeNormalized(absl::string_view text,
                                             std::vector<int32_t>& out) const {
  std::string normalized;
  if (!normalizers.empty()) {
    normalized = std::string(text);
    for (const NormalizerStep& step : normalizers) {
      TESSERA_ASSIGN_OR_RETURN(normalized, Normalize(normalized, step.form));
    }
    text = normalized;
  }
  if (normalized_matcher == nullptr) return EncodePlain(text, out);
  for (const AddedTokenMatcher::Piece& piece : normalized_matcher->Split(text)) {
    if (piece.token != nullptr) {
      out.push_back(piece.token->id);
    } else {
      TESSERA_RETURN_IF_ERROR(EncodePlain(text.substr(piece.begin, piece.end - piece.begin), out));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> TokenizerImpl::Encode(absl::string_view text,
                                                           bool add_special_tokens) const {
  if (std::optional<size_t> bad = FindInvalidUtf8(text); bad.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 at byte ", *bad, " (of ", text.size(), ")"));
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special_tokens) out.insert(out.end(), post_prefix.begin(), post_prefix.end());
  if (raw_matcher == nullptr) {
    TESSERA_RETURN_IF_ERROR(EncodeNormalized(text, out));
  } else {
    for (const AddedTokenMatcher::Piece& piece : raw_matcher->Split(text)) {
      if (piece.token != nullptr) {
        out.push_back(piece.token->id);
      } else {
        TESSERA_RETURN_IF_ERROR(
            EncodeNormalized(text.substr(piece.begin, piece.end - piece.begin), out));
      }
    }
  }
  if (add_special_tokens) out.insert(out.end(), post_suffix.begin(), post_suffix.end());
  return out;
}

absl::StatusOr<std::string> TokenizerImpl::Decode(absl::Span<const int32_t> token_ids,
                                                  bool skip_special) const {
  std::string joined;
  bool first = true;
  for (int32_t id : token_ids) {
    if (id < 0 || static_cast<size_t>(id) >= ids.size() || !ids[id].present) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", id, " is not in the vocabulary (", ids.size(), " ids)"));
    }
    const IdInfo& info = ids[id];
    if (skip_special && info.special) continue;
    if (byte_level_decoder) {
      joined += info.bytes;
    } else {
      if (!first) joined += ' ';
      joined += info.token;
    }
    first = false;
  }
  if (!byte_level_decoder) return joined;
  std::string text;
  text.reserve(joined.size());
  AppendUtf8Lossy(joined, /*hold_incomplete_tail=*/false, text);
  return text;
}

}  // namespace internal

// ---- Tokenizer ---------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<internal::TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, internal::ReadFileToString(path));
  return FromJson(text, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromDirectory(const std::string& dir) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer, FromFile(dir + "/tokenizer.json"));
  const std::string config_path = dir + "/tokenizer_config.json";
  absl::StatusOr<std::string> config_text = internal::ReadFileToString(config_path);
  if (absl::IsNotFound(config_text.status())) return tokenizer;
  if (!config_text.ok()) return config_text.status();
  TESSERA_ASSIGN_OR_RETURN(TokenizerConfig config, ParseTokenizerConfig(*config_text, config_path));
  absl::Status status = tokenizer->SetConfig(std::move(config));
  if (!status.ok())
    return absl::Status(status.code(), absl::StrCat(config_path, ": ", status.message()));
  return tokenizer;
}

absl::Status Tokenizer::SetConfig(TokenizerConfig config) {
  std::optional<int32_t> bos, eos;
  if (config.bos_token.has_value()) {
    bos = TokenToId(*config.bos_token);
    if (!bos.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"bos_token\" \"", *config.bos_token, "\" is not in the vocabulary"));
    }
  }
  if (config.eos_token.has_value()) {
    eos = TokenToId(*config.eos_token);
    if (!eos.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"eos_token\" \"", *config.eos_token, "\" is not in the vocabulary"));
    }
  }
  impl_->config = std::move(config);
  impl_->bos_id = bos;
  impl_->eos_id = eos;
  return absl::OkStatus();
}

const TokenizerConfig& Tokenizer::config() const { return impl_->config; }

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(absl::string_view text,
                                                       bool add_special_tokens) const {
  return impl_->Encode(text, add_special_tokens);
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  return impl_->Decode(ids, skip_special_tokens);
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->ids.size()); }

std::optional<int32_t> Tokenizer::TokenToId(absl::string_view token) const {
  auto it = impl_->token_to_id.find(token);
  if (it == impl_->token_to_id.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->ids[id].present) return std::nullopt;
  return impl_->ids[id].token;
}

absl::StatusOr<std::vector<std::string>> Tokenizer::IdsToTokens(
    absl::Span<const int32_t> ids) const {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    std::optional<std::string> token = IdToToken(ids[i]);
    if (!token.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", ids[i], " (at ", i, ") is not in the vocabulary of ", vocab_size(), " ids"));
    }
    out.push_back(std::move(*token));
  }
  return out;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && impl_->ids[id].special;
}

std::optional<int32_t> Tokenizer::bos_token_id() const {
  return impl_->bos_id.has_value() ? impl_->bos_id : impl_->post_bos_id;
}

std::optional<int32_t> Tokenizer::eos_token_id() const { return impl_->eos_id; }

const std::string* Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->ids[id].present) return nullptr;
  return impl_->byte_level_decoder ? &impl_->ids[id].bytes : &impl_->ids[id].token;
}

bool Tokenizer::DecodesByteLevel() const { return impl_->byte_level_decoder; }

// ---- IncrementalDecoder ------------------------------------------------------------------------

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

std::string IncrementalDecoder::Append(int32_t id) {
  const std::string* bytes = tokenizer_.TokenBytes(id);
  if (bytes == nullptr) return "";
  if (skip_special_tokens_ && tokenizer_.IsSpecial(id)) return "";
  std::string out;
  if (!tokenizer_.DecodesByteLevel()) {  // tokens joined with spaces
    if (emitted_any_) out += ' ';
    out += *bytes;
    emitted_any_ = true;
    return out;
  }
  pending_ += *bytes;
  const size_t used = internal::AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/true, out);
  pending_.erase(0, used);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out;
  internal::AppendUtf8Lossy(pending_, /*hold_incomplete_tail=*/false, out);
  pending_.clear();
  return out;
}

}  // namespace tessera::model
