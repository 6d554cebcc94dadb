#include "model/config.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "model/json_util.h"
#include "nlohmann/json.hpp"

namespace tessera::model {
namespace {

using json = nlohmann::json;
using internal::DescribeJson;

// Upper bound for every size in a config: far above any real model, low enough that products of
// two sizes (vocab * hidden, heads * head_dim) cannot overflow int64.
constexpr int64_t kMaxSize = int64_t{1} << 30;

struct ArchitectureInfo {
  Architecture architecture;
  absl::string_view class_name;  // architectures[0]
  absl::string_view model_type;
};

constexpr ArchitectureInfo kArchitectures[] = {
    {Architecture::kLlama, "LlamaForCausalLM", "llama"},
    {Architecture::kMistral, "MistralForCausalLM", "mistral"},
    {Architecture::kQwen2, "Qwen2ForCausalLM", "qwen2"},
    {Architecture::kQwen3, "Qwen3ForCausalLM", "qwen3"},
};

const ArchitectureInfo& InfoFor(Architecture architecture) {
  for (const ArchitectureInfo& info : kArchitectures) {
    if (info.architecture == architecture) return info;
  }
  return kArchitectures[0];
}

std::string SupportedClassNames() {
  std::vector<absl::string_view> names;
  for (const ArchitectureInfo& info : kArchitectures) names.push_back(info.class_name);
  return absl::StrJoin(names, ", ");
}

std::string SupportedModelTypes() {
  std::vector<absl::string_view> names;
  for (const ArchitectureInfo& info : kArchitectures) names.push_back(info.model_type);
  return absl::StrJoin(names, ", ");
}

// Reads typed values from one JSON object. Errors are kInvalidArgument naming the source, the
// dotted key path and what is wrong. A key that is absent or null reads as std::nullopt.
class ObjectReader {
 public:
  ObjectReader(const json& object, absl::string_view source, std::string prefix)
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  // The value at `key` (possibly null), or nullptr when the key is absent.
  const json* Find(absl::string_view key) const {
    const auto it = object_.find(std::string(key));
    return it == object_.end() ? nullptr : &*it;
  }
  bool IsSet(absl::string_view key) const {
    const json* value = Find(key);
    return value != nullptr && !value->is_null();
  }
  std::string Path(absl::string_view key) const {
    return prefix_.empty() ? std::string(key) : absl::StrCat(prefix_, ".", key);
  }
  absl::string_view source() const { return source_; }

