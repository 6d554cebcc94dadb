// Portable builds of the CPU inner loops: plain C++ that the compiler vectorises for the
// baseline instruction set (reductions through `omp simd`).
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_simd.h"

namespace tessera::kernels::cpu {
namespace {

void ToF32(DataType src_dtype, const void* src, float* dst, int64_t count) {
  switch (src_dtype) {
    case DataType::kBF16: {
      const auto* in = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < count; ++i) dst[i] = BF16ToF32(in[i]);
      return;
    }
    default:
      ConvertToF32(src_dtype, src, dst, static_cast<size_t>(count));
  }
}

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void SkinnyMatmul(const float* x, int64_t m, int64_t ldx, const void* w, DataType w_dtype,
                  int64_t k, int64_t row_begin, int64_t row_end, float* out, int64_t ldo) {
  std::vector<float> row(w_dtype == DataType::kF32 ? 0 : static_cast<size_t>(k));
  const size_t w_size = DataTypeSize(w_dtype);
  for (int64_t j = row_begin; j < row_end; ++j) {
    const void* w_row = static_cast<const char*>(w) + j * k * static_cast<int64_t>(w_size);
    const float* r = static_cast<const float*>(w_row);
    if (w_dtype != DataType::kF32) {
      ToF32(w_dtype, w_row, row.data(), k);
      r = row.data();
    }
    for (int64_t i = 0; i < m; ++i) out[i * ldo + j] = Dot(x + i * ldx, r, k);
  }
}

void QkScores(const float* q, int64_t nq, const float* k, int64_t nk, int64_t d, float* scores,
              int64_t lds) {
  for (int64_t j = 0; j < nk; ++j) {
    for (int64_t i = 0; i < nq; ++i) scores[i * lds + j] = Dot(q + i * d, k + j * d, d);
  }
}

void PvAccumulate(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk, int64_t d,
                  float* acc) {
  for (int64_t i = 0; i < nq; ++i) {
    float* a = acc + i * d;
    for (int64_t j = 0; j < nk; ++j) {
      const float weight = p[i * ldp + j];
      const float* vj = v + j * d;
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) a[c] += weight * vj[c];
    }
  }
}

float ExpShifted(float* values, int64_t count, float shift) {
  float sum = 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    values[j] = std::exp(values[j] - shift);
    sum += values[j];
  }
  return sum;
}

double SumExpShifted(const float* values, int64_t count, float shift) {
  double sum = 0.0;
  for (int64_t j = 0; j < count; ++j) sum += std::exp(values[j] - shift);
  return sum;
}

void Swiglu(const float* gate, const float* up, float* out, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const float g = gate[j];
    out[j] = g / (1.0f + std::exp(-g)) * up[j];
  }
}

void FromF32(const float* src, DataType dst_dtype, void* dst, int64_t count) {
  ConvertFromF32(src, dst_dtype, dst, static_cast<size_t>(count));
}

constexpr SimdKernels kPortable = {
    .name = "portable",
    .to_f32 = &ToF32,
    .from_f32 = &FromF32,
    .skinny_matmul = &SkinnyMatmul,
    .qk_scores = &QkScores,
    .pv_accumulate = &PvAccumulate,
    .exp_shifted = &ExpShifted,
    .sum_exp_shifted = &SumExpShifted,
    .swiglu = &Swiglu,
};

}  // namespace

const SimdKernels& PortableKernels() { return kPortable; }

}  // namespace tessera::kernels::cpu
