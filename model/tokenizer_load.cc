// Loading tokenizer.json and tokenizer_config.json into a Tokenizer. Every key read is validated;
// errors name the source and the key path ("model.merges"[3]).
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/json_util.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"
#include "nlohmann/json.hpp"

namespace tessera::model {
namespace {

using json = nlohmann::json;
using internal::AddedToken;
using internal::DescribeJson;
using internal::NormalizationForm;
using internal::NormalizerStep;
using internal::PreTokenizerStep;
using internal::SplitBehavior;
using internal::TokenizerImpl;

// Ids beyond this are refused: real vocabularies stay far below, and the id table is dense.
constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

bool IsTokenId(const json& value) {
  return value.is_number_integer() && value.get<int64_t>() >= 0 &&
         value.get<int64_t>() <= kMaxTokenId;
}

// A JSON value that is absent or null.
const json* Find(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

class Loader {
 public:
  explicit Loader(absl::string_view source) : source_(source) {}

  absl::StatusOr<std::unique_ptr<TokenizerImpl>> Load(const json& root);

 private:
  absl::Status Invalid(absl::string_view path, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": \"", path, "\" ", what));
  }
  absl::Status Unsupported(absl::string_view path, absl::string_view what) const {
    return absl::UnimplementedError(absl::StrCat(source_, ": \"", path, "\" ", what));
  }

  absl::StatusOr<bool> Bool(const json& object, const char* key, absl::string_view path,
                            bool fallback) const;
  absl::StatusOr<std::string> Type(const json& object, absl::string_view path) const;
  absl::StatusOr<const json*> Array(const json& object, const char* key,
                                    absl::string_view path) const;
  absl::StatusOr<int32_t> Id(const json& value, absl::string_view path) const;

  absl::Status ParseNormalizer(const json& value, const std::string& path);
  absl::Status ParsePreTokenizer(const json& value, const std::string& path);
  absl::Status ParseDecoder(const json& value, const std::string& path);
  absl::Status ParseModel(const json& value);
  absl::Status ParseAddedTokens(const json& value);
  absl::Status ParsePostProcessor(const json& value, const std::string& path);
  absl::Status ParseTemplate(const json& value, const std::string& path);
  absl::Status BuildIdTable();

