#include "launch/engine_setup.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef TESSERA_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace tessera::launch {

void AddEngineFlags(CLI::App& app, EngineFlags& flags) {
  app.add_option("--dtype", flags.dtype,
                 "Weight storage: auto (as in the checkpoint), float32, bfloat16 or float16; "
                 "the CPU backend computes in float32, a GPU in the weights' type")
      ->capture_default_str();
  app.add_option("--kv-cache-dtype", flags.kv_cache_dtype,
                 "KV cache element type: auto (the activations': float32 on CPU, the weights' "
                 "half type on a GPU), float32, bfloat16 or float16")
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
  app.add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", flags.enable_prefix_caching,
               "Reuse the KV blocks of cached prompt prefixes (default on)");
  app.add_flag("--enable-chunked-prefill,!--no-enable-chunked-prefill",
               flags.enable_chunked_prefill,
               "Split long prompts into chunks that share steps with decodes (default on)");
  app.add_option("--scheduling-policy", flags.scheduling_policy,
                 "fcfs: requests run in arrival order; priority: by each request's priority "
                 "(lower first), then arrival, and the least urgent are preempted first (vLLM's)")
      ->capture_default_str()
      ->check(CLI::IsMember({"fcfs", "priority"}));
  app.add_flag("--enforce-eager", flags.enforce_eager,
               "Run every step eagerly: no CUDA graphs for decode steps");
  app.add_option("--cuda-graph-sizes", flags.cuda_graph_sizes,
                 "Decode batch sizes run as CUDA graphs: one N means 1, 2, 4 and the multiples "
                 "of 8 up to N; several are the list itself")
      ->capture_default_str()
      ->delimiter(',')
      ->check(CLI::Range(1, 65536));
  app.add_option("--threads", flags.threads, "CPU threads (0: all cores)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--backend", flags.backend, "Kernels backend: cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--device", flags.device,
                 "cuda: the replica's first GPU on each host (its ranks there take the next ones)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  AddAttentionKernelFlag(app, flags.attention_kernel);
}

namespace {
constexpr const char* kAttentionKernels[] = {"auto", "simt", "tensor-cores"};
}  // namespace

void AddAttentionKernelFlag(CLI::App& app, std::string& attention_kernel) {
  app.add_option("--attention-kernel", attention_kernel,
                 "cuda: auto (tensor cores for prefill in bf16/f16, SIMT for decode), simt, or "
                 "tensor-cores (decode too)")
      ->capture_default_str()
      ->check(CLI::IsMember(
          std::vector<std::string>(std::begin(kAttentionKernels), std::end(kAttentionKernels))));
}

absl::Status ValidateAttentionKernel(absl::string_view name) {
  for (const char* known : kAttentionKernels) {
    if (name == known) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat("'", name, "' is not auto, simt or tensor-cores"));
}

absl::Status ValidateBackend(const EngineFlags& flags, int ranks) {
  if (absl::Status s = ValidateAttentionKernel(flags.attention_kernel); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--attention-kernel: ", s.message()));
  }
  if (flags.backend == "cpu") return absl::OkStatus();
  if (flags.backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend '", flags.backend, "' is not cpu or cuda"));
  }
#ifndef TESSERA_HAVE_CUDA_BACKEND
  return absl::FailedPreconditionError(
      "backend cuda: this tessera was built without the CUDA backend (TESSERA_WITH_CUDA=OFF)");
#else
#ifndef TESSERA_HAVE_NCCL
  if (ranks > 1) {
    return absl::FailedPreconditionError(absl::StrCat(
        "backend cuda with ", ranks,
        " ranks per replica: the TP/PP groups of a GPU replica run over NCCL, and this tessera was "
        "built without it (TESSERA_WITH_NCCL=OFF); use one rank"));
  }
#endif
  if (flags.device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("--device ", flags.device, " is negative"));
  }
  return absl::OkStatus();
