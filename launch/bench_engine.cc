// `tessera bench-engine`: prefill and decode throughput of one in-process replica on a model shape
// with random weights, against the device's own peaks measured in the same run on the same
// backend (kernels/bench: a large on-device copy, a large Matmul): decode's weight and KV bytes/s
// as a ratio of the copy bandwidth (the roofline of a memory-bound step), prefill's FLOP/s as a
// ratio of the GEMM's. A benchmark: it reports, it never asserts.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "kernels/bench/kernel_bench.h"
#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/model_flags.h"
#include "launch/replica_runner.h"
#include "model/weights.h"
#include "parallel/comm/timed_communicator.h"
#include "worker/step.h"

namespace tessera::launch {
namespace {

struct BenchFlags {
  ModelShapeFlags shape;
  EngineFlags engine;
  ReplicaFlags replica;
  std::string weight_dtype = "bfloat16";
  std::vector<int32_t> batch_sizes = {1, 8};
  int32_t prompt_len = 128;
  int32_t decode_steps = 8;
  // Every row's sampling (default greedy); under TP, a top_k of at most 64 keeps the logits
  // ungathered (worker/vocab_parallel.h), so --top-k 50 against 65 measures that.
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  double copy_gib = 1.0;
  int64_t gemm_size = 0;  // 0: 8192 on cuda, 2048 on cpu
};

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Sequence s of a batch uses blocks [s * width, (s + 1) * width).
worker::StepPlan PrefillPlan(const model::ModelConfig& config, int32_t s, int32_t prompt_len,
                             int32_t block_size, int32_t width) {
  worker::StepPlan plan;
  for (int32_t p = 0; p < prompt_len; ++p) {
    plan.token_ids.push_back((s * 7919 + p * 104729) % static_cast<int32_t>(config.vocab_size));
    plan.positions.push_back(p);
    plan.slot_mapping.push_back(static_cast<int64_t>(s * width + p / block_size) * block_size +
                                p % block_size);
  }
  plan.query_start.push_back(prompt_len);
  plan.seq_lens.push_back(prompt_len);
  for (int32_t j = 0; j < width; ++j) plan.block_tables.push_back(s * width + j);
  plan.logits_rows.push_back(prompt_len - 1);
  plan.sampling.push_back({});
  return plan;
}

// One decode token for each of sequences [first, end).
worker::StepPlan DecodePlan(const model::ModelConfig& config, int32_t first, int32_t end,
                            int32_t pos, int32_t block_size, int32_t width,
                            const worker::SamplingRow& sampling) {
  worker::StepPlan plan;
  for (int32_t s = first; s < end; ++s) {
    plan.token_ids.push_back((s + pos) % static_cast<int32_t>(config.vocab_size));
    plan.positions.push_back(pos);
    plan.slot_mapping.push_back(static_cast<int64_t>(s * width + pos / block_size) * block_size +
                                pos % block_size);
    plan.query_start.push_back(s - first + 1);
    plan.seq_lens.push_back(pos + 1);
    for (int32_t j = 0; j < width; ++j) plan.block_tables.push_back(s * width + j);
    plan.logits_rows.push_back(s - first);
    plan.sampling.push_back(sampling);
    plan.sampling.back().seed = s;
    plan.sampling.back().step = pos;
  }
  return plan;
}

absl::Status Bench(BenchFlags flags) {
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, ModelConfigFromFlags(flags.shape));
  TESSERA_ASSIGN_OR_RETURN(DataType dtype, DataTypeFromName(flags.weight_dtype));
  config.torch_dtype = dtype;  // the random weights' (the engine's activations follow on a GPU)
  int32_t max_batch = 1;
  for (int32_t b : flags.batch_sizes) max_batch = std::max(max_batch, b);
  const int32_t seq_len = flags.prompt_len + flags.decode_steps;
  const int32_t block_size = flags.engine.block_size;
  flags.engine.max_num_seqs = std::max(flags.engine.max_num_seqs, max_batch);
  flags.engine.max_num_batched_tokens =
      std::max(flags.engine.max_num_batched_tokens, flags.prompt_len);
  flags.engine.max_model_len = seq_len;
  const int32_t width = (seq_len + block_size - 1) / block_size;
  flags.engine.num_kv_blocks = max_batch * width;

