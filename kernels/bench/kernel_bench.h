// The kernel benchmark behind `tessera bench-kernels`: every op of kernels/ops.h at a model's
// shapes (Llama-3-8B by default), timed on one backend, and reported next to that device's own
// peaks measured in the same run — a large on-device copy (bandwidth) and a large matrix
// multiply through the backend's Matmul (cuBLAS on CUDA) — as ratios. A benchmark: it reports,
// it never asserts on time.
//
// Each case counts the bytes the op must move at least (every input read once, every output
// written once) and the floating-point operations it must do, so that
//   bandwidth ratio = (bytes / seconds) / copy peak,   compute ratio = (flops / seconds) / GEMM
//   peak.
// Operands are cycled through enough copies (`rotate_bytes`) that the device's caches cannot
// serve a case that DRAM must serve in a model, the way the layers of a model follow each other.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "kernels/backend.h"

namespace tessera::kernels::bench {

// The per-layer shapes of the model whose ops are measured.
struct KernelShape {
  int64_t hidden = 4096;
  int64_t q_heads = 32;
  int64_t kv_heads = 8;
  int64_t head_dim = 128;
  int64_t intermediate = 14336;
  int64_t vocab = 128256;
};

struct KernelBenchOptions {
  KernelShape shape;
  DataType dtype = DataType::kBF16;                        // weights, embedding table, KV cache
  DataType activation_dtype = DataType::kBF16;             // activations (f32 on the CPU backend)
  std::vector<int64_t> batch_sizes = {1, 8, 32, 64, 256};  // decode rows
  std::vector<int64_t> contexts = {1024, 4096, 32768};     // decode attention, per sequence
  std::vector<int64_t> prefill_tokens = {4096};            // prefill rows (one sequence)
  int32_t block_size = 16;
  // Peaks: a copy of copy_bytes (read + written, as STREAM's copy counts), and a square
  // Matmul of gemm_size in `dtype`.
  size_t copy_bytes = size_t{1} << 30;
  int64_t gemm_size = 8192;
  // Cases whose buffers exceed max_case_bytes, or whose estimate at the measured peaks exceeds
  // max_case_seconds, are skipped with the reason (not an error).
  size_t max_case_bytes = size_t{16} << 30;
  double max_case_seconds = 5.0;
  size_t rotate_bytes = size_t{256} << 20;
  double min_seconds = 0.05;     // one measurement launches the op until at least this long
  int repeats = 3;               // measurements per case; the fastest counts
  std::vector<std::string> ops;  // empty: every op of KernelOpNames()
};

struct Peaks {
  double copy_bytes_per_second = 0;
  double gemm_flops_per_second = 0;
  std::string copy_what;  // "2 x 1.00 GiB CopyOnDevice"
  std::string gemm_what;  // "Matmul 8192x8192x8192 bfloat16"
};

// A target of issue #8: the case should reach `ratio` of the copy peak (bandwidth) or of the GEMM
// peak (compute).
struct Target {
  enum class Kind { kNone, kBandwidth, kCompute };
  Kind kind = Kind::kNone;
  double ratio = 0;
};

struct KernelResult {
  std::string op;      // one of KernelOpNames()
  std::string shape;   // "tokens=8 hidden=4096", "batch=32 context=4096", ...
  double seconds = 0;  // per call, the fastest measurement
  double bytes = 0;    // the least the op moves
  double flops = 0;
  double bandwidth_ratio = 0;  // of Peaks::copy_bytes_per_second
  double compute_ratio = 0;    // of Peaks::gemm_flops_per_second
  Target target;
  bool meets_target() const;
};

struct SkippedCase {
  std::string op, shape, reason;
};

struct KernelBenchReport {
  std::string device;  // Backend::Describe()
  std::string backend;
  DataType dtype = DataType::kBF16;
  DataType activation_dtype = DataType::kBF16;
  KernelShape shape;
  Peaks peaks;
  std::vector<KernelResult> results;
  std::vector<SkippedCase> skipped;
};

// embedding, add_rms_norm, rope, swiglu, kv_write, matmul, decode_attention, prefill_attention,
// sample_greedy, sample_top_p, apply_penalties: every op of kernels/ops.h.
const std::vector<std::string>& KernelOpNames();

// kInvalidArgument for options that cannot run (unknown op, non-positive sizes, head counts that
// do not divide, dtypes a backend op refuses show up as that op's error).
absl::Status ValidateKernelBenchOptions(const KernelBenchOptions& options);

// The copy and GEMM peaks of `backend`, as RunKernelBench measures them.
absl::StatusOr<Peaks> MeasurePeaks(Backend& backend, const KernelBenchOptions& options);

// Every case, against `peaks` (MeasurePeaks' of the same backend). `on_result`, when given,
// hears each result as it comes (for progress). Errors: invalid options; an op that fails (named
// with its case); out of device memory on a case the caps let through.
absl::StatusOr<KernelBenchReport> RunKernelBench(
    Backend& backend, const KernelBenchOptions& options, const Peaks& peaks,
    const std::function<void(const KernelResult&)>& on_result = nullptr);

// The table's lines, for printing as the results come: the peaks (two lines), the header, one
// line per result (op, shape, microseconds, GB/s, TFLOP/s, the two ratios, the target) and one
// per skipped case.
std::string FormatPeaks(const Peaks& peaks);
std::string FormatHeader();
std::string FormatResultLine(const KernelResult& result);
std::string FormatSkippedLine(const SkippedCase& skipped);
// The report as JSON (one object: device, backend, dtypes, shape, peaks, results, skipped).
std::string ReportToJson(const KernelBenchReport& report);

}  // namespace tessera::kernels::bench