  absl::Status TypeError(absl::string_view key, const json& value,
                         absl::string_view expected) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": \"", Path(key), "\" must be ",
                                                   expected, ", got ", DescribeJson(value)));
  }
  // "SOURCE: "KEY" <what>".
  absl::Status Invalid(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": \"", Path(key), "\" ", what));
  }

  absl::StatusOr<std::optional<int64_t>> Int(absl::string_view key) const {
    const json* value = Find(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    if (value->is_number_unsigned()) {
      const uint64_t u = value->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(key, absl::StrCat("is out of range: ", u));
      }
      return static_cast<int64_t>(u);
    }
    if (value->is_number_integer()) return value->get<int64_t>();
    return TypeError(key, *value, "an integer");
  }

  absl::StatusOr<std::optional<double>> Number(absl::string_view key) const {
    const json* value = Find(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    if (!value->is_number()) return TypeError(key, *value, "a number");
    const double number = value->get<double>();
    if (!std::isfinite(number)) return TypeError(key, *value, "a finite number");
    return number;
  }

  absl::StatusOr<std::optional<bool>> Bool(absl::string_view key) const {
    const json* value = Find(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    if (!value->is_boolean()) return TypeError(key, *value, "a boolean");
    return value->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> String(absl::string_view key) const {
    const json* value = Find(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    if (!value->is_string()) return TypeError(key, *value, "a string");
    return value->get<std::string>();
  }

  // A nested object, or nullopt when absent or null.
  absl::StatusOr<std::optional<ObjectReader>> Object(absl::string_view key) const {
    const json* value = Find(key);
    if (value == nullptr || value->is_null()) return std::nullopt;
    if (!value->is_object()) return TypeError(key, *value, "an object");
    return ObjectReader(*value, source_, Path(key));
  }

  // An integer in [1, kMaxSize]; `fallback` when absent or null (an error if there is none).
  absl::StatusOr<int64_t> Size(absl::string_view key, std::optional<int64_t> fallback) const {
    TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> value, Int(key));
    if (!value.has_value()) {
      if (fallback.has_value()) return *fallback;
      return Invalid(key, "is required but missing");
    }
    if (*value <= 0) return Invalid(key, absl::StrCat("must be positive, got ", *value));
    if (*value > kMaxSize) {
      return Invalid(key, absl::StrCat("is too large: ", *value, " (at most ", kMaxSize, ")"));
    }
    return *value;
  }

  // A finite number > 0; `fallback` when absent or null.
  absl::StatusOr<double> PositiveNumber(absl::string_view key, double fallback) const {
    TESSERA_ASSIGN_OR_RETURN(std::optional<double> value, Number(key));
    if (!value.has_value()) return fallback;
    if (!(*value > 0)) return Invalid(key, absl::StrCat("must be positive, got ", *value));
    return *value;
  }

 private:
  const json& object_;
  absl::string_view source_;
  std::string prefix_;
};

absl::StatusOr<Architecture> ParseArchitecture(const ObjectReader& reader) {
  if (const json* archs = reader.Find("architectures"); archs != nullptr && !archs->is_null()) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return reader.TypeError("architectures", *archs, "a non-empty array of strings");
    }
    const std::string& name = (*archs)[0].get_ref<const std::string&>();
    for (const ArchitectureInfo& info : kArchitectures) {
      if (info.class_name == name) return info.architecture;
    }
    return reader.Invalid("architectures",
                          absl::StrCat("names unsupported architecture \"", name,
                                       "\" (supported: ", SupportedClassNames(), ")"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> model_type, reader.String("model_type"));
  if (!model_type.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.source(), ": neither \"architectures\" nor \"model_type\" is set (supported: ",
        SupportedClassNames(), ")"));
  }
  for (const ArchitectureInfo& info : kArchitectures) {
    if (info.model_type == *model_type) return info.architecture;
  }
  return reader.Invalid("model_type", absl::StrCat("names unsupported architecture \"", *model_type,
                                                   "\" (supported: ", SupportedModelTypes(), ")"));
}

// The scaling part of a "rope_scaling" or "rope_parameters" object.
absl::Status ParseRopeScaling(const ObjectReader& reader, bool type_required, RopeScaling& out) {
  std::string type_key = "rope_type";
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> type, reader.String("rope_type"));
  if (!type.has_value()) {
    type_key = "type";
    TESSERA_ASSIGN_OR_RETURN(type, reader.String("type"));
  }
  if (!type.has_value()) {
    if (type_required) return reader.Invalid("rope_type", "is required but missing");
    type = "default";
  }
  out = RopeScaling{};
  if (*type == "default") return absl::OkStatus();
  if (*type != "linear" && *type != "llama3") {
    return reader.Invalid(type_key, absl::StrCat("has unsupported value \"", *type,
                                                 "\" (supported: default, linear, llama3)"));
  }
  TESSERA_ASSIGN_OR_RETURN(std::optional<double> factor, reader.Number("factor"));
  if (!factor.has_value()) return reader.Invalid("factor", "is required but missing");
  if (!(*factor > 0))
    return reader.Invalid("factor", absl::StrCat("must be positive, got ", *factor));
  out.factor = *factor;
  if (*type == "linear") {
    out.type = RopeScaling::Type::kLinear;
    return absl::OkStatus();
  }
  out.type = RopeScaling::Type::kLlama3;
  for (const char* key : {"low_freq_factor", "high_freq_factor"}) {
    TESSERA_ASSIGN_OR_RETURN(std::optional<double> value, reader.Number(key));
    if (!value.has_value()) return reader.Invalid(key, "is required but missing");
    if (!(*value > 0)) return reader.Invalid(key, absl::StrCat("must be positive, got ", *value));
    (absl::string_view(key) == "low_freq_factor" ? out.low_freq_factor : out.high_freq_factor) =
        *value;
  }
  if (!(out.high_freq_factor > out.low_freq_factor)) {
    return reader.Invalid(
        "high_freq_factor",
        absl::StrCat("(", out.high_freq_factor, ") must be greater than ",
                     reader.Path("low_freq_factor"), " (", out.low_freq_factor, ")"));
  }
  TESSERA_ASSIGN_OR_RETURN(out.original_max_position_embeddings,
                           reader.Size("original_max_position_embeddings", std::nullopt));
  return absl::OkStatus();
}

