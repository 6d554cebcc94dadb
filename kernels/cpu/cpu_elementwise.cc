// Row-wise ops on the CPU: Embedding, RmsNorm, Rope, Swiglu. Each parallelises over rows
// (tokens) with OpenMP; within a row the arithmetic follows Hugging Face's f32 order.
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_internal.h"

namespace tessera::kernels::cpu {
namespace {

// Element offset of row `r` of `view` seen as [rows, last dim] (rank 2 or 3).
int64_t RowOffset(const TensorView& view, int64_t r) {
  if (view.rank() == 2) return r * view.stride(0);
  const int64_t inner = view.dim(1);
  return (r / inner) * view.stride(0) + (r % inner) * view.stride(1);
}

std::vector<float> ToF32Vector(const SimdKernels& simd, const TensorView& view) {
  std::vector<float> values(static_cast<size_t>(view.numel()));
  simd.to_f32(view.dtype(), view.data(), values.data(), view.numel());
  return values;
}

}  // namespace

absl::Status CpuEmbedding(Backend& backend, const EmbeddingParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t tokens = p.ids.dim(0);
  const int64_t rows = p.table.dim(0);
  const int64_t hidden = p.table.dim(1);
  const int32_t* ids = p.ids.data_as<int32_t>();
  const size_t table_size = p.table.element_size();
  const SimdKernels& simd = cpu.simd();
  const int threads = ThreadsFor(cpu, tokens, hidden);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    float* out = p.output.data_as<float>() + t * p.output.stride(0);
    const int64_t row = static_cast<int64_t>(ids[t]) - p.row_offset;
    if (row < 0 || row >= rows) {
      std::fill(out, out + hidden, 0.0f);
    } else {
      simd.to_f32(p.table.dtype(), ElementPtr(p.table.data(), row * p.table.stride(0), table_size),
                  out, hidden);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuRmsNorm(Backend& backend, const RmsNormParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t hidden = p.input.dim(-1);
  const int64_t rows = p.input.numel() / hidden;
  const std::vector<float> weight = ToF32Vector(cpu.simd(), p.weight);
  const bool fused = !p.residual.empty();
  const float epsilon = p.epsilon;
  const int threads = ThreadsFor(cpu, rows, hidden);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = p.input.data_as<float>() + RowOffset(p.input, r);
    float* out = p.output.data_as<float>() + RowOffset(p.output, r);
    const float* x = in;
    if (fused) {
      float* res = p.residual.data_as<float>() + RowOffset(p.residual, r);
      for (int64_t c = 0; c < hidden; ++c) res[c] = in[c] + res[c];
      x = res;
    }
    // HF: variance = x.pow(2).mean(-1) in f32 (squares rounded to f32, an accurate sum).
    double sum = 0.0;
    for (int64_t c = 0; c < hidden; ++c) sum += static_cast<double>(x[c] * x[c]);
    const float variance = static_cast<float>(sum) / static_cast<float>(hidden);
    const float inv_rms = 1.0f / std::sqrt(variance + epsilon);
    for (int64_t c = 0; c < hidden; ++c) out[c] = weight[c] * (x[c] * inv_rms);
  }
  return absl::OkStatus();
}

absl::Status CpuRope(Backend& backend, const RopeParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t tokens = p.query.dim(0);
  const int64_t q_heads = p.query.dim(1);
  const int64_t kv_heads = p.key.dim(1);
  const int64_t half = p.inv_freq.dim(0);
  if (half == 0) return absl::OkStatus();
  const float* inv_freq = p.inv_freq.data_as<float>();
  const int32_t* positions = p.positions.data_as<int32_t>();
  const int threads = ThreadsFor(cpu, tokens, (q_heads + kv_heads) * half * 8);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> cos(static_cast<size_t>(half));
    std::vector<float> sin(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const auto position = static_cast<float>(positions[t]);
      for (int64_t j = 0; j < half; ++j) {
        const float angle = position * inv_freq[j];  // HF: inv_freq @ position_ids in f32
        cos[j] = std::cos(angle);
        sin[j] = std::sin(angle);
      }
      const auto rotate = [&](const MutableTensorView& view, int64_t heads) {
        for (int64_t h = 0; h < heads; ++h) {
          float* x = view.data_as<float>() + t * view.stride(0) + h * view.stride(1);
          for (int64_t j = 0; j < half; ++j) {
            const float x1 = x[j];
            const float x2 = x[j + half];
            x[j] = x1 * cos[j] - x2 * sin[j];
            x[j + half] = x2 * cos[j] + x1 * sin[j];
          }
        }
      };
      rotate(p.query, q_heads);
      rotate(p.key, kv_heads);
    }
  }
  return absl::OkStatus();
}

absl::Status CpuSwiglu(Backend& backend, const SwigluParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t tokens = p.gate_up.dim(0);
  const int64_t inter = p.output.dim(1);
  const int threads = ThreadsFor(cpu, tokens, inter * 8);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < tokens; ++t) {
    const float* gate = p.gate_up.data_as<float>() + t * p.gate_up.stride(0);
    const float* up = gate + inter;
    cpu.simd().swiglu(gate, up, p.output.data_as<float>() + t * p.output.stride(0), inter);
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cpu