  double copy_bw = 0, gemm_flops = 0;
  {
    // The peaks of the backend the replica runs on (rank 0's device), then that backend goes.
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Backend> backend,
                             MakeRankBackend(flags.engine, flags.engine.threads, 0));
    kernels::bench::KernelBenchOptions probe = KernelBenchDefaults(flags.engine.backend, dtype);
    probe.copy_bytes = static_cast<size_t>(flags.copy_gib * (1 << 30));
    if (flags.gemm_size > 0) probe.gemm_size = flags.gemm_size;
    std::printf("device: %s\n", backend->Describe().c_str());
    std::fflush(stdout);
    TESSERA_ASSIGN_OR_RETURN(kernels::bench::Peaks peaks,
                             kernels::bench::MeasurePeaks(*backend, probe));
    copy_bw = peaks.copy_bytes_per_second;
    gemm_flops = peaks.gemm_flops_per_second;
    std::printf("%s\n", kernels::bench::FormatPeaks(peaks).c_str());
  }
  std::printf("making random weights (%s, %s)...\n", flags.shape.preset.c_str(),
              std::string(DataTypeName(dtype)).c_str());
  std::fflush(stdout);
  auto weights = model::MakeRandomWeights(config, dtype, /*seed=*/1);
  // weight_bytes: every tensor; decode_weight_bytes: what a decode step reads of them — all but
  // an untied embedding table, of which it reads only the batch's rows.
  double weight_bytes = 0, decode_weight_bytes = 0;
  for (const model::TensorSpec& spec : model::LlamaTensorSpecs(config)) {
    const double bytes = static_cast<double>(NumElements(spec.shape)) * DataTypeSize(dtype);
    weight_bytes += bytes;
    if (config.tie_word_embeddings || spec.name != "model.embed_tokens.weight") {
      decode_weight_bytes += bytes;
    }
  }
  const int tp = flags.replica.tensor_parallel_size;
  const int pp = flags.replica.pipeline_parallel_size;
  TESSERA_ASSIGN_OR_RETURN(const std::vector<int64_t> stage_layers,
                           LayersPerStage(config, flags.replica));
  std::printf(
      "model: %lld layers, hidden %lld, vocab %lld, weights %.2f GB; tp %d x pp %d%s\n",
      static_cast<long long>(config.num_hidden_layers), static_cast<long long>(config.hidden_size),
      static_cast<long long>(config.vocab_size), weight_bytes / 1e9, tp, pp,
      pp > 1 ? absl::StrCat(" (layers per stage ", absl::StrJoin(stage_layers, ","), ")").c_str()
             : "");
  // FLOPs of one prompt: every layer's matrices for each token, the LM head for the last, and
  // causal attention (4 * q_size per query-key pair).
  const double layer_params = static_cast<double>(config.hidden_size) *
                              static_cast<double>(config.q_size() + 2 * config.kv_size() +
                                                  config.q_size() + 3 * config.intermediate_size);
  const double prompt = flags.prompt_len;
  const double prompt_flops =
      2.0 * layer_params * static_cast<double>(config.num_hidden_layers) * prompt +
      2.0 * static_cast<double>(config.vocab_size * config.hidden_size) +
      4.0 * static_cast<double>(config.q_size() * config.num_hidden_layers) * prompt *
          (prompt + 1) / 2;