absl::Status CheckPartialRotary(const ObjectReader& reader) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<double> partial, reader.Number("partial_rotary_factor"));
  if (partial.has_value() && *partial != 1.0) {
    return reader.Invalid("partial_rotary_factor",
                          absl::StrCat("is ", *partial, "; only 1.0 is supported"));
  }
  return absl::OkStatus();
}

// rope_theta and scaling, from transformers v5's "rope_parameters" when present, else from v4's
// "rope_theta" and "rope_scaling".
absl::Status ParseRope(const ObjectReader& reader, ModelConfig& config) {
  TESSERA_RETURN_IF_ERROR(CheckPartialRotary(reader));
  TESSERA_ASSIGN_OR_RETURN(config.rope_theta, reader.PositiveNumber("rope_theta", 10000.0));
  TESSERA_ASSIGN_OR_RETURN(std::optional<ObjectReader> parameters,
                           reader.Object("rope_parameters"));
  if (parameters.has_value()) {
    TESSERA_RETURN_IF_ERROR(CheckPartialRotary(*parameters));
    TESSERA_ASSIGN_OR_RETURN(config.rope_theta,
                             parameters->PositiveNumber("rope_theta", config.rope_theta));
    return ParseRopeScaling(*parameters, /*type_required=*/false, config.rope_scaling);
  }
  TESSERA_ASSIGN_OR_RETURN(std::optional<ObjectReader> scaling, reader.Object("rope_scaling"));
  if (scaling.has_value()) {
    return ParseRopeScaling(*scaling, /*type_required=*/true, config.rope_scaling);
  }
  return absl::OkStatus();
}

// `value` as a token id: a non-negative integer.
absl::StatusOr<int64_t> TokenIdValue(const ObjectReader& reader, absl::string_view key,
                                     const json& value) {
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return reader.Invalid(key,
                            absl::StrCat("holds a token id out of range: ", value.get<uint64_t>()));
    }
    return value.get<int64_t>();
  }
  if (value.is_number_integer()) {
    if (value.get<int64_t>() < 0) {
      return reader.Invalid(key, absl::StrCat("holds a negative token id: ", value.get<int64_t>()));
    }
    return value.get<int64_t>();
  }
  return reader.TypeError(key, value, "a token id (a non-negative integer)");
}

// A token id, or nullopt when absent or null.
absl::StatusOr<std::optional<int64_t>> TokenId(const ObjectReader& reader, absl::string_view key) {
  const json* value = reader.Find(key);
  if (value == nullptr || value->is_null()) return std::nullopt;
  return TokenIdValue(reader, key, *value);
}

// Appends the ids of "eos_token_id" (an integer, a list of integers or null) to `ids`, skipping
// those already there.
absl::Status AppendEosTokenIds(const ObjectReader& reader, std::vector<int64_t>& ids) {
  constexpr absl::string_view kKey = "eos_token_id";
  const json* value = reader.Find(kKey);
  if (value == nullptr || value->is_null()) return absl::OkStatus();
  if (!value->is_array() && !value->is_number_integer()) {
    return reader.TypeError(kKey, *value, "an integer or a list of integers");
  }
  std::vector<int64_t> found;
  if (value->is_array()) {
    for (const json& element : *value) {
      if (!element.is_number_integer()) {
        return reader.TypeError(kKey, *value, "an integer or a list of integers");
      }
      TESSERA_ASSIGN_OR_RETURN(int64_t id, TokenIdValue(reader, kKey, element));
      found.push_back(id);
    }
  } else {
    TESSERA_ASSIGN_OR_RETURN(int64_t id, TokenIdValue(reader, kKey, *value));
    found.push_back(id);
  }
  for (int64_t id : found) {
    bool seen = false;
    for (int64_t existing : ids) seen = seen || existing == id;
    if (!seen) ids.push_back(id);
  }
  return absl::OkStatus();
}

