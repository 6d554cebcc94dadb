#include "launch/model_flags.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace tessera::launch {

void AddModelShapeFlags(CLI::App& app, ModelShapeFlags& flags) {
  app.add_option("--preset", flags.preset, "Base shape: tiny, llama-1b (Llama-3.2-1B), llama-8b")
      ->capture_default_str();
  app.add_option("--arch", flags.architecture, "llama, mistral, qwen2 or qwen3");
  app.add_option("--vocab-size", flags.vocab_size)->check(CLI::PositiveNumber);
  app.add_option("--hidden-size", flags.hidden_size)->check(CLI::PositiveNumber);
  app.add_option("--intermediate-size", flags.intermediate_size)->check(CLI::PositiveNumber);
  app.add_option("--num-layers", flags.num_layers)->check(CLI::PositiveNumber);
  app.add_option("--num-heads", flags.num_heads)->check(CLI::PositiveNumber);
  app.add_option("--num-kv-heads", flags.num_kv_heads)->check(CLI::PositiveNumber);
  app.add_option("--head-dim", flags.head_dim)->check(CLI::PositiveNumber);
  app.add_option("--max-position-embeddings", flags.max_position_embeddings)
      ->check(CLI::PositiveNumber);
  app.add_option("--tie-word-embeddings", flags.tie_word_embeddings)
      ->check(CLI::IsMember({"true", "false"}));
}

absl::StatusOr<model::ModelConfig> ModelConfigFromFlags(const ModelShapeFlags& flags) {
  model::ModelConfig c;
  c.architecture = model::Architecture::kLlama;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  if (flags.preset == "tiny") {
    c.vocab_size = 512;
    c.hidden_size = 64;
    c.intermediate_size = 128;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.max_position_embeddings = 1024;
    c.rope_theta = 10000.0;
    c.rms_norm_eps = 1e-5;
  } else if (flags.preset == "llama-1b" || flags.preset == "llama-8b") {
    const bool small = flags.preset == "llama-1b";
    c.vocab_size = 128256;
    c.hidden_size = small ? 2048 : 4096;
    c.intermediate_size = small ? 8192 : 14336;
    c.num_hidden_layers = small ? 16 : 32;
    c.num_attention_heads = 32;
    c.num_key_value_heads = 8;
    c.max_position_embeddings = 131072;
    c.rope_theta = 500000.0;
    c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = small;
    c.rope_scaling.type = model::RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = small ? 32.0 : 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.eos_token_ids = {128001, 128008, 128009};
    c.bos_token_id = 128000;
    c.torch_dtype = DataType::kBF16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--preset '", flags.preset, "' is not one of tiny, llama-1b, llama-8b"));
  }
  if (!flags.architecture.empty()) {
    if (flags.architecture == "llama") {
      c.architecture = model::Architecture::kLlama;
    } else if (flags.architecture == "mistral") {
      c.architecture = model::Architecture::kMistral;
    } else if (flags.architecture == "qwen2") {
      c.architecture = model::Architecture::kQwen2;
      c.attention_bias = true;
    } else if (flags.architecture == "qwen3") {
      c.architecture = model::Architecture::kQwen3;
      c.qk_norm = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "--arch '", flags.architecture, "' is not one of llama, mistral, qwen2, qwen3"));
    }
  }
  auto set = [](int64_t flag, int64_t& field) {
    if (flag > 0) field = flag;
  };
  set(flags.vocab_size, c.vocab_size);
  set(flags.hidden_size, c.hidden_size);
  set(flags.intermediate_size, c.intermediate_size);
  set(flags.num_layers, c.num_hidden_layers);
  set(flags.num_heads, c.num_attention_heads);
  set(flags.num_kv_heads, c.num_key_value_heads);
  set(flags.max_position_embeddings, c.max_position_embeddings);
  if (!flags.tie_word_embeddings.empty())
    c.tie_word_embeddings = flags.tie_word_embeddings == "true";
  c.head_dim = flags.head_dim > 0 ? flags.head_dim : 0;
  // Let the config parser apply the defaults and checks (head_dim, divisibility, ...) by
  // round-tripping through config.json, so flags are validated exactly like a checkpoint.
  if (c.head_dim == 0) {
    if (c.num_attention_heads <= 0 || c.hidden_size % c.num_attention_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat("--hidden-size ", c.hidden_size,
                                                     " is not divisible by --num-heads ",
                                                     c.num_attention_heads, "; give --head-dim"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  return model::ParseModelConfig(model::ModelConfigToJson(c), "model flags");
}

}  // namespace tessera::launch