  TESSERA_ASSIGN_OR_RETURN(EngineLimits limits, ComputeEngineLimits(config, flags.engine));
  std::printf("activations %s, KV cache %s\n",
              std::string(DataTypeName(limits.model.activation_dtype)).c_str(),
              std::string(DataTypeName(limits.kv_cache_dtype)).c_str());
  const size_t kv_bytes_per_token = 2ull * static_cast<size_t>(config.num_hidden_layers) *
                                    static_cast<size_t>(config.kv_size()) *
                                    DataTypeSize(limits.kv_cache_dtype);
  worker::SamplingRow sampling;
  sampling.temperature = flags.temperature;
  sampling.top_k = flags.top_k;
  sampling.top_p = flags.top_p;
  parallel::CommStats comm;
  auto leader = [&](worker::StepExecutor& executor, int32_t, worker::KvEndpoint*) -> absl::Status {
    std::printf("decode steps in flight: %d\n", executor.max_steps_in_flight());
    if (flags.engine.backend == "cuda") {
      const std::vector<int32_t>& sizes = limits.model.graph_batch_sizes;
      std::printf("decode graphs: %s\n",
                  pp > 1 || sizes.empty()
                      ? "off (--enforce-eager, or pipeline stages)"
                      : absl::StrCat("batch sizes ", absl::StrJoin(sizes, ","),
                                     " (the first step of each size runs eagerly)")
                            .c_str());
    }
    std::printf("%6s %8s %14s %12s %14s %14s %10s %10s\n", "batch", "prompt", "prefill tok/s",
                "vs GEMM", "decode tok/s", "decode GB/s", "vs copy", "comm share");
    for (int32_t batch : flags.batch_sizes) {
      double prefill_seconds = 0;
      for (int32_t s = 0; s < batch; ++s) {
        const worker::StepPlan plan = PrefillPlan(config, s, flags.prompt_len, block_size, width);
        const auto start = std::chrono::steady_clock::now();
        TESSERA_RETURN_IF_ERROR(executor.Execute(plan).status());
        prefill_seconds += Seconds(start);
      }
      // With several steps in flight (a pipelined replica) the batch is split into as many
      // groups, submitted in turn as the engine's scheduler would: a group's next step goes in
      // once its previous one is collected.
      const int32_t groups = std::min(executor.max_steps_in_flight(), batch);
      comm.Reset();
      double kv_read = 0;
      int in_flight = 0;
      const auto start = std::chrono::steady_clock::now();
      for (int32_t step = 0; step < flags.decode_steps; ++step) {
        const int32_t pos = flags.prompt_len + step;
        for (int32_t g = 0; g < groups; ++g) {
          const worker::StepPlan plan =
              DecodePlan(config, batch * g / groups, batch * (g + 1) / groups, pos, block_size,
                         width, sampling);
          if (in_flight == groups) {
            TESSERA_RETURN_IF_ERROR(executor.Collect().status());
            --in_flight;
          }
          TESSERA_RETURN_IF_ERROR(executor.Submit(plan));
          ++in_flight;
        }
        kv_read += static_cast<double>(batch) * (pos + 1) * static_cast<double>(kv_bytes_per_token);
      }
      for (; in_flight > 0; --in_flight) TESSERA_RETURN_IF_ERROR(executor.Collect().status());
      const double decode_seconds = Seconds(start);
      const double prefill_tps = batch * static_cast<double>(flags.prompt_len) / prefill_seconds;
      const double decode_tps = batch * static_cast<double>(flags.decode_steps) / decode_seconds;
      const double decode_bytes =
          (decode_weight_bytes * flags.decode_steps + kv_read) / decode_seconds;
      const double prefill_flops = prompt_flops * batch / prefill_seconds;
      std::printf("%6d %8d %14.1f %11.1f%% %14.2f %14.2f %9.1f%% %9.1f%%\n", batch,
                  flags.prompt_len, prefill_tps, 100.0 * prefill_flops / gemm_flops, decode_tps,
                  decode_bytes / 1e9, 100.0 * decode_bytes / copy_bw,
                  100.0 * comm.seconds() / decode_seconds);
      std::fflush(stdout);
    }
    return absl::OkStatus();
  };
  bool is_leader = false;
  return RunReplica(config, *weights, flags.engine, flags.replica, leader, &is_leader, &comm);
}

}  // namespace

Command RegisterBenchEngine(CLI::App& app) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* sub = app.add_subcommand(
      "bench-engine",
      "Prefill and decode tokens/s of one in-process replica on random weights, with decode "
      "bytes/s against the device's copy bandwidth and prefill FLOP/s against its GEMM");
  AddModelShapeFlags(*sub, flags->shape);
  AddEngineFlags(*sub, flags->engine);
  AddReplicaFlags(*sub, flags->replica);
  sub->add_option("--weight-dtype", flags->weight_dtype, "float32, bfloat16 or float16")
      ->capture_default_str();
  sub->add_option("--batch-sizes", flags->batch_sizes, "Decode batch sizes")
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--prompt-len", flags->prompt_len)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--decode-steps", flags->decode_steps)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--temperature", flags->temperature, "Decode rows' temperature (0: greedy)")
      ->capture_default_str();
  sub->add_option("--top-k", flags->top_k, "Decode rows' top_k (0: all)")->capture_default_str();
  sub->add_option("--top-p", flags->top_p, "Decode rows' top_p")->capture_default_str();
  sub->add_option("--copy-gib", flags->copy_gib, "Size of the copy bandwidth probe")
      ->capture_default_str();
  sub->add_option("--gemm-size", flags->gemm_size,
                  "GEMM peak probe: M = N = K (default cuda 8192, cpu 2048)");
  return ExitCodeOf("bench-engine", [flags] { return Bench(*flags); });
}

}  // namespace tessera::launch
