// Model-shape flags for `make-model` and `bench-engine`: a preset plus overrides of any field.
#pragma once

#include <cstdint>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "model/config.h"

namespace tessera::launch {

struct ModelShapeFlags {
  std::string preset = "tiny";  // tiny | llama-1b | llama-8b
  std::string architecture;     // llama | mistral | qwen2 | qwen3 (overrides the preset's)
  int64_t vocab_size = 0;       // 0: the preset's
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  std::string tie_word_embeddings;  // "", "true" or "false"
};

void AddModelShapeFlags(CLI::App& app, ModelShapeFlags& flags);
// The preset's config with the overrides applied; kInvalidArgument for an unknown preset or
// architecture, or a shape that does not hold together.
absl::StatusOr<model::ModelConfig> ModelConfigFromFlags(const ModelShapeFlags& flags);

}  // namespace tessera::launch
