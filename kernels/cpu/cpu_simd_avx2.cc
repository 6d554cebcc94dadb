// AVX2+FMA+F16C builds of the CPU inner loops. Everything after the target pragma is compiled
// for those instructions and lives in an anonymous namespace, so no inline function compiled
// here can stand in for a baseline build elsewhere; Avx2Kernels() (compiled for the baseline)
// hands them out only when the CPU has the instructions.
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_simd.h"

namespace tessera::kernels::cpu {
namespace {

#if defined(__clang__)  // clang-tidy parses this file with clang
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

template <DataType W>
inline __m256 Load8(const void* base, int64_t index) {
  if constexpr (W == DataType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + index);
  } else {
    const __m128i half = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + index));
    if constexpr (W == DataType::kBF16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
    } else {
      return _mm256_cvtph_ps(half);
    }
  }
}

template <DataType W>
inline float Load1(const void* base, int64_t index) {
  if constexpr (W == DataType::kF32) {
    return static_cast<const float*>(base)[index];
  } else if constexpr (W == DataType::kBF16) {
    return BF16ToF32(static_cast<const uint16_t*>(base)[index]);
  } else {
    return _cvtsh_ss(static_cast<const uint16_t*>(base)[index]);
  }
}

inline float HorizontalSum(__m256 v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 shuffled = _mm_movehdup_ps(sum);
  sum = _mm_add_ps(sum, shuffled);
  shuffled = _mm_movehl_ps(shuffled, sum);
  return _mm_cvtss_f32(_mm_add_ss(sum, shuffled));
}

template <DataType W>
void ToF32Typed(const void* src, float* dst, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, Load8<W>(src, i));
  for (; i < count; ++i) dst[i] = Load1<W>(src, i);
}

void ToF32(DataType src_dtype, const void* src, float* dst, int64_t count) {
  switch (src_dtype) {
    case DataType::kBF16:
      return ToF32Typed<DataType::kBF16>(src, dst, count);
    case DataType::kF16:
      return ToF32Typed<DataType::kF16>(src, dst, count);
    default:
      std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
  }
}

// 8 lanes of 32 bits holding 16-bit values, stored as 8 contiguous uint16.
inline void Store8x16(__m256i values, uint16_t* out) {
  // packus works within 128-bit halves: [v0..v3 v0..v3 | v4..v7 v4..v7]; keep qwords 0 and 2.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(values, values), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
}

void FromF32(const float* src, DataType dst_dtype, void* dst, int64_t count) {
  if (dst_dtype != DataType::kBF16 && dst_dtype != DataType::kF16) {
    ConvertFromF32(src, dst_dtype, dst, static_cast<size_t>(count));
    return;
  }
  auto* out = static_cast<uint16_t*>(dst);
  int64_t i = 0;
  if (dst_dtype == DataType::kBF16) {
    // As F32ToBF16: add 0x7fff plus the kept part's lowest bit, keep the high half; NaN keeps its
    // high half with the quiet bit set.
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i half = _mm256_set1_epi32(0x7fff);
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    const __m256i inf = _mm256_set1_epi32(0x7f800000);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    for (; i + 8 <= count; i += 8) {
      const __m256i w = _mm256_castps_si256(_mm256_loadu_ps(src + i));
      const __m256i high = _mm256_srli_epi32(w, 16);
      const __m256i rounded = _mm256_srli_epi32(
          _mm256_add_epi32(w, _mm256_add_epi32(half, _mm256_and_si256(high, one))), 16);
      const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(w, abs_mask), inf);
      Store8x16(_mm256_blendv_epi8(rounded, _mm256_or_si256(high, quiet), nan), out + i);
    }
    for (; i < count; ++i) out[i] = F32ToBF16(src[i]);
    return;
  }
  // f16 through F16C (IEEE round to nearest even, subnormals, overflow to infinity, as
  // F32ToF16); a group holding a NaN goes through F32ToF16, whose NaN is canonical.
  for (; i + 8 <= count; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0) {
      for (int64_t j = i; j < i + 8; ++j) out[j] = F32ToF16(src[j]);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < count; ++i) out[i] = F32ToF16(src[i]);
}

// out[i, row + r] for i < M, r < R: M input rows against R weight rows, 8 columns at a time.
template <DataType W, int M, int R>
void SkinnyTile(const float* x, int64_t ldx, const char* w, int64_t w_pitch, int64_t k, int64_t row,
                float* out, int64_t ldo) {
  __m256 acc[M][R];
#pragma GCC unroll 4
  for (int i = 0; i < M; ++i) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) acc[i][r] = _mm256_setzero_ps();
  }
  const char* rows[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) rows[r] = w + (row + r) * w_pitch;
  int64_t c = 0;
  for (; c + 8 <= k; c += 8) {
    __m256 wv[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wv[r] = Load8<W>(rows[r], c);
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + c);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
    }
  }
  for (int i = 0; i < M; ++i) {
    for (int r = 0; r < R; ++r) {
      float sum = HorizontalSum(acc[i][r]);
      for (int64_t t = c; t < k; ++t) sum += x[i * ldx + t] * Load1<W>(rows[r], t);
      out[i * ldo + row + r] = sum;
    }
  }
}

