// What a Llama-family model is, as its Hugging Face config.json (and generation_config.json) says.
// Parsing validates every field it reads: errors are kInvalidArgument naming the file, the key and
// what is wrong. Plain data; thread-compatible.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace tessera::model {

enum class Architecture {
  kLlama,    // LlamaForCausalLM (Llama 2, 3, 3.1, 3.2, 3.3)
  kMistral,  // MistralForCausalLM
  kQwen2,    // Qwen2ForCausalLM (Qwen2, Qwen2.5): q/k/v biases
  kQwen3,    // Qwen3ForCausalLM: RMSNorm on q and k per head, no biases
};
absl::string_view ArchitectureName(Architecture arch);  // the HF class name

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;
  // llama3 only.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;

  bool operator==(const RopeScaling&) const = default;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // defaults to num_attention_heads
  int64_t head_dim = 0;             // defaults to hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 always; Llama when attention_bias: true)
  bool qk_norm = false;         // Qwen3
  std::optional<int64_t> sliding_window;  // Mistral/Qwen2 when enabled; not supported by the engine
  std::vector<int64_t> eos_token_ids;     // from config.json, merged with generation_config.json
  std::optional<int64_t> bos_token_id;
  DataType torch_dtype = DataType::kF32;  // the checkpoint's declared dtype

  int64_t q_size() const { return num_attention_heads * head_dim; }
  int64_t kv_size() const { return num_key_value_heads * head_dim; }

  bool operator==(const ModelConfig&) const = default;
};

// Parses the text of a config.json. `source` names the file in error messages, which read
// `SOURCE: "key" <what is wrong>` (nested keys dotted: "rope_scaling.rope_type"), e.g.
// `config.json: "hidden_size" must be an integer, got a string "4096"`.
// Architecture: architectures[0], else model_type. Keys absent (or null) take these defaults:
// num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads,
// rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 2048, tie_word_embeddings false,
// no bos/eos, torch_dtype f32. vocab_size, hidden_size, intermediate_size, num_hidden_layers and
// num_attention_heads are required. Reads v4 keys (rope_theta, rope_scaling, torch_dtype) and v5
// ones (rope_parameters, dtype; these win when both are present).
absl::StatusOr<ModelConfig> ParseModelConfig(absl::string_view json_text, absl::string_view source);
// Merges a generation_config.json into `config`: its eos_token_id(s) are appended to
// config.eos_token_ids (duplicates dropped); its bos_token_id, when set, replaces config's.
absl::Status MergeGenerationConfig(absl::string_view json_text, absl::string_view source,
                                   ModelConfig& config);
// Reads DIR/config.json and, if present, DIR/generation_config.json (eos_token_id, bos_token_id).
// A missing config.json is kNotFound naming the path.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);
// config.json text that ParseModelConfig reads back to the same config (and transformers loads):
// every key written explicitly. Not representable (and so not round-tripped): attention_bias on
// Mistral, attention_bias false on Qwen2.
std::string ModelConfigToJson(const ModelConfig& config);

// Defaults a model ships for sampling, from generation_config.json.
struct GenerationDefaults {
  std::optional<double> temperature;
  std::optional<int64_t> top_k;
  std::optional<double> top_p;

  bool operator==(const GenerationDefaults&) const = default;
};

// Parses a generation_config.json (temperature, top_k, top_p; other keys ignored).
absl::StatusOr<GenerationDefaults> ParseGenerationDefaults(absl::string_view json_text,
                                                           absl::string_view source);
// Reads DIR/generation_config.json; all-unset defaults when the file does not exist.
absl::StatusOr<GenerationDefaults> LoadGenerationDefaults(const std::string& model_dir);

}  // namespace tessera::model
