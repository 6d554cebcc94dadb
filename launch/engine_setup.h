// Flags shared by the subcommands that run a model (generate, bench-engine), and the sizes they
// imply for the model's workspace and KV cache (launch/replica_runner.h builds the replica).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/bench/kernel_bench.h"
#include "model/config.h"
#include "model/token_constraint.h"
#include "model/weights.h"
#include "worker/engine.h"
#include "worker/kv_cache.h"
#include "worker/llama_model.h"

namespace tessera::launch {

struct EngineFlags {
  std::string dtype = "auto";           // weights: auto (as stored) | float32 | bfloat16 | float16
  std::string kv_cache_dtype = "auto";  // auto (= activations: f32 on CPU) | float32 | ...
  int32_t block_size = 16;
  int32_t max_model_len = 0;  // 0: min(max_position_embeddings, 8192)
  int32_t max_num_seqs = 64;
  int32_t max_num_batched_tokens = 2048;
  int32_t num_kv_blocks = 0;  // 0: from kv_cache_gib, capped at what max_num_seqs needs
  double kv_cache_gib = 2.0;
  int32_t threads = 0;  // 0: all cores
  // The kernels backend: cpu, or cuda (GPU `device` + the rank's index among its replica's ranks
  // on its host). A topology pool's `backend` and first `devices` entry set these for its workers.
  std::string backend = "cpu";
  int device = 0;
  // cuda: which PagedAttention kernel (kernels::CudaAttentionKernel): auto | simt | tensor-cores.
  std::string attention_kernel = "auto";
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  // vLLM's --scheduling-policy: fcfs (arrival order) | priority (requests' priority, then arrival;
  // worker::SchedulerConfig::priority_scheduling).
  std::string scheduling_policy = "fcfs";
  // Decode steps as CUDA graphs (worker::LlamaModelOptions::graph_batch_sizes), as vLLM's flags
  // of these names: one size N means 1, 2, 4 and the multiples of 8 up to N; several are the
  // list itself. Sizes past --max-num-seqs or --max-num-batched-tokens are dropped.
  bool enforce_eager = false;
  std::vector<int32_t> cuda_graph_sizes = {512};
};

void AddEngineFlags(CLI::App& app, EngineFlags& flags);
// --attention-kernel alone (bench-kernels, which takes no other engine flag).
void AddAttentionKernelFlag(CLI::App& app, std::string& attention_kernel);
// kInvalidArgument unless `name` is one of --attention-kernel's (auto, simt, tensor-cores).
absl::Status ValidateAttentionKernel(absl::string_view name);

// Whether a replica of `ranks` ranks can run on `flags.backend`: kInvalidArgument for an
// unknown backend or a negative device, kFailedPrecondition for cuda in a build without it (or,
// for several ranks, without NCCL) — named. Every role runs on either backend (a GPU cache's KV
// migrates through a host mirror: worker/kv_port.h).
absl::Status ValidateBackend(const EngineFlags& flags, int ranks);
// The backend of a replica's rank (cuda: GPU flags.device + `on_host`, the rank's index among
// its replica's ranks on its host, which is the replica rank when the replica is on one host),
// with `threads` CPU threads on the CPU backend.
absl::StatusOr<std::unique_ptr<kernels::Backend>> MakeRankBackend(const EngineFlags& flags,
                                                                  int threads, int on_host);

// The kernel benchmark's settings on `backend` before flags change them: activations f32 on the
// CPU backend (the only dtype it computes in) and the weights' dtype elsewhere; copy and GEMM
// probes sized for the device (1 GiB and 8192 on a GPU, 0.25 GiB and 2048 on the CPU); the grid
// of cases (the on a GPU, a smaller one that fits a small CPU machine). Shared by
// bench-kernels and bench-engine's peaks.
kernels::bench::KernelBenchOptions KernelBenchDefaults(absl::string_view backend, DataType weights);

// The sizes an engine is built with, derived from the flags and the model (and the rank's share
// of it under TP/PP): the model's workspace and activation dtype (on a GPU the weights' half
// type, from --dtype or the checkpoint's torch_dtype; else f32), max_model_len, the KV cache's
// dtype (auto: the activations') and the KV blocks per rank.
struct EngineLimits {
  worker::LlamaModelOptions model;
  int32_t max_model_len = 0;
  int32_t num_kv_blocks = 0;
  DataType kv_cache_dtype = DataType::kF32;
};
// `stage_layers`: the layers of the replica's largest pipeline stage, which the per-rank KV
// budget must hold (0: ceil(layers / pp_size), an even split's).
absl::StatusOr<EngineLimits> ComputeEngineLimits(const model::ModelConfig& config,
                                                 const EngineFlags& flags, int tp_size = 1,
                                                 int pp_size = 1, int64_t stage_layers = 0);
// The batch sizes whose decode steps run as graphs under `flags` (empty with --enforce-eager).
std::vector<int32_t> GraphBatchSizes(const EngineFlags& flags);
worker::EngineOptions EngineOptionsFor(const EngineFlags& flags, int32_t max_model_len);

// The tokenizer of model directory `model` as bytes per token, for structured outputs
// (EngineOptions::token_vocabulary). Null, with a log line, when `model` is not a directory, has
// no tokenizer.json, or its tokenizer is not byte-level: such a replica refuses structured outputs.
// A tokenizer.json that does not parse is an error.
absl::StatusOr<std::unique_ptr<model::TokenVocabulary>> LoadTokenVocabulary(
    const std::string& model, int32_t vocab_size);

// Parses "1,2,3" into token ids; kInvalidArgument naming the bad element.
absl::StatusOr<std::vector<int32_t>> ParseIdList(absl::string_view text);
// Parses a layer split, "10,6" (--pp-layers, a topology pool's pp_layers), into layers per stage,
// each >= 1; kInvalidArgument naming the bad element. "auto" and "" are the callers' to handle.
absl::StatusOr<std::vector<int64_t>> ParseLayerList(absl::string_view text);

}  // namespace tessera::launch