template <DataType W, int M>
void SkinnyRows(const float* x, int64_t ldx, const char* w, int64_t w_pitch, int64_t k,
                int64_t row_begin, int64_t row_end, float* out, int64_t ldo) {
  constexpr int R = M <= 2 ? 4 : 3;  // M * R accumulators + R weights + 1 input <= 16 registers
  int64_t j = row_begin;
  for (; j + R <= row_end; j += R) SkinnyTile<W, M, R>(x, ldx, w, w_pitch, k, j, out, ldo);
  for (; j < row_end; ++j) SkinnyTile<W, M, 1>(x, ldx, w, w_pitch, k, j, out, ldo);
}

template <DataType W>
void SkinnyMatmulTyped(const float* x, int64_t m, int64_t ldx, const void* w, int64_t k,
                       int64_t row_begin, int64_t row_end, float* out, int64_t ldo) {
  const auto* wc = static_cast<const char*>(w);
  const int64_t pitch = k * static_cast<int64_t>(DataTypeSize(W));
  // Weight rows go in blocks that stay in L2 while every group of 4 input rows reads them, so
  // memory sees each weight byte once.
  const int64_t block = std::max<int64_t>(12, (256 * 1024 / std::max<int64_t>(pitch, 1)) / 12 * 12);
  for (int64_t b = row_begin; b < row_end; b += block) {
    const int64_t e = std::min(row_end, b + block);
    for (int64_t i = 0; i < m; i += 4) {
      const float* xi = x + i * ldx;
      float* oi = out + i * ldo;
      switch (std::min<int64_t>(4, m - i)) {
        case 1:
          SkinnyRows<W, 1>(xi, ldx, wc, pitch, k, b, e, oi, ldo);
          break;
        case 2:
          SkinnyRows<W, 2>(xi, ldx, wc, pitch, k, b, e, oi, ldo);
          break;
        case 3:
          SkinnyRows<W, 3>(xi, ldx, wc, pitch, k, b, e, oi, ldo);
          break;
        default:
          SkinnyRows<W, 4>(xi, ldx, wc, pitch, k, b, e, oi, ldo);
      }
    }
  }
}

void SkinnyMatmul(const float* x, int64_t m, int64_t ldx, const void* w, DataType w_dtype,
                  int64_t k, int64_t row_begin, int64_t row_end, float* out, int64_t ldo) {
  switch (w_dtype) {
    case DataType::kBF16:
      return SkinnyMatmulTyped<DataType::kBF16>(x, m, ldx, w, k, row_begin, row_end, out, ldo);
    case DataType::kF16:
      return SkinnyMatmulTyped<DataType::kF16>(x, m, ldx, w, k, row_begin, row_end, out, ldo);
    default:
      return SkinnyMatmulTyped<DataType::kF32>(x, m, ldx, w, k, row_begin, row_end, out, ldo);
  }
}

// The 8 horizontal sums of a[0..7], in order, as one vector.
inline __m256 Sum8(const __m256 (&a)[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);  // lane halves of sums 0..3
  const __m256 u1 = _mm256_hadd_ps(t2, t3);  // lane halves of sums 4..7
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// scores[0, 8) = dot(q, k[j]) for the 8 keys k[0..7] (rows d apart): 8 independent chains, one
// reduction, one store.
void DotEightKeys(const float* q, const float* k, int64_t d, float* scores) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
  const int64_t d8 = d / 8 * 8;
  for (int64_t c = 0; c < d8; c += 8) {
    const __m256 qv = _mm256_loadu_ps(q + c);
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u)
      acc[u] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + u * d + c), acc[u]);
  }
  __m256 sums = Sum8(acc);
  if (d8 < d) {
    alignas(32) float tail[8];
    for (int u = 0; u < 8; ++u) {
      float t = 0.0f;
      for (int64_t c = d8; c < d; ++c) t += q[c] * k[u * d + c];
      tail[u] = t;
    }
    sums = _mm256_add_ps(sums, _mm256_load_ps(tail));
  }
  _mm256_storeu_ps(scores, sums);
}

float DotOne(const float* q, const float* k, int64_t d) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c + 8), _mm256_loadu_ps(k + c + 8), a1);
  }
  for (; c + 8 <= d; c += 8) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(k + c), a0);
  }
  float sum = HorizontalSum(_mm256_add_ps(a0, a1));
  for (; c < d; ++c) sum += q[c] * k[c];
  return sum;
}

void QkScores(const float* q, int64_t nq, const float* k, int64_t nk, int64_t d, float* scores,
              int64_t lds) {
  for (int64_t i = 0; i < nq; ++i) {
    const float* qi = q + i * d;
    float* si = scores + i * lds;
    int64_t j = 0;
    for (; j + 8 <= nk; j += 8) DotEightKeys(qi, k + j * d, d, si + j);
    for (; j < nk; ++j) si[j] = DotOne(qi, k + j * d, d);
  }
}

