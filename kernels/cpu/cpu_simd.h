// The inner loops of the CPU ops, built twice: portable C++ (cpu_simd_portable.cc) and
// AVX2+FMA+F16C intrinsics (cpu_simd_avx2.cc, compiled for those instructions only inside its
// functions). The CPU backend picks one set at construction. All pointers are host memory,
// counts are elements, and every function is thread-safe (no state).
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace tessera::kernels::cpu {

struct SimdKernels {
  const char* name;  // "portable", "avx2"

  // dst[i] = src[i] converted to f32, src of dtype f32, f16 or bf16.
  void (*to_f32)(DataType src_dtype, const void* src, float* dst, int64_t count);
  // dst[i] = src[i] converted to dst_dtype (f32, f16 or bf16), bit for bit as ConvertFromF32
  // (round to nearest even; NaN as there).
  void (*from_f32)(const float* src, DataType dst_dtype, void* dst, int64_t count);

  // The skinny product of decode: out[i * ldo + j] = sum_c x[i * ldx + c] * w[j * k + c] for
  // i < m and row_begin <= j < row_end, where w (f32, f16 or bf16) is converted on the fly and
  // read once per call whatever m is. Meant for small m (a few rows).
  void (*skinny_matmul)(const float* x, int64_t m, int64_t ldx, const void* w, DataType w_dtype,
                        int64_t k, int64_t row_begin, int64_t row_end, float* out, int64_t ldo);

  // scores[i * lds + j] = dot(q[i * d, +d), k[j * d, +d)) for i < nq, j < nk.
  void (*qk_scores)(const float* q, int64_t nq, const float* k, int64_t nk, int64_t d,
                    float* scores, int64_t lds);

  // acc[i * d + c] += sum_j p[i * ldp + j] * v[j * d + c] for i < nq, c < d.
  void (*pv_accumulate)(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk,
                        int64_t d, float* acc);

  // values[j] = exp(values[j] - shift) for j < count (arguments <= 0, as in a softmax);
  // returns their sum. Within a few ulp of std::exp.
  float (*exp_shifted)(float* values, int64_t count, float shift);
  // sum_j exp(values[j] - shift), exponentials in f32 as exp_shifted, summed in double.
  double (*sum_exp_shifted)(const float* values, int64_t count, float shift);

  // out[j] = silu(gate[j]) * up[j] for j < count, silu(g) = g / (1 + exp(-g)), finite for every
  // finite g. `out` may be `gate` (in place).
  void (*swiglu)(const float* gate, const float* up, float* out, int64_t count);
};

const SimdKernels& PortableKernels();
// nullptr when the CPU lacks AVX2, FMA or F16C.
const SimdKernels* Avx2Kernels();

}  // namespace tessera::kernels::cpu
