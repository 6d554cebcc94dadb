// `tessera bench-kernels`: every kernel op at a model's shapes (Llama-3-8B by default) on one
// backend, as GB/s and TFLOP/s next to the device's copy and GEMM peaks measured in the same run
// (kernels/bench/kernel_bench.h). A benchmark: it reports, it never asserts.
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/bench/kernel_bench.h"
#include "launch/commands.h"
#include "launch/engine_setup.h"
#include "launch/model_flags.h"

namespace tessera::launch {
namespace {

struct BenchKernelsFlags {
  ModelShapeFlags shape;
  std::string backend = "cpu";
  int device = 0;
  std::string attention_kernel = "auto";
  int32_t threads = 0;
  std::string dtype = "bfloat16";
  std::string activation_dtype = "auto";
  // Empty: the backend's default grid (the GPU's is the issue's; the CPU's fits a small machine).
  std::vector<int64_t> batch_sizes, contexts, prefill_tokens;
  std::vector<std::string> ops;
  double copy_gib = 0;    // 0: 1 on cuda, 0.25 on cpu
  int64_t gemm_size = 0;  // 0: 8192 on cuda, 2048 on cpu
  double max_gib = 16;
  double max_case_seconds = 5;
  double rotate_mib = 256;
  double min_seconds = 0.05;
  int repeats = 3;
  std::string json;
};

absl::Status Run(const BenchKernelsFlags& flags) {
  TESSERA_ASSIGN_OR_RETURN(model::ModelConfig config, ModelConfigFromFlags(flags.shape));
  EngineFlags engine;
  engine.backend = flags.backend;
  engine.device = flags.device;
  engine.attention_kernel = flags.attention_kernel;
  TESSERA_RETURN_IF_ERROR(ValidateBackend(engine, /*ranks=*/1));
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Backend> backend,
                           MakeRankBackend(engine, flags.threads, /*on_host=*/0));
  TESSERA_ASSIGN_OR_RETURN(const DataType dtype, DataTypeFromName(flags.dtype));
  kernels::bench::KernelBenchOptions options = KernelBenchDefaults(flags.backend, dtype);
  options.shape = {config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                   config.head_dim,    config.intermediate_size,   config.vocab_size};
  if (flags.activation_dtype != "auto") {
    TESSERA_ASSIGN_OR_RETURN(options.activation_dtype, DataTypeFromName(flags.activation_dtype));
  }
  if (!flags.batch_sizes.empty()) options.batch_sizes = flags.batch_sizes;
  if (!flags.contexts.empty()) options.contexts = flags.contexts;
  if (!flags.prefill_tokens.empty()) options.prefill_tokens = flags.prefill_tokens;
  options.ops = flags.ops;
  if (flags.copy_gib > 0) options.copy_bytes = static_cast<size_t>(flags.copy_gib * (1 << 30));
  if (flags.gemm_size > 0) options.gemm_size = flags.gemm_size;
  options.max_case_bytes = static_cast<size_t>(flags.max_gib * (1 << 30));
  options.max_case_seconds = flags.max_case_seconds;
  options.rotate_bytes = static_cast<size_t>(flags.rotate_mib * (1 << 20));
  options.min_seconds = flags.min_seconds;
  options.repeats = flags.repeats;
  TESSERA_RETURN_IF_ERROR(kernels::bench::ValidateKernelBenchOptions(options));

