// Matmul on the CPU: output[m, n] = input[m, k] * weight[n, k]^T + bias.
//  - small m (decode batches; up to 32 rows for f32 weights, 64 for f16/bf16, where it measured
//    faster than converting plus sgemm on a Zen 3 core): the SIMD skinny kernel, rows of the weight
//    split across threads, each weight byte read once and converted in registers. Decode is bound
//    by memory bandwidth, so reading bf16/f16 weights directly halves its cost.
//  - larger m (prefill): the weight in blocks of rows, each converted to f32 (when it is not)
//    into a per-thread buffer that stays in cache, then one single-threaded cblas_sgemm per
//    block; blocks are spread over the OpenMP threads.
#include <omp.h>

#include <algorithm>
#include <vector>

#include <cblas.h>

#include "kernels/cpu/cpu_internal.h"

namespace tessera::kernels::cpu {
namespace {

// Largest m that takes the skinny kernel.
int64_t SkinnyMaxRows(DataType weight_dtype) { return weight_dtype == DataType::kF32 ? 32 : 64; }

void SkinnyPath(const CpuBackend& cpu, const MatmulParams& p, const float* x, int64_t ldx,
                float* out, int64_t ldo) {
  const int64_t m = p.input.dim(0);
  const int64_t k = p.input.dim(1);
  const int64_t n = p.weight.dim(0);
  constexpr int64_t kChunk = 48;  // a multiple of the kernels' 3- and 4-row tiles
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const int threads = ThreadsFor(cpu, chunks, kChunk * k * m);
  const SimdKernels& simd = cpu.simd();
  const void* w = p.weight.data();
  const DataType w_dtype = p.weight.dtype();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    simd.skinny_matmul(x, m, ldx, w, w_dtype, k, c * kChunk, std::min(n, (c + 1) * kChunk), out,
                       ldo);
  }
}

void BlasPath(const CpuBackend& cpu, const MatmulParams& p, const float* x, int64_t ldx, float* out,
              int64_t ldo) {
  const int64_t m = p.input.dim(0);
  const int64_t k = p.input.dim(1);
  const int64_t n = p.weight.dim(0);
  const DataType w_dtype = p.weight.dtype();
  const bool convert = w_dtype != DataType::kF32;
  const int max_threads = cpu.num_threads();
  // Converted blocks of about 1 MiB; f32 weights go in one block per thread.
  int64_t block;
  if (convert) {
    block = std::clamp<int64_t>((1 << 20) / (4 * k) / 16 * 16, 16, 512);
  } else {
    block = std::max<int64_t>(16, (n + max_threads - 1) / max_threads);
  }
  if (block * max_threads > n) block = std::max<int64_t>(1, (n + max_threads - 1) / max_threads);
  const int64_t blocks = (n + block - 1) / block;
  const int threads = ThreadsFor(cpu, blocks, block * k * m);
  const SimdKernels& simd = cpu.simd();
  const size_t w_size = DataTypeSize(w_dtype);
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> buffer(convert ? static_cast<size_t>(block * k) : 0);
#pragma omp for schedule(dynamic)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t row = b * block;
      const int64_t rows = std::min(block, n - row);
      const void* w = ElementPtr(p.weight.data(), row * k, w_size);
      const float* wf = static_cast<const float*>(w);
      if (convert) {
        simd.to_f32(w_dtype, w, buffer.data(), rows * k);
        wf = buffer.data();
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m),
                  static_cast<int>(rows), static_cast<int>(k), 1.0f, x, static_cast<int>(ldx), wf,
                  static_cast<int>(k), 0.0f, out + row, static_cast<int>(ldo));
    }
  }
}

}  // namespace

absl::Status CpuMatmul(Backend& backend, const MatmulParams& p, Stream&) {
  const CpuBackend& cpu = CpuBackend::From(backend);
  const int64_t m = p.input.dim(0);
  const int64_t k = p.input.dim(1);
  const int64_t n = p.weight.dim(0);
  if (m == 0 || n == 0) return absl::OkStatus();
  if (k > INT32_MAX || n > INT32_MAX || m > INT32_MAX) {
    return absl::InvalidArgumentError("Matmul: dimensions past 2^31 are not supported on cpu");
  }
  const float* x = p.input.data_as<float>();
  float* out = p.output.data_as<float>();
  // A single row's stride is irrelevant; BLAS still wants a leading dimension >= k (or n).
  // Outputs never overlap themselves (kernels/ops.cc), so ldo >= n when m > 1.
  const int64_t ldx = m == 1 ? k : p.input.stride(0);
  const int64_t ldo = m == 1 ? n : p.output.stride(0);
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i) std::fill(out + i * ldo, out + i * ldo + n, 0.0f);
  } else if (m <= SkinnyMaxRows(p.weight.dtype())) {
    SkinnyPath(cpu, p, x, ldx, out, ldo);
  } else if (ldx >= k) {
    BlasPath(cpu, p, x, ldx, out, ldo);
  } else {  // rows that share elements (a broadcast input): BLAS wants them apart
    std::vector<float> packed(static_cast<size_t>(m * k));
    for (int64_t i = 0; i < m; ++i) std::copy(x + i * ldx, x + i * ldx + k, &packed[i * k]);
    BlasPath(cpu, p, packed.data(), k, out, ldo);
  }
  if (!p.bias.empty()) {
    std::vector<float> bias(static_cast<size_t>(n));
    cpu.simd().to_f32(p.bias.dtype(), p.bias.data(), bias.data(), n);
    for (int64_t i = 0; i < m; ++i) {
      float* row = out + i * ldo;
      for (int64_t j = 0; j < n; ++j) row[j] += bias[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::kernels::cpu