absl::Status ParseDtype(const ObjectReader& reader, ModelConfig& config) {
  // transformers v5 writes "dtype"; earlier versions "torch_dtype".
  absl::string_view key = "dtype";
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> name, reader.String("dtype"));
  if (!name.has_value()) {
    key = "torch_dtype";
    TESSERA_ASSIGN_OR_RETURN(name, reader.String("torch_dtype"));
  }
  if (!name.has_value() || *name == "auto") return absl::OkStatus();
  absl::StatusOr<DataType> dtype = DataTypeFromName(*name);
  if (!dtype.ok()) return reader.Invalid(key, dtype.status().message());
  if (!IsFloatingPoint(*dtype)) {
    return reader.Invalid(key, absl::StrCat("must be a floating-point type, got \"", *name, "\""));
  }
  config.torch_dtype = *dtype;
  return absl::OkStatus();
}

// Features of the config that the engine does not implement: rejected here, by name.
absl::Status RejectUnsupported(const ObjectReader& reader, Architecture architecture) {
  if (reader.IsSet("quantization_config")) {
    return reader.Invalid("quantization_config", "is set: quantized checkpoints are not supported");
  }
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> act, reader.String("hidden_act"));
  if (act.has_value() && *act != "silu") {
    return reader.Invalid("hidden_act",
                          absl::StrCat("is \"", *act, "\"; only \"silu\" is supported"));
  }
  if (architecture == Architecture::kLlama) {
    TESSERA_ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, reader.Bool("mlp_bias"));
    if (mlp_bias.value_or(false)) return reader.Invalid("mlp_bias", "is true; not supported");
  }
  return absl::OkStatus();
}

absl::Status ParseSizes(const ObjectReader& reader, ModelConfig& config) {
  TESSERA_ASSIGN_OR_RETURN(config.vocab_size, reader.Size("vocab_size", std::nullopt));
  TESSERA_ASSIGN_OR_RETURN(config.hidden_size, reader.Size("hidden_size", std::nullopt));
  TESSERA_ASSIGN_OR_RETURN(config.intermediate_size,
                           reader.Size("intermediate_size", std::nullopt));
  TESSERA_ASSIGN_OR_RETURN(config.num_hidden_layers,
                           reader.Size("num_hidden_layers", std::nullopt));
  TESSERA_ASSIGN_OR_RETURN(config.num_attention_heads,
                           reader.Size("num_attention_heads", std::nullopt));
  TESSERA_ASSIGN_OR_RETURN(config.num_key_value_heads,
                           reader.Size("num_key_value_heads", config.num_attention_heads));
  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.source(), ": \"num_attention_heads\" (", config.num_attention_heads,
        ") must be divisible by \"num_key_value_heads\" (", config.num_key_value_heads, ")"));
  }
  if (reader.IsSet("head_dim")) {
    TESSERA_ASSIGN_OR_RETURN(config.head_dim, reader.Size("head_dim", std::nullopt));
  } else {
    if (config.hidden_size % config.num_attention_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader.source(), ": \"hidden_size\" (", config.hidden_size,
                       ") must be divisible by \"num_attention_heads\" (",
                       config.num_attention_heads, ") when \"head_dim\" is not set"));
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  TESSERA_ASSIGN_OR_RETURN(config.max_position_embeddings,
                           reader.Size("max_position_embeddings", 2048));
  TESSERA_ASSIGN_OR_RETURN(config.rms_norm_eps, reader.PositiveNumber("rms_norm_eps", 1e-6));
  return absl::OkStatus();
}

absl::Status ParseSlidingWindow(const ObjectReader& reader, ModelConfig& config) {
  switch (config.architecture) {
    case Architecture::kLlama:
      return absl::OkStatus();
    case Architecture::kMistral:
      break;
    case Architecture::kQwen2:
    case Architecture::kQwen3: {
      // Qwen uses the window only when "use_sliding_window" is true.
      TESSERA_ASSIGN_OR_RETURN(std::optional<bool> use, reader.Bool("use_sliding_window"));
      if (!use.value_or(false)) return absl::OkStatus();
      if (!reader.IsSet("sliding_window")) {
        return reader.Invalid("sliding_window", "must be set when \"use_sliding_window\" is true");
      }
      break;
    }
  }
  if (reader.IsSet("sliding_window")) {
    TESSERA_ASSIGN_OR_RETURN(config.sliding_window, reader.Size("sliding_window", std::nullopt));
  }
  return absl::OkStatus();
}