  std::string source_;
  std::unique_ptr<TokenizerImpl> impl_ = std::make_unique<TokenizerImpl>();
  absl::flat_hash_map<std::string, int32_t> vocab_;  // model vocabulary, by token string
};

absl::StatusOr<bool> Loader::Bool(const json& object, const char* key, absl::string_view path,
                                  bool fallback) const {
  const json* value = Find(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    return Invalid(absl::StrCat(path, ".", key),
                   absl::StrCat("must be a boolean, got ", DescribeJson(*value)));
  }
  return value->get<bool>();
}

absl::StatusOr<std::string> Loader::Type(const json& object, absl::string_view path) const {
  if (!object.is_object()) {
    return Invalid(path, absl::StrCat("must be an object or null, got ", DescribeJson(object)));
  }
  const json* type = Find(object, "type");
  if (type == nullptr || !type->is_string()) {
    return Invalid(absl::StrCat(path, ".type"),
                   absl::StrCat("must be a string, got ", type ? DescribeJson(*type) : "nothing"));
  }
  return type->get<std::string>();
}

absl::StatusOr<const json*> Loader::Array(const json& object, const char* key,
                                          absl::string_view path) const {
  const json* value = Find(object, key);
  if (value == nullptr || !value->is_array()) {
    return Invalid(
        absl::StrCat(path, ".", key),
        absl::StrCat("must be an array, got ", value ? DescribeJson(*value) : "nothing"));
  }
  return value;
}

absl::StatusOr<int32_t> Loader::Id(const json& value, absl::string_view path) const {
  if (!IsTokenId(value)) {
    return Invalid(path, absl::StrCat("must be a token id (an integer in [0, ", kMaxTokenId,
                                      "]), got ", DescribeJson(value)));
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

absl::Status Loader::ParseNormalizer(const json& value, const std::string& path) {
  if (value.is_null()) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(std::string type, Type(value, path));
  if (type == "Sequence") {
    TESSERA_ASSIGN_OR_RETURN(const json* steps, Array(value, "normalizers", path));
    for (size_t i = 0; i < steps->size(); ++i) {
      TESSERA_RETURN_IF_ERROR(
          ParseNormalizer((*steps)[i], absl::StrCat(path, ".normalizers[", i, "]")));
    }
    return absl::OkStatus();
  }
  static constexpr std::pair<absl::string_view, NormalizationForm> kForms[] = {
      {"NFC", NormalizationForm::kNfc},
      {"NFD", NormalizationForm::kNfd},
      {"NFKC", NormalizationForm::kNfkc},
      {"NFKD", NormalizationForm::kNfkd},
  };
  for (const auto& [name, form] : kForms) {
    if (type == name) {
      impl_->normalizers.push_back(NormalizerStep{form});
      return absl::OkStatus();
    }
  }
  return Unsupported(absl::StrCat(path, ".type"),
                     absl::StrCat("\"", type,
                                  "\" is not supported (supported normalizers: NFC, NFD, NFKC, "
                                  "NFKD, Sequence)"));
}

absl::Status Loader::ParsePreTokenizer(const json& value, const std::string& path) {
  if (value.is_null()) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(std::string type, Type(value, path));
  PreTokenizerStep step;
  if (type == "Sequence") {
    TESSERA_ASSIGN_OR_RETURN(const json* steps, Array(value, "pretokenizers", path));
    for (size_t i = 0; i < steps->size(); ++i) {
      TESSERA_RETURN_IF_ERROR(
          ParsePreTokenizer((*steps)[i], absl::StrCat(path, ".pretokenizers[", i, "]")));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::kByteLevel;
    TESSERA_ASSIGN_OR_RETURN(step.add_prefix_space, Bool(value, "add_prefix_space", path, true));
    TESSERA_ASSIGN_OR_RETURN(bool use_regex, Bool(value, "use_regex", path, true));
    if (use_regex) {
      TESSERA_ASSIGN_OR_RETURN(step.regex, internal::Regex::Create(kGpt2Pattern, false));
    }
  } else if (type == "Split") {
    const json* pattern = Find(value, "pattern");
    const json* regex = pattern && pattern->is_object() ? Find(*pattern, "Regex") : nullptr;
    const json* literal = pattern && pattern->is_object() ? Find(*pattern, "String") : nullptr;
    const json* text = regex ? regex : literal;
    if (text == nullptr || !text->is_string()) {
      return Invalid(absl::StrCat(path, ".pattern"),
                     absl::StrCat("must be {\"Regex\": string} or {\"String\": string}, got ",
                                  pattern ? DescribeJson(*pattern) : "nothing"));
    }
    absl::StatusOr<std::unique_ptr<internal::Regex>> compiled =
        internal::Regex::Create(text->get<std::string>(), literal != nullptr && regex == nullptr);
    if (!compiled.ok()) return Invalid(absl::StrCat(path, ".pattern"), compiled.status().message());
    step.regex = *std::move(compiled);
    static constexpr std::pair<absl::string_view, SplitBehavior> kBehaviors[] = {
        {"Removed", SplitBehavior::kRemoved},
        {"Isolated", SplitBehavior::kIsolated},
        {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
        {"MergedWithNext", SplitBehavior::kMergedWithNext},
        {"Contiguous", SplitBehavior::kContiguous},
    };
    const json* behavior = Find(value, "behavior");
    bool known = false;
    for (const auto& [name, kind] : kBehaviors) {
      if (behavior != nullptr && behavior->is_string() && behavior->get<std::string>() == name) {
        step.behavior = kind;
        known = true;
      }
    }
    if (!known) {
      return Invalid(absl::StrCat(path, ".behavior"),
                     absl::StrCat("must be one of Removed, Isolated, MergedWithPrevious, "
                                  "MergedWithNext, Contiguous; got ",
                                  behavior ? DescribeJson(*behavior) : "nothing"));
    }
    TESSERA_ASSIGN_OR_RETURN(step.invert, Bool(value, "invert", path, false));
  } else if (type == "Digits") {
    TESSERA_ASSIGN_OR_RETURN(bool individual, Bool(value, "individual_digits", path, false));
    // `tokenizers` uses char::is_numeric: the N categories.
    TESSERA_ASSIGN_OR_RETURN(step.regex,
                             internal::Regex::Create(individual ? "\\p{N}" : "\\p{N}+", false));
    step.kind = PreTokenizerStep::Kind::kDigits;
  } else {
    return Unsupported(absl::StrCat(path, ".type"),
                       absl::StrCat("\"", type,
                                    "\" is not supported (supported pre-tokenizers: ByteLevel, "
                                    "Split, Digits, Sequence)"));
  }
  if (!impl_->pre_tokenizers.empty() &&
      impl_->pre_tokenizers.back().kind == PreTokenizerStep::Kind::kByteLevel) {
    return Unsupported(path, "follows a ByteLevel pre-tokenizer: ByteLevel must come last");
  }
  impl_->pre_tokenizers.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status Loader::ParseDecoder(const json& value, const std::string& path) {
  if (value.is_null()) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(std::string type, Type(value, path));
  if (type == "ByteLevel") {
    impl_->byte_level_decoder = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    TESSERA_ASSIGN_OR_RETURN(const json* steps, Array(value, "decoders", path));
    for (size_t i = 0; i < steps->size(); ++i) {
      TESSERA_RETURN_IF_ERROR(ParseDecoder((*steps)[i], absl::StrCat(path, ".decoders[", i, "]")));
    }
    return absl::OkStatus();
  }
  return Unsupported(
      absl::StrCat(path, ".type"),
      absl::StrCat("\"", type, "\" is not supported (supported decoders: ByteLevel, or none)"));
}

absl::Status Loader::ParseModel(const json& model) {
  if (!model.is_object()) {
    return Invalid("model", absl::StrCat("must be an object, got ", DescribeJson(model)));
  }
  // Files from old versions of `tokenizers` have no "type"; theirs is BPE when there are merges.
  const json* type = Find(model, "type");
  if (type == nullptr && Find(model, "merges") == nullptr) {
    return Invalid("model.type", "is missing");
  }
  if (type != nullptr && (!type->is_string() || type->get<std::string>() != "BPE")) {
    if (!type->is_string()) {
      return Invalid("model.type", absl::StrCat("must be a string, got ", DescribeJson(*type)));
    }
    return Unsupported("model.type",
                       absl::StrCat("\"", type->get<std::string>(),
                                    "\" is not supported: only \"BPE\" (byte-level BPE as GPT-2, "
                                    "Llama 3 and Qwen2 use it)"));
  }
  if (const json* dropout = Find(model, "dropout"); dropout != nullptr) {
    if (!dropout->is_number()) {
      return Invalid("model.dropout",
                     absl::StrCat("must be a number or null, got ", DescribeJson(*dropout)));
    }
    if (dropout->get<double>() > 0) {
      return Unsupported("model.dropout", "BPE dropout (random merges) is not supported");
    }
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* affix = Find(model, key);
    if (affix != nullptr && !(affix->is_string() && affix->get<std::string>().empty())) {
      return Unsupported(absl::StrCat("model.", key),
                         absl::StrCat("is not supported (got ", DescribeJson(*affix), ")"));
    }
  }
  TESSERA_ASSIGN_OR_RETURN(bool byte_fallback, Bool(model, "byte_fallback", "model", false));
  if (byte_fallback) {
    return Unsupported("model.byte_fallback",
                       "true (SentencePiece-style BPE as in Llama 2 and Mistral) is not supported");
  }
  internal::BpeModel::Options options;
  TESSERA_ASSIGN_OR_RETURN(options.ignore_merges, Bool(model, "ignore_merges", "model", false));
  TESSERA_ASSIGN_OR_RETURN(options.fuse_unk, Bool(model, "fuse_unk", "model", false));

  const json* vocab = Find(model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return Invalid("model.vocab", absl::StrCat("must be an object of token: id, got ",
                                               vocab ? DescribeJson(*vocab) : "nothing"));
  }
  vocab_.reserve(vocab->size());
  for (const auto& [token, id_value] : vocab->items()) {
    if (!IsTokenId(id_value)) {
      return Invalid("model.vocab", absl::StrCat("[\"", token,
                                                 "\"] must be a token id (an integer "
                                                 "in [0, ",
                                                 kMaxTokenId, "]), got ", DescribeJson(id_value)));
    }
    vocab_[token] = static_cast<int32_t>(id_value.get<int64_t>());
  }
  if (const json* unk = Find(model, "unk_token"); unk != nullptr) {
    auto it = unk->is_string() ? vocab_.find(unk->get<std::string>()) : vocab_.end();
    if (it == vocab_.end()) {
      return Invalid("model.unk_token",
                     absl::StrCat("must be a token of the vocabulary, got ", DescribeJson(*unk)));
    }
    options.unk_id = it->second;
  }

  std::vector<std::array<int32_t, 3>> merges;
  if (const json* list = Find(model, "merges"); list != nullptr) {
    if (!list->is_array()) {
      return Invalid("model.merges", absl::StrCat("must be an array, got ", DescribeJson(*list)));
    }
    merges.reserve(list->size());
    for (size_t i = 0; i < list->size(); ++i) {
      const json& merge = (*list)[i];
      std::string left, right;
      if (merge.is_string()) {  // "left right", the older format
        const std::string& text = merge.get_ref<const std::string&>();
        const size_t space = text.find(' ');
        if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
          return Invalid("model.merges", absl::StrCat("[", i, "] must be \"left right\", got ",
                                                      DescribeJson(merge)));
        }
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {  // ["left", "right"], the newer format
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        return Invalid(
            "model.merges",
            absl::StrCat("[", i, "] must be \"left right\" or [\"left\", \"right\"], got ",
                         DescribeJson(merge)));
      }
      std::array<int32_t, 3> ids;
      const std::string parts[3] = {left, right, left + right};
      for (int k = 0; k < 3; ++k) {
        auto it = vocab_.find(parts[k]);
        if (it == vocab_.end()) {
          return Invalid("model.merges",
                         absl::StrCat("[", i, "]: ", k == 2 ? "the merged " : "", "token \"",
                                      parts[k], "\" is not in the vocabulary"));
        }
        ids[k] = it->second;
      }
      merges.push_back(ids);
    }
  }

  // The model works on bytes when the pre-tokenizer ends with ByteLevel: key its vocabulary by
  // the bytes each token stands for (tokens outside the byte-level alphabet cannot be produced).
  options.byte_level = !impl_->pre_tokenizers.empty() &&
                       impl_->pre_tokenizers.back().kind == PreTokenizerStep::Kind::kByteLevel;
  absl::flat_hash_map<std::string, int32_t> units;
  if (options.byte_level) {
    units.reserve(vocab_.size());
    for (const auto& [token, id] : vocab_) {
      if (std::optional<std::string> bytes = internal::ByteLevelTokenToBytes(token)) {
        units.emplace(*std::move(bytes), id);
      }
    }
  } else {
    units = vocab_;
  }
  impl_->model = std::make_unique<internal::BpeModel>(std::move(units), merges, options);
  return absl::OkStatus();
}

absl::Status Loader::ParseAddedTokens(const json& value) {
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_array()) {
    return Invalid("added_tokens", absl::StrCat("must be an array, got ", DescribeJson(value)));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const json& entry = value[i];
    const std::string path = absl::StrCat("added_tokens[", i, "]");
    if (!entry.is_object()) {
      return Invalid(path, absl::StrCat("must be an object, got ", DescribeJson(entry)));
    }
    AddedToken token;
    const json* content = Find(entry, "content");
    if (content == nullptr || !content->is_string() || content->get<std::string>().empty()) {
      return Invalid(absl::StrCat(path, ".content"),
                     absl::StrCat("must be a non-empty string, got ",
                                  content ? DescribeJson(*content) : "nothing"));
    }
    token.content = content->get<std::string>();
    const json* id = Find(entry, "id");
    if (id == nullptr) return Invalid(absl::StrCat(path, ".id"), "is missing");
    TESSERA_ASSIGN_OR_RETURN(token.id, Id(*id, absl::StrCat(path, ".id")));
    TESSERA_ASSIGN_OR_RETURN(token.special, Bool(entry, "special", path, false));
    TESSERA_ASSIGN_OR_RETURN(token.single_word, Bool(entry, "single_word", path, false));
    TESSERA_ASSIGN_OR_RETURN(token.lstrip, Bool(entry, "lstrip", path, false));
    TESSERA_ASSIGN_OR_RETURN(token.rstrip, Bool(entry, "rstrip", path, false));
    TESSERA_ASSIGN_OR_RETURN(token.normalized, Bool(entry, "normalized", path, !token.special));
    impl_->added_tokens.push_back(std::move(token));
  }
  // Matched on the raw text (normalized: false) or on normalized text, with normalized content.
  std::vector<const AddedToken*> raw;
  for (const AddedToken& token : impl_->added_tokens) {
    if (!token.normalized) {
      raw.push_back(&token);
      continue;
    }
    AddedToken copy = token;
    for (const NormalizerStep& step : impl_->normalizers) {
      TESSERA_ASSIGN_OR_RETURN(copy.content, internal::Normalize(copy.content, step.form));
    }
    impl_->normalized_added_tokens.push_back(std::move(copy));
  }
  if (!raw.empty()) impl_->raw_matcher = std::make_unique<internal::AddedTokenMatcher>(raw);
  if (!impl_->normalized_added_tokens.empty()) {
    std::vector<const AddedToken*> normalized;
    for (const AddedToken& token : impl_->normalized_added_tokens) normalized.push_back(&token);
    impl_->normalized_matcher = std::make_unique<internal::AddedTokenMatcher>(normalized);
  }
  return absl::OkStatus();
}

// TemplateProcessing's "single" template: SpecialToken pieces around one Sequence "A".
absl::Status Loader::ParseTemplate(const json& value, const std::string& path) {
  TESSERA_ASSIGN_OR_RETURN(const json* single, Array(value, "single", path));
  const json* specials = Find(value, "special_tokens");
  std::vector<int32_t> prefix, suffix;
  bool seen_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const json& piece = (*single)[i];
    const std::string piece_path = absl::StrCat(path, ".single[", i, "]");
    const json* sequence = piece.is_object() ? Find(piece, "Sequence") : nullptr;
    const json* special = piece.is_object() ? Find(piece, "SpecialToken") : nullptr;
    if (sequence != nullptr) {
      const json* id = sequence->is_object() ? Find(*sequence, "id") : nullptr;
      if (id == nullptr || *id != "A" || seen_sequence) {
        return Invalid(piece_path,
                       "must hold the sequence once, as {\"Sequence\": {\"id\": \"A\"}}");
      }
      seen_sequence = true;
      continue;
    }
    const json* name = special && special->is_object() ? Find(*special, "id") : nullptr;
    if (name == nullptr || !name->is_string()) {
      return Invalid(piece_path, absl::StrCat("must be a Sequence or a SpecialToken, got ",
                                              DescribeJson(piece)));
    }
    const json* entry = specials && specials->is_object()
                            ? Find(*specials, name->get<std::string>().c_str())
                            : nullptr;
    const json* ids = entry && entry->is_object() ? Find(*entry, "ids") : nullptr;
    if (ids == nullptr || !ids->is_array()) {
      return Invalid(absl::StrCat(path, ".special_tokens"),
                     absl::StrCat("has no \"ids\" for \"", name->get<std::string>(), "\""));
    }
    for (const json& id_value : *ids) {
      TESSERA_ASSIGN_OR_RETURN(int32_t id, Id(id_value, absl::StrCat(path, ".special_tokens")));
      (seen_sequence ? suffix : prefix).push_back(id);
    }
  }
  if (!seen_sequence) return Invalid(absl::StrCat(path, ".single"), "has no Sequence \"A\"");
  impl_->post_prefix.insert(impl_->post_prefix.begin(), prefix.begin(), prefix.end());
  impl_->post_suffix.insert(impl_->post_suffix.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

absl::Status Loader::ParsePostProcessor(const json& value, const std::string& path) {
  if (value.is_null()) return absl::OkStatus();
  TESSERA_ASSIGN_OR_RETURN(std::string type, Type(value, path));
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only
  if (type == "TemplateProcessing") return ParseTemplate(value, path);
  if (type == "Sequence") {
    TESSERA_ASSIGN_OR_RETURN(const json* steps, Array(value, "processors", path));
    for (size_t i = 0; i < steps->size(); ++i) {
      TESSERA_RETURN_IF_ERROR(
          ParsePostProcessor((*steps)[i], absl::StrCat(path, ".processors[", i, "]")));
    }
    return absl::OkStatus();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {  // cls A sep
    int32_t ids[2];
    const char* keys[2] = {"cls", "sep"};
    for (int k = 0; k < 2; ++k) {
      const json* pair = Find(value, keys[k]);
      if (pair == nullptr || !pair->is_array() || pair->size() != 2) {
        return Invalid(
            absl::StrCat(path, ".", keys[k]),
            absl::StrCat("must be [token, id], got ", pair ? DescribeJson(*pair) : "nothing"));
      }
      TESSERA_ASSIGN_OR_RETURN(ids[k], Id((*pair)[1], absl::StrCat(path, ".", keys[k])));
    }
    impl_->post_prefix.insert(impl_->post_prefix.begin(), ids[0]);
    impl_->post_suffix.push_back(ids[1]);
    return absl::OkStatus();
  }
  return Unsupported(absl::StrCat(path, ".type"),
                     absl::StrCat("\"", type,
                                  "\" is not supported (supported post-processors: "
                                  "TemplateProcessing, ByteLevel, RobertaProcessing, "
                                  "BertProcessing, Sequence)"));
}

absl::Status Loader::BuildIdTable() {
  int32_t max_id = -1;
  for (const auto& [token, id] : vocab_) max_id = std::max(max_id, id);
  for (const AddedToken& token : impl_->added_tokens) max_id = std::max(max_id, token.id);
  // The id table is dense: refuse a few tokens with huge ids (gaps, as between a learned
  // vocabulary and top special tokens, stay allowed up to a million).
  const int64_t count = static_cast<int64_t>(vocab_.size() + impl_->added_tokens.size());
  if (max_id >= 2 * count + (int64_t{1} << 20)) {
    return Invalid("model.vocab",
                   absl::StrCat("has ids up to ", max_id, " for only ", count, " tokens"));
  }
  impl_->ids.resize(static_cast<size_t>(max_id) + 1);
  impl_->token_to_id = vocab_;
  for (const auto& [token, id] : vocab_) {
    impl_->ids[id].token = token;
    impl_->ids[id].present = true;
  }
  // Added tokens win over the model vocabulary, as in `tokenizers`.
  for (const AddedToken& token : impl_->added_tokens) {
    TokenizerImpl::IdInfo& info = impl_->ids[token.id];
    info.token = token.content;
    info.present = true;
    info.special = token.special;
    impl_->token_to_id[token.content] = token.id;
  }
  for (TokenizerImpl::IdInfo& info : impl_->ids) {
    if (!info.present) continue;
    std::optional<std::string> bytes;
    if (impl_->byte_level_decoder) bytes = internal::ByteLevelTokenToBytes(info.token);
    info.bytes = bytes.has_value() ? *std::move(bytes) : info.token;
  }
  for (const std::vector<int32_t>* ids : {&impl_->post_prefix, &impl_->post_suffix}) {
    for (int32_t id : *ids) {
      if (id > max_id || !impl_->ids[id].present) {
        return Invalid("post_processor",
                       absl::StrCat("adds token id ", id, ", which is not in the vocabulary"));
      }
    }
  }
  if (impl_->post_prefix.size() == 1) impl_->post_bos_id = impl_->post_prefix[0];
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TokenizerImpl>> Loader::Load(const json& root) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": must be a JSON object, got ", DescribeJson(root)));
  }
  auto get = [&root](const char* key) -> const json& {
    static const json kNull;
    const json* value = Find(root, key);
    return value ? *value : kNull;
  };
  const json* model = Find(root, "model");
  if (model == nullptr) return Invalid("model", "is missing");
  TESSERA_RETURN_IF_ERROR(ParseNormalizer(get("normalizer"), "normalizer"));
  TESSERA_RETURN_IF_ERROR(ParsePreTokenizer(get("pre_tokenizer"), "pre_tokenizer"));
  TESSERA_RETURN_IF_ERROR(ParseDecoder(get("decoder"), "decoder"));
  TESSERA_RETURN_IF_ERROR(ParseModel(*model));
  TESSERA_RETURN_IF_ERROR(ParseAddedTokens(get("added_tokens")));
  TESSERA_RETURN_IF_ERROR(ParsePostProcessor(get("post_processor"), "post_processor"));
  TESSERA_RETURN_IF_ERROR(BuildIdTable());
  if (impl_->ids.empty()) return Invalid("model.vocab", "is empty");
  return std::move(impl_);
}

// A token written as a string or as an AddedToken object.
absl::StatusOr<std::optional<std::string>> ConfigToken(const json& root, const char* key,
                                                       absl::string_view source) {
  const json* value = Find(root, key);
  if (value == nullptr) return std::optional<std::string>();
  if (value->is_string()) return std::optional<std::string>(value->get<std::string>());
  const json* content = value->is_object() ? Find(*value, "content") : nullptr;
  if (content != nullptr && content->is_string()) {
    return std::optional<std::string>(content->get<std::string>());
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": \"", key, "\" must be a string or an object with \"content\", got ",
                   DescribeJson(*value)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(absl::string_view json_text,
                                                               absl::string_view source) {
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(json_text, source));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<TokenizerImpl> impl, Loader(source).Load(root));
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
}

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(absl::string_view json_text,
                                                     absl::string_view source) {
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(json_text, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": must be a JSON object, got ", DescribeJson(root)));
  }
  TokenizerConfig config;
  TESSERA_ASSIGN_OR_RETURN(config.bos_token, ConfigToken(root, "bos_token", source));
  TESSERA_ASSIGN_OR_RETURN(config.eos_token, ConfigToken(root, "eos_token", source));
  for (auto [key, field] : {std::pair{"add_bos_token", &config.add_bos_token},
                            std::pair{"add_eos_token", &config.add_eos_token}}) {
    const json* value = Find(root, key);
    if (value == nullptr) continue;
    if (!value->is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": \"", key, "\" must be a boolean, got ", DescribeJson(*value)));
    }
    *field = value->get<bool>();
  }
  if (const json* chat = Find(root, "chat_template"); chat != nullptr) {
    if (chat->is_string()) {
      config.chat_template = chat->get<std::string>();
    } else if (chat->is_array()) {  // [{"name": ..., "template": ...}]: take "default"
      for (const json& entry : *chat) {
        const json* name = entry.is_object() ? Find(entry, "name") : nullptr;
        const json* text = entry.is_object() ? Find(entry, "template") : nullptr;
        if (name == nullptr || text == nullptr || !name->is_string() || !text->is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(source,
                           ": \"chat_template\" entries must be {\"name\": string, "
                           "\"template\": string}, got ",
                           DescribeJson(entry)));
        }
        if (name->get<std::string>() == "default") config.chat_template = text->get<std::string>();
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(source,
                       ": \"chat_template\" must be a string or a list of named templates, "
                       "got ",
                       DescribeJson(*chat)));
    }
  }
  return config;
}

}  // namespace tessera::model