#endif
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> MakeRankBackend(const EngineFlags& flags,
                                                                  int threads, int on_host) {
  if (flags.backend == "cpu") {
    kernels::CpuBackendOptions cpu;
    cpu.num_threads = threads;
    return kernels::CreateCpuBackend(cpu);
  }
#ifdef TESSERA_HAVE_CUDA_BACKEND
  if (flags.backend == "cuda") {
    kernels::CudaBackendOptions cuda;
    cuda.device = flags.device + on_host;
    TESSERA_RETURN_IF_ERROR(ValidateAttentionKernel(flags.attention_kernel));
    if (flags.attention_kernel == "simt") {
      cuda.attention_kernel = kernels::CudaAttentionKernel::kSimt;
    } else if (flags.attention_kernel == "tensor-cores") {
      cuda.attention_kernel = kernels::CudaAttentionKernel::kTensorCores;
    }
    return kernels::CreateCudaBackend(cuda);
  }
#endif
  return ValidateBackend(flags, 1);  // the reason this backend cannot be made
}

kernels::bench::KernelBenchOptions KernelBenchDefaults(absl::string_view backend,
                                                       DataType weights) {
  const bool gpu = backend != "cpu";
  kernels::bench::KernelBenchOptions o;
  o.dtype = weights;
  o.activation_dtype = gpu ? weights : DataType::kF32;
  o.copy_bytes = gpu ? size_t{1} << 30 : size_t{1} << 28;
  o.gemm_size = gpu ? 8192 : 2048;
  o.batch_sizes = gpu ? std::vector<int64_t>{1, 8, 32, 64, 256} : std::vector<int64_t>{1, 8, 32};
  o.contexts = gpu ? std::vector<int64_t>{1024, 4096, 32768} : std::vector<int64_t>{1024, 4096};
  o.prefill_tokens = gpu ? std::vector<int64_t>{4096} : std::vector<int64_t>{512};
  return o;
}

namespace {
// "a,b,c" as integers >= `min`; kInvalidArgument naming the bad element and what it should be.
template <typename T>
absl::StatusOr<std::vector<T>> ParseIntList(absl::string_view text, T min, absl::string_view what) {
  std::vector<T> values;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    T value = 0;
    if (!absl::SimpleAtoi(part, &value) || value < min) {
      return absl::InvalidArgumentError(absl::StrCat("'", part, "' in '", text, "' is not ", what));
    }
    values.push_back(value);
  }
  return values;
}
}  // namespace

absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view text) {
  return ParseIntList<int32_t>(text, 0, "a token id (a non-negative integer)");
}

absl::StatusOr<std::vector<int64_t>> ParseLayerList(absl::string_view text) {
  return ParseIntList<int64_t>(text, 1,
                               "a number of layers >= 1 (give auto, or a list such as 10,6)");
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

absl::StatusOr<EngineLimits> ComputeEngineLimits(const model::ModelConfig& config,
                                                 const EngineFlags& flags, int tp_size, int pp_size,
                                                 int64_t stage_layers) {
  EngineLimits limits;
  TESSERA_ASSIGN_OR_RETURN(limits.model.weight_dtype, ParseDtypeFlag("--dtype", flags.dtype));
  TESSERA_ASSIGN_OR_RETURN(std::optional<DataType> kv_dtype,
                           ParseDtypeFlag("--kv-cache-dtype", flags.kv_cache_dtype));
  // Activations: on a GPU the weights' half type (as vLLM runs a bf16 model: cuBLAS multiplies
  // on tensor cores), f32 for f32 weights and on the CPU, which computes in f32 only.
  const DataType weights = limits.model.weight_dtype.value_or(config.torch_dtype);
  limits.model.activation_dtype =
      flags.backend != "cpu" && weights != DataType::kF32 ? weights : DataType::kF32;
  limits.kv_cache_dtype = kv_dtype.value_or(limits.model.activation_dtype);
  const int64_t model_max = std::min<int64_t>(config.max_position_embeddings, 8192);
  limits.max_model_len =
      flags.max_model_len > 0 ? flags.max_model_len : static_cast<int32_t>(model_max);
  if (limits.max_model_len > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--max-model-len ", limits.max_model_len,
                                                   " exceeds the model's max_position_embeddings ",
                                                   config.max_position_embeddings));
  }
  const int32_t blocks_per_seq = (limits.max_model_len + flags.block_size - 1) / flags.block_size;
  limits.model.max_num_tokens = flags.max_num_batched_tokens;
  limits.model.max_num_seqs = flags.max_num_seqs;
  limits.model.max_blocks_per_seq = blocks_per_seq;
  limits.model.graph_batch_sizes = GraphBatchSizes(flags);
  if (flags.num_kv_blocks > 0) {
    limits.num_kv_blocks = flags.num_kv_blocks;
  } else {
    // The budget is per rank; a rank holds its stage's layers and its share of the KV heads.
    worker::KvCacheConfig rank_cache;
    rank_cache.num_layers = static_cast<int32_t>(
        stage_layers > 0 ? stage_layers : (config.num_hidden_layers + pp_size - 1) / pp_size);
    rank_cache.block_size = flags.block_size;
    rank_cache.kv_heads =
        static_cast<int32_t>(std::max<int64_t>(1, config.num_key_value_heads / tp_size));
    rank_cache.head_dim = static_cast<int32_t>(config.head_dim);
    rank_cache.dtype = limits.kv_cache_dtype;
    const double budget = flags.kv_cache_gib * 1024.0 * 1024.0 * 1024.0;
    const int64_t by_memory = static_cast<int64_t>(budget / rank_cache.BytesPerBlock());
    const int64_t needed = static_cast<int64_t>(flags.max_num_seqs) * blocks_per_seq;
    limits.num_kv_blocks = static_cast<int32_t>(std::min(by_memory, needed));
    if (limits.num_kv_blocks < blocks_per_seq) {
      return absl::InvalidArgumentError(
          absl::StrCat("--kv-cache-gib ", flags.kv_cache_gib, " holds ", limits.num_kv_blocks,
                       " blocks, fewer than one sequence of --max-model-len ", limits.max_model_len,
                       " needs (", blocks_per_seq, ")"));
    }
  }
  return limits;
}