absl::Status ParseArchitectureFeatures(const ObjectReader& reader, ModelConfig& config) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<bool> tie, reader.Bool("tie_word_embeddings"));
  config.tie_word_embeddings = tie.value_or(false);
  // transformers: Llama and Qwen3 honour "attention_bias"; Qwen2 always has q/k/v biases;
  // Mistral never has them.
  TESSERA_ASSIGN_OR_RETURN(std::optional<bool> bias, reader.Bool("attention_bias"));
  switch (config.architecture) {
    case Architecture::kLlama:
      config.attention_bias = bias.value_or(false);
      break;
    case Architecture::kMistral:
      config.attention_bias = false;
      break;
    case Architecture::kQwen2:
      config.attention_bias = true;
      break;
    case Architecture::kQwen3:
      config.attention_bias = bias.value_or(false);
      config.qk_norm = true;
      break;
  }
  return ParseSlidingWindow(reader, config);
}

std::string TorchDtypeName(DataType dtype) {
  switch (dtype) {
    case DataType::kF16:
      return "float16";
    case DataType::kBF16:
      return "bfloat16";
    default:
      return "float32";
  }
}

}  // namespace

absl::string_view ArchitectureName(Architecture arch) { return InfoFor(arch).class_name; }

absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text,
                                             absl::string_view source) {
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(json_text, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": must hold a JSON object, got ", DescribeJson(root)));
  }
  const ObjectReader reader(root, source, "");
  ModelConfig config;
  TESSERA_ASSIGN_OR_RETURN(config.architecture, ParseArchitecture(reader));
  TESSERA_RETURN_IF_ERROR(RejectUnsupported(reader, config.architecture));
  TESSERA_RETURN_IF_ERROR(ParseSizes(reader, config));
  TESSERA_RETURN_IF_ERROR(ParseRope(reader, config));
  TESSERA_RETURN_IF_ERROR(ParseArchitectureFeatures(reader, config));
  TESSERA_RETURN_IF_ERROR(AppendEosTokenIds(reader, config.eos_token_ids));
  TESSERA_ASSIGN_OR_RETURN(config.bos_token_id, TokenId(reader, "bos_token_id"));
  TESSERA_RETURN_IF_ERROR(ParseDtype(reader, config));
  return config;
}

absl::Status MergeGenerationConfig(absl::string_view json_text, absl::string_view source,
                                   ModelConfig& config) {
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(json_text, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": must hold a JSON object, got ", DescribeJson(root)));
  }
  const ObjectReader reader(root, source, "");
  TESSERA_RETURN_IF_ERROR(AppendEosTokenIds(reader, config.eos_token_ids));
  TESSERA_ASSIGN_OR_RETURN(std::optional<int64_t> bos, TokenId(reader, "bos_token_id"));
  if (bos.has_value()) config.bos_token_id = bos;
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string config_path = absl::StrCat(model_dir, "/config.json");
  TESSERA_ASSIGN_OR_RETURN(std::string text, internal::ReadFileToString(config_path));
  TESSERA_ASSIGN_OR_RETURN(ModelConfig config, ParseModelConfig(text, config_path));
  const std::string generation_path = absl::StrCat(model_dir, "/generation_config.json");
  absl::StatusOr<std::string> generation = internal::ReadFileToString(generation_path);
  if (absl::IsNotFound(generation.status())) return config;
  if (!generation.ok()) return generation.status();
  TESSERA_RETURN_IF_ERROR(MergeGenerationConfig(*generation, generation_path, config));
  return config;
}

