// Flags shared by the subcommands that run a model in this process (generate, bench-engine), and
// the code that turns them into a backend, a model, a KV cache and a generator. launch/ is the
// composition root: the only place that names concrete backends.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "model/weights.h"
#include "worker/generator.h"
#include "worker/kv_cache.h"
#include "worker/llama_model.h"

namespace tessera::launch {

struct EngineFlags {
  std::string dtype = "auto";           // weights: auto (as stored) | float32 | bfloat16 | float16
  std::string kv_cache_dtype = "auto";  // auto (= activations, f32 on CPU) | float32 | ...
  int32_t block_size = 16;
  int32_t max_model_len = 0;  // 0: min(max_position_embeddings, 8192)
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  int32_t num_kv_blocks = 0;  // 0: from kv_cache_gib, capped at what max_num_seqs needs
  double kv_cache_gib = 2.0;
  int32_t threads = 0;  // 0: all cores
};

void AddEngineFlags(CLI::App& app, EngineFlags& flags);

// A model ready to run in this process.
struct Engine {
  std::unique_ptr<kernels::Backend> backend;
  std::unique_ptr<worker::LlamaModel> model;
  std::unique_ptr<worker::KvCache> cache;
  std::unique_ptr<worker::Generator> generator;
  int32_t max_model_len = 0;
};

// Builds the CPU backend, loads `weights` and sizes the cache. kInvalidArgument for flags that
// contradict each other or the model.
absl::StatusOr<Engine> BuildEngine(const model::ModelConfig& config,
                                   const model::WeightSource& weights, const EngineFlags& flags);

// Parses "1,2,3" into token ids; kInvalidArgument naming the bad element.
absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view text);

}  // namespace tessera::launch
