#include "launch/engine_setup.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/cpu_backend.h"

namespace tessera::launch {

void AddEngineFlags(CLI::App& app, EngineFlags& flags) {
  app.add_option("--dtype", flags.dtype,
                 "Weight storage: auto (as in the checkpoint), float32, bfloat16 or float16; "
                 "the CPU backend computes in float32")
      ->capture_default_str();
  app.add_option("--kv-cache-dtype", flags.kv_cache_dtype,
                 "KV cache element type: auto (float32 on CPU), float32, bfloat16 or float16")
      ->capture_default_str();
  app.add_option("--block-size", flags.block_size, "Tokens per KV-cache block")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  app.add_option("--max-model-len", flags.max_model_len,
                 "Prompt + output tokens of one request (0: the model's maximum, at most 8192)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-num-seqs", flags.max_num_seqs, "Sequences per step")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-num-batched-tokens", flags.max_num_batched_tokens,
                 "Tokens per step (prefill chunks plus decodes)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--num-kv-blocks", flags.num_kv_blocks, "KV-cache blocks (0: from --kv-cache-gib)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--kv-cache-gib", flags.kv_cache_gib, "KV-cache memory budget in GiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", flags.threads, "CPU threads (0: all cores)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id) || id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", part, "' in '", text, "' is not a token id (a non-negative integer)"));
    }
    ids.push_back(id);
  }
  return ids;
}

namespace {
absl::StatusOr<std::optional<DataType>> ParseDtypeFlag(const std::string& flag,
                                                       const std::string& value) {
  if (value == "auto") return std::optional<DataType>();
  auto dtype = DataTypeFromName(value);
  if (!dtype.ok() || !IsFloatingPoint(*dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", value, "' is not one of auto, float32, bfloat16, float16"));
  }
  return std::optional<DataType>(*dtype);
}
}  // namespace

absl::StatusOr<Engine> BuildEngine(const model::ModelConfig& config,
                                   const model::WeightSource& weights, const EngineFlags& flags) {
  Engine engine;
  TESSERA_ASSIGN_OR_RETURN(std::optional<DataType> weight_dtype,
                           ParseDtypeFlag("--dtype", flags.dtype));
  TESSERA_ASSIGN_OR_RETURN(std::optional<DataType> kv_dtype,
                           ParseDtypeFlag("--kv-cache-dtype", flags.kv_cache_dtype));
  const int64_t model_max = std::min<int64_t>(config.max_position_embeddings, 8192);
  engine.max_model_len =
      flags.max_model_len > 0 ? flags.max_model_len : static_cast<int32_t>(model_max);
  if (engine.max_model_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max-model-len ", engine.max_model_len,
                                                   " exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  const int32_t blocks_per_seq = (engine.max_model_len + flags.block_size - 1) / flags.block_size;

  kernels::CpuBackendOptions cpu_options;
  cpu_options.num_threads = flags.threads;
  TESSERA_ASSIGN_OR_RETURN(engine.backend, kernels::CreateCpuBackend(cpu_options));

  worker::LlamaModelOptions model_options;
  model_options.weight_dtype = weight_dtype;
  model_options.max_num_tokens = flags.max_num_batched_tokens;
  model_options.max_num_seqs = flags.max_num_seqs;
  model_options.max_blocks_per_seq = blocks_per_seq;
  TESSERA_ASSIGN_OR_RETURN(
      engine.model, worker::LlamaModel::Create(config, weights, *engine.backend, model_options));

  worker::KvCacheConfig cache_config;
  cache_config.num_layers = static_cast<int32_t>(config.num_hidden_layers);
  cache_config.block_size = flags.block_size;
  cache_config.kv_heads = static_cast<int32_t>(config.num_key_value_heads);
  cache_config.head_dim = static_cast<int32_t>(config.head_dim);
  cache_config.dtype = kv_dtype.value_or(DataType::kF32);
  if (flags.num_kv_blocks > 0) {
    cache_config.num_blocks = flags.num_kv_blocks;
  } else {
    const double budget = flags.kv_cache_gib * 1024.0 * 1024.0 * 1024.0;
    const int64_t by_memory = static_cast<int64_t>(budget / cache_config.BytesPerBlock());
    const int64_t needed = static_cast<int64_t>(flags.max_num_seqs) * blocks_per_seq;
    cache_config.num_blocks = static_cast<int32_t>(std::min(by_memory, needed));
    if (cache_config.num_blocks < blocks_per_seq) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv-cache-gib ", flags.kv_cache_gib, " holds ", cache_config.num_blocks,
                       " blocks, fewer than one sequence of --max-model-len ", engine.max_model_len,
                       " needs (", blocks_per_seq, ")"));
    }
  }
  TESSERA_LOG(INFO) << "KV cache: " << cache_config.num_blocks << " blocks of "
                    << cache_config.block_size << " tokens ("
                    << cache_config.BytesPerBlock() * cache_config.num_blocks / (1 << 20)
                    << " MiB, " << DataTypeName(cache_config.dtype) << ")";
  TESSERA_ASSIGN_OR_RETURN(engine.cache, worker::KvCache::Create(cache_config, *engine.backend));

  worker::GeneratorOptions generator_options;
  generator_options.max_model_len = engine.max_model_len;
  generator_options.max_num_seqs = flags.max_num_seqs;
  generator_options.max_num_batched_tokens = flags.max_num_batched_tokens;
  TESSERA_ASSIGN_OR_RETURN(
      engine.generator,
      worker::Generator::Create(*engine.model, *engine.cache, *engine.backend, generator_options));
  return engine;
}

}  // namespace tessera::launch