absl::StatusOr<GenerationDefaults> ParseGenerationDefaults(absl::string_view json_text,
                                                           absl::string_view source) {
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(json_text, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": must hold a JSON object, got ", DescribeJson(root)));
  }
  const ObjectReader reader(root, source, "");
  GenerationDefaults defaults;
  TESSERA_ASSIGN_OR_RETURN(defaults.temperature, reader.Number("temperature"));
  if (defaults.temperature.has_value() && *defaults.temperature < 0) {
    return reader.Invalid("temperature",
                          absl::StrCat("must not be negative, got ", *defaults.temperature));
  }
  TESSERA_ASSIGN_OR_RETURN(defaults.top_k, reader.Int("top_k"));
  if (defaults.top_k.has_value() && *defaults.top_k < 0) {
    return reader.Invalid("top_k", absl::StrCat("must not be negative, got ", *defaults.top_k));
  }
  TESSERA_ASSIGN_OR_RETURN(defaults.top_p, reader.Number("top_p"));
  if (defaults.top_p.has_value() && !(*defaults.top_p > 0 && *defaults.top_p <= 1)) {
    return reader.Invalid("top_p", absl::StrCat("must be in (0, 1], got ", *defaults.top_p));
  }
  return defaults;
}

absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_dir) {
  const std::string path = absl::StrCat(model_dir, "/generation_config.json");
  absl::StatusOr<std::string> text = internal::ReadFileToString(path);
  if (absl::IsNotFound(text.status())) return GenerationDefaults{};
  if (!text.ok()) return text.status();
  return ParseGenerationDefaults(*text, path);
}

std::string ModelConfigToJson(const ModelConfig& config) {
  using ordered_json = nlohmann::ordered_json;
  const ArchitectureInfo& info = InfoFor(config.architecture);
  ordered_json out = ordered_json::object();
  out["architectures"] = ordered_json::array({std::string(info.class_name)});
  out["model_type"] = std::string(info.model_type);
  out["vocab_size"] = config.vocab_size;
  out["hidden_size"] = config.hidden_size;
  out["intermediate_size"] = config.intermediate_size;
  out["num_hidden_layers"] = config.num_hidden_layers;
  out["num_attention_heads"] = config.num_attention_heads;
  out["num_key_value_heads"] = config.num_key_value_heads;
  out["head_dim"] = config.head_dim;
  out["hidden_act"] = "silu";
  out["rms_norm_eps"] = config.rms_norm_eps;
  out["rope_theta"] = config.rope_theta;
  switch (config.rope_scaling.type) {
    case RopeScaling::Type::kNone:
      out["rope_scaling"] = nullptr;
      break;
    case RopeScaling::Type::kLinear:
      out["rope_scaling"] = {{"rope_type", "linear"}, {"factor", config.rope_scaling.factor}};
      break;
    case RopeScaling::Type::kLlama3:
      out["rope_scaling"] = {{"rope_type", "llama3"},
                             {"factor", config.rope_scaling.factor},
                             {"low_freq_factor", config.rope_scaling.low_freq_factor},
                             {"high_freq_factor", config.rope_scaling.high_freq_factor},
                             {"original_max_position_embeddings",
                              config.rope_scaling.original_max_position_embeddings}};
      break;
  }
  out["max_position_embeddings"] = config.max_position_embeddings;
  out["tie_word_embeddings"] = config.tie_word_embeddings;
  switch (config.architecture) {
    case Architecture::kLlama:
      out["attention_bias"] = config.attention_bias;
      out["mlp_bias"] = false;
      break;
    case Architecture::kMistral:
      out["sliding_window"] =
          config.sliding_window.has_value() ? ordered_json(*config.sliding_window) : nullptr;
      break;
    case Architecture::kQwen2:
    case Architecture::kQwen3:
      if (config.architecture == Architecture::kQwen3) {
        out["attention_bias"] = config.attention_bias;
      }
      // Qwen slides the window over layers from max_window_layers on: 0 means all of them.
      out["use_sliding_window"] = config.sliding_window.has_value();
      out["sliding_window"] =
          config.sliding_window.has_value() ? ordered_json(*config.sliding_window) : nullptr;
      out["max_window_layers"] = config.sliding_window.has_value() ? 0 : config.num_hidden_layers;
      break;
  }
  out["bos_token_id"] =
      config.bos_token_id.has_value() ? ordered_json(*config.bos_token_id) : nullptr;
  if (config.eos_token_ids.empty()) {
    out["eos_token_id"] = nullptr;
  } else if (config.eos_token_ids.size() == 1) {
    out["eos_token_id"] = config.eos_token_ids[0];
  } else {
    out["eos_token_id"] = config.eos_token_ids;
  }
  out["torch_dtype"] = TorchDtypeName(config.torch_dtype);
  return out.dump(2) + "\n";
}

}  // namespace tessera::model