std::vector<int32_t> GraphBatchSizes(const EngineFlags& flags) {
  std::vector<int32_t> sizes;
  if (flags.enforce_eager || flags.cuda_graph_sizes.empty()) return sizes;
  if (flags.cuda_graph_sizes.size() == 1) {
    const int32_t largest = flags.cuda_graph_sizes.front();
    for (const int32_t size : {1, 2, 4}) {
      if (size <= largest) sizes.push_back(size);
    }
    for (int32_t size = 8; size <= largest; size += 8) sizes.push_back(size);
  } else {
    sizes = flags.cuda_graph_sizes;
  }
  const int32_t limit = std::min(flags.max_num_seqs, flags.max_num_batched_tokens);
  std::erase_if(sizes, [limit](int32_t size) { return size < 1 || size > limit; });
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

absl::StatusOr<std::unique_ptr<model::TokenVocabulary>> LoadTokenVocabulary(
    const std::string& model, int32_t vocab_size) {
  std::error_code error;
  const std::string path = model + "/tokenizer.json";
  if (!std::filesystem::is_directory(model, error) || !std::filesystem::exists(path, error)) {
    TESSERA_LOG(INFO) << "structured outputs off: " << model << " has no tokenizer.json";
    return nullptr;
  }
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tokenizer,
                           model::Tokenizer::FromFile(path));
  absl::StatusOr<std::unique_ptr<model::TokenVocabulary>> vocabulary =
      model::TokenVocabulary::Create(*tokenizer, vocab_size);
  if (!vocabulary.ok()) {
    TESSERA_LOG(WARNING) << "structured outputs off: " << vocabulary.status().message();
    return nullptr;
  }
  return vocabulary;
}

worker::EngineOptions EngineOptionsFor(const EngineFlags& flags, int32_t max_model_len) {
  worker::EngineOptions options;
  options.scheduler.max_model_len = max_model_len;
  options.scheduler.max_num_seqs = flags.max_num_seqs;
  options.scheduler.max_num_batched_tokens = flags.max_num_batched_tokens;
  options.scheduler.enable_prefix_caching = flags.enable_prefix_caching;
  options.scheduler.enable_chunked_prefill = flags.enable_chunked_prefill;
  options.scheduler.priority_scheduling = flags.scheduling_policy == "priority";
  return options;
}

}  // namespace tessera::launch