  std::printf("device: %s (%s)\n", backend->Describe().c_str(), flags.backend.c_str());
  if (flags.backend == "cuda") {
    std::printf("attention kernel: %s\n", flags.attention_kernel.c_str());
  }
  std::printf("shape: hidden %lld, heads %lld/%lld x %lld, intermediate %lld, vocab %lld\n",
              static_cast<long long>(options.shape.hidden),
              static_cast<long long>(options.shape.q_heads),
              static_cast<long long>(options.shape.kv_heads),
              static_cast<long long>(options.shape.head_dim),
              static_cast<long long>(options.shape.intermediate),
              static_cast<long long>(options.shape.vocab));
  std::printf("dtypes: weights and KV %s, activations %s\n",
              std::string(DataTypeName(options.dtype)).c_str(),
              std::string(DataTypeName(options.activation_dtype)).c_str());
  std::fflush(stdout);
  TESSERA_ASSIGN_OR_RETURN(kernels::bench::Peaks peaks,
                           kernels::bench::MeasurePeaks(*backend, options));
  std::printf("%s\n%s\n", kernels::bench::FormatPeaks(peaks).c_str(),
              kernels::bench::FormatHeader().c_str());
  std::fflush(stdout);
  TESSERA_ASSIGN_OR_RETURN(kernels::bench::KernelBenchReport report,
                           kernels::bench::RunKernelBench(
                               *backend, options, peaks, [](const kernels::bench::KernelResult& r) {
                                 std::printf("%s\n", kernels::bench::FormatResultLine(r).c_str());
                                 std::fflush(stdout);
                               }));
  for (const auto& s : report.skipped) {
    std::printf("%s\n", kernels::bench::FormatSkippedLine(s).c_str());
  }
  if (!flags.json.empty()) {
    std::ofstream out(flags.json);
    out << kernels::bench::ReportToJson(report) << "\n";
    out.close();
    if (!out) return absl::UnavailableError(absl::StrCat("could not write --json ", flags.json));
  }
  return absl::OkStatus();
}

}  // namespace

Command RegisterBenchKernels(CLI::App& app) {
  auto flags = std::make_shared<BenchKernelsFlags>();
  flags->shape.preset = "llama-8b";
  CLI::App* sub = app.add_subcommand(
      "bench-kernels",
      "Every kernel op at a model's shapes (default Llama-3-8B), as GB/s and TFLOP/s against "
      "this device's copy and GEMM peaks measured in the same run");
  AddModelShapeFlags(*sub, flags->shape);
  sub->add_option("--backend", flags->backend, "cpu or cuda")->capture_default_str();
  sub->add_option("--device", flags->device, "CUDA device ordinal")->capture_default_str();
  AddAttentionKernelFlag(*sub, flags->attention_kernel);
  sub->add_option("--threads", flags->threads, "CPU threads (0: all cores)")->capture_default_str();
  sub->add_option("--dtype", flags->dtype, "Weights and KV cache: float32, bfloat16, float16")
      ->capture_default_str();
  sub->add_option("--activation-dtype", flags->activation_dtype,
                  "auto (float32 on cpu, --dtype on cuda), float32, bfloat16, float16")
      ->capture_default_str();
  sub->add_option("--batch-sizes", flags->batch_sizes,
                  "Decode rows (default cuda 1,8,32,64,256; cpu 1,8,32)")
      ->delimiter(',');
  sub->add_option("--contexts", flags->contexts,
                  "Decode attention contexts (default cuda 1024,4096,32768; cpu 1024,4096)")
      ->delimiter(',');
  sub->add_option("--prefill-tokens", flags->prefill_tokens,
                  "Prefill rows (default cuda 4096; cpu 512)")
      ->delimiter(',');
  sub->add_option(
         "--ops", flags->ops,
         "Only these ops (embedding, add_rms_norm, rope, swiglu, kv_write, matmul, "
         "decode_attention, prefill_attention, sample_greedy, sample_top_p, apply_penalties)")
      ->delimiter(',');
  sub->add_option("--copy-gib", flags->copy_gib, "Copy peak probe size (default cuda 1, cpu 0.25)");
  sub->add_option("--gemm-size", flags->gemm_size,
                  "GEMM peak probe: M = N = K (default cuda 8192, cpu 2048)");
  sub->add_option("--max-gib", flags->max_gib, "Skip cases whose buffers need more")
      ->capture_default_str();
  sub->add_option("--max-case-seconds", flags->max_case_seconds,
                  "Skip cases that would take longer at the measured peaks")
      ->capture_default_str();
  sub->add_option("--rotate-mib", flags->rotate_mib,
                  "Operands are cycled through copies totalling this much, so caches do not serve "
                  "what memory serves in a model")
      ->capture_default_str();
  sub->add_option("--min-seconds", flags->min_seconds, "Length of one measurement")
      ->capture_default_str();
  sub->add_option("--repeats", flags->repeats, "Measurements per case (the fastest counts)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--json", flags->json, "Also write the report as JSON to this file");
  return ExitCodeOf("bench-kernels", [flags] { return Run(*flags); });
}

}  // namespace tessera::launch