// acc[0, 8 * N) of one query += sum_j p[j] * v[j, 0 .. 8 * N): N independent accumulators.
template <int N>
void WeightedRows(const float* p, const float* v, int64_t nk, int64_t d, float* acc) {
  __m256 a[N];
#pragma GCC unroll 8
  for (int t = 0; t < N; ++t) a[t] = _mm256_loadu_ps(acc + 8 * t);
  for (int64_t j = 0; j < nk; ++j) {
    const __m256 weight = _mm256_set1_ps(p[j]);
    const float* vj = v + j * d;
#pragma GCC unroll 8
    for (int t = 0; t < N; ++t) a[t] = _mm256_fmadd_ps(weight, _mm256_loadu_ps(vj + 8 * t), a[t]);
  }
#pragma GCC unroll 8
  for (int t = 0; t < N; ++t) _mm256_storeu_ps(acc + 8 * t, a[t]);
}

void PvAccumulate(const float* p, int64_t nq, int64_t ldp, const float* v, int64_t nk, int64_t d,
                  float* acc) {
  for (int64_t i = 0; i < nq; ++i) {
    float* a = acc + i * d;
    const float* pi = p + i * ldp;
    int64_t c = 0;
    for (; c + 64 <= d; c += 64) WeightedRows<8>(pi, v + c, nk, d, a + c);
    for (; c + 32 <= d; c += 32) WeightedRows<4>(pi, v + c, nk, d, a + c);
    for (; c + 8 <= d; c += 8) WeightedRows<1>(pi, v + c, nk, d, a + c);
    for (; c < d; ++c) {
      float sum = a[c];
      for (int64_t j = 0; j < nk; ++j) sum += pi[j] * v[j * d + c];
      a[c] = sum;
    }
  }
}

// exp(x) for x <= 0 (Cephes' expf: range reduction by ln 2, degree-5 polynomial), ~1 ulp.
inline __m256 Exp(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i pow2 =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
}

float ExpShifted(float* values, int64_t count, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(values + j), s));
    _mm256_storeu_ps(values + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = HorizontalSum(sum);
  if (j < count) {
    float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t t = j; t < count; ++t) tail[t - j] = values[t] - shift;
    const __m256 e = Exp(_mm256_loadu_ps(tail));
    _mm256_storeu_ps(tail, e);
    for (int64_t t = j; t < count; ++t) {
      values[t] = tail[t - j];
      total += tail[t - j];
    }
  }
  return total;
}

double SumExpShifted(const float* values, int64_t count, float shift) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d sum0 = _mm256_setzero_pd(), sum1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    const __m256 e = Exp(_mm256_sub_ps(_mm256_loadu_ps(values + j), s));
    sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(sum0, sum1));
  double total = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
  if (j < count) {
    alignas(32) float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t t = j; t < count; ++t) tail[t - j] = values[t] - shift;
    _mm256_store_ps(tail, Exp(_mm256_load_ps(tail)));
    for (int64_t t = j; t < count; ++t) total += tail[t - j];
  }
  return total;
}

// silu(g) * u with e = exp(-|g|), always in Exp's domain: sigmoid(g) is 1 / (1 + e) for g >= 0
// and e / (1 + e) below, so no exponential overflows. Past |g| = 87 (where Exp clamps) e is 0.
inline __m256 SiluTimes(__m256 g, __m256 u) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 minus_abs = _mm256_or_ps(g, sign);
  const __m256 e =
      _mm256_and_ps(Exp(minus_abs), _mm256_cmp_ps(minus_abs, _mm256_set1_ps(-87.0f), _CMP_GE_OQ));
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
  const __m256 negative = _mm256_cmp_ps(g, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 sigmoid = _mm256_blendv_ps(inv, _mm256_mul_ps(e, inv), negative);
  return _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), u);
}

void Swiglu(const float* gate, const float* up, float* out, int64_t count) {
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) {
    _mm256_storeu_ps(out + j, SiluTimes(_mm256_loadu_ps(gate + j), _mm256_loadu_ps(up + j)));
  }
  if (j < count) {
    alignas(32) float g[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    alignas(32) float u[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t t = j; t < count; ++t) {
      g[t - j] = gate[t];
      u[t - j] = up[t];
    }
    _mm256_store_ps(g, SiluTimes(_mm256_load_ps(g), _mm256_load_ps(u)));
    for (int64_t t = j; t < count; ++t) out[t] = g[t - j];
  }
}

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

constexpr SimdKernels kAvx2 = {
    .name = "avx2",
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

const SimdKernels* Avx2Kernels() {
  // F16C through cpuid: __builtin_cpu_supports does not know it on every compiler.
  static const bool supported = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported ? &kAvx2 : nullptr;
}

}  // namespace tessera::kernels::cpu
